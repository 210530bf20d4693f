//! PostgreSQL: the source and the target (sink, control store, reader).

mod changes;
mod copy;
mod source;
mod target;

pub use source::PgSource;
pub use target::PgTarget;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::db::{DbUrl, TableName};
use crate::shape::{Column, TableShape};

/// How long to wait for a connection before saying the server is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with the session settings ferry relies on: UTC (so `timestamp`
/// columns are read and written as UTC) and a recognisable application name.
pub async fn connect(url: &DbUrl, role: &str) -> anyhow::Result<PgConnection> {
    connect_with(url, role, &[]).await
}

/// [`connect`] with more session settings.
pub async fn connect_with(url: &DbUrl, role: &str, settings: &[(&str, &str)]) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url.expose())
        .with_context(|| format!("{role}.url {url} is not a valid PostgreSQL URL"))?
        .options([("TimeZone", "UTC"), ("lock_timeout", "60s")])
        .options(settings.iter().copied())
        .application_name("ferry")
        .log_statements(tracing::log::LevelFilter::Trace)
        // Long scans are expected here; they are not worth a warning.
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Err(_) => anyhow::bail!(
            "cannot connect to {role} PostgreSQL at {url}: no answer within {}s; is the server up and is {role}.url right?",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot connect to {role} PostgreSQL at {url}: {}; is the server up, and are the host, port, user, password and database in {role}.url right?",
            describe_error(&e)
        )),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// A driver error as one line (database errors with their detail).
pub fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            match pg.and_then(|p| p.detail()) {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Reads a table's columns and primary key from the catalogs; `None` if the
/// table does not exist. An unqualified name is resolved by `search_path`.
pub(crate) async fn table_shape(conn: &mut PgConnection, table: &TableName) -> anyhow::Result<Option<TableShape>> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(table.quoted())
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("looking up table {table}"))?;
    let Some(oid) = oid else { return Ok(None) };
    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, NULL), NOT a.attnotnull \
         FROM pg_attribute a WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1::int8::oid AND i.indisprimary ORDER BY k.ord",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(TableShape {
        columns: columns.into_iter().map(|(name, data_type, nullable)| Column { name, data_type, nullable }).collect(),
        primary_key,
    }))
}
