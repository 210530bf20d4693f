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

use crate::support::{PgDb, js_plugin, plugins, python_plugin, root};

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
    let options = LoadOptions::default();
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

/// The `transform-row` example, split-orders, in Rust, Python and
/// JavaScript: on one corpus of legacy orders (`plugins/conformance/
/// orders.jsonl`: prices written every way JSON allows, past double
/// precision, quantities at and past their limits, Unicode statuses that
/// lowercase differently in naive implementations, extreme ids and
/// timestamps, every reason to reject) the three must write the same rows,
/// value for value, and reject the same rows for the same reason — except
/// the JSON parser's own detail after "items is not valid JSON: ". JSON
/// that parsers disagree on (lone surrogate escapes, nesting past 128) is
/// left out of the corpus.
#[test]
fn split_orders_in_rust_python_and_javascript_write_the_same_rows() {
    use ferry::db::{Engine, TableName};
    use ferry::plugin::{RowOutcome, RowPlugin};
    use ferry::schema::{ColumnDef, TableDef};
    use ferry::value::{Kind, Value, encode_pg_text};

    let text = std::fs::read_to_string(root().join("plugins/conformance/orders.jsonl")).unwrap();
    let cases: Vec<Value_> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    type Value_ = serde_json::Value;
    let column = |name: &str, sql: &str, kind: Kind| ColumnDef::plain(name, sql, kind, true);
    let source = TableDef::new(
        TableName { schema: Some("public".into()), name: "orders".into() },
        Engine::Postgres,
        vec![
            column("id", "bigint", Kind::Int64),
            column("customer_id", "bigint", Kind::Int64),
            column("placed_at", "timestamp", Kind::Timestamp),
            column("status", "text", Kind::Text),
            column("items", "json", Kind::Json),
        ],
        vec![0],
    );
    let rows: Vec<Vec<Value>> = cases
        .iter()
        .map(|c| {
            let i64_of = |k: &str| c[k].as_str().unwrap().parse::<i64>().unwrap();
            let text_or_null =
                |v: &Value_, f: fn(String) -> Value| v.as_str().map_or(Value::Null, |s| f(s.to_string()));
            let placed_at = match c["placed_kind"].as_str().unwrap() {
                "timestamp" => Value::Timestamp(i64_of("placed_at")),
                "timestamptz" => Value::TimestampTz(i64_of("placed_at")),
                _ => Value::Text(c["placed_at"].as_str().unwrap().to_string()),
            };
            let items = if c["items_kind"] == "json" { Value::Json } else { Value::Text };
            vec![
                Value::Int64(i64_of("id")),
                Value::Int64(i64_of("customer_id")),
                placed_at,
                text_or_null(&c["status"], Value::Text),
                text_or_null(&c["items"], items),
            ]
        })
        .collect();
    let options = LoadOptions::default();
    let run = |path: &Path| -> Vec<Value_> {
        let plugin = RowPlugin::load(path, &options).unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        let mut t = plugin.instantiate().unwrap();
        let outputs = t.describe(&source).unwrap();
        assert_eq!(outputs.len(), 2, "orders and order_items");
        let outcomes = t.transform_batch("public.orders", &rows).unwrap();
        outcomes
            .into_iter()
            .map(|o| match o {
                RowOutcome::Rows(rows) => Value_::Array(
                    rows.into_iter()
                        .map(|(table, values)| {
                            let values: Vec<Value_> = values
                                .iter()
                                .map(|v| json!([format!("{v:?}").split('(').next().unwrap(), encode_pg_text(v)]))
                                .collect();
                            json!({ "table": table, "values": values })
                        })
                        .collect(),
                ),
                RowOutcome::Rejected(reason) => json!({ "reject": comparable_reason(&reason) }),
                other => panic!("{}: expected rows or a rejection, got {other:?}", path.display()),
            })
            .collect()
    };
    let rust = run(&plugins().split_orders);
    let rejected = rust.iter().filter(|o| o.get("reject").is_some()).count();
    let filtered = rust.iter().filter(|o| o.as_array().is_some_and(Vec::is_empty)).count();
    assert!(
        rejected >= 20 && filtered == 2 && cases.len() - rejected - filtered >= 20,
        "the corpus lost its edge cases: {rejected} rejected, {filtered} filtered of {}",
        cases.len()
    );
    // Exactness the corpus is there for, as the Rust plugin writes it.
    let prices = |case: usize| -> Vec<String> {
        let rows = rust[case].as_array().unwrap();
        rows[1..].iter().map(|r| r["values"][4][1].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(prices(1), ["2.250", "100", "-0.5", "0.0015"]);
    assert_eq!(rust[2]["reject"], "item 0: price exponent out of range");
    assert_eq!(prices(3), ["15.0", "5", "1.2", "1", "100", "-0.0015", "0"]);
    assert_eq!(prices(4), ["12345678901234567890.123456789"]);
    assert_eq!(prices(5), ["9007199254740993"]);
    for (lang, path) in [
        ("python", python_plugin("split_orders", "wit/row", "row-transform")),
        ("javascript", js_plugin("split_orders", "wit/row", "row-transform")),
    ] {
        let got = run(&path);
        for ((case, got), want) in cases.iter().zip(&got).zip(&rust) {
            assert_eq!(got, want, "{lang} / {}: differs from the Rust plugin", case["note"]);
        }
    }

    fn comparable_reason(reason: &str) -> &str {
        const INVALID: &str = "items is not valid JSON: ";
        if reason.starts_with(INVALID) { INVALID } else { reason }
    }
}

/// The same migration through split-orders in each language: the Python
/// and JavaScript components (18 and 12 MB, their WASI linked deny-all) run
/// in the many-table pipeline exactly like the Rust one — the same rows in
/// both target tables, the same filtered count, the same dead letters.
#[tokio::test]
async fn a_migration_through_the_python_or_javascript_plugin_equals_the_rust_one() {
    let source = PgDb::new("confsrc").await;
    source
        .exec(
            r#"CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
            CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
                placed_at timestamp NOT NULL, status text NOT NULL, items json NOT NULL);
            INSERT INTO customers SELECT g, 'C' || g FROM generate_series(1, 20) g;
            INSERT INTO orders SELECT g, 1 + g % 20, '2024-03-01 10:00:00'::timestamp + g * interval '1 hour',
                CASE WHEN g % 50 = 0 THEN 'Test' ELSE 'PAID' END,
                CASE WHEN g % 97 = 0 THEN '{"not": "an array"}'::json
                     ELSE json_build_array(json_build_object('sku', 'Σ' || g, 'qty', 1 + g % 3, 'price', (g * 1.25)::text),
                                           json_build_object('sku', 'B' || g, 'qty', 2, 'price', g * 0.5)) END
            FROM generate_series(1, 500) g;"#,
        )
        .await;
    let mut results = Vec::new();
    for (lang, plugin) in [
        ("rust", plugins().split_orders.clone()),
        ("python", python_plugin("split_orders", "wit/row", "row-transform")),
        ("javascript", js_plugin("split_orders", "wit/row", "row-transform")),
    ] {
        let target = PgDb::new("conftgt").await;
        let extra = format!("[[tables]]\nname = \"orders\"\nplugin = \"{}\"\n", plugin.display());
        let p =
            crate::tables::tables_pipeline(&source.url(), &target.url(), "include = [\"public.customers\"]", &extra);
        let run = p.ferry(&["migrate", "--json"]);
        assert_eq!(run.code, 4, "{lang}: five orders rejected: {run:?}");
        let orders = run.json()["tables"].as_array().unwrap().iter().find(|t| t["table"] == "public.orders").cloned();
        let stats = orders.unwrap();
        assert_eq!(
            (stats["filtered"].as_u64(), stats["dead_lettered"].as_u64()),
            (Some(10), Some(5)),
            "{lang}: {stats}"
        );
        let mut c = target.conn().await;
        let mut rows = Vec::new();
        for sql in [
            "SELECT o::text FROM orders o ORDER BY id",
            "SELECT i::text FROM order_items i ORDER BY order_id, line",
            "SELECT source_key || ' ' || reason FROM ferry.dead_letters ORDER BY source_key",
        ] {
            rows.push(sqlx::query_scalar::<_, String>(sql).fetch_all(&mut c).await.unwrap());
        }
        assert_eq!(rows[1].len(), 2 * (500 - 10 - 5), "{lang}");
        results.push((lang, rows));
    }
    let (_, rust) = &results[0];
    for (lang, rows) in &results[1..] {
        for (what, (got, want)) in ["orders", "order_items", "dead letters"].iter().zip(rows.iter().zip(rust)) {
            assert!(got == want, "{lang}: {what} differ from the Rust plugin's");
        }
    }
}
