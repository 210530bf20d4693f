//! `ferry sync`: logical replication from a throwaway PostgreSQL cluster
//! (wal_level = logical) into the target, checked against a fresh
//! `ferry migrate` of the final source (the transform of the source).

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;

async fn source_conn(cluster: &Cluster) -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", cluster.url())).await.unwrap()
}

/// Changes of every kind, in many small transactions.
async fn write_changes(cluster: &Cluster, round: i64) {
    write_changes_with(cluster, round, false).await
}

/// [`write_changes`], plus large (TOASTed) metadata and updates that leave
/// it unchanged when `toast` is set (the table must then have REPLICA
/// IDENTITY FULL for the stream to carry the unchanged values).
async fn write_changes_with(cluster: &Cluster, round: i64, toast: bool) {
    let mut c = source_conn(cluster).await;
    if toast {
        for id in [10 + round, 20 + round, 30 + round] {
            sqlx::query(
                "UPDATE users SET metadata = json_build_object('theme', 'big', 'blob', \
                 (SELECT string_agg(md5(i::text || $1::text), '') FROM generate_series(1, 400) i))::text WHERE id = $1",
            )
            .bind(id)
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query("UPDATE users SET name = 'Toasted ' || id || ' Row' WHERE id = $1")
                .bind(id)
                .execute(&mut c)
                .await
                .unwrap();
        }
        // A primary-key change of a row whose document stays as it is.
        sqlx::query("UPDATE users SET id = id + 70000 WHERE id = $1").bind(30 + round).execute(&mut c).await.unwrap();
    }
    let base = 100_000 * (round + 1);
    for i in 0..60 {
        let id = base + i;
        sqlx::raw_sql(sqlx::AssertSqlSafe(&*pg_legacy_rows(id, id))).execute(&mut c).await.unwrap();
        sqlx::query(
            "UPDATE users SET name = 'Updated ' || id || ' Row', metadata = '{\"theme\":\"night\"}' WHERE id = $1",
        )
        .bind(1 + i * 3 + round)
        .execute(&mut c)
        .await
        .unwrap();
        if i % 4 == 0 {
            sqlx::query("DELETE FROM users WHERE id = $1").bind(500 + i + round * 70).execute(&mut c).await.unwrap();
        }
        if i % 10 == 0 {
            // A primary-key change.
            sqlx::query("UPDATE users SET id = id + 50000 WHERE id = $1")
                .bind(900 + i + round)
                .execute(&mut c)
                .await
                .unwrap();
            // A multi-statement transaction, and one rolled back.
            let mut tx = c.begin().await.unwrap();
            sqlx::query("UPDATE users SET email = upper(email) WHERE id BETWEEN $1 AND $1 + 5")
                .bind(1000 + i)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("DELETE FROM users WHERE id = $1").bind(1200 + i + round).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            let mut tx = c.begin().await.unwrap();
            sqlx::query("DELETE FROM users").execute(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
        }
    }
}

/// A throwaway logical-WAL source with `rows` generated legacy rows, an
/// empty target table, and a pipeline between them through `plugin`.
async fn synced_pipeline(rows: i64, tag: &str, plugin: &std::path::Path) -> (Cluster, PgDb, Pipeline) {
    let cluster = Cluster::start();
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(&*pg_legacy_rows(1, rows))).execute(&mut c).await.unwrap();
    let target = PgDb::new(tag).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&format!("{}/postgres", cluster.url()), &target.url(), plugin, "");
    (cluster, target, p)
}

async fn rows(db: &PgDb) -> Vec<(String, String, String, String, serde_json::Value, i64)> {
    let mut c = db.conn().await;
    sqlx::query_as(
        "SELECT id, first_name, last_name, email, settings, (extract(epoch FROM created_at) * 1000000)::int8 FROM users ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
}

/// The target equals a fresh migration of the source as it is now.
async fn assert_target_matches_source(cluster: &Cluster, target: &PgDb) {
    assert_target_matches_source_but(cluster, target, &[]).await
}

/// [`assert_target_matches_source`], except the target rows `kept` (stale
/// rows whose newest version was dead-lettered).
async fn assert_target_matches_source_but(cluster: &Cluster, target: &PgDb, kept: &[&str]) {
    let oracle = PgDb::new("oracle").await;
    oracle.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&format!("{}/postgres", cluster.url()), &oracle.url(), &plugins().transform_user, "");
    let run = p.ferry(&["migrate"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    let mut got = rows(target).await;
    got.retain(|r| !kept.contains(&r.0.as_str()));
    let mut want = rows(&oracle).await;
    want.retain(|r| !kept.contains(&r.0.as_str()));
    assert_eq!(got.len(), want.len(), "row counts");
    assert!(got == want, "the synced target differs from the transform of the source");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_loads_then_streams_concurrent_changes() {
    concurrent_changes_converge(true, "sync").await;
}

/// Under the default REPLICA IDENTITY, updates that leave a TOASTed
/// document alone do not carry it: ferry reads those rows back from the
/// source, and the target still converges.
#[tokio::test(flavor = "multi_thread")]
async fn sync_converges_on_toasted_documents_under_the_default_replica_identity() {
    concurrent_changes_converge(false, "syncd").await;
}

async fn concurrent_changes_converge(full: bool, tag: &str) {
    let (cluster, target, p) = synced_pipeline(5000, tag, &plugins().transform_user).await;
    let mut c = source_conn(&cluster).await;
    if full {
        // Updates that leave large values alone carry them in the old row.
        sqlx::raw_sql("ALTER TABLE users REPLICA IDENTITY FULL").execute(&mut c).await.unwrap();
    }

    // Writers run while ferry loads and then streams.
    let child = p.spawn(&["sync", "--idle-exit", "3", "--chunk-rows", "500", "--json"]);
    // Writers start once the slot exists, so they overlap the initial load
    // and the stream (whatever the machine's speed today).
    let slots = format!("{}/postgres", cluster.url());
    eventually("ferry creates its slot", || {
        let url = slots.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut c).await.unwrap()
                > 0
        }
    })
    .await;
    write_changes_with(&cluster, 0, true).await;
    write_changes_with(&cluster, 1, true).await;
    let report = json_report(child);
    assert!(report["snapshot_rows"].as_u64().unwrap() >= 5000, "{report}");
    assert!(report["stream"]["upserts"].as_u64().unwrap() > 100, "{report}");
    let rereads = report["toast_rereads"].as_u64().unwrap();
    if full {
        assert_eq!(rereads, 0, "FULL carries every value: {report}");
    } else {
        assert!(rereads >= 6, "the updates that left documents alone were read back: {report}");
    }
    assert_target_matches_source(&cluster, &target).await;
    // ferry validate agrees, row by row.
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["different"], 0, "{v:?}");

    // Teardown drops the slot: the source no longer retains WAL for ferry.
    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut c).await.unwrap();
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_survives_kill_during_load_and_stream() {
    let (cluster, target, p) = synced_pipeline(40_000, "synck", &plugins().transform_user).await;
    // Killed during the initial load, once its first pages are in and
    // before its last (the target's own count is the observer).
    let mut child = p.spawn(&["sync", "--idle-exit", "1", "--chunk-rows", "200"]);
    let started = std::time::Instant::now();
    loop {
        let loaded = target.scalar_i64("SELECT count(*) FROM users").await;
        if loaded > 0 {
            child.kill().unwrap();
            let loaded = target.scalar_i64("SELECT count(*) FROM users").await;
            assert!(loaded < 40_000 - invalid_rows(40_000), "the load finished before the kill landed");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the load never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.wait().unwrap();
    // More kills at random moments until a run completes.
    kill_until_done(|| p.command(&["sync", "--idle-exit", "1", "--chunk-rows", "200"]), &[0, 4]);
    // Changes pile up in the slot while ferry is down (a backlog of many
    // small transactions among them), then are drained with kills: the
    // first once the stream has applied some of it and not all.
    write_changes(&cluster, 0).await;
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(
        "DO $$ BEGIN FOR i IN 1..20000 LOOP \
           UPDATE users SET email = 'Backlog.' || i || '@Example.COM' WHERE id = 1 + i % 5000; COMMIT; \
         END LOOP; END $$",
    )
    .execute(&mut c)
    .await
    .unwrap();
    // Every change after this point is still to apply when the kill lands.
    let mid: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8").fetch_one(&mut c).await.unwrap();
    write_changes(&cluster, 1).await;
    let loaded_to = target.scalar_i64("SELECT coalesce(max(commit_lsn), 0) FROM ferry.change_checkpoints").await;
    let mut child = p.spawn(&["sync", "--idle-exit", "1"]);
    let started = std::time::Instant::now();
    loop {
        let applied = target.scalar_i64("SELECT coalesce(max(commit_lsn), 0) FROM ferry.change_checkpoints").await;
        if applied > loaded_to {
            assert!(applied < mid, "the backlog drained before a kill could land; make it bigger");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the stream never applied anything");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    kill_until_done(|| p.command(&["sync", "--idle-exit", "1"]), &[0, 4]);
    assert_target_matches_source(&cluster, &target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_reconnects_after_the_source_restarts() {
    let (cluster, target, p) = synced_pipeline(2000, "syncr", &plugins().transform_user).await;
    let child = p.spawn(&["sync", "--idle-exit", "4", "--json"]);
    // Wait for the initial load to be committed.
    eventually("the initial load", || async {
        target.scalar_i64("SELECT count(*) FROM users").await >= 2000 - invalid_rows(2000)
    })
    .await;
    write_changes(&cluster, 0).await;
    cluster.restart();
    write_changes(&cluster, 1).await;
    let report = json_report(child);
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    assert_target_matches_source(&cluster, &target).await;
}

/// GET over plain HTTP/1.1, returning status line and body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sync_daemon_serves_metrics_and_health_reports_status_and_stops_on_sigterm() {
    use std::io::BufRead;
    let (cluster, target, p) = synced_pipeline(500, "syncd", &plugins().transform_user).await;
    let mut child = p.spawn(&["sync", "--listen", "127.0.0.1:0"]);
    let stderr = child.stderr.take().unwrap();
    let addr = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("on http://").map(|(_, a)| a.trim().to_string()))
        .expect("the daemon prints where it serves");
    // The initial load, then changes: the metrics show both.
    eventually("the initial load in /metrics", || async {
        http_get(&addr, "/metrics").await.1.contains("ferry_snapshot_rows_total")
    })
    .await;
    write_changes(&cluster, 0).await;
    eventually("the stream's changes in /metrics", || async {
        let body = http_get(&addr, "/metrics").await.1;
        body.contains("ferry_changes_applied_total") && body.contains("ferry_commit_lag_seconds")
    })
    .await;
    // Everything written has been applied (the last row written arrived:
    // the stream applies in commit order) before ferry is stopped.
    eventually("the last change arrives", || async {
        target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_100059'").await == 1
    })
    .await;
    let metrics = http_get(&addr, "/metrics").await.1;
    assert!(metrics.contains("ferry_plugin_info{table=\"public.users\",sha256=\""), "{metrics}");
    let (status, body) = http_get(&addr, "/health").await;
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // SIGTERM: the current transaction is finished, exit 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let st = p.ferry(&["status", "--json"]);
    assert_eq!(st.code, 0, "{st:?}");
    let j = st.json();
    assert_eq!(j["phase"], "streaming", "{j}");
    assert_eq!(j["migrate"]["stats"]["extracted"], 500, "the initial load: {j}");
    assert!(j["stream"]["applied"].as_u64().unwrap() > 100, "the changes after it: {j}");
    assert_eq!(j["slots"][0]["name"], "ferry_test", "{j}");
    assert!(j["stream"]["changes_per_second"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["lag_seconds"].is_number(), "{j}");

    // With ferry stopped, new changes make the slot retain WAL: check warns.
    write_changes(&cluster, 1).await;
    let check = p.ferry(&["check", "--json"]);
    let warned =
        check.json()["items"].as_array().unwrap().iter().any(|i| i["name"] == "source slots" && i["level"] == "warn");
    assert!(warned, "{check:?}");
    assert_target_matches_source_after_drain(&cluster, &target, &p).await;
}

/// Drains what the slot holds, then compares with the source.
async fn assert_target_matches_source_after_drain(cluster: &Cluster, target: &PgDb, p: &Pipeline) {
    let run = p.ferry(&["sync", "--idle-exit", "2"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    assert_target_matches_source(cluster, target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toasted_values_are_never_written_as_placeholders() {
    let (cluster, target, p) = synced_pipeline(10, "synct", &plugins().transform_user).await;
    let mut c = source_conn(&cluster).await;
    // Large, incompressible metadata: stored out of line (TOASTed).
    let big = "UPDATE users SET metadata = json_build_object('theme', 'big', 'blob', \
               (SELECT string_agg(md5(i::text || $1::text), '') FROM generate_series(1, 400) i))::text WHERE id = $1";
    for id in [3i64, 4] {
        sqlx::query(big).bind(id).execute(&mut c).await.unwrap();
    }
    assert!([0, 4].contains(&p.ferry(&["sync", "--idle-exit", "1"]).code));

    // REPLICA IDENTITY DEFAULT: an update that leaves metadata alone does
    // not carry it; ferry reads the row back from the source.
    sqlx::query("UPDATE users SET name = 'Renamed Three' WHERE id = 3").execute(&mut c).await.unwrap();
    // An update the plugin rejects (invalid JSON): a dead letter.
    sqlx::query("UPDATE users SET metadata = '{bad' WHERE id = 2").execute(&mut c).await.unwrap();
    // REPLICA IDENTITY FULL: the old row carries it; the change applies.
    sqlx::query("ALTER TABLE users REPLICA IDENTITY FULL").execute(&mut c).await.unwrap();
    sqlx::query("UPDATE users SET name = 'Renamed Four' WHERE id = 4").execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let mut t = target.conn().await;
    assert_eq!(run.json()["toast_rereads"], 1, "{run:?}");
    let reason: String = sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters WHERE source_key = '2'")
        .fetch_one(&mut t)
        .await
        .unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    let (name3, theme3): (String, String) =
        sqlx::query_as("SELECT first_name || ' ' || last_name, settings->>'theme' FROM users WHERE id = 'user_3'")
            .fetch_one(&mut t)
            .await
            .unwrap();
    assert_eq!((name3.as_str(), theme3.as_str()), ("Renamed Three", "big"), "the document kept, never a placeholder");
    let (name4, theme4): (String, String) =
        sqlx::query_as("SELECT first_name || ' ' || last_name, settings->>'theme' FROM users WHERE id = 'user_4'")
            .fetch_one(&mut t)
            .await
            .unwrap();
    assert_eq!((name4.as_str(), theme4.as_str()), ("Renamed Four", "big"));
    // validate explains the row the rejected change left as it was by that
    // change's dead letter (the target's own table is the observer).
    let recorded = target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters WHERE source_key = '2'").await;
    assert_eq!(recorded, 1);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["explained"], 1, "user 2, kept: {v:?}");

    // TRUNCATE on the source truncates the target.
    sqlx::query("TRUNCATE users").execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    assert_eq!(run.json()["stream"]["truncates"], 1, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_reconnects_after_the_target_restarts() {
    // Source and target both on throwaway clusters, so the target can be
    // restarted without disturbing other tests.
    let (source, target_cluster) = (Cluster::start(), Cluster::start());
    let mut c = source_conn(&source).await;
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(&*pg_legacy_rows(1, 1000))).execute(&mut c).await.unwrap();
    drop(c);
    let target_url = format!("{}/postgres", target_cluster.url());
    let mut t = PgConnection::connect(&target_url).await.unwrap();
    sqlx::raw_sql(PG_NEW_DDL).execute(&mut t).await.unwrap();
    let p = Pipeline::new(&format!("{}/postgres", source.url()), &target_url, &plugins().transform_user, "");
    let child = p.spawn(&["sync", "--idle-exit", "4", "--json"]);
    drop(t);
    eventually("the initial load", || {
        let url = target_url.clone();
        async move {
            let mut t = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users").fetch_one(&mut t).await.unwrap()
                >= 1000 - invalid_rows(1000)
        }
    })
    .await;
    write_changes(&source, 0).await;
    target_cluster.restart();
    write_changes(&source, 1).await;
    let report = json_report(child);
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "the target equals the transform of the source: {v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_fatal_stops_sync_with_the_position_before_its_transaction() {
    let (cluster, target, p) = synced_pipeline(100, "syncf", &plugins().chaos).await;
    let mut c = source_conn(&cluster).await;
    assert!([0, 4].contains(&p.ferry(&["sync", "--idle-exit", "1"]).code));
    sqlx::query("UPDATE users SET name = 'Before Fatal' WHERE id = 1").execute(&mut c).await.unwrap();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'Same Transaction' WHERE id = 2").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE users SET name = 'chaos:fatal' WHERE id = 3").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.json()["stream"]["fatal"].as_str().unwrap().contains("row 3"), "{run:?}");
    let name = |id: &'static str| {
        let url = target.url();
        async move {
            let mut t = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, String>("SELECT first_name FROM users WHERE id = $1")
                .bind(id)
                .fetch_one(&mut t)
                .await
                .unwrap()
        }
    };
    // (The transaction before may share the fatal one's group, which is then
    // not applied either: the position stays before the group.)
    assert_eq!(name("user_2").await, "Zoë", "nothing of the fatal transaction is applied");
    assert_eq!(name("user_3").await, "Prince");
    // Stopped, not skipped: the next run meets the same transaction again.
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 5);
}

/// The slot's `confirmed_flush_lsn` (the source's own view) is at or past
/// the last commit the target stored.
async fn assert_slot_acknowledged(cluster: &Cluster, target: &PgDb, when: &str) {
    let applied = target.scalar_i64("SELECT commit_lsn FROM ferry.change_checkpoints").await;
    let mut c = source_conn(cluster).await;
    let (confirmed_ok, behind): (bool, i64) = sqlx::query_as(
        "SELECT confirmed_flush_lsn >= '0/0'::pg_lsn + $1::numeric, \
                pg_wal_lsn_diff('0/0'::pg_lsn + $1::numeric, confirmed_flush_lsn)::int8 \
         FROM pg_replication_slots WHERE slot_name = 'ferry_test'",
    )
    .bind(applied)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(confirmed_ok, "{when}: the slot is confirmed {behind} bytes before the last applied commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_is_acknowledged_to_the_last_applied_commit_after_a_drain_and_after_sigterm() {
    let (cluster, target, p) = synced_pipeline(1000, "synca", &plugins().transform_user).await;
    let run = p.ferry(&["sync", "--idle-exit", "1"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    // A backlog of many small transactions while ferry is stopped.
    let mut c = source_conn(&cluster).await;
    let backlog = "DO $$ BEGIN FOR i IN 1..3000 LOOP \
                     UPDATE users SET name = 'Backlog ' || i || ' Row' WHERE id = 1 + i % 900; COMMIT; \
                   END LOOP; END $$";
    sqlx::raw_sql(backlog).execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    assert!(run.json()["stream"]["upserts"].as_u64().unwrap() >= 900, "{run:?}");
    assert_slot_acknowledged(&cluster, &target, "after the drain").await;

    // A daemon stopped by SIGTERM right after applying a backlog.
    let child =
        p.command(&["sync"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(backlog.replace("Backlog", "Again"))).execute(&mut c).await.unwrap();
    // The backlog's last transaction renamed user 301 (i = 3000).
    eventually("ferry applies the backlog", || async {
        target
            .scalar_i64(
                "SELECT count(*) FROM users WHERE id = 'user_301' AND last_name = '3000 Row' AND first_name = 'Again'",
            )
            .await
            == 1
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_slot_acknowledged(&cluster, &target, "after SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_error_stops_sync_at_once_instead_of_retrying() {
    let (cluster, target, p) = synced_pipeline(100, "syncp", &plugins().transform_user).await;
    let run = p.ferry(&["sync", "--idle-exit", "1"]);
    assert!([0, 4].contains(&run.code), "{run:?}");
    // The target table is gone: every retry would fail the same way.
    target.exec("DROP TABLE users").await;
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql("UPDATE users SET name = 'After Drop' WHERE id = 1").execute(&mut c).await.unwrap();
    let started = std::time::Instant::now();
    let run = p.ferry(&["sync", "--idle-exit", "5"]);
    assert_eq!(run.code, 8, "the target no longer matches the pipeline: {run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(!run.stderr.contains("retrying"), "a permanent error was retried: {run:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_the_target_refuses_is_dead_lettered_and_the_stream_goes_on() {
    let (cluster, target, p) = synced_pipeline(200, "syncf", &plugins().transform_user).await;
    target.exec("ALTER TABLE users ADD CHECK (first_name <> 'Refused')").await;
    let mut c = source_conn(&cluster).await;
    // Refused during the initial load too: a dead letter of the load's run.
    sqlx::raw_sql("UPDATE users SET name = 'Refused Nine' WHERE id = 9").execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM ferry.dead_letters WHERE source_key = '9' AND kind = 'load'").await,
        1
    );
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 200 - invalid_rows(200) - 1);
    sqlx::raw_sql(
        "UPDATE users SET name = 'Refused Five' WHERE id = 5; \
         UPDATE users SET name = 'Renamed Six' WHERE id = 6; DELETE FROM users WHERE id = 7",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(pg_legacy_rows(1001, 1010))).execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 4, "{run:?}");
    let reason: String = sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters WHERE source_key = '5'")
        .fetch_one(&mut target.conn().await)
        .await
        .unwrap();
    assert!(reason.contains("user_5") && reason.contains("violates check constraint"), "{reason}");
    // The same source transaction's other changes, and the later ones, applied.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_6' AND first_name = 'Renamed'").await, 1);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_7'").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id LIKE 'user_100_' OR id = 'user_1010'").await, 10);
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_5' AND first_name = 'Jean-Luc'").await,
        1
    );
    // A later version the target accepts replaces the old one.
    sqlx::raw_sql("UPDATE users SET name = 'Fine Five' WHERE id = 5").execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_5' AND first_name = 'Fine'").await, 1);
}

/// A source row whose newer version the plugin rejects, under `on_reject`.
async fn rejected_update(policy: &str, tag: &str) -> (Cluster, PgDb, Pipeline) {
    let cluster = Cluster::start();
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(pg_legacy_rows(1, 200))).execute(&mut c).await.unwrap();
    let target = PgDb::new(tag).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::with_target_keys(
        &format!("{}/postgres", cluster.url()),
        &target.url(),
        &plugins().transform_user,
        &format!("on_reject = \"{policy}\"\n"),
        "",
    );
    assert!([0, 4].contains(&p.ferry(&["sync", "--idle-exit", "1"]).code));
    // Metadata that is no longer valid JSON: the plugin rejects the update.
    sqlx::raw_sql("UPDATE users SET metadata = '{broken' WHERE id = 8").execute(&mut c).await.unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(run.code, 4, "{run:?}");
    (cluster, target, p)
}

/// The reason of user 8's rejected change (the target's own dead-letter
/// table as the observer).
async fn rejection_of_user_8(target: &PgDb) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters WHERE source_key = '8' AND kind = 'reject'")
        .fetch_optional(&mut target.conn().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_update_keeps_a_stale_row_that_validate_explains_until_a_good_version_arrives() {
    let (cluster, target, p) = rejected_update("keep", "stalek").await;
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_8'").await, 1, "the last good version");
    let reason = rejection_of_user_8(&target).await.expect("user 8's change is a dead letter");
    assert!(reason.contains("not valid JSON"), "{reason}");
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "every difference is explained: {v:?}");
    let line = &v.json()["tables"][0];
    let explained = invalid_rows(200) + 1;
    assert_eq!([&line["explained"], &line["different"], &line["extra"]], [explained, 0, 0], "{v:?}");

    // A later version the plugin accepts replaces the kept one.
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql("UPDATE users SET metadata = '{\"theme\": \"fixed\"}' WHERE id = 8").execute(&mut c).await.unwrap();
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 0);
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_8' AND settings->>'theme' = 'fixed'").await,
        1
    );
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["explained"], invalid_rows(200), "only the load's dead letters: {v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_update_under_on_reject_delete_removes_the_row() {
    let (_cluster, target, p) = rejected_update("delete", "staled").await;
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users WHERE id = 'user_8'").await, 0);
    assert!(rejection_of_user_8(&target).await.is_some(), "the removal is explained by the rejected change");
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["explained"], invalid_rows(200) + 1, "{v:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_realistic_workload_converges_through_kills_and_a_source_restart() {
    // Default REPLICA IDENTITY, TOASTed documents, rejected updates, key
    // changes, kill -9 while draining, a source restart while streaming.
    let (cluster, target, p) = synced_pipeline(3000, "syncw", &plugins().transform_user).await;
    // The new schema refuses what the old one took.
    target.exec("ALTER TABLE users ADD CHECK (first_name <> 'Refused')").await;
    assert!([0, 4].contains(&p.ferry(&["sync", "--idle-exit", "1"]).code));
    let mut c = source_conn(&cluster).await;
    let reject = "UPDATE users SET metadata = '{bad' WHERE id BETWEEN 2001 AND 2003; \
                  UPDATE users SET name = 'Refused Row' WHERE id = 2101";
    write_changes_with(&cluster, 0, true).await;
    sqlx::raw_sql(reject).execute(&mut c).await.unwrap();
    write_changes_with(&cluster, 1, true).await;
    kill_until_done(|| p.command(&["sync", "--idle-exit", "1"]), &[0, 4]);

    let child = p.spawn(&["sync", "--idle-exit", "4", "--json"]);
    // Restart once ferry streams (the server's own view: its slot is active).
    eventually("ferry streams from its slot", || async {
        let mut c = source_conn(&cluster).await;
        sqlx::query_scalar::<_, bool>("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots")
            .fetch_one(&mut c)
            .await
            .unwrap()
    })
    .await;
    write_changes_with(&cluster, 2, true).await;
    cluster.restart();
    let mut c = source_conn(&cluster).await;
    // One of the rejected rows gets a good version again.
    sqlx::raw_sql("UPDATE users SET metadata = '{\"theme\": \"back\"}' WHERE id = 2003").execute(&mut c).await.unwrap();
    write_changes_with(&cluster, 3, true).await;
    let report = json_report(child);
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "the restart was survived: {report}");
    assert!(report["toast_rereads"].as_u64().unwrap() >= 6, "documents left alone were read back: {report}");

    // The target equals a fresh migration of the source but for the two
    // rows kept stale, and validate explains exactly those.
    assert_target_matches_source_but(&cluster, &target, &["user_2001", "user_2002", "user_2101"]).await;
    let kept = "SELECT count(*) FROM users WHERE id IN ('user_2001', 'user_2002', 'user_2101')";
    assert_eq!(target.scalar_i64(kept).await, 3, "their last good versions stay");
    let explained = "SELECT count(DISTINCT source_key) FROM ferry.change_dead_letters \
                     WHERE source_key IN ('2001', '2002', '2101')";
    assert_eq!(target.scalar_i64(explained).await, 3, "each by its rejected change");
    let refused = "SELECT count(*) FROM ferry.change_dead_letters WHERE source_key = '2101' AND kind = 'load'";
    assert_eq!(target.scalar_i64(refused).await, 1, "refused once, whatever the kills");
    // Each keeps the row: the source's as the plugin rejected it, the
    // target's as the target refused it.
    let whole = "SELECT count(DISTINCT source_key) FROM ferry.change_dead_letters WHERE kind = 'reject' \
                 AND source_key IN ('2001', '2002') AND event::jsonb -> 'row' ->> 'metadata' = '{bad'";
    assert_eq!(target.scalar_i64(whole).await, 2, "the rejected source rows are kept whole");
    let target_row = "SELECT count(*) FROM ferry.change_dead_letters WHERE source_key = '2101' AND kind = 'load' \
                      AND event::jsonb -> 'row' ->> 'first_name' = 'Refused'";
    assert_eq!(target.scalar_i64(target_row).await, 1, "the refused row is kept whole");
    // ferry dlq list shows the stream's dead letters beside the load's.
    let dlq = p.ferry(&["dlq", "list", "--json", "--limit", "1000"]);
    assert_eq!(dlq.code, 0, "{dlq:?}");
    let listed = dlq.json();
    let stream: Vec<&serde_json::Value> =
        listed.as_array().unwrap().iter().filter(|d| d["run_id"] == "stream").collect();
    let recorded = target.scalar_i64("SELECT count(*) FROM ferry.change_dead_letters").await;
    assert_eq!(stream.len() as i64, recorded, "{listed}");
    assert!(stream.iter().any(|d| d["source_key"] == "2101" && d["kind"] == "load"), "{listed}");
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let line = &v.json()["tables"][0];
    assert_eq!([&line["missing"], &line["different"], &line["extra"]], [0, 0, 0], "{v:?}");
    assert_slot_acknowledged(&cluster, &target, "after the workload").await;
}
