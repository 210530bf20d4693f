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
    let streaming: i64 = sqlx::query_scalar("SELECT count(*) FROM ferry.change_checkpoints WHERE streaming")
        .fetch_one(&mut c)
        .await
        .ok()?;
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
        let first =
            got.iter().zip(&want).find(|(g, w)| g != w).map(|(g, w)| (&g[..g.len().min(300)], &w[..w.len().min(300)]));
        assert!(got == want, "{table} differs from the source; first: {first:?}");
    }
    // The foreign keys ferry built after the load hold the stream's rows.
    assert_eq!(
        target
            .scalar_i64("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'lines'::regclass")
            .await,
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

    // ferry status shows the stream and the slot, drained (the slot may hold
    // a few bytes of WAL written after the last change, such as a checkpoint).
    let st = p.ferry(&["status", "--json"]);
    assert_eq!(st.code, 0, "{st:?}");
    let st = st.json();
    assert_eq!(st["phase"], "streaming", "{st}");
    assert_eq!(st["slots"][0]["name"], "ferry_tables", "{st}");
    assert!(st["lag_seconds"].is_number(), "{st}");
    assert!(st["slots"][0]["lag_bytes"].as_i64().unwrap() < 64 * 1024, "{st}");
    assert!(st["stream"]["applied"].as_u64().unwrap() > 300, "{st}");

    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots").fetch_one(&mut c).await.unwrap();
    assert_eq!(slots, 0);
}

/// The legacy orders of the quickstart (items in a JSON column), split by
/// the `split-orders` plugin, beside customers copied as they are.
const LEGACY_ORDERS_DDL: &str = r#"
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, placed_at timestamp NOT NULL,
    status text NOT NULL, items json NOT NULL);
INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 50) g;
INSERT INTO orders SELECT g, 1 + g % 50, '2024-03-01 10:00:00'::timestamp + g * interval '1 hour', 'paid',
    json_build_array(json_build_object('sku', 'A' || g, 'qty', 1, 'price', '1.50'),
                     json_build_object('sku', 'B' || g, 'qty', 2, 'price', 2.25),
                     json_build_object('sku', 'C' || g, 'qty', 3, 'price', '0.10'))
    FROM generate_series(1, 300) g;
"#;

/// Every row of each of `tables` in `url`, as PostgreSQL prints it.
async fn tables_text(url: &str, tables: &[(&str, &str)]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for (table, order) in tables {
        all.push(rows_text(url, table, order).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_streams_plugin_tables_replacing_the_rows_of_the_old_version() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(LEGACY_ORDERS_DDL).execute(&mut c).await.unwrap();
    insert_toasted_order(&mut c, 600).await;
    let target = PgDb::new("tsyncp").await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let include = "include = [\"public.customers\"]";
    let p = tables_pipeline(&source, &target.url(), include, &extra);
    let first = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items").await, 900 + 250);

    sqlx::raw_sql(
        r#"
        -- Fewer items: the old version's third line must go.
        UPDATE orders SET items = json_build_array(json_build_object('sku', 'X', 'qty', 9, 'price', '9.99'))
            WHERE id BETWEEN 1 AND 20;
        -- An order and its items go.
        DELETE FROM orders WHERE id BETWEEN 21 AND 30;
        -- Marked as a test order: filtered, so its rows go from the target.
        UPDATE orders SET status = 'TEST' WHERE id BETWEEN 31 AND 35;
        -- A new order and its customer, in one transaction.
        BEGIN; INSERT INTO customers VALUES (51, 'New'); INSERT INTO orders VALUES (1000, 51, '2024-06-01 00:00:00', 'paid',
            '[{"sku": "N", "qty": 4, "price": "4.00"}]'); COMMIT;
        -- A key change of an order.
        UPDATE orders SET id = 2000 WHERE id = 40;
        -- Rejected by the plugin (items not an array): order 41 keeps its old rows.
        UPDATE orders SET items = '{"not": "an array"}' WHERE id = 41;
        UPDATE customers SET name = 'Renamed' WHERE id = 7;
        -- The big order shipped, its items untouched: the change carries no
        -- items (unchanged TOAST), the plugin needs them.
        UPDATE orders SET status = 'shipped' WHERE id = 600;
        "#,
    )
    .execute(&mut c)
    .await
    .unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 4, "one dead letter: {run:?}");
    let report = run.json();
    assert_eq!(report["stream"]["dead_lettered"], 1, "{report}");
    assert!(report["toast_rereads"].as_u64() >= Some(1), "order 600 was read back: {report}");
    assert_eq!(report["stream"]["toast_rereads"], report["toast_rereads"], "one counter, said once: {report}");
    let reason: String = sqlx::query_scalar("SELECT reason FROM ferry.change_dead_letters WHERE source_key = '41'")
        .fetch_one(&mut target.conn().await)
        .await
        .unwrap();
    assert!(reason.contains("not a JSON array"), "{reason}");

    // The oracle: a fresh migration of the final source through the same plugin.
    let oracle = PgDb::new("tsyncpo").await;
    let fresh = tables_pipeline(&source, &oracle.url(), include, &extra);
    assert_eq!(fresh.ferry(&["migrate"]).code, 4, "order 41 is rejected there too");
    let tables = [("customers", "id"), ("orders", "id"), ("order_items", "order_id, line")];
    let kept = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        rows.into_iter().map(|t| t.into_iter().filter(|r| !r.starts_with("(41,")).collect()).collect()
    };
    let (got, want) =
        (kept(tables_text(&target.url(), &tables).await), kept(tables_text(&oracle.url(), &tables).await));
    for ((table, _), (got, want)) in tables.iter().zip(got.iter().zip(&want)) {
        assert_eq!(got.len(), want.len(), "{table}: row counts");
        assert!(got == want, "{table} differs from a fresh migration of the source");
    }
    // Order 41's last good version stays, whole.
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 41").await, 3);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id BETWEEN 1 AND 20").await, 20);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM orders WHERE id BETWEEN 21 AND 35").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 600").await, 250);
    // validate re-runs the plugin on the source: only order 41 differs, and
    // its dead letter explains it.
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let orders =
        v.json()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "public.orders").cloned().unwrap();
    assert!(orders["explained"].as_u64().unwrap() >= 1, "{orders}");
}

/// Each row of `table` in a SQLite file as one text (`quote()` of every
/// column: storage class and value), in key order.
pub(crate) async fn sqlite_rows(db: &SqliteDb, table: &str, order: &str) -> Vec<String> {
    let mut c = db.conn().await;
    let columns: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
            .fetch_all(&mut c)
            .await
            .unwrap();
    let expr: Vec<String> = columns.iter().map(|n| format!("quote(\"{n}\")")).collect();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM \"{table}\" ORDER BY {order}",
        expr.join(" || '|' || ")
    )))
    .fetch_all(&mut c)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_streams_into_sqlite_and_resumes_after_kill_9() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = source_conn(&cluster).await;
    seed_shop(&mut c, 2000).await;
    let file = SqliteDb::new();
    // Types SQLite can hold: the enum-typed table stays behind.
    let include = "include = [\"public.*\"]\nexclude = [\"public.everything\"]";
    let p = tables_pipeline(&source, &file.url(), include, "");
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    // A backlog, drained by a sync killed -9 at random moments until one
    // run completes.
    write_shop_changes(&mut c, 0, 2000, std::time::Duration::ZERO).await;
    sqlx::raw_sql(
        "DO $$ BEGIN FOR i IN 1..20000 LOOP \
           UPDATE lines SET qty = qty + 1 WHERE order_id = md5('o' || (1 + i % 1500))::uuid AND line = 2; COMMIT; \
         END LOOP; END $$",
    )
    .execute(&mut c)
    .await
    .unwrap();
    write_shop_changes(&mut c, 1, 2000, std::time::Duration::ZERO).await;
    let kills = kill_until_done(|| p.command(&["sync", "--idle-exit", "1"]), &[0]);
    assert!(kills >= 2, "only {kills} kills landed");

    let oracle = SqliteDb::new();
    let fresh = tables_pipeline(&source, &oracle.url(), include, "");
    assert_eq!(fresh.ferry(&["migrate"]).code, 0);
    for (table, order) in SHOP_TABLES.iter().filter(|(t, _)| *t != "everything") {
        let (got, want) = (sqlite_rows(&file, table, order).await, sqlite_rows(&oracle, table, order).await);
        assert_eq!(got.len(), want.len(), "{table}: row counts");
        assert!(got == want, "{table} differs from a fresh migration of the source");
    }
    let mut slots = source_conn(&cluster).await;
    let confirmed: i64 =
        sqlx::query_scalar("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots")
            .fetch_one(&mut slots)
            .await
            .unwrap();
    let applied = file.scalar_i64("SELECT commit_lsn FROM ferry_change_checkpoints").await;
    assert!(confirmed >= applied, "slot confirmed {confirmed}, target applied commit {applied}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_published_beyond_the_pipeline_are_reported_not_ignored() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(
        "CREATE TABLE kept (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO kept VALUES (1, 'a'); CREATE PUBLICATION ferry_tables FOR ALL TABLES;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let target = PgDb::new("tsyncu").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.kept\"]", "");
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stderr.contains("also publishes public.other"), "the extra table is reported: {first:?}");
    sqlx::raw_sql("BEGIN; INSERT INTO kept VALUES (2, 'b'); INSERT INTO other VALUES (7, 'x'); COMMIT;")
        .execute(&mut c)
        .await
        .unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 4, "the other table's change is a dead letter: {run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM kept").await, 2);
    let (table, reason): (String, String) =
        sqlx::query_as("SELECT source_table, reason FROM ferry.change_dead_letters")
            .fetch_one(&mut target.conn().await)
            .await
            .unwrap();
    assert_eq!(table, "public.other");
    assert!(reason.contains("not in the pipeline"), "{reason}");

    // A table the pipeline's include widens to, which the stream never
    // loaded (nor met being made), is refused with the fix.
    let narrow = tables_pipeline(&source, &target.url(), "include = [\"public.*\"]", "");
    sqlx::raw_sql("DROP PUBLICATION ferry_tables; CREATE PUBLICATION ferry_tables FOR TABLE kept")
        .execute(&mut c)
        .await
        .unwrap();
    let refused = narrow.ferry(&["sync", "--idle-exit", "1"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("public.other, which source.include brings"), "{refused:?}");
    assert!(refused.stderr.contains("ferry sync --teardown"), "{refused:?}");
}

/// Identity columns: the initial load creates them as identity columns
/// (GENERATED ALWAYS kept), the stream writes the source's generated
/// values into them, and its sequence follows the source's.
#[tokio::test(flavor = "multi_thread")]
async fn sync_writes_the_source_identity_values_into_identity_columns() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = source_conn(&cluster).await;
    sqlx::raw_sql(
        "CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL);
         INSERT INTO tickets (title) SELECT 't' || g FROM generate_series(1, 100) g;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let target = PgDb::new("tsyncid").await;
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.tickets\"]", "");
    let first = p.ferry(&["sync", "--idle-exit", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    let identity = "SELECT attidentity::text FROM pg_attribute WHERE attrelid = 'tickets'::regclass AND attname = 'id'";
    let kind: String = sqlx::query_scalar(identity).fetch_one(&mut target.conn().await).await.unwrap();
    assert_eq!(kind, "a", "GENERATED ALWAYS AS IDENTITY in the target too");
    sqlx::raw_sql(
        "INSERT INTO tickets (title) SELECT 'streamed ' || g FROM generate_series(1, 20) g;
         UPDATE tickets SET title = 'edited' WHERE id = 7;",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let run = p.ferry(&["sync", "--idle-exit", "1", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["stream"]["dead_lettered"], 0, "{run:?}");
    assert_eq!(rows_text(&target.url(), "tickets", "id").await, rows_text(&source, "tickets", "id").await);
    // Logical replication carries no sequence values: the stopped stream
    // moved the target's to where the source's stands, so the next row
    // written on the target gets the id the source would give it.
    let insert = "INSERT INTO tickets (title) VALUES ('after') RETURNING id";
    let next_source: i64 = sqlx::query_scalar(insert).fetch_one(&mut c).await.unwrap();
    let next_target: i64 = sqlx::query_scalar(insert).fetch_one(&mut target.conn().await).await.unwrap();
    assert_eq!((next_target, next_source), (121, 121));
}
