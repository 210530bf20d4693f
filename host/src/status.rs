//! `ferry status`: where a pipeline stands — the last migration run, the
//! change stream's phase and position, and what its replication slot still
//! holds on the source.

use serde::Serialize;

use crate::cdc::apply::StreamCheckpoint;
use crate::control::RunRecord;
use crate::db::Engine;
use crate::settings::Settings;

pub use crate::replication::SlotStatus;

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub pipeline: String,
    /// `not started`, `migrated`, `snapshot`, `streaming`…
    pub phase: String,
    pub migrate: Option<RunRecord>,
    /// Each table of the last run.
    pub tables: Vec<crate::control::TableProgress>,
    pub stream: Option<StreamState>,
    pub slots: Vec<SlotStatus>,
    /// How far behind the source the target is, in seconds: 0 when the slot
    /// holds nothing unapplied, else the age of the newest applied commit.
    pub lag_seconds: Option<f64>,
    /// Plugin versions deployed into the stream
    /// (`ferry plugin deploy`), oldest first; the last `live` one of a table
    /// is the version running it.
    pub deployments: Vec<crate::deployments::Deployment>,
    /// Which plugin version produced which rows of
    /// the last run, per table, in commit order (its lineage, summarised).
    pub versions: Vec<VersionSpan>,
    /// A parallel run (`[reverse]`): who owns the writes, the reverse
    /// stream, open conflicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelState>,
}

/// What `ferry status` shows of a parallel run.
#[derive(Debug, Clone, Serialize)]
pub struct ParallelState {
    /// `old` until `ferry cutover`, `new` after it.
    pub owner: String,
    /// The reverse stream, as the old database records it.
    pub reverse: Option<StreamState>,
    pub open_conflicts: u64,
}

/// What `ferry status` shows of a change stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamState {
    pub checkpoint: StreamCheckpoint,
    /// Seconds since the newest applied source transaction committed on the
    /// source (the lag, while the source has more).
    pub source_commit_age_seconds: Option<f64>,
    /// Changes applied per second since the stream first applied anything.
    pub changes_per_second: f64,
    pub applied: u64,
    pub dead_lettered: u64,
    pub plugin_sha256: Option<String>,
    /// Seconds since the last commit of the stream into the target.
    pub seconds_since_update: f64,
    /// Why the stream is paused on a schema change, and how to resolve it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Each source table's columns as the stream last stored them (the
    /// schema version its position has).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub table_columns: Vec<(String, Vec<String>)>,
    /// Whether the source has the DDL capture (`[source] capture_ddl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddl_capture: Option<bool>,
    /// Tables copied again inside the stream (`ferry resync`), asked or done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resyncs: Vec<crate::sink::Resync>,
}

fn stream_state(s: crate::sink::StreamStatus) -> StreamState {
    StreamState {
        checkpoint: StreamCheckpoint { position: s.position, streaming: s.position.is_some() },
        source_commit_age_seconds: s.source_commit_age_seconds,
        changes_per_second: s.active_seconds.filter(|a| *a > 0.0).map_or(0.0, |a| s.applied as f64 / a),
        applied: s.applied,
        dead_lettered: s.dead_lettered,
        plugin_sha256: s.plugin_sha256,
        seconds_since_update: s.seconds_since_update,
        paused: s.paused,
        table_columns: Vec::new(),
        ddl_capture: None,
        resyncs: Vec::new(),
    }
}

/// The parallel run as both databases record it.
async fn parallel(settings: &Settings, new: &mut dyn crate::engines::RowTarget) -> anyhow::Result<ParallelState> {
    let (back, mut old) = crate::cdc::reverse::old_side(settings).await?;
    let owner = new.parallel_owner(&settings.pipeline).await?.map_or_else(|| "old".to_string(), |(o, _)| o);
    let open = new.conflicts(&settings.pipeline, true).await?.len() + old.conflicts(&back.pipeline, true).await?.len();
    Ok(ParallelState {
        owner,
        reverse: old.stream_status(&back.pipeline).await?.map(stream_state),
        open_conflicts: open as u64,
    })
}

/// Consecutive batches of one table committed by one plugin version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionSpan {
    pub table: String,
    pub plugin_sha256: String,
    /// Keys after which the span starts (`None`: the table's first key)
    /// and its last key; a replay or a reprocess names its keys instead
    /// (the first five, and how many).
    pub after_key: Option<String>,
    pub last_key: String,
    pub replay: bool,
    pub batches: u64,
    pub rows: u64,
}

/// Summarises a run's lineage: consecutive migration batches of a table by
/// the same version merge into one span; each replay is its own.
pub fn version_spans(lineage: &[crate::control::Lineage]) -> Vec<VersionSpan> {
    let mut spans: Vec<VersionSpan> = Vec::new();
    for l in lineage {
        let replay = l.keys.is_some();
        match spans.iter_mut().rev().find(|s| s.table == l.table) {
            Some(s) if !replay && !s.replay && s.plugin_sha256 == l.plugin_sha256 => {
                s.last_key = l.last.label();
                s.batches += 1;
                s.rows += l.rows;
                continue;
            }
            _ => {}
        }
        spans.push(VersionSpan {
            table: l.table.clone(),
            plugin_sha256: l.plugin_sha256.clone(),
            after_key: if replay { None } else { l.after.as_ref().map(|k| k.label()) },
            last_key: match &l.keys {
                Some(keys) => {
                    let shown: Vec<String> = keys.iter().take(5).map(|k| k.label()).collect();
                    match keys.len() {
                        n if n > shown.len() => format!("{}, … ({n} keys)", shown.join(", ")),
                        _ => shown.join(", "),
                    }
                }
                None => l.last.label(),
            },
            replay,
            batches: 1,
            rows: l.rows,
        });
    }
    spans
}

/// Replication slots of the source (PostgreSQL), `only` one when given.
pub async fn source_slots(settings: &Settings, only: Option<&str>) -> anyhow::Result<Vec<SlotStatus>> {
    if settings.source.url.engine() != Engine::Postgres {
        return Ok(Vec::new());
    }
    crate::engines::open_replication_source(&settings.source.url).await?.slots(only).await
}

/// Whether the running stream of `slot` confirms the source's WAL position
/// of now within two acknowledgement intervals.
async fn caught_up(source: &mut dyn crate::replication::ReplicationSource, slot: &str) -> bool {
    let Ok(wal) = source.wal_position().await else { return false };
    let within = crate::postgres::replication::FEEDBACK_INTERVAL * 2;
    matches!(crate::replication::drained(source, slot, wal, within).await, Ok(Ok(())))
}

pub async fn status(settings: &Settings, slot: &str) -> anyhow::Result<StatusReport> {
    let mut target = crate::engines::open_row_target(settings).await?;
    let migrate = target.latest_run(&settings.pipeline).await?;
    let (tables, lineage) = match &migrate {
        Some(run) => (target.table_progress(&run.run_id).await?, target.lineage(&run.run_id).await?),
        None => (Vec::new(), Vec::new()),
    };
    // One connection to the source (PostgreSQL) for its side of the stream.
    let mut source = match settings.source.url.engine() {
        Engine::Postgres => crate::engines::open_replication_source(&settings.source.url).await.ok(),
        _ => None,
    };
    let mut stream = target.stream_status(&settings.pipeline).await?.map(stream_state);
    if let Some(stream) = stream.as_mut() {
        let versions = target.stream_versions(&settings.pipeline).await?;
        stream.table_columns =
            versions.into_iter().map(|(t, v)| (t, v.names().into_iter().map(String::from).collect())).collect();
        stream.resyncs = target.resyncs(&settings.pipeline).await?;
        if let Some(source) = source.as_mut() {
            stream.ddl_capture = source.ddl_capture().await.ok();
        }
    }
    let deployments = target.deployments(&settings.pipeline).await?;
    let slots = match source.as_mut() {
        Some(source) => source.slots(Some(slot)).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let phase = match (&stream, &migrate) {
        (Some(s), _) if s.paused.is_some() => "paused".to_string(),
        (Some(s), _) if s.checkpoint.streaming => "streaming".to_string(),
        (_, Some(run)) => format!("migrate run {}", run.status.as_str()),
        (_, None) => "not started".to_string(),
    };
    // WAL the stream has yet to confirm may hold nothing for it (an idle
    // source still writes WAL): caught up if it confirms what the source
    // has now within two acknowledgements, as the cutover's lag gate
    // judges. Else the lag is the time since its last applied commit.
    let caught = match (slots.first(), source.as_mut()) {
        (Some(slot), Some(source)) if slot.active && slot.lag_bytes > 0 && stream.is_some() => {
            caught_up(source.as_mut(), &slot.name).await
        }
        _ => false,
    };
    let lag_seconds = match (slots.first(), &stream) {
        (Some(slot), _) if slot.lag_bytes <= 0 => Some(0.0),
        (Some(_), Some(_)) if caught => Some(0.0),
        (Some(_), Some(s)) => s.source_commit_age_seconds,
        _ => None,
    };
    let parallel = match &settings.reverse {
        None => None,
        Some(_) => Some(parallel(settings, target.as_mut()).await?),
    };
    Ok(StatusReport {
        parallel,
        pipeline: settings.pipeline.clone(),
        phase,
        migrate,
        tables,
        stream,
        slots,
        lag_seconds,
        deployments,
        versions: version_spans(&lineage),
    })
}
