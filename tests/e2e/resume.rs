//! Crash safety: `kill -9` at random moments, then the same command again,
//! until the run completes — every row loaded exactly once, every dead letter
//! recorded once. Also: a plugin `fatal` and SIGTERM stop cleanly and resume.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn resume_after_kill_loads_each_row_once_postgres() {
    let n = 80_000;
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, n).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(
        &source.url(),
        &target.url(),
        &plugins().transform_user,
        "[migrate]\nbatch_size = 100\nworkers = 2\n",
    );
    let kills = kill_until_done(|| p.command(&["migrate", "--json"]), &[4]);
    assert!(kills >= 2, "only {kills} kills landed before completion: the test did not exercise resume");

    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid, "every valid row loaded once");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await, invalid, "every dead letter once");
    assert_eq!(target.scalar_i64("SELECT count(DISTINCT source_key) FROM ferry.dead_letters").await, invalid);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1, "one run, resumed, never restarted");
    assert_eq!(
        target.scalar_i64("SELECT (loaded + dead_lettered = extracted AND extracted = 80000 AND status = 'completed')::int::int8 FROM ferry.runs").await,
        1,
        "the run's ledger accounts for every source row"
    );
    assert_eq!(
        target.scalar_i64("SELECT sum(rows)::int8 FROM ferry.lineage").await,
        n,
        "the lineage names every source row's version once"
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_after_kill_loads_each_row_once_sqlite() {
    let n = 60_000;
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, n).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 100\n");
    let kills = kill_until_done(|| p.command(&["migrate", "--json"]), &[4]);
    assert!(kills >= 2, "only {kills} kills landed before completion");
    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry_dead_letters").await, invalid);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry_runs").await, 1);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
}

#[tokio::test]
async fn plugin_fatal_stops_cleanly_and_the_run_resumes_once_fixed() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 1_000).await;
    source.exec("UPDATE users SET name = 'chaos:fatal' WHERE id = 555").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().chaos, "[migrate]\nbatch_size = 100\n");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 5, "{run:?}");
    let j = run.json();
    assert_eq!(j["ending"], "fatal");
    assert!(j["message"].as_str().unwrap().contains("row 555"), "{run:?}");
    // Batches before the fatal row are committed with their checkpoint;
    // nothing of its batch (501..=600) is.
    assert_eq!(target.scalar_i64("SELECT (last_key::jsonb->>0)::int8 FROM ferry.table_progress").await, 500);
    assert_eq!(target.scalar_i64("SELECT max(substr(id, 6)::int8) FROM users").await, 499, "row 500 is invalid JSON");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 500 - invalid_rows(500));

    source.exec("UPDATE users SET name = 'Fixed Name' WHERE id = 555").await;
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.json()["resumed"], true);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 1_000 - invalid_rows(1_000));
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_in_flight_batches_and_exits_resumable() {
    let n = 60_000;
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, n).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 100\n");
    let child = p.spawn(&["migrate", "--json"]);
    // Some batches committed, the run held mid-way: ask it to stop.
    let mut hold = hold_target_mid_run(&target).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut hold).await.unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let status: String =
        sqlx::query_scalar("SELECT status FROM ferry.runs").fetch_one(&mut target.conn().await).await.unwrap();
    assert_eq!(status, "interrupted");
    let loaded = target.scalar_i64("SELECT count(*) FROM users").await;
    assert_eq!(target.scalar_i64("SELECT loaded FROM ferry.runs").await, loaded, "the checkpoint matches the rows");
    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid_rows(n));
}

/// A command that writes nothing stops at once on SIGTERM, with the exit
/// code of an interruption, even while it waits on the database.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_read_only_command_at_once_with_the_interrupted_code() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 2_000).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    // The target table held: validate's reads of it wait on the lock.
    let mut hold = target.conn().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").execute(&mut hold).await.unwrap();
    let child = p.spawn(&["validate"]);
    let started = Instant::now();
    while target
        .scalar_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ferry' \
             AND wait_event_type = 'Lock'",
        )
        .await
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(30), "validate never waited on the held table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("nothing is left half done"), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "it waited for the lock instead of stopping");
    sqlx::raw_sql("ROLLBACK").execute(&mut hold).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_resumes_by_itself_when_the_source_server_restarts_under_it() {
    let n = 100_000;
    let cluster = crate::cluster::Cluster::start();
    let source_url = format!("{}/postgres", cluster.url());
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&source_url).await.unwrap();
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(pg_legacy_rows(1, n))).execute(&mut c).await.unwrap();
    drop(c);
    let target = PgDb::new("rst").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source_url, &target.url(), &plugins().transform_user, "[migrate]\nbatch_size = 500\n");
    let child = p.spawn(&["migrate"]);
    // The run held mid-way while the source restarts under it (its
    // connections are terminated), then let go on.
    let mut hold = hold_target_mid_run(&target).await;
    cluster.restart();
    sqlx::raw_sql("ROLLBACK").execute(&mut hold).await.unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("resuming the run"), "the restart was not survived but never happened: {stderr}");
    let invalid = invalid_rows(n);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, n - invalid, "every row once");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.dead_letters").await, invalid);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1, "the same run, resumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_many_table_migration_resumes_by_itself_when_the_source_server_restarts() {
    let cluster = crate::cluster::Cluster::start();
    let source_url = format!("{}/postgres", cluster.url());
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&source_url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (region text, id bigint, doc jsonb, PRIMARY KEY (region, id));
         INSERT INTO items SELECT 'r' || (g % 7), g, jsonb_build_object('n', g, 'pad', md5(g::text) || repeat('x', 300)) \
           FROM generate_series(1, 200000) g;
         CREATE TABLE tags (id int PRIMARY KEY, name text);
         INSERT INTO tags SELECT g, 't' || g FROM generate_series(1, 50) g;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    drop(c);
    let target = PgDb::new("trst").await;
    let p = crate::tables::tables_pipeline(
        &source_url,
        &target.url(),
        "include = [\"public.*\"]",
        "[migrate]\nbatch_size = 500\n",
    );
    let child = p.spawn(&["migrate"]);
    let mut hold = hold_mid_run(&target, "items").await;
    cluster.restart();
    sqlx::raw_sql("ROLLBACK").execute(&mut hold).await.unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("resuming the run"), "the restart was not survived but never happened: {stderr}");
    // items was being copied in heap order: it starts over, in key order.
    assert!(stderr.contains("copying the table again, in key order"), "{stderr}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM items").await, 200_000, "every row once");
    assert_eq!(target.scalar_i64("SELECT count(DISTINCT (region, id)) FROM items").await, 200_000);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM tags").await, 50);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.runs").await, 1, "the same run, resumed");
}

/// Waits until the run in `target` has committed a few batches, then holds
/// the target table (ACCESS EXCLUSIVE, released when the returned
/// connection runs `ROLLBACK`), so the run is surely mid-way, whatever the
/// machine's speed: its next batch waits on the lock.
async fn hold_target_mid_run(target: &PgDb) -> sqlx::PgConnection {
    hold_mid_run(target, "users").await
}

/// [`hold_target_mid_run`] for any target table.
async fn hold_mid_run(target: &PgDb, table: &str) -> sqlx::PgConnection {
    let started = Instant::now();
    while target.scalar_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'ferry' AND tablename = 'runs'").await
        == 0
        || target.scalar_i64("SELECT coalesce(max(batches), 0) FROM ferry.runs").await < 3
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no batch committed within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut holder = target.conn().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")))
        .execute(&mut holder)
        .await
        .unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM ferry.runs").fetch_one(&mut target.conn().await).await.unwrap();
    assert_eq!(status, "running", "the run must still be going");
    holder
}
