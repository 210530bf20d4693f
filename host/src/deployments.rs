//! The deployment store: plugin versions handed to a running stream
//! (`ferry plugin deploy`), kept in the target's control schema beside the
//! stream position they were switched at.
//!
//! A deployment is a request (`pending`) until the daemon that runs the
//! pipeline decides it: `live` (switched between two target transactions;
//! `position` is the stored stream position at the switch, so the version
//! produced every change after it and the one before produced everything up
//! to it) or `refused` (with the reason; the version that was running keeps
//! running). The `live` rows, in id order, are the stream's lineage of
//! plugin versions. A shadow deployment (`--shadow`) becomes `shadow`
//! instead: it runs beside the live version on the same rows, writes
//! nothing, and its differences are kept in `shadow_report`; it ends
//! `promoted` (a live deployment of the same version) or `retired` (another
//! shadow took its place).

use serde::Serialize;

use crate::plugin::RowOutcome;

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    /// Recorded; no daemon has decided it yet.
    Pending,
    /// Switched to: the table's plugin from `position` on.
    Live,
    /// Not taken (did not load, instantiate or match the contract).
    Refused,
    /// Running beside the live version, writing nothing.
    Shadow,
    /// A shadow that went live (through a later deployment).
    Promoted,
    /// A shadow that another shadow replaced.
    Retired,
}

impl DeployState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Pending => "pending",
            DeployState::Live => "live",
            DeployState::Refused => "refused",
            DeployState::Shadow => "shadow",
            DeployState::Promoted => "promoted",
            DeployState::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<DeployState> {
        Ok(match text {
            "pending" => DeployState::Pending,
            "live" => DeployState::Live,
            "refused" => DeployState::Refused,
            "shadow" => DeployState::Shadow,
            "promoted" => DeployState::Promoted,
            "retired" => DeployState::Retired,
            other => anyhow::bail!("unknown deployment state {other:?} in the control store"),
        })
    }
}

/// One deployment of a plugin version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub pipeline: String,
    /// The source table whose plugin it replaces; `None`: every table of
    /// the pipeline that has a plugin.
    pub table: Option<String>,
    /// The component, as an absolute path the daemon reads.
    pub path: String,
    /// The SHA-256 of the component when it was deployed: the daemon takes
    /// exactly that version (a file changed since is refused).
    pub sha256: String,
    /// Run beside the live version instead of replacing it.
    pub shadow: bool,
    pub state: DeployState,
    /// Why it was refused.
    pub reason: Option<String>,
    /// The stream position stored when it went live (`None`: before any
    /// change was applied).
    pub position: Option<String>,
    /// The version it replaced.
    pub previous_sha256: Option<String>,
    pub requested_at: String,
    pub decided_at: Option<String>,
    /// A shadow's differences from the live version so far.
    pub shadow_report: Option<ShadowReport>,
}

/// How a version's output differs from the live version's on the same rows
/// (a shadow deployment, `ferry plugin diff`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ShadowReport {
    /// Rows both versions transformed.
    pub rows: u64,
    /// Rows whose outcome differs (another value, row, table, or a
    /// rejection on one side).
    pub differing: u64,
    /// Per `table.column` (or `outcome` when the rows' shapes differ): how
    /// many rows differ there, with a few examples.
    pub fields: std::collections::BTreeMap<String, FieldDiff>,
}

/// Differences in one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FieldDiff {
    pub count: u64,
    pub examples: Vec<DiffExample>,
}

/// One row where the versions differ: its source key and both values.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DiffExample {
    pub key: String,
    pub live: String,
    pub shadow: String,
}

/// The decision about a pending deployment.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub state: DeployState,
    pub reason: Option<&'a str>,
    pub position: Option<String>,
    pub previous_sha256: Option<&'a str>,
}

/// Role: the control store's deployments. Every engine that holds a
/// pipeline's control state implements it in its own dialect.
///
/// Contract: `request_deployment` commits a `pending` row and returns its
/// id; `decide_deployment` moves a `pending` row to its decision exactly
/// once (a row already decided is left as it is, and `false` says so);
/// `deployments` lists a pipeline's rows in id order, so the last `live`
/// row of a table is its current version.
#[async_trait::async_trait]
pub trait DeploymentStore: Send {
    async fn request_deployment(
        &mut self,
        pipeline: &str,
        table: Option<&str>,
        path: &str,
        sha256: &str,
        shadow: bool,
    ) -> anyhow::Result<i64>;
    async fn deployments(&mut self, pipeline: &str) -> anyhow::Result<Vec<Deployment>>;
    async fn decide_deployment(&mut self, id: i64, decision: &Decision<'_>) -> anyhow::Result<bool>;
    /// Ends a running shadow (`promoted` or `retired`); `false` if it was
    /// not one.
    async fn end_shadow(&mut self, id: i64, state: DeployState) -> anyhow::Result<bool>;
    /// Stores a running shadow's differences so far.
    async fn report_shadow(&mut self, id: i64, report: &ShadowReport) -> anyhow::Result<()>;
}

/// Examples kept per differing field.
const EXAMPLES: usize = 5;

/// Characters of a value kept in an example.
const EXAMPLE_CHARS: usize = 200;

impl ShadowReport {
    /// Adds one row's comparison: what the `live` version made of it and
    /// what the other one (`shadow`) did; `true` when both agree. `key`
    /// names the source row, `columns` an output table's column names.
    pub fn add(
        &mut self,
        key: impl FnOnce() -> String,
        live: &RowOutcome,
        shadow: &RowOutcome,
        columns: &impl Fn(&str) -> Option<Vec<String>>,
    ) -> bool {
        self.rows += 1;
        if live == shadow {
            return true;
        }
        self.differing += 1;
        let key = key();
        let mut note = |field: String, live: String, shadow: String| {
            let diff = self.fields.entry(field).or_default();
            diff.count += 1;
            if diff.examples.len() < EXAMPLES {
                let cut = |s: String| s.chars().take(EXAMPLE_CHARS).collect();
                diff.examples.push(DiffExample { key: key.clone(), live: cut(live), shadow: cut(shadow) });
            }
        };
        match (live, shadow) {
            (RowOutcome::Rows(a), RowOutcome::Rows(b))
                if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.len() == y.1.len()) =>
            {
                // The same rows into the same tables: which fields differ.
                let mut fields = std::collections::BTreeMap::new();
                for ((table, x), (_, y)) in a.iter().zip(b) {
                    let names = columns(table);
                    for (i, (vx, vy)) in x.iter().zip(y).enumerate() {
                        if vx != vy {
                            let column =
                                names.as_ref().and_then(|n| n.get(i).cloned()).unwrap_or_else(|| i.to_string());
                            fields
                                .entry(format!("{table}.{column}"))
                                .or_insert_with(|| (value_text(vx), value_text(vy)));
                        }
                    }
                }
                for (field, (x, y)) in fields {
                    note(field, x, y);
                }
            }
            _ => note("outcome".into(), outcome_text(live), outcome_text(shadow)),
        }
        false
    }
}

fn value_text(value: &crate::value::Value) -> String {
    crate::value::encode_pg_text(value).unwrap_or_else(|| "NULL".into())
}

/// A row's outcome in a few words, for an example.
fn outcome_text(outcome: &RowOutcome) -> String {
    match outcome {
        RowOutcome::Rows(rows) if rows.is_empty() => "filtered (no row)".into(),
        RowOutcome::Rows(rows) => {
            let tables: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
            format!("{} rows ({})", rows.len(), tables.join(", "))
        }
        RowOutcome::Rejected(reason) => format!("rejected: {reason}"),
        RowOutcome::Trapped(reason) => format!("trapped: {reason}"),
        RowOutcome::Fatal(reason) => format!("fatal: {reason}"),
    }
}

/// Implements [`DeploymentStore`] for an engine's control-store type; the
/// SQL is written once, here, with the engine's dialect given: the table's
/// name, the expression of the current time, a time column read as text,
/// and a query counting the table (0 before the control schema exists).
macro_rules! deployment_store {
    ($t:ty, conn = $conn:path, table = $table:literal, now = $now:literal, time_text = $time:literal, exists = $exists:literal) => {
        #[async_trait::async_trait]
        impl $crate::deployments::DeploymentStore for $t {
            async fn request_deployment(
                &mut self,
                pipeline: &str,
                table: Option<&str>,
                path: &str,
                sha256: &str,
                shadow: bool,
            ) -> anyhow::Result<i64> {
                Ok(sqlx::query_scalar(concat!(
                    "INSERT INTO ", $table, " (pipeline, source_table, path, sha256, shadow) ",
                    "VALUES ($1, $2, $3, $4, $5) RETURNING id"
                ))
                .bind(pipeline)
                .bind(table)
                .bind(path)
                .bind(sha256)
                .bind(shadow)
                .fetch_one($conn(self))
                .await?)
            }

            async fn deployments(&mut self, pipeline: &str) -> anyhow::Result<Vec<$crate::deployments::Deployment>> {
                let exists: i64 = sqlx::query_scalar($exists).fetch_one($conn(self)).await?;
                if exists == 0 {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(concat!(
                    "SELECT id, pipeline, source_table, path, sha256, shadow, state, reason, position, previous_sha256, ",
                    $time, "(requested_at) AS requested_at, ", $time, "(decided_at) AS decided_at, shadow_report ",
                    "FROM ", $table, " WHERE pipeline = $1 ORDER BY id"
                ))
                .bind(pipeline)
                .fetch_all($conn(self))
                .await?;
                rows.iter()
                    .map(|row| {
                        use sqlx::Row;
                        let report: Option<String> = row.try_get("shadow_report")?;
                        Ok($crate::deployments::Deployment {
                            id: row.try_get("id")?,
                            pipeline: row.try_get("pipeline")?,
                            table: row.try_get("source_table")?,
                            path: row.try_get("path")?,
                            sha256: row.try_get("sha256")?,
                            shadow: row.try_get("shadow")?,
                            state: $crate::deployments::DeployState::parse(row.try_get("state")?)?,
                            reason: row.try_get("reason")?,
                            position: row.try_get("position")?,
                            previous_sha256: row.try_get("previous_sha256")?,
                            requested_at: row.try_get("requested_at")?,
                            decided_at: row.try_get("decided_at")?,
                            shadow_report: report.as_deref().map(serde_json::from_str).transpose()?,
                        })
                    })
                    .collect()
            }

            async fn decide_deployment(
                &mut self,
                id: i64,
                decision: &$crate::deployments::Decision<'_>,
            ) -> anyhow::Result<bool> {
                let done = sqlx::query(concat!(
                    "UPDATE ", $table, " SET state = $2, reason = $3, position = $4, previous_sha256 = $5, ",
                    "decided_at = ", $now, " WHERE id = $1 AND state = 'pending'"
                ))
                .bind(id)
                .bind(decision.state.as_str())
                .bind(decision.reason)
                .bind(&decision.position)
                .bind(decision.previous_sha256)
                .execute($conn(self))
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn end_shadow(&mut self, id: i64, state: $crate::deployments::DeployState) -> anyhow::Result<bool> {
                let done = sqlx::query(concat!(
                    "UPDATE ", $table, " SET state = $2 WHERE id = $1 AND state = 'shadow'"
                ))
                .bind(id)
                .bind(state.as_str())
                .execute($conn(self))
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn report_shadow(
                &mut self,
                id: i64,
                report: &$crate::deployments::ShadowReport,
            ) -> anyhow::Result<()> {
                sqlx::query(concat!("UPDATE ", $table, " SET shadow_report = $2 WHERE id = $1"))
                    .bind(id)
                    .bind(serde_json::to_string(report)?)
                    .execute($conn(self))
                    .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use deployment_store;
