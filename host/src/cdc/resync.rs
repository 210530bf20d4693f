//! `ferry resync --table T`: one table of a running change stream copied
//! again from the source, without stopping the stream or the other
//! tables. The command records the request in the target
//! (`ferry.stream_resyncs`); the running stream does the copy between two
//! of its transactions, a page at a time (`TablesApplier::resync_step`),
//! and records how far it is, so a stream that stops and starts again
//! goes on from the last page. The command waits (`--wait`) and says what
//! became of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engines;
use crate::error::{Error, ErrorKind};
use crate::settings::{Settings, TableSelection};

/// What `ferry resync` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResyncReport {
    pub pipeline: String,
    pub table: String,
    /// Source rows copied so far.
    pub rows: u64,
    /// The copy is complete; otherwise the running stream goes on with it.
    pub done: bool,
}

/// Asks the stream of the pipeline to copy `table` again, then waits up to
/// `wait` for it to be done.
pub async fn resync(
    settings: &Settings,
    selection: &TableSelection,
    table: &str,
    wait: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<ResyncReport> {
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    let stored = target.stream_versions(&settings.pipeline).await?;
    if stored.is_empty() && target.stream_position(&settings.pipeline).await?.is_none() {
        return Err(Error::contract(format!(
            "pipeline {} has no change stream in {}: `ferry resync` copies a table again inside a running \
             `ferry sync` (for a migration, `ferry migrate --restart`)",
            settings.pipeline, settings.target.url
        )));
    }
    let plan = crate::tables::plan_as_of(settings, selection, source.as_mut(), target.as_mut(), &stored).await?;
    let named = plan.tables.iter().find(|t| t.source.name.to_string() == table || t.source.name.name == table);
    let Some(named) = named else {
        let names: Vec<String> = plan.tables.iter().map(|t| t.source.name.to_string()).collect();
        return Err(Error::raise(
            ErrorKind::Config,
            format!("--table {table}: the pipeline's stream has no such table (it has {})", names.join(", ")),
        ));
    };
    let name = named.source.name.to_string();
    target.request_resync(&settings.pipeline, &name).await?;
    let until = Instant::now() + wait;
    loop {
        let now = target.resyncs(&settings.pipeline).await?.into_iter().find(|r| r.table == name);
        let (rows, done) = now.map_or((0, false), |r| (r.rows, r.done));
        if done || Instant::now() >= until || stop.load(Ordering::Relaxed) {
            return Ok(ResyncReport { pipeline: settings.pipeline.clone(), table: name, rows, done });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
