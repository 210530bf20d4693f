//! `ferry sync`: PostgreSQL logical replication (`pgoutput`) into the target
//! through the plugin — an initial load, then the change stream.
//!
//! First run: a publication for the source table and a logical slot are
//! created; the slot's exported snapshot is imported by the initial load,
//! which is chunked by key range and checkpointed per chunk; then the stream
//! starts at the slot's consistent point. No gap, no overlap.
//!
//! After a crash during the initial load the snapshot is gone: the remaining
//! chunks are read in a fresh snapshot and the stream is then replayed from
//! the slot's position, which was never advanced; replaying every change
//! since the slot's consistent point over rows loaded later converges to the
//! source (upserts and deletes are idempotent per key, applied in commit
//! order). After a crash while streaming, the stream resumes at the slot's
//! confirmed position, and transactions at or before the target's stored
//! position are skipped.
//!
//! The transport is the `pgwire-replication` crate (a maintained pgwire
//! logical-replication client with explicit LSN feedback); decoding is
//! `super::pgoutput`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use serde::Serialize;

use super::apply::ApplyReport;
use super::pgoutput::{self, Message, Relations};
use super::position::Position;
use crate::db::Engine;
use crate::engines;
use crate::error::Error;
use crate::settings::Settings;

/// How `ferry sync` runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub slot: String,
    pub publication: String,
    /// Rows per page of the initial load (one target transaction each;
    /// `None`: `migrate.batch_size`).
    pub chunk_rows: Option<usize>,
    /// Stop after this long without a change (`None`: until signalled).
    pub idle_exit: Option<Duration>,
    /// Load the tables before streaming. The reverse stream of a parallel
    /// run does not: the old database already holds every row, and its
    /// stream starts where its slot is created.
    pub initial_load: bool,
    /// A parallel run's loop prevention (`None` outside one).
    pub origins: Option<Origins>,
    /// Conflict detection, on the parallel run's direction that yields
    /// (`None`: this direction's changes always apply).
    pub watch: Option<Watch>,
}

/// Conflict detection for the direction of a parallel run whose changes
/// yield to the target's own application.
///
/// The opposite stream stores, with every transaction it applies in this
/// stream's source, the newest target commit it has applied so far
/// (`ferry.change_checkpoints.source_commit_at`); published with the
/// pipeline's tables, those updates arrive here in commit order, so each
/// change read carries how much of the target its writer had seen. A
/// target row its own application (no replication origin) committed after
/// that was written concurrently: a conflict (`track_commit_timestamp`
/// gives each row's last commit time and origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The opposite stream's pipeline (its checkpoint row).
    pub pipeline: String,
    /// The newest target commit (Unix µs) the source had seen.
    pub seen_until: i64,
}

impl Watch {
    /// The checkpoints table (published for conflict detection only).
    pub fn is_checkpoints(relation: &pgoutput::Relation) -> bool {
        relation.namespace == "ferry" && relation.name == "change_checkpoints"
    }

    /// A new version of a checkpoint row: the watched stream's moves
    /// `seen_until` forward.
    pub fn observe(&mut self, relation: &pgoutput::Relation, tuple: &[pgoutput::Datum]) {
        use crate::value::{Kind, Value};
        let column = |name: &str| relation.columns.iter().position(|c| c.name == name).and_then(|i| tuple.get(i));
        if let (Some(pgoutput::Datum::Text(pipeline)), Some(pgoutput::Datum::Text(at))) =
            (column("pipeline"), column("source_commit_at"))
            && *pipeline == self.pipeline
            && let Ok(Value::TimestampTz(micros)) = crate::value::decode_pg_text(&Kind::TimestampTz, "timestamptz", at)
        {
            self.seen_until = self.seen_until.max(micros);
        }
    }
}

/// The replication origins of a parallel run (`[reverse]`): each direction
/// marks the transactions it applies with its own origin, and drops the
/// transactions the other direction applied from what it reads, so no
/// change is sent back where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins {
    /// The origin this stream's apply connection sets
    /// (`pg_replication_origin_session_setup`).
    pub own: String,
    /// The other direction's origin: its transactions are echoes here.
    pub skip: String,
    /// The other direction's pipeline.
    pub opposite: String,
    /// This stream's target: `"new"` (forward) or `"old"` (reverse). Its
    /// changes yield to the target's own application while that side owns
    /// the writes (the old side until `ferry cutover`).
    pub side: &'static str,
    /// Detect conflicts (`[reverse] detect_conflicts`).
    pub detect: bool,
}

impl Origins {
    /// The origin of the stream of `pipeline`: `ferry:<pipeline>`.
    pub fn of(pipeline: &str) -> String {
        format!("ferry:{pipeline}")
    }
}

/// What `ferry sync` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Times the stream was re-established after a failure.
    pub reconnects: u64,
    pub snapshot_rows: u64,
    pub snapshot_chunks: u64,
    /// Updates completed by reading the row from the source (an unchanged
    /// TOASTed value the change did not carry).
    pub toast_rereads: u64,
    /// Transactions read from the source that the opposite stream of the
    /// parallel run applied there (their origin is its own), and their
    /// changes: dropped, never sent back.
    pub echo_transactions: u64,
    pub echo_changes: u64,
    pub stream: ApplyReport,
}

/// Runs the initial load (if not done) and then streams the changes of the
/// pipeline's tables.
pub async fn sync(settings: &Settings, options: &SyncOptions, stop: Arc<AtomicBool>) -> anyhow::Result<SyncReport> {
    if settings.source.url.engine() != Engine::Postgres {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            path: "source.url".into(),
            message: format!(
                "ferry sync reads PostgreSQL logical replication; the source {} is not PostgreSQL \
                 (use ferry migrate, or ferry apply for a Debezium stream)",
                settings.source.url
            ),
        });
    }
    let mut report = super::tables::sync(settings, &settings.tables, options, stop).await?;
    // One counter, said the same way as `ferry apply` says it.
    report.stream.toast_rereads = report.toast_rereads;
    Ok(report)
}

/// Makes sure the source can stream `tables` (decodes logical changes, has
/// the publication); whether the slot exists.
pub(crate) async fn prepare_source(
    settings: &Settings,
    options: &SyncOptions,
    tables: &[crate::db::TableName],
) -> anyhow::Result<(Box<dyn crate::replication::ReplicationSource>, bool)> {
    let mut source = engines::open_replication_source(&settings.source.url).await?;
    source.check_logical().await?;
    source.ensure_publication(&options.publication, tables).await?;
    let has_slot = source.slot_exists(&options.slot).await?;
    Ok((source, has_slot))
}

/// What this pipeline's replication connection streams.
fn stream_of(options: &SyncOptions, applied: Option<Position>) -> crate::postgres::replication::Stream<'_> {
    crate::postgres::replication::Stream {
        slot: &options.slot,
        publication: &options.publication,
        applied: applied.map_or(0, |p| p.commit),
    }
}

/// A gated replication connection (nothing streams until `start`).
pub(crate) async fn open_gated(
    settings: &Settings,
    options: &SyncOptions,
    applied: Option<Position>,
) -> anyhow::Result<ReplicationClient> {
    crate::postgres::replication::open_gated(&settings.source.url, &stream_of(options, applied)).await
}

/// Creates the slot on a gated replication connection: the name of its
/// exported snapshot, valid while `client` stays open and unstarted.
pub(crate) async fn create_slot(client: &mut ReplicationClient, options: &SyncOptions) -> anyhow::Result<String> {
    crate::postgres::replication::create_slot(client, &options.slot).await
}

/// One kind of pipeline's side of the replication loop: what becomes of
/// a decoded message, and how a group of whole transactions is applied.
#[async_trait::async_trait]
pub(crate) trait Applier: Send {
    type Item: Send;
    /// Decodes one message's changes, numbered `seq` after the transaction
    /// `commit` (source transaction id `xid`), into `out` — except those at
    /// or before the target's stored position (counted as replayed).
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &mut self,
        relations: &Relations,
        message: Message,
        commit: u64,
        xid: u32,
        seq: &mut u32,
        out: &mut Vec<Self::Item>,
    ) -> anyhow::Result<()>;
    /// Applies `items` (whole transactions) in one target transaction and
    /// empties it; `false`: the plugin said `fatal` (nothing applied).
    async fn apply(&mut self, items: &mut Vec<Self::Item>, source_commit_micros: Option<i64>) -> anyhow::Result<bool>;
    /// A message of a transaction the opposite stream applied (an echo,
    /// not applied here): conflict detection may learn from it. `true`: it
    /// was that stream's bookkeeping (its checkpoint), not a change.
    fn observe(&mut self, relations: &Relations, message: &Message) -> bool {
        let _ = (relations, message);
        false
    }
    /// After a lost connection: the target reopened, its stored position.
    async fn reconnect(&mut self) -> anyhow::Result<Option<Position>>;
    /// Nothing arrived for a while (no group is waiting): a point between
    /// two target transactions where housekeeping (a plugin switch) may run.
    async fn idle(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    fn report(&mut self) -> &mut SyncReport;
}

/// Streams from the slot until stopped (or idle past the limit, or a
/// plugin's `fatal`), reconnecting with backoff on transient failures: the
/// target's stored position and the slot's confirmed one say where to
/// resume, so nothing is lost or doubled.
pub(crate) async fn follow<A: Applier>(
    settings: &Settings,
    options: &SyncOptions,
    mut client: ReplicationClient,
    applier: &mut A,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    client
        .start()
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("starting replication from slot {}", options.slot)))?;
    let mut client = Some(client);
    let mut backoff = crate::retry::Backoff::default();
    loop {
        let attempt = async {
            let mut client = match client.take() {
                Some(c) => c,
                None => {
                    let position = applier.reconnect().await?;
                    crate::postgres::replication::open_streaming(&settings.source.url, &stream_of(options, position))
                        .await?
                }
            };
            client.wait_started().await.map_err(|e| {
                anyhow::Error::new(e).context(format!("starting replication from slot {}", options.slot))
            })?;
            tracing::info!(slot = %options.slot, "streaming");
            let result = stream(settings, options, &mut client, applier, stop).await;
            client.stop();
            let _ = client.shutdown().await;
            result
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if applier.report().stream.fatal.is_none() && crate::retry::is_transient(&e) => {
                let wait = match backoff.failed() {
                    Some(wait) if !stop.load(Ordering::Relaxed) => wait,
                    _ => return Err(e.context(format!("giving up after {:?} of failures", backoff.failing_for()))),
                };
                tracing::warn!("sync interrupted, retrying in {wait:?}: {e:#}");
                applier.report().reconnects += 1;
                metrics::counter!(crate::daemon::names::RECONNECTS).increment(1);
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
        if applier.report().stream.transactions > 0 {
            // Progress was made since the last failure.
            backoff.progressed();
        }
    }
}

/// Changes grouped into one target transaction, at most (whole source
/// transactions only): one commit per small source transaction would cap
/// the apply rate at the target's commit rate.
const GROUP_CHANGES: usize = 5000;
/// How long a waiting group lingers for more transactions before it is
/// applied: the price in lag of grouping.
const GROUP_LINGER: Duration = Duration::from_millis(20);

/// Whole source transactions received and waiting to be applied together.
struct Group<P> {
    /// Changes received: those of committed transactions first
    /// (`committed` of them), then those of the transaction still arriving.
    pending: Vec<P>,
    committed: usize,
    /// The end of the last committed transaction: acknowledged to the slot
    /// once the group is applied.
    end: Option<Lsn>,
    /// Source commit times (PostgreSQL-epoch µs) of the oldest and newest
    /// transaction in the group.
    oldest_commit: Option<i64>,
    newest_commit: Option<i64>,
    /// When the first transaction of the group committed here.
    since: Option<std::time::Instant>,
    /// The highest position handed to the slot as applied.
    acked: Lsn,
}

impl<P> Default for Group<P> {
    fn default() -> Self {
        Group {
            pending: Vec::new(),
            committed: 0,
            end: None,
            oldest_commit: None,
            newest_commit: None,
            since: None,
            acked: Lsn::ZERO,
        }
    }
}

impl<P: Send> Group<P> {
    /// A transaction's last change arrived.
    fn commit(&mut self, end: Lsn, commit_time: i64) {
        self.end = Some(end);
        self.committed = self.pending.len();
        self.oldest_commit.get_or_insert(commit_time);
        self.newest_commit = Some(commit_time);
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// Lingered long enough: apply it now.
    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= GROUP_LINGER) || self.committed >= GROUP_CHANGES
    }

    /// How long to wait for the next event before the group is due.
    fn wait(&self, idle_tick: Duration) -> Duration {
        match self.since {
            Some(t) => GROUP_LINGER.saturating_sub(t.elapsed()).max(Duration::from_millis(1)),
            None => idle_tick,
        }
    }

    /// Nothing received is unapplied.
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.end.is_none()
    }

    /// Applies the committed transactions in one target transaction, then
    /// acknowledges their end to the slot. `false`: the plugin said `fatal`.
    async fn apply<A: Applier<Item = P>>(
        &mut self,
        client: &mut ReplicationClient,
        applier: &mut A,
    ) -> anyhow::Result<bool> {
        let Some(end) = self.end.take() else { return Ok(true) };
        let in_progress = self.pending.split_off(self.committed);
        let newest = self.newest_commit.take().map(|t| t + crate::time::PG_EPOCH_OFFSET_MICROS);
        let oldest = self.oldest_commit.take().map(|t| t + crate::time::PG_EPOCH_OFFSET_MICROS);
        self.committed = 0;
        self.since = None;
        let applied = applier.apply(&mut self.pending, newest).await?;
        self.pending = in_progress;
        if !applied {
            return Ok(false);
        }
        // The target committed everything up to here.
        client.update_applied_lsn(end);
        self.acked = self.acked.max(end);
        if let Some(oldest) = oldest {
            // The oldest transaction in the group waited the longest.
            let lag = (chrono::Utc::now().timestamp_micros() - oldest).max(0) as f64 / 1e6;
            metrics::gauge!(crate::daemon::names::LAG_SECONDS).set(lag);
            metrics::histogram!(crate::daemon::names::COMMIT_LAG).record(lag);
        }
        let wal_end = client.metrics().last_wal_end().as_u64();
        metrics::gauge!(crate::daemon::names::LAG_BYTES).set(wal_end.saturating_sub(end.as_u64()) as f64);
        Ok(true)
    }
}

/// Streams changes until stopped, idle past the limit, or the plugin's
/// `fatal` (then `report.stream.fatal` is set). Errors are for the caller to
/// retry.
async fn stream<A: Applier>(
    settings: &Settings,
    options: &SyncOptions,
    client: &mut ReplicationClient,
    applier: &mut A,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut relations = Relations::default();
    let mut group: Group<A::Item> = Group::default();
    let mut tx_commit: u64 = 0;
    let mut tx_xid: u32 = 0;
    let mut seq: u32 = 0;
    let mut in_transaction = false;
    // The transaction arriving is one the opposite stream applied here.
    let mut echo = false;
    let skip = options.origins.as_ref().map(|o| o.skip.as_str());
    let mut idle = Duration::ZERO;
    let tick = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        // A waiting group is applied once it has lingered GROUP_LINGER (or
        // is full), whatever else (keepalives) arrives meanwhile: that
        // bounds the lag.
        if group.due() && !group.apply(client, applier).await? {
            return Ok(());
        }
        let event = match tokio::time::timeout(group.wait(tick), client.recv()).await {
            Err(_) if group.since.is_some() => continue,
            Err(_) => {
                applier.idle().await?;
                idle += tick;
                if options.idle_exit.is_some_and(|limit| idle >= limit) {
                    break;
                }
                continue;
            }
            Ok(Ok(None)) => {
                return Err(Error::transient(format!("the replication stream from {} ended", settings.source.url)));
            }
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e).context(format!("replication stream from {}", settings.source.url)));
            }
            Ok(Ok(Some(event))) => event,
        };
        match event {
            ReplicationEvent::Begin { final_lsn, xid, .. } => {
                idle = Duration::ZERO;
                tx_commit = final_lsn.as_u64();
                tx_xid = xid;
                seq = 0;
                in_transaction = true;
                echo = false;
            }
            ReplicationEvent::XLogData { data, .. } => {
                idle = Duration::ZERO;
                let message = pgoutput::decode(&data)?;
                match message {
                    Message::Relation(relation) => {
                        relations.insert(relation);
                        continue;
                    }
                    Message::Origin { name, .. } if Some(name.as_str()) == skip => {
                        echo = true;
                        applier.report().echo_transactions += 1;
                        continue;
                    }
                    Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. }
                        if echo =>
                    {
                        // The other stream's own bookkeeping is not an echo.
                        if applier.observe(&relations, &message) {
                            continue;
                        }
                        applier.report().echo_changes += 1;
                        metrics::counter!(crate::daemon::names::ECHOES_SKIPPED).increment(1);
                        continue;
                    }
                    _ => {}
                }
                applier.receive(&relations, message, tx_commit, tx_xid, &mut seq, &mut group.pending).await?;
            }
            ReplicationEvent::Message { transactional: true, prefix, content, .. }
                if prefix == crate::replication::DDL_MESSAGE_PREFIX && in_transaction && !echo =>
            {
                let message = Message::Ddl(content.to_vec());
                applier.receive(&relations, message, tx_commit, tx_xid, &mut seq, &mut group.pending).await?;
            }
            ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                in_transaction = false;
                group.commit(end_lsn, commit_time_micros);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // An idle source is healthy.
                crate::daemon::health().beat("streaming");
                // Nothing received is waiting and no transaction is open:
                // every transaction the server sent (wal_end is what it has
                // sent) has been applied, so the rest up to wal_end is WAL
                // without changes for us (checkpoints, other tables).
                // Confirming it lets the source recycle WAL and shut down.
                if !in_transaction && group.is_empty() {
                    client.update_applied_lsn(wal_end);
                    group.acked = group.acked.max(wal_end);
                }
                let applied = client.metrics().last_applied_lsn().as_u64();
                metrics::gauge!(crate::daemon::names::LAG_BYTES).set(wal_end.as_u64().saturating_sub(applied) as f64);
            }
            _ => {}
        }
    }
    group.apply(client, applier).await?;
    // Stopping: the slot learns everything the target committed before the
    // connection closes (the client sends it on its feedback tick).
    let started = std::time::Instant::now();
    let unsent = |client: &ReplicationClient| client.metrics().last_applied_lsn() < group.acked;
    while unsent(client) && started.elapsed() < FINAL_ACK_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if unsent(client) {
        tracing::warn!(
            "the last acknowledgement did not reach the source within {FINAL_ACK_WAIT:?}; the next run confirms it"
        );
    }
    Ok(())
}

/// Drops the slot (so the source stops retaining WAL for it) and the
/// publication, and a parallel run's replication origin.
pub async fn teardown(settings: &Settings, options: &SyncOptions) -> anyhow::Result<()> {
    let mut source = engines::open_replication_source(&settings.source.url).await?;
    source.drop_stream(&options.slot, &options.publication).await?;
    if settings.capture_ddl {
        source.drop_ddl_capture(&options.slot).await?;
    }
    // A parallel run's stream also leaves its replication origin in its target.
    if let Some(origins) = &options.origins {
        engines::open_row_target(settings).await?.drop_origin(&origins.own).await?;
    }
    Ok(())
}

/// How long a stopping `sync` waits for its last acknowledgement to be
/// written to the server.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// The slot and publication name of a pipeline unless configured:
/// `ferry_<pipeline>`, lowercased, anything but ASCII letters and digits as `_`.
pub fn default_slot_name(pipeline: &str) -> String {
    let clean: String =
        pipeline.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("ferry_{clean}")
}
