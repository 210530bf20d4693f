//! The undo journal in SQLite: a pre-run backup, not per-row journaling.
//!
//! SQLite rows carry no writing transaction, so a run's rows cannot be
//! told from anyone else's by a marker as in PostgreSQL. A SQLite database
//! is one file, though, and `VACUUM INTO` writes a consistent copy of it:
//! the run's start is that copy (`<file>.ferry-undo-<run>.before`, taken
//! before the run writes anything), and the state the run left is a second
//! copy (`….after`) taken when a migration ends or a stream stops. A
//! rollback puts back, table by table, the rows of the first copy; a row
//! that differs from the second (someone else wrote it after ferry) is
//! reported and kept unless forced. Without the second copy (the run was
//! killed), nothing can be told apart: rollback then needs `--force`.
//! Values are copied from one SQLite file to another as they are stored,
//! so the result is exact; the cost is two copies of the database file.

use async_trait::async_trait;
use sqlx::Connection;

use super::tables::SqliteTables;
use crate::db::{TableName, quote_ident};
use crate::error::Error;
use crate::schema::TableDef;
use crate::undo_journal::{JournalRollback, RollbackOptions, TableRollback, UndoJournal, UndoMode};

const DDL: &str = "CREATE TABLE IF NOT EXISTS ferry_undo_tables (
    run_id         TEXT NOT NULL,
    target_table   TEXT NOT NULL,
    empty_at_start INTEGER NOT NULL,
    rows_before    INTEGER NOT NULL,
    begun_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    rolled_back_at TEXT,
    PRIMARY KEY (run_id, target_table)
)";

/// How many changed keys a rollback names per table.
const NAMED_KEYS: usize = 20;

impl SqliteTables {
    /// The copy of the database at run `run_id`'s start (`before`) or as
    /// the run left it (`after`).
    fn backup(&self, run_id: &str, which: &str) -> anyhow::Result<String> {
        let file = self.url.sqlite_path().filter(|p| !p.is_empty() && !p.contains(":memory:")).ok_or_else(|| {
            Error::contract(format!("{}: an in-memory SQLite database keeps no undo journal", self.url))
        })?;
        let run: String = run_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        Ok(format!("{file}.ferry-undo-{run}.{which}"))
    }

    async fn vacuum_into(&mut self, path: &str) -> anyhow::Result<()> {
        // VACUUM INTO refuses an existing file.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::contract(format!("cannot replace the undo copy {path}: {e}")));
            }
            _ => {}
        }
        sqlx::query("VACUUM INTO ?1")
            .bind(path)
            .execute(&mut self.conn)
            .await
            .map_err(|e| Error::driver(format!("copying {} to {path} (the undo journal)", self.url), &e))?;
        Ok(())
    }
}

/// `a."k" IS b."k" AND …` over the key columns of `def` (every column
/// when it has no key).
fn same_key(def: &TableDef, a: &str, b: &str) -> String {
    let columns: Vec<String> = match def.primary_key.is_empty() {
        true => def.columns.iter().map(|c| quote_ident(&c.name)).collect(),
        false => def.key_columns().map(|c| quote_ident(&c.name)).collect(),
    };
    columns.iter().map(|c| format!("{a}.{c} IS {b}.{c}")).collect::<Vec<_>>().join(" AND ")
}

fn key_label(def: &TableDef, alias: &str) -> String {
    let columns: Vec<String> = def.key_columns().map(|c| format!("{alias}.{}", quote_ident(&c.name))).collect();
    match columns.is_empty() {
        true => format!("{alias}.rowid"),
        false => format!("'(' || {} || ')'", columns.join(" || ',' || ")),
    }
}

#[async_trait]
impl UndoJournal for SqliteTables {
    async fn forget_undo(&mut self, run_id: &str) -> anyhow::Result<u64> {
        Err(Error::contract(format!(
            "a SQLite target keeps run {run_id}'s undo journal as copies of the database ({} and {}), which the \
             stream does not grow: delete them once the run is accepted",
            self.backup(run_id, "before")?,
            self.backup(run_id, "after")?
        )))
    }

    async fn begin_undo(&mut self, run_id: &str, table: &TableDef) -> anyhow::Result<Option<UndoMode>> {
        let what = |e: sqlx::Error| Error::driver(format!("starting the undo journal of {}", table.name), &e);
        sqlx::query(DDL).execute(&mut self.conn).await.map_err(what)?;
        let name = table.name.to_string();
        let known: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT empty_at_start, rolled_back_at FROM ferry_undo_tables WHERE run_id = ?1 AND target_table = ?2",
        )
        .bind(run_id)
        .bind(&name)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(what)?;
        let empty = match known {
            Some((_, Some(_))) => {
                return Err(Error::contract(format!(
                    "run {run_id} was rolled back: it writes nothing into {name} any more"
                )));
            }
            Some((empty, None)) => empty != 0,
            None => {
                // An in-memory database has no file to copy: no journal.
                let Ok(before) = self.backup(run_id, "before") else {
                    return Ok(None);
                };
                // One copy per run, taken before its first table is written.
                if !std::path::Path::new(&before).exists() {
                    self.vacuum_into(&before).await?;
                }
                let rows: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", table.quoted())))
                        .fetch_one(&mut self.conn)
                        .await
                        .map_err(what)?;
                sqlx::query(
                    "INSERT INTO ferry_undo_tables (run_id, target_table, empty_at_start, rows_before) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(run_id)
                .bind(&name)
                .bind(rows == 0)
                .bind(rows)
                .execute(&mut self.conn)
                .await
                .map_err(what)?;
                rows == 0
            }
        };
        Ok(Some(if empty { UndoMode::EmptyAtStart } else { UndoMode::BeforeImages }))
    }

    async fn end_undo(&mut self, run_id: &str) -> anyhow::Result<()> {
        // No journal table yet: nothing journaled.
        let journaled: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ferry_undo_tables WHERE run_id = ?1 AND rolled_back_at IS NULL")
                .bind(run_id)
                .fetch_one(&mut self.conn)
                .await
                .unwrap_or_default();
        if journaled > 0 {
            let after = self.backup(run_id, "after")?;
            self.vacuum_into(&after).await?;
        }
        Ok(())
    }

    async fn journaled_tables(&mut self, run_id: &str) -> anyhow::Result<Vec<TableName>> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_undo_tables'",
        )
        .fetch_one(&mut self.conn)
        .await?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT target_table, rolled_back_at FROM ferry_undo_tables WHERE run_id = ?1 ORDER BY target_table",
        )
        .bind(run_id)
        .fetch_all(&mut self.conn)
        .await?;
        crate::undo_journal::unfinished(run_id, rows)
    }

    async fn rollback(
        &mut self,
        run_id: &str,
        pipeline: &str,
        tables: &[TableDef],
        options: RollbackOptions,
    ) -> anyhow::Result<JournalRollback> {
        let before = self.backup(run_id, "before")?;
        let after = self.backup(run_id, "after")?;
        if !std::path::Path::new(&before).exists() {
            return Err(Error::contract(format!(
                "the copy of {} taken at run {run_id}'s start ({before}) is gone: it cannot be rolled back",
                self.url
            )));
        }
        let has_after = std::path::Path::new(&after).exists();
        if !has_after && !options.force {
            return Err(Error::contract(format!(
                "run {run_id} did not end (it was killed), so SQLite cannot tell its rows from others' written \
                 since: pass --force to put every table back as it was at the run's start"
            )));
        }
        let url = self.url.to_string();
        let fail = |what: String| {
            let url = url.clone();
            move |e: sqlx::Error| Error::driver(format!("{what} in {url}"), &e)
        };
        sqlx::query("ATTACH DATABASE ?1 AS ferry_before").bind(&before).execute(&mut self.conn).await?;
        if has_after {
            sqlx::query("ATTACH DATABASE ?1 AS ferry_after").bind(&after).execute(&mut self.conn).await?;
        }
        let result = async {
            let mut tx = self.conn.begin().await.map_err(fail("starting the rollback".into()))?;
            // Fence first: whatever still runs under the run stops at its
            // next commit.
            for sql in [
                "DELETE FROM ferry_table_progress WHERE run_id = ?1",
                "UPDATE ferry_runs SET status = 'rolled_back', message = 'rolled back by ferry rollback' WHERE run_id = ?1",
            ] {
                sqlx::query(sql).bind(run_id).execute(&mut *tx).await?;
            }
            let checkpoints: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_change_checkpoints'",
            )
            .fetch_one(&mut *tx)
            .await?;
            if checkpoints > 0 {
                sqlx::query(
                    "DELETE FROM ferry_change_checkpoints WHERE pipeline = ?1 AND ?2 IS (SELECT run_id FROM ferry_runs \
                     WHERE pipeline = ?1 ORDER BY started_at DESC, run_id DESC LIMIT 1)",
                )
                .bind(pipeline)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            }
            let mut out = Vec::with_capacity(tables.len());
            for def in tables {
                let (empty, rows_before): (i64, i64) = sqlx::query_as(
                    "SELECT empty_at_start, rows_before FROM ferry_undo_tables WHERE run_id = ?1 AND target_table = ?2",
                )
                .bind(run_id)
                .bind(def.name.to_string())
                .fetch_one(&mut *tx)
                .await?;
                out.push(TableRollback {
                    table: def.name.to_string(),
                    mode: if empty != 0 { UndoMode::EmptyAtStart } else { UndoMode::BeforeImages },
                    deleted: 0,
                    restored: 0,
                    changed_by_others: 0,
                    changed_keys: Vec::new(),
                    checksum_before: format!("{rows_before} rows"),
                    checksum_after: String::new(),
                    exact: false,
                });
            }
            // Keys someone else changed (as of now, before anything is
            // undone) are left as they are — the row, or its absence —
            // unless forced: kept in a temporary table per table.
            let keep = |i: usize, def: &TableDef, row: &str, changed: bool| match options.force || !changed {
                true => String::new(),
                false => format!(" AND NOT EXISTS (SELECT 1 FROM temp.ferry_changed_{i} c WHERE {})", same_key(def, row, "c")),
            };
            // Children before parents: what the run left goes.
            for (i, (def, report)) in tables.iter().zip(out.iter_mut()).enumerate().rev() {
                let (t, unqualified) = (def.quoted(), quote_ident(&def.name.name));
                let key: Vec<String> = match def.primary_key.is_empty() {
                    true => def.columns.iter().map(|c| quote_ident(&c.name)).collect(),
                    false => def.key_columns().map(|c| quote_ident(&c.name)).collect(),
                };
                let key = key.join(", ");
                // Rows others wrote since the run ended: in the database
                // now and not as the run left them (or the other way round).
                let changed: Vec<String> = match has_after {
                    false => Vec::new(),
                    true => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "CREATE TEMP TABLE ferry_changed_{i} AS \
                             SELECT {key} FROM (SELECT * FROM main.{unqualified} EXCEPT SELECT * FROM ferry_after.{unqualified}) \
                             UNION SELECT {key} FROM (SELECT * FROM ferry_after.{unqualified} EXCEPT SELECT * FROM main.{unqualified})"
                        )))
                        .execute(&mut *tx)
                        .await
                        .map_err(fail(format!("finding rows of {} changed since the run", def.name)))?;
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                            "SELECT {} FROM temp.ferry_changed_{i} ferry_row ORDER BY 1",
                            key_label(def, "ferry_row")
                        )))
                        .fetch_all(&mut *tx)
                        .await?
                    }
                };
                report.deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {t} AS ferry_row WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM \
                     ferry_before.{unqualified} INTERSECT SELECT * FROM main.{unqualified}) b WHERE {}){}",
                    same_key(def, "ferry_row", "b"),
                    keep(i, def, "ferry_row", !changed.is_empty())
                )))
                .execute(&mut *tx)
                .await
                .map_err(fail(format!("deleting the rows run {run_id} wrote into {}", def.name)))?
                .rows_affected();
                report.changed_by_others = if options.force { 0 } else { changed.len() as u64 };
                report.changed_keys = changed.into_iter().take(NAMED_KEYS).collect();
            }
            // Parents before children: the rows of the run's start.
            for (i, (def, report)) in tables.iter().zip(out.iter_mut()).enumerate() {
                let (t, unqualified) = (def.quoted(), quote_ident(&def.name.name));
                let columns: Vec<String> = def.columns.iter().map(|c| quote_ident(&c.name)).collect();
                report.restored = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {t} ({cols}) SELECT {cols} FROM ferry_before.{unqualified} b \
                     WHERE NOT EXISTS (SELECT 1 FROM main.{unqualified} ferry_row WHERE {}){}",
                    same_key(def, "ferry_row", "b"),
                    keep(i, def, "b", report.changed_by_others > 0),
                    cols = columns.join(", ")
                )))
                .execute(&mut *tx)
                .await
                .map_err(fail(format!("writing back the rows run {run_id} changed in {}", def.name)))?
                .rows_affected();
                let differing: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT (SELECT count(*) FROM (SELECT * FROM main.{unqualified} EXCEPT SELECT * FROM \
                     ferry_before.{unqualified})) + (SELECT count(*) FROM (SELECT * FROM ferry_before.{unqualified} \
                     EXCEPT SELECT * FROM main.{unqualified}))"
                )))
                .fetch_one(&mut *tx)
                .await?;
                let rows_after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
                    .fetch_one(&mut *tx)
                    .await?;
                report.checksum_after = format!("{rows_after} rows, {differing} differing from the copy");
                report.exact = differing == 0;
            }
            let exact: Vec<String> = out.iter().filter(|t| t.exact).map(|t| t.table.clone()).collect();
            for table in &exact {
                sqlx::query(
                    "UPDATE ferry_undo_tables SET rolled_back_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                     WHERE run_id = ?1 AND target_table = ?2",
                )
                .bind(run_id)
                .bind(table)
                .execute(&mut *tx)
                .await?;
            }
            for i in 0..tables.len() {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS temp.ferry_changed_{i}")))
                    .execute(&mut *tx)
                    .await?;
            }
            if options.dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await.map_err(fail("committing the rollback".into()))?;
            }
            anyhow::Ok(out)
        }
        .await;
        let _ = sqlx::query("DETACH DATABASE ferry_before").execute(&mut self.conn).await;
        if has_after {
            let _ = sqlx::query("DETACH DATABASE ferry_after").execute(&mut self.conn).await;
        }
        let out = result?;
        if !options.dry_run && out.iter().all(|t| t.exact) {
            for path in [&before, &after] {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(JournalRollback { tables: out, ..JournalRollback::default() })
    }
}
