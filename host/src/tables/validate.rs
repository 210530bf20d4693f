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
//!
//! A table with a plugin is re-transformed **by the version that produced
//! each row**: the run's lineage ([`crate::control::Lineage`]) says which
//! version committed which key range (a hot swap during the migration, a
//! resume with another version) and which keys a replay loaded; each
//! version's file is the pipeline file's or the one its deployment named,
//! checked against its SHA-256.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::PlannedTable;
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
    /// Their values on each side, canonical (see the module's doc).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<ColumnDiff>,
}

/// One column of a differing row: what the source (through its plugin)
/// says it should hold, and what the target holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnDiff {
    pub column: String,
    /// `None`: NULL. Long values are cut at 200 characters.
    pub expected: Option<String>,
    pub actual: Option<String>,
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

impl TableValidation {
    fn new(table: &PlannedTable, source_rows: u64, target_rows: u64) -> TableValidation {
        TableValidation {
            table: table.source.name.to_string(),
            target: table.target_names(),
            source_rows,
            target_rows,
            matched: 0,
            explained: 0,
            missing: 0,
            extra: 0,
            different: 0,
            differences: Vec::new(),
            ok: true,
        }
    }

    /// Lists a row whose columns differ, with their values.
    fn note_values(&mut self, key: String, values: Vec<ColumnDiff>) {
        if self.differences.len() < LISTED {
            let columns = values.iter().map(|v| v.column.clone()).collect();
            self.differences.push(RowDifference { key, kind: "different", columns, values });
        }
    }

    /// Lists a differing row (the first LISTED of them).
    fn note(&mut self, key: String, kind: &'static str, columns: Vec<String>) {
        if self.differences.len() < LISTED {
            self.differences.push(RowDifference { key, kind, columns, values: Vec::new() });
        }
    }
}

/// Validates the pipeline's tables (all, or the one named by `only`).
pub async fn validate(
    settings: &Settings,
    selection: &TableSelection,
    only: Option<&str>,
) -> anyhow::Result<TablesValidation> {
    let started = Instant::now();
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    let plan = super::plan(settings, selection, source.as_mut(), target.as_mut()).await?;
    let run = target.latest_run(&settings.pipeline).await?;
    let dead: Vec<crate::control::DeadLetterRecord> = match &run {
        Some(run) => target.dead_letters(&run.run_id, None).await?,
        None => Vec::new(),
    };
    let lineage = match &run {
        Some(run) => target.lineage(&run.run_id).await?,
        None => Vec::new(),
    };
    let deployments = target.deployments(&settings.pipeline).await?;
    // A change stream's dead letters explain differences too (a rejected
    // update leaves the last good version).
    let streamed = target.stream_dead_keys(&settings.pipeline).await?;
    let mut tables = Vec::new();
    let mut matched_only = false;
    for table in &plan.tables {
        let name = table.source.name.to_string();
        if only.is_some_and(|o| o != name && o != table.source.name.name && o != table.target().name.to_string()) {
            continue;
        }
        matched_only = true;
        if let Some(missing) = table.outputs.iter().find(|o| o.create) {
            return Err(crate::error::Error::contract(format!(
                "target table {} does not exist in {}: run `ferry migrate` first",
                missing.def.name, settings.target.url
            )));
        }
        let same = |t: &str| t == name || t.rsplit_once('.').is_some_and(|(_, n)| n == table.source.name.name);
        let explained: HashSet<&str> = dead
            .iter()
            .filter(|d| d.source_table == name)
            .map(|d| d.source_key.as_str())
            .chain(streamed.iter().filter(|(t, _)| same(t)).map(|(_, k)| k.as_str()))
            .collect();
        let line = match &table.plugin {
            None if table.keyless() => {
                let dead_rows: Vec<serde_json::Value> = dead
                    .iter()
                    .filter(|d| d.source_table == name)
                    .filter_map(|d| serde_json::from_str(&d.source_row).ok())
                    .collect();
                validate_keyless(settings, table, &dead_rows).await?
            }
            None => validate_table(settings, table, source.as_mut(), target.as_mut(), &explained).await?,
            Some(current) => {
                let lineage: Vec<&crate::control::Lineage> = lineage.iter().filter(|l| l.table == name).collect();
                let versions = Versions::of(settings, table, current, &lineage, &deployments, source.as_mut()).await?;
                validate_transformed(settings, table, versions, source.as_mut(), target.as_mut(), &explained).await?
            }
        };
        tables.push(line);
    }
    if let Some(only) = only.filter(|_| !matched_only) {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            path: "--table".into(),
            message: format!("no table {only} in the pipeline"),
        });
    }
    let ok = tables.iter().all(|t| t.ok);
    if only.is_none() {
        // The evidence `ferry plan` reads; its loss is not the outcome.
        let summary: Vec<String> = tables
            .iter()
            .map(|t| {
                format!(
                    "{}: {} matched, {} explained, {} missing, {} extra, {} different",
                    t.table, t.matched, t.explained, t.missing, t.extra, t.different
                )
            })
            .collect();
        if let Err(e) = target.record_validation(&settings.pipeline, ok, &summary.join("; ")).await {
            tracing::warn!("could not record this validation in the target: {e:#}");
        }
    }
    Ok(TablesValidation {
        ok,
        pipeline: settings.pipeline.clone(),
        run_id: run.map(|r| r.run_id),
        tables,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The definition to read the target table with: the target's own types
/// (for its casts), the source's kinds and column order (for decoding and
/// comparing).
pub(crate) async fn target_reading(
    target: &mut dyn RowSource,
    wanted: &crate::schema::TableDef,
) -> anyhow::Result<crate::schema::TableDef> {
    let actual = target
        .describe(&wanted.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("target table {} disappeared", wanted.name))?;
    let mut def = wanted.clone();
    for column in &mut def.columns {
        if let Some(i) = actual.column_index(&column.name) {
            column.sql_type = actual.columns[i].sql_type.clone();
        }
    }
    Ok(def)
}

async fn validate_table(
    settings: &Settings,
    table: &PlannedTable,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
    explained: &HashSet<&str>,
) -> anyhow::Result<TableValidation> {
    let reading = target_reading(target, table.target()).await?;
    let source_rows = source.count_rows(&table.source).await?;
    let target_rows = target.count_rows(&reading).await?;
    let mut line = TableValidation::new(table, source_rows, target_rows);
    let mut after = None;
    let mut found_in_target = 0u64;
    loop {
        let page = source.read_page(&table.source, after.as_ref(), settings.batch_size).await?;
        if page.is_empty() {
            break;
        }
        after = page.last_key.clone();
        // Rows ferry cannot read are extract dead letters, or were copied
        // as they are (PostgreSQL to PostgreSQL): then their exact text is
        // compared.
        let unexplained: Vec<&crate::keyset::RowDeadLetter> =
            page.unreadable.iter().filter(|u| !explained.contains(u.key.label().as_str())).collect();
        line.explained += (page.unreadable.len() - unexplained.len()) as u64;
        if !unexplained.is_empty() {
            let keys: Vec<Vec<Value>> = unexplained
                .iter()
                .map(|u| {
                    u.key.0.iter().map(|t| Value::Unsupported { type_name: String::new(), text: t.clone() }).collect()
                })
                .collect();
            let found = target.read_keys(&reading, &keys).await?;
            found_in_target += (found.rows.len() + found.unreadable.len()) as u64;
            for u in unexplained {
                match found.unreadable.iter().find(|t| t.key == u.key) {
                    Some(t) if t.row == u.row => line.matched += 1,
                    Some(_) => {
                        line.different += 1;
                        line.note(u.key.label(), "different", vec![]);
                    }
                    None => {
                        line.missing += 1;
                        line.note(u.key.label(), "missing", vec![u.reason.clone()]);
                    }
                }
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
            line.note(u.key.label(), "different", vec![u.reason.clone()]);
        }
        for row in &page.rows {
            let key = canonical_key(table, row);
            let label = crate::keyset::Key::of(&table.source, row).label();
            match by_key.get(&key) {
                None if explained.contains(label.as_str()) => line.explained += 1,
                None => {
                    line.missing += 1;
                    line.note(label, "missing", vec![]);
                }
                Some(other) => {
                    let columns = differing_columns(&table.source, row, other);
                    if columns.is_empty() {
                        line.matched += 1;
                    } else if explained.contains(label.as_str()) {
                        // A newer version was dead-lettered: the last good one stays.
                        line.explained += 1;
                    } else {
                        line.different += 1;
                        line.note_values(label, columns);
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
                    line.note(crate::keyset::Key::of(&table.source, row).label(), "extra", vec![]);
                }
            }
        }
    }
    line.ok = line.missing == 0 && line.extra == 0 && line.different == 0;
    Ok(line)
}

/// Buckets of a keyless table's multiset comparison.
const BUCKETS: usize = 4096;

/// Rows whose canonical hash falls in one bucket: how many, and the
/// wrapping sum of their hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    rows: u64,
    sum: u128,
}

/// A row as a storage-order scan hands it over: decoded, or (a row ferry
/// could not decode) its fields as text.
type ScannedRow<'a> = Result<&'a Row, &'a serde_json::Value>;

/// A row's canonical form (its values' canonical texts; a row ferry could
/// not decode by its exact text) and the hash of that form.
fn canonical_row(def: &crate::schema::TableDef, row: ScannedRow<'_>) -> (String, u128) {
    use sha2::Digest;
    let text = match row {
        Ok(row) => serde_json::to_string(&row.iter().map(canonical).collect::<Vec<_>>()).expect("strings serialise"),
        Err(unreadable) => format!("unreadable {unreadable}"),
    };
    let digest = sha2::Sha256::digest(format!("{}\u{1f}{text}", def.columns.len()).as_bytes());
    (text, u128::from_le_bytes(digest[..16].try_into().expect("16 bytes")))
}

/// Reads every row of `def` in storage order on a connection of its own
/// (the scan holds a snapshot until it is dropped), handing each row's
/// canonical form and hash to `each`.
async fn scan_storage_order(
    settings: &Settings,
    mut reader: Box<dyn RowSource>,
    def: &crate::schema::TableDef,
    each: &mut (dyn for<'r> FnMut(ScannedRow<'r>, String, u128) + Send),
) -> anyhow::Result<()> {
    let Some(positions) = reader.begin_heap_scan(def).await? else {
        return Err(crate::error::Error::contract(format!("{} has no storage order to compare it by", def.name)));
    };
    let per_page = super::heap_page_blocks(def, positions, settings.batch_size);
    let mut from = 0;
    loop {
        let to = from + per_page;
        let last = to >= positions;
        let page = reader.read_heap(def, from, (!last).then_some(to), crate::source::PageForm::Decoded).await?;
        for row in &page.rows {
            let (text, hash) = canonical_row(def, Ok(row));
            each(Ok(row), text, hash);
        }
        for unreadable in &page.unreadable {
            let (text, hash) = canonical_row(def, Err(&unreadable.row));
            each(Err(&unreadable.row), text, hash);
        }
        if last {
            return Ok(());
        }
        from = to;
    }
}

/// A table without a key (`keyless = "ctid"`): both sides read in storage
/// order and compared as multisets of rows. Each row's canonical hash
/// counts into one of [`BUCKETS`] buckets (rows, sum of hashes); equal
/// buckets hold the same rows (but for a 2⁻¹²⁸ chance), so only the rows
/// of buckets that differ are read again and matched one by one, a few
/// buckets per pass: memory stays flat when the sides agree, and bounded
/// (about 20 pages of rows) when they do not. A source row missing from the target is explained by
/// a dead letter holding the same row.
async fn validate_keyless(
    settings: &Settings,
    table: &PlannedTable,
    dead_rows: &[serde_json::Value],
) -> anyhow::Result<TableValidation> {
    let open_source = || engines::open_row_source(&settings.source.url, "source");
    let open_target = || engines::open_row_source(&settings.target.url, "target");
    let mut target = open_target().await?;
    let reading = target_reading(target.as_mut(), table.target()).await?;
    let bucket_of = |hash: u128| (hash % BUCKETS as u128) as usize;
    let mut sides = [vec![Bucket::default(); BUCKETS], vec![Bucket::default(); BUCKETS]];
    for (side, reader) in [open_source().await?, target].into_iter().enumerate() {
        let def = if side == 0 { &table.source } else { &reading };
        let buckets = &mut sides[side];
        scan_storage_order(settings, reader, def, &mut |_, _, hash| {
            let b = &mut buckets[bucket_of(hash)];
            b.rows += 1;
            b.sum = b.sum.wrapping_add(hash);
        })
        .await?;
    }
    // Both counts from the scans themselves (each in its one snapshot).
    let [source_rows, target_rows] = sides.each_ref().map(|side| side.iter().map(|b| b.rows).sum());
    let mut line = TableValidation::new(table, source_rows, target_rows);
    let mut differing: Vec<usize> = (0..BUCKETS).filter(|&b| sides[0][b] != sides[1][b]).collect();
    line.matched = (0..BUCKETS).filter(|b| sides[0][*b] == sides[1][*b]).map(|b| sides[0][b].rows).sum();
    // Dead letters by their row, as JSON text (keys sorted: serde_json's map).
    let mut dead_left: HashMap<String, u64> = HashMap::new();
    for row in dead_rows {
        *dead_left.entry(row.to_string()).or_default() += 1;
    }
    // The differing buckets' rows are matched a few buckets at a time, each
    // pass holding at most about `budget` rows of both sides: bounded
    // memory even when everything differs (an empty target), at the cost
    // of one more scan of both sides per pass.
    let budget = (settings.batch_size as u64).saturating_mul(20).max(1000);
    while !differing.is_empty() {
        let mut chosen = HashSet::new();
        let mut held = 0;
        while let Some(&b) = differing.last() {
            let rows = sides[0][b].rows + sides[1][b].rows;
            if !chosen.is_empty() && held + rows > budget {
                break;
            }
            chosen.insert(b);
            held += rows;
            differing.pop();
        }
        // Canonical form → (source count, target count, the row as shown).
        let mut rows: HashMap<String, (u64, u64, serde_json::Value)> = HashMap::new();
        let readers = [open_source().await?, open_target().await?];
        for (side, reader) in readers.into_iter().enumerate() {
            let def = if side == 0 { &table.source } else { &reading };
            scan_storage_order(settings, reader, def, &mut |row, text, hash| {
                if chosen.contains(&bucket_of(hash)) {
                    let entry = rows.entry(text).or_insert_with(|| {
                        let shown = match row {
                            Ok(row) => crate::keyset::row_json(def, row),
                            Err(unreadable) => unreadable.clone(),
                        };
                        (0, 0, shown)
                    });
                    if side == 0 { entry.0 += 1 } else { entry.1 += 1 }
                }
            })
            .await?;
        }
        let mut found: Vec<(u64, u64, serde_json::Value)> = rows.into_values().collect();
        found.sort_by_key(|(_, _, shown)| shown.to_string());
        for (in_source, in_target, shown) in found {
            line.matched += in_source.min(in_target);
            let text = shown.to_string();
            for _ in in_target..in_source {
                match dead_left.get_mut(&text).filter(|n| **n > 0) {
                    Some(n) => {
                        *n -= 1;
                        line.explained += 1;
                    }
                    None => {
                        line.missing += 1;
                        line.note(text.clone(), "missing", vec![]);
                    }
                }
            }
            for _ in in_source..in_target {
                line.extra += 1;
                line.note(text.clone(), "extra", vec![]);
            }
        }
    }
    line.ok = line.missing == 0 && line.extra == 0;
    Ok(line)
}

/// The columns of `def` whose canonical values differ between two rows.
/// The columns of `expected` and `actual` (rows of `def`) whose canonical
/// values differ.
fn differing_columns(def: &crate::schema::TableDef, expected: &Row, actual: &Row) -> Vec<ColumnDiff> {
    let shown = |v: Option<String>| {
        v.map(|mut v| {
            if let Some((cut, _)) = v.char_indices().nth(200) {
                v.truncate(cut);
                v.push('…');
            }
            v
        })
    };
    def.columns
        .iter()
        .zip(expected.iter().zip(actual.iter()))
        .filter_map(|(c, (x, y))| {
            // Most values arrive identical: no canonical form needed.
            if x == y {
                return None;
            }
            let (x, y) = (canonical(x), canonical(y));
            (x != y).then(|| ColumnDiff { column: c.name.clone(), expected: shown(x), actual: shown(y) })
        })
        .collect()
}

fn key_values(table: &PlannedTable, row: &Row) -> Vec<Value> {
    key_of(&table.source, row)
}

fn key_of(def: &crate::schema::TableDef, row: &Row) -> Vec<Value> {
    def.primary_key.iter().map(|&i| row[i].clone()).collect()
}

fn canonical_key(table: &PlannedTable, row: &Row) -> String {
    canonical_key_of(&table.source, row)
}

fn canonical_key_of(def: &crate::schema::TableDef, row: &Row) -> String {
    canonical_values(&key_of(def, row))
}

/// Values (a key, or a key's first columns) as one canonical string.
pub(crate) fn canonical_values(values: &[Value]) -> String {
    let parts: Vec<Option<String>> = values.iter().map(canonical).collect();
    serde_json::to_string(&parts).expect("strings serialise")
}

/// The plugin versions that produced a table's rows, by key (from the
/// run's lineage), with an instance of each.
struct Versions {
    /// Consecutive key ranges by version, in key order: the version, and
    /// the first readable source key after the range (`None`: to the end).
    spans: Vec<(String, Option<crate::keyset::Key>)>,
    /// The span the next row (in key order) belongs to.
    at: usize,
    /// Keys a replay loaded, and the version it ran.
    replayed: HashMap<crate::keyset::Key, String>,
    /// Versions that went live in a change stream, in order: a row the
    /// stream changed was written by one of them.
    stream: Vec<String>,
    /// Each version, loaded; instantiated on first use.
    plugins: HashMap<String, crate::plugin::TablePlugin>,
    instances: HashMap<String, crate::plugin::TableTransformer>,
}

impl Versions {
    /// The versions of `table`'s rows, `current` (the pipeline's) for rows
    /// no lineage names (a run of an older ferry, rows added since).
    async fn of(
        settings: &Settings,
        table: &PlannedTable,
        current: &crate::plugin::TablePlugin,
        lineage: &[&crate::control::Lineage],
        deployments: &[crate::deployments::Deployment],
        source: &mut dyn RowSource,
    ) -> anyhow::Result<Versions> {
        let mut plugins = HashMap::from([(current.sha256().to_string(), current.clone())]);
        let mut spans: Vec<(String, crate::keyset::Key)> = Vec::new();
        let mut replayed = HashMap::new();
        for record in lineage {
            if !plugins.contains_key(&record.plugin_sha256) {
                let what = format!("rows of {} (keys up to {})", table.source.name, record.last.label());
                let paths = vec![std::path::PathBuf::from(&record.plugin_path)];
                let plugin = load_version(settings, table, &record.plugin_sha256, paths, deployments, &what).await?;
                plugins.insert(record.plugin_sha256.clone(), plugin);
            }
            match &record.keys {
                Some(keys) => {
                    replayed.extend(keys.iter().map(|k| (k.clone(), record.plugin_sha256.clone())));
                }
                None => match spans.last_mut() {
                    Some((sha, last)) if *sha == record.plugin_sha256 => *last = record.last.clone(),
                    _ => spans.push((record.plugin_sha256.clone(), record.last.clone())),
                },
            }
        }
        // Each range ends before the first readable row after its last key,
        // found by the source itself (keys sort as the source sorts them).
        let mut bounded = Vec::with_capacity(spans.len() + 1);
        for (sha, last) in spans {
            let mut after = last;
            let next = loop {
                let page = source.read_page(&table.source, Some(&after), 1).await?;
                match (page.rows.first(), page.last_key) {
                    (Some(row), _) => break Some(crate::keyset::Key::of(&table.source, row)),
                    (None, Some(key)) => after = key,
                    (None, None) => break None,
                }
            };
            bounded.push((sha, next));
        }
        // Beyond the lineage: the pipeline's version.
        bounded.push((current.sha256().to_string(), None));
        let name = &table.source.name;
        let mut stream = Vec::new();
        for d in deployments.iter().filter(|d| crate::swap::went_live_in_stream(d)) {
            let serves = d.table.as_deref().is_none_or(|t| *t == name.to_string() || *t == name.name);
            if !serves || stream.contains(&d.sha256) {
                continue;
            }
            if !plugins.contains_key(&d.sha256) {
                let what = format!("rows of {name} a change stream wrote (deployment {})", d.id);
                let plugin = load_version(settings, table, &d.sha256, Vec::new(), deployments, &what).await?;
                plugins.insert(d.sha256.clone(), plugin);
            }
            stream.push(d.sha256.clone());
        }
        Ok(Versions { spans: bounded, at: 0, replayed, stream, plugins, instances: HashMap::new() })
    }

    /// The version that produced the row with key `key` (rows come in key
    /// order).
    fn of_row(&mut self, key: &crate::keyset::Key) -> String {
        while self.at + 1 < self.spans.len() && self.spans[self.at].1.as_ref() == Some(key) {
            self.at += 1;
        }
        if let Some(sha) = self.replayed.get(key) {
            return sha.clone();
        }
        self.spans[self.at].0.clone()
    }

    /// An instance of version `sha`, told the source's schema.
    async fn take(
        &mut self,
        sha: &str,
        source: &crate::schema::TableDef,
    ) -> anyhow::Result<crate::plugin::TableTransformer> {
        if let Some(t) = self.instances.remove(sha) {
            return Ok(t);
        }
        let plugin = self.plugins[sha].clone();
        let def = source.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<crate::plugin::TableTransformer> {
            let mut t = plugin.instantiate()?;
            t.describe(&def)?;
            Ok(t)
        })
        .await?
    }

    fn give(&mut self, sha: &str, instance: crate::plugin::TableTransformer) {
        self.instances.insert(sha.to_string(), instance);
    }

    /// `rows` through version `sha`: the rows and their outcomes.
    async fn transform_with(
        &mut self,
        sha: &str,
        def: &crate::schema::TableDef,
        table: &str,
        rows: Vec<Row>,
    ) -> anyhow::Result<(Vec<Row>, Vec<crate::plugin::RowOutcome>)> {
        let mut t = self.take(sha, def).await?;
        let n = table.to_string();
        let (t, rows, result) = tokio::task::spawn_blocking(move || {
            let result = t.transform_batch(&n, &rows);
            (t, rows, result)
        })
        .await?;
        self.give(sha, t);
        Ok((rows, result?))
    }

    /// Each row (with key `keys[i]`) through the version that produced it:
    /// the rows, in their order, and their outcomes.
    async fn transform(
        &mut self,
        def: &crate::schema::TableDef,
        table: &str,
        keys: &[crate::keyset::Key],
        rows: Vec<Row>,
    ) -> anyhow::Result<(Vec<Row>, Vec<crate::plugin::RowOutcome>)> {
        let shas: Vec<String> = keys.iter().map(|k| self.of_row(k)).collect();
        let mut order: Vec<&String> = Vec::new();
        for sha in &shas {
            if !order.contains(&sha) {
                order.push(sha);
            }
        }
        match order.as_slice() {
            [] => return Ok((rows, Vec::new())),
            [one] => return self.transform_with(one, def, table, rows).await,
            _ => {}
        }
        let mut outcomes: Vec<Option<crate::plugin::RowOutcome>> = (0..rows.len()).map(|_| None).collect();
        for sha in order {
            let picked: Vec<usize> = (0..shas.len()).filter(|&i| shas[i] == *sha).collect();
            let batch: Vec<Row> = picked.iter().map(|&i| rows[i].clone()).collect();
            let (_, result) = self.transform_with(sha, def, table, batch).await?;
            for (i, outcome) in picked.into_iter().zip(result) {
                outcomes[i] = Some(outcome);
            }
        }
        Ok((rows, outcomes.into_iter().map(|o| o.expect("every row transformed")).collect()))
    }
}

/// The file of plugin version `sha` of `table`, which produced `what`:
/// one of `paths` (the lineage's), the pipeline file's, or one a
/// deployment of this pipeline named — whichever holds exactly that version.
async fn load_version(
    settings: &Settings,
    table: &PlannedTable,
    sha: &str,
    mut paths: Vec<std::path::PathBuf>,
    deployments: &[crate::deployments::Deployment],
    what: &str,
) -> anyhow::Result<crate::plugin::TablePlugin> {
    let spec = settings.tables.spec(&table.source.name).and_then(|s| s.plugin.as_ref());
    let Some(spec) = spec else { anyhow::bail!("table {} has no plugin settings", table.source.name) };
    let mut options = spec.options.clone();
    options.pinned_sha256 = Some(sha.to_string());
    let mut tried = Vec::new();
    paths.push(spec.path.clone());
    paths.extend(deployments.iter().rev().filter(|d| d.sha256 == sha).map(|d| std::path::PathBuf::from(&d.path)));
    paths.dedup();
    for path in paths {
        let (p, o) = (path.clone(), options.clone());
        match tokio::task::spawn_blocking(move || crate::plugin::TablePlugin::load(&p, &o)).await? {
            Ok(plugin) => return Ok(plugin),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    Err(crate::error::Error::contract(format!(
        "{what} were produced by plugin version {sha}, and no file ferry knows holds it \
         (tried {}); put that version back where it was to validate them",
        tried.join("; ")
    )))
}

/// What one expected output row (or a source row's outcome) came to.
enum Verdict {
    Matched,
    /// Absent or different, but a dead letter explains it (`found`: the
    /// target holds a row under its key).
    Explained {
        found: bool,
    },
    /// Rejected now and dead-lettered: the target may keep the rows of its
    /// last good version (looked up by target keys afterwards).
    Kept,
    Missing {
        label: String,
        note: Vec<String>,
    },
    Different {
        label: String,
        columns: Vec<ColumnDiff>,
        found: bool,
    },
    Fatal(String),
}

impl Verdict {
    fn failed(&self) -> bool {
        matches!(self, Verdict::Missing { .. } | Verdict::Different { .. })
    }
}

/// Compares what each source row (named by `labels`) became — `outcomes`
/// — with the target: the verdicts of each source row.
async fn compare(
    table: &PlannedTable,
    target: &mut dyn RowTarget,
    readings: &[crate::schema::TableDef],
    labels: &[String],
    outcomes: Vec<crate::plugin::RowOutcome>,
    explained: &HashSet<&str>,
    seen: &mut Found,
) -> anyhow::Result<Vec<Vec<Verdict>>> {
    use crate::plugin::RowOutcome;
    let mut verdicts: Vec<Vec<Verdict>> = (0..labels.len()).map(|_| Vec::new()).collect();
    // Expected rows per output table, with the source row they came from.
    let mut expected: Vec<Vec<(usize, Row)>> = vec![Vec::new(); table.outputs.len()];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let label = &labels[i];
        let explains = explained.contains(label.as_str());
        match outcome {
            RowOutcome::Rows(out) => {
                for (out_name, values) in out {
                    let at = table
                        .outputs
                        .iter()
                        .position(|o| o.def.name.name == out_name || o.def.name.to_string() == out_name);
                    match at {
                        Some(o) => expected[o].push((i, values)),
                        None if explains => verdicts[i].push(Verdict::Explained { found: false }),
                        None => verdicts[i].push(Verdict::Different {
                            label: label.clone(),
                            columns: vec![ColumnDiff {
                                column: format!("undeclared table {out_name}"),
                                expected: None,
                                actual: None,
                            }],
                            found: false,
                        }),
                    }
                }
            }
            _ if explains => verdicts[i].push(Verdict::Kept),
            RowOutcome::Fatal(reason) => verdicts[i].push(Verdict::Fatal(format!("{label}: {reason}"))),
            _ => verdicts[i].push(Verdict::Missing {
                label: label.clone(),
                note: vec!["rejected now, but no dead letter records it".into()],
            }),
        }
    }
    for (o, rows) in expected.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let out = &table.outputs[o].def;
        let keys: Vec<Vec<Value>> = rows.iter().map(|(_, r)| key_of(out, r)).collect();
        let found = target.read_keys(&readings[o], &keys).await?;
        let by_key: HashMap<String, &Row> = found.rows.iter().map(|r| (canonical_key_of(out, r), r)).collect();
        for key in by_key.keys() {
            seen.insert(o, key);
        }
        for (i, row) in rows {
            let label = &labels[i];
            let explains = explained.contains(label.as_str());
            verdicts[i].push(match by_key.get(&canonical_key_of(out, &row)) {
                None if explains => Verdict::Explained { found: false },
                None => Verdict::Missing { label: format!("{label} → {}", out.name), note: vec![] },
                Some(other) => {
                    let columns = differing_columns(out, &row, other);
                    match (columns.is_empty(), explains) {
                        (true, _) => Verdict::Matched,
                        // A newer version was dead-lettered: the target keeps
                        // the last good one.
                        (false, true) => Verdict::Explained { found: true },
                        (false, false) => {
                            Verdict::Different { label: format!("{label} → {}", out.name), columns, found: true }
                        }
                    }
                }
            });
        }
    }
    Ok(verdicts)
}

/// A table with a plugin: the source re-transformed page by page (the
/// plugin is a pure function of its input), each output row looked up in
/// its table by the output table's key and compared. Rows the plugin
/// rejects, and rows the target refused, are explained by their dead
/// letters. Target rows beyond the expected ones are counted (not listed:
/// that would need every expected key at once).
async fn validate_transformed(
    settings: &Settings,
    table: &PlannedTable,
    mut versions: Versions,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
    explained: &HashSet<&str>,
) -> anyhow::Result<TableValidation> {
    use crate::plugin::RowOutcome;
    let plugin = table.plugin.clone().expect("a table with a plugin");
    let current = plugin.sha256().to_string();
    let mut readings = Vec::new();
    let mut target_rows = 0;
    for output in &table.outputs {
        let reading = target_reading(target, &output.def).await?;
        target_rows += target.count_rows(&reading).await?;
        readings.push(reading);
    }
    let source_rows = source.count_rows(&table.source).await?;
    let mut line = TableValidation::new(table, source_rows, target_rows);
    let name = table.source.name.to_string();
    let mut after = None;
    let mut found_total = 0u64;
    let mut seen = Found::new(table.outputs.len());
    // Source rows dead-lettered and rejected now: the target may keep the
    // rows of their last good version (a change stream's rejected update).
    let mut kept: Vec<Vec<Value>> = Vec::new();
    loop {
        let page = source.read_page(&table.source, after.as_ref(), settings.batch_size).await?;
        if page.is_empty() {
            break;
        }
        after = page.last_key.clone();
        for u in &page.unreadable {
            if explained.contains(u.key.label().as_str()) {
                line.explained += 1;
            } else {
                line.missing += 1;
                line.note(u.key.label(), "missing", vec![]);
            }
        }
        let keys: Vec<crate::keyset::Key> =
            page.rows.iter().map(|r| crate::keyset::Key::of(&table.source, r)).collect();
        let (rows, outcomes) = versions.transform(&table.source, &name, &keys, page.rows).await?;
        let labels: Vec<String> = keys.iter().map(crate::keyset::Key::label).collect();
        let mut verdicts = compare(table, target, &readings, &labels, outcomes, explained, &mut seen).await?;
        // A row a stream changed after a switch was written by the stream's
        // version: a row that differs from its migration range's version
        // is compared with each version that went live in the stream.
        for sha in versions.stream.clone() {
            let failing: Vec<usize> = (0..rows.len()).filter(|&i| verdicts[i].iter().any(|v| v.failed())).collect();
            if failing.is_empty() {
                break;
            }
            let picked: Vec<Row> = failing.iter().map(|&i| rows[i].clone()).collect();
            let (_, outcomes) = versions.transform_with(&sha, &table.source, &name, picked).await?;
            let picked_labels: Vec<String> = failing.iter().map(|&i| labels[i].clone()).collect();
            let again = compare(table, target, &readings, &picked_labels, outcomes, explained, &mut seen).await?;
            for (i, verdict) in failing.into_iter().zip(again) {
                if !verdict.iter().any(|v| v.failed()) {
                    verdicts[i] = verdict;
                }
            }
        }
        for (row, verdict) in rows.iter().zip(verdicts) {
            for v in verdict {
                match v {
                    Verdict::Matched => {
                        line.matched += 1;
                        found_total += 1;
                    }
                    Verdict::Explained { found } => {
                        line.explained += 1;
                        found_total += u64::from(found);
                    }
                    Verdict::Kept => {
                        line.explained += 1;
                        kept.push(key_values(table, row));
                    }
                    Verdict::Missing { label, note } => {
                        line.missing += 1;
                        line.note(label, "missing", note);
                    }
                    Verdict::Different { label, columns, found } => {
                        line.different += 1;
                        found_total += u64::from(found);
                        line.note_values(label, columns);
                    }
                    Verdict::Fatal(reason) => anyhow::bail!("plugin fatal on row of {name}: {reason}"),
                }
            }
        }
    }
    // Those rows are explained, not extra: found by the plugin's target keys.
    let mut transformer = versions.take(&current, &table.source).await?;
    for key in kept {
        let (n, k) = (name.clone(), key);
        let (t, keys) = tokio::task::spawn_blocking(move || {
            let keys = transformer.target_keys(&n, &k);
            (transformer, keys)
        })
        .await?;
        transformer = t;
        if let RowOutcome::Rows(keys) = keys? {
            for (out_name, key) in keys {
                let at = table
                    .outputs
                    .iter()
                    .position(|o| o.def.name.name == out_name || o.def.name.to_string() == out_name);
                if let Some(i) = at.filter(|&i| !key.is_empty() && key.len() <= table.outputs[i].def.primary_key.len())
                {
                    let found = target.read_keys(&readings[i], &[key]).await?;
                    for row in &found.rows {
                        seen.insert(i, &canonical_key_of(&table.outputs[i].def, row));
                    }
                    found_total += found.rows.len() as u64;
                }
            }
        }
    }
    line.extra = target_rows.saturating_sub(found_total);
    if line.extra > 0 && seen.complete() {
        // Name them: the target rows no source row accounts for.
        for (o, reading) in readings.iter().enumerate() {
            let mut after = None;
            while line.differences.len() < LISTED {
                let page = target.read_page(reading, after.as_ref(), settings.batch_size).await?;
                if page.is_empty() {
                    break;
                }
                after = page.last_key.clone();
                for row in page.rows.iter().filter(|r| !seen.contains(o, &canonical_key_of(reading, r))) {
                    let key = crate::keyset::Key::of(reading, row).label();
                    line.note(format!("{key} in {}", table.outputs[o].def.name), "extra", vec![]);
                }
            }
        }
    }
    line.ok = line.missing == 0 && line.extra == 0 && line.different == 0;
    Ok(line)
}

/// Hashes of the target keys a validation found for its source rows, per
/// output table: what lets it name the target rows nothing accounts for.
/// Given up past [`Found::LIMIT`] keys (memory stays bounded; the extra rows
/// are then counted, not named).
struct Found {
    keys: Vec<HashSet<u64>>,
    stored: usize,
    complete: bool,
}

impl Found {
    /// 8 bytes a key: about 200 MB at most.
    const LIMIT: usize = 20_000_000;

    fn new(outputs: usize) -> Found {
        Found { keys: vec![HashSet::new(); outputs], stored: 0, complete: true }
    }

    fn hash(key: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    fn insert(&mut self, output: usize, key: &str) {
        if !self.complete {
            return;
        }
        if self.stored >= Self::LIMIT {
            self.keys = Vec::new();
            self.complete = false;
            return;
        }
        self.stored += usize::from(self.keys[output].insert(Self::hash(key)));
    }

    fn contains(&self, output: usize, key: &str) -> bool {
        self.keys[output].contains(&Self::hash(key))
    }

    fn complete(&self) -> bool {
        self.complete
    }
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
        Value::Json(s) => crate::value::canonical_json(s),
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
