//! PostgreSQL: the source and the target (sink, control store, reader).

mod binary;
pub(crate) mod control;
mod deployments;
pub mod dump;
mod schema_copy;
pub use schema_copy::PgSchemaCopy;
pub mod replication;
mod stream;
mod tables;
mod undo;

pub use tables::PgTables;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::db::DbUrl;
use crate::error::{Error, ErrorKind};
use crate::tls::{FixParam, PgTls, SslMode, Transport};

/// How long to wait for a connection before saying the server is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the relation `name` (e.g. `ferry.runs`) exists: the control
/// tables are created lazily, and reading one a ferry never made is
/// reading nothing.
pub(crate) async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(name).fetch_one(conn).await
}

/// Of the type names `types` (as `format_type` writes them), those this
/// database does not know.
pub async fn unknown_types(conn: &mut PgConnection, types: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut unknown = Vec::new();
    for name in types {
        // to_regtype raises on a malformed name rather than returning NULL.
        let known: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT to_regtype($1) IS NOT NULL").bind(name).fetch_one(&mut *conn).await;
        if !matches!(known, Ok(true)) {
            unknown.push(name.to_string());
        }
    }
    Ok(unknown)
}

/// Connects with the session settings ferry relies on: UTC (so `timestamp`
/// columns are read and written as UTC) and a recognisable application name.
pub async fn connect(url: &DbUrl, role: &str) -> anyhow::Result<PgConnection> {
    connect_with(url, role, &[]).await
}

/// [`connect`] with more session settings. TLS follows the URL's `sslmode`
/// and friends as libpq reads them (see [`crate::tls`]).
pub async fn connect_with(url: &DbUrl, role: &str, settings: &[(&str, &str)]) -> anyhow::Result<PgConnection> {
    let tls =
        PgTls::from_url(url.expose()).map_err(|e| Error::raise(ErrorKind::Config, format!("{role}.url {url}: {e}")))?;
    let options = PgConnectOptions::from_str(url.expose())
        .with_context(|| format!("{role}.url {url} is not a valid PostgreSQL URL"))?
        .options([("TimeZone", "UTC"), ("lock_timeout", "60s")])
        .options(settings.iter().copied())
        .application_name("ferry")
        .log_statements(tracing::log::LevelFilter::Trace)
        // Long scans are expected here; they are not worth a warning.
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
    let options =
        apply_tls(options, &tls).map_err(|e| Error::raise(ErrorKind::Config, format!("{role}.url {url}: {e}")))?;
    let host = crate::tls::url_host(url.expose());
    let attempt = |options: PgConnectOptions| async move {
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Err(_) => Err(None),
            Ok(Err(e)) => Err(Some(e)),
            Ok(Ok(conn)) => Ok(conn),
        }
    };
    let mut result = attempt(options.clone()).await;
    // libpq's `allow`: without TLS first, with TLS if the server insists.
    if tls.mode == SslMode::Allow && matches!(&result, Err(Some(e)) if describe_error(e).contains("no encryption")) {
        result = attempt(options.ssl_mode(PgSslMode::Prefer)).await;
    }
    match result {
        Ok(conn) => Ok(conn),
        Err(None) => Err(Error::transient(format!(
            "cannot connect to {role} PostgreSQL at {url}: no answer within {}s; is the server up and is {role}.url right?",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Err(Some(e)) => {
            let message = describe_error(&e);
            let line = match crate::tls::explain(&message, &host, FixParam::Postgres) {
                Some(cause) => {
                    format!("cannot connect to {role} PostgreSQL at {url} ({}): {cause} [{message}]", tls.describe())
                }
                None => format!(
                    "cannot connect to {role} PostgreSQL at {url}: {message}; is the server up, and are the host, port, user, password and database in {role}.url right?"
                ),
            };
            // Whatever is not worth waiting for is about connecting: the
            // credentials, TLS, the database named.
            let kind = match ErrorKind::of_sqlx(&e) {
                kind @ (ErrorKind::Transient | ErrorKind::Config) => kind,
                _ => ErrorKind::Connect,
            };
            Err(Error::raise(kind, line))
        }
    }
}

/// Sets sqlx's TLS options from the resolved settings (overriding what sqlx
/// read from the URL and environment itself, e.g. `sslrootcert=system`).
/// Rows below which a refused range is retried row by row rather than
/// halved: a range of n rows then costs n attempts, not up to 2n - 1.
const REFUSED_ROW_BY_ROW: usize = 8;

/// What to try after the rows `from..to` were refused together (the
/// isolation by bisection of the sinks): their halves, or each row when few
/// are left. Pushed so that `todo.pop()` takes them in row order.
pub(super) fn split_refused(from: usize, to: usize, todo: &mut Vec<(usize, usize)>) {
    if to - from <= REFUSED_ROW_BY_ROW {
        todo.extend((from..to).rev().map(|i| (i, i + 1)));
    } else {
        let middle = from + (to - from) / 2;
        todo.push((middle, to));
        todo.push((from, middle));
    }
}

fn apply_tls(options: PgConnectOptions, tls: &PgTls) -> Result<PgConnectOptions, String> {
    let mode = match tls.mode {
        // `allow` starts without TLS; `connect_with` retries with it.
        SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    let mut options = options.ssl_mode(mode);
    if let Some(ca) = tls.root_cert_file()? {
        options = options.ssl_root_cert(ca);
    }
    if let Some((cert, key)) = &tls.client {
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    Ok(options)
}

/// Whether an open connection is encrypted, as the server sees it
/// (`pg_stat_ssl`), for `ferry check`.
pub async fn transport(conn: &mut PgConnection, url: &DbUrl) -> anyhow::Result<Transport> {
    let tls = PgTls::from_url(url.expose()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let row: Option<(bool, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&mut *conn)
            .await
            .context("reading pg_stat_ssl")?;
    let (encrypted, version, cipher) = row.unwrap_or((false, None, None));
    Ok(Transport {
        encrypted,
        protocol: version.map(|v| format!("{v} {}", cipher.unwrap_or_default()).trim().to_string()),
        tls,
        local: crate::tls::is_local_host(&crate::tls::url_host(url.expose())),
    })
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

/// Waits (up to a few seconds) until transaction `xid` is visible to new
/// snapshots on `conn`. Logical decoding sends a transaction once its
/// commit record is in the WAL, which is a moment before other sessions
/// see it: a row read back for a change at once may still be the version
/// before it.
pub(crate) async fn wait_visible(conn: &mut PgConnection, xid: u32) -> anyhow::Result<()> {
    // The 32-bit xid in the epoch of the current snapshot's xmax (or the
    // one before, across a wraparound).
    const SQL: &str = "WITH s AS (SELECT pg_current_snapshot() AS snap), \
         x AS (SELECT pg_snapshot_xmax(snap)::text::int8 AS xmax, snap FROM s) \
         SELECT pg_visible_in_snapshot(((((xmax >> 32) - CASE WHEN $1 > (xmax & 4294967295) THEN 1 ELSE 0 END) << 32) \
         | $1)::text::xid8, snap) FROM x";
    let started = std::time::Instant::now();
    loop {
        let visible: bool = sqlx::query_scalar(SQL).bind(i64::from(xid)).fetch_one(&mut *conn).await?;
        if visible {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(5) {
            tracing::warn!(xid, "transaction still invisible after 5 s; reading the row anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether the database refused rows for what they hold (so another subset
/// of the batch may load): a data exception (class 22: a NUL byte, a value
/// too long, a malformed value) or an integrity violation (class 23: NOT
/// NULL, CHECK, foreign key, a unique index). A primary-key conflict under
/// `on_conflict = error` is not: that policy stops the run.
pub(crate) fn refuses_rows(e: &sqlx::Error, policy: crate::config::OnConflict) -> bool {
    let Some(code) = e.as_database_error().and_then(|db| db.code()) else { return false };
    code.starts_with("22")
        || (code.starts_with("23") && !(code == "23505" && policy == crate::config::OnConflict::Error))
}
