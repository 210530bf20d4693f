//! `ferry rollback RUN`: a migration taken back, judged by the test's own
//! reading of every row (`whole_row::text` in key order, which prints each
//! value through its type's output function), never by ferry's checksums.
//! The rollback of a stream is in `parallel.rs` (the reverse stream of a
//! parallel run, into tables that held rows).

use crate::support::*;
use crate::tables::{EVERYTHING_DDL, EVERYTHING_ROWS, TYPES_DDL, rows_text, tables_pipeline};
use crate::tables_sync::sqlite_rows;

const ACCOUNTS: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, doc text NOT NULL);
CREATE TABLE orders (account_id bigint NOT NULL REFERENCES accounts (id), n int NOT NULL, amount numeric(12, 2),
                     PRIMARY KEY (account_id, n));
-- Several KB of incompressible text per account: stored out of line.
INSERT INTO accounts SELECT i, 'owner ' || i, (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 150) g)
  FROM generate_series(1, 200) i;
INSERT INTO orders SELECT a, n, a * 1.5 + n FROM generate_series(1, 200) a, generate_series(1, 3) n;
"#;

fn tables(plugin: &std::path::Path) -> String {
    format!(
        "[[tables]]\nname = \"everything\"\non_conflict = \"overwrite\"\n\n\
         [[tables]]\nname = \"users\"\nplugin = \"{}\"\n\n[[tables]]\nname = \"accounts\"\n\n[[tables]]\nname = \"orders\"\n",
        plugin.display()
    )
}

/// Whether `table` exists in `db`.
async fn exists(db: &PgDb, table: &str) -> bool {
    db.scalar_i64(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = '{table}'"))
        .await
        == 1
}

fn table<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name}: {report}"))
}

#[tokio::test]
async fn a_rolled_back_migration_leaves_every_table_as_before_and_keeps_what_others_changed() {
    let (source, target) = (PgDb::new("undo_src").await, PgDb::new("undo_dst").await);
    seed_pg_legacy(&source, 300).await;
    source.exec(&format!("{TYPES_DDL}{EVERYTHING_DDL}{EVERYTHING_ROWS}{ACCOUNTS}")).await;
    // The source's rows of `everything` differ from the target's, which
    // hold every type's edge values (-0, NaN, infinities, BC dates, money,
    // xml, …): the run overwrites them, the rollback must write them back
    // exactly.
    source.exec("UPDATE everything SET t = 'from the source ' || id, i4 = 42; INSERT INTO everything (id, t) VALUES (6, 'new')").await;
    target.exec(&format!("{TYPES_DDL}{EVERYTHING_DDL}{EVERYTHING_ROWS}{PG_NEW_DDL}")).await;
    target.exec("INSERT INTO everything (id, t) VALUES (100, 'only in the target')").await;
    let before = rows_text(&target, "everything", "id").await;
    assert_eq!(before.len(), 6);

    let hooks = tempfile::tempdir().unwrap();
    let notify = format!(
        "[notify]\ncommand = \"cat >> {}/notes; echo >> {}/notes\"\n",
        hooks.path().display(),
        hooks.path().display()
    );
    let p =
        tables_pipeline(&source.url(), &target.url(), "", &format!("{notify}\n{}", tables(&plugins().transform_user)));
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "completed, the invalid legacy rows dead-lettered: {run:?}");
    let run_id = run.json()["run_id"].as_str().unwrap().to_string();
    let migrated = rows_text(&target, "everything", "id").await;
    assert_eq!(migrated.len(), 7);
    assert!(migrated.iter().filter(|r| r.contains("from the source")).count() == 5, "{migrated:?}");
    assert!(target.scalar_i64("SELECT count(*) FROM users").await > 250);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 600);

    // Someone else changes a row the run overwrote, and adds an account.
    target.exec("UPDATE everything SET t = 'someone else' WHERE id = 1").await;
    target.exec("INSERT INTO accounts VALUES (100000, 'someone else', 'x')").await;
    let changed = rows_text(&target, "everything", "id").await;

    // A dry run says it all and changes nothing.
    let dry = p.ferry(&["rollback", &run_id, "--dry-run", "--json"]);
    assert_eq!(dry.code, 3, "not exact while others' rows are kept: {dry:?}");
    let d = dry.json();
    assert_eq!(table(&d, "public.everything")["changed_by_others"], 1, "{d}");
    assert_eq!(table(&d, "public.everything")["changed_keys"][0], "(1)", "{d}");
    assert_eq!(table(&d, "public.accounts")["changed_by_others"], 1, "{d}");
    assert_eq!(table(&d, "public.orders")["deleted"], 600, "{d}");
    assert_eq!(rows_text(&target, "everything", "id").await, changed, "a dry run writes nothing");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 600);

    // The rollback: everything the run wrote goes, but the rows others
    // changed since, which are reported and kept.
    let back = p.ferry(&["rollback", &run_id, "--json"]);
    assert_eq!(back.code, 3, "{back:?}");
    let b = back.json();
    assert_eq!(table(&b, "public.everything")["restored"], 4, "rows 2 to 5 (1 is kept, 6 was new): {b}");
    assert_eq!(table(&b, "public.users")["exact"], true, "{b}");
    assert_eq!(table(&b, "public.orders")["exact"], true, "{b}");
    assert_eq!(table(&b, "public.accounts")["changed_keys"][0], "(100000)", "{b}");
    let now = rows_text(&target, "everything", "id").await;
    assert_eq!(now.len(), before.len(), "the row the run added is gone: {now:?}");
    assert!(now[0].contains("someone else"), "the row someone else changed is kept: {}", now[0]);
    assert_eq!(now[1..], before[1..], "every other row exactly as before the run");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM accounts WHERE owner = 'someone else'").await, 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM accounts").await, 1);

    // Told to, it overwrites them too: exactly the state before the run.
    let forced = p.ferry(&["rollback", &run_id, "--force", "--json"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(forced.json()["exact"], true);
    assert_eq!(rows_text(&target, "everything", "id").await, before);
    // The tables the run's schema copy created are dropped again; the
    // plugin's output table (made from its declared columns) stays, empty.
    for t in ["accounts", "orders"] {
        assert!(!exists(&target, t).await, "{t} was created by the run: dropped");
    }
    assert!(exists(&target, "users").await);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);
    let again = p.ferry(&["rollback", &run_id]);
    assert_eq!(again.code, 8, "{again:?}");
    assert!(again.stderr.contains("already rolled back"), "{again:?}");
    let notes = std::fs::read_to_string(hooks.path().join("notes")).unwrap();
    let events: Vec<serde_json::Value> =
        notes.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    let rollbacks: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 2, "the rollback and the forced one, not the dry run: {notes}");
    assert_eq!(rollbacks[1]["details"]["exact"], true);

    let status = p.ferry(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["phase"], "migrate run rolled_back", "{status:?}");
    let plan = p.ferry(&["plan"]);
    assert!(
        plan.stdout.contains(&format!("run {run_id} was rolled back: `ferry migrate` starts a new one")),
        "{plan:?}"
    );

    // A rolled-back run is never resumed: migrate starts a new one.
    let rerun = p.ferry(&["migrate", "--json"]);
    assert_eq!(rerun.code, 4, "{rerun:?}");
    assert_ne!(rerun.json()["run_id"], run_id.as_str());
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 600);

    // With the journal off, ferry says so, and rollback refuses.
    let off = tables_pipeline(
        &source.url(),
        &target.url(),
        "",
        &format!("undo_journal = false\non_conflict = \"overwrite\"\n\n{}", tables(&plugins().transform_user)),
    );
    let run = off.ferry(&["migrate", "--restart", "--json"]);
    assert!(run.stderr.contains("undo journal is off"), "{run:?}");
    let unjournaled = run.json()["run_id"].as_str().unwrap().to_string();
    let refused = off.ferry(&["rollback", &unjournaled]);
    assert_eq!(refused.code, 8, "{refused:?}");
    assert!(refused.stderr.contains("has no undo journal"), "{refused:?}");
}

/// SQLite rows carry no writing transaction: its journal is a copy of the
/// file at the run's start and one as the run left it. The rollback puts
/// back exactly what the first holds, and keeps what someone changed after
/// the run (told apart with the second) until --force.
#[tokio::test]
async fn a_rolled_back_migration_into_sqlite_is_restored_from_the_copy_taken_at_its_start() {
    let source = PgDb::new("undo_sqlite_src").await;
    source.exec(ACCOUNTS).await;
    let target = SqliteDb::new();
    // The target already holds accounts, some of them older versions (with
    // values of each storage class), and one only it has.
    target
        .exec(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, doc TEXT NOT NULL, score REAL); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) \
             INSERT INTO accounts SELECT i, 'old owner ' || i, CASE WHEN i % 2 = 0 THEN x'00ff' ELSE i END, i / 3.0 \
               FROM n; \
             INSERT INTO accounts VALUES (100001, 'only in the target', '', -0.0)",
        )
        .await;
    source.exec("ALTER TABLE accounts ADD COLUMN score float8").await;
    let before = sqlite_rows(&target, "accounts", "id").await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "",
        "[[tables]]\nname = \"accounts\"\non_conflict = \"overwrite\"\n\n[[tables]]\nname = \"orders\"\n",
    );
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run_id = run.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(target.scalar_i64("SELECT count(*) FROM accounts").await, 201);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 600);
    target.exec("UPDATE accounts SET owner = 'someone else' WHERE id = 7").await;

    let back = p.ferry(&["rollback", &run_id, "--json"]);
    assert_eq!(back.code, 3, "{back:?}");
    let b = back.json();
    assert_eq!(table(&b, "accounts")["changed_keys"], serde_json::json!(["(7)"]), "{b}");
    assert_eq!(table(&b, "orders")["exact"], true, "{b}");
    let now = sqlite_rows(&target, "accounts", "id").await;
    let differ: Vec<(&String, &String)> = now.iter().zip(&before).filter(|(a, b)| a != b).collect();
    assert_eq!((now.len(), differ.len()), (before.len(), 1), "only the row someone else changed: {differ:?}");
    assert!(differ[0].0.contains("someone else"), "{differ:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders").await, 0);

    let forced = p.ferry(&["rollback", &run_id, "--force", "--json"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(
        sqlite_rows(&target, "accounts", "id").await,
        before,
        "exactly the rows before the run, storage classes too"
    );
    // The copies are gone once every table is back.
    let copies = std::fs::read_dir(target.path.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("ferry-undo"))
        .count();
    assert_eq!(copies, 0);
}

/// The way a migration fails in production: killed with SIGKILL half-way,
/// a batch perhaps in flight. What it committed is its own, found by the
/// transactions that wrote it, and the rollback takes exactly that back:
/// the rows it overwrote come back, the rows it added go.
#[tokio::test]
async fn a_migration_killed_half_way_is_rolled_back_exactly() {
    let (source, target) = (PgDb::new("undo_kill_src").await, PgDb::new("undo_kill_dst").await);
    let ddl = "CREATE TABLE events (id bigint PRIMARY KEY, body text NOT NULL)";
    source
        .exec(&format!(
            "{ddl}; INSERT INTO events SELECT g, md5(g::text) || repeat('x', g % 300) FROM generate_series(1, 100000) g"
        ))
        .await;
    // The target holds every 7th key already; a statement trigger of its
    // own makes each batch take a while, so the kill lands half-way
    // (ENABLE ALWAYS: it fires even while ferry loads with the target's
    // triggers off).
    target
        .exec(&format!(
            "{ddl}; INSERT INTO events SELECT g * 7, 'before ' || g FROM generate_series(1, 20000) g; \
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$; \
             CREATE TRIGGER slow AFTER INSERT OR UPDATE ON events FOR EACH STATEMENT EXECUTE FUNCTION slow(); \
             ALTER TABLE events ENABLE ALWAYS TRIGGER slow"
        ))
        .await;
    let before = rows_text(&target, "events", "id").await;
    let p = tables_pipeline(
        &source.url(),
        &target.url(),
        "",
        "[migrate]\nbatch_size = 500\n\n[[tables]]\nname = \"events\"\non_conflict = \"overwrite\"\n",
    );
    let mut child = p.spawn(&["migrate"]);
    let written = "SELECT count(*) FROM events WHERE body NOT LIKE 'before %'";
    eventually("some batches committed", || async { target.scalar_i64(written).await >= 5000 }).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let n = target.scalar_i64(written).await;
    assert!((5000..100_000).contains(&n), "killed half-way ({n} rows written)");
    let mut c = target.conn().await;
    let (run_id, status): (String, String) =
        sqlx::query_as("SELECT run_id, status FROM ferry.runs ORDER BY started_at DESC LIMIT 1")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(status, "running", "killed, not stopped");

    let back = p.ferry(&["rollback", &run_id, "--json"]);
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(back.json()["tables"][0]["changed_by_others"], 0);
    assert_eq!(rows_text(&target, "events", "id").await, before, "exactly the rows before the run");
}

/// A long stream's undo journal does not grow for ever: once the run is
/// accepted, `ferry rollback RUN --forget` deletes it and the running
/// stream stops journaling (markers and before-images stay at zero while
/// it applies a thousand more transactions, and after a restart); the run
/// can no longer be rolled back, and says so. Judged by the journal's own
/// rows in the target.
#[tokio::test(flavor = "multi_thread")]
async fn a_streams_undo_journal_is_forgotten_once_its_run_is_accepted() {
    let cluster = crate::cluster::Cluster::start();
    let source = PgDb::on(&cluster.url(), "postgres");
    source
        .exec(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric NOT NULL); \
             INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 500) g;",
        )
        .await;
    // Rows the target holds before the stream: journaled by before-image.
    let target = PgDb::new("forget").await;
    target.exec("CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric NOT NULL)").await;
    target.exec("INSERT INTO accounts SELECT g, -1 FROM generate_series(1, 500) g").await;
    let p =
        tables_pipeline(&source.url(), &target.url(), "include = [\"public.accounts\"]", "on_conflict = \"overwrite\"");
    let mut child =
        p.command(&["sync"]).env("FERRY_LOG", "ferry=warn").stdout(std::process::Stdio::null()).spawn().unwrap();
    let write = |from: i64, n: i64| {
        let url = source.url();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
            for i in from..from + n {
                let sql = format!("UPDATE accounts SET balance = balance + 1 WHERE id = {}", 1 + i % 500);
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
            }
        }
    };
    write(0, 1000).await;
    let applied = |n: i64| format!("SELECT coalesce(sum(balance), 0) = {n} FROM accounts");
    eventually("the first thousand", || async {
        target.scalar_i64(&format!("SELECT ({})::int::int8", applied(1000))).await == 1
    })
    .await;
    let journal = "SELECT (SELECT count(*) FROM ferry.undo_xacts) + (SELECT count(*) FROM ferry.undo)";
    assert!(target.scalar_i64(journal).await > 500, "a before-image per key, a marker per target transaction");
    let st = p.ferry(&["status", "--json"]).json();
    let run = st["migrate"]["run_id"].as_str().unwrap().to_string();

    let forgot = p.ferry(&["rollback", &run, "--forget", "--json"]);
    assert_eq!(forgot.code, 0, "{forgot:?}");
    assert!(forgot.json()["deleted"].as_u64() > Some(500), "{forgot:?}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    write(1000, 1000).await;
    eventually("the second thousand", || async {
        target.scalar_i64(&format!("SELECT ({})::int::int8", applied(2000))).await == 1
    })
    .await;
    assert_eq!(target.scalar_i64(journal).await, 0, "the stream journals nothing more");
    child.kill().unwrap();
    child.wait().unwrap();
    let again = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(again.code, 0, "{again:?}");
    write(2000, 100).await;
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 0);
    assert_eq!(target.scalar_i64(journal).await, 0, "nor after a restart");
    let back = p.ferry(&["rollback", &run]);
    assert_eq!(back.code, 8, "{back:?}");
    assert!(back.stderr.contains("forgotten"), "{back:?}");
}
