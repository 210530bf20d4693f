//! Applying change streams into PostgreSQL: ops in order, dead letters and
//! the stream position in one transaction.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{Connection, PgConnection};

use super::target::PgTarget;
use crate::changes::{
    ChangeBatch, ChangeCheckpoint, ChangeDeadLetter, ChangeSink, ChangeStatus, OpOrigin, Refused, StaleMark, StaleRow,
    TargetOp,
};
use crate::config::OnConflict;
use crate::model::NewUser;
use crate::position::Position;
use crate::sink::FencedError;

const CHANGE_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.change_checkpoints (
    pipeline      text PRIMARY KEY,
    commit_lsn    bigint,
    lsn           bigint,
    seq           integer,
    streaming     boolean NOT NULL DEFAULT false,
    applied       bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS snapshot_key bigint;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS snapshot_done boolean NOT NULL DEFAULT false;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS plugin_sha256 text;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS source_commit_at timestamptz;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS first_applied_at timestamptz;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS snapshot_chunk bigint;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS snapshot_chunks bigint;
CREATE TABLE IF NOT EXISTS ferry.change_dead_letters (
    id            bigserial PRIMARY KEY,
    pipeline      text NOT NULL,
    dedup_key     text NOT NULL,
    source_key    text,
    event         text NOT NULL,
    reason        text NOT NULL,
    plugin_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pipeline, dedup_key)
);
ALTER TABLE ferry.change_dead_letters ADD COLUMN IF NOT EXISTS kind text;
ALTER TABLE ferry.change_dead_letters ADD COLUMN IF NOT EXISTS source_table text;
CREATE TABLE IF NOT EXISTS ferry.stale_rows (
    pipeline      text NOT NULL,
    source_key    text NOT NULL,
    target_key    text,
    dead_letter   text NOT NULL,
    action        text NOT NULL,
    since         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_key)
);
"#;

/// Advisory lock serialising this DDL across processes.
const DDL_LOCK: i64 = 0x6665_7272_7900_0002;

/// Creates the change-stream control tables if missing (any pipeline kind).
pub(super) async fn ensure_change_tables(conn: &mut PgConnection) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK).execute(&mut *tx).await?;
    for statement in crate::db::ddl_statements(CHANGE_DDL) {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .map_err(|e| crate::error::Error::driver("creating the change-stream control tables", &e))?;
    }
    tx.commit().await?;
    Ok(())
}

type Stored = (Option<i64>, Option<i64>, Option<i32>, bool, Option<i64>, bool);

/// The columns [`Stored`] reads.
const STORED: &str = "commit_lsn, lsn, seq, streaming, snapshot_key, snapshot_done";

fn checkpoint_of(stored: Option<Stored>) -> ChangeCheckpoint {
    match stored {
        None => ChangeCheckpoint::default(),
        Some((commit, lsn, seq, streaming, snapshot_key, snapshot_done)) => ChangeCheckpoint {
            position: match (commit, lsn) {
                (Some(c), Some(l)) => Some(Position { commit: c as u64, lsn: l as u64, seq: seq.unwrap_or(0) as u32 }),
                _ => None,
            },
            streaming,
            snapshot_key,
            snapshot_done,
        },
    }
}

#[async_trait]
impl ChangeSink for PgTarget {
    async fn ensure_change_tables(&mut self) -> anyhow::Result<()> {
        ensure_change_tables(&mut self.conn).await
    }

    async fn change_checkpoint(&mut self, pipeline: &str) -> anyhow::Result<ChangeCheckpoint> {
        let stored: Option<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(&*format!(
            "SELECT {STORED} FROM ferry.change_checkpoints WHERE pipeline = $1"
        )))
        .bind(pipeline)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(checkpoint_of(stored))
    }

    async fn apply_changes(&mut self, batch: &ChangeBatch) -> anyhow::Result<Refused> {
        self.encodings().await?;
        let target = self.table.quoted();
        let mut tx = self.conn.begin().await.context("starting the change transaction")?;
        // The input (the slot, the JetStream consumer) is acknowledged after
        // this commit: it must be durable, whatever the session's default.
        sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO ferry.change_checkpoints (pipeline) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&batch.pipeline)
            .execute(&mut *tx)
            .await?;
        let stored: Option<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(&*format!(
            "SELECT {STORED} FROM ferry.change_checkpoints WHERE pipeline = $1 FOR UPDATE"
        )))
        .bind(&batch.pipeline)
        .fetch_optional(&mut *tx)
        .await?;
        if checkpoint_of(stored) != batch.previous {
            return Err(FencedError { run_id: format!("change stream {}", batch.pipeline) }.into());
        }
        // The group commits atomically, so within each stretch between
        // truncates only the last op per key matters: deletes of the keys
        // whose last op is a delete, then one upsert of the others.
        // A `deleted` mark says a row was removed: only for rows the target
        // holds before this group.
        let deleting: Vec<&str> =
            batch.stale.iter().filter(|m| m.action == "deleted").filter_map(|m| m.target_key.as_deref()).collect();
        let existed: std::collections::HashSet<String> = if deleting.is_empty() {
            Default::default()
        } else {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(&*format!(
                "SELECT id::text FROM {target} WHERE id = ANY($1)"
            )))
            .bind(&deleting)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        let mut refused = Refused::default();
        let mut refused_dead: Vec<ChangeDeadLetter> = Vec::new();
        // A refused upsert leaves the old row: stale, like a rejected one.
        let mut refused_marks: Vec<StaleMark> = Vec::new();
        let mut offset = 0;
        for stretch in batch.ops.split_inclusive(|op| matches!(op, TargetOp::Truncate)) {
            // The index (in `batch.ops`) of the last op of each key.
            let mut last: HashMap<&str, usize> = HashMap::with_capacity(stretch.len());
            let mut order: Vec<&str> = Vec::with_capacity(stretch.len());
            let mut truncate = false;
            for (i, op) in stretch.iter().enumerate() {
                let key = match op {
                    TargetOp::Upsert(row) => row.id.as_str(),
                    TargetOp::Delete(key) => key.as_str(),
                    TargetOp::Truncate => {
                        truncate = true;
                        continue;
                    }
                };
                if last.insert(key, offset + i).is_none() {
                    order.push(key);
                }
            }
            offset += stretch.len();
            let deletes: Vec<&str> =
                order.iter().copied().filter(|k| matches!(batch.ops[last[k]], TargetOp::Delete(_))).collect();
            let upserts: Vec<(usize, NewUser)> = order
                .iter()
                .filter_map(|k| match &batch.ops[last[k]] {
                    TargetOp::Upsert(row) => Some((last[k], row.clone())),
                    _ => None,
                })
                .collect();
            if !deletes.is_empty() {
                for (i, message) in delete_isolating(&mut tx, &target, &deletes)
                    .await
                    .map_err(|e| crate::error::Error::driver(format!("deleting from {}", self.table), &e))?
                {
                    refused.deletes += 1;
                    refused_dead.push(origin_of(batch, last[deletes[i]]).refused(deletes[i], &message));
                }
            }
            if !upserts.is_empty() {
                let rows: Vec<NewUser> = upserts.iter().map(|(_, row)| row.clone()).collect();
                let (_, rejected) = self
                    .loader
                    .apply_isolating(&mut tx, &rows, OnConflict::Overwrite)
                    .await
                    .map_err(|e| crate::error::Error::driver(format!("upserting into {}", self.table), &e))?;
                for (i, message) in rejected {
                    refused.upserts += 1;
                    let origin = origin_of(batch, upserts[i].0);
                    refused_dead.push(origin.refused(&rows[i].id, &message));
                    if let Some(source_key) = origin.source_key {
                        refused_marks.push(StaleMark {
                            source_key,
                            target_key: Some(rows[i].id.clone()),
                            dead_letter: origin.refused_key(),
                            action: "kept",
                        });
                    }
                }
            }
            if truncate {
                sqlx::query(sqlx::AssertSqlSafe(&*format!("TRUNCATE {target}"))).execute(&mut *tx).await?;
            }
        }
        // Stale marks: a truncate clears them, an applied version clears its
        // key's, a dead-lettered newest version (rejected by the plugin, or
        // refused by the target: the old row stays) sets it.
        if batch.clear_stale {
            sqlx::query("DELETE FROM ferry.stale_rows WHERE pipeline = $1")
                .bind(&batch.pipeline)
                .execute(&mut *tx)
                .await?;
        }
        if !batch.fresh.is_empty() {
            let fresh: Vec<String> = batch.fresh.iter().map(i64::to_string).collect();
            sqlx::query("DELETE FROM ferry.stale_rows WHERE pipeline = $1 AND source_key = ANY($2)")
                .bind(&batch.pipeline)
                .bind(&fresh)
                .execute(&mut *tx)
                .await?;
        }
        for mark in batch.stale.iter().chain(&refused_marks) {
            // A rejected version of a row the target never held (or no longer
            // holds) leaves nothing stale: its key's mark goes.
            // A row already absent keeps the mark it has (if any).
            if mark.action == "deleted" && !mark.target_key.as_ref().is_some_and(|k| existed.contains(k)) {
                continue;
            }
            let condition = if mark.action == "kept" {
                format!("EXISTS (SELECT 1 FROM {target} WHERE id = $3)")
            } else {
                "true".to_string()
            };
            sqlx::query("DELETE FROM ferry.stale_rows WHERE pipeline = $1 AND source_key = $2")
                .bind(&batch.pipeline)
                .bind(mark.source_key.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(&*format!(
                "INSERT INTO ferry.stale_rows (pipeline, source_key, target_key, dead_letter, action) \
                 SELECT $1, $2, $3, $4, $5 WHERE {condition}"
            )))
            .bind(&batch.pipeline)
            .bind(mark.source_key.to_string())
            .bind(&mark.target_key)
            .bind(&mark.dead_letter)
            .bind(mark.action)
            .execute(&mut *tx)
            .await?;
        }
        for d in batch.dead.iter().chain(&refused_dead) {
            sqlx::query(
                "INSERT INTO ferry.change_dead_letters (pipeline, dedup_key, source_key, event, kind, reason, plugin_sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (pipeline, dedup_key) DO NOTHING",
            )
            .bind(&batch.pipeline)
            .bind(&d.dedup_key)
            .bind(d.source_key.map(|k| k.to_string()))
            .bind(d.event.replace('\0', "\\u0000"))
            .bind(d.kind.as_str())
            .bind(d.reason.replace('\0', "\\u0000"))
            .bind(&batch.plugin_sha256)
            .execute(&mut *tx)
            .await?;
        }
        let p = batch.next.position;
        sqlx::query(
            "UPDATE ferry.change_checkpoints SET commit_lsn = $2, lsn = $3, seq = $4, streaming = $5, \
             applied = applied + $6, dead_lettered = dead_lettered + $7, snapshot_key = $8, snapshot_done = $9, \
             plugin_sha256 = $10, updated_at = now(), \
             source_commit_at = coalesce(to_timestamp($11::float8 / 1e6), source_commit_at), \
             first_applied_at = coalesce(first_applied_at, now()), \
             snapshot_chunk = coalesce($12, snapshot_chunk), snapshot_chunks = coalesce($13, snapshot_chunks) \
             WHERE pipeline = $1",
        )
        .bind(&batch.pipeline)
        .bind(p.map(|p| p.commit as i64))
        .bind(p.map(|p| p.lsn as i64))
        .bind(p.map(|p| p.seq as i32))
        .bind(batch.next.streaming)
        .bind(batch.ops.len() as i64 - (refused.upserts + refused.deletes) as i64)
        .bind((batch.dead.len() + refused_dead.len()) as i64)
        .bind(batch.next.snapshot_key)
        .bind(batch.next.snapshot_done)
        .bind(&batch.plugin_sha256)
        .bind(batch.source_commit_micros.map(|m| m as f64))
        .bind(batch.snapshot_chunks.map(|(done, _)| done as i64))
        .bind(batch.snapshot_chunks.map(|(_, total)| total as i64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await.context("committing the change transaction")?;
        Ok(refused)
    }

    async fn stale_rows(&mut self, pipeline: &str) -> anyhow::Result<Vec<StaleRow>> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT to_regclass('ferry.stale_rows')::oid::int8").fetch_one(&mut self.conn).await?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
            "SELECT source_key, target_key, dead_letter, action FROM ferry.stale_rows WHERE pipeline = $1 ORDER BY source_key",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(source_key, target_key, dead_letter, action)| StaleRow {
                source_key,
                target_key,
                dead_letter,
                action,
            })
            .collect())
    }

    async fn change_status(&mut self, pipeline: &str) -> anyhow::Result<Option<ChangeStatus>> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT to_regclass('ferry.change_checkpoints')::oid::int8")
            .fetch_one(&mut self.conn)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let checkpoint = self.change_checkpoint(pipeline).await?;
        type Row = (i64, i64, Option<String>, f64, Option<f64>, Option<f64>, Option<i64>, Option<i64>);
        let row: Option<Row> = sqlx::query_as(
            // Dead letters counted where they are, not by a counter.
            "SELECT applied, (SELECT count(*) FROM ferry.change_dead_letters d WHERE d.pipeline = c.pipeline), plugin_sha256, extract(epoch FROM now() - updated_at)::float8, \
             extract(epoch FROM now() - source_commit_at)::float8, \
             extract(epoch FROM updated_at - first_applied_at)::float8, snapshot_chunk, snapshot_chunks \
             FROM ferry.change_checkpoints c WHERE pipeline = $1",
        )
        .bind(pipeline)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(row.map(|(applied, dead, plugin_sha256, age, commit_age, active, chunk, chunks)| ChangeStatus {
            checkpoint,
            snapshot_chunks: chunk.zip(chunks).map(|(k, n)| (k as u64, n as u64)),
            source_commit_age_seconds: commit_age,
            changes_per_second: active.filter(|s| *s > 0.0).map_or(0.0, |s| applied as f64 / s),
            applied: applied as u64,
            dead_lettered: dead as u64,
            plugin_sha256,
            seconds_since_update: age,
        }))
    }
}

/// Deletes `keys`; a delete the target refuses (a foreign key still
/// pointing at the row) is isolated key by key under savepoints. Returns the
/// refused keys' indexes with the database's message.
async fn delete_isolating(
    tx: &mut PgConnection,
    target: &str,
    keys: &[&str],
) -> Result<Vec<(usize, String)>, sqlx::Error> {
    let sql = format!("DELETE FROM {target} WHERE id = ANY($1)");
    sqlx::query("SAVEPOINT ferry_rows").execute(&mut *tx).await?;
    match sqlx::query(sqlx::AssertSqlSafe(&*sql)).bind(keys).execute(&mut *tx).await {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
            return Ok(Vec::new());
        }
        Err(e) if super::target::refuses_rows(&e, OnConflict::Overwrite) => {
            sqlx::query("ROLLBACK TO SAVEPOINT ferry_rows").execute(&mut *tx).await?;
            sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
        }
        Err(e) => return Err(e),
    }
    let mut refused = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        sqlx::query("SAVEPOINT ferry_rows").execute(&mut *tx).await?;
        match sqlx::query(sqlx::AssertSqlSafe(&*sql)).bind([*key]).execute(&mut *tx).await {
            Ok(_) => {}
            Err(e) if super::target::refuses_rows(&e, OnConflict::Overwrite) => {
                sqlx::query("ROLLBACK TO SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                refused.push((i, super::describe_error(&e)));
            }
            Err(e) => return Err(e),
        }
        sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
    }
    Ok(refused)
}

/// Where op `index` of `batch` came from (a batch built without origins
/// still dead-letters a refused op, with what is known).
fn origin_of(batch: &ChangeBatch, index: usize) -> std::borrow::Cow<'_, OpOrigin> {
    match batch.origins.get(index) {
        Some(origin) => std::borrow::Cow::Borrowed(origin),
        // Unique per pipeline: the batch's position and the op's index.
        None => std::borrow::Cow::Owned(OpOrigin {
            position: None,
            source_key: None,
            event: format!("{{\"op\":{index},\"batch_position\":\"{:?}\"}}", batch.next.position),
        }),
    }
}
