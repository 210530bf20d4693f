//! What every end-to-end test needs: the plugins (built once from source),
//! throwaway databases (unique names, dropped after), a configuration file,
//! and the real `ferry` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// The plugin components, built from source by the first test that needs
/// them. Cargo's own lock makes concurrent test processes wait for one build;
/// later calls are no-ops.
pub struct Plugins {
    pub transform_user: PathBuf,
    /// Its inverse (new users back into legacy users): a parallel run's reverse stream.
    pub user_inverse: PathBuf,
    /// The `transform-row` example: legacy orders split into orders + order_items.
    pub split_orders: PathBuf,
    pub split_orders_v2: PathBuf,
    pub chaos: PathBuf,
    pub wrong_world: PathBuf,
    /// Every row unchanged into a table of the same name and columns.
    pub identity: PathBuf,
}

pub fn plugins() -> &'static Plugins {
    static PLUGINS: OnceLock<Plugins> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let dir = root().join("plugins");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
        );
        let out = dir.join("target/wasm32-wasip2/release");
        Plugins {
            transform_user: out.join("transform_user.wasm"),
            user_inverse: out.join("user_inverse.wasm"),
            split_orders: out.join("split_orders.wasm"),
            split_orders_v2: out.join("split_orders_v2.wasm"),
            chaos: out.join("chaos.wasm"),
            wrong_world: out.join("wrong_world.wasm"),
            identity: out.join("identity.wasm"),
        }
    })
}

/// A Python plugin under `plugins/python/<app>`, built from source with
/// componentize-py (`pip install componentize-py==0.25.1`) for `world` of
/// the WIT package in `wit_dir` (relative to the repository root).
pub fn python_plugin(app: &str, wit_dir: &str, world: &str) -> PathBuf {
    let root = root();
    let tool = Command::new("componentize-py")
        .arg("--version")
        .output()
        .expect("run componentize-py (install it: pip install componentize-py==0.25.1)");
    assert!(tool.status.success(), "componentize-py --version failed");
    built_component("python", app, &tool.stdout, &[wit_dir], world, "py", |out| {
        let mut build = Command::new("componentize-py");
        build.arg("-d").arg(root.join(wit_dir)).args(["-w", world, "componentize", "app", "-p"]);
        build.arg(root.join("plugins/python").join(app)).arg("-p").arg(root.join("plugins/python")).arg("-o").arg(out);
        build
    })
}

/// A JavaScript plugin `plugins/js/<app>/app.js`, built from source with
/// componentize-js (`npm ci` in `plugins/js`, which pins it) through
/// `plugins/js/build.mjs`.
pub fn js_plugin(app: &str, wit_dir: &str, world: &str) -> PathBuf {
    let root = root();
    let lock = std::fs::read(root.join("plugins/js/package-lock.json")).unwrap();
    assert!(
        root.join("plugins/js/node_modules/@bytecodealliance/componentize-js").exists(),
        "componentize-js is not installed: run `npm ci` in plugins/js (scripts/test.sh does)"
    );
    built_component("js", app, &lock, &[wit_dir], world, "js", |out| {
        let mut build = Command::new("node");
        build.arg(root.join("plugins/js/build.mjs")).arg(root.join("plugins/js").join(app).join("app.js"));
        build.arg(root.join(wit_dir)).arg(world).arg(out);
        build
    })
}

/// A component built from the sources under `plugins/<lang>` (files ending
/// in `.ext`) and the WIT. It is named by a hash of everything it is built
/// from (sources, WIT, the toolchain's identity `tool`, the world), so test
/// processes build it once and share it; a build goes to a temporary file
/// renamed into place, so no process sees half a component.
fn built_component(
    lang: &str,
    app: &str,
    tool: &[u8],
    wit_dirs: &[&str],
    world: &str,
    ext: &str,
    command: impl FnOnce(&Path) -> Command,
) -> PathBuf {
    let root = root();
    let mut inputs: Vec<PathBuf> = Vec::new();
    let dirs = std::iter::once(root.join("plugins").join(lang)).chain(wit_dirs.iter().map(|d| root.join(d)));
    for dir in dirs {
        for entry in walk(&dir) {
            let keep = entry.extension().is_some_and(|e| e == ext || e == "wit");
            if keep && !entry.components().any(|c| c.as_os_str() == "__pycache__" || c.as_os_str() == "node_modules") {
                inputs.push(entry);
            }
        }
    }
    inputs.sort();
    let mut fingerprint = tool.to_vec();
    fingerprint.extend_from_slice(world.as_bytes());
    for file in &inputs {
        fingerprint.extend_from_slice(file.strip_prefix(&root).unwrap().to_string_lossy().as_bytes());
        fingerprint.extend_from_slice(&std::fs::read(file).unwrap());
    }
    let hash = ferry::plugin::sha256_hex(&fingerprint);
    let out_dir = root.join("plugins/target").join(lang);
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{app}-{}.wasm", &hash[..16]));
    // One build at a time in this process (tests run on threads and may ask
    // for the same component at once); other processes build to their own
    // temporary file and the last rename wins with identical bytes.
    static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    if out.exists() {
        return out;
    }
    let tmp = out_dir.join(format!("{app}-{}.{}.tmp.wasm", &hash[..16], std::process::id()));
    let status = command(&tmp).status().unwrap_or_else(|e| panic!("run the {lang} toolchain: {e}"));
    assert!(status.success(), "the {lang} toolchain could not build plugins/{lang}/{app}");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "node_modules") {
            continue;
        }
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The PostgreSQL server the tests use (`FERRY_TEST_PG`, default the local
/// one) — without a database name.
pub fn pg_server() -> String {
    std::env::var("FERRY_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database created for one test and dropped when the test ends.
pub struct PgDb {
    pub name: String,
    /// The server's URL without a database; `None`: [`pg_server`], where
    /// the database was made for the test and is dropped with it.
    server: Option<String>,
}

impl PgDb {
    pub async fn new(tag: &str) -> PgDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ferry_t_{tag}_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = admin().await;
        sqlx::query(sqlx::AssertSqlSafe(&*format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        PgDb { name, server: None }
    }

    /// Database `name` of another server (a throwaway cluster's), read and
    /// written like a test database but never dropped.
    #[allow(dead_code)]
    pub fn on(server: &str, name: &str) -> PgDb {
        PgDb { name: name.to_string(), server: Some(server.to_string()) }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server.clone().unwrap_or_else(pg_server), self.name)
    }

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.expect("connect to test database")
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut c = self.conn().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}\nin: {sql}"))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if self.server.is_some() {
            return;
        }
        let name = self.name.clone();
        // Drop from a fresh thread and runtime: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut admin = admin().await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(&*format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut admin)
                    .await;
            });
        })
        .join();
    }
}

async fn admin() -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", pg_server())).await.expect("connect to PostgreSQL (is it running?)")
}

/// The legacy table, PostgreSQL flavour.
pub const PG_LEGACY_DDL: &str =
    "CREATE TABLE users (id bigint PRIMARY KEY, name text, email text, created_at timestamp, metadata text)";
/// The new table, PostgreSQL flavour.
pub const PG_NEW_DDL: &str = "CREATE TABLE users (id text PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, \
     email text NOT NULL, created_at timestamptz NOT NULL, settings jsonb NOT NULL)";

/// Fills a PostgreSQL legacy table with `n` generated rows. Every 50th row
/// (id % 50 == 0) has invalid JSON metadata, every 7th (not 50th) NULL
/// metadata; names have several spaces and Unicode, emails mixed case,
/// timestamps microseconds.
pub async fn seed_pg_legacy(db: &PgDb, n: i64) {
    db.exec(PG_LEGACY_DDL).await;
    db.exec(&pg_legacy_rows(1, n)).await;
}

/// The INSERT of generated legacy rows `from..=to` (see [`seed_pg_legacy`]).
pub fn pg_legacy_rows(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO users SELECT i, \
           (ARRAY['Jean-Luc  Picard', 'Mary Ann de la Cruz', 'Zoë Ångström', 'Prince', ' Leading'])[1 + i % 5] || ' ' || i, \
           'User.' || i || '@Example.COM', \
           timestamp '2020-01-01 00:00:00' + make_interval(secs => i * 1.000001), \
           CASE WHEN i % 50 = 0 THEN '{{\"theme\": \"dark\"' \
                WHEN i % 7 = 0 THEN NULL \
                WHEN i % 3 = 0 THEN '{{\"theme\": \"dark\", \"notifications\": false}}' \
                ELSE '{{\"notifications\": ' || (i % 2 = 0)::text || '}}' END \
         FROM generate_series({from}, {to}) AS i"
    )
}

/// How many of `n` generated rows the plugin rejects (invalid JSON).
pub fn invalid_rows(n: i64) -> i64 {
    n / 50
}

/// A SQLite database file in a temporary directory.
pub struct SqliteDb {
    /// Kept alive so the directory is removed when the test ends.
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl SqliteDb {
    pub fn new() -> SqliteDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        SqliteDb { _dir: dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    pub async fn conn(&self) -> sqlx::SqliteConnection {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url()).unwrap().create_if_missing(true);
        sqlx::SqliteConnection::connect_with(&opts).await.expect("open sqlite")
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let mut c = self.conn().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}\nin: {sql}"))
    }
}

/// The same generated rows as [`seed_pg_legacy`], in SQLite.
pub async fn seed_sqlite_legacy(db: &SqliteDb, n: i64) {
    db.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, created_at TIMESTAMP, metadata TEXT)")
        .await;
    db.exec(&format!(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
         INSERT INTO users SELECT i, \
           CASE i % 5 WHEN 1 THEN 'Mary Ann de la Cruz' WHEN 2 THEN 'Zoë Ångström' WHEN 3 THEN 'Prince' \
                      WHEN 4 THEN ' Leading' ELSE 'Jean-Luc  Picard' END || ' ' || i, \
           'User.' || i || '@Example.COM', \
           strftime('%Y-%m-%d %H:%M:%f', '2020-01-01 00:00:00', '+' || i || ' seconds') || printf('%03d', i % 1000), \
           CASE WHEN i % 50 = 0 THEN '{{\"theme\": \"dark\"' \
                WHEN i % 7 = 0 THEN NULL \
                WHEN i % 3 = 0 THEN '{{\"theme\": \"dark\", \"notifications\": false}}' \
                ELSE '{{\"notifications\": ' || CASE WHEN i % 2 = 0 THEN 'true' ELSE 'false' END || '}}' END \
         FROM s"
    ))
    .await;
}

/// A pipeline configuration written to a temporary file.
pub struct Pipeline {
    /// Kept alive so the directory is removed when the test ends.
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Pipeline {
    /// `extra` is appended verbatim after the `[plugin]` path (more plugin
    /// keys, then more sections).
    pub fn new(source: &str, target: &str, plugin: &Path, extra: &str) -> Pipeline {
        Self::with_target_keys(source, target, plugin, "", extra)
    }

    /// Like [`Pipeline::new`], with `target_keys` added to `[target]`.
    pub fn with_target_keys(source: &str, target: &str, plugin: &Path, target_keys: &str, extra: &str) -> Pipeline {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("ferry.toml");
        let text = format!(
            "name = \"test\"\n\n[source]\nurl = \"{source}\"\ntable = \"users\"\n\n[target]\nurl = \"{target}\"\ntable = \"users\"\n{target_keys}\n\
             [plugin]\npath = \"{}\"\n{extra}\n",
            plugin.display()
        );
        std::fs::write(&config, text).expect("write config");
        Pipeline { _dir: dir, config }
    }

    pub fn ferry(&self, args: &[&str]) -> Run {
        let mut full = vec!["--config", self.config.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        ferry(&full)
    }

    /// `ferry sync` running until killed; what it logs goes to the test's
    /// output (seen with --nocapture), where no pipe can fill up. Warnings
    /// only, unless `TEST_FERRY_LOG` says otherwise.
    pub fn daemon(&self) -> std::process::Child {
        self.command(&["sync"])
            .env("FERRY_LOG", std::env::var("TEST_FERRY_LOG").unwrap_or("ferry=warn".into()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `ferry` on this pipeline with its output captured.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = ferry_command();
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }
}

/// The `ferry` binary under test, with a shared compiled-plugin cache.
pub fn ferry_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env("FERRY_CACHE_DIR", root().join("target/ferry-test-cache")).env_remove("FERRY_CONFIG");
    cmd
}

/// The outcome of one `ferry` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

pub fn ferry(args: &[&str]) -> Run {
    run(ferry_command().args(args))
}

/// Runs a command to completion and captures what it said.
pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("run ferry");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Starts the command, kills it with SIGKILL after a random delay, and
/// repeats until a run ends by itself with one of `done` exit codes. Returns
/// how many kills interrupted a run.
pub fn kill_until_done(command: impl Fn() -> Command, done: &[i32]) -> u32 {
    use rand::Rng;
    use std::time::{Duration, Instant};
    let mut rng = rand::rng();
    let mut kills = 0;
    for attempt in 0..=KILL_ATTEMPTS {
        let mut child =
            command().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // Early attempts die young, later ones get longer; the last one is
        // left to finish, however slow the machine is today.
        let deadline = if attempt == KILL_ATTEMPTS {
            Instant::now() + Duration::from_secs(600)
        } else {
            Instant::now() + Duration::from_millis(rng.random_range(20..200 + u64::from(attempt) * 60))
        };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(
                    status.code().is_some_and(|c| done.contains(&c)),
                    "ferry ended by itself with {status}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return kills;
            }
            if Instant::now() >= deadline {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("the command did not complete within 10 minutes after {kills} kills");
}

/// Kills [`kill_until_done`] tries before letting the command finish.
const KILL_ATTEMPTS: u32 = 15;

/// Polls `check` every 20 ms until it holds; fails the test with `what`
/// after a minute.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "timed out waiting: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits for a `ferry … --json` child that may end with dead letters (exit
/// 0 or 4) and returns its report.
pub fn json_report(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!([0, 4].contains(&out.status.code().unwrap_or(-1)), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Inserts order `id` of a legacy `orders` table (id, customer_id,
/// placed_at, status, items json) with 250 items of incompressible text,
/// and checks that PostgreSQL stored them out of line (TOAST).
pub async fn insert_toasted_order(c: &mut sqlx::PgConnection, id: i64) {
    sqlx::query(
        "INSERT INTO orders SELECT $1, 1, '2024-05-01 00:00:00', 'paid', json_agg(json_build_object('sku', \
           md5(i::text) || md5((i * 7)::text), 'qty', i, 'price', '1.00') ORDER BY i) FROM generate_series(1, 250) i",
    )
    .bind(id)
    .execute(&mut *c)
    .await
    .unwrap();
    let toast: i64 =
        sqlx::query_scalar("SELECT pg_relation_size(reltoastrelid)::int8 FROM pg_class WHERE relname = 'orders'")
            .fetch_one(&mut *c)
            .await
            .unwrap();
    assert!(toast > 0, "order {id}'s items are TOASTed");
}
