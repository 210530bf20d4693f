//! What applying a change stream reports and how it is tuned, for both
//! inputs: `ferry apply` (Debezium events) and `ferry sync` (pgoutput).
//! The appliers are in [`super::tables`].

use serde::Serialize;

use super::debezium::IntegerTime;
use super::position::Position;

/// Where a pipeline's change stream stands in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamCheckpoint {
    /// The last applied position (`None`: nothing streamed yet).
    pub position: Option<Position>,
    /// Whether any streamed (non-snapshot) change has been applied.
    pub streaming: bool,
}

/// What `ferry apply` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub pipeline: String,
    pub lines: u64,
    pub tombstones: u64,
    /// Items already applied before (positions at or before the checkpoint).
    pub skipped_replayed: u64,
    /// Changes of tables `source.exclude` leaves out that the publication
    /// carries (published when they were made, excluded since).
    pub skipped_excluded: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub truncates: u64,
    pub dead_lettered: u64,
    /// Changes not applied because the target row was written
    /// concurrently by its own application (a parallel run's yielding
    /// direction): recorded in `ferry.conflicts` with both versions.
    pub conflicts: u64,
    pub transactions: u64,
    /// Upserts completed by reading the row from the source (`--reread`).
    pub toast_rereads: u64,
    pub checkpoint: StreamCheckpoint,
    /// Set when the plugin returned `fatal`: nothing after the last commit
    /// was applied.
    pub fatal: Option<String>,
    /// Set when the stream stopped while paused on a schema change it
    /// cannot apply as it is: why, and how to resolve it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Tables held when the stream stopped (the others went on), each with
    /// why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// Plugin versions (SHA-256) this run switched to, in order
    /// (`ferry plugin deploy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugin_switches: Vec<String>,
}

/// How to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Changes grouped into one target transaction, at most (whole source
    /// transactions are never split).
    pub group_size: usize,
    /// Unit of integer timestamps in events without a schema.
    pub integer_time: IntegerTime,
    /// Complete events lacking unchanged TOASTed values from the source.
    pub reread: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { group_size: 2000, integer_time: IntegerTime::Micros, reread: false }
    }
}
