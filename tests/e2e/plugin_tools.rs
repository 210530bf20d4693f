//! Plugin tooling on a pipeline's real source rows: `ferry plugin diff`
//! (two versions, field by field) and `ferry plugin bench` (a plugin's own
//! speed inside ferry), in Rust and in the other languages.

use crate::support::*;
use crate::tables::tables_pipeline;

#[tokio::test]
async fn plugin_diff_reports_each_differing_field_on_real_source_rows() {
    let db = PgDb::new("pdiff").await;
    db.exec(crate::replay::SHOP).await;
    // SKUs in lower case, which v2 writes in upper case.
    db.exec("UPDATE orders SET items = lower(items::text)::json").await;
    let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugins().split_orders.display());
    let p = tables_pipeline(&db.url(), &db.url(), "", &extra);
    let (v1, v2) = (plugins().split_orders.to_str().unwrap(), plugins().split_orders_v2.to_str().unwrap());
    let r = p.ferry(&["plugin", "diff", v1, v2, "--sample", "100", "--json"]);
    assert_eq!(r.code, 3, "the versions differ: {r:?}");
    let table = r.json()["tables"][0].clone();
    assert_eq!(table["table"], "public.orders");
    assert_eq!(table["rows"], 100);
    // Orders 1..=100: 10, 20, 30 (not an array), 40, 50 (qty 0) are
    // rejected by both and 60 filtered by both; the other 94 differ in
    // their SKUs only.
    assert_eq!(table["differing"], 94, "{table}");
    let fields = table["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["order_items.sku"], "{table}");
    let example = &fields["order_items.sku"]["examples"][0];
    assert_eq!(
        (example["key"].as_str(), example["live"].as_str(), example["shadow"].as_str()),
        (Some("1"), Some("a1"), Some("A1"))
    );
    // The same version twice: nothing differs.
    let same = p.ferry(&["plugin", "diff", v1, v1, "--sample", "100"]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(same.stdout.contains("100 rows compared, 0 differ"), "{same:?}");
    // Another contract: refused, as a deployment would be.
    let wrong = p.ferry(&["plugin", "diff", v1, plugins().wrong_world.to_str().unwrap()]);
    assert_eq!(wrong.code, 8, "{wrong:?}");
}

#[tokio::test]
async fn plugin_bench_times_each_language_on_the_same_rows_and_counts_their_outcomes() {
    let db = PgDb::new("pbench").await;
    seed_pg_legacy(&db, 2000).await;
    let extra = format!("[[tables]]\nname = \"users\"\nplugin = \"{}\"\n", plugins().transform_user.display());
    let p = tables_pipeline(&db.url(), &db.url(), "", &extra);
    for plugin in [
        plugins().transform_user.clone(),
        python_plugin("transform_user", "wit", "user-transform-keyed"),
        js_plugin("transform_user", "wit", "user-transform-keyed"),
    ] {
        let r = p.ferry(&["plugin", "bench", plugin.to_str().unwrap(), "--rows", "2000", "--repeat", "1", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = r.json();
        assert_eq!(r["rows"], 2000, "{r}");
        assert_eq!(r["rejected"].as_i64(), Some(invalid_rows(2000)), "the seed's invalid rows: {r}");
        assert_eq!(r["contract"], "ferry:transform/transform-user@0.1.0", "{r}");
        assert!(r["rows_per_second"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// A plugin's own words reach the user with the row's key and the version
/// that said them: a `fatal` stops the run naming all three, and a dead
/// letter lists the version that refused it.
#[tokio::test]
async fn plugin_errors_name_the_row_the_version_and_the_plugins_message() {
    let db = PgDb::new("perr").await;
    seed_pg_legacy(&db, 200).await;
    let target = PgDb::new("perrt").await;
    let extra = format!("[[tables]]\nname = \"users\"\nplugin = \"{}\"\n", plugins().chaos.display());
    let p = tables_pipeline(&db.url(), &target.url(), "", &extra);
    let sha = ferry::plugin::sha256_hex(&std::fs::read(&plugins().chaos).unwrap());
    let dlq = p.ferry(&["migrate"]);
    assert_eq!(dlq.code, 4, "{dlq:?}");
    let list = p.ferry(&["dlq", "list"]);
    assert!(list.stdout.contains(&sha[..12]), "the refusing version is listed: {list:?}");
    db.exec("UPDATE users SET name = 'chaos:fatal' WHERE id = 77").await;
    let again = PgDb::new("perrt2").await;
    let p = tables_pipeline(&db.url(), &again.url(), "", &extra);
    let fatal = p.ferry(&["migrate"]);
    assert_eq!(fatal.code, 5, "{fatal:?}");
    let said = format!("{}{}", fatal.stdout, fatal.stderr);
    assert!(
        said.contains(&format!(
            "plugin {} fatal on row 77 of public.users: chaos plugin: deliberate fatal on row 77",
            &sha[..12]
        )),
        "{said}"
    );
}

/// `ferry plugin new` makes a project in each language and for each
/// contract that builds (from the WIT and SDK it carries) and passes its own
/// golden test in ferry's sandbox; a wrong expectation fails the test with
/// what the plugin gave.
#[test]
fn new_plugin_projects_build_and_pass_their_own_test_in_every_language() {
    let parent = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        for contract in ["transform-row", "transform-user"] {
            let name = format!("{lang}-{}", contract.trim_start_matches("transform-"));
            let made = ferry(&[
                "plugin",
                "new",
                &name,
                "--lang",
                lang,
                "--contract",
                contract,
                "--dir",
                parent.path().to_str().unwrap(),
            ]);
            assert_eq!(made.code, 0, "{made:?}");
            let dir = parent.path().join(&name);
            if lang == "js" {
                // The project's package-lock pins what plugins/js's does:
                // share its installed packages instead of downloading them again.
                std::os::unix::fs::symlink(root().join("plugins/js/node_modules"), dir.join("node_modules")).unwrap();
            }
            // From the parent, naming the project relatively, as people do.
            let mut test = ferry_command();
            test.args(["plugin", "test", &name, "--json"]).current_dir(parent.path());
            // Rust projects share compiled dependencies between runs.
            test.env("CARGO_TARGET_DIR", root().join("plugins/target/new-projects"));
            let run = run(&mut test);
            assert_eq!(run.code, 0, "{name}: {run:?}");
            let report = run.json();
            assert_eq!((report["passed"].as_u64(), report["failed"].as_u64()), (Some(3), Some(0)), "{name}: {report}");
            // Break an expectation: the test says what the plugin gave.
            let golden = dir.join("tests/golden.json");
            let text = std::fs::read_to_string(&golden).unwrap();
            std::fs::write(
                &golden,
                text.replacen("is NULL\"", "is missing\"", 1).replacen("is empty\"", "is blank\"", 1),
            )
            .unwrap();
            let wasm = dir.join(format!("{name}.wasm"));
            let broken = ferry(&["plugin", "test", dir.to_str().unwrap(), "--wasm", wasm.to_str().unwrap()]);
            assert_eq!(broken.code, 3, "{name}: {broken:?}");
            assert!(
                broken.stdout.contains("FAIL") && broken.stdout.contains("2 passed, 1 failed"),
                "{name}: {broken:?}"
            );
        }
    }
    // A name that is not one, and a project that exists already.
    let bad = ferry(&["plugin", "new", "Bad Name", "--lang", "rust", "--dir", parent.path().to_str().unwrap()]);
    assert_eq!(bad.code, 2, "{bad:?}");
    let again = ferry(&["plugin", "new", "rust-row", "--lang", "rust", "--dir", parent.path().to_str().unwrap()]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("already exists"), "{again:?}");
}
