//! Change streams of many tables into SQLite: the writes in stream order,
//! their dead letters and the stream position in one transaction
//! (`BEGIN IMMEDIATE`). A statement SQLite refuses is undone alone, the
//! transaction intact, so its rows are retried one by one.

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{Connection, QueryBuilder};

use super::refuses_rows;
use super::tables::{MAX_PARAMS, SqliteTables, push_stored, to_sqlite};
use crate::config::OnConflict;
use crate::keyset::Row;
use crate::position::Position;
use crate::schema::TableDef;
use crate::sink::{
    ChangesApplied, FencedError, RowChange, RowChangeBatch, RowChangeSink, StreamDeadLetter, StreamStatus,
};

const STREAM_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS ferry_change_checkpoints (
    pipeline         TEXT PRIMARY KEY,
    commit_lsn       INTEGER,
    lsn              INTEGER,
    seq              INTEGER,
    streaming        INTEGER NOT NULL DEFAULT 0,
    applied          INTEGER NOT NULL DEFAULT 0,
    dead_lettered    INTEGER NOT NULL DEFAULT 0,
    plugin_sha256    TEXT,
    source_commit_at TEXT,
    first_applied_at TEXT,
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE TABLE IF NOT EXISTS ferry_change_dead_letters (
    id            INTEGER PRIMARY KEY,
    pipeline      TEXT NOT NULL,
    dedup_key     TEXT NOT NULL,
    source_table  TEXT,
    source_key    TEXT,
    event         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    plugin_sha256 TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    UNIQUE (pipeline, dedup_key)
);
CREATE TABLE IF NOT EXISTS ferry_stream_versions (
    pipeline     TEXT NOT NULL,
    source_table TEXT NOT NULL,
    commit_lsn   INTEGER NOT NULL,
    lsn          INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    columns      TEXT NOT NULL,
    PRIMARY KEY (pipeline, source_table, commit_lsn, lsn, seq)
);
CREATE TABLE IF NOT EXISTS ferry_stream_paused (
    pipeline TEXT PRIMARY KEY,
    reason   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ferry_stream_resyncs (
    pipeline     TEXT NOT NULL,
    source_table TEXT NOT NULL,
    requested_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    truncated    INTEGER NOT NULL DEFAULT 0,
    last_key     TEXT,
    rows         INTEGER NOT NULL DEFAULT 0,
    done_at      TEXT,
    held_reason  TEXT,
    held_until   TEXT,
    PRIMARY KEY (pipeline, source_table)
);
CREATE TABLE IF NOT EXISTS ferry_stream_replays (
    pipeline     TEXT NOT NULL,
    dedup_key    TEXT NOT NULL,
    requested_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (pipeline, dedup_key)
);
"#;

/// A source table held (see [`crate::sink::Resync::held`]).
const HELD: &str = "INSERT INTO ferry_stream_resyncs (pipeline, source_table, held_reason, held_until) \
    VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pipeline, source_table) DO UPDATE SET \
    requested_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), truncated = 0, last_key = NULL, rows = 0, done_at = NULL, \
    held_reason = ?3, held_until = ?4";

/// A resync of a source table asked (again: from the start).
const RESYNC_ASKED: &str = "INSERT INTO ferry_stream_resyncs (pipeline, source_table) VALUES (?1, ?2) \
    ON CONFLICT (pipeline, source_table) DO UPDATE SET requested_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), \
    truncated = 0, last_key = NULL, rows = 0, done_at = NULL, held_reason = NULL, held_until = NULL";

type Stored = (Option<i64>, Option<i64>, Option<i64>);

fn position_of(stored: Option<Stored>) -> Option<Position> {
    match stored {
        Some((Some(commit), Some(lsn), seq)) => {
            Some(Position { commit: commit as u64, lsn: lsn as u64, seq: seq.unwrap_or(0) as u32 })
        }
        _ => None,
    }
}

/// Deletes `keys` (values in key order, or a prefix) in statements of at most
/// MAX_PARAMS parameters.
async fn delete(tx: &mut SqliteConnection, def: &TableDef, keys: &[&Row]) -> Result<u64, sqlx::Error> {
    let mut gone = 0;
    // Keys of one length: shorter than the table's key for a prefix.
    let n = keys.first().map_or(0, |k| k.len());
    let columns: Vec<String> = def.key_columns().take(n).map(|c| crate::db::quote_ident(&c.name)).collect();
    for chunk in keys.chunks((MAX_PARAMS / n.max(1)).max(1)) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("DELETE FROM {} WHERE ({}) IN (VALUES ", def.quoted(), columns.join(", ")));
        for (n, key) in chunk.iter().enumerate() {
            qb.push(if n == 0 { "(" } else { ", (" });
            let mut b = qb.separated(", ");
            for value in key.iter() {
                push_stored(&mut b, to_sqlite(value));
            }
            qb.push(")");
        }
        qb.push(")");
        gone += qb.build().execute(&mut *tx).await?.rows_affected();
    }
    Ok(gone)
}

/// Upserts or deletes `rows`; a refused statement is retried row by row,
/// the refused rows returned (index, message).
async fn write(
    tx: &mut SqliteConnection,
    def: &TableDef,
    rows: &[&Row],
    upsert: bool,
) -> Result<Vec<(usize, String)>, sqlx::Error> {
    let all = match upsert {
        true => SqliteTables::insert(tx, def, rows, OnConflict::Overwrite).await,
        false => delete(tx, def, rows).await,
    };
    match all {
        Ok(_) => return Ok(Vec::new()),
        Err(e) if refuses_rows(&e, OnConflict::Overwrite) => {}
        Err(e) => return Err(e),
    }
    let mut refused = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let one = match upsert {
            true => SqliteTables::insert(tx, def, std::slice::from_ref(row), OnConflict::Overwrite).await,
            false => delete(tx, def, std::slice::from_ref(row)).await,
        };
        match one {
            Ok(_) => {}
            Err(e) if refuses_rows(&e, OnConflict::Overwrite) => refused.push((i, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

#[async_trait]
impl RowChangeSink for SqliteTables {
    async fn ensure_stream_tables(&mut self) -> anyhow::Result<()> {
        // The source is told what was applied once it commits: a commit
        // must survive a power loss, not only a crash of ferry.
        sqlx::query("PRAGMA synchronous = FULL").execute(&mut self.conn).await?;
        for statement in crate::db::ddl_statements(STREAM_DDL) {
            sqlx::query(statement).execute(&mut self.conn).await?;
        }
        Ok(())
    }

    async fn stream_position(&mut self, pipeline: &str) -> anyhow::Result<Option<Position>> {
        let stored: Option<Stored> =
            sqlx::query_as("SELECT commit_lsn, lsn, seq FROM ferry_change_checkpoints WHERE pipeline = ?1")
                .bind(pipeline)
                .fetch_optional(&mut self.conn)
                .await?;
        Ok(position_of(stored))
    }

    async fn stream_status(&mut self, pipeline: &str) -> anyhow::Result<Option<StreamStatus>> {
        if !super::exists(&mut self.conn, "ferry_change_checkpoints").await? {
            return Ok(None);
        }
        type Status = (Option<i64>, Option<i64>, Option<i64>, i64, i64, Option<String>, f64, Option<f64>, Option<f64>);
        let row: Option<Status> = sqlx::query_as(
            "SELECT commit_lsn, lsn, seq, applied, \
             (SELECT count(*) FROM ferry_change_dead_letters d WHERE d.pipeline = c.pipeline), plugin_sha256, \
             (julianday('now') - julianday(updated_at)) * 86400.0, \
             (julianday('now') - julianday(source_commit_at)) * 86400.0, \
             (julianday(updated_at) - julianday(first_applied_at)) * 86400.0 \
             FROM ferry_change_checkpoints c WHERE pipeline = ?1",
        )
        .bind(pipeline)
        .fetch_optional(&mut self.conn)
        .await?;
        let paused: Option<String> = sqlx::query_scalar("SELECT reason FROM ferry_stream_paused WHERE pipeline = ?1")
            .bind(pipeline)
            .fetch_optional(&mut self.conn)
            .await
            .unwrap_or(None);
        Ok(row.map(|(commit, lsn, seq, applied, dead, plugin_sha256, age, commit_age, active)| StreamStatus {
            paused,
            position: position_of(Some((commit, lsn, seq))),
            applied: applied as u64,
            dead_lettered: dead as u64,
            plugin_sha256,
            seconds_since_update: age,
            source_commit_age_seconds: commit_age,
            source_commit_micros: None,
            peer_seen_micros: None,
            active_seconds: active,
        }))
    }

    async fn stream_versions(
        &mut self,
        pipeline: &str,
    ) -> anyhow::Result<Vec<(String, crate::schema_edit::TableVersion)>> {
        if !super::exists(&mut self.conn, "ferry_stream_versions").await? {
            return Ok(Vec::new());
        }
        // The newest version of each table (row values compare in order).
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT source_table, columns FROM ferry_stream_versions v WHERE pipeline = ?1 \
             AND (commit_lsn, lsn, seq) = (SELECT commit_lsn, lsn, seq FROM ferry_stream_versions n \
             WHERE n.pipeline = v.pipeline AND n.source_table = v.source_table \
             ORDER BY commit_lsn DESC, lsn DESC, seq DESC LIMIT 1)",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        rows.into_iter().map(|(table, columns)| Ok((table, serde_json::from_str(&columns)?))).collect()
    }

    async fn stream_dead_letters(
        &mut self,
        pipeline: &str,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<crate::control::DeadLetterRecord>> {
        if !super::exists(&mut self.conn, "ferry_change_dead_letters").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT coalesce(source_table, ''), coalesce(source_key, ''), event, kind, reason, plugin_sha256 \
             FROM ferry_change_dead_letters WHERE pipeline = ?1 ORDER BY id LIMIT ?2",
        )
        .bind(pipeline)
        .bind(limit.map_or(-1, |l| l as i64))
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(crate::control::DeadLetterRecord::of_stream).collect())
    }

    async fn request_stream_replay(&mut self, pipeline: &str, table: Option<&str>) -> anyhow::Result<Vec<String>> {
        if !super::exists(&mut self.conn, "ferry_change_dead_letters").await? {
            return Ok(Vec::new());
        }
        self.ensure_stream_tables().await?;
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT dedup_key FROM ferry_change_dead_letters WHERE pipeline = ?1 AND source_table IS NOT NULL \
             AND source_key IS NOT NULL AND (?2 IS NULL OR source_table = ?2 OR source_table LIKE '%.' || ?2) \
             ORDER BY id",
        )
        .bind(pipeline)
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        for key in &keys {
            sqlx::query("INSERT OR IGNORE INTO ferry_stream_replays (pipeline, dedup_key) VALUES (?1, ?2)")
                .bind(pipeline)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(keys)
    }

    async fn stream_replays(&mut self, pipeline: &str, limit: usize) -> anyhow::Result<Vec<(String, String, String)>> {
        if !super::exists(&mut self.conn, "ferry_stream_replays").await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT d.dedup_key, d.source_table, d.source_key FROM ferry_stream_replays r \
             JOIN ferry_change_dead_letters d ON d.pipeline = r.pipeline AND d.dedup_key = r.dedup_key \
             WHERE r.pipeline = ?1 ORDER BY d.id LIMIT ?2",
        )
        .bind(pipeline)
        .bind(limit as i64)
        .fetch_all(&mut self.conn)
        .await?)
    }

    async fn stream_replay_state(&mut self, pipeline: &str, keys: &[String]) -> anyhow::Result<(u64, u64)> {
        let (mut pending, mut dead) = (0, 0);
        for key in keys {
            let (asked, there): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM ferry_stream_replays WHERE pipeline = ?1 AND dedup_key = ?2), \
                 (SELECT count(*) FROM ferry_change_dead_letters WHERE pipeline = ?1 AND dedup_key = ?2)",
            )
            .bind(pipeline)
            .bind(key)
            .fetch_one(&mut self.conn)
            .await?;
            match (asked, there) {
                (0, 0) => {}
                (0, _) => dead += 1,
                _ => pending += 1,
            }
        }
        Ok((pending, dead))
    }

    async fn request_resync(&mut self, pipeline: &str, table: &str) -> anyhow::Result<()> {
        self.ensure_stream_tables().await?;
        sqlx::query(RESYNC_ASKED).bind(pipeline).bind(table).execute(&mut self.conn).await?;
        Ok(())
    }

    async fn resyncs(&mut self, pipeline: &str) -> anyhow::Result<Vec<crate::sink::Resync>> {
        if !super::exists(&mut self.conn, "ferry_stream_resyncs").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<crate::sink::ResyncRow> = sqlx::query_as(
            "SELECT source_table, truncated, last_key, rows, done_at IS NOT NULL, held_reason, held_until FROM ferry_stream_resyncs \
             WHERE pipeline = ?1 ORDER BY requested_at",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(crate::sink::Resync::of_row).collect())
    }

    async fn resync_progress(&mut self, pipeline: &str, resync: &crate::sink::Resync) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE ferry_stream_resyncs SET truncated = ?3, last_key = ?4, rows = ?5, \
             done_at = CASE WHEN ?6 THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END \
             WHERE pipeline = ?1 AND source_table = ?2",
        )
        .bind(pipeline)
        .bind(&resync.table)
        .bind(resync.truncated)
        .bind(&resync.last_key)
        .bind(resync.rows as i64)
        .bind(resync.done)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    async fn set_stream_paused(&mut self, pipeline: &str, reason: Option<&str>) -> anyhow::Result<()> {
        match reason {
            Some(reason) => {
                sqlx::query("INSERT OR REPLACE INTO ferry_stream_paused (pipeline, reason) VALUES (?1, ?2)")
                    .bind(pipeline)
                    .bind(reason)
                    .execute(&mut self.conn)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM ferry_stream_paused WHERE pipeline = ?1")
                    .bind(pipeline)
                    .execute(&mut self.conn)
                    .await?
            }
        };
        Ok(())
    }

    async fn stream_dead_keys(&mut self, pipeline: &str) -> anyhow::Result<Vec<(String, String)>> {
        if !super::exists(&mut self.conn, "ferry_change_dead_letters").await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT DISTINCT source_table, source_key FROM ferry_change_dead_letters \
             WHERE pipeline = ?1 AND source_table IS NOT NULL AND source_key IS NOT NULL",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?)
    }

    async fn apply_row_changes(&mut self, batch: &RowChangeBatch) -> anyhow::Result<ChangesApplied> {
        // SQLite is never the old side of a parallel run: no conflicts to detect.
        let fail = |e: sqlx::Error| anyhow::anyhow!("applying changes in {}: {e}", self.url);
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO ferry_change_checkpoints (pipeline) VALUES (?1) ON CONFLICT DO NOTHING")
            .bind(&batch.pipeline)
            .execute(&mut *tx)
            .await?;
        let stored: Option<Stored> =
            sqlx::query_as("SELECT commit_lsn, lsn, seq FROM ferry_change_checkpoints WHERE pipeline = ?1")
                .bind(&batch.pipeline)
                .fetch_optional(&mut *tx)
                .await?;
        if position_of(stored) != batch.previous {
            return Err(FencedError { run_id: format!("change stream {}", batch.pipeline) }.into());
        }
        let mut refused: Vec<StreamDeadLetter> = Vec::new();
        for stretch in batch.stretches() {
            if let Some(i) = stretch.alter {
                if let Some(sql) = batch.alter_sql(i)? {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| batch.refused_alter(i, e.to_string()))?;
                }
                continue;
            }
            for &t in &stretch.truncate {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", batch.tables[t].quoted())))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            let def = &batch.tables[stretch.table];
            for (indexes, upsert) in [(&stretch.deletes, false), (&stretch.upserts, true)] {
                let rows: Vec<&Row> = indexes
                    .iter()
                    .map(|&i| match &batch.writes[i].change {
                        RowChange::Upsert(row) | RowChange::Delete(row) => row,
                        RowChange::Truncate | RowChange::Alter(_) => {
                            unreachable!("stretches hold no barrier here")
                        }
                    })
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                for (at, message) in write(&mut tx, def, &rows, upsert).await.map_err(fail)? {
                    let write = &batch.writes[indexes[at]];
                    refused.push(batch.origins[write.origin].refused(def, &write.change, &message));
                }
            }
        }
        for table in &batch.resyncs {
            sqlx::query(RESYNC_ASKED).bind(&batch.pipeline).bind(table).execute(&mut *tx).await?;
        }
        for (table, reason, until) in &batch.holds {
            sqlx::query(HELD).bind(&batch.pipeline).bind(table).bind(reason).bind(until).execute(&mut *tx).await?;
        }
        for key in &batch.replayed {
            for table in ["ferry_change_dead_letters", "ferry_stream_replays"] {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE pipeline = ?1 AND dedup_key = ?2")))
                    .bind(&batch.pipeline)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for (d, dedup_key) in crate::sink::dedup_keys(batch.dead.iter().chain(&refused)) {
            sqlx::query(
                "INSERT INTO ferry_change_dead_letters \
                 (pipeline, dedup_key, source_table, source_key, event, kind, reason, plugin_sha256) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (pipeline, dedup_key) DO NOTHING",
            )
            .bind(&batch.pipeline)
            .bind(dedup_key)
            .bind(&d.origin.source_table)
            .bind(&d.origin.source_key)
            .bind(&d.origin.event)
            .bind(d.kind.as_str())
            .bind(&d.reason)
            .bind(&batch.plugin_sha256)
            .execute(&mut *tx)
            .await?;
        }
        for (table, at, version) in &batch.versions {
            sqlx::query(
                "INSERT OR REPLACE INTO ferry_stream_versions (pipeline, source_table, commit_lsn, lsn, seq, columns) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&batch.pipeline)
            .bind(table)
            .bind(at.commit as i64)
            .bind(at.lsn as i64)
            .bind(i64::from(at.seq))
            .bind(serde_json::to_string(version)?)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM ferry_stream_paused WHERE pipeline = ?1")
            .bind(&batch.pipeline)
            .execute(&mut *tx)
            .await?;
        let p = batch.next;
        sqlx::query(
            "UPDATE ferry_change_checkpoints SET commit_lsn = ?2, lsn = ?3, seq = ?4, streaming = ?5, \
             applied = applied + ?6, dead_lettered = dead_lettered + ?7, plugin_sha256 = ?8, \
             updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), \
             source_commit_at = coalesce(strftime('%Y-%m-%d %H:%M:%f', ?9 / 1e6, 'unixepoch'), source_commit_at), \
             first_applied_at = coalesce(first_applied_at, strftime('%Y-%m-%d %H:%M:%f', 'now')) WHERE pipeline = ?1",
        )
        .bind(&batch.pipeline)
        .bind(p.map(|p| p.commit as i64))
        .bind(p.map(|p| p.lsn as i64))
        .bind(p.map(|p| i64::from(p.seq)))
        .bind(p.is_some())
        .bind(batch.writes.len() as i64 - refused.len() as i64)
        .bind((batch.dead.len() + refused.len()) as i64)
        .bind(&batch.plugin_sha256)
        .bind(batch.source_commit_micros)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ChangesApplied { refused: refused.len() as u64, ..Default::default() })
    }
}
