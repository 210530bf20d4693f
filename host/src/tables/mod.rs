//! `ferry migrate` for a pipeline of many tables (`[[tables]]`,
//! `source.include`), laid out by phase, in the order they run:
//!
//! ```text
//!  plan.rs      source catalog → tables, keys, target names, load order
//!               (shared with `ferry check`)
//!  pre_data.rs  between PostgreSQL databases, the schema before the data:
//!               extensions, schemas, types, sequences, functions, tables
//!               with their partitions, defaults, identity, views
//!  copy.rs      `workers` tables at a time; per table an extractor (keyset
//!               pages on the whole key) feeding its loader through a
//!               bounded channel: rows + dead letters + table checkpoint,
//!               one transaction per page
//!  post_data.rs sequences to where the source's stand; keys, indexes,
//!               constraints, triggers, foreign keys after the data (as
//!               pgcopydb does)
//! ```
//! Memory is bounded by `workers × (CHANNEL_DEPTH + 2)` pages whatever the
//! number of tables. Each table's checkpoint is its own (the whole encoded
//! key), so after `kill -9` every table resumes exactly after its last
//! committed page.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::control::{RunRecord, RunStatus, Stats, TablePhase, TableProgress};
use crate::engines::{self, RowTarget};
use crate::migrate::{Ending, MigrateOptions, RunStopped};
use crate::schema::TableDef;
use crate::settings::{Settings, TableSelection};
use crate::source::RowSource;

pub mod bench;
mod copy;
pub mod diff;
mod plan;
mod post_data;
pub mod pre_data;
pub mod replay;
pub mod reprocess;
pub mod validate;

pub use copy::PluginFatal;
use copy::heap_page_blocks;
pub(crate) use copy::transformed;
pub use plan::{Output, Plan, PlannedTable, plan, plan_as_of, target_name_of};
pub use post_data::advance_sequences;
use post_data::built_later;

pub use crate::sink::IDENTITY;

/// The pipeline's latest run, which must have completed before `what`
/// (`replaying its dead letters`, `reprocessing its rows`).
pub(crate) async fn completed_run(
    settings: &Settings,
    target: &mut dyn RowTarget,
    what: &str,
) -> anyhow::Result<RunRecord> {
    let run = target.latest_run(&settings.pipeline).await?.ok_or_else(|| {
        crate::error::Error::contract(format!(
            "no run of pipeline {} is recorded in {}",
            settings.pipeline, settings.target.url
        ))
    })?;
    if run.status != crate::control::RunStatus::Completed {
        return Err(crate::error::Error::contract(format!(
            "run {} of pipeline {} is {}: finish it (`ferry migrate`) before {what}",
            run.run_id,
            settings.pipeline,
            run.status.as_str()
        )));
    }
    Ok(run)
}

/// One table's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub target: String,
    pub phase: TablePhase,
    /// Rows in the source table when the run (re)started.
    pub source_rows: u64,
    pub loaded: u64,
    pub skipped: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    /// The plugin that ran the table at the end (`None`: copied as it is).
    pub plugin_sha256: Option<String>,
    /// `source_rows == loaded + skipped + filtered + dead_lettered`.
    pub accounted: bool,
}

/// What `ferry migrate` of many tables reports.
#[derive(Debug, Clone, Serialize)]
pub struct TablesReport {
    pub run_id: String,
    pub pipeline: String,
    pub ending: Ending,
    pub resumed: bool,
    pub tables: Vec<TableReport>,
    pub source_rows: u64,
    pub stats: Stats,
    pub filtered: u64,
    pub rows_this_session: u64,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
    pub accounted: bool,
    pub message: Option<String>,
}

/// Runs (or resumes) a many-table migration.
pub async fn migrate(
    settings: &Settings,
    selection: &TableSelection,
    options: MigrateOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<TablesReport> {
    migrate_in_snapshot(settings, selection, options, None, stop).await
}

/// [`migrate`], every table read in the exported snapshot `snapshot` when
/// given (`ferry sync`'s initial load: the replication slot's snapshot, so
/// the stream starts exactly where the copy ends).
pub async fn migrate_in_snapshot(
    settings: &Settings,
    selection: &TableSelection,
    options: MigrateOptions,
    snapshot: Option<&str>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<TablesReport> {
    let started = Instant::now();
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    // Nothing is written to the target before the plan holds (missing
    // tables, keys, a plugin that cannot run, a target that does not fit).
    let mut plan = plan(settings, selection, source.as_mut(), target.as_mut()).await?;
    let planning = Instant::now();
    let findings = pre_data::plan(settings, &mut plan).await?;
    tracing::info!(seconds = planning.elapsed().as_secs_f64(), "schema planned");
    if !findings.problems.is_empty() {
        return Err(crate::error::Error::contract(format!(
            "the pipeline's tables cannot be loaded as planned (ferry check lists this too):\n  - {}",
            findings.problems.join("\n  - ")
        )));
    }
    for warning in &findings.warnings {
        tracing::warn!("{warning}");
    }
    target.ensure_control_tables().await?;
    // A version deployed into this pipeline (`ferry plugin deploy`) is the
    // one its tables run, here as in a stream.
    crate::swap::Swapper::for_migration(settings, &plan).restore(&mut plan, target.as_mut()).await?;
    let target_engine = settings.target.url.engine();

    let latest = target.latest_run(&settings.pipeline).await?;
    let (run, resumed) = match latest {
        // Its checkpoint is one integer key: the one-table path of earlier
        // versions started it, and its pages are not this pipeline's.
        Some(run) if run.status.resumable() && !options.restart && run.last_key.is_some() => {
            return Err(crate::error::Error::contract(format!(
                "run {} of pipeline {} was started by an earlier ferry's one-table path (checkpoint: key {}); \
                 finish it with that version, or start over with `ferry migrate --restart`",
                run.run_id,
                settings.pipeline,
                run.last_key.unwrap_or_default()
            )));
        }
        Some(run) if run.status.resumable() && !options.restart => (run, true),
        Some(run) if run.status == RunStatus::Completed && !options.restart && !options.resume_only => {
            let progress = target.table_progress(&run.run_id).await?;
            let counts = count_all(source.as_mut(), &plan).await?;
            let message =
                format!("run {} already completed; nothing to do (pass --restart to migrate again)", run.run_id);
            return Ok(report(
                &run,
                &plan,
                &progress,
                &counts,
                Ending::AlreadyCompleted,
                false,
                0,
                started,
                Some(message),
            ));
        }
        other => {
            let run = crate::control::start_run(
                target.as_mut(),
                &settings.pipeline,
                other,
                options.resume_only,
                settings.source.url.to_string(),
                format!("{} tables", plan.tables.len()),
                producers(&plan),
            )
            .await?;
            (run, false)
        }
    };
    // From here on the run is recorded: whatever stops it (a server
    // restarting under it included) leaves it resumable, and a lost
    // connection is resumed by `migrate::resuming`.
    let run_id = run.run_id.clone();
    let outcome: anyhow::Result<TablesReport> = async {
        if resumed {
            target.set_status(&run.run_id, RunStatus::Running, None).await?;
        }
        // Each table is recorded before its target is created, so a crash in
        // between still knows ferry made it (and builds its indexes later).
        let known: HashMap<String, TableProgress> =
            target.table_progress(&run.run_id).await?.into_iter().map(|p| (p.table.clone(), p)).collect();
        for table in &plan.tables {
            let name = table.source.name.to_string();
            target.start_table(&run.run_id, &name, &table.target_names(), table.made_by_ferry(&known)).await?;
        }
        // The schema before the data (all of it or none), then the tables
        // ferry makes from their columns (which may use its types).
        if let Some(schema) = &plan.schema {
            let began = Instant::now();
            schema.0.create_before_data(&run.run_id).await?;
            let objects = schema.0.plan().before.len();
            tracing::info!(objects, seconds = began.elapsed().as_secs_f64(), "schema before the data");
        }
        for table in plan.tables.iter().filter(|t| !t.schema_made) {
            for output in table.outputs.iter().filter(|o| o.create) {
                target.create_table(&built_later(table, &output.def, target_engine), &plan.names).await?;
            }
        }
        // The journal starts before the run writes anything into a table.
        let outputs: Vec<&TableDef> = plan.tables.iter().flat_map(|t| t.outputs.iter().map(|o| &o.def)).collect();
        crate::undo::begin(settings, target.as_mut(), &run.run_id, &outputs).await?;
        drop(source);

        let started_tables: HashMap<String, TableProgress> =
            target.table_progress(&run.run_id).await?.into_iter().map(|p| (p.table.clone(), p)).collect();
        // Rows of every table (the catalog's estimate until counted), and
        // those earlier attempts of the run committed.
        let bar = options.progress.then(|| {
            let done = started_tables.values().map(|p| p.stats.extracted).sum();
            crate::migrate::progress_bar(plan.tables.iter().map(|t| t.source.estimated_rows).sum(), done)
        });
        // The source's rows are counted beside the copy (one scan of every
        // table, off the copy's critical path), in its snapshot when it
        // has one: the report accounts for each of them.
        let counting = tokio::spawn({
            let (url, plan, snapshot, bar) =
                (settings.source.url.clone(), plan.clone(), snapshot.map(str::to_string), bar.clone());
            async move {
                let mut source = engines::open_row_source(&url, "source").await?;
                if let Some(name) = &snapshot {
                    source.use_snapshot(name).await?;
                }
                let counts = count_all(source.as_mut(), &plan).await?;
                if let Some(bar) = bar {
                    bar.set_length(counts.values().sum());
                }
                anyhow::Ok(counts)
            }
        });
        let outcome =
            copy::copy_tables(settings, &plan, &run, started_tables, snapshot, stop.clone(), bar.clone()).await;
        // A run that failed reports no counts (a plugin's fatal does).
        let counts = match &outcome {
            Err(e) if e.downcast_ref::<PluginFatal>().is_none() => {
                counting.abort();
                Ok(HashMap::new())
            }
            _ => counting.await.context("the row count panicked")?,
        };
        if settings.undo_journal {
            // What the run left (SQLite's second copy). When the copy failed,
            // that failure is the run's outcome and is reported as such (it may
            // be a lost connection the run resumes after): the copy's is a
            // warning, and its rollback will need --force.
            match (target.end_undo(&run.run_id).await, &outcome) {
                (Err(e), Ok(_)) => return Err(e),
                (Err(e), Err(_)) => tracing::warn!("recording what run {} left for rollback: {e:#}", run.run_id),
                (Ok(()), _) => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let progress = target.table_progress(&run.run_id).await?;
        let stored =
            target.latest_run(&settings.pipeline).await?.filter(|r| r.run_id == run.run_id).unwrap_or(run.clone());
        match outcome {
            Ok(rows) => {
                let counts = counts?;
                let interrupted = stop.load(Ordering::Relaxed);
                let all_loaded = progress.iter().all(|p| !p.phase.copying());
                let (ending, message) = if interrupted || !all_loaded {
                    (Ending::Interrupted, Some("interrupted by signal after the last committed pages".to_string()))
                } else {
                    // Rows loaded with the foreign-key checks off (into
                    // tables the target held): every reference must hold
                    // — a parent left out of the pipeline holds no rows.
                    let unchecked: Vec<TableDef> = plan
                        .tables
                        .iter()
                        .filter(|t| plan.skips_triggers(t))
                        .flat_map(|t| t.outputs.iter().map(|o| o.def.clone()))
                        .collect();
                    let broken = match unchecked.is_empty() {
                        true => Vec::new(),
                        false => target.broken_references(&unchecked).await?,
                    };
                    if !broken.is_empty() {
                        return Err(crate::error::Error::contract(format!(
                            "every row is loaded, but the target's foreign keys do not hold (the load ran with \
                             them off):\n  - {}\nload the rows they reference (include those tables in the pipeline) \
                             and run `ferry migrate` again to finish the run, or undo it with `ferry rollback {}`",
                            broken.join("\n  - "),
                            run.run_id
                        )));
                    }
                    // Every table's rows are in: sequences where the source's
                    // stand, then checks and foreign keys.
                    advance_sequences(settings, &plan, target.as_mut()).await?;
                    for table in plan.tables.iter().filter(|t| created(&progress, t) && !t.schema_made) {
                        for output in &table.outputs {
                            target.add_constraints(&output.def, &plan.names).await?;
                        }
                    }
                    if let Some(schema) = &plan.schema {
                        let made: Vec<crate::db::TableName> = plan
                            .tables
                            .iter()
                            .filter(|t| t.schema_made && created(&progress, t))
                            .map(|t| t.target().name.clone())
                            .collect();
                        let began = Instant::now();
                        schema.0.build_after_data(&made).await?;
                        tracing::info!(seconds = began.elapsed().as_secs_f64(), "schema after the data");
                    }
                    for table in &plan.tables {
                        target.set_table_phase(&run.run_id, &table.source.name.to_string(), TablePhase::Done).await?;
                    }
                    (Ending::Completed, None)
                };
                let status = if ending == Ending::Completed { RunStatus::Completed } else { RunStatus::Interrupted };
                target.set_status(&run.run_id, status, message.as_deref()).await?;
                let progress = target.table_progress(&run.run_id).await?;
                Ok(report(&stored, &plan, &progress, &counts, ending, resumed, rows, started, message))
            }
            Err(e) if e.downcast_ref::<PluginFatal>().is_some() => {
                let counts = counts?;
                let message = format!("{e:#}; every committed batch is kept: fix the plugin or the row and run again");
                target.set_status(&run.run_id, RunStatus::Failed, Some(&message)).await?;
                let progress = target.table_progress(&run.run_id).await?;
                Ok(report(&stored, &plan, &progress, &counts, Ending::Fatal, resumed, 0, started, Some(message)))
            }
            Err(e) => {
                let message = format!("{e:#}");
                if let Err(e2) = target.set_status(&run.run_id, RunStatus::Failed, Some(&message)).await {
                    tracing::warn!("could not record the failure of run {}: {e2:#}", run.run_id);
                }
                Err(e.context(RunStopped { run_id: run.run_id.clone(), checkpoint: "per table".into() }))
            }
        }
    }
    .await;
    outcome.map_err(|e| match e.downcast_ref::<RunStopped>() {
        Some(_) => e,
        None => e.context(RunStopped { run_id, checkpoint: "per table".into() }),
    })
}

/// The run's plugin hashes (or `identity`), comma-separated.
pub(crate) fn producers(plan: &Plan) -> String {
    let mut all: Vec<&str> = plan.tables.iter().map(|t| t.producer()).collect();
    all.sort_unstable();
    all.dedup();
    all.join(",")
}

fn created(progress: &[TableProgress], table: &PlannedTable) -> bool {
    let name = table.source.name.to_string();
    progress.iter().find(|p| p.table == name).is_some_and(|p| p.created)
}

async fn count_all(source: &mut dyn RowSource, plan: &Plan) -> anyhow::Result<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for table in &plan.tables {
        counts.insert(table.source.name.to_string(), source.count_rows(&table.source).await?);
    }
    Ok(counts)
}

#[allow(clippy::too_many_arguments)]
fn report(
    run: &RunRecord,
    plan: &Plan,
    progress: &[TableProgress],
    counts: &HashMap<String, u64>,
    ending: Ending,
    resumed: bool,
    rows_this_session: u64,
    started: Instant,
    message: Option<String>,
) -> TablesReport {
    let mut tables = Vec::new();
    let mut stats = Stats::default();
    let mut filtered = 0;
    for table in &plan.tables {
        let name = table.source.name.to_string();
        let p = progress.iter().find(|p| p.table == name);
        let s = p.map(|p| p.stats).unwrap_or_default();
        let f = p.map_or(0, |p| p.filtered);
        let source_rows = counts.get(&name).copied().unwrap_or(0);
        stats.extracted += s.extracted;
        stats.transformed += s.transformed;
        stats.loaded += s.loaded;
        stats.skipped += s.skipped;
        stats.dead_lettered += s.dead_lettered;
        filtered += f;
        tables.push(TableReport {
            table: name,
            target: table.target_names(),
            phase: p.map_or(TablePhase::Copying, |p| p.phase),
            source_rows,
            loaded: s.loaded,
            skipped: s.skipped,
            filtered: f,
            dead_lettered: s.dead_lettered,
            plugin_sha256: table.plugin.as_ref().map(|p| p.sha256().to_string()),
            accounted: source_rows == s.loaded + s.skipped + f + s.dead_lettered,
        });
    }
    let source_rows = tables.iter().map(|t| t.source_rows).sum();
    let elapsed = started.elapsed().as_secs_f64();
    TablesReport {
        run_id: run.run_id.clone(),
        pipeline: run.pipeline.clone(),
        ending,
        resumed,
        accounted: tables.iter().all(|t| t.accounted),
        tables,
        source_rows,
        stats,
        filtered,
        rows_this_session,
        elapsed_seconds: elapsed,
        rows_per_second: if elapsed > 0.0 { rows_this_session as f64 / elapsed } else { 0.0 },
        message,
    }
}
