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
        Engine::Sqlite => anyhow::bail!(
            "applying change streams into SQLite ({}) is not supported yet; use a PostgreSQL target",
            t.url
        ),
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
