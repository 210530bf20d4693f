//! `ferry validate` catches what went wrong after a migration and names it.

use crate::support::*;

/// The validation line of `users` (the one table of these pipelines).
fn users(v: &Run) -> serde_json::Value {
    let j = v.json();
    let tables = j["tables"].as_array().unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(tables.len(), 1, "{v:?}");
    tables[0].clone()
}

/// `(kind, key)` of every listed difference.
fn listed(line: &serde_json::Value) -> Vec<(String, String)> {
    line["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["key"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_names_altered_deleted_and_extra_rows() {
    let n = 20_000;
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, n).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let line = users(&v);
    assert_eq!(line["matched"], n - invalid_rows(n), "{v:?}");
    assert_eq!(line["explained"], invalid_rows(n), "the rejected rows, by their dead letters: {v:?}");

    target.exec("UPDATE users SET email = 'tampered@example.com' WHERE id = 'user_1234'").await;
    target
        .exec("UPDATE users SET settings = '{\"theme\": \"dark\", \"notifications\": true}' WHERE id = 'user_2001'")
        .await;
    target.exec("DELETE FROM users WHERE id = 'user_77'").await;
    target.exec("INSERT INTO users VALUES ('user_999999', 'Ex', 'Tra', 'extra@example.com', now(), '{}')").await;

    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    assert_eq!(v.json()["ok"], false);
    let line = users(&v);
    assert_eq!([&line["missing"], &line["extra"], &line["different"]], [1, 1, 2], "{v:?}");
    let mut found = listed(&line);
    found.sort();
    assert_eq!(
        found,
        [
            ("different", "1234 → users"),
            ("different", "2001 → users"),
            ("extra", "user_999999 in users"),
            ("missing", "77 → users")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        "source keys for what the source says, the target's key for a row only the target has: {v:?}"
    );
    let diff = |key: &str| line["differences"].as_array().unwrap().iter().find(|d| d["key"] == key).cloned().unwrap();
    let email = diff("1234 → users");
    assert_eq!(email["columns"], serde_json::json!(["email"]));
    assert_eq!(email["values"][0]["expected"], "user.1234@example.com");
    assert_eq!(email["values"][0]["actual"], "tampered@example.com");
    assert_eq!(diff("2001 → users")["columns"], serde_json::json!(["settings"]));

    // The human report names them too, with the values.
    let text = p.ferry(&["validate"]);
    for needle in ["77", "user_999999", "1234", "tampered@example.com", "DIFFERS"] {
        assert!(text.stdout.contains(needle), "{needle} missing from:\n{}", text.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_of_a_changed_row_are_named_with_both_values() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 100).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    target
        .exec("UPDATE users SET first_name = 'Changed', created_at = '2001-01-01 00:00:00.000000' WHERE id = 'user_3'")
        .await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let line = users(&v);
    assert_eq!(line["different"], 1, "{v:?}");
    let d = &line["differences"][0];
    assert_eq!(d["key"], "3 → users");
    assert_eq!(d["columns"], serde_json::json!(["first_name", "created_at"]), "{v:?}");
    assert_eq!(d["values"][0]["actual"], "Changed");
    assert_eq!(d["values"][0]["expected"], "Prince");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_added_to_the_source_after_the_run_is_missing() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 100).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    // A row added to the source after the migration is not accounted for.
    source.exec("INSERT INTO users VALUES (1000, 'Late Comer', 'late@example.com', '2024-01-01 00:00:00', NULL)").await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let line = users(&v);
    assert_eq!([&line["source_rows"], &line["missing"]], [101, 1], "{v:?}");
    assert_eq!(listed(&line), vec![("missing".to_string(), "1000 → users".to_string())]);
}
