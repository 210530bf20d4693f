//! SQLite: the embedded default, as source and as target.

pub(crate) mod control;
mod deployments;
mod source;
mod stream;
mod tables;
mod target;

pub use source::SqliteSource;
pub use tables::SqliteTables;
pub use target::SqliteTarget;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Row};

use crate::db::{DbUrl, TableName};
use crate::shape::{Column, TableShape};

/// Opens a database file. The source is opened read-only (ferry never
/// writes the legacy database); the target is created if missing and put in
/// WAL mode, whose commits survive a killed process.
pub async fn connect(url: &DbUrl, role: &str, writable: bool) -> anyhow::Result<SqliteConnection> {
    let options = SqliteConnectOptions::from_str(url.expose())
        .with_context(|| format!("{role}.url {url} is not a valid SQLite URL (write sqlite://path/to/file.db)"))?
        .busy_timeout(Duration::from_secs(30))
        .log_statements(tracing::log::LevelFilter::Trace)
        // Long scans are expected here; they are not worth a warning.
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
    let options = if writable {
        options.create_if_missing(true).journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal)
    } else {
        options.read_only(true)
    };
    options.connect().await.map_err(|e| {
        let path = url.sqlite_path().unwrap_or("?");
        let hint = if !writable && !std::path::Path::new(path).exists() {
            format!("the file {path} does not exist")
        } else {
            e.to_string()
        };
        crate::error::Error::raise(
            crate::error::ErrorKind::Connect,
            format!("cannot open {role} SQLite database {url}: {hint}; check {role}.url"),
        )
    })
}

/// SQLite has one namespace per attached database; `main.users` and `users`
/// are the same table.
pub(crate) fn table_sql(table: &TableName) -> String {
    table.quoted()
}

/// Columns and primary key from `PRAGMA table_info`; `None` if no such table.
pub(crate) async fn table_shape(conn: &mut SqliteConnection, table: &TableName) -> anyhow::Result<Option<TableShape>> {
    let schema = table.schema.as_deref().unwrap_or("main");
    let sql = format!("PRAGMA {}.table_info({})", crate::db::quote_ident(schema), crate::db::quote_ident(&table.name));
    let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("looking up table {table}"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut columns = Vec::new();
    let mut key: Vec<(i64, String)> = Vec::new();
    for row in rows {
        let name: String = row.try_get("name")?;
        let data_type: String = row.try_get("type")?;
        let notnull: i64 = row.try_get("notnull")?;
        let pk: i64 = row.try_get("pk")?;
        if pk > 0 {
            key.push((pk, name.clone()));
        }
        columns.push(Column { name, data_type: data_type.to_ascii_lowercase(), nullable: notnull == 0 });
    }
    key.sort();
    Ok(Some(TableShape { columns, primary_key: key.into_iter().map(|(_, n)| n).collect() }))
}
