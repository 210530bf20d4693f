//! `ferry reprocess`: a plugin version applied again to rows an earlier
//! version loaded — after a bug fix in the rules, or to re-run a key range
//! the lineage says an older version produced.
//!
//! The source rows of the range (`--range A..B`: keys after `A` up to and
//! including `B`, as `ferry status` prints a version's range; either side
//! may be left out) are read again in key order, page by page, and go
//! through the new version. Each page commits **in one target
//! transaction**: the rows the running version wrote for those source rows
//! (found through its `target-keys`) are deleted, the new version's rows
//! written, the rows it rejects dead-lettered, the dead letters it now
//! passes removed, and the table's ledger moved from what each row was
//! before (loaded, filtered or a dead letter) to what it is now — so
//! `source = loaded + filtered + dead letters` still holds — with the
//! lineage of the page's keys. A page is a replacement of what the target
//! holds by what the new version makes of the source, so running it twice
//! (or again after `kill -9`) gives the same target and the same ledger.
//! The new version must declare the same output tables as the running one.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::engines;
use crate::error::{Error, ErrorKind};
use crate::keyset::Key;
use crate::plugin::{RowOutcome, TablePlugin, TableTransformer};
use crate::settings::{Settings, TableSelection};
use crate::sink::{Replacing, RowBatch};
use crate::value::Value;

/// What `ferry reprocess` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReprocessReport {
    pub pipeline: String,
    pub run_id: String,
    pub table: String,
    /// The version applied, and the one that ran the table before.
    pub plugin_sha256: String,
    pub replaced_sha256: String,
    /// Keys after which the range starts and its last key (`None`: open).
    pub after_key: Option<String>,
    pub last_key: Option<String>,
    /// Source rows of the range reprocessed.
    pub rows: u64,
    /// Of them: now loaded, filtered out, or dead letters.
    pub loaded: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    /// Stopped by SIGINT/SIGTERM between two pages (each is committed).
    pub interrupted: bool,
}

/// Applies the version at `plugin` to the rows of the pipeline's plugin
/// table (`only`, when several have one) in `range`.
pub async fn reprocess(
    settings: &Settings,
    selection: &TableSelection,
    plugin: &Path,
    only: Option<&str>,
    range: Option<&str>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ReprocessReport> {
    let spec = selection.plugin_table(only).map_err(|e| Error::raise(ErrorKind::Config, e))?;
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    let run = crate::tables::completed_run(settings, target.as_mut(), "reprocessing its rows").await?;
    let mut plan = crate::tables::plan(settings, selection, source.as_mut(), target.as_mut()).await?;
    // The version running the table now is the one a deployment made live.
    crate::swap::Swapper::for_migration(settings, &plan).restore(&mut plan, target.as_mut()).await?;
    let table = plan
        .tables
        .iter()
        .find(|t| t.source.name == spec.source || t.source.name.to_string() == spec.source.to_string())
        .ok_or_else(|| Error::contract(format!("table {} is not in the pipeline's plan", spec.source)))?
        .clone();
    let name = table.source.name.to_string();
    let old = table.plugin.clone().ok_or_else(|| Error::contract(format!("table {name} has no plugin")))?;
    let options =
        crate::plugin::LoadOptions { pinned_sha256: None, ..spec.plugin.as_ref().expect("a plugin").options.clone() };
    let new = tokio::task::block_in_place(|| TablePlugin::load(plugin, &options))?;
    let mut transformer = tokio::task::block_in_place(|| new.replacing(&old, &table.source))
        .map_err(|reason| Error::contract(format!("--plugin {}: {reason}", plugin.display())))?;
    let mut previous: TableTransformer = tokio::task::block_in_place(|| -> anyhow::Result<TableTransformer> {
        let mut t = old.instantiate()?;
        t.describe(&table.source)?;
        Ok(t)
    })?;

    let new_path = new.path().display().to_string();
    let (after, last) = parse_range(range, &table.source)?;
    if let Some((key, values)) = &last
        && source.read_keys(&table.source, std::slice::from_ref(values)).await?.is_empty()
    {
        return Err(Error::raise(
            ErrorKind::Config,
            format!("--range: no row of {name} has the key {}: end the range at a key the source holds", key.label()),
        ));
    }
    let progress = target.table_progress(&run.run_id).await?;
    let checkpoint = progress
        .iter()
        .find(|p| p.table == name)
        .and_then(|p| p.last_key.clone())
        .ok_or_else(|| Error::contract(format!("table {name} of run {} has no checkpoint", run.run_id)))?;
    let dead: HashSet<String> = target
        .dead_letters(&run.run_id, None)
        .await?
        .into_iter()
        .filter(|d| d.source_table == name)
        .map(|d| d.source_key)
        .collect();
    let readings = {
        let mut readings = Vec::new();
        for output in &table.outputs {
            readings.push(crate::tables::validate::target_reading(target.as_mut(), &output.def).await?);
        }
        readings
    };
    let mut report = ReprocessReport {
        pipeline: settings.pipeline.clone(),
        run_id: run.run_id.clone(),
        table: name.clone(),
        plugin_sha256: new.sha256().to_string(),
        replaced_sha256: old.sha256().to_string(),
        after_key: after.as_ref().map(Key::label),
        last_key: last.as_ref().map(|(k, _)| k.label()),
        ..Default::default()
    };
    let mut cursor = after;
    loop {
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        let page = source.read_page(&table.source, cursor.as_ref(), settings.batch_size).await?;
        if page.is_empty() {
            break;
        }
        cursor = page.last_key.clone();
        // Rows the source cannot represent stay the dead letters they are.
        let mut rows = page.rows;
        let mut done = false;
        if let Some((end, _)) = &last
            && let Some(at) = rows.iter().position(|r| Key::of(&table.source, r) == *end)
        {
            rows.truncate(at + 1);
            done = true;
        }
        if rows.is_empty() {
            continue;
        }
        let keys: Vec<Key> = rows.iter().map(|r| Key::of(&table.source, r)).collect();
        // What the running version wrote for these rows, and whether each
        // row was loaded, filtered or a dead letter before.
        let mut deletes: Vec<Vec<Vec<Value>>> = vec![Vec::new(); table.outputs.len()];
        let mut owners: Vec<HashMap<String, usize>> = vec![HashMap::new(); table.outputs.len()];
        for (i, row) in rows.iter().enumerate() {
            let values: Vec<Value> = table.source.primary_key.iter().map(|&c| row[c].clone()).collect();
            let outcome = tokio::task::block_in_place(|| previous.target_keys(&name, &values))?;
            let RowOutcome::Rows(outputs) = outcome else {
                return Err(Error::contract(format!(
                    "the running version of {name} gives no target keys for row {}: {}",
                    keys[i].label(),
                    match outcome {
                        RowOutcome::Rejected(r) | RowOutcome::Fatal(r) | RowOutcome::Trapped(r) => r,
                        RowOutcome::Rows(_) => unreachable!(),
                    }
                )));
            };
            for (out_name, key) in outputs {
                let at = table
                    .outputs
                    .iter()
                    .position(|o| o.def.name.name == out_name || o.def.name.to_string() == out_name);
                if let Some(o) = at.filter(|&o| !key.is_empty() && key.len() <= table.outputs[o].def.primary_key.len())
                {
                    owners[o].insert(crate::tables::validate::canonical_values(&key), i);
                    deletes[o].push(key);
                }
            }
        }
        let mut held = vec![false; rows.len()];
        for (o, keys_of) in deletes.iter().enumerate() {
            if keys_of.is_empty() {
                continue;
            }
            let found = target.read_keys(&readings[o], keys_of).await?;
            let lengths: HashSet<usize> = keys_of.iter().map(Vec::len).collect();
            for row in &found.rows {
                for n in &lengths {
                    let prefix: Vec<Value> = readings[o].primary_key.iter().take(*n).map(|&c| row[c].clone()).collect();
                    if let Some(&i) = owners[o].get(&crate::tables::validate::canonical_values(&prefix)) {
                        held[i] = true;
                    }
                }
            }
        }
        let was_dead: Vec<bool> = keys.iter().map(|k| dead.contains(&k.label())).collect();
        let replayed: Vec<Key> = keys.iter().zip(&was_dead).filter(|(_, d)| **d).map(|(k, _)| k.clone()).collect();
        let was_loaded = (0..rows.len()).filter(|&i| held[i] && !was_dead[i]).count() as u64;
        let was_filtered = (0..rows.len()).filter(|&i| !held[i] && !was_dead[i]).count() as u64;
        let mut batch = RowBatch::at_checkpoint(&run.run_id, &name, &checkpoint, new.sha256(), &new_path);
        batch.replacing = Some(Replacing { deletes, was_loaded, was_filtered, keys: keys.clone() });
        batch.replayed = replayed;
        let outcomes = tokio::task::block_in_place(|| transformer.transform_batch(&name, &rows))?;
        crate::tables::transformed(&table, &rows, outcomes, &mut batch)?;
        target.commit_rows(&batch, table.on_conflict).await?;
        report.rows += rows.len() as u64;
        report.filtered += batch.filtered;
        report.dead_lettered += batch.dead.len() as u64;
        report.loaded += batch.producing;
        if done {
            break;
        }
    }
    Ok(report)
}

/// A range's ends: keys after the first, up to the last (with its values).
type Range = (Option<Key>, Option<(Key, Vec<Value>)>);

/// `A..B` → (keys after `A`, last key `B` with its values); either side
/// may be empty.
fn parse_range(range: Option<&str>, def: &crate::schema::TableDef) -> anyhow::Result<Range> {
    let Some(range) = range else { return Ok((None, None)) };
    let (a, b) = range.split_once("..").ok_or_else(|| {
        Error::raise(ErrorKind::Config, format!("--range {range}: write it A..B (keys after A up to B; A.. or ..B)"))
    })?;
    let key = |label: &str| -> anyhow::Result<(Key, Vec<Value>)> {
        crate::tables::replay::key_values(def, label)
            .map_err(|e| Error::raise(ErrorKind::Config, format!("--range {range}: {e}")))
    };
    let after = if a.is_empty() { None } else { Some(key(a)?.0) };
    let last = if b.is_empty() { None } else { Some(key(b)?) };
    Ok((after, last))
}
