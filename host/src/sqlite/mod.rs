//! SQLite: the embedded default, as source and as target.

pub(crate) mod control;
mod deployments;
mod stream;
mod tables;
mod undo;

pub use tables::SqliteTables;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

use crate::db::DbUrl;

/// Whether table `name` exists: the control tables are created lazily,
/// and reading one ferry never made is reading nothing.
pub(crate) async fn exists(conn: &mut SqliteConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1")
        .bind(name)
        .fetch_one(conn)
        .await
}

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

/// Whether SQLite refused rows for what they hold (so the other rows of the
/// batch may load): NOT NULL, CHECK, a foreign key, a STRICT column's type,
/// or a unique index other than a key conflict under `on_conflict = error`
/// (that policy stops the run).
pub(crate) fn refuses_rows(e: &sqlx::Error, policy: crate::config::OnConflict) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    match db.kind() {
        sqlx::error::ErrorKind::NotNullViolation
        | sqlx::error::ErrorKind::CheckViolation
        | sqlx::error::ErrorKind::ForeignKeyViolation => true,
        sqlx::error::ErrorKind::UniqueViolation => policy != crate::config::OnConflict::Error,
        // SQLITE_CONSTRAINT_DATATYPE: a value of the wrong type in a STRICT table.
        _ => db.code().as_deref() == Some("3091"),
    }
}
