//! `ferry dlq replay`: the dead letters of a pipeline's last migration run,
//! tried again once the cause is fixed — in the source, or in the plugin
//! (`--plugin`, a fixed version of a table's plugin).
//!
//! Each dead letter's source row is read again by its key (as the source
//! holds it now) and goes through the same path as in the migration: the
//! table's plugin (or the fixed version) or a copy, then the target. The
//! rows that pass are written and their dead letters removed **in one
//! target transaction** (`RowBatch::replayed`): a dead letter that is gone
//! cannot be replayed again, so replaying twice loads nothing twice, and
//! two replays at once cannot both load a row (the second is fenced). The
//! rows that fail again stay dead letters, with the new reason and the
//! version that refused them. The table's counters move from dead letters
//! to loaded or filtered, so `source = loaded + filtered + dead letters`
//! still holds. A dead letter whose source row no longer exists is left as
//! it is (reported as `gone`).
//!
//! A change stream's dead letters are replayed by the stream itself: `ferry
//! dlq replay` asks for them (`ferry.stream_replays`), and the running
//! stream, between two of its transactions, reads each row again and
//! applies it through the table's live path, removing the dead letter in
//! the same target transaction (see `TablesApplier::replay_dead_letters`).
//! The stream is the only writer of its tables, so a replayed row never
//! races a change of the same key; the command waits (`--wait`) and says
//! what became of them, or that the stream will replay them when it runs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::control::DeadLetterRecord;
use crate::engines;
use crate::error::{Error, ErrorKind};
use crate::keyset::Key;
use crate::plugin::{TablePlugin, TableTransformer};
use crate::schema::TableDef;
use crate::settings::{Settings, TableSelection};
use crate::sink::{RowBatch, TableWrite};
use crate::value::Value;

/// What a replay did to one table's dead letters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayedTable {
    pub table: String,
    /// Dead letters tried again.
    pub retried: u64,
    /// Source rows now loaded.
    pub loaded: u64,
    /// Source rows the plugin now filters out.
    pub filtered: u64,
    /// Still dead letters (with their new reason).
    pub dead_lettered: u64,
    /// Dead letters whose source row no longer exists: left as they are.
    pub gone: u64,
    /// The version they went through (`identity` for a copy).
    pub plugin_sha256: String,
}

/// What `ferry dlq replay` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub pipeline: String,
    pub run_id: String,
    pub tables: Vec<ReplayedTable>,
    /// Dead letters of tables without a key (named by their place in a scan
    /// that cannot be read again): not replayed.
    pub keyless: u64,
    /// Stopped by SIGINT/SIGTERM between two batches (each is committed).
    pub interrupted: bool,
    /// The change stream's dead letters, if it has any.
    pub stream: Option<StreamReplay>,
}

/// What became of the change stream's dead letters asked to be replayed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReplay {
    pub asked: u64,
    /// Applied and gone from the dead letters.
    pub replayed: u64,
    /// Dead letters again, with their new reason.
    pub dead_lettered: u64,
    /// Not replayed yet: the stream replays them while it runs.
    pub pending: u64,
}

impl ReplayReport {
    /// Dead letters left after the replay (of the tables tried).
    pub fn remaining(&self) -> u64 {
        let stream = self.stream.as_ref().map_or(0, |s| s.dead_lettered + s.pending);
        stream + self.keyless + self.tables.iter().map(|t| t.dead_lettered + t.gone).sum::<u64>()
    }
}

/// Replays the dead letters of the pipeline's latest run (of `only`, a
/// source table, when given), through `plugin` instead of the tables'
/// configured plugin when given.
/// Then asks the change stream to replay its dead letters (of `only`) and
/// waits up to `wait` for it to.
pub async fn replay(
    settings: &Settings,
    selection: &TableSelection,
    plugin: Option<&Path>,
    only: Option<&str>,
    wait: std::time::Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ReplayReport> {
    let mut target = engines::open_row_target(settings).await?;
    let named = |table: &str| only.is_none_or(|t| table == t || table.rsplit('.').next() == Some(t));
    let streamed = target.stream_dead_keys(&settings.pipeline).await?.iter().filter(|(t, _)| named(t)).count();
    if streamed > 0 && plugin.is_some() {
        return Err(Error::raise(
            ErrorKind::Config,
            format!(
                "--plugin: the change stream's {streamed} dead letters replay through the live version of their \
                 table's plugin: deploy the fixed one (`ferry plugin deploy PATH`), then run `ferry dlq replay` \
                 without --plugin"
            ),
        ));
    }
    // A stream without a completed migration run (`ferry apply`, a load
    // under way) replays its own dead letters only.
    let run = target.latest_run(&settings.pipeline).await?;
    let completed = run.is_some_and(|r| r.status == crate::control::RunStatus::Completed);
    let mut report = if streamed == 0 || completed {
        replay_run(settings, selection, plugin, only, target.as_mut(), Arc::clone(&stop)).await?
    } else {
        ReplayReport {
            pipeline: settings.pipeline.clone(),
            run_id: crate::sink::STREAM_RUN.into(),
            ..Default::default()
        }
    };
    if streamed > 0 && !report.interrupted {
        report.stream = Some(replay_stream(settings, target.as_mut(), only, wait, &stop).await?);
    }
    Ok(report)
}

/// Asks the stream to replay its dead letters, then waits up to `wait`
/// until it did.
async fn replay_stream(
    settings: &Settings,
    target: &mut dyn crate::tables::RowTarget,
    only: Option<&str>,
    wait: std::time::Duration,
    stop: &AtomicBool,
) -> anyhow::Result<StreamReplay> {
    let asked = target.request_stream_replay(&settings.pipeline, only).await?;
    let until = std::time::Instant::now() + wait;
    let (pending, dead) = loop {
        let (pending, dead) = target.stream_replay_state(&settings.pipeline, &asked).await?;
        if pending == 0 || std::time::Instant::now() >= until || stop.load(Ordering::Relaxed) {
            break (pending, dead);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let n = asked.len() as u64;
    Ok(StreamReplay { asked: n, replayed: n - pending - dead, dead_lettered: dead, pending })
}

/// The latest migration run's dead letters.
async fn replay_run(
    settings: &Settings,
    selection: &TableSelection,
    plugin: Option<&Path>,
    only: Option<&str>,
    target: &mut dyn crate::tables::RowTarget,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ReplayReport> {
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let run = crate::tables::completed_run(settings, target, "replaying its dead letters").await?;
    let plan = crate::tables::plan(settings, selection, source.as_mut(), target).await?;
    let named = |name: &crate::db::TableName| only.is_none_or(|t| name.to_string() == t || name.name == t);
    if let Some(t) = only.filter(|_| !plan.tables.iter().any(|p| named(&p.source.name))) {
        return Err(Error::raise(ErrorKind::Config, format!("--table {t}: the pipeline has no such source table")));
    }
    let fixed = match plugin {
        None => None,
        Some(path) => {
            let options =
                selection.tables.iter().find_map(|s| s.plugin.as_ref().map(|p| p.options.clone())).unwrap_or_else(
                    || crate::plugin::LoadOptions {
                        cache_dir: crate::settings::default_cache_dir(),
                        ..Default::default()
                    },
                );
            let options = crate::plugin::LoadOptions { pinned_sha256: None, ..options };
            Some(tokio::task::block_in_place(|| TablePlugin::load(path, &options))?)
        }
    };
    let progress = target.table_progress(&run.run_id).await?;
    let dead = target.dead_letters(&run.run_id, None).await?;
    let mut report =
        ReplayReport { pipeline: settings.pipeline.clone(), run_id: run.run_id.clone(), ..Default::default() };
    for table in plan.tables.iter().filter(|t| named(&t.source.name)) {
        let name = table.source.name.to_string();
        let mine: Vec<&DeadLetterRecord> = dead.iter().filter(|d| d.source_table == name).collect();
        if mine.is_empty() {
            continue;
        }
        if table.keyless() {
            report.keyless += mine.len() as u64;
            continue;
        }
        let (mut transformer, (sha256, path)) = match (&fixed, &table.plugin) {
            (Some(new), Some(old)) => {
                let instance = tokio::task::block_in_place(|| new.replacing(old, &table.source))
                    .map_err(|reason| Error::contract(format!("--plugin {}: {reason}", plugin_path(plugin))))?;
                (Some(instance), (new.sha256().to_string(), new.path().display().to_string()))
            }
            (Some(_), None) if only.is_some() => {
                return Err(Error::raise(
                    ErrorKind::Config,
                    format!("--plugin: table {name} has no plugin (it is copied as it is); leave --plugin out"),
                ));
            }
            (_, Some(p)) => {
                let instance = tokio::task::block_in_place(|| -> anyhow::Result<TableTransformer> {
                    let mut t = p.instantiate()?;
                    t.describe(&table.source)?;
                    Ok(t)
                })?;
                (Some(instance), (p.sha256().to_string(), p.path().display().to_string()))
            }
            (_, None) => (None, (crate::tables::IDENTITY.to_string(), String::new())),
        };
        let checkpoint = progress.iter().find(|p| p.table == name).and_then(|p| p.last_key.clone());
        let Some(checkpoint) = checkpoint else {
            return Err(Error::contract(format!("table {name} of run {} has no checkpoint", run.run_id)));
        };
        let before = progress.iter().find(|p| p.table == name).cloned();
        let mut line = ReplayedTable { table: name.clone(), plugin_sha256: sha256.clone(), ..Default::default() };
        for chunk in mine.chunks(settings.batch_size.max(1)) {
            if stop.load(Ordering::Relaxed) {
                report.interrupted = true;
                break;
            }
            let keys: Vec<(Key, Vec<Value>)> =
                chunk.iter().map(|d| key_values(&table.source, &d.source_key)).collect::<anyhow::Result<_>>()?;
            let values: Vec<Vec<Value>> = keys.iter().map(|(_, v)| v.clone()).collect();
            let page = source.read_keys(&table.source, &values).await?;
            let found: HashSet<Key> = page
                .rows
                .iter()
                .map(|r| Key::of(&table.source, r))
                .chain(page.unreadable.iter().map(|d| d.key.clone()))
                .collect();
            let replayed: Vec<Key> = keys.iter().map(|(k, _)| k.clone()).filter(|k| found.contains(k)).collect();
            line.retried += chunk.len() as u64;
            line.gone += (chunk.len() - replayed.len()) as u64;
            if replayed.is_empty() {
                continue;
            }
            let mut batch = RowBatch::at_checkpoint(&run.run_id, &name, &checkpoint, &sha256, &path);
            batch.one_to_one = transformer.is_none();
            batch.dead = page.unreadable;
            batch.replayed = replayed;
            match transformer.as_mut() {
                None => {
                    let keys = page.rows.iter().map(|r| Key::of(&table.source, r)).collect();
                    batch.producing = page.rows.len() as u64;
                    batch.writes.push(TableWrite { target: table.target().clone(), rows: page.rows, keys, raw: None });
                }
                Some(t) => {
                    let outcomes = tokio::task::block_in_place(|| t.transform_batch(&name, &page.rows))?;
                    crate::tables::transformed(table, &page.rows, outcomes, &mut batch)?;
                }
            }
            target.commit_rows(&batch, table.on_conflict).await?;
        }
        // The table's own counters say where the retried rows went.
        let after = target.table_progress(&run.run_id).await?.into_iter().find(|p| p.table == name);
        if let (Some(before), Some(after)) = (before, after) {
            line.loaded = after.stats.loaded.saturating_sub(before.stats.loaded);
            line.filtered = after.filtered.saturating_sub(before.filtered);
            let skipped = after.stats.skipped.saturating_sub(before.stats.skipped);
            line.dead_lettered =
                line.retried - line.gone - (line.loaded + line.filtered + skipped).min(line.retried - line.gone);
        }
        report.tables.push(line);
        if report.interrupted {
            break;
        }
    }
    Ok(report)
}

fn plugin_path(plugin: Option<&Path>) -> String {
    plugin.map_or_else(String::new, |p| p.display().to_string())
}

/// A dead letter's key (as `Key::label` wrote it) and its values.
pub(crate) fn key_values(def: &TableDef, label: &str) -> anyhow::Result<(Key, Vec<Value>)> {
    let key = Key::from_label(label, def.primary_key.len())
        .map_err(|e| anyhow::anyhow!("dead letter key {label} of {}: {e}", def.name))?;
    let values = def
        .primary_key
        .iter()
        .zip(&key.0)
        .map(|(&i, text)| {
            let column = &def.columns[i];
            crate::value::decode_pg_text(&column.kind, &column.sql_type, text)
                .map_err(|e| anyhow::anyhow!("dead letter key {label} of {}: {e:?}", def.name))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((key, values))
}
