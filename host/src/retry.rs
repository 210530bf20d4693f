//! Which failures are worth retrying: the connection (a server restarting,
//! a network drop, a server too busy to accept one more), never the data or
//! the setup (a SQL error, a missing table, a fenced checkpoint, a TLS
//! certificate that does not verify), which would fail the same way forever.
//!
//! The decision is the error's kind ([`crate::error::ErrorKind`]), made on
//! types and SQLSTATE codes, not on message text; this module is the waiting.

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

/// Whether retrying the operation that failed with `e` can succeed: its
/// kind is [`crate::error::ErrorKind::Transient`].
pub use crate::error::is_transient;
