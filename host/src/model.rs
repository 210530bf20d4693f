//! The rows that flow through ferry, as plain Rust types.
//!
//! These mirror the WIT records of `ferry:transform/transform-user` (see
//! `wit/transform.wit`); only `plugin::bindings` converts between the two.

use serde::Serialize;

/// A row of the legacy `users` table, as extracted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyUser {
    /// The source primary key.
    pub id: i64,
    pub name: Option<String>,
    pub email: Option<String>,
    /// Microseconds since the Unix epoch, UTC.
    pub created_at: Option<i64>,
    /// JSON text exactly as stored in the source (possibly invalid JSON).
    pub metadata: Option<String>,
}

/// A row of the new `users` table, as produced by the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewUser {
    /// The target primary key.
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// Microseconds since the Unix epoch, UTC.
    pub created_at: i64,
    /// A JSON object, as text.
    pub settings: String,
}

/// What became of one source row in the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Transformed: load it.
    Row(NewUser),
    /// The plugin rejected the row: dead-letter it, go on.
    Rejected(String),
    /// The plugin trapped on this row (panic, deadline, memory cap): dead-letter
    /// it with the trap message, go on with a fresh instance.
    Trapped(String),
    /// The plugin asked the run to stop.
    Fatal(String),
}

/// Why a row was dead-lettered; stored in the control tables as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    /// The source row could not be read into the contract's types.
    Extract,
    /// The plugin returned `reject`.
    Reject,
    /// The plugin trapped on the row.
    Trap,
    /// The target database refused the transformed row (a NUL byte in text,
    /// a value too long, a NOT NULL or CHECK violation…).
    Load,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Extract => "extract",
            DeadLetterKind::Reject => "reject",
            DeadLetterKind::Trap => "trap",
            DeadLetterKind::Load => "load",
        }
    }
}
