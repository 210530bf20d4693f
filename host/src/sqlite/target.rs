//! Writing into SQLite: multi-row inserts and the `ferry_*` control tables,
//! a batch and its checkpoint in one transaction.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use super::{connect, table_shape, table_sql};
use crate::config::OnConflict;
use crate::db::{DbUrl, TableName};
use crate::model::NewUser;
use crate::shape::TableShape;
use crate::sink::{Applied, ConflictError, FencedError, LoadBatch, RowView, Sink, TargetReader, TargetRow};

/// Rows per INSERT statement: 6 parameters a row stays under SQLite's
/// default limit of 32766 bound parameters.
const ROWS_PER_INSERT: usize = 1000;

impl super::control::SqliteConn for SqliteTarget {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// A SQLite target.
pub struct SqliteTarget {
    conn: SqliteConnection,
    table: TableName,
    url: DbUrl,
    pipeline: String,
    source_table: String,
}

impl SqliteTarget {
    pub async fn connect(
        url: &DbUrl,
        table: &TableName,
        pipeline: String,
        source_table: String,
    ) -> anyhow::Result<SqliteTarget> {
        let conn = connect(url, "target", true).await?;
        Ok(SqliteTarget { conn, table: table.clone(), url: url.clone(), pipeline, source_table })
    }

    fn decode_target(row: &SqliteRow) -> Result<TargetRow, sqlx::Error> {
        let text = |i: usize| -> Result<Option<String>, sqlx::Error> { row.try_get_unchecked::<Option<String>, _>(i) };
        let created = text(4)?.map(|s| match crate::time::parse_text(&s) {
            Some(t) => t.to_string(),
            None => s,
        });
        Ok([text(0)?, text(1)?, text(2)?, text(3)?, created, text(5)?.map(|s| crate::value::canonical_json(&s))])
    }

    fn select_target(&self) -> String {
        format!("SELECT id, first_name, last_name, email, created_at, settings FROM {}", table_sql(&self.table))
    }

    async fn first_existing_key(&mut self, batch: &LoadBatch) -> Option<String> {
        let keys: Vec<&str> = batch.rows.iter().map(|r| r.id.as_str()).collect();
        let sql =
            format!("SELECT id FROM {} WHERE id IN (SELECT value FROM json_each(?1)) LIMIT 1", table_sql(&self.table));
        sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
            .bind(serde_json::to_string(&keys).ok()?)
            .fetch_optional(&mut self.conn)
            .await
            .ok()
            .flatten()
    }
}

/// Whether SQLite refused rows for what they hold (so the other rows of the
/// batch may load): NOT NULL, CHECK, a foreign key, a STRICT column's type,
/// or a unique index other than a key conflict under `on_conflict = error`
/// (that policy stops the run).
pub(super) fn refuses_rows(e: &sqlx::Error, policy: OnConflict) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    match db.kind() {
        sqlx::error::ErrorKind::NotNullViolation
        | sqlx::error::ErrorKind::CheckViolation
        | sqlx::error::ErrorKind::ForeignKeyViolation => true,
        sqlx::error::ErrorKind::UniqueViolation => policy != OnConflict::Error,
        // SQLITE_CONSTRAINT_DATATYPE: a value of the wrong type in a STRICT table.
        _ => db.code().as_deref() == Some("3091"),
    }
}

/// One multi-row INSERT of `rows` under `policy`; the rows written.
async fn insert_rows(
    tx: &mut sqlx::SqliteConnection,
    table: &str,
    rows: &[NewUser],
    policy: OnConflict,
) -> Result<u64, sqlx::Error> {
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("INSERT INTO {table} (id, first_name, last_name, email, created_at, settings) "));
    qb.push_values(rows, |mut b, r| {
        b.push_bind(&r.id)
            .push_bind(&r.first_name)
            .push_bind(&r.last_name)
            .push_bind(&r.email)
            .push_bind(crate::time::format_sqlite(r.created_at))
            .push_bind(&r.settings);
    });
    match policy {
        OnConflict::Error => {}
        OnConflict::Skip => {
            qb.push(" ON CONFLICT (id) DO NOTHING");
        }
        OnConflict::Overwrite => {
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET first_name = excluded.first_name, last_name = excluded.last_name, \
                 email = excluded.email, created_at = excluded.created_at, settings = excluded.settings",
            );
        }
    }
    Ok(qb.build().execute(&mut *tx).await?.rows_affected())
}

impl SqliteTarget {
    /// A batch that could not be written (its transaction rolled back): a
    /// key conflict under `on_conflict = error` names the key; anything
    /// else says which batch.
    async fn batch_failed(&mut self, batch: &LoadBatch, e: sqlx::Error) -> anyhow::Error {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            let key = self.first_existing_key(batch).await.unwrap_or_else(|| db.message().to_string());
            return ConflictError { table: self.table.to_string(), key }.into();
        }
        crate::error::Error::driver(format!("loading batch {} into {}", batch.seq, self.table), &e)
    }
}

#[async_trait]
impl Sink for SqliteTarget {
    async fn shape(&mut self) -> anyhow::Result<Option<TableShape>> {
        table_shape(&mut self.conn, &self.table).await
    }

    async fn create_table(&mut self) -> anyhow::Result<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY NOT NULL, first_name TEXT NOT NULL, last_name TEXT NOT NULL, \
             email TEXT NOT NULL, created_at TEXT NOT NULL, settings TEXT NOT NULL CHECK (json_valid(settings)))",
            table_sql(&self.table)
        );
        sqlx::query(sqlx::AssertSqlSafe(&*sql)).execute(&mut self.conn).await?;
        Ok(())
    }

    async fn commit_batch(&mut self, batch: &LoadBatch, policy: OnConflict) -> anyhow::Result<Applied> {
        let table = table_sql(&self.table);
        let mut tx = self.conn.begin().await?;
        let stored: Option<Option<i64>> = sqlx::query_scalar("SELECT last_key FROM ferry_runs WHERE run_id = ?1")
            .bind(&batch.run_id)
            .fetch_optional(&mut *tx)
            .await?;
        if stored != Some(batch.previous_key) {
            return Err(FencedError { run_id: batch.run_id.clone() }.into());
        }
        let mut loaded = 0u64;
        let mut refused: Vec<crate::model::DeadLetter> = Vec::new();
        let failure: Option<sqlx::Error> = 'rows: {
            for (n, chunk) in batch.rows.chunks(ROWS_PER_INSERT).enumerate() {
                match insert_rows(&mut tx, &table, chunk, policy).await {
                    Ok(done) => loaded += done,
                    // A row SQLite refuses (NOT NULL, CHECK, a foreign key, a
                    // STRICT type): the failed statement alone was undone; row
                    // by row, the refused ones become dead letters, the rest loads.
                    Err(e) if refuses_rows(&e, policy) => {
                        for (i, row) in chunk.iter().enumerate() {
                            match insert_rows(&mut tx, &table, std::slice::from_ref(row), policy).await {
                                Ok(done) => loaded += done,
                                Err(e) if refuses_rows(&e, policy) => {
                                    refused.push(batch.refused(n * ROWS_PER_INSERT + i, &e.to_string()));
                                }
                                Err(e) => break 'rows Some(e),
                            }
                        }
                    }
                    Err(e) => break 'rows Some(e),
                }
            }
            None
        };
        if let Some(e) = failure {
            tx.rollback().await?;
            return Err(self.batch_failed(batch, e).await);
        }
        let applied = Applied { loaded, skipped: (batch.rows.len() - refused.len()) as u64 - loaded };
        let all_dead: Vec<&crate::model::DeadLetter> = batch.dead.iter().chain(&refused).collect();
        for d in &all_dead {
            sqlx::query(
                "INSERT INTO ferry_dead_letters (run_id, pipeline, source_table, source_key, source_row, kind, reason, plugin_sha256) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(&batch.run_id)
            .bind(&self.pipeline)
            .bind(&self.source_table)
            .bind(d.source_key.to_string())
            .bind(d.source_row.to_json())
            .bind(d.kind.as_str())
            .bind(&d.reason)
            .bind(&batch.plugin_sha256)
            .execute(&mut *tx)
            .await?;
        }
        let dead = all_dead.len() as i64;
        sqlx::query(
            "INSERT INTO ferry_batches (run_id, seq, first_key, last_key, loaded, dead_lettered, plugin_sha256) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&batch.run_id)
        .bind(batch.seq as i64)
        .bind(batch.first_key)
        .bind(batch.last_key)
        .bind(applied.loaded as i64)
        .bind(dead)
        .bind(&batch.plugin_sha256)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE ferry_runs SET last_key = ?2, batches = batches + 1, extracted = extracted + ?3, \
             transformed = transformed + ?4, loaded = loaded + ?5, skipped = skipped + ?6, dead_lettered = dead_lettered + ?7, \
             status = 'running', updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE run_id = ?1",
        )
        .bind(&batch.run_id)
        .bind(batch.last_key)
        .bind(batch.extracted as i64)
        .bind(batch.rows.len() as i64)
        .bind(applied.loaded as i64)
        .bind(applied.skipped as i64)
        .bind(dead)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn free_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        let dir = self.url.sqlite_path().map(|p| {
            std::path::Path::new(p)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf()
        });
        Ok(dir.and_then(|d| fs4::available_space(d).ok()))
    }

    async fn privileges(&mut self) -> anyhow::Result<Result<(), String>> {
        // A write lock proves the file and its directory are writable.
        match sqlx::query("BEGIN IMMEDIATE").execute(&mut self.conn).await {
            Ok(_) => {
                sqlx::query("ROLLBACK").execute(&mut self.conn).await?;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(format!("cannot write {}: {e}", self.url))),
        }
    }
}

#[async_trait]
impl TargetReader for SqliteTarget {
    async fn count_rows(&mut self) -> anyhow::Result<u64> {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(&*format!("SELECT count(*) FROM {}", table_sql(&self.table))))
                .fetch_one(&mut self.conn)
                .await?;
        Ok(n as u64)
    }

    async fn read_range(
        &mut self,
        from: Option<(&str, bool)>,
        before: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<TargetRow>> {
        let op = if from.is_some_and(|(_, inclusive)| inclusive) { ">=" } else { ">" };
        let sql = format!(
            "{} WHERE (?1 IS NULL OR id {op} ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id LIMIT ?3",
            self.select_target()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(from.map(|(k, _)| k))
            .bind(before)
            .bind(limit as i64)
            .fetch_all(&mut self.conn)
            .await?;
        Ok(rows.iter().map(Self::decode_target).collect::<Result<_, _>>()?)
    }

    async fn segment_boundaries(&mut self, segment_rows: usize, _total_rows: u64) -> anyhow::Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM {}) WHERE rn > 1 AND (rn - 1) % ?1 = 0 ORDER BY rn",
            table_sql(&self.table)
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql)).bind(segment_rows as i64).fetch_all(&mut self.conn).await?)
    }

    async fn scan(&mut self, each: &mut (dyn for<'a, 'r> FnMut(&'a RowView<'r>) + Send)) -> anyhow::Result<()> {
        use futures_util::TryStreamExt;
        let sql = self.select_target();
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(&*sql)).fetch(&mut self.conn);
        while let Some(row) = rows.try_next().await? {
            let text = |i: usize| row.try_get_unchecked::<Option<&str>, _>(i);
            each(&RowView {
                id: text(0)?,
                first_name: text(1)?,
                last_name: text(2)?,
                email: text(3)?,
                created_at: text(4)?.and_then(crate::time::parse_text),
                settings: text(5)?,
            });
        }
        Ok(())
    }

    async fn read_keys(&mut self, keys: &[String]) -> anyhow::Result<Vec<TargetRow>> {
        let sql = format!("{} WHERE id IN (SELECT value FROM json_each(?1))", self.select_target());
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(serde_json::to_string(keys)?)
            .fetch_all(&mut self.conn)
            .await?;
        Ok(rows.iter().map(Self::decode_target).collect::<Result<_, _>>()?)
    }
}

super::control::sqlite_control!(SqliteTarget);
