//! `ferry dlq replay`: dead letters tried again once the cause is fixed.
//! Judged by a fresh migration of the final source (what the target must
//! now equal), the control tables' own rows, and replaying twice.

use crate::support::*;
use crate::tables::tables_pipeline;

pub(crate) const SHOP: &str = r#"
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, placed_at timestamp NOT NULL,
    status text NOT NULL, items json NOT NULL);
INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 20) g;
INSERT INTO orders SELECT g, 1 + g % 20, '2024-03-01 10:00:00'::timestamp + g * interval '1 hour',
    CASE WHEN g = 60 THEN 'test' ELSE 'paid' END,
    CASE WHEN g IN (10, 20, 30) THEN '{"not": "an array"}'::json
         WHEN g IN (40, 50) THEN '[{"sku": "zero", "qty": 0, "price": "1"}]'::json
         ELSE json_build_array(json_build_object('sku', 'A' || g, 'qty', 1, 'price', '1.50'),
                               json_build_object('sku', 'B' || g, 'qty', 2, 'price', 2.25)) END
FROM generate_series(1, 200) g;
"#;

/// A target of either engine, read with queries of our own.
enum Target {
    Pg(PgDb),
    Sqlite(SqliteDb),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Pg(db) => db.url(),
            Target::Sqlite(db) => db.url(),
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match self {
            Target::Pg(db) => db.scalar_i64(&sql.replace("ferry_", "ferry.")).await,
            Target::Sqlite(db) => db.scalar_i64(sql).await,
        }
    }

    /// Every row of orders and order_items, in key order, one text each.
    async fn rows(&self) -> Vec<String> {
        let sql = "SELECT 'o ' || id || ' ' || customer_id || ' ' || status || ' ' || item_count FROM orders \
                   UNION ALL SELECT 'i ' || order_id || ' ' || line || ' ' || sku || ' ' || qty || ' ' || price \
                   FROM order_items ORDER BY 1";
        match self {
            Target::Pg(db) => sqlx::query_scalar(sql).fetch_all(&mut db.conn().await).await.unwrap(),
            Target::Sqlite(db) => sqlx::query_scalar(sql).fetch_all(&mut db.conn().await).await.unwrap(),
        }
    }

    async fn dead(&self) -> Vec<(String, String, String)> {
        let sql =
            "SELECT source_key, reason, plugin_sha256 FROM ferry_dead_letters ORDER BY length(source_key), source_key";
        match self {
            Target::Pg(db) => sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("ferry_", "ferry.")))
                .fetch_all(&mut db.conn().await)
                .await
                .unwrap(),
            Target::Sqlite(db) => sqlx::query_as(sql).fetch_all(&mut db.conn().await).await.unwrap(),
        }
    }
}

async fn replay_scenario(target: Target, oracle: Target) {
    let source = PgDb::new("replaysrc").await;
    source.exec(SHOP).await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let include = "include = [\"public.customers\"]";
    let p = tables_pipeline(&source.url(), &target.url(), include, &extra);
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    let v1 = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders).unwrap());
    let keys = |dead: &[(String, String, String)]| dead.iter().map(|d| d.0.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&target.dead().await), ["10", "20", "30", "40", "50"]);

    // Nothing fixed: nothing loads, the dead letters stay as they were.
    let before = target.rows().await;
    let r = p.ferry(&["dlq", "replay", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    let line = r.json()["tables"][0].clone();
    assert_eq!(
        (line["retried"].as_u64(), line["loaded"].as_u64(), line["dead_lettered"].as_u64()),
        (Some(5), Some(0), Some(5)),
        "{line}"
    );
    assert_eq!(target.rows().await, before);
    assert_eq!(target.dead().await.len(), 5);

    // The source fixed for two orders, one order gone.
    source
        .exec(
            "UPDATE orders SET items = '[{\"sku\": \"fixed\", \"qty\": 3, \"price\": \"9.99\"}]' WHERE id IN (10, 20); \
             DELETE FROM orders WHERE id = 30;",
        )
        .await;
    let r = p.ferry(&["dlq", "replay", "--json"]);
    assert_eq!(r.code, 4, "two are still rejected: {r:?}");
    let line = r.json()["tables"][0].clone();
    assert_eq!(
        (line["loaded"].as_u64(), line["gone"].as_u64(), line["dead_lettered"].as_u64()),
        (Some(2), Some(1), Some(2)),
        "{line}"
    );
    // The target is now what a fresh migration of the source gives.
    let fresh = tables_pipeline(&source.url(), &oracle.url(), include, &extra);
    assert_eq!(fresh.ferry(&["migrate"]).code, 4, "orders 40 and 50 are rejected there too");
    let rows = target.rows().await;
    assert_eq!(rows.len(), oracle.rows().await.len());
    assert!(rows == oracle.rows().await, "the target differs from a fresh migration of the fixed source");
    assert_eq!(target.count("SELECT count(*) FROM order_items WHERE sku = 'fixed'").await, 2);
    let dead = target.dead().await;
    assert_eq!(keys(&dead), ["30", "40", "50"], "the gone order keeps its dead letter; 10 and 20 are loaded");
    // The ledger holds: every source row of the run is loaded, filtered or
    // a dead letter (200 = 196 + 1 + 3), counted by the control tables.
    let ledger = target
        .count(
            "SELECT extracted * 1000000 + loaded * 1000 + filtered * 10 + dead_lettered FROM ferry_table_progress \
             WHERE table_name = 'public.orders'",
        )
        .await;
    assert_eq!(ledger, 200_000_000 + 196_000 + 10 + 3);

    // Again: nothing is loaded twice.
    let r = p.ferry(&["dlq", "replay", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(r.json()["tables"][0]["loaded"], 0);
    assert!(target.rows().await == rows, "a second replay changed the target");
    assert_eq!(target.count("SELECT count(*) FROM ferry_dead_letters").await, 3);

    // Through another version: the rows still fail, now tied to it.
    let v2 = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders_v2).unwrap());
    let r = p.ferry(&["dlq", "replay", "--plugin", plugins().split_orders_v2.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(r.json()["tables"][0]["plugin_sha256"], v2.as_str());
    let dead = target.dead().await;
    assert_eq!(
        dead[0],
        ("30".to_string(), "items is not a JSON array".to_string(), v1.clone()),
        "gone from the source: untouched"
    );
    for (key, reason, sha) in &dead[1..] {
        assert_eq!(sha, &v2, "order {key} was refused again by v2");
        assert!(reason.contains("qty is not a positive integer"), "{reason}");
    }
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "every difference is an explained dead letter: {v:?}");
}

#[tokio::test]
async fn replay_loads_fixed_dead_letters_once_into_postgres() {
    replay_scenario(Target::Pg(PgDb::new("replaytgt").await), Target::Pg(PgDb::new("replayora").await)).await;
}

#[tokio::test]
async fn replay_loads_fixed_dead_letters_once_into_sqlite() {
    replay_scenario(Target::Sqlite(SqliteDb::new()), Target::Sqlite(SqliteDb::new())).await;
}

/// Orders with lower-case SKUs: `split-orders-v2` writes them in upper
/// case, so every order says which version made it. Order 150 is a test
/// order (filtered by both versions); orders 70 and 140 have items that are
/// not a list (rejected by both).
const LOWER_SHOP: &str = r#"
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, placed_at timestamp NOT NULL,
    status text NOT NULL, items json NOT NULL);
INSERT INTO orders SELECT g, 1 + g % 20, '2024-03-01 10:00:00'::timestamp + g * interval '1 hour',
    CASE WHEN g = 150 THEN 'test' ELSE 'paid' END,
    CASE WHEN g IN (70, 140) THEN '{"not": "an array"}'::json
         ELSE json_build_array(json_build_object('sku', 'a-' || g, 'qty', 1, 'price', '1.50'),
                               json_build_object('sku', 'b-' || g, 'qty', 2, 'price', 2.25)) END
FROM generate_series(1, 300) g;
"#;

async fn reprocess_scenario(target: Target) {
    let source = PgDb::new("reprocsrc").await;
    source.exec(LOWER_SHOP).await;
    let extra = format!(
        "[migrate]\nbatch_size = 40\n\n[[tables]]\nname = \"public.orders\"\nplugin = \"{}\"\n",
        plugins().split_orders.display()
    );
    let p = tables_pipeline(&source.url(), &target.url(), "", &extra);
    assert_eq!(p.ferry(&["migrate"]).code, 4, "orders 70 and 140 are dead letters");
    let v2_path = plugins().split_orders_v2.to_str().unwrap();
    let v2 = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders_v2).unwrap());
    let ledger = "SELECT extracted * 1000000 + loaded * 1000 + filtered * 10 + dead_lettered FROM ferry_table_progress";
    assert_eq!(target.count(ledger).await, 300_000_000 + 297_000 + 10 + 2);

    // A range that ends at a key the source does not hold is refused.
    let r = p.ferry(&["reprocess", "--plugin", v2_path, "--range", "100..9999"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no row of public.orders has the key 9999"), "{r:?}");

    let r = p.ferry(&["reprocess", "--plugin", v2_path, "--range", "100..200", "--json"]);
    assert_eq!(r.code, 4, "order 140 is rejected by v2 too: {r:?}");
    let report = r.json();
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["loaded"].as_u64(),
            report["filtered"].as_u64(),
            report["dead_lettered"].as_u64()
        ),
        (Some(100), Some(98), Some(1), Some(1)),
        "{report}"
    );
    // Orders 101..=200 by v2, the rest by v1, none mixed; order 140 still
    // out, its dead letter now v2's.
    let check = |range: &str, case: &str| {
        format!("SELECT count(*) FROM order_items WHERE order_id {range} AND sku <> {case}(sku)")
    };
    assert_eq!(target.count(&check("BETWEEN 101 AND 200", "upper")).await, 0);
    assert_eq!(target.count(&check("NOT BETWEEN 101 AND 200", "lower")).await, 0);
    assert_eq!(target.count("SELECT count(*) FROM order_items WHERE order_id BETWEEN 101 AND 200").await, 2 * 98);
    assert_eq!(target.count("SELECT count(*) FROM order_items").await, 2 * 297);
    assert_eq!(target.count("SELECT count(*) FROM orders").await, 297);
    let dead = target.dead().await;
    assert_eq!(
        dead.iter().map(|d| (d.0.as_str(), d.2 == v2)).collect::<Vec<_>>(),
        [("70", false), ("140", true)],
        "{dead:?}"
    );
    // The ledger holds, counted by the control tables themselves.
    assert_eq!(target.count(ledger).await, 300_000_000 + 297_000 + 10 + 2);
    // The lineage names v2 for the reprocessed keys; validate re-runs each
    // row through its own version and finds nothing to say.
    assert_eq!(target.count(&format!("SELECT count(*) FROM ferry_lineage WHERE plugin_sha256 = '{v2}'")).await, 3);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let status = p.ferry(&["status", "--json"]);
    let versions = status.json()["versions"].clone();
    assert!(versions.as_array().unwrap().iter().any(|s| s["plugin_sha256"] == v2.as_str()), "{versions}");

    // Twice is once: the same target, the same ledger.
    let rows = target.rows().await;
    let again = p.ferry(&["reprocess", "--plugin", v2_path, "--range", "100..200", "--json"]);
    assert_eq!(again.code, 4, "{again:?}");
    assert!(target.rows().await == rows, "a second reprocess changed the target");
    assert_eq!(target.count(ledger).await, 300_000_000 + 297_000 + 10 + 2);
    assert_eq!(p.ferry(&["validate"]).code, 0);

    // Back to v1 for every row: the target is a fresh v1 migration's.
    let v1_path = plugins().split_orders.to_str().unwrap();
    let back = p.ferry(&["reprocess", "--plugin", v1_path, "--json"]);
    assert_eq!(back.code, 4, "{back:?}");
    assert_eq!(back.json()["rows"], 300);
    assert_eq!(target.count(&check("BETWEEN 1 AND 300", "lower")).await, 0);
    assert_eq!(target.count("SELECT count(*) FROM order_items").await, 2 * 297);
    assert_eq!(target.count(ledger).await, 300_000_000 + 297_000 + 10 + 2);
    assert_eq!(p.ferry(&["validate"]).code, 0);
}

#[tokio::test]
async fn reprocess_replaces_a_key_range_with_another_version_exactly_once_in_postgres() {
    reprocess_scenario(Target::Pg(PgDb::new("reproctgt").await)).await;
}

#[tokio::test]
async fn reprocess_replaces_a_key_range_with_another_version_exactly_once_in_sqlite() {
    reprocess_scenario(Target::Sqlite(SqliteDb::new())).await;
}

/// Accounts whose documents are out-of-line TOASTed text.
const ACCOUNTS: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, bio text NOT NULL);
INSERT INTO accounts SELECT g, 'user' || g || '@example.com',
    (SELECT string_agg(md5(g::text || r::text), '') FROM generate_series(1, 150) r) FROM generate_series(1, 300) g;
"#;

/// A change stream's dead letters (rows the target refused: a CHECK the
/// target has and the source does not) are replayed by the stream: asked
/// while it is stopped, they wait for it, and the next `ferry sync` tries
/// them — a row fixed at the source since passes, a deleted one goes, the
/// rest are dead letters again with the reason; once the target is fixed,
/// `ferry dlq replay` beside the running stream, with writers changing the
/// same rows, clears them all. Judged by the source's rows and the dead
/// letter table, not by the report.
#[tokio::test(flavor = "multi_thread")]
async fn a_streams_dead_letters_are_replayed_by_the_running_stream() {
    let cluster = crate::cluster::Cluster::start();
    let source = PgDb::on(&cluster.url(), "postgres");
    source.exec(ACCOUNTS).await;
    let target = PgDb::new("streamreplay").await;
    let p = tables_pipeline(&source.url(), &target.url(), "include = [\"public.accounts\"]", "");
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 0);
    target.exec("ALTER TABLE accounts ADD CONSTRAINT lower_email CHECK (email = lower(email))").await;
    source
        .exec(
            "UPDATE accounts SET email = upper(email), bio = md5(bio) || bio WHERE id <= 10; \
             INSERT INTO accounts VALUES (301, 'New@Example.com', 'a'), (302, 'Other@Example.com', 'b');",
        )
        .await;
    let refused = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(refused.code, 4, "{refused:?}");
    let dead = "SELECT count(*) FROM ferry.change_dead_letters";
    assert_eq!(target.scalar_i64(dead).await, 12);
    // Since then: one fixed at the source, one deleted.
    source.exec("UPDATE accounts SET email = lower(email) WHERE id = 3; DELETE FROM accounts WHERE id = 4;").await;
    assert_eq!(p.ferry(&["sync", "--idle-exit", "1"]).code, 0, "nothing refused this time");

    // Asked with no stream running: they wait for it.
    let asked = p.ferry(&["dlq", "replay", "--wait", "0", "--json"]);
    assert_eq!(asked.code, 4, "{asked:?}");
    assert_eq!(asked.json()["stream"]["pending"], 12, "{asked:?}");
    assert!(p.ferry(&["dlq", "replay", "--wait", "0"]).stdout.contains("replays them while `ferry sync` runs"));
    assert_eq!(p.ferry(&["sync", "--idle-exit", "2"]).code, 4, "the target still refuses ten of them");
    assert_eq!(target.scalar_i64(dead).await, 10);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM ferry.stream_replays").await, 0, "no request left");
    let reasons = "SELECT count(*) FROM ferry.change_dead_letters WHERE reason LIKE '%lower_email%'";
    assert_eq!(target.scalar_i64(reasons).await, 10, "each with the target's reason");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM accounts WHERE id IN (3, 4)").await, 1, "3 passed, 4 went");

    // The target fixed, replayed beside the running stream while the
    // application keeps changing the same rows.
    target.exec("ALTER TABLE accounts DROP CONSTRAINT lower_email").await;
    let mut child = p.spawn(&["sync"]);
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (url, running) = (source.url(), running.clone());
        tokio::spawn(async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
            let mut n = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sql = format!("UPDATE accounts SET bio = md5(bio) || '{n}' || bio WHERE id = {}", 1 + n % 12);
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let replayed = p.ferry(&["dlq", "replay", "--json"]);
    assert_eq!(replayed.code, 0, "{replayed:?}");
    let stream = &replayed.json()["stream"];
    assert_eq!((stream["asked"].as_u64(), stream["replayed"].as_u64()), (Some(10), Some(10)), "{stream}");
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let all = "SELECT string_agg(a::text, E'\\n' ORDER BY id) FROM accounts a";
    let want = source_text(&source, all).await;
    eventually("the target equals the source", || async { source_text(&target, all).await == want }).await;
    assert_eq!(target.scalar_i64(dead).await, 0);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

async fn source_text(db: &PgDb, sql: &str) -> String {
    let mut c = db.conn().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut c).await.unwrap()
}
