//! Writing into PostgreSQL: COPY for rows, the `ferry` control schema for
//! runs, checkpoints, dead letters and lineage — all of a batch in one
//! transaction.

use anyhow::Context;
use async_trait::async_trait;
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};

use super::copy::{self, ColumnEncoding};
use super::table_shape;
use crate::config::{LoadMethod, OnConflict};
use crate::db::{DbUrl, TableName};
use crate::model::NewUser;
use crate::shape::TableShape;
use crate::sink::{Applied, ConflictError, FencedError, LoadBatch, RowView, Sink, TargetReader, TargetRow};

impl super::control::PgConn for PgTarget {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    fn url(&self) -> &DbUrl {
        &self.url
    }
}

/// A PostgreSQL target.
pub struct PgTarget {
    pub(super) conn: PgConnection,
    pub(super) table: TableName,
    pub(super) url: DbUrl,
    pub(super) loader: Loader,
    source_table: String,
}

/// What COPY needs besides the connection (kept apart so a transaction can
/// borrow the connection while the loader is used).
pub(super) struct Loader {
    target: String,
    table_name: String,
    load_method: LoadMethod,
    /// Column encodings for COPY, learned from the table's shape on first use.
    encodings: Option<[ColumnEncoding; 6]>,
    buf: BytesMut,
}

impl PgTarget {
    pub async fn connect(
        url: &DbUrl,
        table: &TableName,
        load_method: LoadMethod,
        source_table: String,
    ) -> anyhow::Result<PgTarget> {
        // Batches commit asynchronously: a server crash may lose the last
        // few commits, but each took its checkpoint with it, so a resume
        // redoes exactly those batches. Run statuses commit synchronously
        // (see set_status), which also makes every earlier commit durable.
        let conn = super::connect_with(url, "target", &[("synchronous_commit", "off")]).await?;
        let loader = Loader {
            target: table.quoted(),
            table_name: table.to_string(),
            load_method,
            encodings: None,
            buf: BytesMut::new(),
        };
        Ok(PgTarget { conn, table: table.clone(), url: url.clone(), loader, source_table })
    }

    pub(super) async fn encodings(&mut self) -> anyhow::Result<[ColumnEncoding; 6]> {
        if let Some(e) = self.loader.encodings {
            return Ok(e);
        }
        let shape = table_shape(&mut self.conn, &self.table)
            .await?
            .with_context(|| format!("target table {} does not exist in {}", self.table, self.url))?;
        let enc = |name: &str, ts: bool| {
            shape.column(name).map(|c| ColumnEncoding::for_type(&c.data_type, ts)).unwrap_or(ColumnEncoding::Text)
        };
        let e = [
            enc("id", false),
            enc("first_name", false),
            enc("last_name", false),
            enc("email", false),
            enc("created_at", true),
            enc("settings", false),
        ];
        self.loader.encodings = Some(e);
        Ok(e)
    }

    fn decode_target(row: &PgRow) -> Result<TargetRow, sqlx::Error> {
        let created: Option<DateTime<Utc>> = row.try_get(4)?;
        let settings: Option<String> = row.try_get(5)?;
        Ok([
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            created.map(|t| t.timestamp_micros().to_string()),
            settings.map(|s| crate::value::canonical_json(&s)),
        ])
    }

    fn select_target(&self) -> String {
        format!(
            "SELECT id::text, first_name::text, last_name::text, email::text, created_at::timestamptz, settings::text FROM {}",
            self.table.quoted()
        )
    }
}

impl Loader {
    fn columns() -> &'static str {
        r#""id", "first_name", "last_name", "email", "created_at", "settings""#
    }

    /// COPYs the batch's rows into `table` (the target, or the staging table).
    async fn copy_rows(&mut self, tx: &mut PgConnection, table: &str, rows: &[NewUser]) -> Result<u64, sqlx::Error> {
        let encodings = self.encodings.expect("encodings resolved before copy");
        let (sql, binary) = match (self.load_method, encodings[4]) {
            // A timestamp kept in a text column is written as text either way.
            (LoadMethod::CopyBinary, _) => {
                (format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", Self::columns()), true)
            }
            (LoadMethod::CopyText, _) => (format!("COPY {table} ({}) FROM STDIN", Self::columns()), false),
        };
        if binary {
            copy::encode_binary(rows, &encodings, &mut self.buf);
        } else {
            copy::encode_text(rows, &mut self.buf);
        }
        let mut copy_in = tx.copy_in_raw(&sql).await?;
        copy_in.send(self.buf.split().freeze()).await?;
        copy_in.finish().await
    }

    /// Writes `rows` into the target under `policy` (COPY straight in, or
    /// through a staging table for skip/overwrite).
    pub(super) async fn apply(
        &mut self,
        tx: &mut PgConnection,
        rows: &[NewUser],
        policy: OnConflict,
    ) -> Result<Applied, sqlx::Error> {
        let total = rows.len() as u64;
        if total == 0 {
            return Ok(Applied::default());
        }
        let target = self.target.clone();
        match policy {
            OnConflict::Error => {
                let loaded = self.copy_rows(tx, &target, rows).await?;
                Ok(Applied { loaded, skipped: 0 })
            }
            OnConflict::Skip | OnConflict::Overwrite => {
                sqlx::query(sqlx::AssertSqlSafe(&*format!(
                    "CREATE TEMP TABLE IF NOT EXISTS ferry_stage ON COMMIT DELETE ROWS AS \
                     SELECT {} FROM {target} WITH NO DATA",
                    Self::columns()
                )))
                .execute(&mut *tx)
                .await?;
                // Emptied at commit, and here: a transaction may stage twice.
                sqlx::query("TRUNCATE ferry_stage").execute(&mut *tx).await?;
                self.copy_rows(tx, "ferry_stage", rows).await?;
                let action = if policy == OnConflict::Skip {
                    "DO NOTHING".to_string()
                } else {
                    r#"DO UPDATE SET "first_name" = EXCLUDED."first_name", "last_name" = EXCLUDED."last_name", "email" = EXCLUDED."email", "created_at" = EXCLUDED."created_at", "settings" = EXCLUDED."settings""#.to_string()
                };
                let sql = format!(
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM ferry_stage ON CONFLICT (\"id\") {action}",
                    cols = Self::columns()
                );
                let written = sqlx::query(sqlx::AssertSqlSafe(&*sql)).execute(&mut *tx).await?.rows_affected();
                Ok(Applied { loaded: written, skipped: total - written })
            }
        }
    }
}

/// Whether the database refused rows for what they hold (so another subset
/// of the batch may load): a data exception (class 22: a NUL byte, a value
/// too long, a malformed value) or an integrity violation (class 23: NOT
/// NULL, CHECK, foreign key, a unique index). A primary-key conflict under
/// `on_conflict = error` is not: that policy stops the run.
pub(super) fn refuses_rows(e: &sqlx::Error, policy: OnConflict) -> bool {
    let Some(code) = e.as_database_error().and_then(|db| db.code()) else { return false };
    code.starts_with("22") || (code.starts_with("23") && !(code == "23505" && policy == OnConflict::Error))
}

impl Loader {
    /// [`Loader::apply`] that isolates the rows the target refuses: the
    /// batch is tried whole, and on a refusal split in halves, each half
    /// tried in its own savepoint, down to single rows. Returns what loaded
    /// and the refused rows (index in `rows`, the database's message). All
    /// of it happens in `tx`, so the batch still commits once, with its
    /// checkpoint.
    pub(super) async fn apply_isolating(
        &mut self,
        tx: &mut PgConnection,
        rows: &[NewUser],
        policy: OnConflict,
    ) -> Result<(Applied, Vec<(usize, String)>), sqlx::Error> {
        let mut applied = Applied::default();
        let mut refused = Vec::new();
        // Ranges to try, the next one last; a refused range is split in two.
        let mut todo = vec![(0, rows.len())];
        while let Some((from, to)) = todo.pop() {
            sqlx::query("SAVEPOINT ferry_rows").execute(&mut *tx).await?;
            match self.apply(tx, &rows[from..to], policy).await {
                Ok(a) => {
                    sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    applied.loaded += a.loaded;
                    applied.skipped += a.skipped;
                }
                Err(e) if refuses_rows(&e, policy) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    sqlx::query("RELEASE SAVEPOINT ferry_rows").execute(&mut *tx).await?;
                    if to - from == 1 {
                        refused.push((from, super::describe_error(&e)));
                    } else {
                        super::split_refused(from, to, &mut todo);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok((applied, refused))
    }
}

#[async_trait]
impl Sink for PgTarget {
    async fn shape(&mut self) -> anyhow::Result<Option<TableShape>> {
        table_shape(&mut self.conn, &self.table).await
    }

    async fn create_table(&mut self) -> anyhow::Result<()> {
        if let Some(schema) = &self.table.schema {
            sqlx::query(sqlx::AssertSqlSafe(&*format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                crate::db::quote_ident(schema)
            )))
            .execute(&mut self.conn)
            .await?;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, \
             email text NOT NULL, created_at timestamptz NOT NULL, settings jsonb NOT NULL)",
            self.table.quoted()
        );
        sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .execute(&mut self.conn)
            .await
            .map_err(|e| crate::error::Error::driver(format!("creating target table {}", self.table), &e))?;
        self.loader.encodings = None;
        Ok(())
    }

    async fn commit_batch(&mut self, batch: &LoadBatch, policy: OnConflict) -> anyhow::Result<Applied> {
        self.encodings().await?;
        let mut tx = self.conn.begin().await.context("starting the batch transaction")?;
        // Take the run row lock first: it fences concurrent writers of the
        // same run (the second one sees a checkpoint that moved).
        let stored: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_key FROM ferry.runs WHERE run_id = $1 FOR UPDATE")
                .bind(&batch.run_id)
                .fetch_optional(&mut *tx)
                .await
                .context("locking the run's checkpoint")?;
        match stored {
            Some(key) if key == batch.previous_key => {}
            _ => {
                return Err(FencedError { run_id: batch.run_id.clone() }.into());
            }
        }
        let (applied, refused) = {
            let this = &mut self.loader;
            match this.apply_isolating(&mut tx, &batch.rows, policy).await {
                Ok(a) => a,
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
                    let key = pg
                        .and_then(|p| p.detail())
                        .and_then(|d| {
                            d.split_once(")=(").map(|(_, rest)| rest.trim_end_matches(") already exists.").to_string())
                        })
                        .unwrap_or_else(|| db.message().to_string());
                    return Err(ConflictError { table: this.table_name.clone(), key }.into());
                }
                Err(e) => {
                    return Err(crate::error::Error::driver(
                        format!("loading batch {} into {}", batch.seq, this.table_name),
                        &e,
                    ));
                }
            }
        };
        let refused: Vec<_> = refused.iter().map(|(index, message)| batch.refused(*index, message)).collect();
        let all_dead: Vec<&crate::model::DeadLetter> = batch.dead.iter().chain(&refused).collect();
        if !all_dead.is_empty() {
            let keys: Vec<String> = all_dead.iter().map(|d| d.source_key.to_string()).collect();
            // jsonb cannot hold U+0000 (a row may be refused for one): it is
            // kept as the six characters `\u0000`.
            let rows: Vec<String> =
                all_dead.iter().map(|d| d.source_row.to_json().replace("\\u0000", "\\\\u0000")).collect();
            let kinds: Vec<&str> = all_dead.iter().map(|d| d.kind.as_str()).collect();
            let reasons: Vec<String> = all_dead.iter().map(|d| d.reason.replace('\0', "\\u0000")).collect();
            sqlx::query(
                "INSERT INTO ferry.dead_letters (run_id, pipeline, source_table, source_key, source_row, kind, reason, plugin_sha256) \
                 SELECT $1, r.pipeline, $2, k, j::jsonb, kd, rs, $3 \
                 FROM ferry.runs r, unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS t(k, j, kd, rs) WHERE r.run_id = $1",
            )
            .bind(&batch.run_id)
            .bind(&self.source_table)
            .bind(&batch.plugin_sha256)
            .bind(&keys)
            .bind(&rows)
            .bind(&kinds)
            .bind(&reasons)
            .execute(&mut *tx)
            .await
            .map_err(|e| crate::error::Error::driver("recording dead letters", &e))?;
        }
        let dead = all_dead.len() as i64;
        sqlx::query(
            "INSERT INTO ferry.batches (run_id, seq, first_key, last_key, loaded, dead_lettered, plugin_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&batch.run_id)
        .bind(batch.seq as i64)
        .bind(batch.first_key)
        .bind(batch.last_key)
        .bind(applied.loaded as i64)
        .bind(dead)
        .bind(&batch.plugin_sha256)
        .execute(&mut *tx)
        .await
        .context("recording the batch's lineage")?;
        sqlx::query(
            "UPDATE ferry.runs SET last_key = $2, batches = batches + 1, extracted = extracted + $3, \
             transformed = transformed + $4, loaded = loaded + $5, skipped = skipped + $6, \
             dead_lettered = dead_lettered + $7, status = 'running', updated_at = now() WHERE run_id = $1",
        )
        .bind(&batch.run_id)
        .bind(batch.last_key)
        .bind(batch.extracted as i64)
        .bind(batch.rows.len() as i64)
        .bind(applied.loaded as i64)
        .bind(applied.skipped as i64)
        .bind(dead)
        .execute(&mut *tx)
        .await
        .context("advancing the checkpoint")?;
        tx.commit().await.context("committing the batch")?;
        Ok(applied)
    }

    async fn free_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        // Only visible when the server runs on this machine and the role may
        // read data_directory (superuser or pg_read_all_settings).
        let dir: Result<String, _> =
            sqlx::query_scalar("SELECT current_setting('data_directory')").fetch_one(&mut self.conn).await;
        Ok(dir.ok().and_then(|d| fs4::available_space(&d).ok()))
    }

    async fn privileges(&mut self) -> anyhow::Result<Result<(), String>> {
        let (create_db, schema_ok, table_ok): (bool, bool, Option<bool>) = sqlx::query_as(
            "SELECT has_database_privilege(current_database(), 'CREATE'), \
             (SELECT has_schema_privilege('ferry', 'CREATE') FROM pg_namespace WHERE nspname = 'ferry'), \
             CASE WHEN to_regclass($1) IS NULL THEN NULL ELSE has_table_privilege($1, 'INSERT, UPDATE, SELECT') END",
        )
        .bind(self.table.quoted())
        .fetch_one(&mut self.conn)
        .await
        .map(|(a, b, c): (bool, Option<bool>, Option<bool>)| (a, b.unwrap_or(a), c))?;
        let mut missing = Vec::new();
        if !schema_ok {
            missing.push("CREATE on the database or on schema ferry (for the control tables)".to_string());
        }
        let _ = create_db;
        if table_ok == Some(false) {
            missing.push(format!("INSERT, UPDATE and SELECT on {}", self.table));
        }
        Ok(if missing.is_empty() { Ok(()) } else { Err(format!("the target role lacks {}", missing.join(" and "))) })
    }
}

#[async_trait]
impl TargetReader for PgTarget {
    async fn count_rows(&mut self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(&*format!("SELECT count(*) FROM {}", self.table.quoted())))
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| crate::error::Error::driver(format!("counting target rows in {}", self.table), &e))?;
        Ok(n as u64)
    }

    async fn read_range(
        &mut self,
        from: Option<(&str, bool)>,
        before: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<TargetRow>> {
        // COLLATE "C": byte order, the order ferry's segments are cut in.
        let op = if from.is_some_and(|(_, inclusive)| inclusive) { ">=" } else { ">" };
        let sql = format!(
            "{} WHERE ($1::text IS NULL OR id COLLATE \"C\" {op} $1) AND ($2::text IS NULL OR id COLLATE \"C\" < $2) \
             ORDER BY id COLLATE \"C\" LIMIT $3",
            self.select_target()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(from.map(|(k, _)| k))
            .bind(before)
            .bind(limit as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| crate::error::Error::driver(format!("reading target rows from {}", self.table), &e))?;
        Ok(rows.iter().map(Self::decode_target).collect::<Result<_, _>>()?)
    }

    async fn segment_boundaries(&mut self, segment_rows: usize, total_rows: u64) -> anyhow::Result<Vec<String>> {
        // Large tables: cut on a page sample (TABLESAMPLE SYSTEM reads a few
        // percent of the pages) with SAMPLES_PER_SEGMENT keys per segment,
        // instead of sorting every key.
        const SAMPLES_PER_SEGMENT: u64 = 32;
        let wanted = SAMPLES_PER_SEGMENT * (total_rows / segment_rows as u64 + 1);
        let percent = 100.0 * wanted as f64 / total_rows.max(1) as f64;
        if percent < 25.0 {
            let sql = format!("SELECT id::text FROM {} TABLESAMPLE SYSTEM ($1)", self.table.quoted());
            let mut keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
                .bind(percent)
                .fetch_all(&mut self.conn)
                .await
                .map_err(|e| crate::error::Error::driver(format!("sampling {} for segments", self.table), &e))?;
            keys.sort_unstable();
            let mut cut: Vec<String> =
                keys.into_iter().skip(SAMPLES_PER_SEGMENT as usize).step_by(SAMPLES_PER_SEGMENT as usize).collect();
            cut.dedup();
            return Ok(cut);
        }
        let sql = format!(
            "SELECT id FROM (SELECT id::text AS id, row_number() OVER (ORDER BY id COLLATE \"C\") AS rn FROM {}) s \
             WHERE rn > 1 AND (rn - 1) % $1 = 0 ORDER BY rn",
            self.table.quoted()
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(&*sql))
            .bind(segment_rows as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| crate::error::Error::driver(format!("cutting {} into segments", self.table), &e))
    }

    async fn scan(&mut self, each: &mut (dyn for<'a, 'r> FnMut(&'a RowView<'r>) + Send)) -> anyhow::Result<()> {
        use futures_util::TryStreamExt;
        let sql = self.select_target();
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(&*sql)).fetch(&mut self.conn);
        while let Some(row) =
            rows.try_next().await.map_err(|e| crate::error::Error::driver(format!("reading {}", self.table), &e))?
        {
            let created: Option<DateTime<Utc>> = row.try_get(4)?;
            each(&RowView {
                id: row.try_get(0)?,
                first_name: row.try_get(1)?,
                last_name: row.try_get(2)?,
                email: row.try_get(3)?,
                created_at: created.map(|t| t.timestamp_micros()),
                settings: row.try_get(5)?,
            });
        }
        Ok(())
    }

    async fn read_keys(&mut self, keys: &[String]) -> anyhow::Result<Vec<TargetRow>> {
        let sql = format!("{} WHERE id = ANY($1)", self.select_target());
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(keys)
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| crate::error::Error::driver(format!("reading target rows from {}", self.table), &e))?;
        Ok(rows.iter().map(Self::decode_target).collect::<Result<_, _>>()?)
    }
}

super::control::pg_control!(PgTarget);
