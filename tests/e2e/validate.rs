//! `ferry validate` catches what went wrong after a migration and names it.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn validate_names_altered_deleted_and_extra_rows() {
    // 20k rows in segments of 1000: large enough that segments are cut on a
    // TABLESAMPLE of the target (the path big tables take).
    let n = 20_000;
    let (source, target) = (PgDb::new("src").await, PgDb::new("dst").await);
    seed_pg_legacy(&source, n).await;
    target.exec(PG_NEW_DDL).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "[validate]\nsegment_rows = 1000\n");
    assert_eq!(p.ferry(&["migrate"]).code, 4);
    assert_eq!(p.ferry(&["validate"]).code, 0);

    target.exec("UPDATE users SET email = 'tampered@example.com' WHERE id = 'user_1234'").await;
    target
        .exec("UPDATE users SET settings = '{\"theme\": \"dark\", \"notifications\": true}' WHERE id = 'user_2001'")
        .await;
    target.exec("DELETE FROM users WHERE id = 'user_77'").await;
    target.exec("INSERT INTO users VALUES ('user_999999', 'Ex', 'Tra', 'extra@example.com', now(), '{}')").await;

    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let j = v.json();
    assert_eq!(j["ok"], false);
    let k = &j["checksum"];
    assert_eq!(k["missing"], serde_json::json!(["user_77"]), "{v:?}");
    assert_eq!(k["extra"], serde_json::json!(["user_999999"]), "{v:?}");
    let different: Vec<(String, String)> = k["different"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["key"].as_str().unwrap().to_string(), d["field"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        different,
        vec![("user_1234".to_string(), "email".to_string()), ("user_2001".to_string(), "settings".to_string())]
    );
    let email = k["different"].as_array().unwrap().iter().find(|d| d["field"] == "email").unwrap();
    assert_eq!(email["expected"], "user.1234@example.com");
    assert_eq!(email["actual"], "tampered@example.com");
    assert!(k["mismatched_segments"].as_u64().unwrap() >= 1);
    assert!(k["segments"].as_u64().unwrap() >= 3, "cut into segments (a page sample: the count varies): {k}");

    // The human report names them too.
    let text = p.ferry(&["validate"]);
    for needle in ["user_77", "user_999999", "user_1234", "tampered@example.com", "MISMATCH"] {
        assert!(text.stdout.contains(needle), "{needle} missing from:\n{}", text.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_deep_diff_reports_fields() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 100).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate", "--create-table"]).code, 4);
    target
        .exec("UPDATE users SET first_name = 'Changed', created_at = '2001-01-01 00:00:00.000000' WHERE id = 'user_3'")
        .await;
    // A sample as large as the table must include the altered row.
    let v = p.ferry(&["validate", "--json", "--sample", "1000", "--no-checksum"]);
    assert_eq!(v.code, 3, "{v:?}");
    let diffs = v.json()["sample"]["differences"].clone();
    let fields: Vec<&str> = diffs.as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["first_name", "created_at"], "{diffs}");
    assert!(v.json()["checksum"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_catch_a_row_lost_from_the_ledger() {
    let (source, target) = (SqliteDb::new(), SqliteDb::new());
    seed_sqlite_legacy(&source, 100).await;
    let p = Pipeline::new(&source.url(), &target.url(), &plugins().transform_user, "");
    assert_eq!(p.ferry(&["migrate", "--create-table"]).code, 4);
    // A row added to the source after the migration is not accounted for.
    source.exec("INSERT INTO users VALUES (1000, 'Late Comer', 'late@example.com', '2024-01-01 00:00:00', NULL)").await;
    let v = p.ferry(&["validate", "--json"]);
    assert_eq!(v.code, 3, "{v:?}");
    let j = v.json();
    assert_eq!(j["counts"]["ok"], false);
    assert_eq!(j["checksum"]["missing"], serde_json::json!(["user_1000"]));
}
