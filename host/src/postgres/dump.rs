//! The schema around the data between PostgreSQL databases, as pg_dump sees
//! it. pg_dump is the reference for what a PostgreSQL schema is (every
//! object kind, in an order that restores, across server versions), so ferry
//! does what pgcopydb does: it takes the source's schema with `pg_dump
//! --schema-only`, keeps the entries the pipeline needs, and runs the
//! pre-data entries before the data and the post-data ones after it.
//!
//! ```text
//!  take     pg_dump -Fc --schema-only → the archive's entries: catalog OIDs
//!           (pg_restore -l), section (-l --section), SQL (pg_restore -f -)
//!  select   the pipeline's tables, what they need (types, sequences,
//!           functions, schemas, extensions), what they own (defaults,
//!           keys, indexes, constraints, triggers, comments) and what is
//!           built only on them (views) — by pg_depend, as pg_dump orders
//!  present  which of those the target holds already: left alone
//!  apply    pre-data in one target transaction; post-data per entry,
//!           skipping what exists, so an interrupted run resumes
//! ```
//! The engine knows nothing of pipelines: it is given table OIDs and
//! returns entries.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::PgConnection;

use crate::db::{DbUrl, quote_ident};
use crate::error::{Error, ErrorKind};

/// System catalogs' OIDs, as the archive names them (`pg_class`…).
mod catalog {
    pub const CLASS: u32 = 1259;
    #[cfg(test)]
    pub const NAMESPACE: u32 = 2615;
}

/// Objects below this OID were made by `initdb` (PostgreSQL's
/// `FirstNormalObjectId`): built in, never dumped, always present.
const FIRST_NORMAL_OID: u32 = 16384;

/// Where the PostgreSQL client programs are.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// A directory holding `pg_dump` and `pg_restore` (default: `PATH`).
    pub dir: Option<PathBuf>,
    /// Keep owners and privileges (`ALTER … OWNER TO`, `GRANT`): every
    /// role they name must exist in the target.
    pub owners: bool,
}

impl Tools {
    fn program(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `pg_dump`'s major version, or why it cannot run.
    pub async fn version(&self) -> anyhow::Result<u32> {
        let program = self.program("pg_dump");
        let out = tokio::process::Command::new(&program).arg("--version").output().await.map_err(|e| {
            Error::raise(
                ErrorKind::Contract,
                format!(
                    "cannot run {} ({e}): the schema copy between PostgreSQL databases runs pg_dump and pg_restore, \
                     as pgcopydb does; install the PostgreSQL client (e.g. apt-get install postgresql-client), \
                     set [schema] bin_dir to where they are, or copy tables only with [schema] copy = \"none\"",
                    program.display()
                ),
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "pg_dump (PostgreSQL) 15.20 (Debian …)"
        text.split_whitespace()
            .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()).filter(|_| w.contains('.')))
            .ok_or_else(|| anyhow::anyhow!("cannot read the version of {} from {text:?}", program.display()))
    }
}

/// Which part of the schema an entry belongs to (pg_dump's sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Before the data: schemas, types, functions, sequences, tables, views.
    Pre,
    /// After the data: keys, indexes, constraints, triggers, rules.
    Post,
}

/// One entry of the archive: an object's SQL and what names it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The catalog the object is in (`pg_class`…), 0 for entries that are
    /// about another object (comments, grants, `OWNED BY`, attachments).
    pub catalog: u32,
    pub oid: u32,
    /// pg_dump's kind: `TABLE`, `FK CONSTRAINT`, `COMMENT`…
    pub kind: String,
    pub schema: Option<String>,
    /// pg_dump's tag: `film`, `film film_pkey`, `COLUMN customer.email`…
    pub tag: String,
    pub owner: String,
    pub section: Section,
    /// The statements, with the session settings they were written under.
    pub sql: String,
}

impl Entry {
    /// `kind schema.tag`, for messages.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{} {s}.{}", self.kind, self.tag),
            None => format!("{} {}", self.kind, self.tag),
        }
    }

    /// The schema-qualified, quoted name of a relation, type or schema entry.
    fn qualified(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
            None => quote_ident(name),
        }
    }
}

/// The session settings pg_restore's script starts with (without them
/// functions with forward references, `search_path`-free names and
/// `standard_conforming_strings` literals would not restore).
const PREAMBLE: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
    SET idle_in_transaction_session_timeout = 0; SET standard_conforming_strings = on; \
    SELECT pg_catalog.set_config('search_path', '', false); SET check_function_bodies = false; \
    SET xmloption = content; SET client_min_messages = warning; SET row_security = off;";

/// The source's schema as pg_dump wrote it.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    pub entries: Vec<Entry>,
    /// pg_dump's major version.
    pub version: u32,
}

/// Runs `pg_dump --schema-only` on `url` and reads the archive.
pub async fn take(url: &DbUrl, tools: &Tools) -> anyhow::Result<Dump> {
    let file = std::env::temp_dir().join(format!("ferry-schema-{}.dump", uuid::Uuid::new_v4()));
    let (version, result) = tokio::join!(tools.version(), take_into(url, tools, &file));
    std::fs::remove_file(&file).ok();
    let mut dump = result?;
    dump.version = version?;
    Ok(dump)
}

async fn take_into(url: &DbUrl, tools: &Tools, file: &Path) -> anyhow::Result<Dump> {
    let (conninfo, password) = libpq_url(url)?;
    let mut dump = tokio::process::Command::new(tools.program("pg_dump"));
    dump.args(["--schema-only", "--format=custom", "--no-publications", "--no-subscriptions"])
        .arg("--exclude-schema=ferry")
        .arg(format!("--file={}", file.display()))
        .arg(format!("--dbname={conninfo}"));
    if !tools.owners {
        dump.args(["--no-owner", "--no-privileges"]);
    }
    if let Some(password) = password {
        dump.env("PGPASSWORD", password);
    }
    let out = dump.output().await.context("running pg_dump")?;
    if !out.status.success() {
        return Err(Error::raise(
            ErrorKind::Contract,
            format!(
                "pg_dump --schema-only of {url} failed: {}",
                crate::db::redact(String::from_utf8_lossy(&out.stderr).trim())
            ),
        ));
    }
    // Three readings of one archive, side by side.
    let (list, post, script) = tokio::try_join!(
        restore(tools, file, &["--list"]),
        restore(tools, file, &["--list", "--section=post-data"]),
        restore(tools, file, &["--file=-"]),
    )?;
    parse(&list, &list_ids(&post), &script)
}

/// `pg_restore ARGS FILE`'s output.
async fn restore(tools: &Tools, file: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(tools.program("pg_restore"))
        .args(args)
        .arg(file)
        .output()
        .await
        .context("running pg_restore")?;
    if !out.status.success() {
        anyhow::bail!("pg_restore {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).context("pg_restore wrote text that is not UTF-8")
}

/// The URL libpq reads, without its password (given in `PGPASSWORD`, so
/// that no process listing shows it).
fn libpq_url(url: &DbUrl) -> anyhow::Result<(String, Option<String>)> {
    let mut parsed = url::Url::parse(url.expose()).with_context(|| format!("{url} is not a valid URL"))?;
    let password = parsed.password().map(|p| {
        url::form_urlencoded::parse(format!("p={p}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    });
    parsed.set_password(None).ok();
    Ok((parsed.to_string(), password))
}

/// The dump ids of `pg_restore --list` output.
fn list_ids(list: &str) -> HashSet<u32> {
    list.lines().filter_map(|l| l.split(';').next()?.trim().parse().ok()).collect()
}

/// Reads `pg_restore --list` (ids, catalogs, OIDs, in restore order) beside
/// the script (`-- Name: …; Type: …; Schema: …; Owner: …` before each
/// entry's SQL, in the same order).
fn parse(list: &str, post: &HashSet<u32>, script: &str) -> anyhow::Result<Dump> {
    struct Listed {
        id: u32,
        catalog: u32,
        oid: u32,
        rest: String,
    }
    let listed: Vec<Listed> = list
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| {
            let (id, rest) = l.split_once("; ").with_context(|| format!("unexpected pg_restore --list line {l:?}"))?;
            let mut words = rest.splitn(3, ' ');
            let catalog = words.next().unwrap_or_default().parse()?;
            let oid = words.next().unwrap_or_default().parse()?;
            Ok(Listed { id: id.parse()?, catalog, oid, rest: words.next().unwrap_or_default().to_string() })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut chunks = script.split("\n--\n-- Name: ");
    chunks.next(); // the preamble
    // Settings pg_restore changes between entries, as they stand.
    let (mut tablespace, mut access_method) = ("''".to_string(), "heap".to_string());
    let mut entries = Vec::with_capacity(listed.len());
    let mut listed = listed.into_iter();
    for chunk in chunks {
        let (header, body) = chunk.split_once("\n--\n").unwrap_or((chunk, ""));
        let mut fields = header.split("; ");
        let name = fields.next().unwrap_or_default().to_string();
        let mut field =
            |key: &str| fields.next().and_then(|f| f.strip_prefix(key)).map(str::to_string).unwrap_or_default();
        let (kind, schema, owner) = (field("Type: "), field("Schema: "), field("Owner: "));
        // The listed entry this header is: entries without SQL print none.
        // (The list leaves an extension's owner empty where the script
        // says "-": compared without it.)
        let shown = format!("{kind} {schema} {name}");
        let item = loop {
            let Some(item) = listed.next() else {
                anyhow::bail!("pg_restore's script has an entry its list lacks: {kind} {name}");
            };
            if item.rest.strip_prefix(&shown).is_some_and(|rest| rest.is_empty() || rest.starts_with(' ')) {
                break item;
            }
        };
        let settings =
            format!("SET default_tablespace = {tablespace}; SET default_table_access_method = {access_method};");
        let mut sql = String::new();
        for line in body.lines() {
            if let Some(v) = line.strip_prefix("SET default_tablespace = ") {
                tablespace = v.trim_end_matches(';').to_string();
            } else if let Some(v) = line.strip_prefix("SET default_table_access_method = ") {
                access_method = v.trim_end_matches(';').to_string();
            } else if line.starts_with('\\') || line.starts_with("-- PostgreSQL database dump complete") {
                // psql's \restrict/\unrestrict: not SQL.
            } else {
                sql.push_str(line);
                sql.push('\n');
            }
        }
        let sql = sql.trim().trim_end_matches("\n--").trim().to_string();
        entries.push(Entry {
            catalog: item.catalog,
            oid: item.oid,
            kind,
            schema: (schema != "-").then_some(schema),
            tag: name,
            owner,
            section: if post.contains(&item.id) { Section::Post } else { Section::Pre },
            sql: format!("{settings}\n{sql}"),
        });
    }
    Ok(Dump { entries, version: 0 })
}

/// A catalog object: `(catalog, oid)`.
type Object = (u32, u32);

/// `object` depends on `referenced` with PostgreSQL's `deptype`.
type Edge = (Object, Object, char);

/// What the source's catalog says of its objects' dependencies.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// `(object, referenced, deptype)`, objects as `(catalog, oid)`.
    edges: Vec<Edge>,
    /// Every table (plain, partitioned, foreign) outside the system schemas.
    tables: HashSet<u32>,
    /// What names each table-bound object (constraint, trigger, index,
    /// rule, policy): `(schema, table, name)`, by the catalog, never by
    /// parsing pg_dump's tags (names may hold spaces).
    names: HashMap<(u32, u32), (String, String, String)>,
}

impl Dependencies {
    /// The table each index and constraint belongs to (its auto dependency).
    pub fn owners(&self) -> HashMap<(u32, u32), u32> {
        self.edges
            .iter()
            .filter(|e| e.2 == 'a' && e.1.0 == catalog::CLASS)
            .map(|&(object, table, _)| (object, table.1))
            .collect()
    }

    /// Every table `object` depends on (a foreign key: its own table and
    /// the one it references).
    pub fn tables_of(&self, object: (u32, u32)) -> Vec<u32> {
        let mut tables: Vec<u32> = self
            .edges
            .iter()
            .filter(|e| e.0 == object && e.1.0 == catalog::CLASS && self.tables.contains(&e.1.1))
            .map(|e| e.1.1)
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }
}

/// Reads [`Dependencies`] from the source (`pg_depend`, `pg_class`).
pub async fn dependencies(conn: &mut PgConnection) -> anyhow::Result<Dependencies> {
    let rows: Vec<(i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT classid::int8, objid::int8, refclassid::int8, refobjid::int8, deptype::text FROM pg_depend \
         WHERE deptype IN ('n', 'a', 'i', 'e') AND objid >= $1 AND refobjid >= $1",
    )
    .bind(FIRST_NORMAL_OID as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::driver("reading the source's dependencies (pg_depend)", &e))?;
    let edges = rows
        .into_iter()
        .map(|(c, o, rc, ro, d)| ((c as u32, o as u32), (rc as u32, ro as u32), d.chars().next().unwrap_or('n')))
        .collect();
    let tables: Vec<i64> = sqlx::query_scalar(
        "SELECT c.oid::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'f') AND c.oid >= $1 AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    .bind(FIRST_NORMAL_OID as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::driver("listing the source's tables", &e))?;
    let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(
        "SELECT 'pg_constraint'::regclass::oid::int8, k.oid::int8, n.nspname::text, c.relname::text, k.conname::text \
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE k.oid >= $1 \
         UNION ALL SELECT 'pg_trigger'::regclass::oid::int8, t.oid::int8, n.nspname, c.relname, t.tgname \
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE NOT t.tgisinternal \
         UNION ALL SELECT 'pg_class'::regclass::oid::int8, i.indexrelid::int8, n.nspname, c.relname, ic.relname \
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.indexrelid >= $1 \
         UNION ALL SELECT 'pg_rewrite'::regclass::oid::int8, r.oid::int8, n.nspname, c.relname, r.rulename \
           FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE r.oid >= $1 \
         UNION ALL SELECT 'pg_policy'::regclass::oid::int8, p.oid::int8, n.nspname, c.relname, p.polname \
           FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace",
    )
    .bind(FIRST_NORMAL_OID as i64)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::driver("reading the source's constraints, triggers and indexes", &e))?;
    let names =
        rows.into_iter().map(|(c, o, schema, table, name)| ((c as u32, o as u32), (schema, table, name))).collect();
    Ok(Dependencies { edges, tables: tables.into_iter().map(|t| t as u32).collect(), names })
}

/// Which objects besides the pipeline's tables come along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What the tables need and own, and the other objects of their
    /// schemas that depend on nothing left out.
    Tables,
    /// Every object of the database but the tables left out (and what is
    /// built on them).
    Database,
}

/// The entries a pipeline's schema is made of, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Indexes into [`Dump::entries`], in restore order.
    pub entries: Vec<usize>,
    /// Objects of the pipeline's tables that cannot come along, and why
    /// (a foreign key to a table left out…).
    pub left_out: Vec<String>,
}

/// The entries of `dump` a pipeline of the tables `pipeline` (OIDs, a
/// partitioned table with its partitions) needs, per `scope`.
///
/// `existing`: the pipeline's tables the target holds already. They are
/// the user's: nothing is made for them (in the `Tables` scope, neither
/// what they own nor what that needs).
pub fn select(
    dump: &Dump,
    deps: &Dependencies,
    pipeline: &HashSet<u32>,
    existing: &HashSet<u32>,
    scope: Scope,
) -> Selection {
    let class = |oid: u32| (catalog::CLASS, oid);
    // Tables left out, and everything built on them.
    let mut out: HashSet<(u32, u32)> =
        deps.tables.iter().filter(|t| !pipeline.contains(t)).map(|&t| class(t)).collect();
    loop {
        let before = out.len();
        for &(object, referenced, deptype) in &deps.edges {
            let protected = |o: (u32, u32)| o.0 == catalog::CLASS && pipeline.contains(&o.1);
            if deptype != 'e' && out.contains(&referenced) && !protected(object) {
                out.insert(object);
            }
            // A view is left out with its rule (the rule is part of it).
            if deptype == 'i' && out.contains(&object) && !protected(referenced) {
                out.insert(referenced);
            }
        }
        if out.len() == before {
            break;
        }
    }
    // What a kept object needs: extension members become their extension.
    let member_of: HashMap<(u32, u32), (u32, u32)> =
        deps.edges.iter().filter(|e| e.2 == 'e').map(|&(object, extension, _)| (object, extension)).collect();
    let mut needs: HashMap<(u32, u32), Vec<(u32, u32)>> = HashMap::new();
    for &(object, referenced, deptype) in &deps.edges {
        if deptype != 'e' {
            needs.entry(object).or_default().push(*member_of.get(&referenced).unwrap_or(&referenced));
        }
    }
    // What a part needs (a view's rule: the tables it reads), its whole needs.
    for &(part, whole, deptype) in &deps.edges {
        if deptype == 'i' {
            let more = needs.get(&part).cloned().unwrap_or_default();
            needs.entry(whole).or_default().extend(more.into_iter().filter(|&n| n != whole));
        }
    }
    // The pipeline's tables and their row types (what a view or a function
    // returning `SETOF table` reads).
    let rows_of: HashSet<(u32, u32)> = pipeline
        .iter()
        .map(|&t| class(t))
        .chain(
            deps.edges
                .iter()
                .filter(|e| e.2 == 'i' && e.1.0 == catalog::CLASS && pipeline.contains(&e.1.1))
                .map(|e| e.0),
        )
        .collect();
    // An object of a table the target holds is kept (a run that made the
    // table and resumes builds it) but pulls in nothing: if the run made
    // the table, what it needs came with it; if the user did, it is theirs.
    let theirs = |o: (u32, u32)| o.0 == catalog::CLASS && existing.contains(&o.1);
    let made = |o: (u32, u32)| o.0 == catalog::CLASS && pipeline.contains(&o.1) && !existing.contains(&o.1);
    let mut kept: HashSet<(u32, u32)> = HashSet::new();
    let mut todo: Vec<((u32, u32), bool)> = Vec::new();
    for entry in dump.entries.iter().filter(|e| e.catalog != 0) {
        let object = (entry.catalog, entry.oid);
        if out.contains(&object) || member_of.contains_key(&object) {
            continue;
        }
        let of_theirs = theirs(object) || owned_by(deps, object, &theirs);
        let wanted = match scope {
            Scope::Database => true,
            Scope::Tables => {
                made(object) || owned_by(deps, object, &made) || of_theirs || built_on(deps, object, &rows_of)
            }
        };
        if wanted {
            todo.push((object, !of_theirs));
        }
    }
    while let Some((object, follow)) = todo.pop() {
        if !kept.insert(object) || !follow {
            continue;
        }
        for &referenced in needs.get(&object).map(Vec::as_slice).unwrap_or_default() {
            if !out.contains(&referenced) && !kept.contains(&referenced) {
                todo.push((referenced, true));
            }
        }
    }
    // Entries about another entry (comments, grants, OWNED BY,
    // attachments) follow it.
    let mut selection = Selection::default();
    for (i, entry) in dump.entries.iter().enumerate() {
        let keep = match entry.catalog {
            0 => about(dump, entry).is_some_and(|j| {
                let of = &dump.entries[j];
                kept.contains(&(of.catalog, of.oid))
            }),
            _ => kept.contains(&(entry.catalog, entry.oid)),
        };
        if keep {
            selection.entries.push(i);
        } else if out.contains(&(entry.catalog, entry.oid))
            && matches!(entry.kind.as_str(), "FK CONSTRAINT" | "TRIGGER" | "VIEW" | "MATERIALIZED VIEW" | "DEFAULT")
            && owned_or_built_on(deps, (entry.catalog, entry.oid), pipeline)
        {
            selection.left_out.push(format!("{} (it depends on a table the pipeline leaves out)", entry.label()));
        }
    }
    selection
}

/// Whether `object` is part of an object `is` holds for (auto and internal
/// dependencies: an index of a table, a view's rule, an identity sequence).
fn owned_by(deps: &Dependencies, object: (u32, u32), is: &dyn Fn((u32, u32)) -> bool) -> bool {
    deps.edges.iter().any(|&(o, r, d)| o == object && (d == 'a' || d == 'i') && is(r))
}

/// Whether `object` (or a part of it: a view's rule) reads one of
/// `tables` (relations and their row types).
fn built_on(deps: &Dependencies, object: (u32, u32), tables: &HashSet<(u32, u32)>) -> bool {
    let parts: Vec<(u32, u32)> = deps.edges.iter().filter(|e| e.1 == object && e.2 == 'i').map(|e| e.0).collect();
    deps.edges.iter().any(|&(o, r, d)| d == 'n' && (o == object || parts.contains(&o)) && tables.contains(&r))
}

/// Whether `object` belongs to or reads one of the pipeline's tables.
fn owned_or_built_on(deps: &Dependencies, object: (u32, u32), pipeline: &HashSet<u32>) -> bool {
    let rule_of: Vec<(u32, u32)> = deps.edges.iter().filter(|e| e.1 == object && e.2 == 'i').map(|e| e.0).collect();
    deps.edges
        .iter()
        .any(|&(o, r, _)| (o == object || rule_of.contains(&o)) && r.0 == catalog::CLASS && pipeline.contains(&r.1))
}

/// The entry an entry without an OID of its own is about: a comment's or
/// a grant's object, a sequence's `OWNED BY`, an attached partition or index.
pub fn about(dump: &Dump, entry: &Entry) -> Option<usize> {
    let find = |kinds: &[&str], schema: Option<&str>, tag: &dyn Fn(&str) -> bool| {
        dump.entries.iter().position(|e| {
            e.catalog != 0 && kinds.contains(&e.kind.as_str()) && e.schema.as_deref() == schema && tag(&e.tag)
        })
    };
    let schema = entry.schema.as_deref();
    match entry.kind.as_str() {
        "SEQUENCE OWNED BY" => find(&["SEQUENCE"], schema, &|t| t == entry.tag),
        "TABLE ATTACH" => find(&["TABLE"], schema, &|t| t == entry.tag),
        "INDEX ATTACH" => find(&["INDEX", "CONSTRAINT"], schema, &|t| {
            t == entry.tag || t.split_once(' ').is_some_and(|(_, name)| name == entry.tag)
        }),
        "COMMENT" | "ACL" | "SECURITY LABEL" => {
            let (kind, name) = object_of(&entry.tag)?;
            match kind {
                "COLUMN" => {
                    let table = name.rsplit_once('.').map_or(name, |(t, _)| t);
                    find(&["TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"], schema, &|t| t == table)
                }
                "CONSTRAINT" | "TRIGGER" | "POLICY" | "RULE" => {
                    let (what, on) = name.split_once(" ON ")?;
                    let kinds: &[&str] = match kind {
                        "CONSTRAINT" => &["CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT"],
                        "TRIGGER" => &["TRIGGER"],
                        "POLICY" => &["POLICY"],
                        _ => &["RULE"],
                    };
                    find(kinds, schema, &|t| t == format!("{on} {what}"))
                }
                "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
                    let base = name.split('(').next()?;
                    find(&[kind], schema, &|t| t.split('(').next() == Some(base))
                }
                "SCHEMA" | "EXTENSION" | "LANGUAGE" => find(&[kind], None, &|t| t == name),
                _ => find(&[kind], schema, &|t| t == name),
            }
        }
        _ => None,
    }
}

/// `TABLE film` → (`TABLE`, `film`); `MATERIALIZED VIEW m` → (`MATERIALIZED VIEW`, `m`).
fn object_of(tag: &str) -> Option<(&str, &str)> {
    for kind in ["MATERIALIZED VIEW", "FOREIGN TABLE", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY"] {
        if let Some(name) = tag.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
            return Some((kind, name));
        }
    }
    tag.split_once(' ')
}

/// Of the selected entries, those whose object the target holds already
/// (to be left alone, with everything that is about them or part of them).
pub async fn present(
    conn: &mut PgConnection,
    dump: &Dump,
    deps: &Dependencies,
    selection: &Selection,
) -> anyhow::Result<HashSet<usize>> {
    let owners = deps.owners();
    let mut present = HashSet::new();
    for &i in &selection.entries {
        let entry = &dump.entries[i];
        let query = match entry.kind.as_str() {
            "SCHEMA" => Some(("SELECT to_regnamespace($1) IS NOT NULL", quote_ident(&entry.tag))),
            "EXTENSION" => Some(("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)", entry.tag.clone())),
            "TYPE" | "DOMAIN" => Some(("SELECT to_regtype($1) IS NOT NULL", entry.qualified(&entry.tag))),
            "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
                let (name, args) = entry.tag.split_once('(').unwrap_or((&entry.tag, ")"));
                Some(("SELECT to_regprocedure($1) IS NOT NULL", format!("{}({args}", entry.qualified(name))))
            }
            // (An index's name is unique in its schema.)
            "TABLE" | "SEQUENCE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE" | "INDEX" => {
                Some(("SELECT to_regclass($1) IS NOT NULL", entry.qualified(&entry.tag)))
            }
            _ => None,
        };
        if let Some((sql, name)) = query {
            let there: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&name)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| Error::driver(format!("looking for {} in the target", entry.label()), &e))?;
            if there {
                present.insert(i);
            }
        }
    }
    // What belongs to an object the target holds is the target's own.
    for &i in &selection.entries {
        let entry = &dump.entries[i];
        let owner = match entry.catalog {
            0 => about(dump, entry),
            _ => owners.get(&(entry.catalog, entry.oid)).and_then(|table| {
                dump.entries.iter().position(|e| e.catalog == catalog::CLASS && e.oid == *table && e.kind == "TABLE")
            }),
        };
        if owner.is_some_and(|o| present.contains(&o)) {
            present.insert(i);
        }
    }
    Ok(present)
}

/// Runs pre-data entries in one transaction: the target holds all of them
/// or none.
pub async fn apply_pre_data(conn: &mut PgConnection, entries: &[&Entry], run_id: &str) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let applied = async {
        sqlx::raw_sql(PREAMBLE).execute(&mut *conn).await?;
        for entry in entries {
            run(conn, entry).await?;
        }
        record_created(conn, entries, run_id).await?;
        anyhow::Ok(())
    }
    .await;
    match applied {
        Ok(()) => sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map(drop).map_err(Into::into),
        Err(e) => {
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.ok();
            Err(e)
        }
    }
}

/// Records, in the pre-data's transaction, how to drop each object it
/// created (`ferry.schema_objects`), so that rolling the run back removes
/// them: they and the record commit or vanish together.
async fn record_created(conn: &mut PgConnection, entries: &[&Entry], run_id: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS ferry; \
         CREATE TABLE IF NOT EXISTS ferry.schema_objects (run_id text NOT NULL, position integer NOT NULL, \
             label text NOT NULL, drop_sql text NOT NULL, relation text, PRIMARY KEY (run_id, position))",
    )
    .execute(&mut *conn)
    .await?;
    let mut position: i32 =
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM ferry.schema_objects WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&mut *conn)
            .await?;
    for entry in entries {
        let Some(drop_sql) = drop_sql(entry) else { continue };
        position += 1;
        // A table's name, to drop the foreign keys on it first.
        let relation = (entry.kind == "TABLE").then(|| entry.qualified(&entry.tag));
        sqlx::query("INSERT INTO ferry.schema_objects VALUES ($1, $2, $3, $4, $5)")
            .bind(run_id)
            .bind(position)
            .bind(entry.label())
            .bind(drop_sql)
            .bind(relation)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The statement that drops what a pre-data entry created (`None`: it is
/// part of another object, or dropped with it).
fn drop_sql(entry: &Entry) -> Option<String> {
    let what = match entry.kind.as_str() {
        "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "SEQUENCE" | "TYPE" | "DOMAIN" | "FOREIGN TABLE" => {
            format!("{} IF EXISTS {}", entry.kind, entry.qualified(&entry.tag))
        }
        "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
            let (name, args) = entry.tag.split_once('(')?;
            format!("{} IF EXISTS {}({args}", entry.kind, entry.qualified(name))
        }
        "SCHEMA" | "EXTENSION" => format!("{} IF EXISTS {}", entry.kind, quote_ident(&entry.tag)),
        _ => return None,
    };
    Some(format!("DROP {what}"))
}

/// Runs post-data entries one by one, each skipped when its object is
/// there already (an interrupted run resumes where it stopped).
pub async fn apply_post_data(conn: &mut PgConnection, entries: &[&Entry], deps: &Dependencies) -> anyhow::Result<()> {
    sqlx::raw_sql(PREAMBLE).execute(&mut *conn).await?;
    for entry in entries {
        if !made(conn, entry, deps).await? {
            run(conn, entry).await?;
        }
    }
    sqlx::raw_sql("RESET ALL").execute(&mut *conn).await?;
    Ok(())
}

async fn run(conn: &mut PgConnection, entry: &Entry) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(entry.sql.clone()))
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::driver(format!("creating {} in the target", entry.label()), &e))?;
    Ok(())
}

/// The query whether an object of `catalog` named `$3` exists on table
/// `$1.$2` (`relation`, `name`: the catalog's columns for them).
fn table_bound(catalog: &str, relation: &str, name: &str) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {catalog} o JOIN pg_class c ON c.oid = o.{relation} \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND o.{name} = $3)"
    )
}

/// Whether a post-data entry's object exists in the target: by the
/// source catalog's names of it (`deps`), or for an index attachment, the
/// attached index's own.
async fn made(conn: &mut PgConnection, entry: &Entry, deps: &Dependencies) -> anyhow::Result<bool> {
    let query: String = match entry.kind.as_str() {
        "INDEX" => "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                    WHERE n.nspname = $1 AND c.relname = $3 AND $2 IS NOT NULL)"
            .into(),
        "CONSTRAINT" | "FK CONSTRAINT" | "CHECK CONSTRAINT" => table_bound("pg_constraint", "conrelid", "conname"),
        "TRIGGER" => table_bound("pg_trigger", "tgrelid", "tgname"),
        "RULE" => table_bound("pg_rewrite", "ev_class", "rulename"),
        "POLICY" => table_bound("pg_policy", "polrelid", "polname"),
        "INDEX ATTACH" => "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                           JOIN pg_namespace n ON n.oid = c.relnamespace \
                           WHERE n.nspname = $1 AND c.relname = $3 AND $2 IS NOT NULL)"
            .into(),
        // Comments, grants, statistics: setting them again changes nothing.
        _ => return Ok(false),
    };
    let (schema, table, name) = match entry.kind.as_str() {
        "INDEX ATTACH" => (entry.schema.clone().unwrap_or_default(), String::new(), entry.tag.clone()),
        _ => match deps.names.get(&(entry.catalog, entry.oid)) {
            Some(ident) => ident.clone(),
            // Not in the source's catalog any more: run it, and let the
            // target say whether it can.
            None => return Ok(false),
        },
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(&schema)
        .bind(&table)
        .bind(&name)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Error::driver(format!("looking for {} in the target", entry.label()), &e))
}

/// Sets the target's copy of each selected sequence to the source's
/// position (forward only: a sequence never hands out a value twice).
pub async fn copy_sequences(
    source: &mut PgConnection,
    target: &mut PgConnection,
    sequences: &[&Entry],
) -> anyhow::Result<()> {
    for entry in sequences {
        let name = entry.qualified(&entry.tag);
        let (value, called): (i64, bool) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT last_value, is_called FROM {name}")))
                .fetch_one(&mut *source)
                .await
                .map_err(|e| Error::driver(format!("reading sequence {name} in the source"), &e))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval($1::regclass, $2, $3) FROM {name} \
             WHERE (last_value, is_called) < ($2::int8, $3::bool) OR NOT is_called AND last_value <> $2"
        )))
        .bind(&name)
        .bind(value)
        .bind(called)
        .fetch_optional(&mut *target)
        .await
        .map_err(|e| Error::driver(format!("moving sequence {name} in the target"), &e))?;
    }
    Ok(())
}

/// Refreshes the selected materialized views (their data is not part of
/// the schema), in restore order: one may read another.
pub async fn refresh_materialized_views(conn: &mut PgConnection, views: &[&Entry]) -> anyhow::Result<()> {
    for entry in views {
        let name = entry.qualified(&entry.tag);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("REFRESH MATERIALIZED VIEW {name}")))
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::driver(format!("refreshing materialized view {name}"), &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
;\n; Archive created at …\n;\n\
7; 2615 16493 SCHEMA - inventory postgres\n\
3658; 0 0 COMMENT - SCHEMA inventory postgres\n\
231; 1259 16628 TABLE inventory film postgres\n\
3662; 0 0 COMMENT inventory TABLE film postgres\n\
3450; 2606 16639 CONSTRAINT inventory film film_pkey postgres\n";

    const SCRIPT: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\n\
\n--\n-- Name: inventory; Type: SCHEMA; Schema: -; Owner: postgres\n--\n\nCREATE SCHEMA inventory;\n\n\n\
--\n-- Name: SCHEMA inventory; Type: COMMENT; Schema: -; Owner: postgres\n--\n\nCOMMENT ON SCHEMA inventory IS 'x';\n\n\
SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n\
--\n-- Name: film; Type: TABLE; Schema: inventory; Owner: postgres\n--\n\nCREATE TABLE inventory.film (id int);\n\n\n\
--\n-- Name: TABLE film; Type: COMMENT; Schema: inventory; Owner: postgres\n--\n\nCOMMENT ON TABLE inventory.film IS 'y';\n\n\
--\n-- Name: film film_pkey; Type: CONSTRAINT; Schema: inventory; Owner: postgres\n--\n\n\
ALTER TABLE ONLY inventory.film ADD CONSTRAINT film_pkey PRIMARY KEY (id);\n\n\n\
--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n";

    fn dump() -> Dump {
        parse(LIST, &HashSet::from([3450]), SCRIPT).unwrap()
    }

    #[test]
    fn entries_pair_the_list_with_the_script() {
        let d = dump();
        let kinds: Vec<_> = d.entries.iter().map(|e| (e.kind.as_str(), e.oid, e.section)).collect();
        assert_eq!(
            kinds,
            [
                ("SCHEMA", 16493, Section::Pre),
                ("COMMENT", 0, Section::Pre),
                ("TABLE", 16628, Section::Pre),
                ("COMMENT", 0, Section::Pre),
                ("CONSTRAINT", 16639, Section::Post)
            ]
        );
        assert!(d.entries[4].sql.ends_with("PRIMARY KEY (id);"), "{}", d.entries[4].sql);
        assert!(!d.entries.iter().any(|e| e.sql.contains("restrict") || e.sql.contains("dump complete")));
        assert_eq!(d.entries[2].schema.as_deref(), Some("inventory"));
    }

    #[test]
    fn comments_follow_their_object() {
        let d = dump();
        assert_eq!(about(&d, &d.entries[1]), Some(0));
        assert_eq!(about(&d, &d.entries[3]), Some(2));
    }

    #[test]
    fn a_table_left_out_takes_what_is_built_on_it() {
        let d = dump();
        let deps = Dependencies {
            edges: vec![
                ((catalog::CLASS, 16628), (catalog::NAMESPACE, 16493), 'n'),
                ((2606, 16639), (catalog::CLASS, 16628), 'a'),
            ],
            tables: HashSet::from([16628]),
            names: HashMap::new(),
        };
        let all = select(&d, &deps, &HashSet::from([16628]), &HashSet::new(), Scope::Tables);
        assert_eq!(all.entries, [0, 1, 2, 3, 4]);
        let none = select(&d, &deps, &HashSet::new(), &HashSet::new(), Scope::Database);
        assert_eq!(none.entries, [0, 1], "only the schema and its comment: {none:?}");
    }

    #[test]
    fn the_password_never_reaches_the_command_line() {
        let url = DbUrl::parse("postgres://app:s%40cret@db.example:5433/shop?sslmode=require").unwrap();
        let (conninfo, password) = libpq_url(&url).unwrap();
        assert_eq!(conninfo, "postgres://app@db.example:5433/shop?sslmode=require");
        assert_eq!(password.as_deref(), Some("s@cret"));
    }
}
