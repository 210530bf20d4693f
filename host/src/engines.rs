//! Opening the source and target for the engine a URL names. The rest of
//! ferry sees only the role traits.

use crate::control::ControlStore;
use crate::db::{DbUrl, Engine};
use crate::settings::Settings;
use crate::tls::Transport;

/// How a connection to `url` is protected (`None` for SQLite files, which
/// cross no network). Opens a connection of its own.
pub async fn transport(url: &DbUrl, role: &str) -> anyhow::Result<Option<Transport>> {
    match url.engine() {
        Engine::Postgres => {
            let mut conn = crate::postgres::connect(url, role).await?;
            Ok(Some(crate::postgres::transport(&mut conn, url).await?))
        }
        Engine::Sqlite => Ok(None),
    }
}

/// A database read table by table (any shape).
pub trait RowTarget:
    crate::sink::RowSink
    + crate::sink::RowChangeSink
    + crate::source::RowSource
    + ControlStore
    + crate::control::TableControl
    + crate::deployments::DeploymentStore
    + crate::undo_journal::UndoJournal
{
}
impl<
    T: crate::sink::RowSink
        + crate::sink::RowChangeSink
        + crate::source::RowSource
        + ControlStore
        + crate::control::TableControl
        + crate::deployments::DeploymentStore
        + crate::undo_journal::UndoJournal,
> RowTarget for T
{
}

/// Opens the replication catalog of a change stream's source (PostgreSQL:
/// logical replication; another engine has none).
pub async fn open_replication_source(url: &DbUrl) -> anyhow::Result<Box<dyn crate::replication::ReplicationSource>> {
    match url.engine() {
        Engine::Postgres => Ok(Box::new(crate::postgres::replication::PgReplication::connect(url).await?)),
        engine => Err(crate::error::Error::contract(format!(
            "{url}: a change stream reads PostgreSQL's logical replication; a {engine} source has none              (use `ferry migrate`)"
        ))),
    }
}

/// Opens a database to read tables of any shape from (`role`: "source" or
/// "target", for messages; a SQLite source is opened read-only).
pub async fn open_row_source(url: &DbUrl, role: &str) -> anyhow::Result<Box<dyn crate::source::RowSource>> {
    Ok(match url.engine() {
        Engine::Postgres => Box::new(crate::postgres::PgTables::connect(url, role).await?),
        Engine::Sqlite => Box::new(crate::sqlite::SqliteTables::connect(url, role).await?),
    })
}

/// Opens the pipeline's target: rows, control store, reads. A PostgreSQL
/// target is written (and read back) with COPY in text format only when
/// `target.load_method = "copy-text"`.
pub async fn open_row_target(settings: &Settings) -> anyhow::Result<Box<dyn RowTarget>> {
    let url = &settings.target.url;
    Ok(match url.engine() {
        Engine::Postgres => {
            let mut target = crate::postgres::PgTables::connect(url, "target").await?;
            target.text_only = settings.load_method == crate::config::LoadMethod::CopyText;
            Box::new(target)
        }
        Engine::Sqlite => Box::new(crate::sqlite::SqliteTables::connect(url, "target").await?),
    })
}

/// The control store of the pipeline's target.
pub async fn open_control(settings: &Settings) -> anyhow::Result<Box<dyn ControlStore>> {
    Ok(open_row_target(settings).await?)
}

/// Plans the copy of the schema around `tables` (copied as they are,
/// under their own names) from the pipeline's source into its target.
pub async fn open_schema_copy(
    settings: &Settings,
    tables: &[crate::db::TableName],
) -> anyhow::Result<std::sync::Arc<dyn crate::schema_copy::SchemaCopy>> {
    match (settings.source.url.engine(), settings.target.url.engine()) {
        (Engine::Postgres, Engine::Postgres) => {
            let tools =
                crate::postgres::dump::Tools { dir: settings.schema.bin_dir.clone(), owners: settings.schema.owners };
            let scope = match settings.schema.copy {
                crate::config::SchemaCopy::Database => crate::postgres::dump::Scope::Database,
                _ => crate::postgres::dump::Scope::Tables,
            };
            let copy =
                crate::postgres::PgSchemaCopy::plan(&settings.source.url, &settings.target.url, tables, scope, &tools)
                    .await?;
            Ok(std::sync::Arc::new(copy))
        }
        (source, target) => Err(crate::error::Error::contract(format!(
            "the schema is copied between PostgreSQL databases only, not from {source} to {target}"
        ))),
    }
}

/// Of `(table, column, type)`, those whose type the target does not know
/// (a PostgreSQL target; another engine maps every type).
pub async fn missing_types(
    settings: &Settings,
    columns: &[(String, String, String)],
) -> anyhow::Result<Vec<(String, String, String)>> {
    if settings.target.url.engine() != Engine::Postgres || columns.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = crate::postgres::connect(&settings.target.url, "target").await?;
    let mut types: Vec<&str> = columns.iter().map(|c| c.2.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let missing: Vec<String> = crate::postgres::unknown_types(&mut conn, &types).await?;
    Ok(columns.iter().filter(|c| missing.contains(&c.2)).cloned().collect())
}
