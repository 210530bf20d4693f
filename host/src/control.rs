//! The control store: runs, checkpoints, dead letters and lineage, kept in
//! the target (schema `ferry` in PostgreSQL, `ferry_*` tables in SQLite) so
//! that a checkpoint can commit in the same transaction as the rows.

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{ColumnIndex, Decode, Row, Type};

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not finished (or killed): resumable.
    Running,
    /// Every source row is loaded or dead-lettered.
    Completed,
    /// Stopped by a plugin `fatal` or an error: resumable once fixed.
    Failed,
    /// Stopped by SIGINT/SIGTERM after its last committed batch: resumable.
    Interrupted,
    /// Replaced by a new run (`--restart`).
    Abandoned,
    /// Taken back by `ferry rollback`: never resumed or continued.
    RolledBack,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Abandoned => "abandoned",
            RunStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> RunStatus {
        match s {
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            "abandoned" => RunStatus::Abandoned,
            "rolled_back" => RunStatus::RolledBack,
            _ => RunStatus::Running,
        }
    }

    pub fn resumable(self) -> bool {
        matches!(self, RunStatus::Running | RunStatus::Failed | RunStatus::Interrupted)
    }
}

/// The seed's counters, plus `skipped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub extracted: u64,
    pub transformed: u64,
    pub loaded: u64,
    pub skipped: u64,
    /// Rows in the dead-letter table (the seed's `errors`).
    pub dead_lettered: u64,
}

/// One run of a pipeline, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    /// The source, redacted (`postgres://u:***@h/db users`).
    pub source: String,
    pub target_table: String,
    pub plugin_sha256: String,
    pub status: RunStatus,
    /// The one integer key checkpoint of runs that earlier versions' one-table
    /// path started (`None` for every run since: each table has its own).
    pub last_key: Option<i64>,
    pub batches: u64,
    pub stats: Stats,
    pub message: Option<String>,
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRecord {
    pub run_id: String,
    pub source_table: String,
    pub source_key: String,
    pub source_row: String,
    pub kind: String,
    pub reason: String,
    pub plugin_sha256: String,
}

impl DeadLetterRecord {
    /// A change stream's dead letter, from (source table, source key, the
    /// change as recorded, kind, reason, plugin): run id [`crate::sink::STREAM_RUN`].
    pub fn of_stream(
        (source_table, source_key, source_row, kind, reason, plugin_sha256): (
            String,
            String,
            String,
            String,
            String,
            String,
        ),
    ) -> DeadLetterRecord {
        let run_id = crate::sink::STREAM_RUN.to_string();
        DeadLetterRecord { run_id, source_table, source_key, source_row, kind, reason, plugin_sha256 }
    }
}

/// Runs, checkpoints and dead letters.
///
/// Contract: a run's checkpoint and counters change only inside
/// `Sink::commit_batch`'s transaction; the methods here create runs, change
/// their status and read them back.
#[async_trait]
pub trait ControlStore: Send {
    /// Creates the control tables if they are missing (idempotent).
    async fn ensure_control_tables(&mut self) -> anyhow::Result<()>;
    /// The most recent run of `pipeline`, if any.
    async fn latest_run(&mut self, pipeline: &str) -> anyhow::Result<Option<RunRecord>>;
    /// Records a new run.
    async fn insert_run(&mut self, run: &RunRecord) -> anyhow::Result<()>;
    /// Sets a run's status (and message).
    async fn set_status(&mut self, run_id: &str, status: RunStatus, message: Option<&str>) -> anyhow::Result<()>;
    /// Dead letters of a run (all when `limit` is None), oldest first.
    async fn dead_letters(&mut self, run_id: &str, limit: Option<usize>) -> anyhow::Result<Vec<DeadLetterRecord>>;
    /// Records the outcome of a `ferry validate` of `pipeline` (whole
    /// pipeline only; creates its table if missing): the evidence `ferry
    /// plan` ticks "every row validated" from.
    async fn record_validation(&mut self, pipeline: &str, ok: bool, summary: &str) -> anyhow::Result<()>;
    /// The latest recorded validation of `pipeline`.
    async fn latest_validation(&mut self, pipeline: &str) -> anyhow::Result<Option<Validation>>;
}

/// A recorded `ferry validate`.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// When (UTC, as the target prints it).
    pub at: String,
    pub ok: bool,
    pub summary: String,
}

/// Reads a `runs` row (same columns in every engine's control tables).
pub(crate) fn run_from_row<'r, R>(row: &'r R) -> Result<RunRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let n = |column: &'static str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(column)? as u64) };
    Ok(RunRecord {
        run_id: row.try_get("run_id")?,
        pipeline: row.try_get("pipeline")?,
        source: row.try_get("source")?,
        target_table: row.try_get("target_table")?,
        plugin_sha256: row.try_get("plugin_sha256")?,
        status: RunStatus::parse(&row.try_get::<String, _>("status")?),
        last_key: row.try_get("last_key")?,
        batches: n("batches")?,
        stats: Stats {
            extracted: n("extracted")?,
            transformed: n("transformed")?,
            loaded: n("loaded")?,
            skipped: n("skipped")?,
            dead_lettered: n("dead_lettered")?,
        },
        message: row.try_get("message")?,
    })
}

/// Reads a `dead_letters` row (with `source_row` as text).
pub(crate) fn dead_letter_from_row<'r, R>(row: &'r R) -> Result<DeadLetterRecord, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(DeadLetterRecord {
        run_id: row.try_get("run_id")?,
        source_table: row.try_get("source_table")?,
        source_key: row.try_get("source_key")?,
        source_row: row.try_get("source_row")?,
        kind: row.try_get("kind")?,
        reason: row.try_get("reason")?,
        plugin_sha256: row.try_get("plugin_sha256")?,
    })
}

/// Where one table of a many-table run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TablePhase {
    /// Rows are being copied (resumable from `last_key`).
    Copying,
    /// Rows are being copied in heap order, in one source snapshot:
    /// `last_key` is a block position, meaningless in another snapshot, so
    /// an interrupted copy starts the table over (then in key order).
    CopyingHeap,
    /// Every row is loaded or dead-lettered; indexes and constraints pending.
    Loaded,
    /// Indexes and constraints built: the table is done.
    Done,
}

impl TablePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TablePhase::Copying => "copying",
            TablePhase::CopyingHeap => "copying_heap",
            TablePhase::Loaded => "loaded",
            TablePhase::Done => "done",
        }
    }

    /// Rows are still being copied (in either order).
    pub fn copying(self) -> bool {
        matches!(self, TablePhase::Copying | TablePhase::CopyingHeap)
    }

    pub fn parse(s: &str) -> TablePhase {
        match s {
            "loaded" => TablePhase::Loaded,
            "copying_heap" => TablePhase::CopyingHeap,
            "done" => TablePhase::Done,
            _ => TablePhase::Copying,
        }
    }
}

/// A table's checkpoint and counters within a run, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TableProgress {
    pub table: String,
    pub target_table: String,
    #[serde(serialize_with = "serialize_key")]
    pub last_key: Option<crate::keyset::Key>,
    pub phase: TablePhase,
    pub batches: u64,
    pub stats: Stats,
    /// Rows a plugin turned into no row.
    pub filtered: u64,
    /// ferry created the target table (so it builds its indexes and
    /// constraints after the data).
    pub created: bool,
}

fn serialize_key<S: serde::Serializer>(key: &Option<crate::keyset::Key>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(k) => s.serialize_some(&k.0),
        None => s.serialize_none(),
    }
}

/// The per-table state of many-table runs.
///
/// Contract: a table's checkpoint and counters change only inside
/// `RowSink::commit_rows`'s transaction; `start_table` records a table once
/// (idempotent) and `set_table_phase` moves it forward.
#[async_trait]
pub trait TableControl: Send {
    async fn table_progress(&mut self, run_id: &str) -> anyhow::Result<Vec<TableProgress>>;
    /// The run's lineage: every committed batch of a table with a plugin,
    /// in commit order (see [`Lineage`]).
    async fn lineage(&mut self, run_id: &str) -> anyhow::Result<Vec<Lineage>>;
    async fn start_table(&mut self, run_id: &str, table: &str, target_table: &str, created: bool)
    -> anyhow::Result<()>;
    async fn set_table_phase(&mut self, run_id: &str, table: &str, phase: TablePhase) -> anyhow::Result<()>;
}

/// Which plugin version produced which rows: one committed batch of a table
/// with a plugin. A migration's batch covers the source keys in
/// `(after, last]`; a batch of `ferry dlq replay` covers exactly `keys`.
/// Written in the batch's own transaction ([`crate::sink::RowSink::commit_rows`]),
/// so it is exactly what the target holds; `ferry validate` re-runs each
/// row through the version that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lineage {
    /// The source table (`schema.table`).
    pub table: String,
    /// Exclusive lower bound; `None`: from the table's first key.
    pub after: Option<crate::keyset::Key>,
    /// Inclusive upper bound.
    pub last: crate::keyset::Key,
    /// A replay's keys (then `after`/`last` are the table's checkpoint).
    pub keys: Option<Vec<crate::keyset::Key>>,
    pub plugin_sha256: String,
    /// The file the version was loaded from.
    pub plugin_path: String,
    /// Source rows the batch read.
    pub rows: u64,
}

/// Reads a `lineage` row (same columns in every engine).
pub(crate) fn lineage_from_row<'r, R>(row: &'r R) -> anyhow::Result<Lineage>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    use crate::keyset::Key;
    let after: Option<String> = row.try_get("after_key")?;
    let keys: Option<String> = row.try_get("keys")?;
    let keys = keys
        .map(|k| serde_json::from_str::<Vec<String>>(&k).map(|ks| ks.iter().map(|k| Key::decode(k)).collect()))
        .transpose()?
        .transpose()?;
    Ok(Lineage {
        table: row.try_get("table_name")?,
        after: after.as_deref().map(Key::decode).transpose()?,
        last: Key::decode(&row.try_get::<String, _>("last_key")?)?,
        keys,
        plugin_sha256: row.try_get("plugin_sha256")?,
        plugin_path: row.try_get("plugin_path")?,
        rows: row.try_get::<i64, _>("rows")? as u64,
    })
}

/// Reads a `table_progress` row (same columns in every engine).
pub(crate) fn table_progress_from_row<'r, R>(row: &'r R) -> anyhow::Result<TableProgress>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let n = |column: &'static str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(column)? as u64) };
    let last_key: Option<String> = row.try_get("last_key")?;
    Ok(TableProgress {
        table: row.try_get("table_name")?,
        target_table: row.try_get("target_table")?,
        last_key: last_key.as_deref().map(crate::keyset::Key::decode).transpose()?,
        phase: TablePhase::parse(&row.try_get::<String, _>("phase")?),
        batches: n("batches")?,
        stats: Stats {
            extracted: n("extracted")?,
            transformed: n("transformed")?,
            loaded: n("loaded")?,
            skipped: n("skipped")?,
            dead_lettered: n("dead_lettered")?,
        },
        filtered: n("filtered")?,
        created: row.try_get("created")?,
    })
}

/// Starts a new run of `pipeline` in `store`, abandoning `previous` if it
/// was resumable (`--restart`); `resume_only` (`--resume`) refuses instead.
/// The run is `Running` with nothing done.
pub async fn start_run(
    store: &mut (dyn ControlStore + Send),
    pipeline: &str,
    previous: Option<RunRecord>,
    resume_only: bool,
    source: String,
    target_table: String,
    plugin_sha256: String,
) -> anyhow::Result<RunRecord> {
    if resume_only {
        return Err(crate::error::Error::raise(
            crate::error::ErrorKind::Config,
            format!("pipeline {pipeline} has no unfinished run to resume; run `ferry migrate` without --resume"),
        ));
    }
    if let Some(old) = previous.filter(|r| r.status.resumable()) {
        store.set_status(&old.run_id, RunStatus::Abandoned, Some("replaced by a new run (--restart)")).await?;
    }
    let run = RunRecord {
        run_id: uuid::Uuid::new_v4().to_string(),
        pipeline: pipeline.to_string(),
        source,
        target_table,
        plugin_sha256,
        status: RunStatus::Running,
        last_key: None,
        batches: 0,
        stats: Stats::default(),
        message: None,
    };
    store.insert_run(&run).await?;
    Ok(run)
}
