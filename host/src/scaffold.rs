//! `ferry plugin new | build | test`: plugin projects in Rust, Python or
//! JavaScript that build and pass their own test out of the box.
//!
//! A project carries everything it builds from — the contract's WIT and the
//! language's SDK, as this ferry binary knows them (the SDKs are not
//! published to a registry yet) — plus `ferry-plugin.toml` (name, language,
//! contract), the rules in one file and a golden test
//! (`tests/golden.json`: a source table, rows in PostgreSQL's text forms,
//! and the rows or rejection each must give). `ferry plugin test` runs the
//! built component in ferry's own sandbox on those rows.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::plugin::{RowOutcome, TablePlugin};
use crate::schema::{ColumnDef, TableDef};
use crate::value::{Kind, decode_pg_text, encode_pg_text};

/// A plugin project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The contract a project's component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Contract {
    /// `ferry:transform@0.2.0`: typed rows of any table.
    TransformRow,
    /// `ferry:transform@0.1.0`: the seed's `legacy-user` → `new-user`.
    TransformUser,
}

impl Contract {
    /// The WIT directory (in the project) and world to build against.
    fn world(self) -> (&'static str, &'static str) {
        match self {
            Contract::TransformRow => ("wit/row", "row-transform"),
            Contract::TransformUser => ("wit", "user-transform-keyed"),
        }
    }
}

/// `ferry-plugin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub lang: Lang,
    pub contract: Contract,
}

const MANIFEST: &str = "ferry-plugin.toml";
const GOLDEN: &str = "tests/golden.json";

const WIT_USER: &str = include_str!("../../wit/transform.wit");
const WIT_ROW: &str = include_str!("../../wit/row/transform-row.wit");
const RUST_SDK: &str = include_str!("../../plugins/sdk/src/lib.rs");
const RUST_SDK_MACROS: &str = include_str!("../../plugins/sdk/macros/src/lib.rs");
const PYTHON_SDK: [(&str, &str); 4] = [
    ("__init__.py", include_str!("../../plugins/python/ferry_plugin/__init__.py")),
    ("user.py", include_str!("../../plugins/python/ferry_plugin/user.py")),
    ("row.py", include_str!("../../plugins/python/ferry_plugin/row.py")),
    ("jsjson.py", include_str!("../../plugins/python/ferry_plugin/jsjson.py")),
];
const JS_SDK: [(&str, &str); 4] = [
    ("user.js", include_str!("../../plugins/js/ferry_plugin/user.js")),
    ("row.js", include_str!("../../plugins/js/ferry_plugin/row.js")),
    ("errors.js", include_str!("../../plugins/js/ferry_plugin/errors.js")),
    ("text.js", include_str!("../../plugins/js/ferry_plugin/text.js")),
];
const JS_BUILD: &str = include_str!("../../plugins/js/build.mjs");
const JS_PACKAGE: &str = include_str!("../../plugins/js/package.json");
const JS_LOCK: &str = include_str!("../../plugins/js/package-lock.json");

/// The wit-bindgen the Rust SDK is built with (plugins/Cargo.toml).
const WIT_BINDGEN: &str = r#"{ version = "0.61.1", default-features = false, features = ["macros", "realloc"] }"#;

fn config_error(message: String) -> anyhow::Error {
    Error::raise(ErrorKind::Config, message)
}

/// Writes a new project `name` under `parent`; returns its directory.
pub fn new(parent: &Path, name: &str, lang: Lang, contract: Contract) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(config_error(format!(
            "plugin name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter"
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(config_error(format!("{} already exists: choose another name or directory", dir.display())));
    }
    let manifest = Manifest { name: name.to_string(), lang, contract };
    // The contract's WIT: in the SDK for Rust (wit-bindgen would also read a
    // `wit/` folder at the crate's root, and see two versions of the
    // package), at the root for the other toolchains, which are told where.
    let wit = if lang == Lang::Rust { "sdk/wit" } else { "wit" };
    let mut files: Vec<(String, String)> = vec![
        (MANIFEST.into(), toml::to_string(&manifest)?),
        (format!("{wit}/transform.wit"), WIT_USER.into()),
        (format!("{wit}/row/transform-row.wit"), WIT_ROW.into()),
        (
            GOLDEN.into(),
            match contract {
                Contract::TransformRow => include_str!("../templates/golden-row.json"),
                Contract::TransformUser => include_str!("../templates/golden-user.json"),
            }
            .into(),
        ),
    ];
    let rules = |row: &str, user: &str| match contract {
        Contract::TransformRow => row.replace("{{name}}", name),
        Contract::TransformUser => user.replace("{{name}}", name),
    };
    match lang {
        Lang::Rust => {
            files.push((
                "Cargo.toml".into(),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nferry-plugin = {{ path = \"sdk\" }}\n\n\
                     [workspace]\n\n[profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\n\
                     panic = \"abort\"\nstrip = true\n"
                ),
            ));
            files.push((
                "sdk/Cargo.toml".into(),
                format!(
                    "[package]\nname = \"ferry-plugin\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [dependencies]\nwit-bindgen = {WIT_BINDGEN}\nferry-plugin-macros = {{ path = \"macros\" }}\n"
                ),
            ));
            files.push(("sdk/src/lib.rs".into(), RUST_SDK.into()));
            files.push((
                "sdk/macros/Cargo.toml".into(),
                "[package]\nname = \"ferry-plugin-macros\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                 [lib]\nproc-macro = true\n"
                    .into(),
            ));
            // The macros read the WIT from the SDK's own wit/.
            files.push(("sdk/macros/src/lib.rs".into(), RUST_SDK_MACROS.replace("../../../../wit/", "../../wit/")));
            files.push((
                "src/lib.rs".into(),
                rules(include_str!("../templates/rust/row.rs"), include_str!("../templates/rust/user.rs")),
            ));
            files.push((".gitignore".into(), "/target\n*.wasm\n".into()));
        }
        Lang::Python => {
            for (file, text) in PYTHON_SDK {
                files.push((format!("ferry_plugin/{file}"), text.into()));
            }
            files.push((
                "app.py".into(),
                rules(include_str!("../templates/python/row.py"), include_str!("../templates/python/user.py")),
            ));
            files.push((".gitignore".into(), "__pycache__/\n*.wasm\n".into()));
        }
        Lang::Js => {
            for (file, text) in JS_SDK {
                files.push((format!("ferry_plugin/{file}"), text.into()));
            }
            files.push(("build.mjs".into(), JS_BUILD.into()));
            let named = |text: &str| text.replace("\"ferry-js-plugins\"", &format!("\"{name}\""));
            files.push(("package.json".into(), named(JS_PACKAGE)));
            files.push(("package-lock.json".into(), named(JS_LOCK)));
            files.push((
                "app.js".into(),
                rules(include_str!("../templates/js/row.js"), include_str!("../templates/js/user.js")),
            ));
            files.push((".gitignore".into(), "node_modules/\n*.wasm\n".into()));
        }
    }
    let (_, world) = contract.world();
    files.push((
        "README.md".into(),
        format!(
            "# {name}\n\nA ferry plugin ({lang:?}, world `{world}`).\n\n```sh\nferry plugin build   # → {name}.wasm\n\
             ferry plugin test    # builds, then runs tests/golden.json in ferry's sandbox\n```\n\n\
             The rules are in `{}`; `tests/golden.json` holds rows in PostgreSQL's text forms and what each must \
             become.\n",
            match lang {
                Lang::Rust => "src/lib.rs",
                Lang::Python => "app.py",
                Lang::Js => "app.js",
            }
        ),
    ));
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project"))?;
        std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(dir)
}

fn manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        config_error(format!("{}: {e}; a plugin project made by `ferry plugin new` has one", path.display()))
    })?;
    toml::from_str(&text).map_err(|e| config_error(format!("{}: {e}", path.display())))
}

/// Runs one toolchain step in `dir`, with what to install when it is missing.
fn step(dir: &Path, program: &str, args: &[&str], install: &str) -> anyhow::Result<()> {
    // The toolchain's own output goes to stderr: stdout is ferry's report.
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| Error::raise(ErrorKind::Plugin, format!("cannot run {program} ({e}): {install}")))?;
    if !status.success() {
        return Err(Error::raise(
            ErrorKind::Plugin,
            format!("`{program} {}` failed in {} ({status}); its output is above", args.join(" "), dir.display()),
        ));
    }
    Ok(())
}

/// Builds the project in `dir` into `dir/<name>.wasm`.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    // Absolute: the toolchains run inside the project.
    let dir = &std::fs::canonicalize(dir)
        .map_err(|e| config_error(format!("{}: {e}; give the directory of a plugin project", dir.display())))?;
    let m = manifest(dir)?;
    let out = dir.join(format!("{}.wasm", m.name));
    let out_text = out.to_string_lossy().to_string();
    let (wit, world) = m.contract.world();
    match m.lang {
        Lang::Rust => {
            step(
                dir,
                "cargo",
                &["build", "--release", "--target", "wasm32-wasip2"],
                "install Rust with rustup, then `rustup target add wasm32-wasip2`",
            )?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
            let built = target.join("wasm32-wasip2/release").join(format!("{}.wasm", m.name.replace('-', "_")));
            std::fs::copy(&built, &out).map_err(|e| anyhow::anyhow!("copying {}: {e}", built.display()))?;
        }
        Lang::Python => step(
            dir,
            "componentize-py",
            &["-d", wit, "-w", world, "componentize", "app", "-p", ".", "-o", &out_text],
            "pip install componentize-py==0.25.1",
        )?,
        Lang::Js => {
            if !dir.join("node_modules").exists() {
                step(dir, "npm", &["ci", "--no-audit", "--no-fund"], "install Node.js 20 with npm")?;
            }
            step(dir, "node", &["build.mjs", "app.js", wit, world, &out_text], "install Node.js 20")?;
        }
    }
    Ok(out)
}

/// One golden case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub note: String,
    pub passed: bool,
    /// What the plugin gave, in the golden file's form.
    pub got: serde_json::Value,
    pub expected: serde_json::Value,
}

/// What `ferry plugin test` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub plugin: PathBuf,
    pub sha256: String,
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseResult>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    table: GoldenTable,
    cases: Vec<GoldenCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenTable {
    name: String,
    columns: Vec<GoldenColumn>,
    primary_key: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenColumn {
    name: String,
    #[serde(rename = "type")]
    sql_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenCase {
    #[serde(default)]
    note: String,
    row: Vec<Option<String>>,
    expect: serde_json::Value,
}

/// The `pg_type` name of a SQL type as people write it.
fn typname(sql: &str) -> String {
    let sql = sql.trim().to_lowercase();
    let base = sql.split('(').next().unwrap_or(&sql).trim();
    match base {
        "bigint" => "int8",
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "boolean" => "bool",
        "real" => "float4",
        "double precision" => "float8",
        "decimal" => "numeric",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        "time without time zone" => "time",
        "character varying" | "varchar" | "character" | "char" => "text",
        other => other,
    }
    .to_string()
}

/// Runs the component at `wasm` on the golden file's rows.
pub fn test(wasm: &Path, golden: &Path) -> anyhow::Result<TestReport> {
    let text = std::fs::read_to_string(golden).map_err(|e| config_error(format!("{}: {e}", golden.display())))?;
    let golden_file = golden;
    let golden: Golden = serde_json::from_str(&text).map_err(|e| config_error(format!("{}: {e}", golden.display())))?;
    let columns: Vec<ColumnDef> = golden
        .table
        .columns
        .iter()
        .map(|c| ColumnDef::plain(&c.name, &c.sql_type, Kind::from_pg_typname(&typname(&c.sql_type)), true))
        .collect();
    let key = golden
        .table
        .primary_key
        .iter()
        .map(|k| {
            columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                config_error(format!("{}: primary key column {k} is not a column", golden_file.display()))
            })
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let name = crate::db::TableName::parse(&golden.table.name).map_err(config_error)?;
    let def = TableDef::new(name, crate::db::Engine::Postgres, columns, key);
    let mut rows = Vec::new();
    for (i, case) in golden.cases.iter().enumerate() {
        if case.row.len() != def.columns.len() {
            return Err(config_error(format!(
                "{}: case {} has {} values for {} columns",
                golden_file.display(),
                i + 1,
                case.row.len(),
                def.columns.len()
            )));
        }
        let row = case
            .row
            .iter()
            .zip(&def.columns)
            .map(|(v, c)| match v {
                None => Ok(crate::value::Value::Null),
                Some(text) => decode_pg_text(&c.kind, &c.sql_type, text).map_err(|e| {
                    config_error(format!("{}: case {}, column {}: {e:?}", golden_file.display(), i + 1, c.name))
                }),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.push(row);
    }
    let options = crate::plugin::LoadOptions { cache_dir: crate::settings::default_cache_dir(), ..Default::default() };
    let plugin = TablePlugin::load(wasm, &options)?;
    let mut instance = plugin.instantiate()?;
    instance.describe(&def)?;
    let outcomes = instance.transform_batch(&def.name.to_string(), &rows)?;
    let base = |table: &str| table.rsplit('.').next().unwrap_or(table).to_string();
    let mut report =
        TestReport { plugin: wasm.into(), sha256: plugin.sha256().into(), passed: 0, failed: 0, cases: Vec::new() };
    for (case, outcome) in golden.cases.iter().zip(outcomes) {
        let got = match outcome {
            RowOutcome::Rows(rows) => serde_json::Value::Array(
                rows.into_iter()
                    .map(|(table, values)| {
                        let values: Vec<Option<String>> = values.iter().map(encode_pg_text).collect();
                        serde_json::json!({ "table": base(&table), "values": values })
                    })
                    .collect(),
            ),
            RowOutcome::Rejected(reason) => serde_json::json!({ "reject": reason }),
            RowOutcome::Fatal(reason) => serde_json::json!({ "fatal": reason }),
            RowOutcome::Trapped(reason) => serde_json::json!({ "trap": reason }),
        };
        let mut expected = case.expect.clone();
        if let Some(rows) = expected.as_array_mut() {
            for row in rows {
                if let Some(t) = row.get("table").and_then(|t| t.as_str()).map(base) {
                    row["table"] = t.into();
                }
            }
        }
        let passed = got == expected;
        if passed {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        report.cases.push(CaseResult { note: case.note.clone(), passed, got, expected });
    }
    Ok(report)
}
