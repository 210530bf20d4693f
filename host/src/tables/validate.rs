//! `ferry validate` for a pipeline of many tables: every source row looked
//! up in the target by its key and compared value by value, canonically;
//! every target row without a source row found. Like Vitess' VDiff, it
//! reads both sides in full; unlike a merge of two ordered scans it does
//! not depend on both engines sorting keys the same way (collations,
//! SQLite's storage classes): the source is read in its key order and the
//! target probed by key, page by page, so memory stays flat.
//!
//! Canonical values: integers of any width as integers, floats by value
//! (NaN equal to NaN), decimals normalised (`1.50` = `1.5`), JSON with its
//! keys sorted, times as microseconds UTC, an uninterpreted value by its
//! text. A difference explained by a dead letter of the latest run (the
//! row never loaded, with its reason) is counted as explained, not as a
//! mismatch.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::{Plan, PlannedTable};
use crate::engines::{self, RowTarget};
use crate::keyset::Row;
use crate::settings::{Settings, TableSelection};
use crate::source::RowSource;
use crate::value::Value;

/// Differing keys listed per table, at most.
const LISTED: usize = 20;

/// One differing row.
#[derive(Debug, Clone, Serialize)]
pub struct RowDifference {
    /// The key, as PostgreSQL writes its values (`{"a",1}` for composite keys).
    pub key: String,
    /// `missing` (in the target), `extra` (only in the target) or `different`.
    pub kind: &'static str,
    /// The columns whose values differ (for `different`).
    pub columns: Vec<String>,
}

/// One table's line.
#[derive(Debug, Clone, Serialize)]
pub struct TableValidation {
    pub table: String,
    pub target: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub matched: u64,
    /// Source rows absent from the target that a dead letter explains.
    pub explained: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first differing rows (up to 20).
    pub differences: Vec<RowDifference>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablesValidation {
    pub ok: bool,
    pub pipeline: String,
    pub run_id: Option<String>,
    pub tables: Vec<TableValidation>,
    pub elapsed_seconds: f64,
}

/// Validates the pipeline's tables (all, or the one named by `only`).
pub async fn validate(
    settings: &Settings,
    selection: &TableSelection,
    only: Option<&str>,
) -> anyhow::Result<TablesValidation> {
    let started = Instant::now();
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(&settings.target.url).await?;
    let plan = super::plan(settings, selection, source.as_mut(), target.as_mut()).await?;
    let run = target.latest_run(&settings.pipeline).await?;
    let dead: Vec<crate::control::DeadLetterRecord> = match &run {
        Some(run) => target.dead_letters(&run.run_id, None).await?,
        None => Vec::new(),
    };
    let mut tables = Vec::new();
    let mut matched_only = false;
    for table in &plan.tables {
        let name = table.source.name.to_string();
        if only.is_some_and(|o| o != name && o != table.source.name.name && o != table.target.name.to_string()) {
            continue;
        }
        matched_only = true;
        if table.create {
            anyhow::bail!(
                "target table {} does not exist in {}: run `ferry migrate` first",
                table.target.name,
                settings.target.url
            );
        }
        let explained: HashSet<&str> =
            dead.iter().filter(|d| d.source_table == name).map(|d| d.source_key.as_str()).collect();
        tables.push(validate_table(settings, &plan, table, source.as_mut(), target.as_mut(), &explained).await?);
    }
    if let Some(only) = only.filter(|_| !matched_only) {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            path: "--table".into(),
            message: format!("no table {only} in the pipeline"),
        });
    }
    Ok(TablesValidation {
        ok: tables.iter().all(|t| t.ok),
        pipeline: settings.pipeline.clone(),
        run_id: run.map(|r| r.run_id),
        tables,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The definition to read the target table with: the target's own types
/// (for its casts), the source's kinds and column order (for decoding and
/// comparing).
async fn target_reading(target: &mut dyn RowTarget, table: &PlannedTable) -> anyhow::Result<crate::schema::TableDef> {
    let actual = target
        .describe(&table.target.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("target table {} disappeared", table.target.name))?;
    let mut def = table.target.clone();
    for column in &mut def.columns {
        if let Some(i) = actual.column_index(&column.name) {
            column.sql_type = actual.columns[i].sql_type.clone();
        }
    }
    Ok(def)
}

async fn validate_table(
    settings: &Settings,
    _plan: &Plan,
    table: &PlannedTable,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
    explained: &HashSet<&str>,
) -> anyhow::Result<TableValidation> {
    let reading = target_reading(target, table).await?;
    let source_rows = source.count_rows(&table.source).await?;
    let target_rows = target.count_rows(&reading).await?;
    let mut line = TableValidation {
        table: table.source.name.to_string(),
        target: table.target.name.to_string(),
        source_rows,
        target_rows,
        matched: 0,
        explained: 0,
        missing: 0,
        extra: 0,
        different: 0,
        differences: Vec::new(),
        ok: true,
    };
    let note = |line: &mut TableValidation, key: String, kind: &'static str, columns: Vec<String>| {
        if line.differences.len() < LISTED {
            line.differences.push(RowDifference { key, kind, columns });
        }
    };
    let mut after = None;
    let mut found_in_target = 0u64;
    loop {
        let page = source.read_page(&table.source, after.as_ref(), settings.batch_size).await?;
        if page.is_empty() {
            break;
        }
        after = page.last_key.clone();
        // Unreadable source rows are extract dead letters (or should be).
        for u in &page.unreadable {
            if explained.contains(u.key.label().as_str()) {
                line.explained += 1;
            } else {
                line.missing += 1;
                note(&mut line, u.key.label(), "missing", vec![]);
            }
        }
        let keys: Vec<Vec<Value>> = page.rows.iter().map(|r| key_values(table, r)).collect();
        let found = target.read_keys(&reading, &keys).await?;
        let mut by_key: HashMap<String, &Row> = HashMap::with_capacity(found.rows.len());
        for row in &found.rows {
            by_key.insert(canonical_key(table, row), row);
        }
        found_in_target += (found.rows.len() + found.unreadable.len()) as u64;
        for u in &found.unreadable {
            line.different += 1;
            note(&mut line, u.key.label(), "different", vec![u.reason.clone()]);
        }
        for row in &page.rows {
            let key = canonical_key(table, row);
            let label = crate::keyset::Key::of(&table.source, row).label();
            match by_key.get(&key) {
                None if explained.contains(label.as_str()) => line.explained += 1,
                None => {
                    line.missing += 1;
                    note(&mut line, label, "missing", vec![]);
                }
                Some(other) => {
                    let columns: Vec<String> = table
                        .source
                        .columns
                        .iter()
                        .zip(row.iter().zip(other.iter()))
                        .filter(|(_, (a, b))| canonical(a) != canonical(b))
                        .map(|(c, _)| c.name.clone())
                        .collect();
                    if columns.is_empty() {
                        line.matched += 1;
                    } else {
                        line.different += 1;
                        note(&mut line, label, "different", columns);
                    }
                }
            }
        }
    }
    // Target rows no source row accounts for.
    if target_rows > found_in_target {
        let mut after = None;
        loop {
            let page = target.read_page(&reading, after.as_ref(), settings.batch_size).await?;
            if page.is_empty() {
                break;
            }
            after = page.last_key.clone();
            let keys: Vec<Vec<Value>> = page.rows.iter().map(|r| key_values(table, r)).collect();
            let found = source.read_keys(&table.source, &keys).await?;
            let present: HashSet<String> = found.rows.iter().map(|r| canonical_key(table, r)).collect();
            for row in &page.rows {
                if !present.contains(&canonical_key(table, row)) {
                    line.extra += 1;
                    note(&mut line, crate::keyset::Key::of(&table.source, row).label(), "extra", vec![]);
                }
            }
        }
    }
    line.ok = line.missing == 0 && line.extra == 0 && line.different == 0;
    Ok(line)
}

fn key_values(table: &PlannedTable, row: &Row) -> Vec<Value> {
    table.source.primary_key.iter().map(|&i| row[i].clone()).collect()
}

fn canonical_key(table: &PlannedTable, row: &Row) -> String {
    let parts: Vec<Option<String>> = table.source.primary_key.iter().map(|&i| canonical(&row[i])).collect();
    serde_json::to_string(&parts).expect("strings serialise")
}

/// A value's canonical text (see the module's doc); `None` for NULL.
pub fn canonical(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Int16(n) => n.to_string(),
        Value::Int32(n) => n.to_string(),
        Value::Int64(n) => n.to_string(),
        Value::Float32(f) => float(f64::from(*f)),
        Value::Float64(f) => float(*f),
        Value::Numeric(s) => normalise_decimal(s),
        Value::Json(s) => crate::validate::canonical_json(s),
        Value::Date(d) => d.to_string(),
        Value::Time(t) | Value::Timestamp(t) | Value::TimestampTz(t) => t.to_string(),
        Value::Interval { months, days, micros } => format!("{months}m{days}d{micros}us"),
        Value::Array { items, .. } => {
            serde_json::to_string(&items.iter().map(canonical).collect::<Vec<_>>()).expect("strings serialise")
        }
        other => crate::value::encode_pg_text(other).unwrap_or_default(),
    })
}

fn float(f: f64) -> String {
    if f.is_nan() { "NaN".into() } else { format!("{f:e}") }
}

/// `-012.3400` → `-12.34`; `1e3` stays as written (rare in stored decimals).
fn normalise_decimal(s: &str) -> String {
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.contains(['e', 'E']) || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s.to_string();
    }
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let whole = whole.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let body = match (whole.is_empty(), frac.is_empty()) {
        (true, true) => return "0".into(),
        (_, true) => whole.to_string(),
        (true, false) => format!("0.{frac}"),
        (false, false) => format!("{whole}.{frac}"),
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_normalise() {
        assert_eq!(normalise_decimal("-012.3400"), "-12.34");
        assert_eq!(normalise_decimal("0.000"), "0");
        assert_eq!(normalise_decimal("-0"), "0");
        assert_eq!(normalise_decimal("NaN"), "NaN");
        assert_eq!(canonical(&Value::Int16(5)), canonical(&Value::Int64(5)));
        assert_eq!(canonical(&Value::Float32(0.5)), canonical(&Value::Float64(0.5)));
        assert_eq!(
            canonical(&Value::Json("{\"b\":1, \"a\":2}".into())),
            canonical(&Value::Json("{\"a\":2,\"b\":1}".into()))
        );
    }
}
