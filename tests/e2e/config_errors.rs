//! Bad input gets a clear error — what, where, how to fix — and nothing is
//! written.

use crate::support::*;

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let (_d, path) = write_config("name = \"x\"\n\n[target]\nurl = \"sqlite://x.db\"\ntabel = \"users\"\n");
    let run = ferry(&["--config", &path, "check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(&format!("{path}:5:")), "{run:?}");
    assert!(run.stderr.contains("tabel"), "{run:?}");
}

#[test]
fn wrong_type_names_line_and_key() {
    let (_d, path) = write_config("[migrate]\nbatch_size = \"lots\"\n");
    let run = ferry(&["--config", &path, "migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!("{path}:2:"))
            && run.stderr.contains("invalid type: string \"lots\"")
            && run.stderr.contains("key `batch_size`"),
        "{run:?}"
    );
}

#[test]
fn missing_environment_variable_is_named() {
    let (_d, path) = write_config("[source]\nurl = \"${FERRY_TEST_SURELY_UNSET_VAR}\"\n");
    let run = ferry(&["--config", &path, "check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("FERRY_TEST_SURELY_UNSET_VAR") && run.stderr.contains(":2"), "{run:?}");
}

#[test]
fn missing_config_file_named_explicitly_is_an_error() {
    let run = ferry(&["--config", "/nonexistent/ferry.toml", "check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("/nonexistent/ferry.toml"), "{run:?}");
}

#[tokio::test]
async fn unreachable_database_is_clear_and_hides_the_password() {
    let target = SqliteDb::new();
    let p = Pipeline::new("postgres://app:hunter2@127.0.0.1:1/legacy", &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 7, "a connection failure: {run:?}");
    assert_eq!(run.json()["error"]["kind"], "transient", "connection refused is worth retrying: {run:?}");
    assert!(
        run.stderr.contains("cannot connect to source PostgreSQL at postgres://app:***@127.0.0.1:1/legacy"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"), "password leaked: {run:?}");
}

#[tokio::test]
async fn missing_source_table_is_named() {
    let (source, target) = (PgDb::new("src").await, SqliteDb::new());
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 8, "the source does not match the pipeline: {run:?}");
    assert!(run.stderr.contains("source table users does not exist"), "{run:?}");
}

#[tokio::test]
async fn source_without_primary_key_is_refused() {
    let (source, target) = (PgDb::new("src").await, SqliteDb::new());
    source.exec("CREATE TABLE users (id bigint, name text, email text, created_at timestamp, metadata text)").await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stderr.contains("no primary key"), "{run:?}");
}

#[tokio::test]
async fn target_shape_mismatch_is_listed_before_writing() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 10).await;
    target.exec("CREATE TABLE users (id bigint PRIMARY KEY, first_name text, last_name text, email text, created_at timestamptz)").await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stderr.contains("does not match the plugin's output"), "{run:?}");
    assert!(run.stderr.contains("column `id` has type bigint"), "{run:?}");
    assert!(run.stderr.contains("column `settings` is missing"), "{run:?}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'").await,
        0,
        "nothing written"
    );
}

/// Plugin problems are found before anything is written to the target.
/// `code`: 8 for a plugin of another contract or pin, 9 for one that cannot
/// be used at all.
async fn plugin_error(plugin: &std::path::Path, extra: &str, code: i32) -> Run {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 10).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), plugin, extra);
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, code, "{run:?}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'").await,
        0,
        "nothing written: {run:?}"
    );
    run
}

#[tokio::test]
async fn plugin_of_the_wrong_world_is_refused() {
    let run = plugin_error(&plugins().wrong_world, "", 8).await;
    assert!(run.stderr.contains("exports neither `ferry:transform/transform-row@0.2.0`"), "{run:?}");
    assert!(run.stderr.contains("nor `ferry:transform/transform-user@0.1.0`"), "{run:?}");
    assert!(run.stderr.contains("greet"), "lists what it does export: {run:?}");
}

#[tokio::test]
async fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let run = plugin_error(&path, "", 9).await;
    assert!(run.stderr.contains("is a core WebAssembly module, not a component"), "{run:?}");
}

#[tokio::test]
async fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transform.js");
    std::fs::write(&path, "export function transform() {}").unwrap();
    let run = plugin_error(&path, "", 9).await;
    assert!(run.stderr.contains("is not a WebAssembly file"), "{run:?}");
}

#[tokio::test]
async fn a_pinned_hash_mismatch_is_refused() {
    let run = plugin_error(&plugins().transform_user, &format!("sha256 = \"{}\"\n", "ab".repeat(32)), 8).await;
    assert!(run.stderr.contains("but the configuration pins"), "{run:?}");
}

#[tokio::test]
async fn the_right_pin_is_accepted() {
    let bytes = std::fs::read(&plugins().transform_user).unwrap();
    let sha = ferry::plugin::sha256_hex(&bytes);
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 20).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, &format!("sha256 = \"{sha}\"\n"));
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "20 generated rows are all valid: {run:?}");
    assert_eq!(run.json()["tables"][0]["plugin_sha256"], sha);
}

#[test]
fn a_missing_configuration_file_says_its_cause_once_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let run = ferry(&["--config", path.to_str().unwrap(), "check"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.matches("No such file or directory").count(), 1, "{run:?}");
    assert!(run.stderr.contains("--config PATH"), "{run:?}");
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    let plugin = plugins().transform_user.to_str().unwrap();
    let args = ["--source", &source.url(), "--target", &target.url(), "--plugin", plugin, "check"];
    let run = run(ferry_command().env("FERRY_LOG", "trace").args(args));
    assert!(run.stderr.contains("TRACE"), "{run:?}");
    assert!(!run.stderr.contains('\u{1b}'), "ANSI escape in piped logs: {}", &run.stderr[..run.stderr.len().min(500)]);
}

#[test]
fn many_table_pipelines_say_what_they_cannot_do() {
    let (_d, path) = write_config(
        "[source]\nurl = \"sqlite://a.db\"\ninclude = [\"*\"]\ntable = \"users\"\n[target]\nurl = \"sqlite://b.db\"\n",
    );
    let run = ferry(&["--config", &path, "migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("name tables in [[tables]]"), "{run:?}");

    let (_d, path) =
        write_config("[source]\nurl = \"sqlite://a.db\"\ninclude = [\"*\"]\n[target]\nurl = \"sqlite://b.db\"\n");
    let run = ferry(&["--config", &path, "sync"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not PostgreSQL"), "{run:?}");

    let (_d, path) = write_config(
        "[source]\nurl = \"sqlite://a.db\"\nexclude = [\"x\"]\n[target]\nurl = \"sqlite://b.db\"\n[plugin]\npath = \"p.wasm\"\n",
    );
    let run = ferry(&["--config", &path, "migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("source.exclude needs source.include"), "{run:?}");

    // One pipeline's plugin and another's tables: which table would it be?
    let (_d, path) = write_config(
        "[source]\nurl = \"sqlite://a.db\"\ninclude = [\"*\"]\n[target]\nurl = \"sqlite://b.db\"\n[plugin]\npath = \"p.wasm\"\n",
    );
    let run = ferry(&["--config", &path, "migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("give each table its plugin in [[tables]]"), "{run:?}");
    let (_d, path) = write_config(&format!(
        "[source]\nurl = \"sqlite://a.db\"\ninclude = [\"*\"]\n[target]\nurl = \"sqlite://b.db\"\n[plugin]\nsha256 = \"{}\"\n",
        "ab".repeat(32)
    ));
    let run = ferry(&["--config", &path, "migrate"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("plugin_sha256"), "{run:?}");
}

#[test]
fn parallel_run_settings_are_checked_before_anything_connects() {
    let base = "[source]\nurl = \"postgres://u@127.0.0.1:1/a\"\n[target]\nurl = \"postgres://u@127.0.0.1:1/b\"\n";
    for (extra, says) in [
        // An inverse of nothing.
        ("[[tables]]\nname = \"notes\"\ninverse = \"inv.wasm\"\n", "has no plugin, so nothing to invert"),
        ("[[tables]]\nname = \"u\"\nplugin = \"p.wasm\"\ninverse_sha256 = \"abc\"\n", "is not a SHA-256"),
        ("[[tables]]\nname = \"u\"\n[reverse]\nmax_lag_seconds = 0\n", "reverse.max_lag_seconds = 0"),
        ("[[tables]]\nname = \"u\"\n[reverse]\nswitch_webhook = \"ftp://x\"\n", "is not an http(s) URL"),
    ] {
        let (_d, path) = write_config(&format!("{base}{extra}"));
        let run = ferry(&["--config", &path, "check"]);
        assert_eq!(run.code, 2, "{extra}: {run:?}");
        assert!(run.stderr.contains(says), "{extra}: {run:?}");
    }
    // Without [reverse], the reverse stream and the switches say what to add.
    let (_d, path) = write_config(&format!("{base}[[tables]]\nname = \"u\"\n"));
    for command in [&["sync", "--reverse"][..], &["cutover"], &["conflicts"]] {
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(command);
        let run = ferry(&args);
        assert_eq!(run.code, 2, "{command:?}: {run:?}");
        assert!(run.stderr.contains("[reverse]"), "{command:?}: {run:?}");
    }
}
