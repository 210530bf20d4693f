//! `ferry check`: the pre-migration checklist.

use crate::support::*;

fn item<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no check named {name} in {report}"))
}

fn level<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    item(report, name)["level"].as_str().unwrap()
}

#[tokio::test]
async fn check_passes_on_a_ready_pipeline_and_runs_the_plugin_on_a_sample() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 100).await;
    source.exec("UPDATE users SET name = NULL WHERE id = 3").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["check", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let r = run.json();
    for name in ["source connectivity", "target connectivity", "table public.users", "previous run"] {
        assert_eq!(level(&r, name), "ok", "{name}: {r}");
    }
    assert_eq!(level(&r, "plugin public.users"), "warn", "unpinned plugin");
    // The plugin itself says which rows it would refuse: 2 invalid JSON
    // documents (ids 50, 100) and the NULL name.
    let sample = item(&r, "sample public.users");
    assert_eq!(sample["level"], "warn", "{r}");
    let detail = sample["detail"].as_str().unwrap();
    assert!(detail.starts_with("3 of the first 100 rows would be dead letters"), "{detail}");
    assert!(detail.contains("2 × metadata is not valid JSON") && detail.contains("name"), "{detail}");
    let text = p.ferry(&["check"]);
    assert!(text.stdout.contains("would be dead letters"), "{text:?}");
}

#[tokio::test]
async fn check_fails_with_reasons_and_a_nonzero_exit() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    source.exec("CREATE TABLE users (id bigint, name text, email text, created_at timestamp, metadata text)").await;
    source.exec("INSERT INTO users VALUES (1, 'a', 'a@x', now(), NULL), (1, 'b', 'b@x', now(), NULL)").await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().wrong_world, "");
    let run = p.ferry(&["check", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let r = run.json();
    assert_eq!(r["ok"], false);
    let tables = item(&r, "tables");
    assert_eq!(tables["level"], "fail");
    let detail = tables["detail"].as_str().unwrap();
    assert!(detail.contains("has no primary key"), "{detail}");
}

#[tokio::test]
async fn a_plugin_of_the_wrong_world_fails_the_check() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 10).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().wrong_world, "");
    let run = p.ferry(&["check", "--json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let detail = item(&run.json(), "tables")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("transform-row") || detail.contains("world"), "{detail}");
}

/// `ferry plan` ticks exactly the items whose evidence exists, and moves
/// an item to done when its evidence appears: the backup file, the
/// completed run whose counts add up, a recorded clean `ferry validate`,
/// the dead letters replayed away.
#[tokio::test]
async fn plan_ticks_exactly_the_items_whose_evidence_exists() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 200).await;
    target.exec(PG_NEW_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("source.dump");
    std::fs::write(&dump, "a pg_dump of the source").unwrap();
    let extra = format!(
        "\n[plan]\nsource_backup = \"{}\"\ntarget_backup = \"{}\"\n",
        dump.display(),
        dir.path().join("missing.dump").display()
    );
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, &extra);
    let done = |p: &Pipeline| -> Vec<String> {
        let run = p.ferry(&["plan", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let r = run.json();
        let steps = r["steps"].as_array().unwrap().clone();
        assert!(steps.iter().any(|s| s["state"] == "people"), "some items are for people: {r}");
        steps.iter().filter(|s| s["state"] == "done").map(|s| s["item"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(done(&p), ["Pre-flight check passes", "Back up the source", "A way back"]);

    // The dry run says what migrate would do, and writes nothing.
    let dry = p.ferry(&["plan", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let d = dry.json();
    let t = &d["tables"][0];
    assert_eq!(
        (t["table"].as_str(), t["rows"].as_u64(), t["sample_rows"].as_u64()),
        (Some("public.users"), Some(200), Some(200)),
        "{d}"
    );
    assert_eq!(t["action"], "write into existing (on_conflict = error)", "{d}");
    assert_eq!(t["journal"], "empty_at_start", "{d}");
    assert!(t["plugin"].as_str().unwrap().ends_with("transform_user.wasm"), "{d}");
    assert!(d["disk_bytes"].as_u64().unwrap() > 8192 && d["estimated_seconds"].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(target.scalar_i64("SELECT count(*) FROM users").await, 0);
    assert_eq!(target.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'").await, 0);

    let migrate = p.ferry(&["migrate", "--json"]);
    assert_eq!(migrate.code, 4, "dead letters: {migrate:?}");
    let run_id = migrate.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        done(&p),
        [
            "Pre-flight check passes",
            "Back up the source",
            "A way back",
            "Run the migration",
            "Counts add up",
            "Monitor errors"
        ]
    );
    let plan = p.ferry(&["plan"]);
    assert!(
        plan.stdout.contains(&format!("`ferry rollback {run_id}` takes it back (journal of 1 tables)")),
        "{plan:?}"
    );
    // Into a table that now holds rows, a run journals before-images.
    let dry = p.ferry(&["plan", "--dry-run"]);
    assert!(dry.stdout.contains("| public.users | users | write into existing (on_conflict = error) |"), "{dry:?}");
    assert!(dry.stdout.contains("before-images |"), "{dry:?}");
    let plan = p.ferry(&["plan"]);
    assert!(plan.stdout.contains("- [ ] **Dead letters reviewed** — 4 dead letters"), "{plan:?}");
    assert!(plan.stdout.contains("- [ ] **Back up the target** —") && plan.stdout.contains("missing.dump"), "{plan:?}");

    // A validation is recorded, clean (the differences are explained).
    assert_eq!(p.ferry(&["validate"]).code, 0);
    assert!(done(&p).contains(&"Every row validated (samples and checksums)".to_string()));
    // The dead letters' cause is fixed at the source and they are replayed.
    source.exec("UPDATE users SET metadata = '{}' WHERE id % 50 = 0").await;
    let replay = p.ferry(&["dlq", "replay"]);
    assert_eq!(replay.code, 0, "{replay:?}");
    assert!(done(&p).contains(&"Dead letters reviewed".to_string()));
    // A validation that finds a difference is recorded too: the item opens.
    target.exec("UPDATE users SET first_name = 'Tampered' WHERE id = 'user_7'").await;
    assert_eq!(p.ferry(&["validate"]).code, 3);
    assert!(!done(&p).contains(&"Every row validated (samples and checksums)".to_string()));
}
