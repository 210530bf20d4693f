//! The undo journal and `ferry rollback RUN`: every run into a target can
//! be taken back to the target's state before it.
//!
//! What is journaled, per target table, from the run's start:
//!
//! - the table's state at the start ([`UndoJournal::begin_undo`], once per
//!   run and table, before the run writes into it): its row count and an
//!   order-independent checksum of its rows, whether it was empty, and
//!   (a table that held rows) the keys it held, in the checksum's snapshot;
//! - the transactions that wrote the run's rows: a marker row written in
//!   each (sub)transaction that writes target rows, whose `xmin` is that
//!   transaction's id. A target row whose `xmin` is one of them is the
//!   run's; any other row was written by someone else (or before the run).
//!   This costs one row per batch, not per row;
//! - for a table that held rows at the start only: the first-touch
//!   before-image of every key the run writes (`NULL`: the key did not
//!   exist), in the same transaction as the write and before it; a key
//!   written many times (a stream) is journaled once. Into a table empty at
//!   the start (a fresh migration) nothing per row is needed: the run's
//!   rows are exactly those its transactions wrote.
//!
//! A rollback (one target transaction, the tables locked against writes)
//! deletes what the run wrote and puts the before-images back, children
//! before parents, parents before children, then verifies each table
//! against the checksum taken at the start. A row someone else changed
//! since the run wrote it (its `xmin` is not the run's and it differs from
//! the before-image) is reported and kept, unless `--force`; so is a row
//! someone else added under a key the table did not hold at the start
//! (`--force` removes it). The rollback
//! also fences the run out: its checkpoints are taken away in the same
//! transaction, so a migration or stream still running stops at its next
//! commit, and the run is marked `rolled_back`.

use serde::Serialize;

use crate::schema::TableDef;
use crate::settings::Settings;

pub use crate::undo_journal::{JournalRollback, RollbackOptions, TableRollback, UndoJournal, UndoMode};

/// `ferry rollback`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub run_id: String,
    pub pipeline: String,
    /// The database rolled back (password redacted).
    pub database: String,
    pub dry_run: bool,
    pub forced: bool,
    pub tables: Vec<TableRollback>,
    /// Every table is exactly as it was at the run's start.
    pub exact: bool,
    /// Objects the run's schema copy created, dropped again.
    pub dropped_objects: Vec<String>,
    /// Objects it created that something else now depends on: kept.
    pub kept_objects: Vec<String>,
    pub seconds: f64,
}

/// Starts the journal of `tables` for `run_id` unless the pipeline turned
/// it off, warning once either way when rollback will be unavailable.
pub async fn begin(
    settings: &Settings,
    target: &mut dyn crate::engines::RowTarget,
    run_id: &str,
    tables: &[&TableDef],
) -> anyhow::Result<()> {
    if !settings.undo_journal {
        tracing::warn!(
            "the undo journal is off for pipeline {} ([target] undo_journal = false): `ferry rollback {run_id}` \
             will not be possible",
            settings.pipeline
        );
        return Ok(());
    }
    for table in tables {
        if target.begin_undo(run_id, table).await?.is_none() {
            tracing::warn!(
                "{} keeps no undo journal (an in-memory database): `ferry rollback {run_id}` will not be possible",
                settings.target.url
            );
            return Ok(());
        }
    }
    Ok(())
}

/// The run a change stream journals its writes under: the pipeline's
/// latest run (the initial load of `ferry sync`, or a migration the
/// stream continues) or, for a stream that loads nothing into this target
/// and has no run yet (`ferry sync --reverse`, `ferry apply`), a run of
/// its own. A rolled-back run is never continued. The target's control
/// tables exist (the stream opened them).
/// `None`: the run's journal was forgotten (`ferry rollback RUN --forget`):
/// the stream journals nothing more.
pub async fn stream_run(
    settings: &Settings,
    target: &mut dyn crate::engines::RowTarget,
    tables: &[TableDef],
) -> anyhow::Result<Option<String>> {
    use crate::control::RunStatus;
    let latest = target.latest_run(&settings.pipeline).await?;
    let run_id = match latest {
        Some(run) if !matches!(run.status, RunStatus::RolledBack | RunStatus::Abandoned) => run.run_id,
        _ => {
            crate::control::start_run(
                target,
                &settings.pipeline,
                None,
                false,
                settings.source.url.to_string(),
                "change stream".to_string(),
                crate::sink::IDENTITY.to_string(),
            )
            .await?
            .run_id
        }
    };
    if target.undo_forgotten(&run_id).await? {
        return Ok(None);
    }
    let refs: Vec<&TableDef> = tables.iter().collect();
    begin(settings, target, &run_id, &refs).await?;
    Ok(Some(run_id))
}

/// What `ferry rollback RUN --forget` did.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub run_id: String,
    /// The database whose journal it was (password redacted).
    pub database: String,
    /// Journal rows deleted (before-images, keys, markers).
    pub deleted: u64,
}

/// `ferry rollback RUN --forget`: run `run_id` is accepted; its undo
/// journal is deleted (see [`crate::undo_journal::UndoJournal::forget_undo`]).
pub async fn forget(settings: &Settings, run_id: &str, reverse: bool) -> anyhow::Result<ForgetReport> {
    let (settings, mut target) = match reverse {
        true => crate::cdc::reverse::old_side(settings).await?,
        false => (settings.clone(), crate::engines::open_row_target(settings).await?),
    };
    if target.journaled_tables(run_id).await?.is_empty() {
        return Err(crate::error::Error::contract(format!(
            "run {run_id} has no undo journal in {}: nothing to forget (`ferry status` lists the runs)",
            settings.target.url
        )));
    }
    let deleted = target.forget_undo(run_id).await?;
    Ok(ForgetReport { run_id: run_id.to_string(), database: settings.target.url.to_string(), deleted })
}

/// `ferry rollback RUN`: the run's target (the old database for a run of
/// the reverse stream, `reverse`) back to its state before the run.
pub async fn rollback(
    settings: &Settings,
    run_id: &str,
    reverse: bool,
    options: RollbackOptions,
) -> anyhow::Result<RollbackReport> {
    let started = std::time::Instant::now();
    let (settings, mut target) = match reverse {
        true => crate::cdc::reverse::old_side(settings).await?,
        false => (settings.clone(), crate::engines::open_row_target(settings).await?),
    };
    let names = target.journaled_tables(run_id).await?;
    if names.is_empty() {
        return Err(crate::error::Error::contract(format!(
            "run {run_id} has no undo journal in {}: it is not a run of this database{}, it ran with \
             [target] undo_journal = false, or it ran before ferry kept one; `ferry status` lists the runs",
            settings.target.url,
            if reverse { "" } else { " (a run of the reverse stream: add --reverse)" }
        )));
    }
    let mut defs = Vec::with_capacity(names.len());
    for name in &names {
        match target.describe(name).await? {
            Some(def) => defs.push(def),
            None => {
                return Err(crate::error::Error::contract(format!(
                    "table {name}, which run {run_id} wrote into, no longer exists in {}: nothing was rolled back",
                    settings.target.url
                )));
            }
        }
    }
    // Ordered by the catalog's names (which foreign keys use), then named
    // as the journal names them (the catalog may qualify them).
    let order = crate::schema::dependency_order(&defs);
    let ordered: Vec<TableDef> =
        order.into_iter().map(|i| TableDef { name: names[i].clone(), ..defs[i].clone() }).collect();
    let pipeline = settings.pipeline.clone();
    let JournalRollback { tables, dropped, kept } = target.rollback(run_id, &pipeline, &ordered, options).await?;
    let report = RollbackReport {
        run_id: run_id.to_string(),
        pipeline,
        database: settings.target.url.to_string(),
        dry_run: options.dry_run,
        forced: options.force,
        exact: tables.iter().all(|t| t.exact),
        tables,
        dropped_objects: dropped,
        kept_objects: kept,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !options.dry_run {
        let kept: u64 = report.tables.iter().map(|t| t.changed_by_others).sum();
        let summary = match (report.exact, kept) {
            (true, _) => format!("run {run_id} rolled back: every table is as it was before the run"),
            (false, 0) => format!("run {run_id} rolled back; some table differs from its state before the run"),
            (false, kept) => {
                format!("run {run_id} rolled back except {kept} rows changed by someone else since (kept)")
            }
        };
        let details = serde_json::to_value(&report).unwrap_or_default();
        crate::notify::send(&settings.notify, &settings.pipeline, crate::notify::Event::Rollback, summary, details)
            .await;
    }
    Ok(report)
}
