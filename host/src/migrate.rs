//! `ferry migrate`: the big-bang pipeline.
//!
//! ```text
//!  extract (async) ──batch──▶ transform workers (threads, one plugin
//!                              instance each) ──batch──▶ load (async):
//!                              rows + dead letters + checkpoint, one
//!                              transaction per batch, in batch order
//! ```
//! Channels are bounded, so at most `workers × CHANNEL_DEPTH × 2` batches
//! are in memory whatever the table's size. Batch `n` goes to worker
//! `n % workers` and the loader takes them back in the same round-robin
//! order, so batches commit in key order and the checkpoint only moves
//! forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::control::{RunRecord, RunStatus, Stats};
use crate::engines::{self, Target};
use crate::error::Error;
use crate::model::{DeadLetter, DeadLetterKind, LegacyUser, NewUser, Outcome};
use crate::plugin::{Plugin, Transformer};
use crate::settings::Settings;
use crate::shape;
use crate::sink::LoadBatch;
use crate::source::{SnapshotSource, SourceBatch};

/// Batches queued per channel: enough for extraction, transform and load to
/// overlap, few enough to keep memory flat.
const CHANNEL_DEPTH: usize = 2;

/// How `ferry migrate` starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Only resume an unfinished run; fail if there is none.
    pub resume_only: bool,
    /// Abandon any unfinished run and start a new one.
    pub restart: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Every source row is loaded or dead-lettered.
    Completed,
    /// A previous run had already completed: nothing was done.
    AlreadyCompleted,
    /// The plugin returned `fatal`: stopped before the batch holding that row.
    Fatal,
    /// SIGINT/SIGTERM: stopped after the last committed batch.
    Interrupted,
}

/// What `ferry migrate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub run_id: String,
    pub pipeline: String,
    pub ending: Ending,
    pub resumed: bool,
    pub plugin_sha256: String,
    /// Rows in the source table when the run (re)started.
    pub source_rows: u64,
    /// Counters for the whole run (across resumes).
    pub stats: Stats,
    /// Rows this process extracted (excluding earlier attempts of the run).
    pub rows_this_session: u64,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
    pub traps: u64,
    /// `source_rows == loaded + skipped + dead_lettered` (only meaningful once completed).
    pub accounted: bool,
    pub message: Option<String>,
}

/// A transformed batch, on its way to the loader.
struct Transformed {
    seq: u64,
    first_key: i64,
    last_key: i64,
    extracted: u64,
    rows: Vec<NewUser>,
    sources: Vec<LegacyUser>,
    dead: Vec<DeadLetter>,
    fatal: Option<(i64, String)>,
    traps: u64,
}

/// Runs (or resumes) the migration described by `settings`.
/// [`migrate`] that survives a database server restarting or the network
/// dropping under it: on a transient failure the same run resumes from its
/// last committed batch (exactly, as after a crash), with backoff, until
/// failures have gone on for minutes without progress.
pub async fn migrate_resuming(
    settings: &Settings,
    options: MigrateOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<MigrateReport> {
    resuming(options, &stop, |o| migrate(settings, o, Arc::clone(&stop))).await
}

/// Runs `attempt` (a migration of either kind) and, when it fails on a
/// transient error after its run started ([`RunStopped`]), runs it again
/// with backoff to resume that same run, until failures have gone on for
/// minutes without progress.
pub async fn resuming<T, F, Fut>(options: MigrateOptions, stop: &AtomicBool, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut(MigrateOptions) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = crate::retry::Backoff::default();
    let mut options = options;
    loop {
        let started = Instant::now();
        match attempt(options).await {
            // Only a run that was under way is resumed: a server that cannot
            // be reached at the start is more likely a wrong URL than a restart.
            Err(e)
                if e.downcast_ref::<RunStopped>().is_some()
                    && crate::retry::is_transient(&e)
                    && !stop.load(Ordering::Relaxed) =>
            {
                if started.elapsed() > PROGRESS_TIME {
                    backoff.progressed();
                }
                let Some(wait) = backoff.failed() else {
                    return Err(e.context(format!(
                        "giving up after {:?} of failures; the run is kept: run the same command to resume it",
                        backoff.failing_for()
                    )));
                };
                tracing::warn!("connection lost, resuming the run in {wait:?}: {e:#}");
                tokio::time::sleep(wait).await;
                // The retry continues this run, never starts another.
                options = MigrateOptions { restart: false, ..options };
            }
            other => return other,
        }
    }
}

/// A run that stopped on an error after it started: its committed batches
/// are kept and the same command resumes it.
#[derive(Debug, thiserror::Error)]
#[error(
    "run {run_id} stopped; every committed batch is kept (checkpoint: key {checkpoint}); fix the cause and run the same command again to resume"
)]
pub struct RunStopped {
    pub run_id: String,
    pub checkpoint: String,
}

/// An attempt that ran this long before failing made progress.
const PROGRESS_TIME: Duration = Duration::from_secs(10);

pub async fn migrate(
    settings: &Settings,
    options: MigrateOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<MigrateReport> {
    let started = Instant::now();
    // The plugin is loaded, pinned and compiled before anything is written.
    let plugin = load_plugin(settings).await?;

    let mut source = engines::open_source(&settings.source).await?;
    let source_shape = source.shape().await?.ok_or_else(|| {
        Error::contract(format!(
            "source table {} does not exist in {}; check source.table",
            settings.source.table, settings.source.url
        ))
    })?;
    let problems = shape::mismatches(&source_shape, &shape::SOURCE_COLUMNS, "id");
    if !problems.is_empty() {
        return Err(Error::contract(format!(
            "source table {} does not fit the transform-user contract:\n  - {}",
            settings.source.table,
            problems.join("\n  - ")
        )));
    }

    let mut target = engines::open_target(settings).await?;
    prepare_target(settings, target.as_mut()).await?;
    target.ensure_control_tables().await?;

    // Find or start the run.
    let latest = target.latest_run(&settings.pipeline).await?;
    let (run, resumed) = match latest {
        Some(run) if run.status.resumable() && !options.restart => {
            if run.plugin_sha256 != plugin.sha256() {
                return Err(Error::contract(format!(
                    "run {} of pipeline {} was started with plugin sha256 {} but the configured plugin is {}; \
                     finish it with the same plugin, or pass --restart to start over with the new one",
                    run.run_id,
                    settings.pipeline,
                    run.plugin_sha256,
                    plugin.sha256()
                )));
            }
            (run, true)
        }
        Some(run) if run.status == RunStatus::Completed && !options.restart && !options.resume_only => {
            let source_rows = source.count().await?;
            return Ok(report(
                &run,
                Ending::AlreadyCompleted,
                false,
                source_rows,
                0,
                started,
                0,
                Some(format!("run {} already completed; nothing to do (pass --restart to migrate again)", run.run_id)),
            ));
        }
        other => {
            let run = crate::control::start_run(
                target.as_mut(),
                &settings.pipeline,
                other,
                options.resume_only,
                format!("{} {}", settings.source.url, settings.source.table),
                settings.target.table.to_string(),
                plugin.sha256().to_string(),
            )
            .await?;
            (run, false)
        }
    };
    if resumed {
        target.set_status(&run.run_id, RunStatus::Running, None).await?;
        tracing::info!(run_id = %run.run_id, last_key = ?run.last_key, "resuming");
    }
    let source_rows = source.count().await?;

    let outcome = run_pipeline(settings, &plugin, source, target.as_mut(), &run, source_rows, options, stop).await;
    // Read the counters back from the store: they are what was committed.
    let stored = target.latest_run(&settings.pipeline).await?.filter(|r| r.run_id == run.run_id).unwrap_or(run.clone());
    match outcome {
        Ok(PipelineEnd { ending, rows, traps, message }) => {
            let status = match ending {
                Ending::Completed | Ending::AlreadyCompleted => RunStatus::Completed,
                Ending::Fatal => RunStatus::Failed,
                Ending::Interrupted => RunStatus::Interrupted,
            };
            target.set_status(&run.run_id, status, message.as_deref()).await?;
            Ok(report(&stored, ending, resumed, source_rows, rows, started, traps, message))
        }
        Err(e) => {
            let message = format!("{e:#}");
            if let Err(e2) = target.set_status(&run.run_id, RunStatus::Failed, Some(&message)).await {
                tracing::warn!("could not record the failure of run {}: {e2:#}", run.run_id);
            }
            Err(e.context(RunStopped {
                run_id: run.run_id.clone(),
                checkpoint: stored.last_key.map_or("none".to_string(), |k| k.to_string()),
            }))
        }
    }
}

async fn load_plugin(settings: &Settings) -> anyhow::Result<Arc<Plugin>> {
    let path = settings.plugin()?.path.clone();
    let options = settings.plugin()?.options.clone();
    Ok(tokio::task::spawn_blocking(move || Plugin::load(&path, &options)).await??)
}

/// Checks the target table's shape, creating the table if allowed.
pub async fn prepare_target(settings: &Settings, target: &mut dyn Target) -> anyhow::Result<()> {
    let shape = match target.shape().await? {
        Some(shape) => shape,
        None if settings.create_table => {
            target.create_table().await?;
            target.shape().await?.context("the target table was created but cannot be found")?
        }
        None => {
            return Err(Error::contract(format!(
                "target table {} does not exist in {}; create it (see examples/) or set target.create_table = true",
                settings.target.table, settings.target.url
            )));
        }
    };
    let problems = shape::mismatches(&shape, &shape::TARGET_COLUMNS, "id");
    if !problems.is_empty() {
        return Err(Error::contract(format!(
            "target table {} does not match the plugin's output (new-user):\n  - {}",
            settings.target.table,
            problems.join("\n  - ")
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    run: &RunRecord,
    ending: Ending,
    resumed: bool,
    source_rows: u64,
    rows_this_session: u64,
    started: Instant,
    traps: u64,
    message: Option<String>,
) -> MigrateReport {
    let elapsed = started.elapsed().as_secs_f64();
    let s = run.stats;
    MigrateReport {
        run_id: run.run_id.clone(),
        pipeline: run.pipeline.clone(),
        ending,
        resumed,
        plugin_sha256: run.plugin_sha256.clone(),
        source_rows,
        stats: s,
        rows_this_session,
        elapsed_seconds: elapsed,
        rows_per_second: if elapsed > 0.0 { rows_this_session as f64 / elapsed } else { 0.0 },
        traps,
        accounted: source_rows == s.loaded + s.skipped + s.dead_lettered,
        message,
    }
}

struct PipelineEnd {
    ending: Ending,
    rows: u64,
    traps: u64,
    message: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn run_pipeline(
    settings: &Settings,
    plugin: &Arc<Plugin>,
    mut source: Box<dyn SnapshotSource>,
    target: &mut dyn Target,
    run: &RunRecord,
    source_rows: u64,
    options: MigrateOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<PipelineEnd> {
    let workers = settings.workers;
    let batch_size = settings.batch_size;
    let abort = Arc::new(AtomicBool::new(false));

    // Transform workers: one thread and one plugin instance each.
    let mut to_workers = Vec::with_capacity(workers);
    let mut from_workers = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let (in_tx, in_rx) = mpsc::channel::<(u64, SourceBatch)>(CHANNEL_DEPTH);
        let (out_tx, out_rx) = mpsc::channel::<anyhow::Result<Transformed>>(CHANNEL_DEPTH);
        let transformer = plugin.instantiate()?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("ferry-transform-{index}"))
                .spawn(move || transform_worker(transformer, in_rx, out_tx))?,
        );
        to_workers.push(in_tx);
        from_workers.push(out_rx);
    }

    // Extraction: keyset pages from the checkpoint on.
    let start_key = run.last_key;
    let extract_stop = Arc::clone(&stop);
    let extract_abort = Arc::clone(&abort);
    let extractor = tokio::spawn(async move {
        let mut after = start_key;
        let mut seq = 0u64;
        loop {
            if extract_stop.load(Ordering::Relaxed) || extract_abort.load(Ordering::Relaxed) {
                return Ok::<u64, anyhow::Error>(seq);
            }
            let batch = source.read_after(after, batch_size).await?;
            if batch.is_empty() {
                return Ok(seq);
            }
            after = batch.last_key;
            let worker = &to_workers[(seq % to_workers.len() as u64) as usize];
            if worker.send((seq, batch)).await.is_err() {
                return Ok(seq); // the loader stopped; its error is reported
            }
            seq += 1;
        }
    });

    let progress = options.progress.then(|| progress_bar(source_rows, run.stats.extracted));
    let mut previous_key = run.last_key;
    let mut committed_seq = run.batches;
    let mut rows = 0u64;
    let mut traps = 0u64;
    let mut ending = Ending::Completed;
    let mut message = None;
    let mut seq = 0u64;
    let result: anyhow::Result<()> = async {
        loop {
            let slot = (seq % workers as u64) as usize;
            let Some(next) = from_workers[slot].recv().await else { break };
            let t = next?;
            debug_assert_eq!(t.seq, seq);
            traps += t.traps;
            if let Some((key, reason)) = t.fatal {
                ending = Ending::Fatal;
                message = Some(format!("plugin fatal on source row {key}: {reason}"));
                break;
            }
            let batch = LoadBatch {
                run_id: run.run_id.clone(),
                seq: committed_seq,
                previous_key,
                last_key: t.last_key,
                first_key: t.first_key,
                rows: t.rows,
                sources: t.sources,
                dead: t.dead,
                extracted: t.extracted,
                plugin_sha256: plugin.sha256().to_string(),
            };
            target.commit_batch(&batch, settings.on_conflict).await?;
            previous_key = Some(t.last_key);
            committed_seq += 1;
            rows += t.extracted;
            if let Some(bar) = &progress {
                bar.inc(t.extracted);
            }
            seq += 1;
        }
        Ok(())
    }
    .await;
    abort.store(true, Ordering::Relaxed);
    // Unblock and stop the pipeline's other stages.
    drop(from_workers);
    let extracted = extractor.await.context("the extraction task panicked")?;
    for t in threads {
        let _ = t.join();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result?;
    extracted?;
    if ending == Ending::Completed && stop.load(Ordering::Relaxed) {
        ending = Ending::Interrupted;
        message = Some("interrupted by signal after the last committed batch".into());
    }
    Ok(PipelineEnd { ending, rows, traps, message })
}

fn transform_worker(
    mut transformer: Transformer,
    mut input: mpsc::Receiver<(u64, SourceBatch)>,
    output: mpsc::Sender<anyhow::Result<Transformed>>,
) {
    while let Some((seq, batch)) = input.blocking_recv() {
        let result = transform_batch(&mut transformer, seq, batch);
        let failed = result.is_err();
        if output.blocking_send(result).is_err() || failed {
            return;
        }
    }
}

fn transform_batch(transformer: &mut Transformer, seq: u64, batch: SourceBatch) -> anyhow::Result<Transformed> {
    let extracted = batch.len() as u64;
    let first_key = batch
        .rows
        .first()
        .map(|r| r.id)
        .into_iter()
        .chain(batch.unreadable.first().map(|d| d.source_key))
        .min()
        .unwrap_or_default();
    let last_key = batch.last_key.unwrap_or_default();
    let traps_before = transformer.traps();
    let (legacy, outcomes) = transformer.transform_batch(batch.rows)?;
    let mut rows = Vec::with_capacity(legacy.len());
    let mut sources = Vec::with_capacity(legacy.len());
    let mut dead = batch.unreadable;
    let mut fatal = None;
    for (source_row, outcome) in legacy.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Row(row) => {
                rows.push(row);
                sources.push(source_row);
            }
            Outcome::Rejected(reason) => {
                dead.push(DeadLetter { source_key: source_row.id, source_row, kind: DeadLetterKind::Reject, reason })
            }
            Outcome::Trapped(reason) => {
                dead.push(DeadLetter { source_key: source_row.id, source_row, kind: DeadLetterKind::Trap, reason })
            }
            Outcome::Fatal(reason) => {
                fatal.get_or_insert((source_row.id, reason));
            }
        }
    }
    Ok(Transformed {
        seq,
        first_key,
        last_key,
        extracted,
        rows,
        sources,
        dead,
        fatal,
        traps: transformer.traps() - traps_before,
    })
}

fn progress_bar(total: u64, done: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
        )
        .expect("valid progress template"),
    );
    bar.set_position(done);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
