//! The parallel run: `ferry sync` (old → new through the seed's transform)
//! and `ferry sync --reverse` (new → old through its inverse) at the same
//! time, with the application writing on both sides. Judged by observers
//! ferry did not write: a trigger on every table of both databases records
//! each row write and whether the writing session carried a replication
//! origin; a fresh `ferry migrate` of the final old database (the oracle
//! for the new one); the servers' `pg_replication_origin_status`.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;

async fn conn(cluster: &Cluster) -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", cluster.url())).await.unwrap()
}

/// A row-level trigger on `users` and `notes` recording every write, and
/// whether a replication origin was set in the writing session (ferry's
/// apply connections of a parallel run set one; the application's do not).
/// `ENABLE ALWAYS`: streams apply with the application's triggers off (as
/// PostgreSQL's subscriber does), and this observer must see their writes.
const AUDIT: &str = r#"
CREATE TABLE audit (tbl text NOT NULL, key text NOT NULL, op text NOT NULL, by_origin boolean NOT NULL);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit VALUES (TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN OLD.id::text ELSE NEW.id::text END,
                              TG_OP, pg_replication_origin_session_is_setup());
    RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON notes FOR EACH ROW EXECUTE FUNCTION audit();
ALTER TABLE users ENABLE ALWAYS TRIGGER audit;
ALTER TABLE notes ENABLE ALWAYS TRIGGER audit;
"#;

/// What conflict detection reads: each row's last commit time and origin.
const COMMIT_TIMES: &str = "track_commit_timestamp = on";

const NOTES_DDL: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)";

/// Several KB of incompressible text: stored out of line (TOAST).
fn big_text(seed: &str) -> String {
    format!("(SELECT string_agg(md5({seed}::text || g::text), '') FROM generate_series(1, 200) g)")
}

/// What one side's application wrote: operations per (table, key as the
/// audit prints it).
type Ops = HashMap<(String, String), u32>;

async fn exec(c: &mut PgConnection, ops: &mut Ops, sql: &str, touched: &[(&str, String)]) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *c).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
    for (table, key) in touched {
        *ops.entry((table.to_string(), key.clone())).or_default() += 1;
    }
}

/// The old application: new users, renamed users, users whose TOASTed
/// metadata an update leaves alone, deleted users, notes of every kind,
/// some transactions spanning both tables.
async fn old_writer(cluster: &Cluster) -> Ops {
    let mut c = conn(cluster).await;
    let mut ops = Ops::new();
    let u = |id: i64| ("users", id.to_string());
    let n = |id: i64| ("notes", id.to_string());
    for i in 0..150i64 {
        let id = 100_001 + i;
        if id % 50 == 0 {
            continue;
        }
        let sql = format!(
            "BEGIN; {}; INSERT INTO notes VALUES ({}, 'old note {i}'); COMMIT",
            pg_legacy_rows(id, id),
            10_000 + i
        );
        exec(&mut c, &mut ops, &sql, &[u(id), n(10_000 + i)]).await;
    }
    for id in (2..=600i64).step_by(2).filter(|id| id % 50 != 0) {
        let sql = format!(
            "UPDATE users SET name = 'Old Side ' || id, email = 'old.' || id || '@example.com' WHERE id = {id}"
        );
        exec(&mut c, &mut ops, &sql, &[u(id)]).await;
    }
    for id in (1..1000i64).step_by(100) {
        // The TOASTed metadata is not in the change: ferry reads it back.
        let sql = format!("UPDATE users SET name = 'Toast Kept ' || id WHERE id = {id}");
        exec(&mut c, &mut ops, &sql, &[u(id)]).await;
    }
    for id in (601..=700i64).filter(|id| id % 50 != 0) {
        exec(&mut c, &mut ops, &format!("DELETE FROM users WHERE id = {id}"), &[u(id)]).await;
    }
    for id in 1..=100i64 {
        exec(&mut c, &mut ops, &format!("UPDATE notes SET body = body || ' (old)' WHERE id = {id}"), &[n(id)]).await;
    }
    for id in 101..=150i64 {
        exec(&mut c, &mut ops, &format!("DELETE FROM notes WHERE id = {id}"), &[n(id)]).await;
    }
    ops
}

/// The new application, on other keys: new users, renamed users, users
/// given a TOASTed theme, deleted users, notes; and one change the inverse
/// refuses (an email with capitals cannot survive the round trip).
async fn new_writer(cluster: &Cluster) -> Ops {
    let mut c = conn(cluster).await;
    let mut ops = Ops::new();
    let u = |id: String| ("users", id);
    let n = |id: i64| ("notes", id.to_string());
    for i in 0..150i64 {
        let id = format!("user_{}", 200_000 + i);
        let sql = format!(
            "BEGIN; INSERT INTO users VALUES ('{id}', 'New', 'Side {i}', 'new.{i}@example.com', \
             '2025-03-01 12:00:00.000001+00'::timestamptz + {i} * interval '1 second', \
             '{{\"theme\": \"dark\", \"notifications\": true}}'); INSERT INTO notes VALUES ({}, 'new note {i}'); COMMIT",
            20_000 + i
        );
        exec(&mut c, &mut ops, &sql, &[u(id), n(20_000 + i)]).await;
    }
    for k in (1001..=1300i64).filter(|k| k % 50 != 0) {
        let sql = format!("UPDATE users SET last_name = last_name || ' (new)' WHERE id = 'user_{k}'");
        exec(&mut c, &mut ops, &sql, &[u(format!("user_{k}"))]).await;
    }
    for k in (1301..=1320i64).filter(|k| k % 50 != 0) {
        let sql = format!(
            "UPDATE users SET settings = jsonb_build_object('theme', {}, 'notifications', false) WHERE id = 'user_{k}'",
            big_text(&k.to_string())
        );
        exec(&mut c, &mut ops, &sql, &[u(format!("user_{k}"))]).await;
    }
    for k in (1401..=1500i64).filter(|k| k % 50 != 0) {
        exec(&mut c, &mut ops, &format!("DELETE FROM users WHERE id = 'user_{k}'"), &[u(format!("user_{k}"))]).await;
    }
    for id in 201..=300i64 {
        exec(&mut c, &mut ops, &format!("UPDATE notes SET body = body || ' (new)' WHERE id = {id}"), &[n(id)]).await;
    }
    for id in 301..=350i64 {
        exec(&mut c, &mut ops, &format!("DELETE FROM notes WHERE id = {id}"), &[n(id)]).await;
    }
    let refused = "UPDATE users SET email = 'Upper.1601@Example.COM' WHERE id = 'user_1601'";
    exec(&mut c, &mut ops, refused, &[u("user_1601".into())]).await;
    ops
}

/// The audit trigger's rows: (table, key) → (writes without origin, with).
async fn audited(cluster: &Cluster) -> HashMap<(String, String), (u32, u32)> {
    let mut c = conn(cluster).await;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT tbl, key, count(*) FILTER (WHERE NOT by_origin), count(*) FILTER (WHERE by_origin) \
         FROM audit GROUP BY tbl, key",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|(t, k, own, ferry)| ((t, k), (own as u32, ferry as u32))).collect()
}

/// Equal maps, or the keys where they differ.
fn assert_same(got: &Ops, want: &Ops, what: &str) {
    let mut differ: Vec<_> = got
        .keys()
        .chain(want.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| (k, got.get(k), want.get(k)))
        .collect();
    differ.sort();
    differ.dedup();
    assert!(differ.is_empty(), "{what}: (key, seen, written) differ: {differ:?}");
}

/// `user_N` → `N`: a new-side user key as the old side's audit prints it.
fn legacy_key((table, key): &(String, String)) -> (String, String) {
    (table.clone(), key.strip_prefix("user_").unwrap_or(key).to_string())
}

async fn new_users(url: &str) -> Vec<(String, String, String, String, serde_json::Value, i64)> {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_as(
        "SELECT id, first_name, last_name, email, settings::jsonb::json, \
         (extract(epoch FROM created_at) * 1000000)::int8 FROM users ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
}

async fn notes(cluster: &Cluster) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT id, body FROM notes ORDER BY id").fetch_all(&mut conn(cluster).await).await.unwrap()
}

/// The parallel run's configuration (users through the seed's transform
/// and its inverse, notes copied): the command of `ferry args` on it.
fn parallel_run(old: &Cluster, new: &Cluster) -> (tempfile::TempDir, impl Fn(&[&str]) -> std::process::Command) {
    parallel_run_with(old, new, "")
}

/// [`parallel_run`] with more `[reverse]` keys.
fn parallel_run_with(
    old: &Cluster,
    new: &Cluster,
    reverse: &str,
) -> (tempfile::TempDir, impl Fn(&[&str]) -> std::process::Command) {
    let p = plugins();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"par\"\n[source]\nurl = \"{}/postgres\"\n[target]\nurl = \"{}/postgres\"\n\n\
             [[tables]]\nname = \"users\"\ntarget = \"users\"\nplugin = \"{}\"\ninverse = \"{}\"\n\n\
             [[tables]]\nname = \"notes\"\n\n[reverse]\n{}\n",
            old.url(),
            new.url(),
            p.transform_user.display(),
            p.user_inverse.display(),
            reverse.replace("{dir}", &dir.path().display().to_string())
        ),
    )
    .unwrap();
    let ferry = move |args: &[&str]| {
        let mut cmd = ferry_command();
        cmd.arg("--config").arg(&config).args(args);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd
    };
    (dir, ferry)
}

/// Waits until the forward stream of `par` has completed its initial load.
async fn forward_loaded(new: &Cluster) {
    let url = format!("{}/postgres", new.url());
    eventually("the forward initial load completes", || async {
        let mut c = PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_tables t WHERE schemaname = 'ferry' AND tablename = 'runs' \
             AND EXISTS (SELECT 1 FROM ferry.runs WHERE pipeline = 'par' AND status = 'completed')",
        )
        .fetch_one(&mut c)
        .await
        .unwrap_or(0)
            == 1
    })
    .await;
}

/// Two throwaway clusters (the old one with commit timestamps unless
/// `old_commit_times` is false): `rows` legacy users on the old side (none
/// the forward rules reject), a notes table on both, the new users table.
async fn two_sides(rows: i64, old_commit_times: bool) -> (Cluster, Cluster, PgConnection, PgConnection) {
    let old = Cluster::start_with(if old_commit_times { COMMIT_TIMES } else { "" }, &[], "");
    let new = Cluster::start_with(COMMIT_TIMES, &[], "");
    let mut o = conn(&old).await;
    sqlx::raw_sql(PG_LEGACY_DDL).execute(&mut o).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(pg_legacy_rows(1, rows))).execute(&mut o).await.unwrap();
    // Rows the forward rules reject (invalid JSON) are not part of these tests.
    sqlx::raw_sql("DELETE FROM users WHERE id % 50 = 0").execute(&mut o).await.unwrap();
    sqlx::raw_sql(NOTES_DDL).execute(&mut o).await.unwrap();
    let mut n = conn(&new).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{PG_NEW_DDL}; {NOTES_DDL}"))).execute(&mut n).await.unwrap();
    (old, new, o, n)
}

/// The new side's users equal a fresh migration of the old side's (the
/// oracle), but the `except` key.
async fn assert_new_is_the_transform_of_old(old: &Cluster, new: &Cluster, tag: &str, except: Option<&str>) {
    let oracle = PgDb::new(tag).await;
    oracle.exec(PG_NEW_DDL).await;
    let old_url = format!("{}/postgres", old.url());
    let migrate = Pipeline::new(&old_url, &oracle.url(), &plugins().transform_user, "").ferry(&["migrate"]);
    assert_eq!(migrate.code, 0, "{migrate:?}");
    let (mut got, mut want) = (new_users(&format!("{}/postgres", new.url())).await, new_users(&oracle.url()).await);
    if let Some(key) = except {
        got.retain(|r| r.0 != key);
        want.retain(|r| r.0 != key);
    }
    assert_eq!(got.len(), want.len(), "row counts");
    assert!(got == want, "the new users differ from the transform of the old ones");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_run_applies_each_change_once_in_each_direction_and_never_echoes() {
    let (old, new, mut o, mut n) = two_sides(2000, true).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET metadata = json_build_object('theme', {}, 'notifications', false)::text WHERE id % 100 = 1",
        big_text("id")
    )))
    .execute(&mut o)
    .await
    .unwrap();
    sqlx::raw_sql("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g")
        .execute(&mut o)
        .await
        .unwrap();
    sqlx::raw_sql(AUDIT).execute(&mut o).await.unwrap();

    let (_dir, ferry) = parallel_run(&old, &new);

    // The reverse stream refuses to start before the forward load is done.
    let early = run(&mut ferry(&["sync", "--reverse"]));
    assert_eq!(early.code, 8, "{early:?}");
    assert!(early.stderr.contains("initial load"), "{early:?}");

    let forward = ferry(&["sync", "--json"]).spawn().unwrap();
    let new_url = format!("{}/postgres", new.url());
    forward_loaded(&new).await;
    sqlx::raw_sql(AUDIT).execute(&mut n).await.unwrap();
    let reverse = ferry(&["sync", "--reverse", "--json"]).spawn().unwrap();
    eventually("the reverse slot is consistent", || async {
        let mut c = PgConnection::connect(&new_url).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_par_reverse' \
             AND confirmed_flush_lsn IS NOT NULL AND active",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
            == 1
    })
    .await;

    // Both applications write at once.
    let (old_ops, new_ops) = tokio::join!(old_writer(&old), new_writer(&new));
    // A last write on each side: once each has crossed, everything written
    // before it has (each stream applies in commit order).
    sqlx::raw_sql("INSERT INTO notes VALUES (-1, 'old side done')").execute(&mut o).await.unwrap();
    sqlx::raw_sql("INSERT INTO notes VALUES (-2, 'new side done')").execute(&mut n).await.unwrap();
    let old_url = format!("{}/postgres", old.url());
    eventually("both last writes cross", || async {
        let count = |url: String, id: i64| async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes WHERE id = $1")
                .bind(id)
                .fetch_one(&mut c)
                .await
                .unwrap()
        };
        count(new_url.clone(), -1).await == 1 && count(old_url.clone(), -2).await == 1
    })
    .await;
    // And each stream has read its source's WAL as it stands now (the
    // server's view: the slot confirms it), so it has seen, and dropped,
    // every write the other stream made on its side.
    for (side, slot) in [(&old, "ferry_par"), (&new, "ferry_par_reverse")] {
        let wal = scalar(side, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8").await;
        let confirmed = format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' \
             AND pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') >= {wal}"
        );
        eventually("the stream reads everything its source holds", || async { scalar(side, &confirmed).await == 1 })
            .await;
    }
    for child in [&forward, &reverse] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let (forward, reverse) = (json_report(forward), json_report(reverse));
    let mut old_ops = old_ops;
    old_ops.insert(("notes".into(), "-1".into()), 1);
    let mut new_ops = new_ops;
    new_ops.insert(("notes".into(), "-2".into()), 1);

    // Each side's trigger saw its own application's writes exactly, and
    // ferry's writes only for the other side's keys: nothing came back.
    let (old_audit, new_audit) = (audited(&old).await, audited(&new).await);
    let to_new = |(t, k): &(String, String)| (t.clone(), if t == "users" { format!("user_{k}") } else { k.clone() });
    let old_view = |k: &(String, String)| legacy_key(k);
    for (side, audit, own, crossed_keys) in [
        ("old", &old_audit, &old_ops, new_ops.keys().filter(|k| k.1 != "user_1601").map(old_view).collect::<Vec<_>>()),
        ("new", &new_audit, &new_ops, old_ops.keys().map(to_new).collect::<Vec<_>>()),
    ] {
        let own_writes: Ops =
            audit.iter().filter(|(_, (mine, _))| *mine > 0).map(|(k, (mine, _))| (k.clone(), *mine)).collect();
        assert_same(&own_writes, own, &format!("{side}: the application's own writes, each seen once"));
        let by_ferry: HashSet<(String, String)> =
            audit.iter().filter(|(_, (_, f))| *f > 0).map(|(k, _)| k.clone()).collect();
        let echoed: Vec<_> = by_ferry.iter().filter(|k| own.contains_key(*k)).collect();
        assert!(echoed.is_empty(), "{side}: ferry wrote back keys this side's application wrote: {echoed:?}");
        let expected: HashSet<(String, String)> = crossed_keys.into_iter().collect();
        let (missing, extra): (Vec<_>, Vec<_>) =
            (expected.difference(&by_ferry).collect(), by_ferry.difference(&expected).collect());
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{side}: every key the other side wrote crossed, and only those; missing {missing:?}, extra {extra:?}"
        );
    }

    // ferry's counts agree with the triggers: each stream dropped exactly
    // the other one's writes.
    let ferry_writes = |a: &HashMap<(String, String), (u32, u32)>| a.values().map(|(_, f)| u64::from(*f)).sum::<u64>();
    assert_eq!(forward["echo_changes"].as_u64(), Some(ferry_writes(&old_audit)), "{forward}");
    assert_eq!(reverse["echo_changes"].as_u64(), Some(ferry_writes(&new_audit)), "{reverse}");
    assert!(forward["echo_changes"].as_u64().unwrap() > 500, "{forward}");
    assert_eq!(reverse["stream"]["dead_lettered"], 1, "{reverse}");
    // The two applications never wrote the same key: no conflict, though
    // every change the reverse applied met rows the old side had written.
    assert_eq!(reverse["stream"]["conflicts"], 0, "{reverse}");

    // The refused change is a dead letter in the old database, with why.
    let (key, reason): (String, String) =
        sqlx::query_as("SELECT source_key, reason FROM ferry.change_dead_letters WHERE pipeline = 'par.reverse'")
            .fetch_one(&mut o)
            .await
            .unwrap();
    assert!(key.contains("user_1601") && reason.contains("lowercase"), "{key}: {reason}");

    // Both databases hold the same data: the copied table as it is, the new
    // users as a fresh migration of the old ones makes them (but the one
    // whose change could not go back).
    assert_eq!(notes(&old).await, notes(&new).await);
    let refused: String =
        sqlx::query_scalar("SELECT email FROM users WHERE id = 'user_1601'").fetch_one(&mut n).await.unwrap();
    assert_eq!(refused, "Upper.1601@Example.COM");
    assert_ne!(old_user(&mut o, 1601).await.unwrap().1, refused, "the refused change stayed on the new side");
    assert_new_is_the_transform_of_old(&old, &new, "paroracle", Some("user_1601")).await;

    // The servers' own record: each side's origin progressed.
    for (c, origin) in [(&mut n, "ferry:par"), (&mut o, "ferry:par.reverse")] {
        let progressed: bool = sqlx::query_scalar(
            "SELECT s.remote_lsn > '0/0' FROM pg_replication_origin_status s \
             JOIN pg_replication_origin r ON r.roident = s.local_id WHERE r.roname = $1",
        )
        .bind(origin)
        .fetch_one(&mut *c)
        .await
        .unwrap();
        assert!(progressed, "{origin}");
    }
}

/// One user's row on the old side: (name, email).
async fn old_user(c: &mut PgConnection, id: i64) -> Option<(String, String)> {
    sqlx::query_as("SELECT name, email FROM users WHERE id = $1").bind(id).fetch_optional(c).await.unwrap()
}

/// A row written on both sides before either side saw the other's write is
/// a conflict: the old side owns the writes until the cutover, so its
/// version stays on both sides and the new side's change is recorded with
/// the row it would have replaced. A write on the new side made after it
/// saw the old side's is not one. Without commit timestamps on the old
/// side, the reverse stream refuses to start.
#[tokio::test(flavor = "multi_thread")]
async fn rows_written_on_both_sides_at_once_are_conflicts_the_owner_keeps() {
    let (old, new, mut o, mut n) = two_sides(200, false).await;
    let (_dir, ferry) = parallel_run(&old, &new);
    let forward = ferry(&["sync", "--json"]).spawn().unwrap();
    forward_loaded(&new).await;

    // `ferry check` says it first.
    let check = run(&mut ferry(&["check", "--json"]));
    let items = check.json()["items"].as_array().unwrap().clone();
    let item = |name: &str| items.iter().find(|i| i["name"] == name).unwrap_or_else(|| panic!("{check:?}")).clone();
    assert_eq!(item("reverse tables")["level"], "ok", "{check:?}");
    let old_item = item("parallel run: old database");
    assert!(old_item["level"] == "fail" && old_item["detail"].as_str().unwrap().contains("track_commit_timestamp"));
    assert_eq!(item("parallel run: new database")["level"], "ok", "{check:?}");
    let refused = run(&mut ferry(&["sync", "--reverse"]));
    assert_eq!(refused.code, 8, "{refused:?}");
    assert!(refused.stderr.contains("track_commit_timestamp"), "{refused:?}");
    sqlx::raw_sql("ALTER SYSTEM SET track_commit_timestamp = on").execute(&mut o).await.unwrap();
    drop(o);
    // The forward stream rides out the restart (it reconnects).
    old.restart();
    let mut o = conn(&old).await;

    // The reverse slot exists; the reverse stream is stopped meanwhile.
    let first = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "1"]));
    assert_eq!(first.code, 0, "{first:?}");
    // Concurrent: the new side writes users 10 and 11 before the old
    // side's writes of them reach it.
    sqlx::raw_sql(
        "UPDATE users SET last_name = 'New Side' WHERE id = 'user_10'; DELETE FROM users WHERE id = 'user_11'",
    )
    .execute(&mut n)
    .await
    .unwrap();
    sqlx::raw_sql(
        "UPDATE users SET name = 'Old Ten' WHERE id = 10; UPDATE users SET name = 'Old Eleven' WHERE id = 11",
    )
    .execute(&mut o)
    .await
    .unwrap();
    // Not concurrent: the new side changes user 12 after the old side's
    // change of it arrived.
    sqlx::raw_sql("UPDATE users SET name = 'Old Twelve' WHERE id = 12").execute(&mut o).await.unwrap();
    let new_url = format!("{}/postgres", new.url());
    eventually("the old side's writes reach the new side", || async {
        let mut c = PgConnection::connect(&new_url).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM users WHERE (id, first_name) IN (('user_10', 'Old'), ('user_11', 'Old'), ('user_12', 'Old'))",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
            == 3
    })
    .await;
    sqlx::raw_sql("UPDATE users SET last_name = 'Twelve Seen' WHERE id = 'user_12'").execute(&mut n).await.unwrap();

    let reverse = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "2", "--json"]));
    assert_eq!(reverse.code, 0, "{reverse:?}");
    let report = reverse.json();
    assert_eq!(report["stream"]["conflicts"], 2, "{report}");

    // The old side kept its versions of 10 and 11 and took the new side's 12.
    assert_eq!(old_user(&mut o, 10).await.unwrap().0, "Old Ten");
    assert_eq!(old_user(&mut o, 11).await.unwrap().0, "Old Eleven");
    assert_eq!(old_user(&mut o, 12).await.unwrap().0, "Old Twelve Seen");
    let conflicts: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT target_key, incoming, kept, rule FROM ferry.conflicts WHERE pipeline = 'par.reverse' ORDER BY target_key",
    )
    .fetch_all(&mut o)
    .await
    .unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts[0].0.contains("10") && conflicts[0].1.contains("New Side"), "{conflicts:?}");
    assert!(conflicts[0].2.contains("Old Ten"), "both versions: {conflicts:?}");
    assert!(conflicts[1].0.contains("11") && conflicts[1].1.contains("delete"), "{conflicts:?}");
    assert!(conflicts[1].2.contains("Old Eleven") && conflicts[1].3.contains("owns"), "{conflicts:?}");

    // Both sides end equal: the new side holds the transform of the old.
    stop(forward);
    assert_new_is_the_transform_of_old(&old, &new, "parconflict", None).await;
}

async fn scalar(cluster: &Cluster, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn(cluster).await)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
}

fn gate<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["gates"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap_or_else(|| panic!("{report}"))
}

/// Stops a running `ferry sync` and waits for its end.
fn stop(child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    json_report(child);
}

/// The cutover holds until the forward stream is running and caught up,
/// the databases validate clean and no conflict is open; then the switch
/// hook runs, the new side owns the writes (the forward stream's changes
/// now yield to it), and the cutback brings the old side up to date with
/// what was written on the new side meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn cutover_is_gated_then_switches_and_cutback_brings_the_old_side_up_to_date() {
    let (old, new, mut o, mut n) = two_sides(300, true).await;
    let hook = "switch_command = \"echo $FERRY_SWITCH_TO >> {dir}/switched; cat > {dir}/switch-$FERRY_SWITCH_TO.json\"";
    let (dir, ferry) = parallel_run_with(&old, &new, hook);
    let switched = || std::fs::read_to_string(dir.path().join("switched")).unwrap_or_default();
    let spawn = |args: &[&str]| ferry(args).spawn().unwrap();
    let forward = spawn(&["sync", "--json"]);
    forward_loaded(&new).await;
    let reverse = spawn(&["sync", "--reverse", "--json"]);
    eventually("the reverse slot is active", || async {
        scalar(&new, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_par_reverse' AND active").await
            == 1
    })
    .await;

    // Lag: the forward stream stopped, with a change waiting.
    stop(forward);
    sqlx::raw_sql("UPDATE users SET name = 'Waiting Five' WHERE id = 5").execute(&mut o).await.unwrap();
    let refused = run(&mut ferry(&["cutover", "--json"]));
    assert_eq!(refused.code, 3, "{refused:?}");
    let r = refused.json();
    assert_eq!(r["switched"], false, "{r}");
    assert_eq!(gate(&r, "lag")["ok"], false, "{r}");
    // (Said as "not running", or as "behind" while the server has not yet
    // noticed that the stream's connection is gone.)
    let detail = gate(&r, "lag")["detail"].as_str().unwrap();
    assert!(detail.contains("not running") || detail.contains("behind"), "{r}");
    assert_eq!(switched(), "", "no switch hook ran");

    let forward = spawn(&["sync", "--json"]);
    eventually("the waiting change arrives", || async {
        scalar(&new, "SELECT count(*) FROM users WHERE id = 'user_5' AND last_name = 'Five'").await == 1
    })
    .await;

    // A seeded difference: a change of the old side that the forward
    // stream never sees (it carries the reverse stream's origin).
    stop(reverse);
    // (The stopped stream's session may hold the origin a moment longer.
    // One statement per transaction: the origin marks what commits while set.)
    let setup = "SELECT pg_replication_origin_session_setup('ferry:par.reverse')";
    let mut marked = conn(&old).await;
    let started = std::time::Instant::now();
    while let Err(e) = sqlx::query(setup).execute(&mut marked).await {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{e}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sqlx::query("UPDATE users SET name = 'Unseen Seven' WHERE id = 7").execute(&mut marked).await.unwrap();
    sqlx::query("SELECT pg_replication_origin_session_reset()").execute(&mut marked).await.unwrap();
    drop(marked);
    let reverse = spawn(&["sync", "--reverse", "--json"]);
    let refused = run(&mut ferry(&["cutover", "--json"]));
    assert_eq!(refused.code, 3, "{refused:?}");
    let r = refused.json();
    assert_eq!(gate(&r, "lag")["ok"], true, "{r}");
    assert_eq!(gate(&r, "validate")["ok"], false, "{r}");
    assert!(gate(&r, "validate")["detail"].as_str().unwrap().contains("1 different"), "{r}");
    assert_eq!(switched(), "");

    // Mended (written again, seen this time): the cutover happens.
    sqlx::raw_sql("UPDATE users SET name = 'Seen Seven' WHERE id = 7").execute(&mut o).await.unwrap();
    eventually("the mended row arrives", || async {
        scalar(&new, "SELECT count(*) FROM users WHERE id = 'user_7' AND first_name = 'Seen'").await == 1
    })
    .await;
    let dry = run(&mut ferry(&["cutover", "--dry-run", "--json"]));
    assert_eq!((dry.code, dry.json()["switched"].clone()), (0, serde_json::json!(false)), "{dry:?}");
    assert_eq!(switched(), "", "a dry run switches nothing");
    // The runbook's dry run shows the same gates, holding.
    let plan = run(&mut ferry(&["plan", "--dry-run", "--json"]));
    assert_eq!(plan.code, 0, "{plan:?}");
    let p = plan.json();
    assert!(p["cutover"]["gates"].as_array().unwrap().iter().all(|g| g["ok"] == true), "{p}");
    assert_eq!(p["tables"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(switched(), "");
    let done = run(&mut ferry(&["cutover", "--json"]));
    assert_eq!(done.code, 0, "{done:?}");
    let r = done.json();
    assert_eq!(r["switched"], true, "{r}");
    assert!(r["gates"].as_array().unwrap().iter().all(|g| g["ok"] == true), "{r}");
    assert_eq!(switched(), "new\n");
    let said: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("switch-new.json")).unwrap()).unwrap();
    assert_eq!((said["event"].as_str(), said["to"].as_str()), (Some("switch"), Some("new")), "{said}");
    assert_eq!(
        scalar(&new, "SELECT count(*) FROM ferry.parallel_runs WHERE pipeline = 'par' AND owner = 'new'").await,
        1
    );
    // The old side's application is gone, but its database still writes
    // WAL the forward stream does not carry (here: a table outside the
    // pipeline), so the slot is always a little behind in bytes.
    let noise = {
        let url = format!("{}/postgres", old.url());
        tokio::spawn(async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql("CREATE TABLE IF NOT EXISTS noise (x int)").execute(&mut c).await.unwrap();
            for x in 0..1000 {
                sqlx::query("INSERT INTO noise VALUES ($1)").bind(x).execute(&mut c).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let st = run(&mut ferry(&["status", "--json"]));
    noise.abort();
    assert_eq!(st.code, 0, "{st:?}");
    let st = st.json();
    assert_eq!(st["parallel"]["owner"], "new", "{st}");
    assert_eq!(st["parallel"]["open_conflicts"], 0, "{st}");
    // Caught up, as the lag gate just said: not the age of the old side's
    // last commit.
    let lag = st["lag_seconds"].as_f64();
    assert!(lag.is_some_and(|l| l < 5.0), "lag right after the cutover: {st}");
    assert!(st["parallel"]["reverse"]["applied"].is_number(), "the reverse stream as the old side records it: {st}");
    assert_eq!(
        scalar(&old, "SELECT count(*) FROM ferry.parallel_runs WHERE pipeline = 'par.reverse' AND owner = 'new'").await,
        1
    );

    // The running forward stream takes the new owner: its changes now yield.
    eventually("the forward stream yields", || async {
        scalar(
            &new,
            "SELECT count(*) FROM ferry.change_checkpoints WHERE pipeline = 'par' AND peer_seen_until IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    // The new application writes; one row is also written late on the old
    // side before the new side's version reached it: a conflict the new
    // side wins now.
    stop(reverse);
    sqlx::raw_sql(
        "UPDATE users SET last_name = 'New Twenty' WHERE id = 'user_20'; \
         UPDATE users SET last_name = 'New Thirty' WHERE id = 'user_30'; \
         INSERT INTO users VALUES ('user_900000', 'Brand', 'New', 'brand@example.com', '2025-01-01 00:00:00+00', \
         '{\"theme\": \"dark\", \"notifications\": true}')",
    )
    .execute(&mut n)
    .await
    .unwrap();
    sqlx::raw_sql("UPDATE users SET name = 'Late Thirty' WHERE id = 30").execute(&mut o).await.unwrap();
    eventually("the forward stream records the conflict", || async {
        scalar(&new, "SELECT count(*) FROM ferry.conflicts WHERE pipeline = 'par' AND target_key LIKE '%30%'").await
            == 1
    })
    .await;
    assert_eq!(scalar(&new, "SELECT count(*) FROM users WHERE id = 'user_30' AND last_name = 'New Thirty'").await, 1);
    let reverse = spawn(&["sync", "--reverse", "--json"]);
    eventually("the new side's writes reach the old side", || async {
        scalar(
            &old,
            "SELECT count(*) FROM users WHERE (id, name) IN ((20, 'Jean-Luc New Twenty'), (900000, 'Brand New'))",
        )
        .await
            == 2
            && scalar(&old, "SELECT count(*) FROM users WHERE id = 30 AND name LIKE '% New Thirty'").await == 1
    })
    .await;

    // The cutback waits for that conflict to be handled.
    let refused = run(&mut ferry(&["cutback", "--json"]));
    assert_eq!(refused.code, 3, "{refused:?}");
    let r = refused.json();
    assert_eq!(gate(&r, "conflicts")["ok"], false, "{r}");
    assert_eq!(switched(), "new\n");
    let listed = run(&mut ferry(&["conflicts", "--json"]));
    assert_eq!(listed.json()["conflicts"].as_array().unwrap().len(), 1, "{listed:?}");
    let resolved = run(&mut ferry(&["conflicts", "--resolve", "--json"]));
    assert_eq!(resolved.json()["resolved"], 1, "{resolved:?}");
    let back = run(&mut ferry(&["cutback", "--json"]));
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(back.json()["switched"], true);
    assert_eq!(switched(), "new\nold\n");
    assert_eq!(
        scalar(&old, "SELECT count(*) FROM ferry.parallel_runs WHERE pipeline = 'par.reverse' AND owner = 'old'").await,
        1
    );

    // Both sides hold the same data: the new side is the transform of the old.
    stop(forward);
    stop(reverse);
    assert_new_is_the_transform_of_old(&old, &new, "parcutover", None).await;

    // Teardown leaves nothing behind on either side: slots, publications,
    // replication origins. (The sessions of the stopped streams may hold
    // their origin a moment longer.)
    for args in [&["sync", "--teardown"][..], &["sync", "--reverse", "--teardown"]] {
        let started = std::time::Instant::now();
        loop {
            let down = run(&mut ferry(args));
            if down.code == 0 {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "{args:?}: {down:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    for side in [&old, &new] {
        let left = "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) \
                    + (SELECT count(*) FROM pg_replication_origin)";
        assert_eq!(scalar(side, left).await, 0, "slots, publications and origins left behind");
    }

    // Cut over to the new side again (as the record says), a torn-down
    // forward stream is not started anew over the new side's writes: refused
    // before it makes a publication or a slot.
    sqlx::raw_sql("UPDATE ferry.parallel_runs SET owner = 'new' WHERE pipeline = 'par'").execute(&mut n).await.unwrap();
    let again = run(&mut ferry(&["sync", "--idle-exit", "1"]));
    assert_ne!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("cut over to the new side") && again.stderr.contains("cutback"), "{again:?}");
    let made = "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)";
    assert_eq!(scalar(&old, made).await, 0, "nothing made on the old side");
}

/// The reverse stream killed with SIGKILL again and again while it drains
/// a backlog of the new side's writes: every write reaches the old side
/// exactly once (the old side's trigger sees each key written once by
/// ferry), and both sides end equal.
#[tokio::test(flavor = "multi_thread")]
async fn the_reverse_stream_applies_each_change_once_across_kill_9() {
    let (old, new, mut o, mut n) = two_sides(3000, true).await;
    sqlx::raw_sql(AUDIT).execute(&mut o).await.unwrap();
    let (_dir, ferry) = parallel_run(&old, &new);
    let forward = run(&mut ferry(&["sync", "--idle-exit", "1"]));
    assert_eq!(forward.code, 0, "{forward:?}");
    let first = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "1"]));
    assert_eq!(first.code, 0, "{first:?}");

    // A backlog on the new side, each key written once, in many small
    // transactions (and one TOASTed theme).
    sqlx::raw_sql(
        "DO $$ BEGIN FOR i IN 1..2000 LOOP \
           UPDATE users SET last_name = 'Killed ' || i WHERE id = 'user_' || i; COMMIT; \
         END LOOP; END $$",
    )
    .execute(&mut n)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET settings = jsonb_build_object('theme', {}, 'notifications', true) WHERE id = 'user_2001'; \
         DELETE FROM users WHERE substr(id, 6)::int BETWEEN 2500 AND 2599; \
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 500) g",
        big_text("7")
    )))
    .execute(&mut n)
    .await
    .unwrap();
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE last_name LIKE 'Killed %' OR id = 'user_2001'")
            .fetch_one(&mut n)
            .await
            .unwrap();

    let kills = kill_until_done(|| ferry(&["sync", "--reverse", "--idle-exit", "2"]), &[0]);
    assert!(kills >= 3, "the stream was interrupted ({kills} kills)");

    let audit = audited(&old).await;
    let twice: Vec<_> = audit.iter().filter(|(_, (_, by_ferry))| *by_ferry > 1).collect();
    assert!(twice.is_empty(), "written twice by ferry: {twice:?}");
    let users_written = audit.iter().filter(|((t, _), (_, f))| t == "users" && *f == 1).count() as i64;
    let deleted: i64 = 100 - (2500..2600).filter(|k| k % 50 == 0).count() as i64;
    assert_eq!(users_written, changed + deleted, "every change of the backlog applied once");
    assert_eq!(audit.iter().filter(|((t, _), _)| t == "notes").count(), 500);

    assert_new_is_the_transform_of_old(&old, &new, "parkill", None).await;
}

/// Every row of `table` as the server prints it, in key order.
async fn rows(cluster: &Cluster, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT r::text FROM {table} r ORDER BY id")))
        .fetch_all(&mut conn(cluster).await)
        .await
        .unwrap()
}

/// The rollback of a stream into tables that held rows: the reverse stream
/// of a parallel run writes the new side's changes into the old database
/// (updates of TOASTed rows, deletes, inserts, a key written twice, a
/// change the old side's CHECK refuses, so its group is applied under
/// savepoints); `ferry rollback --reverse` puts every row back as it was
/// before the stream, except one the old side's application changed since,
/// which is reported and kept until `--force`. Judged by the test's own
/// reading of every row.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_back_the_reverse_stream_restores_the_old_side_and_keeps_what_its_application_changed() {
    let (old, new, mut o, mut n) = two_sides(2000, true).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notes SELECT g, 'note ' || g || {} FROM generate_series(1, 400) g; \
         ALTER TABLE notes ADD CHECK (body <> 'new note 7')",
        big_text("g")
    )))
    .execute(&mut o)
    .await
    .unwrap();
    let (_dir, ferry) = parallel_run(&old, &new);
    let forward = run(&mut ferry(&["sync", "--idle-exit", "1"]));
    assert_eq!(forward.code, 0, "{forward:?}");
    let (users_before, notes_before) = (rows(&old, "users").await, rows(&old, "notes").await);
    let first = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "1"]));
    assert_eq!(first.code, 0, "{first:?}");

    new_writer(&new).await;
    sqlx::raw_sql("UPDATE users SET first_name = 'Twice' WHERE id = 'user_1001'").execute(&mut n).await.unwrap();
    let back = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "2"]));
    assert_eq!(back.code, 4, "the inverse's and the CHECK's refusals are dead letters: {back:?}");
    assert_eq!(scalar(&old, "SELECT count(*) FROM users WHERE id = 1001 AND name LIKE 'Twice %'").await, 1);
    assert_eq!(scalar(&old, "SELECT count(*) FROM notes WHERE id >= 20000").await, 149, "all but the refused one");
    assert_eq!(scalar(&old, "SELECT count(*) FROM users WHERE id BETWEEN 1401 AND 1500").await, 0);
    assert_ne!(rows(&old, "users").await, users_before);

    // The old side's application changes a row the stream wrote, and adds
    // one of its own.
    sqlx::raw_sql(
        "UPDATE users SET email = 'old.app@example.com' WHERE id = 1002; \
         INSERT INTO users SELECT 777777, name, 'added.by.old@example.com', created_at, metadata FROM users WHERE id = 5",
    )
    .execute(&mut o)
    .await
    .unwrap();
    let run_id: String = sqlx::query_scalar("SELECT run_id FROM ferry.runs WHERE pipeline = 'par.reverse'")
        .fetch_one(&mut o)
        .await
        .unwrap();

    let partial = run(&mut ferry(&["rollback", &run_id, "--reverse", "--json"]));
    assert_eq!(partial.code, 3, "{partial:?}");
    let report = partial.json();
    let table = |name: &str| report["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).unwrap().clone();
    assert_eq!(table("public.users")["changed_by_others"], 2, "{report}");
    assert_eq!(table("public.users")["changed_keys"], serde_json::json!(["(1002)", "(777777)"]), "{report}");
    assert_eq!(table("public.notes")["exact"], true, "{report}");
    assert_eq!(rows(&old, "notes").await, notes_before, "notes exactly as before the stream");
    let mut users = rows(&old, "users").await;
    assert_eq!(users.pop().map(|u| u.starts_with("(777777,")), Some(true), "the added row is kept");
    assert_eq!(users.len(), users_before.len());
    let differ: Vec<(&String, &String)> = users.iter().zip(&users_before).filter(|(a, b)| a != b).collect();
    assert_eq!(differ.len(), 1, "only the row the application changed: {differ:?}");
    assert!(differ[0].0.starts_with("(1002,") && differ[0].0.contains("old.app@example.com"), "{differ:?}");

    let forced = run(&mut ferry(&["rollback", &run_id, "--reverse", "--force", "--json"]));
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(rows(&old, "users").await, users_before, "users exactly as before the stream");

    // The slot still holds the rolled-back stream's place: not continued.
    let again = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "1"]));
    assert_eq!(again.code, 8, "{again:?}");
    assert!(again.stderr.contains("rolled back") && again.stderr.contains("--teardown"), "{again:?}");
    let teardown = run(&mut ferry(&["sync", "--reverse", "--teardown"]));
    assert_eq!(teardown.code, 0, "{teardown:?}");
    let fresh = run(&mut ferry(&["sync", "--reverse", "--idle-exit", "1"]));
    assert_eq!(fresh.code, 0, "a new stream, under a new run: {fresh:?}");
    assert_eq!(scalar(&old, "SELECT count(*) FROM ferry.runs WHERE pipeline = 'par.reverse'").await, 2);
}

/// The forward stream's run — its initial load and every change it applied
/// after — is one run: into tables empty at its start, rollback removes
/// exactly the rows its transactions wrote (the load's and the stream's,
/// TOASTed updates and deletes included) and keeps a row the new side's
/// application added, until --force.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_back_a_forward_stream_removes_its_load_and_its_changes_and_keeps_others_rows() {
    let (old, new, mut o, mut n) = two_sides(500, true).await;
    let (_dir, ferry) = parallel_run(&old, &new);
    let load = run(&mut ferry(&["sync", "--idle-exit", "1"]));
    assert_eq!(load.code, 0, "{load:?}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET name = 'Streamed ' || id WHERE id <= 100; \
         UPDATE users SET metadata = jsonb_build_object('theme', {})::text WHERE id = 101; \
         DELETE FROM users WHERE id BETWEEN 200 AND 220; \
         INSERT INTO notes SELECT g, 'streamed ' || g FROM generate_series(1, 30) g",
        big_text("101")
    )))
    .execute(&mut o)
    .await
    .unwrap();
    let stream = run(&mut ferry(&["sync", "--idle-exit", "1"]));
    assert_eq!(stream.code, 0, "{stream:?}");
    assert_eq!(scalar(&new, "SELECT count(*) FROM users WHERE first_name = 'Streamed'").await, 98, "{stream:?}");
    assert_eq!(scalar(&new, "SELECT count(*) FROM notes").await, 30);
    // The new side's application adds a row of its own.
    sqlx::raw_sql(
        "INSERT INTO notes VALUES (99999, 'written on the new side'); \
         UPDATE users SET last_name = 'Edited on new' WHERE id = 'user_7'",
    )
    .execute(&mut n)
    .await
    .unwrap();
    let run_id: String =
        sqlx::query_scalar("SELECT run_id FROM ferry.runs WHERE pipeline = 'par'").fetch_one(&mut n).await.unwrap();

    let back = run(&mut ferry(&["rollback", &run_id, "--json"]));
    assert_eq!(back.code, 3, "{back:?}");
    let r = back.json();
    let changed: Vec<&str> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["changed_keys"].as_array().unwrap())
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(changed, ["(99999)", "(user_7)"], "{r}");
    assert_eq!(rows(&new, "notes").await, ["(99999,\"written on the new side\")"]);
    assert_eq!(scalar(&new, "SELECT count(*) FROM users").await, 1, "only the row the application edited");
    let forced = run(&mut ferry(&["rollback", &run_id, "--force", "--json"]));
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(scalar(&new, "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM notes)").await, 0);
}
