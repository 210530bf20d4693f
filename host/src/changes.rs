//! The change-sink role of the seed's one-table `users` pipeline: the ops a
//! change stream asks of the target, its checkpoint, dead letters and stale
//! marks, and the trait the engines implement. (Many-table streams use
//! [`crate::sink::RowChangeSink`].) Below the engines: `postgres/` implements
//! it without importing `cdc`.

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{DeadLetterKind, NewUser};
use crate::position::Position;

/// What the target does for one change, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOp {
    Upsert(NewUser),
    Delete(String),
    Truncate,
}

/// Where a pipeline's change stream stands in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChangeCheckpoint {
    /// The last applied position (`None`: nothing streamed yet).
    pub position: Option<Position>,
    /// Whether any streamed (non-snapshot) change has been applied.
    pub streaming: bool,
    /// `ferry sync`'s initial load: the highest source key loaded so far.
    pub snapshot_key: Option<i64>,
    /// `ferry sync`'s initial load is complete.
    pub snapshot_done: bool,
}

/// A change that was not applied, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeDeadLetter {
    /// Unique per pipeline: the position, or `snapshot:<hash>` for snapshot
    /// items, so a replay never records it twice.
    pub dedup_key: String,
    pub source_key: Option<i64>,
    /// The raw event.
    pub event: String,
    /// `extract` (the event could not be read into the contract's types),
    /// `reject`, `trap` (the plugin), `load` (the target refused the row).
    pub kind: DeadLetterKind,
    pub reason: String,
}

/// Ops of a batch the target refused (dead-lettered instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    pub upserts: u64,
    pub deletes: u64,
}

/// Where a target op came from: what its dead letter says if the target
/// refuses it.
/// Kept cheap: the raw event is moved here, and the dead letter's dedup key
/// is derived only when the target refuses the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpOrigin {
    /// The change's position (`None`: a snapshot item, keyed by its content).
    pub position: Option<Position>,
    pub source_key: Option<i64>,
    /// The raw event.
    pub event: String,
}

impl OpOrigin {
    /// The key of the dead letter [`OpOrigin::refused`] makes.
    pub fn refused_key(&self) -> String {
        dedup_key_of(self.position, &self.event)
    }

    /// The dead letter of this op's row, which the target refused.
    pub fn refused(&self, target_key: &str, message: &str) -> ChangeDeadLetter {
        ChangeDeadLetter {
            dedup_key: self.refused_key(),
            source_key: self.source_key,
            event: self.event.clone(),
            kind: DeadLetterKind::Load,
            reason: format!("the target refused the row `{target_key}`: {message}"),
        }
    }
}

/// A target row left behind by a dead-lettered newer version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleMark {
    pub source_key: i64,
    /// `None` when the plugin cannot say (no `user-key` interface).
    pub target_key: Option<String>,
    /// The dead letter that explains it (`ferry.change_dead_letters.dedup_key`).
    pub dead_letter: String,
    /// `kept` (the last good version stays) or `deleted`.
    pub action: &'static str,
}

/// A stale mark as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleRow {
    pub source_key: String,
    pub target_key: Option<String>,
    pub dead_letter: String,
    pub action: String,
}

/// A group of changes to apply atomically.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub pipeline: String,
    pub ops: Vec<TargetOp>,
    /// Rows whose newest version was dead-lettered in this group, after
    /// the ops: recorded in `ferry.stale_rows` (replacing older marks).
    pub stale: Vec<StaleMark>,
    /// Source keys whose newest version in this group was applied (or
    /// deleted): their stale marks go.
    pub fresh: Vec<i64>,
    /// A truncate in this group: every earlier mark goes first.
    pub clear_stale: bool,
    /// The origin of each of `ops` (same order).
    pub origins: Vec<OpOrigin>,
    pub dead: Vec<ChangeDeadLetter>,
    /// The checkpoint this batch was planned against (fencing).
    pub previous: ChangeCheckpoint,
    /// The checkpoint after it.
    pub next: ChangeCheckpoint,
    pub plugin_sha256: String,
    /// When the newest source transaction in the batch committed (Unix
    /// microseconds), when the source says.
    pub source_commit_micros: Option<i64>,
    /// Initial-load progress after this batch: (chunks done, chunks in all).
    pub snapshot_chunks: Option<(u64, u64)>,
}

/// What `ferry status` shows of a change stream.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeStatus {
    pub checkpoint: ChangeCheckpoint,
    /// Seconds since the newest applied source transaction committed on the
    /// source (the lag, while the source has more).
    pub source_commit_age_seconds: Option<f64>,
    /// Changes applied per second since the stream first applied anything.
    pub changes_per_second: f64,
    /// Initial-load progress: (chunks done, chunks in all) of the last load.
    pub snapshot_chunks: Option<(u64, u64)>,
    pub applied: u64,
    pub dead_lettered: u64,
    pub plugin_sha256: Option<String>,
    /// Seconds since the last commit of the stream into the target.
    pub seconds_since_update: f64,
}

/// Where changes are applied.
///
/// Contract: `apply_changes` performs the ops in order, records the dead
/// letters (ignoring ones already recorded) and stores `next` — all in one
/// transaction, and only if the stored checkpoint equals `previous`. A crash
/// therefore loses whole batches with their checkpoints, and a replay of the
/// input applies each change exactly once. An op the target refuses for what
/// its row holds (a data exception, a constraint) is isolated inside that
/// transaction and dead-lettered with its origin and the database's message;
/// the rest of the batch applies.
#[async_trait]
pub trait ChangeSink: Send {
    /// Creates the change-stream control tables if missing.
    async fn ensure_change_tables(&mut self) -> anyhow::Result<()>;
    /// The pipeline's checkpoint (default when it never applied anything).
    async fn change_checkpoint(&mut self, pipeline: &str) -> anyhow::Result<ChangeCheckpoint>;
    /// Applies a batch (see the trait's contract).
    async fn apply_changes(&mut self, batch: &ChangeBatch) -> anyhow::Result<Refused>;
    /// The pipeline's stream, as `ferry status` shows it (`None`: never ran).
    async fn change_status(&mut self, pipeline: &str) -> anyhow::Result<Option<ChangeStatus>>;
    /// The pipeline's stale marks (`ferry.stale_rows`): target rows whose
    /// newest source version was dead-lettered.
    async fn stale_rows(&mut self, pipeline: &str) -> anyhow::Result<Vec<StaleRow>>;
}

/// A dead letter's key, unique per pipeline: the position, or for snapshot
/// items (which share one) a hash of the item itself.
pub fn dedup_key_of(position: Option<Position>, raw: &str) -> String {
    match position {
        Some(pos) => pos.to_string(),
        None => format!("snapshot:{}", hex::encode(&Sha256::digest(raw.as_bytes())[..16])),
    }
}
