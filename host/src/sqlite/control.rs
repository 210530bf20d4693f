//! The control store in SQLite: the `ferry_*` tables (runs, checkpoints,
//! dead letters, lineage, per-table progress), written once for every SQLite
//! role that holds a connection.

use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

/// A SQLite role with a connection to the target.
pub(crate) trait SqliteConn: Send {
    fn conn(&mut self) -> &mut SqliteConnection;
}

pub(crate) const CONTROL_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS ferry_runs (
    run_id        TEXT PRIMARY KEY,
    pipeline      TEXT NOT NULL,
    source        TEXT NOT NULL,
    target_table  TEXT NOT NULL,
    plugin_sha256 TEXT NOT NULL,
    status        TEXT NOT NULL,
    last_key      INTEGER,
    batches       INTEGER NOT NULL DEFAULT 0,
    extracted     INTEGER NOT NULL DEFAULT 0,
    transformed   INTEGER NOT NULL DEFAULT 0,
    loaded        INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    message       TEXT,
    started_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    finished_at   TEXT
);
CREATE INDEX IF NOT EXISTS ferry_runs_pipeline ON ferry_runs (pipeline, started_at);
CREATE TABLE IF NOT EXISTS ferry_dead_letters (
    id            INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES ferry_runs (run_id),
    pipeline      TEXT NOT NULL,
    source_table  TEXT NOT NULL,
    source_key    TEXT NOT NULL,
    source_row    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    plugin_sha256 TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    UNIQUE (run_id, source_table, source_key)
);
CREATE TABLE IF NOT EXISTS ferry_table_progress (
    run_id        TEXT NOT NULL REFERENCES ferry_runs (run_id),
    table_name    TEXT NOT NULL,
    target_table  TEXT NOT NULL,
    phase         TEXT NOT NULL DEFAULT 'copying',
    created       INTEGER NOT NULL DEFAULT 0,
    last_key      TEXT,
    batches       INTEGER NOT NULL DEFAULT 0,
    extracted     INTEGER NOT NULL DEFAULT 0,
    transformed   INTEGER NOT NULL DEFAULT 0,
    loaded        INTEGER NOT NULL DEFAULT 0,
    skipped       INTEGER NOT NULL DEFAULT 0,
    filtered      INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (run_id, table_name)
);
CREATE TABLE IF NOT EXISTS ferry_lineage (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT NOT NULL REFERENCES ferry_runs (run_id),
    table_name    TEXT NOT NULL,
    after_key     TEXT,
    last_key      TEXT NOT NULL,
    keys          TEXT,
    plugin_sha256 TEXT NOT NULL,
    plugin_path   TEXT NOT NULL,
    rows          INTEGER NOT NULL,
    committed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS ferry_lineage_run ON ferry_lineage (run_id, table_name, id);
CREATE TABLE IF NOT EXISTS ferry_deployments (
    id              INTEGER PRIMARY KEY,
    pipeline        TEXT NOT NULL,
    source_table    TEXT,
    path            TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    shadow          INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'pending',
    reason          TEXT,
    position        TEXT,
    previous_sha256 TEXT,
    requested_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    decided_at      TEXT,
    shadow_report   TEXT
);
"#;

/// Dead letters are unique per (run, table, key) since runs copy many
/// tables; files made before that had (run, key). SQLite cannot drop a
/// constraint, so the table is rebuilt once, in one transaction.
pub(crate) async fn upgrade_dead_letters(conn: &mut SqliteConnection) -> anyhow::Result<()> {
    let sql: Option<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ferry_dead_letters'")
            .fetch_optional(&mut *conn)
            .await?;
    if !sql.is_some_and(|s| s.contains("UNIQUE (run_id, source_key)")) {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    sqlx::query("ALTER TABLE ferry_dead_letters RENAME TO ferry_dead_letters_old").execute(&mut *tx).await?;
    let create = CONTROL_DDL
        .split(";\n")
        .find(|s| s.contains("CREATE TABLE IF NOT EXISTS ferry_dead_letters"))
        .expect("the control DDL creates ferry_dead_letters");
    sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO ferry_dead_letters SELECT * FROM ferry_dead_letters_old").execute(&mut *tx).await?;
    sqlx::query("DROP TABLE ferry_dead_letters_old").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Implements [`ControlStore`] and [`TableControl`] for a type that is
/// [`SqliteConn`]: the SQL is written once, here.
macro_rules! sqlite_control {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl $crate::control::ControlStore for $t {
            async fn ensure_control_tables(&mut self) -> anyhow::Result<()> {
                for statement in $crate::db::ddl_statements($crate::sqlite::control::CONTROL_DDL) {
                    sqlx::query(statement).execute($crate::sqlite::control::SqliteConn::conn(self)).await?;
                }
                $crate::sqlite::control::upgrade_dead_letters($crate::sqlite::control::SqliteConn::conn(self)).await
            }

            async fn latest_run(&mut self, pipeline: &str) -> anyhow::Result<Option<$crate::control::RunRecord>> {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ferry_runs'")
                        .fetch_optional($crate::sqlite::control::SqliteConn::conn(self))
                        .await?;
                if exists.is_none() {
                    return Ok(None);
                }
                let row =
                    sqlx::query("SELECT * FROM ferry_runs WHERE pipeline = ?1 ORDER BY started_at DESC, rowid DESC LIMIT 1")
                        .bind(pipeline)
                        .fetch_optional($crate::sqlite::control::SqliteConn::conn(self))
                        .await?;
                Ok(row.as_ref().map($crate::control::run_from_row).transpose()?)
            }

            async fn insert_run(&mut self, run: &$crate::control::RunRecord) -> anyhow::Result<()> {
                sqlx::query(
                    "INSERT INTO ferry_runs (run_id, pipeline, source, target_table, plugin_sha256, status, last_key) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .bind(&run.run_id)
                .bind(&run.pipeline)
                .bind(&run.source)
                .bind(&run.target_table)
                .bind(&run.plugin_sha256)
                .bind(run.status.as_str())
                .bind(run.last_key)
                .execute($crate::sqlite::control::SqliteConn::conn(self))
                .await?;
                Ok(())
            }

            async fn set_status(&mut self, run_id: &str, status: $crate::control::RunStatus, message: Option<&str>) -> anyhow::Result<()> {
                sqlx::query(
                    "UPDATE ferry_runs SET status = ?2, message = ?3, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), \
                     finished_at = CASE WHEN ?2 IN ('completed', 'abandoned') THEN strftime('%Y-%m-%d %H:%M:%f', 'now') END \
                     WHERE run_id = ?1",
                )
                .bind(run_id)
                .bind(status.as_str())
                .bind(message)
                .execute($crate::sqlite::control::SqliteConn::conn(self))
                .await?;
                Ok(())
            }

            async fn record_validation(&mut self, pipeline: &str, ok: bool, summary: &str) -> anyhow::Result<()> {
                let conn = $crate::sqlite::control::SqliteConn::conn(self);
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS ferry_validations (id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, \
                     at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')), ok INTEGER NOT NULL, \
                     summary TEXT NOT NULL)",
                )
                .execute(&mut *conn)
                .await?;
                sqlx::query("INSERT INTO ferry_validations (pipeline, ok, summary) VALUES (?1, ?2, ?3)")
                    .bind(pipeline)
                    .bind(ok)
                    .bind(summary)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn latest_validation(&mut self, pipeline: &str) -> anyhow::Result<Option<$crate::control::Validation>> {
                let conn = $crate::sqlite::control::SqliteConn::conn(self);
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ferry_validations'")
                        .fetch_optional(&mut *conn)
                        .await?;
                if exists.is_none() {
                    return Ok(None);
                }
                let row: Option<(String, bool, String)> = sqlx::query_as(
                    "SELECT at, ok, summary FROM ferry_validations WHERE pipeline = ?1 ORDER BY id DESC LIMIT 1",
                )
                .bind(pipeline)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(at, ok, summary)| $crate::control::Validation { at, ok, summary }))
            }

            async fn dead_letters(&mut self, run_id: &str, limit: Option<usize>) -> anyhow::Result<Vec<$crate::control::DeadLetterRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, source_table, source_key, source_row, kind, reason, plugin_sha256 FROM ferry_dead_letters \
                     WHERE run_id = ?1 ORDER BY id LIMIT ?2",
                )
                .bind(run_id)
                .bind(limit.map(|l| l as i64).unwrap_or(-1))
                .fetch_all($crate::sqlite::control::SqliteConn::conn(self))
                .await?;
                Ok(rows.iter().map($crate::control::dead_letter_from_row).collect::<Result<_, _>>()?)
            }
        }

        #[async_trait::async_trait]
        impl $crate::control::TableControl for $t {
            async fn table_progress(&mut self, run_id: &str) -> anyhow::Result<Vec<$crate::control::TableProgress>> {
                let rows = sqlx::query("SELECT * FROM ferry_table_progress WHERE run_id = ?1 ORDER BY table_name")
                    .bind(run_id)
                    .fetch_all($crate::sqlite::control::SqliteConn::conn(self))
                    .await?;
                rows.iter().map($crate::control::table_progress_from_row).collect()
            }

            async fn lineage(&mut self, run_id: &str) -> anyhow::Result<Vec<$crate::control::Lineage>> {
                // A control schema made by a ferry before lineage has none.
                let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_lineage'")
                    .fetch_one($crate::sqlite::control::SqliteConn::conn(self))
                    .await?;
                if exists == 0 {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query("SELECT * FROM ferry_lineage WHERE run_id = ?1 ORDER BY id")
                    .bind(run_id)
                    .fetch_all($crate::sqlite::control::SqliteConn::conn(self))
                    .await?;
                rows.iter().map($crate::control::lineage_from_row).collect()
            }

            async fn start_table(&mut self, run_id: &str, table: &str, target_table: &str, created: bool) -> anyhow::Result<()> {
                sqlx::query(
                    "INSERT INTO ferry_table_progress (run_id, table_name, target_table, created) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (run_id, table_name) DO NOTHING",
                )
                .bind(run_id)
                .bind(table)
                .bind(target_table)
                .bind(created)
                .execute($crate::sqlite::control::SqliteConn::conn(self))
                .await?;
                Ok(())
            }

            async fn set_table_phase(&mut self, run_id: &str, table: &str, phase: $crate::control::TablePhase) -> anyhow::Result<()> {
                sqlx::query(
                    "UPDATE ferry_table_progress SET phase = ?3, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
                     WHERE run_id = ?1 AND table_name = ?2",
                )
                .bind(run_id)
                .bind(table)
                .bind(phase.as_str())
                .execute($crate::sqlite::control::SqliteConn::conn(self))
                .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use sqlite_control;
