//! Reading the legacy table from PostgreSQL with keyset pagination.

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::{connect, table_shape};
use crate::db::{DbUrl, TableName};
use crate::model::LegacyUser;
use crate::shape::TableShape;
use crate::source::{Integrity, SnapshotSource, SourceBatch};

/// A PostgreSQL table read in primary-key order.
pub struct PgSource {
    conn: PgConnection,
    table: TableName,
    url: DbUrl,
    select: String,
}

impl PgSource {
    pub async fn connect(url: &DbUrl, table: &TableName) -> anyhow::Result<PgSource> {
        let conn = connect(url, "source").await?;
        // Casts make the reader independent of the exact column types:
        // integer keys of any width, text/varchar names, timestamp or
        // timestamptz (read as UTC), and json/jsonb/text metadata as text.
        let select = format!(
            "SELECT id::int8, name::text, email::text, created_at::timestamptz, metadata::text FROM {}",
            table.quoted()
        );
        Ok(PgSource { conn, table: table.clone(), url: url.clone(), select })
    }

    /// Starts a read-only repeatable-read transaction on the source, in the
    /// exported `snapshot` when given: every later read sees that instant.
    pub async fn begin_snapshot(&mut self, snapshot: Option<&str>) -> anyhow::Result<()> {
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut self.conn).await?;
        if let Some(name) = snapshot {
            // SET TRANSACTION SNAPSHOT takes a literal, not a parameter.
            let literal = crate::db::quote_literal(name);
            sqlx::raw_sql(sqlx::AssertSqlSafe(&*format!("SET TRANSACTION SNAPSHOT {literal}")))
                .execute(&mut self.conn)
                .await
                .with_context(|| format!("importing the replication slot's snapshot {name}"))?;
        }
        Ok(())
    }

    /// Ends the transaction [`PgSource::begin_snapshot`] started.
    pub async fn end_snapshot(&mut self) -> anyhow::Result<()> {
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        Ok(())
    }

    /// The source connection, for setup statements (publications, slots).
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    fn decode(row: &PgRow) -> Result<LegacyUser, sqlx::Error> {
        let created_at: Option<DateTime<Utc>> = row.try_get(3)?;
        Ok(LegacyUser {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            email: row.try_get(2)?,
            created_at: created_at.map(|t| t.timestamp_micros()),
            metadata: row.try_get(4)?,
        })
    }

    fn batch(rows: Vec<PgRow>) -> anyhow::Result<SourceBatch> {
        let rows = rows.iter().map(Self::decode).collect::<Result<Vec<_>, _>>()?;
        let last_key = rows.last().map(|r| r.id);
        Ok(SourceBatch { rows, unreadable: Vec::new(), last_key })
    }

    fn context(&self, what: &str, e: sqlx::Error) -> anyhow::Error {
        crate::error::Error::driver(format!("{what} from source table {} at {}", self.table, self.url), &e)
    }
}

#[async_trait]
impl SnapshotSource for PgSource {
    async fn shape(&mut self) -> anyhow::Result<Option<TableShape>> {
        table_shape(&mut self.conn, &self.table).await
    }

    async fn count_after(&mut self, after: Option<i64>) -> anyhow::Result<u64> {
        let sql = format!("SELECT count(*) FROM {} WHERE $1::int8 IS NULL OR id > $1", self.table.quoted());
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
            .bind(after)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.context("counting rows", e))?;
        Ok(n as u64)
    }

    async fn read_after(&mut self, after: Option<i64>, limit: usize) -> anyhow::Result<SourceBatch> {
        let rows = match after {
            Some(key) => {
                let sql = format!("{} WHERE id > $1 ORDER BY id LIMIT $2", self.select);
                sqlx::query(sqlx::AssertSqlSafe(&*sql)).bind(key).bind(limit as i64).fetch_all(&mut self.conn).await
            }
            None => {
                let sql = format!("{} ORDER BY id LIMIT $1", self.select);
                sqlx::query(sqlx::AssertSqlSafe(&*sql)).bind(limit as i64).fetch_all(&mut self.conn).await
            }
        }
        .map_err(|e| self.context("reading rows", e))?;
        Self::batch(rows)
    }

    async fn wait_visible(&mut self, xid: u32) -> anyhow::Result<()> {
        super::wait_visible(&mut self.conn, xid).await
    }

    async fn read_keys(&mut self, keys: &[i64]) -> anyhow::Result<SourceBatch> {
        let sql = format!("{} WHERE id = ANY($1) ORDER BY id", self.select);
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(keys)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.context("reading rows", e))?;
        Self::batch(rows)
    }

    async fn sample_keys(&mut self, n: usize) -> anyhow::Result<Vec<i64>> {
        // Random points of the key range, each rounded up to the next
        // existing key: one index probe per sample instead of sorting the
        // table by random(). Keys that follow gaps are likelier; on a table
        // smaller than the sample, every key is taken.
        let t = self.table.quoted();
        let probe = format!(
            "SELECT DISTINCT k FROM (SELECT (SELECT id::int8 FROM {t} WHERE id >= b.lo + floor(random() * (b.hi - b.lo + 1))::int8 \
             ORDER BY id LIMIT 1) AS k FROM (SELECT min(id)::int8 AS lo, max(id)::int8 AS hi FROM {t}) b, generate_series(1, $1 * 2)) s \
             WHERE k IS NOT NULL LIMIT $1"
        );
        let keys: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(&*probe))
            .bind(n as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.context("sampling keys", e))?;
        if keys.len() == n {
            return Ok(keys);
        }
        let all = format!("SELECT id::int8 FROM {t} ORDER BY random() LIMIT $1");
        sqlx::query_scalar(sqlx::AssertSqlSafe(&*all))
            .bind(n as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| self.context("sampling keys", e))
    }

    async fn size_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar("SELECT pg_total_relation_size(to_regclass($1))")
            .bind(self.table.quoted())
            .fetch_one(&mut self.conn)
            .await
            .context("measuring the source table")?;
        Ok(size.map(|s| s as u64))
    }

    async fn integrity(&mut self) -> anyhow::Result<Integrity> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE name IS NULL), count(*) FILTER (WHERE email IS NULL), \
             count(*) FILTER (WHERE created_at IS NULL), count(*) - count(DISTINCT id), \
             count(email) - count(DISTINCT lower(email)) FROM {}",
            self.table.quoted()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.context("checking integrity", e))?;
        let get = |i: usize| -> anyhow::Result<u64> { Ok(row.try_get::<i64, _>(i)? as u64) };
        Ok(Integrity {
            null_names: get(0)?,
            null_emails: get(1)?,
            null_created_at: get(2)?,
            duplicate_keys: get(3)?,
            duplicate_emails: get(4)?,
        })
    }

    async fn can_read(&mut self) -> anyhow::Result<bool> {
        Ok(sqlx::query_scalar("SELECT has_table_privilege($1, 'SELECT')")
            .bind(self.table.quoted())
            .fetch_one(&mut self.conn)
            .await?)
    }
}
