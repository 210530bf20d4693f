//! Exit codes: each means one thing, so scripts can act on them.

/// Success.
pub const OK: i32 = 0;
/// An error stopped the command (unreachable database, bad plugin, …).
pub const ERROR: i32 = 1;
/// Bad command line or configuration.
pub const USAGE: i32 = 2;
/// `check` found a failing item, or `validate` found a mismatch.
pub const VERIFY_FAILED: i32 = 3;
/// `migrate` completed, and some rows are in the dead-letter table.
pub const DEAD_LETTERS: i32 = 4;
/// `migrate` stopped on a plugin `fatal`; the checkpoint is intact.
pub const FATAL: i32 = 5;
/// `migrate` was interrupted by a signal after its last committed batch.
pub const INTERRUPTED: i32 = 6;
