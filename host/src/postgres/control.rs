//! The control store in PostgreSQL: schema `ferry` (runs, checkpoints, dead
//! letters, lineage, per-table progress), written once for every
//! PostgreSQL role that holds a connection (the `users` target and the
//! many-table target alike).

use sqlx::postgres::PgConnection;

use crate::db::DbUrl;

/// A PostgreSQL role with a connection to the target: what the control
/// store needs.
pub(crate) trait PgConn: Send {
    fn conn(&mut self) -> &mut PgConnection;
    fn url(&self) -> &DbUrl;
}

/// The control schema. Its DDL is idempotent and runs under an advisory lock
/// so that concurrent first runs do not race on `CREATE … IF NOT EXISTS`.
pub(crate) const CONTROL_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.runs (
    run_id        text PRIMARY KEY,
    pipeline      text NOT NULL,
    source        text NOT NULL,
    target_table  text NOT NULL,
    plugin_sha256 text NOT NULL,
    status        text NOT NULL,
    last_key      bigint,
    batches       bigint NOT NULL DEFAULT 0,
    extracted     bigint NOT NULL DEFAULT 0,
    transformed   bigint NOT NULL DEFAULT 0,
    loaded        bigint NOT NULL DEFAULT 0,
    skipped       bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    message       text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX IF NOT EXISTS runs_pipeline ON ferry.runs (pipeline, started_at);
CREATE TABLE IF NOT EXISTS ferry.dead_letters (
    id            bigserial PRIMARY KEY,
    run_id        text NOT NULL REFERENCES ferry.runs (run_id),
    pipeline      text NOT NULL,
    source_table  text NOT NULL,
    source_key    text NOT NULL,
    source_row    jsonb NOT NULL,
    kind          text NOT NULL,
    reason        text NOT NULL,
    plugin_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, source_key)
);
ALTER TABLE ferry.dead_letters DROP CONSTRAINT IF EXISTS dead_letters_run_id_source_key_key;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_row ON ferry.dead_letters (run_id, source_table, source_key);
CREATE TABLE IF NOT EXISTS ferry.table_progress (
    run_id        text NOT NULL REFERENCES ferry.runs (run_id),
    table_name    text NOT NULL,
    target_table  text NOT NULL,
    phase         text NOT NULL DEFAULT 'copying',
    created       boolean NOT NULL DEFAULT false,
    last_key      text,
    batches       bigint NOT NULL DEFAULT 0,
    extracted     bigint NOT NULL DEFAULT 0,
    transformed   bigint NOT NULL DEFAULT 0,
    loaded        bigint NOT NULL DEFAULT 0,
    skipped       bigint NOT NULL DEFAULT 0,
    filtered      bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name)
);
CREATE TABLE IF NOT EXISTS ferry.lineage (
    id            bigserial PRIMARY KEY,
    run_id        text NOT NULL REFERENCES ferry.runs (run_id),
    table_name    text NOT NULL,
    after_key     text,
    last_key      text NOT NULL,
    keys          text,
    plugin_sha256 text NOT NULL,
    plugin_path   text NOT NULL,
    rows          bigint NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lineage_run ON ferry.lineage (run_id, table_name, id);
CREATE TABLE IF NOT EXISTS ferry.deployments (
    id              bigserial PRIMARY KEY,
    pipeline        text NOT NULL,
    source_table    text,
    path            text NOT NULL,
    sha256          text NOT NULL,
    shadow          boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'pending',
    reason          text,
    position        text,
    previous_sha256 text,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    shadow_report   text
);
CREATE INDEX IF NOT EXISTS deployments_pipeline ON ferry.deployments (pipeline, id);
"#;

/// Key of the advisory lock that serialises control-schema DDL.
pub(crate) const DDL_LOCK: i64 = 0x6665_7272_7900_0001;

/// Implements [`ControlStore`] and [`TableControl`] for a type that is
/// [`PgConn`]: the SQL is written once, here.
macro_rules! pg_control {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl $crate::control::ControlStore for $t {
            async fn ensure_control_tables(&mut self) -> anyhow::Result<()> {
                let url = $crate::postgres::control::PgConn::url(self).clone();
                let mut tx = sqlx::Connection::begin($crate::postgres::control::PgConn::conn(self)).await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind($crate::postgres::control::DDL_LOCK).execute(&mut *tx).await?;
                for statement in $crate::db::ddl_statements($crate::postgres::control::CONTROL_DDL) {
                    sqlx::query(statement).execute(&mut *tx).await.map_err(|e| {
                        $crate::error::Error::driver(format!("creating the ferry control schema in {url}"), &e)
                    })?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn latest_run(&mut self, pipeline: &str) -> anyhow::Result<Option<$crate::control::RunRecord>> {
                if !$crate::postgres::exists($crate::postgres::control::PgConn::conn(self), "ferry.runs").await? {
                    return Ok(None);
                }
                let row =
                    sqlx::query("SELECT * FROM ferry.runs WHERE pipeline = $1 ORDER BY started_at DESC, run_id DESC LIMIT 1")
                        .bind(pipeline)
                        .fetch_optional($crate::postgres::control::PgConn::conn(self))
                        .await?;
                Ok(row.as_ref().map($crate::control::run_from_row).transpose()?)
            }

            async fn insert_run(&mut self, run: &$crate::control::RunRecord) -> anyhow::Result<()> {
                sqlx::query(
                    "INSERT INTO ferry.runs (run_id, pipeline, source, target_table, plugin_sha256, status, last_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&run.run_id)
                .bind(&run.pipeline)
                .bind(&run.source)
                .bind(&run.target_table)
                .bind(&run.plugin_sha256)
                .bind(run.status.as_str())
                .bind(run.last_key)
                .execute($crate::postgres::control::PgConn::conn(self))
                .await?;
                Ok(())
            }

            async fn set_status(&mut self, run_id: &str, status: $crate::control::RunStatus, message: Option<&str>) -> anyhow::Result<()> {
                let mut tx = sqlx::Connection::begin($crate::postgres::control::PgConn::conn(self)).await?;
                sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
                sqlx::query(
                    "UPDATE ferry.runs SET status = $2, message = $3, updated_at = now(), \
                     finished_at = CASE WHEN $2 IN ('completed', 'abandoned') THEN now() ELSE NULL END WHERE run_id = $1",
                )
                .bind(run_id)
                .bind(status.as_str())
                .bind(message)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_validation(&mut self, pipeline: &str, ok: bool, summary: &str) -> anyhow::Result<()> {
                let conn = $crate::postgres::control::PgConn::conn(self);
                sqlx::raw_sql(
                    "CREATE SCHEMA IF NOT EXISTS ferry; CREATE TABLE IF NOT EXISTS ferry.validations (\
                     id bigserial PRIMARY KEY, pipeline text NOT NULL, at timestamptz NOT NULL DEFAULT now(), \
                     ok boolean NOT NULL, summary text NOT NULL)",
                )
                .execute(&mut *conn)
                .await?;
                sqlx::query("INSERT INTO ferry.validations (pipeline, ok, summary) VALUES ($1, $2, $3)")
                    .bind(pipeline)
                    .bind(ok)
                    .bind(summary)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn latest_validation(&mut self, pipeline: &str) -> anyhow::Result<Option<$crate::control::Validation>> {
                let conn = $crate::postgres::control::PgConn::conn(self);
                if !$crate::postgres::exists(&mut *conn, "ferry.validations").await? {
                    return Ok(None);
                }
                let row: Option<(String, bool, String)> = sqlx::query_as(
                    "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ok, summary \
                     FROM ferry.validations WHERE pipeline = $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(pipeline)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(at, ok, summary)| $crate::control::Validation { at, ok, summary }))
            }

            async fn dead_letters(&mut self, run_id: &str, limit: Option<usize>) -> anyhow::Result<Vec<$crate::control::DeadLetterRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, source_table, source_key, source_row::text AS source_row, kind, reason, plugin_sha256 \
                     FROM ferry.dead_letters WHERE run_id = $1 ORDER BY id LIMIT $2",
                )
                .bind(run_id)
                .bind(limit.map(|l| l as i64).unwrap_or(i64::MAX))
                .fetch_all($crate::postgres::control::PgConn::conn(self))
                .await?;
                Ok(rows.iter().map($crate::control::dead_letter_from_row).collect::<Result<_, _>>()?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::control::TableControl for $t {
            async fn table_progress(&mut self, run_id: &str) -> anyhow::Result<Vec<$crate::control::TableProgress>> {
                let rows = sqlx::query("SELECT * FROM ferry.table_progress WHERE run_id = $1 ORDER BY table_name")
                    .bind(run_id)
                    .fetch_all($crate::postgres::control::PgConn::conn(self))
                    .await?;
                rows.iter().map($crate::control::table_progress_from_row).collect()
            }

            async fn lineage(&mut self, run_id: &str) -> anyhow::Result<Vec<$crate::control::Lineage>> {
                // A control schema made by a ferry before lineage has none.
                if !$crate::postgres::exists($crate::postgres::control::PgConn::conn(self), "ferry.lineage").await? {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query("SELECT * FROM ferry.lineage WHERE run_id = $1 ORDER BY id")
                    .bind(run_id)
                    .fetch_all($crate::postgres::control::PgConn::conn(self))
                    .await?;
                rows.iter().map($crate::control::lineage_from_row).collect()
            }

            async fn start_table(&mut self, run_id: &str, table: &str, target_table: &str, created: bool) -> anyhow::Result<()> {
                sqlx::query(
                    "INSERT INTO ferry.table_progress (run_id, table_name, target_table, created) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (run_id, table_name) DO NOTHING",
                )
                .bind(run_id)
                .bind(table)
                .bind(target_table)
                .bind(created)
                .execute($crate::postgres::control::PgConn::conn(self))
                .await?;
                Ok(())
            }

            async fn set_table_phase(&mut self, run_id: &str, table: &str, phase: $crate::control::TablePhase) -> anyhow::Result<()> {
                sqlx::query("UPDATE ferry.table_progress SET phase = $3, updated_at = now() WHERE run_id = $1 AND table_name = $2")
                    .bind(run_id)
                    .bind(table)
                    .bind(phase.as_str())
                    .execute($crate::postgres::control::PgConn::conn(self))
                    .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use pg_control;
