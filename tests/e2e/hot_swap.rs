//! Hot swap: a running `ferry sync` takes a new plugin version
//! (`ferry plugin deploy`) between two target transactions, without
//! stopping; versions that do not load or do not match the contract are
//! refused and the running one stays.
//!
//! Judged by the rows themselves: `split-orders-v2` writes SKUs in upper
//! case, so every order in the target says which version made it; the
//! source tells, independently of ferry, where each order's transaction
//! sits in the WAL (`pg_current_wal_lsn()` read right after its commit,
//! which no later transaction's commit precedes), so the recorded switch
//! position can be checked against every order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::support::*;
use crate::tables::tables_pipeline;

const ORDERS_DDL: &str = r#"
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, placed_at timestamp NOT NULL,
    status text NOT NULL, items json NOT NULL);
INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, 1 + g % 10, '2024-03-01 10:00:00', 'paid',
    json_build_array(json_build_object('sku', 'a' || g, 'qty', 1, 'price', '1.50')) FROM generate_series(1, 50) g;
"#;

/// The commit-LSN part of a stream position as ferry prints it
/// (`commit/lsn`, each `HI/LO`).
fn commit_lsn(position: &str) -> u64 {
    let parts: Vec<&str> = position.split('/').collect();
    assert!(parts.len() >= 4, "a position is commit/lsn: {position}");
    (u64::from_str_radix(parts[0], 16).unwrap() << 32) | u64::from_str_radix(parts[1], 16).unwrap()
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Inserts one order per transaction (SKUs in lower case) until `stop`,
/// recording for each the WAL position right after its commit.
async fn write_orders(source: String, first: i64, stop: Arc<AtomicBool>) -> Vec<(i64, u64)> {
    let mut c = PgConnection::connect(&source).await.unwrap();
    let mut written = Vec::new();
    let mut id = first;
    while !stop.load(Ordering::Relaxed) {
        sqlx::query(
            "INSERT INTO orders VALUES ($1, 1 + $1 % 10, '2024-06-01 00:00:00', 'paid', \
             json_build_array(json_build_object('sku', 'sku-' || $1, 'qty', 1, 'price', '2.00'), \
                              json_build_object('sku', 'x-' || $1, 'qty', 2, 'price', '3.00')))",
        )
        .bind(id)
        .execute(&mut c)
        .await
        .unwrap();
        let after: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&mut c).await.unwrap();
        written.push((id, lsn(&after)));
        id += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    written
}

async fn deployments(p: &Pipeline) -> Vec<serde_json::Value> {
    let status = p.ferry(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    status.json()["deployments"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_sync_switches_plugin_versions_between_transactions_and_refuses_bad_ones() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = PgConnection::connect(&source).await.unwrap();
    sqlx::raw_sql(ORDERS_DDL).execute(&mut c).await.unwrap();
    let target = PgDb::new("hswap").await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.customers\"]", &extra);

    let mut daemon = p.spawn(&["sync", "--json"]);
    eventually("the initial load", || async {
        target.scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'order_items'").await == 1
            && target.scalar_i64("SELECT count(*) FROM order_items").await == 50
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_orders(source.clone(), 1000, Arc::clone(&stop)));
    eventually("streamed orders", || async { target.scalar_i64("SELECT count(*) FROM orders").await >= 80 }).await;

    // A component of another contract, and a file that is no component:
    // refused with the reason, and the stream goes on with v1.
    let wrong = p.ferry(&["plugin", "deploy", plugins().wrong_world.to_str().unwrap(), "--json"]);
    assert_eq!(wrong.code, 9, "{wrong:?}");
    let wrong = wrong.json();
    assert_eq!(wrong["state"], "refused", "{wrong}");
    assert!(wrong["reason"].as_str().unwrap().contains("exports neither"), "{wrong}");
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "not a component").unwrap();
    let junk_run = p.ferry(&["plugin", "deploy", junk.path().to_str().unwrap(), "--json"]);
    assert_eq!(junk_run.code, 9, "{junk_run:?}");
    assert!(junk_run.json()["reason"].as_str().unwrap().contains("not a WebAssembly file"), "{junk_run:?}");
    let before = target.scalar_i64("SELECT count(*) FROM orders").await;
    eventually("the stream goes on after refusals", || async {
        target.scalar_i64("SELECT count(*) FROM orders").await > before + 10
    })
    .await;

    // The next version, while orders keep coming.
    let v2 = p.ferry(&["plugin", "deploy", plugins().split_orders_v2.to_str().unwrap(), "--json"]);
    assert_eq!(v2.code, 0, "{v2:?}");
    let v2 = v2.json();
    assert_eq!(v2["state"], "live", "{v2}");
    let v1_sha = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders).unwrap());
    let v2_sha = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders_v2).unwrap());
    assert_eq!(v2["sha256"], v2_sha.as_str());
    assert_eq!(v2["previous_sha256"], v1_sha.as_str());
    let switch = commit_lsn(v2["position"].as_str().expect("the switch position is recorded"));
    let upper = target.scalar_i64("SELECT count(*) FROM order_items WHERE sku <> lower(sku)").await;
    eventually("orders made by v2", || async {
        target.scalar_i64("SELECT count(*) FROM order_items WHERE sku <> lower(sku)").await > upper + 60
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let last = written.last().unwrap().0;
    eventually("the last order", || async {
        target.scalar_i64(&format!("SELECT count(*) FROM orders WHERE id = {last}")).await == 1
    })
    .await;
    // SIGTERM: the daemon finishes its transaction and exits 0.
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(daemon.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["stream"]["plugin_switches"], serde_json::json!([v2_sha]), "{report}");

    // Every streamed order was made by exactly the version the recorded
    // switch position says: v1 up to it, v2 after it. The source's own WAL
    // positions bound each order's commit: commit(k) < after(k) <= commit(k+1).
    let mut c = target.conn().await;
    let made_by: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FILTER (WHERE sku = lower(sku)), count(*) FILTER (WHERE sku <> lower(sku)) \
         FROM order_items WHERE order_id >= 1000 GROUP BY order_id ORDER BY order_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(made_by.len(), written.len(), "every order arrived, once");
    let (mut v1_orders, mut v2_orders) = (0, 0);
    for (i, &(id, after)) in written.iter().enumerate() {
        let (order, lower, upper) = made_by[i];
        assert_eq!(order, id);
        assert_eq!(lower + upper, 2, "order {id}: its two items");
        assert!(lower == 0 || upper == 0, "order {id} was made by one version: {lower} lower, {upper} upper");
        let before_switch = after <= switch;
        let after_switch = i > 0 && written[i - 1].1 > switch;
        if before_switch {
            assert_eq!(upper, 0, "order {id} committed before the switch: made by v1");
        }
        if after_switch {
            assert_eq!(lower, 0, "order {id} committed after the switch: made by v2");
        }
        if lower == 2 { v1_orders += 1 } else { v2_orders += 1 }
    }
    assert!(v1_orders >= 20 && v2_orders >= 30, "the switch happened mid-stream: {v1_orders} by v1, {v2_orders} by v2");
    // The initial load's orders are v1's.
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id < 1000 AND sku <> lower(sku)").await,
        0
    );
    // Validation re-runs the load's rows through the version its lineage
    // names and compares a row the stream wrote after the switch with the
    // version that went live there: nothing to report.
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"].as_array().unwrap().iter().map(|t| t["different"].as_u64().unwrap()).sum::<u64>(), 0);

    // What `ferry status` says: two refusals with their reasons, v2 live.
    let seen = deployments(&p).await;
    let states: Vec<&str> = seen.iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["refused", "refused", "live"], "{seen:?}");
    let human = p.ferry(&["status"]);
    assert!(human.stdout.contains(&format!("{v2_sha} for every plugin table: live from stream position")), "{human:?}");

    // A restarted stream runs the deployed version, not the pipeline file's.
    sqlx::query("INSERT INTO orders VALUES (99999, 1, '2024-07-01 00:00:00', 'paid', '[{\"sku\": \"late\", \"qty\": 1, \"price\": \"1\"}]')")
        .execute(&mut PgConnection::connect(&source).await.unwrap())
        .await
        .unwrap();
    let again = p.ferry(&["sync", "--idle-exit", "2", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    let sku: String =
        sqlx::query_scalar("SELECT sku FROM order_items WHERE order_id = 99999").fetch_one(&mut c).await.unwrap();
    assert_eq!(sku, "LATE");

    // Shadow: v1 runs beside the live v2 on the same rows and writes
    // nothing; every row it sees differs in order_items.sku, and says how.
    let mut daemon = p.spawn(&["sync", "--json"]);
    let shadow = p.ferry(&["plugin", "deploy", plugins().split_orders.to_str().unwrap(), "--shadow", "--json"]);
    assert_eq!(shadow.code, 0, "{shadow:?}");
    assert_eq!(shadow.json()["state"], "shadow", "{shadow:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_orders(source.clone(), 200_000, Arc::clone(&stop)));
    eventually("orders seen by the shadow", || async {
        let d = deployments(&p).await;
        d.last().and_then(|d| d["shadow_report"]["rows"].as_u64()).unwrap_or(0) >= 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let shadowed = writer.await.unwrap();
    let last = shadowed.last().unwrap().0;
    eventually("the last shadowed order", || async {
        target.scalar_i64(&format!("SELECT count(*) FROM orders WHERE id = {last}")).await == 1
    })
    .await;
    // The live version wrote them all: upper case.
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id >= 200000 AND sku = lower(sku)").await,
        0,
        "the shadow wrote nothing"
    );
    let report = &deployments(&p).await.last().unwrap()["shadow_report"].clone();
    assert_eq!(report["rows"], report["differing"], "v1 and v2 differ on every order: {report}");
    let sku = &report["fields"]["order_items.sku"];
    assert_eq!(sku["count"], report["rows"], "{report}");
    assert_eq!(report["fields"].as_object().unwrap().len(), 1, "only the SKU differs: {report}");
    let example = &sku["examples"][0];
    assert_eq!(example["live"].as_str().unwrap(), example["shadow"].as_str().unwrap().to_uppercase(), "{report}");
    assert!(example["shadow"].as_str().unwrap().starts_with("sku-"), "{report}");

    // Promote: v1 goes live, the shadow ends.
    let promoted = p.ferry(&["plugin", "promote", "--json"]);
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert_eq!(promoted.json()["state"], "live", "{promoted:?}");
    assert_eq!(promoted.json()["sha256"], v1_sha.as_str());
    sqlx::query("INSERT INTO orders VALUES (300000, 1, '2024-07-01 00:00:00', 'paid', '[{\"sku\": \"after\", \"qty\": 1, \"price\": \"1\"}]')")
        .execute(&mut PgConnection::connect(&source).await.unwrap())
        .await
        .unwrap();
    eventually("an order after the promotion", || async {
        target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 300000 AND sku = 'after'").await == 1
    })
    .await;
    let states: Vec<String> = deployments(&p).await.iter().map(|d| d["state"].as_str().unwrap().to_string()).collect();
    assert_eq!(states, ["refused", "refused", "live", "promoted", "live"]);
    // v2 live once more, then the daemon stops.
    let again = p.ferry(&["plugin", "deploy", plugins().split_orders_v2.to_str().unwrap(), "--json"]);
    assert_eq!(again.json()["state"], "live", "{again:?}");
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert_eq!(daemon.wait().unwrap().code(), Some(0));

    // The pipeline file now names a version this stream never ran (the
    // Python split-orders, SKUs as written): a newer decision than the
    // deployments, so it is the one a restarted stream runs.
    let python = python_plugin("split_orders", "wit/row", "row-transform");
    let newer = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", python.display());
    let p2 = tables_pipeline(&source, &target.url(), "include = [\"public.customers\"]", &newer);
    sqlx::query("INSERT INTO orders VALUES (300001, 1, '2024-07-01 00:00:00', 'paid', '[{\"sku\": \"file\", \"qty\": 1, \"price\": \"1\"}]')")
        .execute(&mut PgConnection::connect(&source).await.unwrap())
        .await
        .unwrap();
    let run = p2.ferry(&["sync", "--idle-exit", "2", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("never deployed into this stream"), "the file's version wins, said so: {run:?}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 300001 AND sku = 'file'").await, 1);
    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
}

#[tokio::test]
async fn deploy_needs_a_plugin_table_and_says_which_when_there_are_several() {
    let db = PgDb::new("hswapcfg").await;
    let split = plugins().split_orders.display().to_string();
    let none = tables_pipeline(&db.url(), &db.url(), "include = [\"public.*\"]", "");
    let r = none.ferry(&["plugin", "deploy", &split]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no [[tables]] entry of the pipeline has a plugin"), "{r:?}");
    let two = format!(
        "[[tables]]\nname = \"orders\"\nplugin = \"{split}\"\n[[tables]]\nname = \"returns\"\nplugin = \"{split}\"\n"
    );
    let p = tables_pipeline(&db.url(), &db.url(), "", &two);
    let r = p.ferry(&["plugin", "deploy", &split]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("2 tables with a plugin (orders, returns)"), "{r:?}");
    let r = p.ferry(&["plugin", "deploy", &split, "--table", "customers"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--table customers: the pipeline's tables with a plugin are orders, returns"), "{r:?}");
    // No stream is running: the request waits for the next one.
    let r = p.ferry(&["plugin", "deploy", &split, "--table", "orders", "--wait", "0", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["state"], "pending");
    assert_eq!(r.json()["table"], "orders");
}

/// A version deployed while `ferry migrate` runs takes over between two
/// pages; the run's lineage records which version committed which key
/// range, and `ferry validate` re-transforms each range with its own
/// version. Judged by the rows: v2 writes SKUs in upper case, so every
/// order says which version made it, checked against the recorded switch
/// key by a query of the test's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_migration_takes_a_deployed_version_between_pages_and_validates_each_range_by_its_version() {
    let (source, target) = (PgDb::new("mswap_src").await, PgDb::new("mswap_dst").await);
    source
        .exec(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, placed_at timestamp NOT NULL, \
             status text NOT NULL, items json NOT NULL); \
             INSERT INTO orders SELECT g, 1 + g % 10, '2024-03-01 10:00:00', 'paid', \
             json_build_array(json_build_object('sku', 'sku-' || g, 'qty', 1, 'price', '1.50'), \
                              json_build_object('sku', 'x-' || g, 'qty', 2, 'price', '2.25')) \
             FROM generate_series(1, 20000) g",
        )
        .await;
    let v1 = plugins().split_orders.display().to_string();
    let extra = format!("[migrate]\nbatch_size = 100\n\n[[tables]]\nname = \"public.orders\"\nplugin = \"{v1}\"\n");
    let p = tables_pipeline(&source.url(), &target.url(), "", &extra);
    // Requested before the run starts: the batch stage finds it at its
    // first page, compiles it while v1 transforms, then switches.
    let v2_path = plugins().split_orders_v2.to_str().unwrap();
    let pending = p.ferry(&["plugin", "deploy", v2_path, "--wait", "0", "--json"]);
    assert_eq!(pending.json()["state"], "pending", "{pending:?}");

    let run = p.ferry(&["migrate", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["tables"][0]["loaded"], 20000, "{run:?}");
    let deployment = deployments(&p).await.into_iter().last().unwrap();
    assert_eq!(deployment["state"], "live", "{deployment}");
    let position = deployment["position"].as_str().unwrap().to_string();
    let switch: i64 = position.strip_prefix("public.orders after key ").unwrap().parse().unwrap();
    assert!(switch > 0 && switch < 20000, "switched mid-run: {position}");

    // Each order by the version its key range says, none mixed.
    let v1_rows = target.scalar_i64(&format!("SELECT count(*) FROM order_items WHERE order_id <= {switch}")).await;
    let wrong = target
        .scalar_i64(&format!(
            "SELECT count(*) FROM order_items WHERE (order_id <= {switch} AND sku <> lower(sku)) \
             OR (order_id > {switch} AND sku <> upper(sku))"
        ))
        .await;
    assert_eq!((v1_rows, wrong), (2 * switch, 0), "orders up to {switch} by v1, after it by v2");
    // The lineage, read by our own query: v1's batches, then v2's.
    let v1_sha = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders).unwrap());
    let v2_sha = ferry::plugin::sha256_hex(&std::fs::read(&plugins().split_orders_v2).unwrap());
    let mut c = target.conn().await;
    let lineage: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT plugin_sha256, after_key, last_key, rows FROM ferry.lineage WHERE table_name = 'public.orders' ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let shas: Vec<&str> = lineage.iter().map(|l| l.0.as_str()).collect();
    let first_v2 = shas.iter().position(|s| *s == v2_sha).expect("v2 committed batches");
    assert!(
        first_v2 > 0 && shas[..first_v2].iter().all(|s| *s == v1_sha) && shas[first_v2..].iter().all(|s| *s == v2_sha)
    );
    assert_eq!(
        lineage[first_v2].1.as_deref(),
        Some(format!("[\"{switch}\"]").as_str()),
        "v2 starts after the switch key"
    );
    assert_eq!(lineage.iter().map(|l| l.3).sum::<i64>(), 20000, "every source row in exactly one batch");

    // `ferry status` shows the two versions and their key ranges.
    let status = p.ferry(&["status", "--json"]);
    let versions = status.json()["versions"].clone();
    assert_eq!(versions.as_array().map(Vec::len), Some(2), "{versions}");
    assert_eq!(
        (versions[0]["plugin_sha256"].as_str(), versions[0]["after_key"].as_str(), versions[0]["last_key"].as_str()),
        (Some(v1_sha.as_str()), None, Some(switch.to_string().as_str()))
    );
    assert_eq!(
        (versions[1]["plugin_sha256"].as_str(), versions[1]["after_key"].as_str(), versions[1]["last_key"].as_str()),
        (Some(v2_sha.as_str()), Some(switch.to_string().as_str()), Some("20000"))
    );
    let human = p.ferry(&["status"]);
    assert!(human.stdout.contains(&format!("keys after {switch} up to 20000")), "{human:?}");

    // Validation re-runs v1 on v1's range and v2 on v2's: clean. With one
    // version for all it would find v2's rows different.
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["tables"][0]["matched"], 20000 + 40000, "{v:?}");
    // A version whose file is gone cannot be re-run: validate says which.
    let moved = tempfile::tempdir().unwrap();
    let hidden = moved.path().join("v2.wasm");
    std::fs::copy(&plugins().split_orders_v2, &hidden).unwrap();
    target.exec(&format!("UPDATE ferry.lineage SET plugin_path = '{}'", hidden.display())).await;
    target.exec(&format!("UPDATE ferry.deployments SET path = '{}'", hidden.display())).await;
    drop(moved);
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 8, "{v:?}");
    assert!(v.stderr.contains(&v2_sha) && v.stderr.contains("no file ferry knows holds it"), "{v:?}");
}

/// A version that went live in a stream transforms a change whose TOASTed
/// document is not in it (unchanged TOAST: the row is read back from the
/// source): the big order's 250 out-of-line items come out of v2 (upper
/// case), equal to a fresh v2 migration of that order, and validate
/// compares each row with the version that wrote it.
#[tokio::test(flavor = "multi_thread")]
async fn a_switched_stream_reads_back_unchanged_toasted_documents_through_the_new_version() {
    let cluster = Cluster::start();
    let source = format!("{}/postgres", cluster.url());
    let mut c = PgConnection::connect(&source).await.unwrap();
    sqlx::raw_sql(ORDERS_DDL).execute(&mut c).await.unwrap();
    insert_toasted_order(&mut c, 600).await;
    let target = PgDb::new("hswaptoast").await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let p = tables_pipeline(&source, &target.url(), "include = [\"public.customers\"]", &extra);
    let daemon = p.spawn(&["sync", "--json"]);
    eventually("the initial load", || async {
        target.scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'order_items'").await == 1
            && target.scalar_i64("SELECT count(*) FROM order_items").await == 50 + 250
    })
    .await;
    let live = p.ferry(&["plugin", "deploy", plugins().split_orders_v2.to_str().unwrap(), "--json"]);
    assert_eq!(live.json()["state"], "live", "{live:?}");
    sqlx::raw_sql("UPDATE orders SET status = 'shipped' WHERE id IN (1, 600)").execute(&mut c).await.unwrap();
    eventually("the shipped orders", || async {
        target.scalar_i64("SELECT count(*) FROM orders WHERE status = 'shipped'").await == 2
    })
    .await;
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let report = json_report(daemon);
    assert!(report["toast_rereads"].as_u64() >= Some(1), "order 600 was read back: {report}");
    assert_eq!(
        target.scalar_i64("SELECT count(*) FROM order_items WHERE order_id = 600 AND sku = upper(sku)").await,
        250,
        "all of order 600's items came out of v2"
    );
    // The oracle: a fresh v2 migration of the final source, for these orders.
    let oracle = PgDb::new("hswaptoasto").await;
    let v2 = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders_v2.display());
    let fresh = tables_pipeline(&source, &oracle.url(), "include = [\"public.customers\"]", &v2);
    assert_eq!(fresh.ferry(&["migrate"]).code, 0);
    let sql = "SELECT string_agg(i::text, ',' ORDER BY order_id, line) FROM order_items i WHERE order_id IN (1, 600)";
    let (got, want): (String, String) = (
        sqlx::query_scalar(sql).fetch_one(&mut target.conn().await).await.unwrap(),
        sqlx::query_scalar(sql).fetch_one(&mut oracle.conn().await).await.unwrap(),
    );
    assert_eq!(got, want);
    assert_eq!(
        target
            .scalar_i64(
                "SELECT count(*) FROM order_items WHERE order_id <> 1 AND order_id <> 600 AND sku <> lower(sku)"
            )
            .await,
        0
    );
    let v = p.ferry(&["validate"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(p.ferry(&["sync", "--teardown"]).code, 0);
}
