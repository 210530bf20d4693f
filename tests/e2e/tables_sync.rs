//! `ferry sync` of a pipeline of many tables: one publication and one slot,
//! the initial load in the slot's snapshot, then source transactions that
//! touch several tables applied atomically. Judged against the source
//! itself (copies), a fresh migration of the final source (plugin tables,
//! SQLite), an observer polling the target during the stream, and
//! `pg_replication_slots`.

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;
use crate::tables::tables_pipeline;

async fn source_conn(cluster: &Cluster) -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", cluster.url())).await.unwrap()
}

/// A shop: a lookup table, customers with multi-KB incompressible
/// documents (stored out of line), orders whose `n_items` says how many
/// lines each has (all written in one transaction), lines with a composite
/// key, and a table of every type the stream must decode.
const SHOP_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE customers (id bigint PRIMARY KEY, country text NOT NULL REFERENCES countries, name text NOT NULL,
    doc jsonb NOT NULL, seen timestamptz);
CREATE TABLE orders (id uuid PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, n_items int NOT NULL,
    total numeric(14, 2) NOT NULL, tags text[]);
CREATE TABLE lines (order_id uuid NOT NULL REFERENCES orders, line int NOT NULL, sku text NOT NULL,
    qty int NOT NULL CHECK (qty > 0), PRIMARY KEY (order_id, line));
CREATE TABLE scratch (k text PRIMARY KEY, v bytea);
CREATE TABLE everything (id int PRIMARY KEY, b boolean, i2 smallint, i8 bigint, f4 real, f8 double precision,
    n numeric, t text, by bytea, j json, u uuid, d date, tm time, ts timestamp, tz timestamptz, iv interval,
    ia int[], ta text[], m mood, ip inet, mon money);
INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany'), ('jp', 'Japan');
"#;

/// Several KB of incompressible text (hex of chained hashes): PostgreSQL
/// stores it out of line, and an update of another column does not carry it.
fn document_sql(seed: &str) -> String {
    format!(
        "jsonb_build_object('seed', {seed}, 'blob', (SELECT string_agg(md5({seed}::text || g::text), '') \
         FROM generate_series(1, 400) g))"
    )
}

async fn seed_shop(c: &mut PgConnection, customers: i64) {
    sqlx::raw_sql(SHOP_DDL).execute(&mut *c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO customers SELECT g, (ARRAY['fr','de','jp'])[1 + g % 3], 'Customer ' || g, {}, \
         '2024-01-01 00:00:00.000001+00'::timestamptz + g * interval '1 minute' FROM generate_series(1, {customers}) g",
        document_sql("g")
    )))
    .execute(&mut *c)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO orders SELECT md5('o' || g)::uuid, 1 + g % {customers}, 2, g * 1.25, ARRAY['a', 'b c'] \
         FROM generate_series(1, {customers}) g; \
         INSERT INTO lines SELECT md5('o' || g)::uuid, l, 'SKU-' || l, l FROM generate_series(1, {customers}) g, \
         generate_series(1, 2) l;"
    )))
    .execute(&mut *c)
    .await
    .unwrap();
    sqlx::raw_sql(
        r#"INSERT INTO everything VALUES
 (1, true, 32767, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  123456789012345678901234567890.123456789012345678901234567890, 'Zoë 🚀 "q" \back', '\x00ff5c0a09',
  '{ "keep" : [1, 2.50] }', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '5874897-12-31', '24:00:00',
  '294246-12-31 23:59:59.999999', '2024-05-01 10:20:30.123456+00', '-1 year -2 mons +3 days -04:05:06.5',
  '{1,NULL,-3}', '{"a b",NULL,"q\"uote","","NULL"}', 'happy', '192.168.0.1/24', '$1,234.56'),
 (2, false, -32768, -9223372036854775808, 'NaN', '-Infinity', 'NaN', E'tab\there\nnl', '\x',
  'null', '00000000-0000-0000-0000-000000000000', '4713-01-01 BC', '00:00:00', '-infinity', 'infinity', '0 seconds',
  '{}', '{}', 'sad', '::1', '-$0.01')"#,
    )
    .execute(&mut *c)
    .await
    .unwrap();
}

/// Every row of `table` as PostgreSQL prints it, in key order.
async fn rows_text(url: &str, table: &str, order: &str) -> Vec<String> {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT whole_row::text FROM {table} whole_row ORDER BY {order}")))
        .fetch_all(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{e}: {table}"))
}

const SHOP_TABLES: [(&str, &str); 6] = [
    ("countries", "code"),
    ("customers", "id"),
    ("orders", "id"),
    ("lines", "order_id, line"),
    ("scratch", "k"),
    ("everything", "id"),
];

/// Source transactions of every kind, most touching several tables: a new
/// order with its lines (one transaction), lines replaced, orders deleted
/// with their lines (children first), customers whose out-of-line
/// document is left alone while another column changes, key changes,
/// values of every type, a truncate, and a transaction rolled back.
async fn write_shop_changes(c: &mut PgConnection, round: i64, customers: i64, pace: std::time::Duration) {
    for i in 0..40 {
        tokio::time::sleep(pace).await;
        let g = 1_000_000 * (round + 1) + i;
        let mut tx = c.begin().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO orders VALUES (md5('o' || {g})::uuid, {cust}, 3, {g} * 0.01, ARRAY[NULL, 'x']); \
             INSERT INTO lines SELECT md5('o' || {g})::uuid, l, 'NEW-' || l, l FROM generate_series(1, 3) l; \
             UPDATE customers SET name = name || '+', seen = now() WHERE id = {cust};",
            cust = 1 + (g % customers),
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        tokio::time::sleep(pace).await;
        let old = 1 + (i + round * 40) % customers;
        let mut tx = c.begin().await.unwrap();
        // Replace an old order's lines: delete them, write three, count three.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM lines WHERE order_id = md5('o' || {old})::uuid; \
             INSERT INTO lines SELECT md5('o' || {old})::uuid, l, 'RE-' || l || '-{round}', 10 + l FROM generate_series(1, 3) l; \
             UPDATE orders SET n_items = 3, total = total + 1 WHERE id = md5('o' || {old})::uuid;"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if i % 5 == 0 {
            // An order goes with its lines.
            let gone = customers - i - round * 7;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "BEGIN; DELETE FROM lines WHERE order_id = md5('o' || {gone})::uuid; \
                 DELETE FROM orders WHERE id = md5('o' || {gone})::uuid; COMMIT;"
            )))
            .execute(&mut *c)
            .await
            .unwrap();
            // A line's key changes.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "UPDATE lines SET line = line + 100 WHERE order_id = md5('o' || {})::uuid AND line = 1",
                gone - 1
            )))
            .execute(&mut *c)
            .await
            .unwrap();
            // Every type, inserted and updated in one transaction.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "BEGIN; INSERT INTO everything SELECT id + {k}, b, i2, i8, f4, f8, n, t, by, j, u, d, tm, ts, tz, iv, \
                 ia, ta, m, ip, mon FROM everything WHERE id IN (1, 2); \
                 UPDATE everything SET t = t || ' ✓', ia = ia || 7, iv = iv + interval '1 microsecond' WHERE id = {k} + 1; \
                 INSERT INTO scratch VALUES ('k{k}', '\\x00{k:04x}'); COMMIT;",
                k = 1000 * (round + 1) + 10 * i
            )))
            .execute(&mut *c)
            .await
            .unwrap();
            // Rolled back: never applied.
            let mut tx = c.begin().await.unwrap();
            sqlx::query("DELETE FROM lines").execute(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
        }
    }
    sqlx::raw_sql("TRUNCATE scratch").execute(&mut *c).await.unwrap();
    sqlx::raw_sql("INSERT INTO scratch VALUES ('after truncate', NULL)").execute(&mut *c).await.unwrap();
}

/// Orders in `url` whose lines do not number `n_items` (an order seen
/// without all the lines its transaction wrote): the count, or `None` before
/// the stream applies anything.
async fn torn_orders(url: &str) -> Option<i64> {
    let mut c = PgConnection::connect(url).await.ok()?;
    // Only once the stream applies (the initial load fills tables one by one).
    let streaming: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ferry.change_checkpoints WHERE streaming").fetch_one(&mut c).await.ok()?;
    if streaming == 0 {
        return None;
    }
    sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.n_items <> (SELECT count(*) FROM lines l WHERE l.order_id = o.id)",
    )
    .fetch_one(&mut c)
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_streams_many_tables_with_multi_table_transactions_applied_atomically() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = source_conn(&cluster).await;
    seed_shop(&mut c, 3000).await;
    let target = PgDb::new("tsync").await;
    // The target has the enum the source's tables use.
    target.exec("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]", "");

    let child = p.spawn(&["sync", "--idle-exit", "3", "--json"]);
    eventually("ferry creates its slot", || {
        let url = source.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut c).await.unwrap()
                > 0
        }
    })
    .await;
    // An observer polls the target while the stream applies: no order may
    // ever be seen without all of its lines.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let observer = {
        let (url, watching) = (target.url(), std::sync::Arc::clone(&watching));
        tokio::spawn(async move {
            let (mut polls, mut torn) = (0u64, 0i64);
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(n) = torn_orders(&url).await {
                    polls += 1;
                    torn = torn.max(n);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (polls, torn)
        })
    };
    // Round 0 piles up while the initial load runs; round 1 is written once
    // the stream applies, so the observer sees many target commits.
    write_shop_changes(&mut c, 0, 3000, std::time::Duration::ZERO).await;
    eventually("the stream applies changes", || {
        let url = target.url();
        async move { torn_orders(&url).await.is_some() }
    })
    .await;
    write_shop_changes(&mut c, 1, 3000, std::time::Duration::from_millis(15)).await;
    let report = json_report(child);
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let (polls, torn) = observer.await.unwrap();
    assert!(polls > 20, "the observer saw the stream at work {polls} times");
    assert!(report["stream"]["transactions"].as_u64().unwrap() > 20, "many target commits to observe: {report}");
    assert_eq!(torn, 0, "an order was visible without all the lines of its transaction");
    assert!(report["snapshot_rows"].as_u64().unwrap() >= 3000 * 4, "{report}");
    assert!(report["stream"]["upserts"].as_u64().unwrap() > 300, "{report}");
    assert_eq!(report["stream"]["dead_lettered"], 0, "{report}");
    assert!(report["toast_rereads"].as_u64().unwrap() >= 80, "documents left alone were read back: {report}");

    // The target equals the source, table by table, as PostgreSQL prints it.
    for (table, order) in SHOP_TABLES {
        let (got, want) = (rows_text(&target.url(), table, order).await, rows_text(&source, table, order).await);
        assert_eq!(got.len(), want.len(), "{table}: row counts");
        assert!(got == want, "{table} differs from the source");
    }
    // The foreign keys ferry built after the load hold the stream's rows.
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'lines'::regclass").await,
        1
    );
    // The slot is acknowledged up to what the target holds.
    let confirmed: i64 =
        sqlx::query_scalar("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let applied = target.scalar_i64("SELECT commit_lsn FROM ferry.change_checkpoints").await;
    assert!(confirmed >= applied, "slot confirmed {confirmed}, target applied commit {applied}");

    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut c).await.unwrap();
    assert_eq!(slots, 0);
}
