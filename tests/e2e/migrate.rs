//! `ferry migrate` between engines, with counts, content and dead letters
//! checked in the target, and the conflict policies.

use crate::support::*;

const N: i64 = 5_000;

/// Checks a migrated PostgreSQL target: counts, one row's exact content, and
/// the dead letters of the invalid-JSON rows with their reasons.
async fn assert_pg_target(target: &PgDb, n: i64) {
    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await, invalid);
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM ferry.dead_letters WHERE kind = 'reject' AND reason LIKE 'metadata is not valid JSON: EOF while parsing%' AND (source_key::int8 % 50) = 0").await,
        invalid,
        "every invalid-JSON row is a dead letter with the parser's message"
    );
    // Row 6: name 'Mary Ann de la Cruz 6', metadata theme dark / false.
    let mut c = target.conn().await;
    let (first, last, email, created, settings): (String, String, String, String, serde_json::Value) = sqlx::query_as(
        "SELECT first_name, last_name, email, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), settings FROM users WHERE id = 'user_6'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((first.as_str(), last.as_str()), ("Mary", "Ann de la Cruz 6"));
    assert_eq!(email, "user.6@example.com");
    assert_eq!(created, "2020-01-01 00:00:06.000006", "microseconds kept");
    assert_eq!(settings, serde_json::json!({"theme": "dark", "notifications": false}));
    // Row 7: NULL metadata → defaults.
    let s: serde_json::Value =
        sqlx::query_scalar("SELECT settings FROM users WHERE id = 'user_7'").fetch_one(&mut c).await.unwrap();
    assert_eq!(s, serde_json::json!({"theme": "light", "notifications": true}));
}

async fn assert_sqlite_target(target: &SqliteDb, n: i64) {
    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid);
    assert_eq!(
        target
            .scalar_i64("SELECT count(*) FROM ferry_dead_letters WHERE reason LIKE 'metadata is not valid JSON%'")
            .await,
        invalid
    );
    let mut c = target.conn().await;
    let (first, last, email, settings): (String, String, String, String) =
        sqlx::query_as("SELECT first_name, last_name, email, settings FROM users WHERE id = 'user_6'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((first.as_str(), last.as_str(), email.as_str()), ("Mary", "Ann de la Cruz 6", "user.6@example.com"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&settings).unwrap(),
        serde_json::json!({"theme": "dark", "notifications": false})
    );
}

fn assert_migrated(run: &Run, n: i64) {
    assert_eq!(run.code, 4, "completed with dead letters: {run:?}");
    let j = run.json();
    assert_eq!(j["ending"], "completed", "{run:?}");
    assert_eq!(j["stats"]["extracted"], n);
    assert_eq!(j["stats"]["loaded"], n - invalid_rows(n));
    assert_eq!(j["stats"]["dead_lettered"], invalid_rows(n));
    assert_eq!(j["accounted"], true);
}

fn assert_valid(p: &Pipeline) {
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["ok"], true);
}

#[tokio::test]
async fn migrates_postgres_to_postgres() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, N).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(
        &source.url(),
        &target.url(),
        &plugins().transform_user,
        "[migrate]\nbatch_size = 700\nworkers = 2\n",
    );
    assert_migrated(&p.ferry(&["migrate", "--json"]), N);
    assert_pg_target(&target, N).await;
    assert_valid(&p);
}

#[tokio::test]
async fn migrates_postgres_to_postgres_with_text_copy() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 1_000).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::with_target_keys(
        &source.url(),
        &target.url(),
        &plugins().transform_user,
        "load_method = \"copy-text\"\n",
        "",
    );
    assert_migrated(&p.ferry(&["migrate", "--json"]), 1_000);
    assert_pg_target(&target, 1_000).await;
    assert_valid(&p);
}

#[tokio::test]
async fn migrates_postgres_to_sqlite() {
    let source = PgDb::new("src").await;
    seed_pg_legacy(&source, N).await;
    let target = SqliteDb::new();
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate", "--json"]);
    assert_migrated(&run, N);
    assert_sqlite_target(&target, N).await;
    assert_valid(&p);
}

#[tokio::test]
async fn migrates_sqlite_to_postgres() {
    let source = SqliteDb::new();
    seed_sqlite_legacy(&source, N).await;
    let target = PgDb::new("dst").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 333\n");
    assert_migrated(&p.ferry(&["migrate", "--json"]), N);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, N - invalid_rows(N));
    let micros = target
        .scalar_i64("SELECT extract(microseconds FROM created_at)::int8 % 1000000 FROM users WHERE id = 'user_123'")
        .await;
    assert_eq!(micros, 123, "SQLite text timestamps keep their microseconds");
    assert_valid(&p);
}

/// SQLite has no timestamp type: most databases keep them in TEXT columns,
/// in any of the forms SQLite's date functions read. They reach the seed's
/// plugin as timestamps; only a value that is no timestamp is a dead letter,
/// named.
#[tokio::test]
async fn sqlite_text_timestamps_reach_the_plugin_as_timestamps() {
    let source = SqliteDb::new();
    source
        .exec(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, created_at TEXT, metadata TEXT);
             INSERT INTO users VALUES
               (1, 'Ann Lee', 'a@x.io', '2024-05-01 10:20:30', NULL),
               (2, 'Bo Kim', 'b@x.io', '2024-05-01T10:20:30.123456Z', NULL),
               (3, 'Cy Park', 'c@x.io', '2024-05-01 12:20:30+02:00', NULL),
               (4, 'Di Ng', 'd@x.io', '2024-05-01', NULL),
               (5, 'Ed Wu', 'e@x.io', 'last tuesday', NULL),
               (6, 'Fay Ho', 'f@x.io', NULL, NULL);",
        )
        .await;
    let target = PgDb::new("textts").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "one dead letter: {run:?}");
    let at = |id: &'static str| {
        let target = &target;
        async move {
            target
                .scalar_i64(&format!(
                    "SELECT (extract(epoch FROM created_at) * 1000000)::int8 FROM users WHERE id = 'user_{id}'"
                ))
                .await
        }
    };
    let base = 1_714_558_830_000_000; // 2024-05-01 10:20:30 UTC
    assert_eq!(at("1").await, base);
    assert_eq!(at("2").await, base + 123_456);
    assert_eq!(at("3").await, base, "+02:00 taken into account");
    assert_eq!(at("4").await, base - (10 * 3600 + 20 * 60 + 30) * 1_000_000, "a bare date is midnight UTC");
    let mut c = target.conn().await;
    let (key, reason): (String, String) =
        sqlx::query_as("SELECT source_key, reason FROM ferry.dead_letters").fetch_one(&mut c).await.unwrap();
    assert_eq!(key, "5");
    assert!(reason.contains("\"last tuesday\" is not a timestamp"), "{reason}");
}

#[tokio::test]
async fn migrates_sqlite_to_sqlite() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, N).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_migrated(&p.ferry(&["migrate", "--json"]), N);
    assert_sqlite_target(&target, N).await;
    assert_valid(&p);
}

#[tokio::test]
async fn existing_target_rows_stop_the_run_by_default_and_follow_the_policy_otherwise() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 300).await;
    target.exec(PG_NEW_DDL).await;
    target
        .exec("INSERT INTO users VALUES ('user_5', 'Old', 'Row', 'old@example.com', now(), '{\"theme\":\"old\"}')")
        .await;

    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 10, "a conflict: {run:?}");
    assert!(run.stderr.contains("already has a row with key user_5") && run.stderr.contains("on_conflict"), "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 1, "nothing of the failing batch was written");

    // skip: the existing row stays, counted as skipped.
    let p = Pipeline::with_target_keys(
        &source.url(),
        &target.url(),
        &plugins().transform_user,
        "on_conflict = \"skip\"\n",
        "",
    );
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.json()["stats"]["skipped"], 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE first_name = 'Old'").await, 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 300 - invalid_rows(300));

    // overwrite, on a fresh run: every row is replaced by its transform.
    let run = ferry(&[
        "--config",
        p.config.to_str().unwrap(),
        "--on-conflict",
        "overwrite",
        "migrate",
        "--restart",
        "--json",
    ]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE first_name = 'Old'").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 300 - invalid_rows(300));
}

#[tokio::test]
async fn a_second_run_after_completion_does_nothing() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 100).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    let again = p.ferry(&["migrate", "--json"]);
    assert_eq!(again.json()["ending"], "already_completed", "{again:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 100 - invalid_rows(100));
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry_dead_letters").await, invalid_rows(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_example_migrates_and_validates() {
    plugins();
    let dir = tempfile::tempdir().unwrap();
    let legacy = SqliteDb::new();
    legacy.exec(&std::fs::read_to_string(root().join("examples/quickstart/legacy.sql")).unwrap()).await;
    std::fs::copy(&legacy.path, dir.path().join("legacy.db")).unwrap();
    let config = root().join("examples/quickstart/ferry.toml");
    let run_in = |args: &[&str]| {
        run(ferry_command().env("FERRY_QUICKSTART_DIR", dir.path()).arg("--config").arg(&config).args(args))
    };
    let check = run_in(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let run = run_in(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let j = run.json();
    let line = |name: &str| j["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).cloned().unwrap();
    let counts = |name: &str| {
        let l = line(name);
        [&l["source_rows"], &l["loaded"], &l["filtered"], &l["dead_lettered"]].map(|v| v.as_u64().unwrap())
    };
    assert_eq!(counts("users"), [15, 10, 0, 5], "the seed's edge cases: {run:?}");
    assert_eq!(counts("orders"), [7, 4, 1, 2], "a test order filtered, bad items rejected: {run:?}");
    assert_eq!(counts("countries"), [4, 4, 0, 0]);
    assert_eq!(line("orders")["target"], "orders, order_items");
    assert_eq!(j["accounted"], true);
    let new = SqliteDb { _dir: tempfile::tempdir().unwrap(), path: dir.path().join("new.db") };
    assert_eq!(new.scalar_i64("SELECT count(*) FROM order_items").await, 4);
    assert_eq!(new.scalar_i64("SELECT count(*) FROM order_items WHERE price = '123456789012345678.99'").await, 1);
    let v = run_in(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[tokio::test]
async fn a_row_postgresql_cannot_hold_is_dead_lettered_and_the_rest_loads() {
    // SQLite text may hold a NUL character; PostgreSQL text cannot.
    let source = SqliteDb::new();
    seed_sqlite_legacy(&source, 1000).await;
    source.exec("UPDATE users SET name = 'Nul' || char(0) || 'Byte Row' WHERE id = 501").await;
    let target = PgDb::new("nul").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 100\n");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let invalid = invalid_rows(1000);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 1000 - invalid - 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_501'").await, 0);
    let mut c = target.conn().await;
    let (kind, reason, row): (String, String, String) = sqlx::query_as(
        "SELECT kind, reason, source_row->>'first_name' FROM ferry.dead_letters WHERE source_key = '501'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(kind, "load");
    assert!(reason.contains("user_501") && reason.contains("0x00"), "the database's message: {reason}");
    assert_eq!(row, "Nul\\u0000Byte", "the refused row is kept, its NUL spelled out");
    let s = &run.json()["stats"];
    assert_eq!(s["dead_lettered"].as_i64(), Some(invalid + 1), "{run:?}");
    assert_eq!(s["loaded"].as_i64(), Some(1000 - invalid - 1), "{run:?}");
    // validate explains the refused row by its dead letter.
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_target_constraints_refuse_are_isolated_exactly_once_across_kills() {
    let n = 20_000;
    let source = PgDb::new("refsrc").await;
    seed_pg_legacy(&source, n).await;
    let target = PgDb::new("refdst").await;
    // The new schema is stricter than the old data: a CHECK, a varchar
    // limit and a NOT NULL the transform does not know about.
    target
        .exec(
            "CREATE TABLE users (id text PRIMARY KEY, first_name varchar(12) NOT NULL, last_name text NOT NULL, \
             email text NOT NULL CHECK (email <> 'user.777@example.com'), created_at timestamptz NOT NULL, \
             settings jsonb NOT NULL CHECK (id <> 'user_15001' OR settings ? 'nope'))",
        )
        .await;
    source.exec("UPDATE users SET name = 'Bartholomew-Maximilian Long' WHERE id = 4242").await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 200\n");
    let kills = kill_until_done(|| p.command(&["migrate"]), &[4]);
    assert!(kills > 0, "the run was never interrupted");
    let refused = ["777", "4242", "15001"];
    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid - refused.len() as i64);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.dead_letters WHERE kind = 'load'").await, 3);
    for key in refused {
        let reason: String = sqlx::query_scalar("SELECT reason FROM ferry.dead_letters WHERE source_key = $1")
            .bind(key)
            .fetch_one(&mut target.conn().await)
            .await
            .unwrap();
        assert!(reason.contains("violates check constraint") || reason.contains("too long"), "{key}: {reason}");
    }
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await,
        invalid + 3,
        "every dead letter once, whatever the kills"
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[tokio::test]
async fn rows_a_sqlite_target_refuses_are_dead_lettered_and_the_rest_loads() {
    let source = PgDb::new("sqlref").await;
    seed_pg_legacy(&source, 1000).await;
    let target = SqliteDb::new();
    // A stricter new schema: a CHECK the transform does not know about.
    target
        .exec(
            "CREATE TABLE users (id TEXT PRIMARY KEY, first_name TEXT NOT NULL, last_name TEXT NOT NULL, \
             email TEXT NOT NULL CHECK (email <> 'user.77@example.com'), created_at TEXT NOT NULL, settings TEXT NOT NULL)",
        )
        .await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 4, "{run:?}");
    let invalid = invalid_rows(1000);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 1000 - invalid - 1);
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM ferry_dead_letters WHERE kind = 'load' AND source_key = '77' AND reason LIKE '%CHECK%'").await,
        1
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry_dead_letters").await, invalid + 1);
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
}

/// A run the one-table path of an earlier version left unfinished (one
/// integer checkpoint, no per-table progress) is not resumed as if it were
/// this pipeline's: the error says how to go on, and nothing is written.
#[tokio::test]
async fn a_run_left_by_the_old_one_table_path_is_not_resumed_blindly() {
    let (source, target) = (PgDb::new("oldsrc").await, PgDb::new("olddst").await);
    seed_pg_legacy(&source, 100).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    // The control schema as this version makes it, then a run as the old
    // path recorded it.
    assert_eq!(p.ferry(&["status"]).code, 0);
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    target
        .exec(
            "DELETE FROM ferry.lineage; DELETE FROM ferry.dead_letters; DELETE FROM ferry.table_progress; \
             DELETE FROM ferry.runs; DELETE FROM users; \
             INSERT INTO ferry.runs (run_id, pipeline, source, target_table, plugin_sha256, status, last_key) \
             VALUES ('old-run', 'test', 'legacy', 'users', 'abc', 'interrupted', 42)",
        )
        .await;
    let run = p.ferry(&["migrate"]);
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stderr.contains("run old-run") && run.stderr.contains("--restart"), "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0, "nothing written");
    let run = p.ferry(&["migrate", "--restart"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 100 - invalid_rows(100));
}
