//! Reading the legacy table from SQLite with keyset pagination.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row, TypeInfo, ValueRef};

use super::{connect, table_shape, table_sql};
use crate::db::{DbUrl, TableName};
use crate::model::{DeadLetter, DeadLetterKind, LegacyUser};
use crate::shape::TableShape;
use crate::source::{Integrity, SnapshotSource, SourceBatch};

/// A SQLite table read in primary-key order.
pub struct SqliteSource {
    conn: SqliteConnection,
    table: TableName,
    url: DbUrl,
    select: String,
}

impl SqliteSource {
    pub async fn connect(url: &DbUrl, table: &TableName) -> anyhow::Result<SqliteSource> {
        let conn = connect(url, "source", false).await?;
        let select = format!("SELECT id, name, email, created_at, metadata FROM {}", table_sql(table));
        Ok(SqliteSource { conn, table: table.clone(), url: url.clone(), select })
    }

    fn err(&self, what: &str, e: sqlx::Error) -> anyhow::Error {
        anyhow::anyhow!("{what} from source table {} in {}: {e}", self.table, self.url)
    }

    /// SQLite is dynamically typed: a text column may hold an integer and a
    /// timestamp may be text or a number. Read what is there.
    fn decode(row: &SqliteRow) -> anyhow::Result<Result<LegacyUser, DeadLetter>> {
        let id: i64 = row.try_get_unchecked(0)?;
        let text = |i: usize| -> anyhow::Result<Option<String>> {
            let raw = row.try_get_raw(i)?;
            if raw.is_null() {
                return Ok(None);
            }
            Ok(Some(row.try_get_unchecked::<String, _>(i)?))
        };
        let mut user = LegacyUser { id, name: text(1)?, email: text(2)?, created_at: None, metadata: text(4)? };
        let raw = row.try_get_raw(3)?;
        if !raw.is_null() {
            let kind = raw.type_info().name().to_string();
            let parsed = match kind.as_str() {
                // Unix time in seconds, as strftime('%s') and many apps write it.
                "INTEGER" => Some(row.try_get_unchecked::<i64, _>(3)?.saturating_mul(1_000_000)),
                "REAL" => Some((row.try_get_unchecked::<f64, _>(3)? * 1e6).round() as i64),
                _ => {
                    let s: String = row.try_get_unchecked(3)?;
                    match crate::time::parse_text(&s) {
                        Some(t) => Some(t),
                        None => {
                            return Ok(Err(DeadLetter {
                                source_key: id,
                                reason: format!(
                                    "created_at {s:?} is not a timestamp (expected YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM])"
                                ),
                                source_row: user,
                                kind: DeadLetterKind::Extract,
                            }));
                        }
                    }
                }
            };
            user.created_at = parsed;
        }
        Ok(Ok(user))
    }

    fn batch(rows: Vec<SqliteRow>) -> anyhow::Result<SourceBatch> {
        let mut batch = SourceBatch::default();
        for row in &rows {
            match Self::decode(row)? {
                Ok(user) => {
                    batch.last_key = Some(user.id);
                    batch.rows.push(user);
                }
                Err(dead) => {
                    batch.last_key = Some(dead.source_key);
                    batch.unreadable.push(dead);
                }
            }
        }
        Ok(batch)
    }
}

#[async_trait]
impl SnapshotSource for SqliteSource {
    async fn shape(&mut self) -> anyhow::Result<Option<TableShape>> {
        table_shape(&mut self.conn, &self.table).await
    }

    async fn count_after(&mut self, after: Option<i64>) -> anyhow::Result<u64> {
        let sql = format!("SELECT count(*) FROM {} WHERE ?1 IS NULL OR id > ?1", table_sql(&self.table));
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
            .bind(after)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("counting rows", e))?;
        Ok(n as u64)
    }

    async fn read_after(&mut self, after: Option<i64>, limit: usize) -> anyhow::Result<SourceBatch> {
        let sql = format!("{} WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2", self.select);
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err("reading rows", e))?;
        Self::batch(rows)
    }

    async fn read_keys(&mut self, keys: &[i64]) -> anyhow::Result<SourceBatch> {
        let list = serde_json::to_string(keys)?;
        let sql = format!("{} WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id", self.select);
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(list)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err("reading rows", e))?;
        Self::batch(rows)
    }

    async fn sample_keys(&mut self, n: usize) -> anyhow::Result<Vec<i64>> {
        let sql = format!("SELECT id FROM {} ORDER BY random() LIMIT ?1", table_sql(&self.table));
        sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
            .bind(n as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.err("sampling keys", e))
    }

    async fn size_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(self.url.sqlite_path().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()))
    }

    async fn integrity(&mut self) -> anyhow::Result<Integrity> {
        let sql = format!(
            "SELECT sum(name IS NULL), sum(email IS NULL), sum(created_at IS NULL), count(*) - count(DISTINCT id), \
             count(email) - count(DISTINCT lower(email)) FROM {}",
            table_sql(&self.table)
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("checking integrity", e))?;
        let get = |i: usize| -> anyhow::Result<u64> { Ok(row.try_get::<Option<i64>, _>(i)?.unwrap_or(0) as u64) };
        Ok(Integrity {
            null_names: get(0)?,
            null_emails: get(1)?,
            null_created_at: get(2)?,
            duplicate_keys: get(3)?,
            duplicate_emails: get(4)?,
        })
    }

    async fn can_read(&mut self) -> anyhow::Result<bool> {
        Ok(true)
    }
}
