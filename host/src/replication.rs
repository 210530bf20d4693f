//! The replication-source role: what a change stream needs of its source
//! beside the changes themselves — a server that decodes logical changes,
//! the publication of the pipeline's tables, the slot that keeps their WAL —
//! and what `ferry status` and `ferry check` report about it. Commands
//! (`cdc/`, `status.rs`, `check.rs`) reach the source's replication catalog
//! only through this trait; `postgres/replication.rs` implements it (with
//! the replication connection itself) without importing `cdc`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::db::TableName;

/// A replication slot as the source reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub active: bool,
    /// WAL the source keeps for this slot that the target has not confirmed.
    pub lag_bytes: i64,
    /// Where the target confirmed it (an LSN; `None`: never).
    pub confirmed: Option<u64>,
}

/// The catalog side of a logical-replication source.
///
/// Contract: `ensure_publication` creates the publication when it does not
/// exist and never alters one that does (a user's, or an earlier run's —
/// `publication_tables` says what it holds); `drop_stream` removes the slot
/// (so the source stops retaining WAL for it) and the publication, and
/// does nothing for either when it is already gone.
#[async_trait]
pub trait ReplicationSource: Send {
    /// Fails with a contract error, and the fix, unless the source can
    /// decode logical replication.
    async fn check_logical(&mut self) -> anyhow::Result<()>;
    /// Creates `publication` for `tables` unless it exists.
    async fn ensure_publication(&mut self, publication: &str, tables: &[TableName]) -> anyhow::Result<()>;
    /// The tables `publication` publishes (schema-qualified).
    async fn publication_tables(&mut self, publication: &str) -> anyhow::Result<Vec<TableName>>;
    async fn slot_exists(&mut self, slot: &str) -> anyhow::Result<bool>;
    /// The source's logical slots (`only` one when given).
    async fn slots(&mut self, only: Option<&str>) -> anyhow::Result<Vec<SlotStatus>>;
    async fn drop_stream(&mut self, slot: &str, publication: &str) -> anyhow::Result<()>;
    /// Whether the database records each transaction's commit time and
    /// origin (`track_commit_timestamp`): what conflict detection reads.
    async fn tracks_commit_timestamps(&mut self) -> anyhow::Result<bool>;
    /// The end of the source's WAL now (an LSN): a slot confirmed past it
    /// has everything written before this call.
    async fn wal_position(&mut self) -> anyhow::Result<u64>;
    /// Adds `table` to `publication` unless it is there.
    async fn publish(&mut self, publication: &str, table: &TableName) -> anyhow::Result<()>;
    /// Installs (or replaces) the DDL capture: from now on every statement
    /// that changes a table's columns writes, in its own transaction, a
    /// logical message ([`DDL_MESSAGE_PREFIX`]) with the tables it changed
    /// and their columns after it. A failure inside the capture never fails
    /// the application's statement (a warning instead; the stream still
    /// sees the new column list and pauses). Refused with the fix where the
    /// connection may not create event triggers.
    async fn install_ddl_capture(&mut self) -> anyhow::Result<()>;
    /// Whether the DDL capture is installed and enabled.
    async fn ddl_capture(&mut self) -> anyhow::Result<bool>;
    /// Whether this connection may install the DDL capture.
    async fn may_install_ddl_capture(&mut self) -> anyhow::Result<bool>;
    /// With the DDL capture installed: a table created from now on whose
    /// qualified name (or an ancestor's, for a partition) matches one of
    /// the `include` regular expressions and none of `exclude` is added
    /// to `publication` in the transaction that creates it. Replaces what
    /// was set for `publication`.
    async fn publish_new_tables(
        &mut self,
        publication: &str,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<()>;
    /// Removes the DDL capture, unless a replication slot other than
    /// `slot` may still rely on it.
    async fn drop_ddl_capture(&mut self, slot: &str) -> anyhow::Result<()>;
    /// Each column of `table` with its catalog number and type OID.
    async fn column_numbers(&mut self, table: &TableName) -> anyhow::Result<Vec<(String, i16, u32)>>;
    /// `table`'s OID in the source's catalog (`None`: no such table).
    async fn relation_oid(&mut self, table: &TableName) -> anyhow::Result<Option<u32>>;
    /// Takes `table` out of `publication` (nothing if it is not in it).
    async fn unpublish(&mut self, publication: &str, table: &TableName) -> anyhow::Result<()>;
}

/// The prefix of the logical messages the DDL capture writes.
pub const DDL_MESSAGE_PREFIX: &str = "ferry.ddl";

/// Waits up to `limit` until `slot` confirms `wal`; else how far behind it is.
pub async fn drained(
    source: &mut dyn ReplicationSource,
    slot: &str,
    wal: u64,
    limit: Duration,
) -> anyhow::Result<Result<(), String>> {
    let started = Instant::now();
    loop {
        let status = source.slots(Some(slot)).await?;
        let confirmed = status.first().and_then(|s| s.confirmed).unwrap_or(0);
        if confirmed >= wal {
            return Ok(Ok(()));
        }
        if started.elapsed() >= limit {
            return Ok(Err(format!("{} bytes of WAL not yet confirmed", wal - confirmed)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
