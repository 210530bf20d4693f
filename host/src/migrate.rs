//! What every run of `ferry migrate` shares: how it starts
//! ([`MigrateOptions`]), how it ends ([`Ending`]), and how it survives a
//! server restart ([`resuming`] the same run after a [`RunStopped`]). The
//! pipeline itself is [`crate::tables::migrate`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

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

impl Ending {
    /// As reports and notifications say it.
    pub fn describe(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::AlreadyCompleted => "already completed (nothing to do)",
            Ending::Fatal => "stopped: plugin fatal",
            Ending::Interrupted => "interrupted (resumable)",
        }
    }
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
    // Set once a run under way was lost: from then on a server that cannot
    // be reached yet is one still coming back, and is waited for.
    let mut resuming = false;
    loop {
        let started = Instant::now();
        match attempt(options).await {
            // Only a run that was under way is resumed: a server that cannot
            // be reached at the start is more likely a wrong URL than a restart.
            Err(e)
                if (resuming || e.downcast_ref::<RunStopped>().is_some())
                    && crate::retry::is_transient(&e)
                    && !stop.load(Ordering::Relaxed) =>
            {
                resuming = true;
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

pub(crate) fn progress_bar(total: u64, done: u64) -> indicatif::ProgressBar {
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
