//! The seed transform in every plugin language gives byte-identical output.
//!
//! One corpus of edge-case rows (`plugins/conformance/users.jsonl`: extreme
//! ids and timestamps, Unicode names and e-mails, every metadata case of the
//! seed rules, NULLs) goes through each seed plugin in ferry's sandbox. The
//! oracle is not ferry's: it is the seed's own JavaScript `transformUser`,
//! run by Node (`plugins/conformance/seed.mjs`). Every plugin must produce
//! exactly the oracle's rows and reject exactly the rows the seed throws on;
//! between plugins the rejection reasons must be identical too, except the
//! JSON parser's own detail after "metadata is not valid JSON: ".

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry::model::{LegacyUser, Outcome};
use ferry::plugin::{KeyOutcome, LoadOptions, Plugin};
use serde_json::{Value, json};

use crate::support::{js_plugin, plugins, python_plugin, root};

const INVALID_JSON: &str = "metadata is not valid JSON: ";

fn corpus() -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(root().join("plugins/conformance/users.jsonl")).unwrap();
    let cases = text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    (text, cases)
}

fn oracle(corpus: &str) -> Vec<Value> {
    let mut node = Command::new("node")
        .arg(root().join("plugins/conformance/seed.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node (the seed's JavaScript is the oracle)");
    node.stdin.take().unwrap().write_all(corpus.as_bytes()).unwrap();
    let out = node.wait_with_output().unwrap();
    assert!(out.status.success(), "the oracle failed");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn legacy(case: &Value) -> LegacyUser {
    let text = |k: &str| case[k].as_str().map(str::to_string);
    LegacyUser {
        id: case["id"].as_str().unwrap().parse().unwrap(),
        name: text("name"),
        email: text("email"),
        created_at: case["created_at"].as_str().map(|t| t.parse().unwrap()),
        metadata: text("metadata"),
    }
}

/// Each row's outcome through `plugin`, as the oracle writes it (a
/// rejection with its reason).
fn run(plugin: &Path, cases: &[Value]) -> Vec<Value> {
    let options = LoadOptions { limits: Default::default(), pinned_sha256: None, cache_dir: None };
    let plugin = Plugin::load(plugin, &options).unwrap_or_else(|e| panic!("load {}: {e}", plugin.display()));
    let mut t = plugin.instantiate().unwrap();
    let rows: Vec<LegacyUser> = cases.iter().map(legacy).collect();
    let (_, outcomes) = t.transform_batch(rows.clone()).unwrap();
    // The key mapping agrees with the transform on every id.
    for (row, outcome) in rows.iter().zip(&outcomes) {
        if let Outcome::Row(u) = outcome {
            assert!(matches!(t.target_key(row.id).unwrap(), Some(KeyOutcome::Key(k)) if k == u.id));
        }
    }
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Row(u) => json!({
                "id": u.id, "first_name": u.first_name, "last_name": u.last_name, "email": u.email,
                "created_at": u.created_at.to_string(), "settings": u.settings,
            }),
            Outcome::Rejected(reason) => json!({ "reject": reason }),
            other => panic!("{}: expected a row or a rejection, got {other:?}", plugin.path().display()),
        })
        .collect()
}

/// A rejection reason without the JSON parser's own wording.
fn comparable(outcome: &Value) -> Value {
    match outcome["reject"].as_str() {
        Some(reason) if reason.starts_with(INVALID_JSON) => json!({ "reject": INVALID_JSON }),
        _ => outcome.clone(),
    }
}

#[test]
fn the_seed_plugin_in_rust_python_and_javascript_matches_the_seeds_javascript_byte_for_byte() {
    let (text, cases) = corpus();
    let expected = oracle(&text);
    assert_eq!(expected.len(), cases.len());
    let plugins: Vec<(&str, PathBuf)> = vec![
        ("rust", plugins().transform_user.clone()),
        ("python", python_plugin("transform_user", "wit", "user-transform-keyed")),
        ("javascript", js_plugin("transform_user", "wit", "user-transform-keyed")),
    ];
    let results: Vec<(&str, Vec<Value>)> = plugins.iter().map(|(lang, path)| (*lang, run(path, &cases))).collect();
    let (reference_lang, reference) = &results[0];
    let rejects = reference.iter().filter(|o| o.get("reject").is_some()).count();
    let parser_rejects =
        reference.iter().filter(|o| o["reject"].as_str().is_some_and(|r| r.starts_with(INVALID_JSON))).count();
    assert!(
        rejects >= 14 && parser_rejects >= 9 && cases.len() - rejects >= 60,
        "the corpus lost its edge cases: {rejects} rejected ({parser_rejects} by the JSON parser) of {}",
        cases.len()
    );
    for (lang, outcomes) in &results {
        for ((case, got), want) in cases.iter().zip(outcomes).zip(&expected) {
            let note = case["note"].as_str().unwrap();
            if case["oracle"] == json!(false) {
                // JSON.parse accepts these; every plugin refuses them alike.
                assert!(got["reject"].as_str().is_some_and(|r| r.starts_with(INVALID_JSON)), "{lang} / {note}: {got}");
            } else if want.get("reject").is_some() {
                assert!(got.get("reject").is_some(), "{lang} / {note}: the seed throws, the plugin gave {got}");
            } else {
                assert_eq!(got, want, "{lang} / {note}: differs from the seed's JavaScript");
            }
        }
        let same: Vec<Value> = outcomes.iter().map(comparable).collect();
        let reference: Vec<Value> = reference.iter().map(comparable).collect();
        for ((case, a), b) in cases.iter().zip(&same).zip(&reference) {
            assert_eq!(a, b, "{lang} vs {reference_lang} / {}", case["note"]);
        }
    }
}
