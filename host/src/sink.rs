//! The sink roles: loading pages of rows ([`RowSink`]) and applying change
//! streams ([`RowChangeSink`]) into tables of any shape.

use async_trait::async_trait;

use crate::config::OnConflict;
use crate::model::DeadLetterKind;

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows written (inserted, or overwritten under `on_conflict = overwrite`).
    pub loaded: u64,
    /// Rows left alone because their key existed (`on_conflict = skip`).
    pub skipped: u64,
}

/// A batch stopped because a row's key already exists (`on_conflict = error`).
#[derive(Debug, thiserror::Error)]
#[error(
    "target table {table} already has a row with key {key}; nothing of this batch was written. \
     Set target.on_conflict = \"skip\" (keep existing rows) or \"overwrite\", or empty the target table"
)]
pub struct ConflictError {
    pub table: String,
    pub key: String,
}

/// A batch was refused because the stored checkpoint is not the one this
/// process expected: another ferry is running the same pipeline.
#[derive(Debug, thiserror::Error)]
#[error(
    "the checkpoint of run {run_id} moved under this process (is another ferry running the same pipeline?); stopped without writing"
)]
pub struct FencedError {
    pub run_id: String,
}

/// Rows for one target table, from one page of a source table.
#[derive(Debug)]
pub struct TableWrite {
    pub target: crate::schema::TableDef,
    /// Rows in the target table's column order.
    pub rows: Vec<crate::keyset::Row>,
    /// The source key of each row (same order), for rows the target refuses.
    pub keys: Vec<crate::keyset::Key>,
    /// The rows undecoded, in the target engine's bulk format (then `rows`
    /// and `keys` are empty); decoded only if the target refuses some.
    pub raw: Option<crate::keyset::RawRows>,
}

/// One page of a source table to apply, with the table checkpoint it
/// advances: the rows it became in one or more target tables.
/// The `plugin_sha256` of rows copied as they are (no plugin).
pub const IDENTITY: &str = "identity";

/// The lineage record of a batch, as stored: `(after_key, last_key, keys,
/// rows)`, each key [`crate::keyset::Key::encode`]d and `keys` a JSON
/// array of them; `None` for rows copied as they are (no plugin version
/// to record) and for a replay that loaded nothing.
pub type LineageColumns = (Option<String>, String, Option<String>, i64);

/// What a batch of `ferry reprocess` replaces: the rows an earlier version
/// wrote for the same source rows, deleted in the batch's transaction
/// before its own rows are written, and their place in the ledger.
#[derive(Debug, Default)]
pub struct Replacing {
    /// Per write (in `writes`' order): output keys, or key prefixes (the
    /// first columns of the key), whose rows go first.
    pub deletes: Vec<Vec<Vec<crate::value::Value>>>,
    /// Source rows of the batch that were loaded, or filtered, before: the
    /// ledger takes them back as the batch counts them again.
    pub was_loaded: u64,
    pub was_filtered: u64,
    /// The source keys the batch reprocesses (its lineage).
    pub keys: Vec<crate::keyset::Key>,
}

impl Replacing {
    /// The ledger's `(loaded, filtered)` change for a batch that counted
    /// `loaded` and `filtered` source rows.
    pub fn deltas(replacing: Option<&Replacing>, loaded: u64, filtered: u64) -> (i64, i64) {
        let (was_loaded, was_filtered) = replacing.map_or((0, 0), |r| (r.was_loaded, r.was_filtered));
        (loaded as i64 - was_loaded as i64, filtered as i64 - was_filtered as i64)
    }
}

#[derive(Debug)]
pub struct RowBatch {
    pub run_id: String,
    /// The source table (`schema.table`): the checkpoint's and the dead
    /// letters' name for it.
    pub table: String,
    pub seq: u64,
    /// The table's checkpoint before this batch: the sink refuses the batch
    /// if the stored one differs (another process moved it).
    pub previous_key: Option<crate::keyset::Key>,
    /// The checkpoint after this batch.
    pub last_key: crate::keyset::Key,
    pub writes: Vec<TableWrite>,
    /// Source rows that produced at least one row.
    pub producing: u64,
    /// Each source row is exactly one row of the one write (a copy): then
    /// rows left alone under `on_conflict = skip` count as skipped.
    pub one_to_one: bool,
    pub dead: Vec<crate::keyset::RowDeadLetter>,
    /// Source rows read for this batch.
    pub extracted: u64,
    /// Source rows a plugin turned into no row.
    pub filtered: u64,
    pub plugin_sha256: String,
    /// The file that version was loaded from ("" for rows copied as they
    /// are): recorded with the lineage, so `ferry validate` finds it again.
    pub plugin_path: String,
    /// `ferry reprocess`: what the batch's rows replace.
    pub replacing: Option<Replacing>,
    /// Dead letters of this run and table the batch retries (`ferry dlq
    /// replay`), by key: removed in its transaction before its own dead
    /// letters (the rows that fail again) are recorded.
    pub replayed: Vec<crate::keyset::Key>,
}

impl RowBatch {
    /// An empty batch of a completed run's `table` that reads no new source
    /// rows (`ferry dlq replay`, `ferry reprocess`): fenced on the table's
    /// `checkpoint`, which it leaves where it is; its rows are `plugin_sha256`'s.
    pub fn at_checkpoint(
        run_id: &str,
        table: &str,
        checkpoint: &crate::keyset::Key,
        plugin_sha256: &str,
        plugin_path: &str,
    ) -> RowBatch {
        RowBatch {
            run_id: run_id.to_string(),
            table: table.to_string(),
            seq: 0,
            previous_key: Some(checkpoint.clone()),
            last_key: checkpoint.clone(),
            writes: Vec::new(),
            producing: 0,
            one_to_one: false,
            dead: Vec::new(),
            extracted: 0,
            filtered: 0,
            plugin_sha256: plugin_sha256.to_string(),
            plugin_path: plugin_path.to_string(),
            replacing: None,
            replayed: Vec::new(),
        }
    }

    /// What [`crate::control::Lineage`] records of this batch (see
    /// [`LineageColumns`]).
    pub fn lineage(&self) -> Option<LineageColumns> {
        if self.plugin_sha256 == IDENTITY {
            return None;
        }
        let named = match &self.replacing {
            Some(replacing) => Some(&replacing.keys),
            None => (!self.replayed.is_empty()).then_some(&self.replayed),
        };
        let (keys, rows) = match named {
            None => (None, self.extracted as usize),
            // A replay or a reprocess: the keys this version turned into
            // rows (the rows it refused stay dead letters, which explain
            // them).
            Some(named) => {
                let refused: std::collections::HashSet<&crate::keyset::Key> =
                    self.dead.iter().map(|d| &d.key).collect();
                let loaded: Vec<String> = named.iter().filter(|k| !refused.contains(k)).map(|k| k.encode()).collect();
                if loaded.is_empty() {
                    return None;
                }
                let n = loaded.len();
                (Some(serde_json::to_string(&loaded).expect("strings serialise")), n)
            }
        };
        Some((self.previous_key.as_ref().map(|k| k.encode()), self.last_key.encode(), keys, rows as i64))
    }

    /// The source counters of this batch once `refused` source keys were
    /// dead-lettered by the target: `(loaded, skipped)`.
    pub fn accounted(&self, written: Applied, refused_sources: u64) -> (u64, u64) {
        let skipped = if self.one_to_one { written.skipped } else { 0 };
        (self.producing.saturating_sub(refused_sources).saturating_sub(skipped), skipped)
    }
}

/// Where rows of any table are written.
///
/// Contract: `commit_rows` writes the batch's rows, its dead letters and the
/// table's new checkpoint and counters in ONE transaction, and only if the
/// stored checkpoint equals `previous_key` (else [`FencedError`]); the dead
/// letters it retries (`replayed`) are removed in that transaction, and all
/// of them must still be there (else [`FencedError`]: another replay took
/// them), so a replayed row is loaded once however often replay runs. A row the
/// target refuses for what it holds is isolated in that transaction and
/// dead-lettered with kind `load`; a key conflict under
/// `OnConflict::Error` fails with [`ConflictError`] and writes nothing.
/// `create_table` creates the table with its columns and primary key only;
/// `build_indexes` and `add_constraints` add the rest after the data
/// (idempotent: they may run again after a crash).
#[async_trait]
pub trait RowSink: Send {
    /// `names` gives the target name of a referenced source table.
    async fn create_table(
        &mut self,
        def: &crate::schema::TableDef,
        names: &crate::schema::NameMap,
    ) -> anyhow::Result<()>;
    /// Secondary indexes of a table ferry created (idempotent).
    async fn build_indexes(&mut self, def: &crate::schema::TableDef) -> anyhow::Result<()>;
    /// Checks and foreign keys of a table ferry created, once every table
    /// is loaded (idempotent: existing constraints are left alone).
    async fn add_constraints(
        &mut self,
        def: &crate::schema::TableDef,
        names: &crate::schema::NameMap,
    ) -> anyhow::Result<()>;
    async fn commit_rows(&mut self, batch: &RowBatch, policy: OnConflict) -> anyhow::Result<Applied>;
    /// Moves the sequence of each named column of `table` (identity or
    /// `serial`, when the target column has one) forward to hand out
    /// `next` next, never back: rows written after the copy get keys past
    /// the copied ones. Columns without a sequence are left alone.
    async fn advance_sequences(
        &mut self,
        _table: &crate::schema::TableDef,
        _positions: &[(String, i64)],
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// The user triggers of `tables` that fire on a load: `(table, trigger,
    /// fires even with triggers off)`.
    async fn triggers(&mut self, _tables: &[crate::schema::TableDef]) -> anyhow::Result<Vec<(String, String, bool)>> {
        Ok(Vec::new())
    }
    /// Whether this connection may load rows with the target's triggers and
    /// foreign-key checks off ([`RowSink::skip_triggers`]).
    async fn may_skip_triggers(&mut self) -> anyhow::Result<bool> {
        Ok(false)
    }
    /// Until called again with `false`, rows this connection writes fire no
    /// trigger and check no foreign key (PostgreSQL:
    /// `session_replication_role = replica`): a copy of rows that were
    /// consistent in the source loads in any order, and no trigger of an
    /// existing target rewrites them. Only where [`RowSink::may_skip_triggers`].
    async fn skip_triggers(&mut self, _on: bool) -> anyhow::Result<()> {
        Ok(())
    }
    /// After a load with the foreign-key checks off: the foreign keys of
    /// `tables` that rows break (a row referencing no row of the parent,
    /// e.g. a parent left out of the pipeline), one line each with how
    /// many rows and one of them. Empty when every reference holds.
    async fn broken_references(&mut self, _tables: &[crate::schema::TableDef]) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Starts source table `table` of run `run_id` over, in one
    /// transaction: empties `targets` (tables ferry created for it, so
    /// holding only what this run wrote) and resets the table's checkpoint,
    /// counters and dead letters, as if nothing of it had been copied.
    async fn restart_table(
        &mut self,
        run_id: &str,
        table: &str,
        targets: &[&crate::schema::TableDef],
    ) -> anyhow::Result<()>;
}

/// One change to a target table from a change stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// Insert the row, or replace the one with its key (target column order).
    Upsert(crate::keyset::Row),
    /// Delete the row with this key (values in the table's key order); a
    /// shorter key deletes every row whose key starts with it.
    Delete(crate::keyset::Row),
    /// Empty the table.
    Truncate,
    /// Change the table's columns (the table as it is before the edit;
    /// the writes after it name the table's next definition).
    Alter(crate::schema_edit::TableEdit),
}

/// A change and where it goes.
#[derive(Debug, Clone)]
pub struct ChangeWrite {
    /// Index into [`RowChangeBatch::tables`].
    pub table: usize,
    pub change: RowChange,
    /// Index into [`RowChangeBatch::origins`]: what its dead letter says if
    /// the target refuses it.
    pub origin: usize,
    /// Conflict detection (the parallel run's direction that yields): the
    /// change's source had seen this database's commits up to this time
    /// (Unix µs). A target row last written by this database's own
    /// application after it is a concurrent write: the change is not
    /// applied but recorded as a conflict with both versions.
    pub seen_until: Option<i64>,
}

/// The source change a write came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOrigin {
    /// Unique per pipeline and change (its stream position and sequence).
    pub dedup_key: String,
    /// The source table (`schema.table`).
    pub source_table: String,
    /// The source row's key ([`crate::keyset::Key::label`]).
    pub source_key: Option<String>,
    /// What the change was, as people read it (JSON).
    pub event: String,
}

/// Each dead letter with the key it is recorded under: its change's
/// `dedup_key`, numbered (`#1`, `#2`, …) after the first where one change
/// has several (a key change's delete and upsert share a position; a
/// plugin's rows refused in two tables), so none is dropped as a
/// duplicate while the counters count it.
pub fn dedup_keys<'a>(dead: impl Iterator<Item = &'a StreamDeadLetter>) -> Vec<(&'a StreamDeadLetter, String)> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    dead.map(|d| {
        let n = seen.entry(d.origin.dedup_key.as_str()).or_insert(0);
        let key = match *n {
            0 => d.origin.dedup_key.clone(),
            n => format!("{}#{n}", d.origin.dedup_key),
        };
        *n += 1;
        (d, key)
    })
    .collect()
}

/// A change that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDeadLetter {
    pub origin: ChangeOrigin,
    pub kind: DeadLetterKind,
    pub reason: String,
}

impl ChangeOrigin {
    /// This origin with `row` (the change's values by column) in its
    /// event: what a dead letter keeps of the change.
    pub fn with_row(&self, row: serde_json::Value) -> ChangeOrigin {
        let mut event: serde_json::Value =
            serde_json::from_str(&self.event).unwrap_or_else(|_| serde_json::json!({ "event": self.event }));
        if let Some(map) = event.as_object_mut() {
            map.insert("row".into(), row);
        }
        ChangeOrigin { event: event.to_string(), ..self.clone() }
    }

    /// The dead letter of `change`, which the target table `target`
    /// refused with `message`.
    pub fn refused(&self, target: &crate::schema::TableDef, change: &RowChange, message: &str) -> StreamDeadLetter {
        let row = match change {
            RowChange::Upsert(row) => format!("row {}", crate::keyset::Key::of(target, row).label()),
            RowChange::Delete(key) => format!("the delete of {}", crate::keyset::Key::of_values(key).label()),
            RowChange::Truncate => "the truncate".to_string(),
            RowChange::Alter(edit) => format!("{edit}"),
        };
        let origin = match change {
            RowChange::Upsert(row) => self.with_row(crate::keyset::row_json(target, row)),
            _ => self.clone(),
        };
        StreamDeadLetter {
            origin,
            kind: DeadLetterKind::Load,
            reason: format!("the target refused {row} of {}: {message}", target.name),
        }
    }
}

/// A group of whole source transactions to apply atomically, in stream
/// order, across any number of tables.
#[derive(Debug, Default)]
pub struct RowChangeBatch {
    pub pipeline: String,
    /// The run whose undo journal the writes go into (`crate::undo`), if
    /// the target journals them.
    pub run_id: Option<String>,
    /// The target tables the writes name.
    pub tables: std::sync::Arc<Vec<crate::schema::TableDef>>,
    pub writes: Vec<ChangeWrite>,
    pub origins: Vec<ChangeOrigin>,
    pub dead: Vec<StreamDeadLetter>,
    /// The stored position this batch was planned against (fencing).
    pub previous: Option<crate::position::Position>,
    /// The position after it.
    pub next: Option<crate::position::Position>,
    /// The plugins (or `identity`) that produced the writes.
    pub plugin_sha256: String,
    /// When the newest source transaction in it committed (Unix µs).
    pub source_commit_micros: Option<i64>,
    /// Conflict detection: how much of this target the source had seen at
    /// `next` (Unix µs), stored with it so a restart knows it again.
    pub seen_until: Option<i64>,
    /// Versions of source tables' columns that begin in this batch (the
    /// source table, where it begins, its columns): stored with `next`.
    pub versions: Vec<(String, crate::position::Position, crate::schema_edit::TableVersion)>,
    /// Dead letters replayed in this batch (their dedup keys): removed, with
    /// their replay's request, before the batch's own dead letters are
    /// recorded (one that fails again is recorded anew, under its key).
    pub replayed: Vec<String>,
    /// Source tables to copy again inside the stream ([`Resync`]), asked
    /// with the step that makes them.
    pub resyncs: Vec<String>,
    /// Source tables held from this batch on: (table, why, what resolves
    /// it), recorded with the batch's position.
    pub holds: Vec<(String, String, String)>,
    /// Statements run first in the batch's transaction (the source's enum
    /// types, on PostgreSQL).
    pub ddl: Vec<String>,
}

/// One table a stream copies again while it runs (`ferry resync`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Resync {
    pub table: String,
    /// The target table was emptied: the copy is under way.
    pub truncated: bool,
    /// The last key copied (`Key::label`).
    pub last_key: Option<String>,
    /// Source rows copied so far.
    pub rows: u64,
    pub done: bool,
    /// The table is held (its changes skipped, the other tables going on)
    /// until this is resolved; then it is copied again.
    pub held: Option<String>,
    /// What resolves the hold (JSON, the stream's own).
    #[serde(skip)]
    pub until: Option<String>,
}

/// A resync as the stream tables hold it: (table, truncated, last key,
/// rows, done, held reason, held until).
pub type ResyncRow = (String, bool, Option<String>, i64, bool, Option<String>, Option<String>);

impl Resync {
    pub fn of_row((table, truncated, last_key, rows, done, held, until): ResyncRow) -> Resync {
        Resync { table, truncated, last_key, rows: rows as u64, done, held, until }
    }
}

/// The run id `ferry dlq list` gives a change stream's dead letters.
pub const STREAM_RUN: &str = "stream";

/// The target refused a change to a table's columns
/// ([`RowChange::Alter`]): nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
#[error("{table} refused {edit}: {message}")]
pub struct SchemaRefused {
    /// Index of the write in [`RowChangeBatch::writes`].
    pub write: usize,
    pub table: String,
    pub edit: String,
    pub message: String,
}

/// What `ferry status` shows of a many-table stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStatus {
    pub position: Option<crate::position::Position>,
    /// Writes applied and changes dead-lettered since the stream began.
    pub applied: u64,
    pub dead_lettered: u64,
    pub plugin_sha256: Option<String>,
    /// Seconds since the last commit of the stream into the target.
    pub seconds_since_update: f64,
    /// Seconds since the newest applied source transaction committed.
    pub source_commit_age_seconds: Option<f64>,
    /// When it committed (Unix µs).
    pub source_commit_micros: Option<i64>,
    /// Conflict detection: how much of this target the stream's source had
    /// seen at the stored position ([`RowChangeBatch::seen_until`]).
    pub peer_seen_micros: Option<i64>,
    /// Seconds between the first and the last commit of the stream.
    pub active_seconds: Option<f64>,
    /// Why the stream is paused (a schema change it waits on), if it is.
    pub paused: Option<String>,
}

/// What [`RowChangeSink::apply_row_changes`] did beyond the writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangesApplied {
    /// Writes the target refused (dead-lettered).
    pub refused: u64,
    /// Writes not applied because the target row was written concurrently
    /// ([`ChangeWrite::seen_until`]), recorded as conflicts; of them, deletes.
    pub conflicts: u64,
    pub conflicting_deletes: u64,
}

/// Where a change stream of many tables is applied.
///
/// Contract: `apply_row_changes` performs the writes **in order** (the
/// source's own order satisfies its foreign keys; consecutive writes to one
/// table may be merged, the last per key winning), records the dead letters
/// (ignoring ones already recorded), stores `versions` and `next` — all in ONE
/// transaction, and only if the stored position equals `previous` (else
/// [`FencedError`]). A write the target refuses for what its row holds (a
/// data exception, a constraint) is isolated inside that transaction and
/// dead-lettered with kind `load`; the rest applies. A write with
/// [`ChangeWrite::seen_until`] whose target row this database's own
/// application (a transaction without replication origin) committed after
/// that time is not applied: it is recorded in the conflicts table with the
/// row it would have replaced, in the same transaction. An `Alter` write
/// the target refuses fails the whole batch with [`SchemaRefused`] (naming
/// the write), so the caller can apply what came before it and pause.
#[async_trait]
pub trait RowChangeSink: Send {
    /// Creates the change-stream control tables if missing.
    async fn ensure_stream_tables(&mut self) -> anyhow::Result<()>;
    /// The pipeline's stored stream position (`None`: nothing streamed).
    async fn stream_position(&mut self, pipeline: &str) -> anyhow::Result<Option<crate::position::Position>>;
    async fn apply_row_changes(&mut self, batch: &RowChangeBatch) -> anyhow::Result<ChangesApplied>;
    /// Where the pipeline's stream stands (`None`: it never applied anything).
    async fn stream_status(&mut self, pipeline: &str) -> anyhow::Result<Option<StreamStatus>>;
    /// The (source table, source key) of every change of the pipeline that
    /// was dead-lettered (none if it never streamed).
    async fn stream_dead_keys(&mut self, pipeline: &str) -> anyhow::Result<Vec<(String, String)>>;
    /// The newest stored version of each source table's columns
    /// ([`RowChangeBatch::versions`]) of the pipeline's stream.
    async fn stream_versions(
        &mut self,
        pipeline: &str,
    ) -> anyhow::Result<Vec<(String, crate::schema_edit::TableVersion)>>;
    /// The dead letters of the pipeline's stream, oldest first (run id
    /// `stream`; `source_row` is the change as the stream recorded it).
    async fn stream_dead_letters(
        &mut self,
        pipeline: &str,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<crate::control::DeadLetterRecord>>;
    /// Records (or clears, with `None`) why the pipeline's stream is paused.
    async fn set_stream_paused(&mut self, pipeline: &str, reason: Option<&str>) -> anyhow::Result<()>;
    /// Asks the pipeline's stream to replay its dead letters that name a
    /// row (of source table `table` only, when given: `schema.table` or
    /// `table`): the stream reads each row again and applies it between two
    /// of its transactions ([`RowChangeBatch::replayed`]). Returns the dead
    /// letters asked (their dedup keys).
    async fn request_stream_replay(&mut self, pipeline: &str, table: Option<&str>) -> anyhow::Result<Vec<String>>;
    /// Dead letters whose replay is asked, oldest first: (dedup key, source
    /// table, source key).
    async fn stream_replays(&mut self, pipeline: &str, limit: usize) -> anyhow::Result<Vec<(String, String, String)>>;
    /// Of the dead letters `keys`: how many still wait for their replay,
    /// and how many are dead letters again after it.
    async fn stream_replay_state(&mut self, pipeline: &str, keys: &[String]) -> anyhow::Result<(u64, u64)>;
    /// Asks the pipeline's stream to copy source table `table` again
    /// (`ferry resync`), from the start.
    async fn request_resync(&mut self, pipeline: &str, table: &str) -> anyhow::Result<()>;
    /// The pipeline's resyncs, asked or done, oldest first.
    async fn resyncs(&mut self, pipeline: &str) -> anyhow::Result<Vec<Resync>>;
    /// Records how far the resync of `table` is.
    async fn resync_progress(&mut self, pipeline: &str, resync: &Resync) -> anyhow::Result<()>;
    /// Marks every later transaction of this connection as written by the
    /// replication origin `name` (created if missing), so that a logical
    /// replication reader of this database can tell ferry's writes from the
    /// application's (a parallel run's loop prevention); each
    /// `apply_row_changes` then also records with its commit the source
    /// position it came from. An origin is active in one session at a time:
    /// while another session holds it, this is a transient error (that
    /// session may be a dying one of an earlier run). An engine that is
    /// never a logical replication source need do nothing.
    async fn mark_origin(&mut self, name: &str) -> anyhow::Result<()> {
        let _ = name;
        Ok(())
    }
    /// Removes the replication origin `name` ([`Self::mark_origin`]) if it
    /// exists; refused while a session uses it.
    async fn drop_origin(&mut self, name: &str) -> anyhow::Result<()> {
        let _ = name;
        Ok(())
    }
    /// A parallel run: which side owns the writes (`"old"` or `"new"`), as
    /// this target's record for `pipeline` says, and how much of this
    /// target the stream's source had seen when it changed (Unix µs).
    /// `None`: never recorded (the old side owns them).
    async fn parallel_owner(&mut self, pipeline: &str) -> anyhow::Result<Option<(String, Option<i64>)>> {
        let _ = pipeline;
        Ok(None)
    }
    /// Records the owner of a parallel run's writes for `pipeline`.
    async fn set_parallel_owner(&mut self, pipeline: &str, owner: &str, seen: Option<i64>) -> anyhow::Result<()> {
        let _ = (pipeline, owner, seen);
        Err(crate::error::Error::contract("this target cannot take part in a parallel run (PostgreSQL only)"))
    }
    /// The conflicts of `pipeline` recorded in this target (`open` only:
    /// not yet resolved), oldest first.
    async fn conflicts(&mut self, pipeline: &str, open: bool) -> anyhow::Result<Vec<ConflictRecord>> {
        let _ = (pipeline, open);
        Ok(Vec::new())
    }
    /// Marks every open conflict of `pipeline` resolved; how many.
    async fn resolve_conflicts(&mut self, pipeline: &str) -> anyhow::Result<u64> {
        let _ = pipeline;
        Ok(0)
    }
}

/// A recorded conflict (`ferry conflicts`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConflictRecord {
    pub id: i64,
    pub pipeline: String,
    pub target_table: String,
    pub target_key: String,
    /// The change that was not applied (JSON).
    pub incoming: String,
    /// The row kept (JSON).
    pub kept: String,
    pub kept_committed_at: String,
    pub detected_at: String,
    pub resolved_at: Option<String>,
    pub rule: String,
}

/// A stretch of a [`RowChangeBatch`]: consecutive writes to one table,
/// reduced to the last write per key (exact, since the batch commits
/// atomically), or consecutive truncates (one statement, as the source
/// truncated them together).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stretch {
    pub table: usize,
    /// Indexes (in `writes`) of the keys whose last write is a delete.
    pub deletes: Vec<usize>,
    /// Indexes of the keys whose last write is an upsert.
    pub upserts: Vec<usize>,
    /// Tables to truncate (then `deletes` and `upserts` are empty).
    pub truncate: Vec<usize>,
    /// A write that alters `table`'s columns (then the rest are empty).
    pub alter: Option<usize>,
}

impl RowChangeBatch {
    /// The statement that makes `Alter` write `i` on its table, in the
    /// table's engine (`Ok(None)`: nothing to do there), or why the engine
    /// cannot.
    pub fn alter_sql(&self, i: usize) -> Result<Option<String>, SchemaRefused> {
        let RowChange::Alter(edit) = &self.writes[i].change else { return Ok(None) };
        edit.sql(&self.tables[self.writes[i].table]).map_err(|message| self.refused_alter(i, message))
    }

    /// `Alter` write `i`, refused by the target with `message`.
    pub fn refused_alter(&self, i: usize, message: String) -> SchemaRefused {
        let edit = match &self.writes[i].change {
            RowChange::Alter(edit) => edit.to_string(),
            _ => String::new(),
        };
        SchemaRefused { write: i, table: self.tables[self.writes[i].table].name.to_string(), edit, message }
    }

    /// The batch as stretches, in order (see [`Stretch`]).
    pub fn stretches(&self) -> Vec<Stretch> {
        use std::collections::HashMap;
        let w = &self.writes;
        let mut out = Vec::new();
        let mut i = 0;
        while i < w.len() {
            let table = w[i].table;
            if let RowChange::Alter(_) = w[i].change {
                out.push(Stretch { table, alter: Some(i), ..Default::default() });
                i += 1;
                continue;
            }
            if w[i].change == RowChange::Truncate {
                let mut truncate = Vec::new();
                while i < w.len() && w[i].change == RowChange::Truncate {
                    truncate.push(w[i].table);
                    i += 1;
                }
                out.push(Stretch { table, truncate, ..Default::default() });
                continue;
            }
            let def = &self.tables[table];
            let prefix = |c: &RowChange| matches!(c, RowChange::Delete(k) if k.len() < def.primary_key.len());
            if prefix(&w[i].change) {
                // Rows by a key prefix: in place, alone (it may match any
                // key written before or after it).
                out.push(Stretch { table, deletes: vec![i], ..Default::default() });
                i += 1;
                continue;
            }
            let mut last: HashMap<Vec<String>, usize> = HashMap::new();
            let mut order: Vec<Vec<String>> = Vec::new();
            let barrier = |c: &RowChange| matches!(c, RowChange::Truncate | RowChange::Alter(_));
            while i < w.len() && w[i].table == table && !barrier(&w[i].change) && !prefix(&w[i].change) {
                let key = match &w[i].change {
                    RowChange::Upsert(row) => crate::keyset::Key::of(def, row).0,
                    RowChange::Delete(key) => crate::keyset::Key::of_values(key).0,
                    RowChange::Truncate | RowChange::Alter(_) => unreachable!("the loop stops at barriers"),
                };
                if last.insert(key.clone(), i).is_none() {
                    order.push(key);
                }
                i += 1;
            }
            let mut stretch = Stretch { table, ..Default::default() };
            for key in &order {
                let at = last[key];
                match w[at].change {
                    RowChange::Delete(_) => stretch.deletes.push(at),
                    _ => stretch.upserts.push(at),
                }
            }
            out.push(stretch);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_dead_letters_of_one_change_are_each_recorded() {
        let origin = |dedup_key: &str| ChangeOrigin {
            dedup_key: dedup_key.into(),
            source_table: "public.t".into(),
            source_key: Some("1".into()),
            event: r#"{"pgoutput":"update"}"#.into(),
        };
        let dead = |key: &str| StreamDeadLetter { origin: origin(key), kind: DeadLetterKind::Load, reason: "r".into() };
        let letters = [dead("0/1/0/0+1"), dead("0/1/0/0+1"), dead("0/1/0/0+2"), dead("0/1/0/0+1")];
        let keys: Vec<String> = dedup_keys(letters.iter()).into_iter().map(|(_, k)| k).collect();
        assert_eq!(keys, ["0/1/0/0+1", "0/1/0/0+1#1", "0/1/0/0+2", "0/1/0/0+1#2"]);
        let kept = origin("x").with_row(serde_json::json!({ "id": 1 }));
        assert_eq!(kept.event, r#"{"pgoutput":"update","row":{"id":1}}"#);
    }
}
