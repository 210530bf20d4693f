//! The seed's transform rules, one by one, through the real component in
//! ferry's sandbox.

use ferry::model::{LegacyUser, NewUser, Outcome};
use ferry::plugin::{LoadOptions, Plugin, Transformer};

use crate::support::plugins;

fn transformer() -> Transformer {
    let options = LoadOptions::default();
    Plugin::load(&plugins().transform_user, &options).expect("load plugin").instantiate().expect("instantiate")
}

fn row(name: Option<&str>, email: Option<&str>, metadata: Option<&str>) -> LegacyUser {
    LegacyUser {
        id: 42,
        name: name.map(str::to_string),
        email: email.map(str::to_string),
        created_at: Some(1_700_000_000_123_456),
        metadata: metadata.map(str::to_string),
    }
}

fn ok(t: &mut Transformer, r: LegacyUser) -> NewUser {
    match t.transform_one(&r).expect("plugin call") {
        Outcome::Row(u) => u,
        other => panic!("expected a row for {r:?}, got {other:?}"),
    }
}

fn rejected(t: &mut Transformer, r: LegacyUser) -> String {
    match t.transform_one(&r).expect("plugin call") {
        Outcome::Rejected(reason) => reason,
        other => panic!("expected a rejection for {r:?}, got {other:?}"),
    }
}

fn settings(u: &NewUser) -> serde_json::Value {
    serde_json::from_str(&u.settings).expect("settings is JSON")
}

#[test]
fn id_is_prefixed_and_created_at_keeps_microseconds() {
    let mut t = transformer();
    let u = ok(&mut t, row(Some("A B"), Some("a@b"), None));
    assert_eq!(u.id, "user_42");
    assert_eq!(u.created_at, 1_700_000_000_123_456);
}

#[test]
fn name_splits_at_the_first_space() {
    let mut t = transformer();
    let cases = [
        ("Mary Ann de la Cruz", "Mary", "Ann de la Cruz"),
        ("Prince", "Prince", ""),
        (" Leading", "", "Leading"),
        ("Jean-Luc  Picard", "Jean-Luc", " Picard"),
        ("Trailing ", "Trailing", ""),
        ("李 小龍", "李", "小龍"),
        ("", "", ""),
    ];
    for (name, first, last) in cases {
        let u = ok(&mut t, row(Some(name), Some("a@b"), None));
        assert_eq!((u.first_name.as_str(), u.last_name.as_str()), (first, last), "name {name:?}");
    }
}

#[test]
fn email_is_lowercased_with_full_unicode_rules() {
    let mut t = transformer();
    let cases = [
        ("Mary.Ann@Example.COM", "mary.ann@example.com"),
        ("ZOË@ÅNGSTRÖM.SE", "zoë@ångström.se"),
        // Final sigma, as JavaScript's toLowerCase does it.
        ("ΟΔΥΣΣΕΥΣ@EXAMPLE.COM", "οδυσσευς@example.com"),
        // İ lowercases to i + combining dot (two code points).
        ("İPEK@EXAMPLE.COM", "i\u{307}pek@example.com"),
    ];
    for (email, want) in cases {
        assert_eq!(ok(&mut t, row(Some("a"), Some(email), None)).email, want, "email {email:?}");
    }
}

#[test]
fn null_or_empty_metadata_gives_defaults() {
    let mut t = transformer();
    for metadata in [None, Some("")] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), metadata));
        assert_eq!(settings(&u), serde_json::json!({"theme": "light", "notifications": true}), "{metadata:?}");
    }
}

#[test]
fn invalid_json_is_rejected_with_the_parser_message() {
    let mut t = transformer();
    let reason = rejected(&mut t, row(Some("a"), Some("a@b"), Some(r#"{"theme": "dark""#)));
    assert!(reason.contains("not valid JSON") && reason.contains("line 1 column"), "{reason}");
}

#[test]
fn json_null_is_rejected() {
    let mut t = transformer();
    let reason = rejected(&mut t, row(Some("a"), Some("a@b"), Some("null")));
    assert!(reason.contains("null"), "{reason}");
}

#[test]
fn non_object_json_gives_defaults() {
    let mut t = transformer();
    for metadata in ["[]", "42", "\"dark\"", "true", "[1,2]"] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), Some(metadata)));
        assert_eq!(settings(&u), serde_json::json!({"theme": "light", "notifications": true}), "{metadata}");
    }
}

#[test]
fn theme_falls_back_when_missing_or_js_falsy() {
    let mut t = transformer();
    for theme in ["null", "false", "0", "0.0", "\"\""] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), Some(&format!(r#"{{"theme": {theme}}}"#))));
        assert_eq!(settings(&u)["theme"], "light", "theme {theme}");
    }
    for (theme, want) in [
        ("\"dark\"", serde_json::json!("dark")),
        ("true", serde_json::json!(true)),
        ("1", serde_json::json!(1)),
        ("[]", serde_json::json!([])),
        ("{}", serde_json::json!({})),
    ] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), Some(&format!(r#"{{"theme": {theme}}}"#))));
        assert_eq!(settings(&u)["theme"], want, "theme {theme}");
    }
}

#[test]
fn notifications_default_only_when_missing_or_null() {
    let mut t = transformer();
    for metadata in [r#"{}"#, r#"{"notifications": null}"#] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), Some(metadata)));
        assert_eq!(settings(&u)["notifications"], true, "{metadata}");
    }
    for value in ["false", "0", "\"yes\"", "{\"email\": true}", "\"\""] {
        let u = ok(&mut t, row(Some("a"), Some("a@b"), Some(&format!(r#"{{"notifications": {value}}}"#))));
        let want: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(settings(&u)["notifications"], want, "notifications {value}");
    }
}

#[test]
fn null_name_or_email_is_rejected() {
    let mut t = transformer();
    assert!(rejected(&mut t, row(None, Some("a@b"), None)).contains("name is NULL"));
    assert!(rejected(&mut t, row(Some("a"), None, None)).contains("email is NULL"));
}

#[test]
fn batch_form_matches_single_calls_in_order() {
    let mut t = transformer();
    let rows: Vec<LegacyUser> = (0..500)
        .map(|i| LegacyUser {
            id: i,
            name: Some(format!("First {i} Last")),
            email: Some(format!("U{i}@X.ORG")),
            created_at: Some(i * 1_000_001),
            metadata: if i % 10 == 0 { Some("{bad".into()) } else { Some(format!(r#"{{"theme":"t{i}"}}"#)) },
        })
        .collect();
    let singles: Vec<Outcome> = rows.iter().map(|r| t.transform_one(r).unwrap()).collect();
    let (back, batch) = t.transform_batch(rows.clone()).unwrap();
    assert_eq!(back, rows, "rows come back unchanged");
    assert_eq!(batch, singles);
}

#[test]
fn key_mapping_matches_the_transform_and_is_optional() {
    let mut t = transformer();
    assert!(t.plugin().has_key_mapping());
    let row = ok(&mut t, row(Some("a"), Some("a@b"), None));
    assert_eq!(t.target_key(42).unwrap(), Some(ferry::plugin::KeyOutcome::Key(row.id)));
    // A plugin of the base world (no user-key) still loads; it maps nothing.
    let options = LoadOptions::default();
    let mut chaos = Plugin::load(&plugins().chaos, &options).unwrap().instantiate().unwrap();
    assert!(!chaos.plugin().has_key_mapping());
    assert_eq!(chaos.target_key(42).unwrap(), None);
}

/// A plugin's randomness (`wasi:random`, here std's hash seed) is a seeded
/// generator reset before every call: two instances — a migration's and
/// the one `validate` re-transforms with — draw the same numbers for the
/// same call, so the same row comes out.
#[test]
fn a_plugin_drawing_random_numbers_returns_the_same_row_in_every_instance() {
    let options = LoadOptions::default();
    let plugin = Plugin::load(&plugins().chaos, &options).unwrap();
    let drawn: Vec<String> = (0..3)
        .map(|_| ok(&mut plugin.instantiate().unwrap(), row(Some("chaos:random"), Some("a@b"), None)).first_name)
        .collect();
    assert!(drawn[0].starts_with("random") && drawn[0].len() > "random".len() + 4, "{drawn:?}");
    assert!(drawn.iter().all(|d| d == &drawn[0]), "every instance drew the same: {drawn:?}");
}
