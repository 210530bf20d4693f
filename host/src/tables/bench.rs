//! `ferry plugin bench PATH`: a plugin's own speed inside ferry, on real
//! source rows held in memory — what loading (compiling, or the cache)
//! and instantiating cost, and how many rows per second its transform
//! takes through the sandbox and the contract's adapter. Nothing is
//! written; the database's time is not in the figures.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::plugin::{RowOutcome, TablePlugin};
use crate::settings::{Settings, TableSelection};

/// What `ferry plugin bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub table: String,
    pub sha256: String,
    pub contract: &'static str,
    /// Reading, checking and compiling the component (from the compiled-code
    /// cache when it holds it).
    pub load_seconds: f64,
    /// One instance, told the table's schema.
    pub instantiate_seconds: f64,
    pub rows: u64,
    pub batch_rows: usize,
    /// Transforming every row (best of `repeat` passes).
    pub transform_seconds: f64,
    pub rows_per_second: f64,
    pub rejected: u64,
    pub filtered: u64,
    pub trapped: u64,
}

/// Reads the first `rows` rows (key order) of the plugin table `only` (or
/// the pipeline's one plugin table), then times `path` on them.
pub async fn bench(
    settings: &Settings,
    selection: &TableSelection,
    path: &Path,
    only: Option<&str>,
    rows: usize,
    repeat: usize,
) -> anyhow::Result<BenchReport> {
    let spec = selection.plugin_table(only).map_err(|e| Error::raise(ErrorKind::Config, e))?;
    let options = crate::plugin::LoadOptions {
        pinned_sha256: None,
        ..spec.plugin.as_ref().expect("a plugin table").options.clone()
    };
    let mut source = crate::engines::open_row_source(&settings.source.url, "source").await?;
    let def = source
        .describe(&spec.source)
        .await?
        .ok_or_else(|| Error::contract(format!("table {} does not exist in {}", spec.source, settings.source.url)))?;
    let mut data = Vec::with_capacity(rows);
    let mut after = None;
    while data.len() < rows {
        let page = source.read_page(&def, after.as_ref(), (rows - data.len()).min(settings.batch_size.max(1))).await?;
        if page.rows.is_empty() && page.unreadable.is_empty() {
            break;
        }
        after = page.last_key.clone();
        data.extend(page.rows);
    }
    let name = def.name.to_string();
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        let plugin = TablePlugin::load(path, &options)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut instance = plugin.instantiate()?;
        instance.describe(&def)?;
        let instantiate_seconds = started.elapsed().as_secs_f64();
        let batch_rows = settings.batch_size.max(1);
        let mut best = f64::INFINITY;
        let (mut rejected, mut filtered, mut trapped) = (0, 0, 0);
        for _ in 0..repeat.max(1) {
            (rejected, filtered, trapped) = (0, 0, 0);
            let started = Instant::now();
            for chunk in data.chunks(batch_rows) {
                for outcome in instance.transform_batch(&name, chunk)? {
                    match outcome {
                        RowOutcome::Rows(rows) if rows.is_empty() => filtered += 1,
                        RowOutcome::Rows(_) => {}
                        RowOutcome::Rejected(_) | RowOutcome::Fatal(_) => rejected += 1,
                        RowOutcome::Trapped(_) => trapped += 1,
                    }
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        Ok(BenchReport {
            table: name,
            sha256: plugin.sha256().to_string(),
            contract: plugin.interface(),
            load_seconds,
            instantiate_seconds,
            rows: data.len() as u64,
            batch_rows,
            transform_seconds: best,
            rows_per_second: data.len() as f64 / best.max(f64::MIN_POSITIVE),
            rejected,
            filtered,
            trapped,
        })
    })
}
