//! Which failures are worth retrying: the connection (a server restarting,
//! a network drop, a server too busy to accept one more), never the data or
//! the setup (a SQL error, a missing table, a fenced checkpoint, a TLS
//! certificate that does not verify), which would fail the same way forever.
//!
//! Errors keep their driver error as a source (`anyhow` context over
//! `sqlx::Error`, `PgWireError`, `std::io::Error`), so the decision is made
//! on types and SQLSTATE codes, not on message text.

use std::time::{Duration, Instant};

/// First wait before retrying; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long failures may go on without progress before ferry gives up (a
/// server restart takes seconds; a failover a minute or two).
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Waits between retries of transient failures: exponential, reset by
/// progress, given up after [`RETRY_FOR`] without any.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    failing_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: RETRY_FIRST, failing_since: None }
    }
}

impl Backoff {
    /// A failure: how long to wait before the next attempt, or `None` when
    /// failures have gone on too long (then `failing_for` says how long).
    pub fn failed(&mut self) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RETRY_FOR {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        Some(wait)
    }

    /// Work got done since the last failure: start counting afresh.
    pub fn progressed(&mut self) {
        *self = Backoff::default();
    }

    pub fn failing_for(&self) -> Duration {
        self.failing_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// A failure ferry itself knows to be about the connection (a replication
/// stream that ended, a server that did not answer in time).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// A driver error said in one line (`what: message (detail)`), with whether
/// it is transient decided from the driver's own error before it was
/// flattened (so the message does not repeat its cause).
#[derive(Debug, thiserror::Error)]
#[error("{line}")]
pub struct DriverError {
    pub line: String,
    pub transient: bool,
}

impl DriverError {
    /// `what` failed with the database driver's error `e`.
    pub fn sqlx(what: impl std::fmt::Display, e: &sqlx::Error) -> anyhow::Error {
        let line = format!("{what}: {}", crate::postgres::describe_error(e));
        anyhow::Error::new(DriverError { line, transient: sqlx_transient(e) })
    }
}

/// Whether a sqlx error is about the connection.
pub fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
        _ => false,
    }
}

/// SQLSTATE codes that say the connection or the server's state, not the
/// statement, failed: connection exceptions (class 08), operator
/// intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
/// connect now), too many connections (53300), serialization failure and
/// deadlock (40001, 40P01: the transaction can simply run again), and an
/// object in use (55006: on a quick reconnect the replication slot is still
/// held by the previous connection's walsender until it exits).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55006")
}

/// Whether retrying the operation that failed with `e` can succeed.
pub fn is_transient(e: &anyhow::Error) -> bool {
    for cause in e.chain() {
        if cause.downcast_ref::<Transient>().is_some() || cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<DriverError>() {
            return e.transient;
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return sqlx_transient(e);
        }
        if let Some(e) = cause.downcast_ref::<pgwire_replication::PgWireError>() {
            use pgwire_replication::PgWireError;
            return match e {
                PgWireError::Io(_) | PgWireError::Task(_) => true,
                // "… (SQLSTATE 57P01)": the code is in the text here.
                PgWireError::Server(message) => message
                    .split("SQLSTATE ")
                    .nth(1)
                    .is_some_and(|rest| transient_sqlstate(rest.get(..5).unwrap_or(""))),
                _ => false,
            };
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_retried_and_statements_are_not() {
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).context("connecting");
        assert!(is_transient(&io));
        let shutdown = anyhow::Error::new(pgwire_replication::PgWireError::Server(
            "FATAL: terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        ));
        assert!(is_transient(&shutdown));
        let syntax = anyhow::Error::new(pgwire_replication::PgWireError::Server(
            "ERROR: relation \"users\" does not exist (SQLSTATE 42P01)".into(),
        ));
        assert!(!is_transient(&syntax));
        let slot_busy = anyhow::Error::new(pgwire_replication::PgWireError::Server(
            "ERROR: replication slot \"ferry_test\" is active for PID 4242 (SQLSTATE 55006)".into(),
        ));
        assert!(is_transient(&slot_busy));
        assert!(!is_transient(&anyhow::Error::new(crate::sink::FencedError { run_id: "r".into() })));
        assert!(!is_transient(&anyhow::anyhow!("some message")));
        assert!(is_transient(&anyhow::Error::new(Transient("the stream ended".into())).context("streaming")));
    }
}
