//! Change streams of many tables into PostgreSQL: the writes in stream
//! order, their dead letters and the stream position in one transaction.
//!
//! A batch is first applied optimistically (one statement per stretch of
//! writes, no savepoints); only if the target refuses a row is the
//! transaction rolled back and applied again carefully, each statement
//! under a savepoint and refused ranges bisected down to the rows.

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::refuses_rows;
use super::tables::{PgTables, literal};
use crate::config::OnConflict;
use crate::db::quote_ident;
use crate::error::Error;
use crate::keyset::Row;
use crate::position::Position;
use crate::schema::TableDef;
use crate::sink::{
    ChangesApplied, FencedError, RowChange, RowChangeBatch, RowChangeSink, SchemaRefused, StreamDeadLetter,
    StreamStatus,
};
use crate::undo_journal::UndoMode;
use crate::value::write_pg_text;

/// Rows per INSERT or DELETE statement.
const STATEMENT_ROWS: usize = 1000;

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
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS peer_seen_until timestamptz;
ALTER TABLE ferry.change_checkpoints ADD COLUMN IF NOT EXISTS paused text;
CREATE TABLE IF NOT EXISTS ferry.stream_versions (
    pipeline     text NOT NULL,
    source_table text NOT NULL,
    commit_lsn   bigint NOT NULL,
    lsn          bigint NOT NULL,
    seq          integer NOT NULL,
    columns      jsonb NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_table, commit_lsn, lsn, seq)
);
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
CREATE TABLE IF NOT EXISTS ferry.stream_replays (
    pipeline     text NOT NULL,
    dedup_key    text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, dedup_key)
);
CREATE TABLE IF NOT EXISTS ferry.stream_resyncs (
    pipeline     text NOT NULL,
    source_table text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    truncated    boolean NOT NULL DEFAULT false,
    last_key     text,
    rows         bigint NOT NULL DEFAULT 0,
    done_at      timestamptz,
    held_reason  text,
    held_until   text,
    PRIMARY KEY (pipeline, source_table)
);
CREATE TABLE IF NOT EXISTS ferry.parallel_runs (
    pipeline   text PRIMARY KEY,
    owner      text NOT NULL,
    seen_until timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ferry.conflicts (
    id                bigserial PRIMARY KEY,
    pipeline          text NOT NULL,
    target_table      text NOT NULL,
    target_key        text NOT NULL,
    source_table      text,
    source_key        text,
    incoming          text NOT NULL,
    kept              text NOT NULL,
    kept_committed_at timestamptz NOT NULL,
    source_seen_until timestamptz NOT NULL,
    rule              text NOT NULL,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz
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

/// A source table held (see [`crate::sink::Resync::held`]).
const HELD: &str = "INSERT INTO ferry.stream_resyncs (pipeline, source_table, held_reason, held_until) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline, source_table) DO UPDATE SET requested_at = now(), \
    truncated = false, last_key = NULL, rows = 0, done_at = NULL, held_reason = $3, held_until = $4";

/// A resync of a source table asked (again: from the start).
const RESYNC_ASKED: &str = "INSERT INTO ferry.stream_resyncs (pipeline, source_table) VALUES ($1, $2) \
    ON CONFLICT (pipeline, source_table) DO UPDATE SET requested_at = now(), truncated = false, last_key = NULL, \
    rows = 0, done_at = NULL, held_reason = NULL, held_until = NULL";

type Stored = (Option<i64>, Option<i64>, Option<i32>);

fn position_of(stored: Option<Stored>) -> Option<Position> {
    match stored {
        Some((Some(commit), Some(lsn), seq)) => {
            Some(Position { commit: commit as u64, lsn: lsn as u64, seq: seq.unwrap_or(0) as u32 })
        }
        _ => None,
    }
}

/// `'text'::type` or `NULL`.
fn push_value(value: &crate::value::Value, sql_type: &str, scratch: &mut String, sql: &mut String) {
    scratch.clear();
    if write_pg_text(value, scratch) {
        sql.push_str(&literal(scratch, sql_type));
    } else {
        sql.push_str("NULL");
    }
}

/// `INSERT … VALUES … ON CONFLICT (key) DO UPDATE` of `rows`.
fn upsert_sql(def: &TableDef, rows: &[&Row]) -> String {
    // The source's values, identity columns included (GENERATED ALWAYS
    // refuses them otherwise; COPY takes them as they are).
    let mut sql = format!("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ", def.quoted(), def.column_list());
    let mut scratch = String::new();
    for (n, row) in rows.iter().enumerate() {
        sql.push_str(if n == 0 { "(" } else { ", (" });
        for (i, (value, column)) in row.iter().zip(&def.columns).enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push_value(value, &column.sql_type, &mut scratch, &mut sql);
        }
        sql.push(')');
    }
    let set: Vec<String> = (0..def.columns.len())
        .filter(|i| !def.primary_key.contains(i))
        .map(|i| {
            let c = quote_ident(&def.columns[i].name);
            format!("{c} = EXCLUDED.{c}")
        })
        .collect();
    if set.is_empty() {
        sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", def.key_list()));
    } else {
        sql.push_str(&format!(" ON CONFLICT ({}) DO UPDATE SET {}", def.key_list(), set.join(", ")));
    }
    sql
}

/// `DELETE … WHERE (key) IN (…)` of `keys` (values in key order; keys of
/// one length, shorter than the table's key for a prefix).
fn delete_sql(def: &TableDef, keys: &[&Row]) -> String {
    format!("DELETE FROM {} WHERE {}", def.relation(), key_in(def, keys, ""))
}

/// `(key columns) IN ((…), …)` of `keys`, the columns prefixed by `alias`.
fn key_in(def: &TableDef, keys: &[&Row], alias: &str) -> String {
    let n = keys.first().map_or(0, |k| k.len());
    let columns: Vec<String> = def.key_columns().take(n).map(|c| format!("{alias}{}", quote_ident(&c.name))).collect();
    let mut sql = format!("({}) IN (", columns.join(", "));
    push_key_tuples(def, keys, &mut sql);
    sql.push(')');
    sql
}

/// `(…), (…)`: each of `keys` as a tuple of literals of the key's types.
fn push_key_tuples(def: &TableDef, keys: &[&Row], sql: &mut String) {
    let mut scratch = String::new();
    for (n, key) in keys.iter().enumerate() {
        sql.push_str(if n == 0 { "(" } else { ", (" });
        for (i, (value, column)) in key.iter().zip(def.key_columns()).enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push_value(value, &column.sql_type, &mut scratch, sql);
        }
        sql.push(')');
    }
}

/// Runs `sql(rows)` over `rows` in statements of [`STATEMENT_ROWS`].
/// Carefully: each under a savepoint, a refused statement split down to the
/// rows, which are returned (index, message); else a refusal is the error.
async fn run<'r>(
    tx: &mut PgConnection,
    rows: &[&'r Row],
    careful: bool,
    sql: fn(&TableDef, &[&Row]) -> String,
    def: &TableDef,
    journal_run: Option<&str>,
) -> Result<Vec<(usize, String)>, sqlx::Error> {
    let mut refused = Vec::new();
    let mut todo: Vec<(usize, usize)> =
        (0..rows.len()).step_by(STATEMENT_ROWS).map(|from| (from, (from + STATEMENT_ROWS).min(rows.len()))).collect();
    todo.reverse();
    while let Some((from, to)) = todo.pop() {
        let statement = sql(def, &rows[from..to]);
        if !careful {
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
            continue;
        }
        sqlx::query("SAVEPOINT ferry_changes").execute(&mut *tx).await?;
        match sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await {
            Ok(_) => {
                // Rows written under a savepoint carry its own transaction id.
                if let Some(run_id) = journal_run {
                    super::undo::mark(tx, run_id).await?;
                }
                sqlx::query("RELEASE SAVEPOINT ferry_changes").execute(&mut *tx).await?;
            }
            Err(e) if refuses_rows(&e, OnConflict::Overwrite) => {
                sqlx::query("ROLLBACK TO SAVEPOINT ferry_changes").execute(&mut *tx).await?;
                sqlx::query("RELEASE SAVEPOINT ferry_changes").execute(&mut *tx).await?;
                if to - from == 1 {
                    refused.push((from, super::describe_error(&e)));
                } else {
                    super::split_refused(from, to, &mut todo);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// A change not applied because the target row was written concurrently.
struct Conflict {
    write: usize,
    kept: String,
    kept_micros: i64,
}

/// The writes among `indexes` (of one table) whose target row this
/// database's application wrote after the write's source had seen it
/// (`ChangeWrite::seen_until`): the row's last writing transaction has no
/// replication origin and committed later (`track_commit_timestamp`).
async fn conflicts(
    tx: &mut PgConnection,
    batch: &RowChangeBatch,
    def: &TableDef,
    indexes: &[usize],
) -> Result<Vec<Conflict>, sqlx::Error> {
    let watched: Vec<usize> = indexes.iter().copied().filter(|&i| batch.writes[i].seen_until.is_some()).collect();
    if watched.is_empty() {
        return Ok(Vec::new());
    }
    // Each watched write's whole key, as values (for the query) and as
    // text (to match what it returns), computed once.
    let n = def.primary_key.len();
    let mut keys: Vec<Row> = Vec::with_capacity(watched.len());
    let mut by_text: std::collections::HashMap<Vec<Option<String>>, Vec<usize>> = Default::default();
    for &i in &watched {
        let key: Row = match &batch.writes[i].change {
            RowChange::Upsert(row) => def.primary_key.iter().map(|&k| row[k].clone()).collect(),
            RowChange::Delete(key) => key.clone(),
            RowChange::Truncate | RowChange::Alter(_) => Vec::new(),
        };
        if key.len() != n {
            continue;
        }
        let text: Vec<Option<String>> = key
            .iter()
            .map(|v| {
                let mut text = String::new();
                write_pg_text(v, &mut text).then_some(text)
            })
            .collect();
        let writes = by_text.entry(text).or_default();
        if writes.is_empty() {
            keys.push(key);
        }
        writes.push(i);
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&Row> = keys.iter().collect();
    let columns: Vec<String> = def.key_columns().map(|c| format!("t.{}::text", quote_ident(&c.name))).collect();
    let sql = format!(
        "SELECT ARRAY[{}], row_to_json(t)::text, (extract(epoch FROM c.timestamp) * 1000000)::int8 \
         FROM {} t CROSS JOIN LATERAL pg_xact_commit_timestamp_origin(t.xmin) c WHERE {} AND c.roident = 0",
        columns.join(", "),
        def.relation(),
        key_in(def, &refs, "t.")
    );
    let found: Vec<(Vec<Option<String>>, String, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
    let mut out = Vec::new();
    for (key, kept, kept_micros) in found {
        for &i in by_text.get(&key).into_iter().flatten() {
            let seen = batch.writes[i].seen_until.expect("watched");
            if kept_micros > seen {
                out.push(Conflict { write: i, kept: kept.clone(), kept_micros });
            }
        }
    }
    out.sort_by_key(|c| c.write);
    Ok(out)
}

/// Applies the batch's writes in `tx`; the dead letters of refused writes
/// (none unless `careful`: then a refusal is the error) and the writes not
/// applied for a conflict.
async fn apply_writes(
    tx: &mut PgConnection,
    batch: &RowChangeBatch,
    careful: bool,
    journals: &[Option<(i32, UndoMode)>],
    schema_refused: &mut Option<SchemaRefused>,
) -> Result<(Vec<StreamDeadLetter>, Vec<Conflict>), sqlx::Error> {
    let mut refused = Vec::new();
    let mut conflicted = Vec::new();
    let run_id = batch.run_id.as_deref().unwrap_or_default();
    let journal_run = journals.iter().any(Option::is_some).then_some(run_id);
    for stretch in batch.stretches() {
        if let Some(i) = stretch.alter {
            let sql = match batch.alter_sql(i) {
                Ok(None) => continue,
                Ok(Some(sql)) => sql,
                Err(refused) => {
                    let e = sqlx::Error::Protocol(refused.message.clone());
                    *schema_refused = Some(refused);
                    return Err(e);
                }
            };
            // A simple query: an edit may be two statements (a table moved
            // to another schema and renamed).
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await {
                *schema_refused = Some(batch.refused_alter(i, e.to_string()));
                return Err(e);
            }
            continue;
        }
        for &t in &stretch.truncate {
            if let Some((journal, UndoMode::BeforeImages)) = journals[t] {
                super::undo::journal_existing(tx, journal, &batch.tables[t], None).await?;
            }
        }
        if !stretch.truncate.is_empty() {
            let names: Vec<String> = stretch.truncate.iter().map(|&t| batch.tables[t].relation()).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {}", names.join(", ")))).execute(&mut *tx).await?;
            continue;
        }
        let def = &batch.tables[stretch.table];
        let mut lost = conflicts(tx, batch, def, &stretch.deletes).await?;
        lost.extend(conflicts(tx, batch, def, &stretch.upserts).await?);
        let applies = |i: &usize| !lost.iter().any(|c| c.write == *i);
        let deletes: Vec<usize> = stretch.deletes.iter().copied().filter(applies).collect();
        let upserts: Vec<usize> = stretch.upserts.iter().copied().filter(applies).collect();
        conflicted.extend(lost);
        if let Some((journal, UndoMode::BeforeImages)) = journals[stretch.table] {
            journal_first_touch(tx, journal, batch, def, deletes.iter().chain(&upserts)).await?;
        }
        for (indexes, sql) in [(&deletes, delete_sql as fn(&TableDef, &[&Row]) -> String), (&upserts, upsert_sql)] {
            let rows: Vec<&Row> = indexes
                .iter()
                .map(|&i| match &batch.writes[i].change {
                    RowChange::Upsert(row) | RowChange::Delete(row) => row,
                    RowChange::Truncate | RowChange::Alter(_) => unreachable!("stretches hold no barrier here"),
                })
                .collect();
            for (at, message) in run(tx, &rows, careful, sql, def, journal_run).await? {
                let write = &batch.writes[indexes[at]];
                refused.push(batch.origins[write.origin].refused(def, &write.change, &message));
            }
        }
    }
    Ok((refused, conflicted))
}

/// Journals the first touch of the keys `writes` (of one table) change:
/// whole keys with the row each holds now or NULL, key prefixes with the
/// rows they match.
async fn journal_first_touch(
    tx: &mut PgConnection,
    journal: i32,
    batch: &RowChangeBatch,
    def: &TableDef,
    writes: impl Iterator<Item = &usize>,
) -> Result<(), sqlx::Error> {
    let keys: Vec<Row> = writes
        .map(|&i| match &batch.writes[i].change {
            RowChange::Upsert(row) => def.primary_key.iter().map(|&k| row[k].clone()).collect(),
            RowChange::Delete(key) => key.clone(),
            RowChange::Truncate | RowChange::Alter(_) => Vec::new(),
        })
        .collect();
    let (whole, prefixes): (Vec<&Row>, Vec<&Row>) =
        keys.iter().filter(|k| !k.is_empty()).partition(|k| k.len() == def.primary_key.len());
    for prefix in prefixes {
        super::undo::journal_existing(tx, journal, def, Some(&key_in(def, &[prefix], "ferry_row."))).await?;
    }
    for chunk in whole.chunks(STATEMENT_ROWS) {
        let names: Vec<String> = def.key_columns().map(|c| quote_ident(&c.name)).collect();
        let mut values = String::from("(VALUES ");
        push_key_tuples(def, chunk, &mut values);
        values.push_str(&format!(") AS ferry_new({})", names.join(", ")));
        super::undo::journal_from(tx, journal, def, &values).await?;
    }
    Ok(())
}

/// Records `conflicts` of `batch` in `tx` (the rule: the side that owns the
/// writes in this phase keeps its version).
async fn record_conflicts(
    tx: &mut PgConnection,
    batch: &RowChangeBatch,
    conflicts: &[Conflict],
) -> Result<(), sqlx::Error> {
    for c in conflicts {
        let write = &batch.writes[c.write];
        let (def, origin) = (&batch.tables[write.table], &batch.origins[write.origin]);
        let (key, incoming) = match &write.change {
            RowChange::Upsert(row) => {
                (crate::keyset::Key::of(def, row).label(), crate::keyset::row_json(def, row).to_string())
            }
            RowChange::Delete(key) => {
                let label = crate::keyset::Key::of_values(key).label();
                (label.clone(), serde_json::json!({ "delete": label }).to_string())
            }
            RowChange::Truncate | RowChange::Alter(_) => continue,
        };
        sqlx::query(
            "INSERT INTO ferry.conflicts (pipeline, target_table, target_key, source_table, source_key, incoming, \
             kept, kept_committed_at, source_seen_until, rule) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             'epoch'::timestamptz + $8 * interval '1 microsecond', 'epoch'::timestamptz + $9 * interval '1 microsecond', $10)",
        )
        .bind(&batch.pipeline)
        .bind(def.name.to_string())
        .bind(key)
        .bind(&origin.source_table)
        .bind(&origin.source_key)
        .bind(incoming.replace('\0', "\\u0000"))
        .bind(&c.kept)
        .bind(c.kept_micros)
        .bind(write.seen_until.unwrap_or_default())
        .bind("this database owns the writes in this phase: its version is kept, the incoming change is not applied")
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl RowChangeSink for PgTables {
    async fn ensure_stream_tables(&mut self) -> anyhow::Result<()> {
        ensure_change_tables(&mut self.conn).await
    }

    async fn stream_position(&mut self, pipeline: &str) -> anyhow::Result<Option<Position>> {
        let stored: Option<Stored> =
            sqlx::query_as("SELECT commit_lsn, lsn, seq FROM ferry.change_checkpoints WHERE pipeline = $1")
                .bind(pipeline)
                .fetch_optional(&mut self.conn)
                .await?;
        Ok(position_of(stored))
    }

    async fn stream_status(&mut self, pipeline: &str) -> anyhow::Result<Option<StreamStatus>> {
        if !super::exists(&mut self.conn, "ferry.change_checkpoints").await? {
            return Ok(None);
        }
        type Status = (
            Option<i64>,
            Option<i64>,
            Option<i32>,
            i64,
            i64,
            Option<String>,
            f64,
            Option<f64>,
            Option<f64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
        );
        let row: Option<Status> = sqlx::query_as(
            "SELECT commit_lsn, lsn, seq, applied, \
             (SELECT count(*) FROM ferry.change_dead_letters d WHERE d.pipeline = c.pipeline), plugin_sha256, \
             extract(epoch FROM now() - updated_at)::float8, extract(epoch FROM now() - source_commit_at)::float8, \
             extract(epoch FROM updated_at - first_applied_at)::float8, \
             (extract(epoch FROM source_commit_at) * 1000000)::int8, \
             (extract(epoch FROM peer_seen_until) * 1000000)::int8, paused \
             FROM ferry.change_checkpoints c WHERE pipeline = $1",
        )
        .bind(pipeline)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(row.map(
            |(commit, lsn, seq, applied, dead, plugin_sha256, age, commit_age, active, commit_at, seen, paused)| {
                StreamStatus {
                    position: position_of(Some((commit, lsn, seq))),
                    applied: applied as u64,
                    dead_lettered: dead as u64,
                    plugin_sha256,
                    seconds_since_update: age,
                    source_commit_age_seconds: commit_age,
                    source_commit_micros: commit_at,
                    peer_seen_micros: seen,
                    active_seconds: active,
                    paused,
                }
            },
        ))
    }

    async fn stream_versions(
        &mut self,
        pipeline: &str,
    ) -> anyhow::Result<Vec<(String, crate::schema_edit::TableVersion)>> {
        if !super::exists(&mut self.conn, "ferry.stream_versions").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, sqlx::types::Json<crate::schema_edit::TableVersion>)> = sqlx::query_as(
            "SELECT DISTINCT ON (source_table) source_table, columns FROM ferry.stream_versions \
             WHERE pipeline = $1 ORDER BY source_table, commit_lsn DESC, lsn DESC, seq DESC",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(table, version)| (table, version.0)).collect())
    }

    async fn stream_dead_letters(
        &mut self,
        pipeline: &str,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<crate::control::DeadLetterRecord>> {
        if !super::exists(&mut self.conn, "ferry.change_dead_letters").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT coalesce(source_table, ''), coalesce(source_key, ''), event, coalesce(kind, ''), reason, \
             plugin_sha256 FROM ferry.change_dead_letters WHERE pipeline = $1 ORDER BY id LIMIT $2",
        )
        .bind(pipeline)
        .bind(limit.map(|l| l as i64))
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(crate::control::DeadLetterRecord::of_stream).collect())
    }

    async fn request_stream_replay(&mut self, pipeline: &str, table: Option<&str>) -> anyhow::Result<Vec<String>> {
        if !super::exists(&mut self.conn, "ferry.change_dead_letters").await? {
            return Ok(Vec::new());
        }
        ensure_change_tables(&mut self.conn).await?;
        Ok(sqlx::query_scalar(
            "WITH asked AS (SELECT pipeline, dedup_key FROM ferry.change_dead_letters WHERE pipeline = $1 \
             AND source_table IS NOT NULL AND source_key IS NOT NULL \
             AND ($2::text IS NULL OR source_table = $2 OR split_part(source_table, '.', 2) = $2) ORDER BY id), \
             added AS (INSERT INTO ferry.stream_replays (pipeline, dedup_key) SELECT pipeline, dedup_key FROM asked \
             ON CONFLICT DO NOTHING) SELECT dedup_key FROM asked",
        )
        .bind(pipeline)
        .bind(table)
        .fetch_all(&mut self.conn)
        .await?)
    }

    async fn stream_replays(&mut self, pipeline: &str, limit: usize) -> anyhow::Result<Vec<(String, String, String)>> {
        if !super::exists(&mut self.conn, "ferry.stream_replays").await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT d.dedup_key, d.source_table, d.source_key FROM ferry.stream_replays r \
             JOIN ferry.change_dead_letters d USING (pipeline, dedup_key) WHERE r.pipeline = $1 ORDER BY d.id LIMIT $2",
        )
        .bind(pipeline)
        .bind(limit as i64)
        .fetch_all(&mut self.conn)
        .await?)
    }

    async fn stream_replay_state(&mut self, pipeline: &str, keys: &[String]) -> anyhow::Result<(u64, u64)> {
        let (pending, dead): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ferry.stream_replays WHERE pipeline = $1 AND dedup_key = ANY($2)), \
             (SELECT count(*) FROM ferry.change_dead_letters d WHERE pipeline = $1 AND dedup_key = ANY($2) \
              AND NOT EXISTS (SELECT 1 FROM ferry.stream_replays r WHERE r.pipeline = d.pipeline \
                              AND r.dedup_key = d.dedup_key))",
        )
        .bind(pipeline)
        .bind(keys)
        .fetch_one(&mut self.conn)
        .await?;
        Ok((pending as u64, dead as u64))
    }

    async fn request_resync(&mut self, pipeline: &str, table: &str) -> anyhow::Result<()> {
        ensure_change_tables(&mut self.conn).await?;
        sqlx::query(RESYNC_ASKED).bind(pipeline).bind(table).execute(&mut self.conn).await?;
        Ok(())
    }

    async fn resyncs(&mut self, pipeline: &str) -> anyhow::Result<Vec<crate::sink::Resync>> {
        if !super::exists(&mut self.conn, "ferry.stream_resyncs").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<crate::sink::ResyncRow> = sqlx::query_as(
            "SELECT source_table, truncated, last_key, rows, done_at IS NOT NULL, held_reason, held_until FROM ferry.stream_resyncs \
             WHERE pipeline = $1 ORDER BY requested_at",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(crate::sink::Resync::of_row).collect())
    }

    async fn resync_progress(&mut self, pipeline: &str, resync: &crate::sink::Resync) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE ferry.stream_resyncs SET truncated = $3, last_key = $4, rows = $5, \
             done_at = CASE WHEN $6 THEN now() END WHERE pipeline = $1 AND source_table = $2",
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
        sqlx::query("INSERT INTO ferry.change_checkpoints (pipeline) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(pipeline)
            .execute(&mut self.conn)
            .await?;
        sqlx::query("UPDATE ferry.change_checkpoints SET paused = $2 WHERE pipeline = $1")
            .bind(pipeline)
            .bind(reason)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn stream_dead_keys(&mut self, pipeline: &str) -> anyhow::Result<Vec<(String, String)>> {
        if !super::exists(&mut self.conn, "ferry.change_dead_letters").await? {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT DISTINCT source_table, source_key FROM ferry.change_dead_letters \
             WHERE pipeline = $1 AND source_table IS NOT NULL AND source_key IS NOT NULL",
        )
        .bind(pipeline)
        .fetch_all(&mut self.conn)
        .await?)
    }

    async fn drop_origin(&mut self, name: &str) -> anyhow::Result<()> {
        let dropped =
            sqlx::query("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1")
                .bind(name)
                .execute(&mut self.conn)
                .await;
        match dropped {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => Err(Error::contract(format!(
                "replication origin {name} in {} is in use: stop the `ferry sync` that applies with it first ({e})",
                self.url
            ))),
            Err(e) => Err(Error::driver(format!("dropping replication origin {name} in {}", self.url), &e)),
        }
    }

    async fn parallel_owner(&mut self, pipeline: &str) -> anyhow::Result<Option<(String, Option<i64>)>> {
        if !super::exists(&mut self.conn, "ferry.parallel_runs").await? {
            return Ok(None);
        }
        Ok(sqlx::query_as(
            "SELECT owner, (extract(epoch FROM seen_until) * 1000000)::int8 FROM ferry.parallel_runs WHERE pipeline = $1",
        )
        .bind(pipeline)
        .fetch_optional(&mut self.conn)
        .await?)
    }

    async fn set_parallel_owner(&mut self, pipeline: &str, owner: &str, seen: Option<i64>) -> anyhow::Result<()> {
        ensure_change_tables(&mut self.conn).await?;
        sqlx::query(
            "INSERT INTO ferry.parallel_runs (pipeline, owner, seen_until) \
             VALUES ($1, $2, 'epoch'::timestamptz + $3 * interval '1 microsecond') \
             ON CONFLICT (pipeline) DO UPDATE SET owner = EXCLUDED.owner, seen_until = EXCLUDED.seen_until, \
             changed_at = now()",
        )
        .bind(pipeline)
        .bind(owner)
        .bind(seen)
        .execute(&mut self.conn)
        .await
        .map_err(|e| Error::driver(format!("recording the parallel run's owner in {}", self.url), &e))?;
        Ok(())
    }

    async fn conflicts(&mut self, pipeline: &str, open: bool) -> anyhow::Result<Vec<crate::sink::ConflictRecord>> {
        if !super::exists(&mut self.conn, "ferry.conflicts").await? {
            return Ok(Vec::new());
        }
        type Row = (i64, String, String, String, String, String, String, String, Option<String>, String);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, pipeline, target_table, target_key, incoming, kept, kept_committed_at::text, \
             detected_at::text, resolved_at::text, rule FROM ferry.conflicts \
             WHERE pipeline = $1 AND (NOT $2 OR resolved_at IS NULL) ORDER BY id",
        )
        .bind(pipeline)
        .bind(open)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, pipeline, target_table, target_key, incoming, kept, kept_at, detected_at, resolved_at, rule)| {
                crate::sink::ConflictRecord {
                    id,
                    pipeline,
                    target_table,
                    target_key,
                    incoming,
                    kept,
                    kept_committed_at: kept_at,
                    detected_at,
                    resolved_at,
                    rule,
                }
            })
            .collect())
    }

    async fn resolve_conflicts(&mut self, pipeline: &str) -> anyhow::Result<u64> {
        if !super::exists(&mut self.conn, "ferry.conflicts").await? {
            return Ok(0);
        }
        let done =
            sqlx::query("UPDATE ferry.conflicts SET resolved_at = now() WHERE pipeline = $1 AND resolved_at IS NULL")
                .bind(pipeline)
                .execute(&mut self.conn)
                .await?;
        Ok(done.rows_affected())
    }

    async fn mark_origin(&mut self, name: &str) -> anyhow::Result<()> {
        let fix = "a parallel run marks ferry's writes with a replication origin, which needs a superuser or \
                   GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), \
                   pg_replication_origin_session_setup(text), pg_replication_origin_xact_setup(pg_lsn, timestamptz) \
                   TO the user ferry connects as";
        let created = sqlx::query(
            "SELECT pg_replication_origin_create($1) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
        )
        .bind(name)
        .execute(&mut self.conn)
        .await;
        match created {
            Ok(_) => {}
            // Created meanwhile by another session.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                return Err(Error::contract(format!("creating replication origin {name} in {}: {e}; {fix}", self.url)));
            }
            Err(e) => return Err(Error::driver(format!("creating replication origin {name} in {}", self.url), &e)),
        }
        match sqlx::query("SELECT pg_replication_origin_session_setup($1)").bind(name).execute(&mut self.conn).await {
            Ok(_) => {
                self.origin_marked = true;
                Ok(())
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => Err(Error::transient(format!(
                "replication origin {name} is in use by another session of {} ({e}): another ferry of this \
                 pipeline is running, or the session of one that stopped has not ended yet",
                self.url
            ))),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                Err(Error::contract(format!("using replication origin {name} in {}: {e}; {fix}", self.url)))
            }
            Err(e) => Err(Error::driver(format!("using replication origin {name} in {}", self.url), &e)),
        }
    }

    async fn apply_row_changes(&mut self, batch: &RowChangeBatch) -> anyhow::Result<ChangesApplied> {
        let mut journals = vec![None; batch.tables.len()];
        if let Some(run_id) = &batch.run_id {
            for (def, journal) in batch.tables.iter().zip(journals.iter_mut()) {
                *journal = super::undo::mode(&mut self.conn, &mut self.undo, run_id, def).await?;
            }
        }
        let mut careful = false;
        loop {
            let mut tx = self.conn.begin().await?;
            // The slot is told this commit is applied: it must be durable.
            sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
            if let (true, Some(next)) = (self.origin_marked, batch.next) {
                // The origin's progress (`pg_replication_origin_status`) is
                // the source commit this transaction brings.
                sqlx::query(
                    "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, \
                     coalesce('epoch'::timestamptz + $2 * interval '1 microsecond', now()))",
                )
                .bind(crate::position::format_lsn(next.commit))
                .bind(batch.source_commit_micros)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("INSERT INTO ferry.change_checkpoints (pipeline) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(&batch.pipeline)
                .execute(&mut *tx)
                .await?;
            let stored: Option<Stored> = sqlx::query_as(
                "SELECT commit_lsn, lsn, seq FROM ferry.change_checkpoints WHERE pipeline = $1 FOR UPDATE",
            )
            .bind(&batch.pipeline)
            .fetch_optional(&mut *tx)
            .await?;
            if position_of(stored) != batch.previous {
                return Err(FencedError { run_id: format!("change stream {}", batch.pipeline) }.into());
            }
            for statement in &batch.ddl {
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await {
                    let table = statement.clone();
                    let edit = "the source's enum type".to_string();
                    return Err(crate::sink::SchemaRefused { write: 0, table, edit, message: e.to_string() }.into());
                }
            }
            let mut schema_refused = None;
            let (refused, conflicted) =
                match apply_writes(&mut tx, batch, careful, &journals, &mut schema_refused).await {
                    Ok(done) => done,
                    Err(_) if schema_refused.is_some() => {
                        return Err(schema_refused.take().expect("checked").into());
                    }
                    Err(e) if !careful && refuses_rows(&e, OnConflict::Overwrite) => {
                        // Some row is refused: again, isolating it.
                        tx.rollback().await?;
                        careful = true;
                        continue;
                    }
                    Err(e) => return Err(Error::driver(format!("applying changes in {}", self.url), &e)),
                };
            record_conflicts(&mut tx, batch, &conflicted).await?;
            if let (Some(run_id), true) = (&batch.run_id, journals.iter().any(Option::is_some)) {
                // The rows this transaction wrote outside savepoints.
                super::undo::mark(&mut tx, run_id).await?;
            }
            if !batch.replayed.is_empty() {
                for table in ["ferry.change_dead_letters", "ferry.stream_replays"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE pipeline = $1 AND dedup_key = ANY($2)"
                    )))
                    .bind(&batch.pipeline)
                    .bind(&batch.replayed)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            for table in &batch.resyncs {
                sqlx::query(RESYNC_ASKED).bind(&batch.pipeline).bind(table).execute(&mut *tx).await?;
            }
            for (table, reason, until) in &batch.holds {
                sqlx::query(HELD).bind(&batch.pipeline).bind(table).bind(reason).bind(until).execute(&mut *tx).await?;
            }
            for (d, dedup_key) in crate::sink::dedup_keys(batch.dead.iter().chain(&refused)) {
                sqlx::query(
                    "INSERT INTO ferry.change_dead_letters \
                     (pipeline, dedup_key, source_table, source_key, event, kind, reason, plugin_sha256) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (pipeline, dedup_key) DO NOTHING",
                )
                .bind(&batch.pipeline)
                .bind(dedup_key)
                .bind(&d.origin.source_table)
                .bind(&d.origin.source_key)
                .bind(d.origin.event.replace('\0', "\\u0000"))
                .bind(d.kind.as_str())
                .bind(d.reason.replace('\0', "\\u0000"))
                .bind(&batch.plugin_sha256)
                .execute(&mut *tx)
                .await?;
            }
            for (table, at, version) in &batch.versions {
                sqlx::query(
                    "INSERT INTO ferry.stream_versions (pipeline, source_table, commit_lsn, lsn, seq, columns) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pipeline, source_table, commit_lsn, lsn, seq) \
                     DO UPDATE SET columns = excluded.columns",
                )
                .bind(&batch.pipeline)
                .bind(table)
                .bind(at.commit as i64)
                .bind(at.lsn as i64)
                .bind(at.seq as i32)
                .bind(sqlx::types::Json(version))
                .execute(&mut *tx)
                .await?;
            }
            let p = batch.next;
            sqlx::query(
                "UPDATE ferry.change_checkpoints SET commit_lsn = $2, lsn = $3, seq = $4, streaming = $5, \
                 applied = applied + $6, dead_lettered = dead_lettered + $7, plugin_sha256 = $8, updated_at = now(), \
                 source_commit_at = coalesce('epoch'::timestamptz + $9 * interval '1 microsecond', source_commit_at), \
                 peer_seen_until = coalesce('epoch'::timestamptz + $10 * interval '1 microsecond', peer_seen_until), \
                 first_applied_at = coalesce(first_applied_at, now()), paused = NULL WHERE pipeline = $1",
            )
            .bind(&batch.pipeline)
            .bind(p.map(|p| p.commit as i64))
            .bind(p.map(|p| p.lsn as i64))
            .bind(p.map(|p| p.seq as i32))
            .bind(p.is_some())
            .bind(batch.writes.len() as i64 - refused.len() as i64 - conflicted.len() as i64)
            .bind((batch.dead.len() + refused.len()) as i64)
            .bind(&batch.plugin_sha256)
            // Exact to the microsecond: conflict detection compares it with
            // commit timestamps.
            .bind(batch.source_commit_micros)
            .bind(batch.seen_until)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            let conflicting_deletes =
                conflicted.iter().filter(|c| matches!(batch.writes[c.write].change, RowChange::Delete(_))).count();
            return Ok(ChangesApplied {
                refused: refused.len() as u64,
                conflicts: conflicted.len() as u64,
                conflicting_deletes: conflicting_deletes as u64,
            });
        }
    }
}
