//! ferry's one error type. Every failure that stops a command has an
//! [`ErrorKind`], and the kind decides, once for every command, whether a
//! daemon retries it (only [`ErrorKind::Transient`]) and the process's exit
//! code ([`ErrorKind::exit_code`], listed in [`crate::exit`]).
//!
//! Errors travel up as `anyhow::Error`, gaining context on the way; their
//! kind is, in this order:
//! - an [`Error`], raised by code that knows the kind (a connection that
//!   did not answer, a table the pipeline needs that the database lacks, a
//!   driver error flattened into one line by [`Error::driver`]);
//! - one of the detailed errors, each of one kind: [`ConfigError`],
//!   [`PluginError`], [`ConflictError`], [`FencedError`];
//! - a driver error still in the chain (`sqlx`, pgwire-replication, I/O),
//!   judged by its type and SQLSTATE, never by its message text.
//!
//! Anything else is [`ErrorKind::Fatal`]: a failure ferry cannot classify
//! is not retried.

use crate::config::ConfigError;
use crate::plugin::PluginError;
use crate::sink::{ConflictError, FencedError};

/// What kind of failure stopped a command, and so what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The configuration or command line is wrong: fix `ferry.toml` or the
    /// flags. Found before anything is written.
    Config,
    /// A database or broker cannot be connected to for a reason that does
    /// not go away by waiting: authentication, TLS verification, a database
    /// that does not exist.
    Connect,
    /// A database or the plugin does not match what the pipeline needs: a
    /// missing table or column, no primary key, a target shape that is not
    /// the plugin's output, a plugin of another contract or pin, wal_level,
    /// missing privileges. Fix the schema, the plugin or the configuration.
    Contract,
    /// The plugin cannot be used at all: not a component, does not compile
    /// or instantiate in the sandbox.
    Plugin,
    /// A row's key already exists in the target under
    /// `on_conflict = "error"`; nothing of its batch was written.
    Conflict,
    /// The stored checkpoint moved under this process: another ferry is
    /// running the same pipeline.
    Fenced,
    /// The connection failed (a server restarting, a network drop, a server
    /// too busy); retrying can succeed. Daemons retry these with backoff; a
    /// command that gives up reports it.
    Transient,
    /// Anything else: a statement the database refused for a reason ferry
    /// does not classify, a plugin `fatal` outside a migration, a bug.
    Fatal,
}

impl ErrorKind {
    /// The kind of `e`: a kind ferry gave it (an [`Error`] or one of the
    /// detailed errors, at any layer, as a source or as context), else the
    /// first driver error in its chain.
    pub fn of(e: &anyhow::Error) -> ErrorKind {
        // `downcast_ref` sees context values too; a chain walk would not.
        if let Some(e) = e.downcast_ref::<Error>() {
            return e.kind;
        }
        if e.downcast_ref::<ConfigError>().is_some() {
            return ErrorKind::Config;
        }
        if let Some(e) = e.downcast_ref::<PluginError>() {
            return e.kind();
        }
        if e.downcast_ref::<ConflictError>().is_some() {
            return ErrorKind::Conflict;
        }
        if e.downcast_ref::<FencedError>().is_some() {
            return ErrorKind::Fenced;
        }
        e.chain().find_map(ErrorKind::of_driver).unwrap_or(ErrorKind::Fatal)
    }

    fn of_driver(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return Some(ErrorKind::of_sqlx(e));
        }
        if let Some(e) = cause.downcast_ref::<pgwire_replication::PgWireError>() {
            use pgwire_replication::PgWireError;
            return Some(match e {
                PgWireError::Io(_) | PgWireError::Task(_) => ErrorKind::Transient,
                PgWireError::Tls(_) | PgWireError::Auth(_) => ErrorKind::Connect,
                // "… (SQLSTATE 57P01)": the code is in the text here.
                PgWireError::Server(message) => message
                    .split("SQLSTATE ")
                    .nth(1)
                    .and_then(|rest| rest.get(..5))
                    .map_or(ErrorKind::Fatal, ErrorKind::of_sqlstate),
                _ => ErrorKind::Fatal,
            });
        }
        if cause.is::<std::io::Error>() {
            return Some(ErrorKind::Transient);
        }
        None
    }

    /// The kind of a database driver error.
    pub fn of_sqlx(e: &sqlx::Error) -> ErrorKind {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                ErrorKind::Transient
            }
            sqlx::Error::Tls(_) => ErrorKind::Connect,
            sqlx::Error::Configuration(_) => ErrorKind::Config,
            sqlx::Error::Database(db) => db.code().map_or(ErrorKind::Fatal, |c| ErrorKind::of_sqlstate(&c)),
            _ => ErrorKind::Fatal,
        }
    }

    /// The kind of a PostgreSQL SQLSTATE code.
    ///
    /// Transient: connection exceptions (class 08), operator intervention
    /// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
    /// now), too many connections (53300), serialization failure and
    /// deadlock (40001, 40P01: the transaction can simply run again), and an
    /// object in use (55006: on a quick reconnect the replication slot is
    /// still held by the previous connection's walsender until it exits).
    /// Connect: authentication (class 28), no such database (3D000).
    /// Contract: undefined or insufficiently privileged objects (class 42:
    /// a table or column that is not there, a missing privilege), no such
    /// schema (3F000), an object in the wrong state (55000, e.g. a
    /// replication slot of another plugin).
    pub fn of_sqlstate(code: &str) -> ErrorKind {
        match code {
            c if c.starts_with("08") => ErrorKind::Transient,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55006" => ErrorKind::Transient,
            c if c.starts_with("28") => ErrorKind::Connect,
            "3D000" => ErrorKind::Connect,
            c if c.starts_with("42") => ErrorKind::Contract,
            "3F000" | "55000" => ErrorKind::Contract,
            _ => ErrorKind::Fatal,
        }
    }

    /// The process exit code of a command stopped by an error of this kind
    /// (the codes are documented in [`crate::exit`] and the README).
    pub fn exit_code(self) -> i32 {
        use crate::exit;
        match self {
            ErrorKind::Config => exit::USAGE,
            ErrorKind::Connect | ErrorKind::Transient => exit::CONNECT,
            ErrorKind::Contract => exit::CONTRACT,
            ErrorKind::Plugin => exit::PLUGIN,
            ErrorKind::Conflict | ErrorKind::Fenced => exit::CONFLICT,
            ErrorKind::Fatal => exit::ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Contract => "contract",
            ErrorKind::Plugin => "plugin",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error raised with its kind: a message that says what, where and how
/// to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn raise(kind: ErrorKind, message: impl std::fmt::Display) -> anyhow::Error {
        anyhow::Error::new(Error { kind, message: message.to_string() })
    }

    /// A database or pipeline does not match what the pipeline needs.
    pub fn contract(message: impl std::fmt::Display) -> anyhow::Error {
        Error::raise(ErrorKind::Contract, message)
    }

    /// A connection failure worth retrying.
    pub fn transient(message: impl std::fmt::Display) -> anyhow::Error {
        Error::raise(ErrorKind::Transient, message)
    }

    /// `what` failed with the database driver's error `e`, said in one line
    /// (`what: message (detail)`), its kind decided from the driver's error
    /// before it is flattened (so the message does not repeat its cause).
    pub fn driver(what: impl std::fmt::Display, e: &sqlx::Error) -> anyhow::Error {
        let message = format!("{what}: {}", crate::postgres::describe_error(e));
        Error::raise(ErrorKind::of_sqlx(e), message)
    }
}

/// Whether retrying the operation that failed with `e` can succeed.
pub fn is_transient(e: &anyhow::Error) -> bool {
    ErrorKind::of(e) == ErrorKind::Transient
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    fn server(message: &str) -> anyhow::Error {
        anyhow::Error::new(PgWireError::Server(message.into()))
    }

    #[test]
    fn connections_are_retried_and_statements_are_not() {
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).context("connecting");
        assert!(is_transient(&io));
        assert!(is_transient(&server("FATAL: terminating connection due to administrator command (SQLSTATE 57P01)")));
        assert!(is_transient(&server(
            "ERROR: replication slot \"ferry_test\" is active for PID 4242 (SQLSTATE 55006)"
        )));
        assert!(!is_transient(&anyhow::Error::new(FencedError { run_id: "r".into() })));
        assert!(!is_transient(&anyhow::anyhow!("some message")));
        assert!(is_transient(&Error::transient("the stream ended").context("streaming")));
    }

    #[test]
    fn each_failure_has_one_kind_and_one_exit_code() {
        let undefined = server("ERROR: relation \"users\" does not exist (SQLSTATE 42P01)");
        assert_eq!(ErrorKind::of(&undefined), ErrorKind::Contract);
        assert_eq!(
            ErrorKind::of(&server("FATAL: password authentication failed (SQLSTATE 28P01)")),
            ErrorKind::Connect
        );
        let config = ConfigError::Invalid { path: "ferry.toml".into(), message: "x".into() };
        assert_eq!(ErrorKind::of(&anyhow::Error::new(config).context("loading")), ErrorKind::Config);
        let conflict = anyhow::Error::new(ConflictError { table: "t".into(), key: "1".into() });
        assert_eq!(ErrorKind::of(&conflict), ErrorKind::Conflict);
        // A kind ferry gave wins over the driver error it explains, even as
        // context.
        let wrapped = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::Other))
            .context(Error { kind: ErrorKind::Contract, message: "the target has no table t".into() });
        assert_eq!(ErrorKind::of(&wrapped), ErrorKind::Contract);
        assert_eq!(ErrorKind::of(&anyhow::anyhow!("unclassified")), ErrorKind::Fatal);
        let codes: std::collections::HashSet<i32> = [
            ErrorKind::Config,
            ErrorKind::Connect,
            ErrorKind::Contract,
            ErrorKind::Plugin,
            ErrorKind::Conflict,
            ErrorKind::Fatal,
        ]
        .into_iter()
        .map(ErrorKind::exit_code)
        .collect();
        assert_eq!(codes.len(), 6, "distinct actions get distinct exit codes");
        assert_eq!(ErrorKind::Transient.exit_code(), ErrorKind::Connect.exit_code());
    }
}
