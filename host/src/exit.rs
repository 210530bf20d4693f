//! Exit codes: each means one thing, so scripts can act on them. The same
//! for every command; an error's code comes from its kind
//! ([`crate::error::ErrorKind::exit_code`]), mapped there once.

/// Success (and a daemon stopped by SIGTERM/SIGINT after acknowledging).
pub const OK: i32 = 0;
/// An error ferry does not classify stopped the command (a statement the
/// database refused, a plugin `fatal` outside a migration, a bug).
pub const ERROR: i32 = 1;
/// Bad command line or configuration; nothing was written.
pub const USAGE: i32 = 2;
/// `check` found a failing item, `validate` a mismatch, a `cutover` gate
/// did not hold, or `rollback` left a table not exactly as before the run.
pub const VERIFY_FAILED: i32 = 3;
/// `migrate`, `sync` or `apply` completed, and some rows or changes are in
/// the dead-letter tables.
pub const DEAD_LETTERS: i32 = 4;
/// Stopped on a plugin `fatal`; the checkpoint is intact.
pub const FATAL: i32 = 5;
/// `migrate` was interrupted by a signal after its last committed batch.
pub const INTERRUPTED: i32 = 6;
/// A database or broker cannot be reached or connected to (refused, no
/// answer, authentication, TLS, no such database), or the connection kept
/// failing longer than ferry retries.
pub const CONNECT: i32 = 7;
/// A database or the plugin does not match what the pipeline needs (a
/// missing table or column, no primary key, the target not the plugin's
/// output, a plugin of another contract or pin, wal_level, privileges).
pub const CONTRACT: i32 = 8;
/// The plugin cannot be used: not a component, does not compile or
/// instantiate in the sandbox.
pub const PLUGIN: i32 = 9;
/// A key already in the target under `on_conflict = "error"`, or another
/// ferry running the same pipeline (the checkpoint moved); nothing of the
/// batch was written.
pub const CONFLICT: i32 = 10;
/// A change stream stopped while paused on a schema change it cannot
/// apply as it is, or with a table held alone for one (`ferry status` says
/// why and how to resolve it); the checkpoint is intact, just before the
/// change.
pub const PAUSED: i32 = 11;
