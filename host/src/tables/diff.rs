//! `ferry plugin diff OLD NEW`: two versions of a table's plugin on the
//! same real source rows, and where their outputs differ — per field, with
//! counts and examples — before one replaces the other. Nothing is written.

use std::path::Path;

use serde::Serialize;

use crate::deployments::ShadowReport;
use crate::error::{Error, ErrorKind};
use crate::keyset::Key;
use crate::plugin::TablePlugin;
use crate::settings::{Settings, TableSelection};

/// Two versions on one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    pub table: String,
    #[serde(flatten)]
    pub report: ShadowReport,
}

/// What `ferry plugin diff` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub old_sha256: String,
    pub new_sha256: String,
    pub tables: Vec<TableDiff>,
}

impl DiffReport {
    pub fn differing(&self) -> u64 {
        self.tables.iter().map(|t| t.report.differing).sum()
    }
}

/// Runs `old` and `new` on the first `sample` rows (key order) of every
/// table of the pipeline that has a plugin (or of `only`).
pub async fn diff(
    settings: &Settings,
    selection: &TableSelection,
    old: &Path,
    new: &Path,
    only: Option<&str>,
    sample: usize,
) -> anyhow::Result<DiffReport> {
    let specs: Vec<_> = match only {
        Some(_) => vec![selection.plugin_table(only).map_err(|e| Error::raise(ErrorKind::Config, e))?],
        None => selection.tables.iter().filter(|s| s.plugin.is_some()).collect(),
    };
    let Some(first) = specs.first() else {
        return Err(Error::raise(ErrorKind::Config, "no [[tables]] entry of the pipeline has a plugin"));
    };
    let options =
        crate::plugin::LoadOptions { pinned_sha256: None, ..first.plugin.as_ref().expect("filtered").options.clone() };
    let load = |path: &Path| tokio::task::block_in_place(|| TablePlugin::load(path, &options));
    let (old_plugin, new_plugin) = (load(old)?, load(new)?);
    let mut source = crate::engines::open_row_source(&settings.source.url, "source").await?;
    let mut report = DiffReport {
        old_sha256: old_plugin.sha256().to_string(),
        new_sha256: new_plugin.sha256().to_string(),
        tables: Vec::new(),
    };
    for spec in specs {
        let def = source.describe(&spec.source).await?.ok_or_else(|| {
            Error::contract(format!("table {} does not exist in {}", spec.source, settings.source.url))
        })?;
        let name = def.name.to_string();
        let outputs = tokio::task::block_in_place(|| {
            let mut old = old_plugin.instantiate()?;
            let outputs = old.describe(&def)?;
            anyhow::Ok((old, outputs))
        });
        let (mut old_instance, outputs) = outputs?;
        let mut new_instance = tokio::task::block_in_place(|| new_plugin.replacing(&old_plugin, &def))
            .map_err(|reason| Error::contract(format!("{}: {reason}", new.display())))?;
        let page = source.read_page(&def, None, sample.max(1)).await?;
        let (old_out, new_out) = tokio::task::block_in_place(|| {
            anyhow::Ok((
                old_instance.transform_batch(&name, &page.rows)?,
                new_instance.transform_batch(&name, &page.rows)?,
            ))
        })?;
        let columns = |table: &str| {
            outputs
                .iter()
                .find(|d| d.name.name == table || d.name.to_string() == table)
                .map(|d| d.columns.iter().map(|c| c.name.clone()).collect())
        };
        let mut table = ShadowReport::default();
        for ((row, a), b) in page.rows.iter().zip(&old_out).zip(&new_out) {
            table.add(|| Key::of(&def, row).label(), a, b, &columns);
        }
        report.tables.push(TableDiff { table: name, report: table });
    }
    Ok(report)
}
