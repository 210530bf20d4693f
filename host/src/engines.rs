//! Opening the source and target for the engine a URL names. The rest of
//! ferry sees only the role traits.

use crate::cdc::apply::ChangeSink;
use crate::config::LoadMethod;
use crate::control::ControlStore;
use crate::db::{DbUrl, Engine};
use crate::settings::{Endpoint, Settings};
use crate::sink::{Sink, TargetReader};
use crate::source::SnapshotSource;
use crate::tls::Transport;

/// Everything a target does: load, keep control state, read back.
pub trait Target: Sink + ControlStore + TargetReader {}
impl<T: Sink + ControlStore + TargetReader> Target for T {}

/// A target that also applies change streams.
pub trait ChangeTarget: Target + ChangeSink {}
impl<T: Target + ChangeSink> ChangeTarget for T {}

/// Opens the target for `ferry apply`. Change streams are applied into
/// PostgreSQL targets (SQLite is not implemented yet).
pub async fn open_change_target(settings: &Settings) -> anyhow::Result<Box<dyn ChangeTarget>> {
    let t = &settings.target;
    match t.url.engine() {
        Engine::Postgres => Ok(Box::new(
            crate::postgres::PgTarget::connect(
                &t.url,
                &t.table,
                settings.load_method,
                settings.source.table.to_string(),
            )
            .await?,
        )),
        Engine::Sqlite => Err(crate::error::Error::raise(
            crate::error::ErrorKind::Config,
            format!(
                "applying the users pipeline's change streams into SQLite ({}) is not supported; use a PostgreSQL \
                 target, or a many-table pipeline ([[tables]]), which streams into SQLite too",
                t.url
            ),
        )),
    }
}

pub async fn open_source(source: &Endpoint) -> anyhow::Result<Box<dyn SnapshotSource>> {
    Ok(match source.url.engine() {
        Engine::Postgres => Box::new(crate::postgres::PgSource::connect(&source.url, &source.table).await?),
        Engine::Sqlite => Box::new(crate::sqlite::SqliteSource::connect(&source.url, &source.table).await?),
    })
}

pub async fn open_target(settings: &Settings) -> anyhow::Result<Box<dyn Target>> {
    let t = &settings.target;
    let source_table = settings.source.table.to_string();
    Ok(match t.url.engine() {
        Engine::Postgres => {
            let method: LoadMethod = settings.load_method;
            Box::new(crate::postgres::PgTarget::connect(&t.url, &t.table, method, source_table).await?)
        }
        Engine::Sqlite => Box::new(
            crate::sqlite::SqliteTarget::connect(&t.url, &t.table, settings.pipeline.clone(), source_table).await?,
        ),
    })
}

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
{
}
impl<
    T: crate::sink::RowSink
        + crate::sink::RowChangeSink
        + crate::source::RowSource
        + ControlStore
        + crate::control::TableControl
        + crate::deployments::DeploymentStore,
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

/// Opens the target of a many-table pipeline: rows, control store, reads.
pub async fn open_row_target(url: &DbUrl) -> anyhow::Result<Box<dyn RowTarget>> {
    Ok(match url.engine() {
        Engine::Postgres => Box::new(crate::postgres::PgTables::connect(url, "target").await?),
        Engine::Sqlite => Box::new(crate::sqlite::SqliteTables::connect(url, "target").await?),
    })
}

/// The control store of the pipeline's target (either kind of pipeline).
pub async fn open_control(settings: &Settings) -> anyhow::Result<Box<dyn ControlStore>> {
    if settings.tables.is_some() {
        Ok(match settings.target.url.engine() {
            Engine::Postgres => Box::new(crate::postgres::PgTables::connect(&settings.target.url, "target").await?),
            Engine::Sqlite => Box::new(crate::sqlite::SqliteTables::connect(&settings.target.url, "target").await?),
        })
    } else {
        let target = open_target(settings).await?;
        Ok(Box::new(ControlOf(target)))
    }
}

/// A `users` target seen as its control store.
struct ControlOf(Box<dyn Target>);

#[async_trait::async_trait]
impl ControlStore for ControlOf {
    async fn ensure_control_tables(&mut self) -> anyhow::Result<()> {
        self.0.ensure_control_tables().await
    }
    async fn latest_run(&mut self, pipeline: &str) -> anyhow::Result<Option<crate::control::RunRecord>> {
        self.0.latest_run(pipeline).await
    }
    async fn insert_run(&mut self, run: &crate::control::RunRecord) -> anyhow::Result<()> {
        self.0.insert_run(run).await
    }
    async fn set_status(
        &mut self,
        run_id: &str,
        status: crate::control::RunStatus,
        message: Option<&str>,
    ) -> anyhow::Result<()> {
        self.0.set_status(run_id, status, message).await
    }
    async fn dead_letters(
        &mut self,
        run_id: &str,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<crate::control::DeadLetterRecord>> {
        self.0.dead_letters(run_id, limit).await
    }
    async fn dead_letter_keys(&mut self, run_id: &str, kind: &str) -> anyhow::Result<Vec<String>> {
        self.0.dead_letter_keys(run_id, kind).await
    }
    async fn plugin_versions(&mut self, run_id: &str) -> anyhow::Result<Vec<String>> {
        self.0.plugin_versions(run_id).await
    }
}
