//! The undo-journal role of a target (`UndoJournal`) and what a journal's
//! rollback reports: at the bottom, beside the other role traits, so that
//! the engines implement it without reaching up into `undo`, which
//! orchestrates journals and rollbacks over them (see its documentation
//! for what is journaled and how a rollback restores it).

use async_trait::async_trait;
use serde::Serialize;

use crate::schema::TableDef;

/// How a table of a run is journaled (decided at the run's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UndoMode {
    /// Empty at the start: the run's rows are found by their transactions.
    EmptyAtStart,
    /// Held rows at the start: first-touch before-images of every key.
    BeforeImages,
}

/// What a rollback did (or would do, `--dry-run`) to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableRollback {
    pub table: String,
    pub mode: UndoMode,
    /// Rows the run wrote, deleted.
    pub deleted: u64,
    /// Before-images written back.
    pub restored: u64,
    /// Rows changed by someone else since the run wrote them, or added by
    /// someone else under a key the table did not hold at the run's start:
    /// kept (or put back / removed with `--force`), and the first of their
    /// keys.
    pub changed_by_others: u64,
    pub changed_keys: Vec<String>,
    /// The table at the run's start and after the rollback: `rows:checksum`.
    pub checksum_before: String,
    pub checksum_after: String,
    /// The table is exactly as it was at the run's start.
    pub exact: bool,
}

/// What a journal's rollback did.
#[derive(Debug, Clone, Default)]
pub struct JournalRollback {
    pub tables: Vec<TableRollback>,
    /// Objects the run's schema copy created, dropped (every table came
    /// back exactly), in the order dropped.
    pub dropped: Vec<String>,
    /// Objects it created that others now depend on: kept, with why.
    pub kept: Vec<String>,
}

/// How a rollback runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollbackOptions {
    /// Overwrite rows changed by someone else since the run wrote them.
    pub force: bool,
    /// Do everything in a transaction that is rolled back: report only.
    pub dry_run: bool,
}

/// The undo-journal role of a target.
///
/// Contract: `begin_undo` records `table`'s state (row count, checksum,
/// empty or not) for `run_id` once — a later call (a resumed run, another
/// connection) returns what the first recorded — and must run before the
/// run writes into the table; from then on every write of the run into
/// it (`RowSink::commit_rows` of a batch of that run,
/// `RowChangeSink::apply_row_changes` of a batch naming the run) journals
/// as described in the module documentation, in the write's transaction.
/// `None`: this engine keeps no journal (rollback unavailable).
/// `end_undo` runs whenever the run stops writing.
/// `rollback` restores `tables` (each table after the tables it references)
/// in one transaction, as described above; it refuses a run without a
/// journal or already rolled back.
#[async_trait]
pub trait UndoJournal: Send {
    async fn begin_undo(&mut self, run_id: &str, table: &TableDef) -> anyhow::Result<Option<UndoMode>> {
        let _ = (run_id, table);
        Ok(None)
    }
    /// The run stopped writing for now (a migration ended, a stream
    /// stopped): what it left is what a rollback compares with to find
    /// others' changes, where the engine needs that recorded (SQLite).
    async fn end_undo(&mut self, run_id: &str) -> anyhow::Result<()> {
        let _ = run_id;
        Ok(())
    }
    /// The target tables journaled for `run_id` (none: no journal).
    async fn journaled_tables(&mut self, run_id: &str) -> anyhow::Result<Vec<crate::db::TableName>> {
        let _ = run_id;
        Ok(Vec::new())
    }
    async fn rollback(
        &mut self,
        run_id: &str,
        pipeline: &str,
        tables: &[TableDef],
        options: RollbackOptions,
    ) -> anyhow::Result<JournalRollback> {
        let _ = (run_id, pipeline, tables, options);
        Err(crate::error::Error::contract("this target keeps no undo journal"))
    }
    /// Forgets run `run_id`'s journal once the run is accepted (`ferry
    /// rollback RUN --forget`): its before-images, keys and markers are
    /// deleted and the run journals nothing more (a stream still running
    /// it stops journaling at its next check); it can no longer be rolled
    /// back. Returns the journal rows deleted.
    async fn forget_undo(&mut self, run_id: &str) -> anyhow::Result<u64> {
        let _ = run_id;
        Err(crate::error::Error::contract("this target keeps no undo journal to forget"))
    }
    /// Whether run `run_id`'s journal was forgotten.
    async fn undo_forgotten(&mut self, run_id: &str) -> anyhow::Result<bool> {
        let _ = run_id;
        Ok(false)
    }
}

/// The tables of `run_id`'s journal not rolled back yet, from its records
/// `(table, rolled back at)` (an engine's `journaled_tables`); an error if
/// every one of them was.
pub fn unfinished(run_id: &str, records: Vec<(String, Option<String>)>) -> anyhow::Result<Vec<crate::db::TableName>> {
    if let (Some((_, Some(at))), true) = (records.first(), records.iter().all(|(_, at)| at.is_some())) {
        return Err(crate::error::Error::contract(format!("run {run_id} was already rolled back (at {at})")));
    }
    records
        .into_iter()
        .filter(|(_, at)| at.is_none())
        .map(|(name, _)| {
            crate::db::TableName::parse(&name)
                .map_err(|e| crate::error::Error::contract(format!("journal of {name}: {e}")))
        })
        .collect()
}
