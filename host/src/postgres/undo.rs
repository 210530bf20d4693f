//! The undo journal in PostgreSQL (`crate::undo` says what and why):
//! `ferry.undo_tables` (each table's state at a run's start),
//! `ferry.undo_xacts` (a marker row per (sub)transaction that wrote the
//! run's rows: its `xmin` is that transaction's id) and `ferry.undo`
//! (first-touch before-images, keyed by the row's key as
//! `ROW(key columns)::text`, the row as its own text form `row::text`, which
//! every type reads back exactly).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row as _};

use super::tables::PgTables;
use crate::db::{TableName, quote_ident};
use crate::error::Error;
use crate::schema::TableDef;
use crate::undo_journal::{JournalRollback, RollbackOptions, TableRollback, UndoJournal, UndoMode};

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.undo_tables (
    journal         integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    run_id          text NOT NULL,
    target_table    text NOT NULL,
    empty_at_start  boolean NOT NULL,
    rows_before     bigint NOT NULL,
    checksum_before text NOT NULL,
    begun_at        timestamptz NOT NULL DEFAULT now(),
    rolled_back_at  timestamptz,
    PRIMARY KEY (run_id, target_table)
);
CREATE TABLE IF NOT EXISTS ferry.undo (
    journal integer NOT NULL,
    key     text NOT NULL,
    before  text,
    PRIMARY KEY (journal, key)
);
CREATE TABLE IF NOT EXISTS ferry.undo_xacts (
    run_id text NOT NULL
);
CREATE INDEX IF NOT EXISTS undo_xacts_run ON ferry.undo_xacts (run_id);
CREATE TABLE IF NOT EXISTS ferry.undo_keys (
    journal integer NOT NULL,
    key     text NOT NULL,
    PRIMARY KEY (journal, key)
);
ALTER TABLE ferry.undo_tables ADD COLUMN IF NOT EXISTS keys_at_start boolean NOT NULL DEFAULT false;
ALTER TABLE ferry.undo_tables ADD COLUMN IF NOT EXISTS forgotten_at timestamptz;";

/// Drops what run `run_id`'s schema copy created
/// ([`super::dump`] records it with the objects, in their transaction):
/// first the foreign keys on the tables it created (built after the data,
/// they tie those tables to each other), then the objects, last created
/// first, each under a savepoint, passes over what is left until a pass
/// drops nothing (an identity sequence goes with its table). An object
/// something else now depends on is kept, and named.
async fn drop_created(tx: &mut PgConnection, run_id: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    if !super::exists(&mut *tx, "ferry.schema_objects").await? {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut left: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT position, label, drop_sql FROM ferry.schema_objects WHERE run_id = $1 ORDER BY position DESC",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    let foreign_keys: Vec<String> = sqlx::query_scalar(
        "SELECT format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', k.conrelid::regclass, k.conname) \
         FROM pg_constraint k WHERE k.contype = 'f' AND k.conrelid IN \
           (SELECT to_regclass(relation) FROM ferry.schema_objects WHERE run_id = $1 AND relation IS NOT NULL)",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    for sql in foreign_keys {
        try_in_savepoint(tx, &sql).await?;
    }
    let (mut dropped, mut kept) = (Vec::new(), Vec::new());
    loop {
        let mut progressed = false;
        let mut failed = Vec::new();
        for (position, label, drop_sql) in std::mem::take(&mut left) {
            match try_in_savepoint(tx, &drop_sql).await? {
                None => {
                    sqlx::query("DELETE FROM ferry.schema_objects WHERE run_id = $1 AND position = $2")
                        .bind(run_id)
                        .bind(position)
                        .execute(&mut *tx)
                        .await?;
                    dropped.push(label);
                    progressed = true;
                }
                Some(why) => failed.push(((position, label, drop_sql), why)),
            }
        }
        if !progressed || failed.is_empty() {
            kept.extend(failed.into_iter().map(|((_, label, _), why)| format!("{label} ({why})")));
            break;
        }
        left = failed.into_iter().map(|(object, _)| object).collect();
    }
    Ok((dropped, kept))
}

/// Runs `sql` under a savepoint: `None` when it ran, else the server's
/// reason (and the transaction goes on as before it).
async fn try_in_savepoint(tx: &mut PgConnection, sql: &str) -> anyhow::Result<Option<String>> {
    sqlx::raw_sql("SAVEPOINT ferry_drop").execute(&mut *tx).await?;
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut *tx).await {
        Ok(_) => {
            sqlx::raw_sql("RELEASE SAVEPOINT ferry_drop").execute(&mut *tx).await?;
            Ok(None)
        }
        Err(e) => {
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT ferry_drop").execute(&mut *tx).await?;
            Ok(Some(super::describe_error(&e)))
        }
    }
}

/// How many changed keys a rollback names per table.
const NAMED_KEYS: i64 = 20;

/// The journal of one table of one run, as a write needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Journal<'a> {
    pub run_id: &'a str,
    /// The table's journal in the run (`ferry.undo_tables.journal`).
    pub id: i32,
    pub mode: UndoMode,
}

/// `ROW(alias.k1, …)::text`: a row's key as the journal stores it.
fn key_text(def: &TableDef, alias: &str) -> String {
    if def.primary_key.is_empty() {
        // Keyless (always empty at a run's start): named by place only.
        return format!("{alias}.ctid::text");
    }
    let columns: Vec<String> = def.key_columns().map(|c| format!("{alias}.{}", quote_ident(&c.name))).collect();
    format!("ROW({})::text", columns.join(", "))
}

/// `count:sum` of a 60-bit hash of every row's text: the same multiset of
/// rows gives the same value, in any order.
fn checksum_sql(def: &TableDef) -> String {
    format!(
        "SELECT count(*)::int8::text || ':' || coalesce(sum(('x' || substr(md5(ferry_row::text), 1, 15))::bit(60)::int8), 0)::text \
         FROM {} ferry_row",
        def.relation()
    )
}

/// The journal of `def` in run `run_id` and its mode (`None`: not
/// journaled), remembered per connection in `cache`.
pub(super) async fn mode(
    conn: &mut PgConnection,
    cache: &mut HashMap<(String, String), Option<(i32, UndoMode)>>,
    run_id: &str,
    def: &TableDef,
) -> anyhow::Result<Option<(i32, UndoMode)>> {
    let key = (run_id.to_string(), def.name.to_string());
    if let Some(mode) = cache.get(&key) {
        return Ok(*mode);
    }
    let found: Option<(i32, bool)> = match super::exists(conn, "ferry.undo_tables").await? {
        false => None,
        true => {
            sqlx::query_as(
                "SELECT journal, empty_at_start FROM ferry.undo_tables WHERE run_id = $1 AND target_table = $2 \
                 AND rolled_back_at IS NULL AND forgotten_at IS NULL",
            )
            .bind(run_id)
            .bind(def.name.to_string())
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let mode = found.map(|(id, e)| (id, if e { UndoMode::EmptyAtStart } else { UndoMode::BeforeImages }));
    cache.insert(key, mode);
    Ok(mode)
}

/// Records that the current (sub)transaction writes rows of `run_id`.
pub(super) async fn mark(tx: &mut PgConnection, run_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO ferry.undo_xacts (run_id) VALUES ($1)").bind(run_id).execute(&mut *tx).await?;
    Ok(())
}

/// Journals the first touch of every key in `from` (a relation with the
/// key columns of `def` under their names, aliased `ferry_new`): the target row it
/// holds now, or NULL.
pub(super) async fn journal_from(
    tx: &mut PgConnection,
    journal: i32,
    def: &TableDef,
    from: &str,
) -> Result<(), sqlx::Error> {
    let on: Vec<String> = def
        .key_columns()
        .map(|c| {
            let c = quote_ident(&c.name);
            format!("ferry_row.{c} = ferry_new.{c}")
        })
        .collect();
    // A lookup by key per row, whatever the planner thinks of the stage
    // (a temporary table without statistics): a join was planned as a
    // hash join over the whole target, spilling to disk, batch after batch.
    let sql = format!(
        "INSERT INTO ferry.undo (journal, key, before) \
         SELECT $1, {}, (SELECT ferry_row::text FROM {} ferry_row WHERE {}) FROM {from} ON CONFLICT DO NOTHING",
        key_text(def, "ferry_new"),
        def.relation(),
        on.join(" AND ")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(journal).execute(&mut *tx).await?;
    Ok(())
}

/// Journals the first touch of the rows of `def` matching `filter` (an SQL
/// condition on `t`; `None`: every row, before a truncate).
pub(super) async fn journal_existing(
    tx: &mut PgConnection,
    journal: i32,
    def: &TableDef,
    filter: Option<&str>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO ferry.undo (journal, key, before) \
         SELECT $1, {}, ferry_row::text FROM {} ferry_row{} ON CONFLICT DO NOTHING",
        key_text(def, "ferry_row"),
        def.relation(),
        filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(journal).execute(&mut *tx).await?;
    Ok(())
}

#[async_trait]
impl UndoJournal for PgTables {
    async fn begin_undo(&mut self, run_id: &str, table: &TableDef) -> anyhow::Result<Option<UndoMode>> {
        let what = |e: sqlx::Error| Error::driver(format!("starting the undo journal of {}", table.name), &e);
        sqlx::raw_sql(DDL).execute(&mut self.conn).await.map_err(what)?;
        // Recorded once, at the run's true start: a resumed run keeps it
        // (without reading the table again). A table without a key is only
        // ever written into when it was empty at the start (a copy in
        // storage order; streams need a key), so no row of it is journaled
        // by key.
        if let Some((_, mode)) = mode(&mut self.conn, &mut self.undo, run_id, table).await? {
            return Ok(Some(mode));
        }
        let sql = format!(
            "INSERT INTO ferry.undo_tables (run_id, target_table, empty_at_start, rows_before, checksum_before) \
             SELECT $1, $2, split_part(c, ':', 1) = '0', split_part(c, ':', 1)::int8, c FROM ({}) x(c) \
             ON CONFLICT (run_id, target_table) DO NOTHING",
            checksum_sql(table)
        );
        // The keys the table holds at the start, read in the checksum's
        // snapshot: a row someone else adds under a new key is told from
        // one that was there (named by a rollback, removed with --force).
        let mut tx = self.conn.begin().await.map_err(what)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.map_err(what)?;
        let begun = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .bind(table.name.to_string())
            .execute(&mut *tx)
            .await
            .map_err(what)?
            .rows_affected();
        if begun == 1 && !table.primary_key.is_empty() {
            let keys = format!(
                "WITH t AS (UPDATE ferry.undo_tables SET keys_at_start = true \
                 WHERE run_id = $1 AND target_table = $2 AND NOT empty_at_start RETURNING journal) \
                 INSERT INTO ferry.undo_keys (journal, key) SELECT t.journal, {key} FROM t, {rows} ferry_row",
                key = key_text(table, "ferry_row"),
                rows = table.relation()
            );
            sqlx::query(sqlx::AssertSqlSafe(keys))
                .bind(run_id)
                .bind(table.name.to_string())
                .execute(&mut *tx)
                .await
                .map_err(what)?;
        }
        tx.commit().await.map_err(what)?;
        self.undo.remove(&(run_id.to_string(), table.name.to_string()));
        let mode = mode(&mut self.conn, &mut self.undo, run_id, table).await?;
        Ok(Some(mode.map(|(_, mode)| mode).ok_or_else(|| {
            Error::contract(format!("run {run_id} was rolled back: it writes nothing into {} any more", table.name))
        })?))
    }

    async fn forget_undo(&mut self, run_id: &str) -> anyhow::Result<u64> {
        let what = |e: sqlx::Error| Error::driver(format!("forgetting the undo journal of run {run_id}"), &e);
        if !super::exists(&mut self.conn, "ferry.undo_tables").await? {
            return Ok(0);
        }
        sqlx::raw_sql(DDL).execute(&mut self.conn).await.map_err(what)?;
        let mut tx = self.conn.begin().await.map_err(what)?;
        let journals: Vec<i32> = sqlx::query_scalar(
            "UPDATE ferry.undo_tables SET forgotten_at = coalesce(forgotten_at, now()) WHERE run_id = $1 \
             AND rolled_back_at IS NULL RETURNING journal",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(what)?;
        let mut deleted = 0;
        for table in ["ferry.undo", "ferry.undo_keys"] {
            let sql = format!("DELETE FROM {table} WHERE journal = ANY($1)");
            deleted += sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&journals)
                .execute(&mut *tx)
                .await
                .map_err(what)?
                .rows_affected();
        }
        deleted += sqlx::query("DELETE FROM ferry.undo_xacts WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(what)?
            .rows_affected();
        tx.commit().await.map_err(what)?;
        self.undo.retain(|(run, _), _| run != run_id);
        Ok(deleted)
    }

    async fn undo_forgotten(&mut self, run_id: &str) -> anyhow::Result<bool> {
        if !super::exists(&mut self.conn, "ferry.undo_tables").await? {
            return Ok(false);
        }
        let forgotten: Option<bool> =
            sqlx::query_scalar("SELECT bool_or(forgotten_at IS NOT NULL) FROM ferry.undo_tables WHERE run_id = $1")
                .bind(run_id)
                .fetch_one(&mut self.conn)
                .await?;
        Ok(forgotten.unwrap_or(false))
    }

    async fn journaled_tables(&mut self, run_id: &str) -> anyhow::Result<Vec<TableName>> {
        if !super::exists(&mut self.conn, "ferry.undo_tables").await? {
            return Ok(Vec::new());
        }
        if self.undo_forgotten(run_id).await? {
            return Err(Error::contract(format!(
                "the undo journal of run {run_id} was forgotten (`ferry rollback {run_id} --forget`): it can no \
                 longer be rolled back"
            )));
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT target_table, rolled_back_at::text FROM ferry.undo_tables WHERE run_id = $1 ORDER BY target_table",
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
        let url = self.url.to_string();
        let fail = |what: String| {
            let url = url.clone();
            move |e: sqlx::Error| Error::driver(format!("{what} in {url}"), &e)
        };
        let mut tx = self.conn.begin().await.map_err(fail("starting the rollback".into()))?;
        sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
        // Where the role may, the tables' triggers and foreign-key checks
        // are off while rows go and come back (a foreign-key cycle has no
        // order to delete in; the state it returns to held them), as for
        // a load; else children first.
        sqlx::raw_sql("SAVEPOINT ferry_replica").execute(&mut *tx).await?;
        match sqlx::raw_sql("SET LOCAL session_replication_role = replica").execute(&mut *tx).await {
            Ok(_) => sqlx::raw_sql("RELEASE SAVEPOINT ferry_replica").execute(&mut *tx).await?,
            Err(_) => sqlx::raw_sql("ROLLBACK TO SAVEPOINT ferry_replica").execute(&mut *tx).await?,
        };
        // The run is over: whatever still runs under it is fenced out (its
        // checkpoints go), waiting first for a batch it is committing.
        if super::exists(&mut tx, "ferry.table_progress").await? {
            // A batch of the run finds no checkpoint to build on: fenced.
            sqlx::query("DELETE FROM ferry.table_progress WHERE run_id = $1").bind(run_id).execute(&mut *tx).await?;
        }
        if super::exists(&mut tx, "ferry.change_checkpoints").await? {
            // The stream of the pipeline continues its latest run only.
            sqlx::query(
                "DELETE FROM ferry.change_checkpoints WHERE pipeline = $1 AND $2 IS NOT DISTINCT FROM \
                 (SELECT run_id FROM ferry.runs WHERE pipeline = $1 ORDER BY started_at DESC, run_id DESC LIMIT 1)",
            )
            .bind(pipeline)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        // Nobody writes the tables while they are put back and verified.
        let names: Vec<String> = tables.iter().map(TableDef::quoted).collect();
        sqlx::query(sqlx::AssertSqlSafe(format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.join(", "))))
            .execute(&mut *tx)
            .await
            .map_err(fail("locking the tables".into()))?;
        sqlx::query(
            "CREATE TEMP TABLE ferry_undo_xids ON COMMIT DROP AS \
             SELECT DISTINCT xmin::text::int8 AS xid FROM ferry.undo_xacts WHERE run_id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("ANALYZE ferry_undo_xids").execute(&mut *tx).await?;
        let by_run = "ferry_row.xmin::text::int8 IN (SELECT xid FROM ferry_undo_xids)";
        let mut out = Vec::with_capacity(tables.len());
        let mut journals = Vec::with_capacity(tables.len());
        for def in tables {
            let (journal, empty, before, keys): (i32, bool, String, bool) = sqlx::query_as(
                "SELECT journal, empty_at_start, checksum_before, keys_at_start FROM ferry.undo_tables \
                 WHERE run_id = $1 AND target_table = $2",
            )
            .bind(run_id)
            .bind(def.name.to_string())
            .fetch_one(&mut *tx)
            .await?;
            let mode = if empty { UndoMode::EmptyAtStart } else { UndoMode::BeforeImages };
            journals.push((journal, keys));
            out.push(TableRollback {
                table: def.name.to_string(),
                mode,
                deleted: 0,
                restored: 0,
                changed_by_others: 0,
                changed_keys: Vec::new(),
                checksum_before: before,
                checksum_after: String::new(),
                exact: false,
            });
        }
        // Children before parents: the run's rows go (and, for tables that
        // held rows, the current version of every key it touched).
        for ((def, report), &(journal, keys_at_start)) in tables.iter().zip(out.iter_mut()).zip(&journals).rev() {
            let key = key_text(def, "ferry_row");
            // Rows others added under keys the table did not hold at the
            // start and the run never wrote.
            let added_by_others = format!(
                "NOT ({by_run}) AND NOT EXISTS (SELECT 1 FROM ferry.undo_keys s WHERE s.journal = $1 AND s.key = {key}) \
                 AND NOT EXISTS (SELECT 1 FROM ferry.undo a WHERE a.journal = $1 AND a.key = {key})"
            );
            let others_added = report.mode == UndoMode::BeforeImages && keys_at_start;
            let (changed, delete) = match report.mode {
                UndoMode::EmptyAtStart => (
                    format!("SELECT {key} AS k FROM {} ferry_row WHERE NOT ({by_run})", def.relation()),
                    format!(
                        "DELETE FROM {} ferry_row{}",
                        def.relation(),
                        if options.force { String::new() } else { format!(" WHERE {by_run}") }
                    ),
                ),
                UndoMode::BeforeImages => (
                    format!(
                        "SELECT u.key AS k FROM ferry.undo u JOIN {rows} ferry_row ON {key} = u.key \
                         WHERE u.journal = $1 AND NOT ({by_run}) \
                         AND ferry_row::text IS DISTINCT FROM u.before{added}",
                        rows = def.relation(),
                        added = match others_added {
                            true => format!(
                                " UNION ALL SELECT {key} FROM {} ferry_row WHERE {added_by_others}",
                                def.relation()
                            ),
                            false => String::new(),
                        }
                    ),
                    format!(
                        "DELETE FROM {} ferry_row USING ferry.undo u WHERE u.journal = $1 \
                         AND {key} = u.key{}",
                        def.relation(),
                        if options.force {
                            " AND ferry_row::text IS DISTINCT FROM u.before".to_string()
                        } else {
                            format!(" AND {by_run}")
                        }
                    ),
                ),
            };
            let mut changed = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT count(*)::int8, (array_agg(k ORDER BY k))[1:{NAMED_KEYS}] FROM ({changed}) c"
            )));
            if report.mode == UndoMode::BeforeImages {
                changed = changed.bind(journal);
            }
            let row = changed
                .fetch_one(&mut *tx)
                .await
                .map_err(fail(format!("finding rows of {} changed since the run", def.name)))?;
            report.changed_by_others = row.get::<i64, _>(0) as u64;
            report.changed_keys = row.get::<Option<Vec<String>>, _>(1).unwrap_or_default();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(delete));
            if report.mode == UndoMode::BeforeImages {
                query = query.bind(journal);
            }
            report.deleted = query
                .execute(&mut *tx)
                .await
                .map_err(fail(format!(
                    "deleting the rows run {run_id} wrote into {} (a row kept because someone else changed it may \
                 still reference one: see the changed keys, or pass --force)",
                    def.name
                )))?
                .rows_affected();
            if others_added && options.force {
                report.deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {} ferry_row WHERE {added_by_others}",
                    def.relation()
                )))
                .bind(journal)
                .execute(&mut *tx)
                .await
                .map_err(fail(format!("deleting the rows others added to {} since run {run_id} began", def.name)))?
                .rows_affected();
            }
        }
        // Parents before children: the before-images of keys now free.
        for ((def, report), &(journal, _)) in tables.iter().zip(out.iter_mut()).zip(&journals) {
            if report.mode != UndoMode::BeforeImages {
                continue;
            }
            let columns: Vec<String> = def.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let from_record: Vec<String> = columns.iter().map(|c| format!("(ferry_old.r).{c}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE \
                 SELECT {from_record} FROM (SELECT u.before::{table} AS r FROM ferry.undo u \
                 WHERE u.journal = $1 AND u.before IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM {rows} ferry_row WHERE {key} = u.key)) ferry_old",
                table = def.quoted(),
                rows = def.relation(),
                columns = columns.join(", "),
                from_record = from_record.join(", "),
                key = key_text(def, "ferry_row"),
            );
            report.restored = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(journal)
                .execute(&mut *tx)
                .await
                .map_err(fail(format!("writing back the rows run {run_id} changed in {}", def.name)))?
                .rows_affected();
        }
        for (def, report) in tables.iter().zip(out.iter_mut()) {
            report.checksum_after = sqlx::query_scalar(sqlx::AssertSqlSafe(checksum_sql(def)))
                .fetch_one(&mut *tx)
                .await
                .map_err(fail(format!("verifying {}", def.name)))?;
            report.exact = report.checksum_after == report.checksum_before;
        }
        // It is never resumed.
        // A table now as it was is done with; one that is not (rows others
        // changed, kept) keeps its journal for a rollback with --force.
        let exact: Vec<i32> = out.iter().zip(&journals).filter(|(t, _)| t.exact).map(|(_, &(j, _))| j).collect();
        for sql in [
            "UPDATE ferry.undo_tables SET rolled_back_at = now() WHERE journal = ANY($1)",
            "DELETE FROM ferry.undo WHERE journal = ANY($1)",
            "DELETE FROM ferry.undo_keys WHERE journal = ANY($1)",
        ] {
            sqlx::query(sql).bind(&exact).execute(&mut *tx).await?;
        }
        let (mut dropped, mut kept) = (Vec::new(), Vec::new());
        if exact.len() == out.len() {
            sqlx::query("DELETE FROM ferry.undo_xacts WHERE run_id = $1").bind(run_id).execute(&mut *tx).await?;
            // Every table is as before the run: what its schema copy created
            // goes too, last created first.
            (dropped, kept) = drop_created(&mut tx, run_id).await?;
        }
        sqlx::query(
            "UPDATE ferry.runs SET status = 'rolled_back', message = 'rolled back by ferry rollback', \
             updated_at = now() WHERE run_id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if options.dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await.map_err(fail("committing the rollback".into()))?;
        }
        self.undo.clear();
        Ok(JournalRollback { tables: out, dropped, kept })
    }
}
