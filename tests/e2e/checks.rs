//! `ferry check`: the pre-migration checklist.

use crate::support::*;

fn level<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no check named {name} in {report}"))["level"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn check_passes_on_a_ready_pipeline_and_warns_about_nulls() {
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, 100).await;
    source.exec("UPDATE users SET name = NULL WHERE id = 3").await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    let run = p.ferry(&["check", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let r = run.json();
    for name in [
        "source connectivity",
        "source table",
        "source rows",
        "source keys",
        "target connectivity",
        "target table",
        "target privileges",
    ] {
        assert_eq!(level(&r, name), "ok", "{name}: {r}");
    }
    assert_eq!(level(&r, "source NULLs"), "warn");
    assert_eq!(level(&r, "plugin"), "warn", "unpinned plugin");
    let text = p.ferry(&["check"]);
    assert!(text.stdout.contains("1 NULL name"), "{text:?}");
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
    assert_eq!(level(&r, "plugin"), "fail");
    assert_eq!(level(&r, "source table"), "fail", "no primary key");
    assert_eq!(level(&r, "source keys"), "fail", "duplicate ids");
    assert_eq!(level(&r, "target table"), "fail", "missing target table");
}
