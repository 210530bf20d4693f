//! `ferry sync` for a pipeline of many tables.
//!
//! One publication and one slot for all the pipeline's tables. The initial
//! load is a many-table migration ([`crate::tables`]) in which every table
//! is read in the slot's exported snapshot; the stream then starts at the
//! slot's consistent point, so no change is missed or doubled. A crash
//! during the load resumes it in a fresh snapshot, and the stream replayed
//! from the slot's (never advanced) position converges, as in the seed's
//! pipeline (upserts and deletes are idempotent per key, applied in commit
//! order).
//!
//! Changes are decoded into typed rows of the table's definition, copied
//! tables' rows written as they are and plugin tables' rows through the
//! plugin (updates replace the rows the plugin made of the old version:
//! `target-keys`), and whole source transactions — whatever tables they
//! touch — are applied in one target transaction, in source order, with
//! the stream position ([`crate::sink::RowChangeSink`]).

mod evolve;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::apply::ApplyReport;
use super::pgoutput::{Datum, Message, Relation, Relations};
use super::sync::{Applier, SyncOptions, SyncReport};
use crate::config::OnReject;
use crate::db::Engine;
use crate::engines::{self, RowTarget};
use crate::keyset::{Key, Row};
use crate::migrate::{Ending, MigrateOptions};
use crate::model::DeadLetterKind;
use crate::plugin::{RowOutcome, TableTransformer};
use crate::position::Position;
use crate::schema::TableDef;
use crate::schema_edit::TableVersion;
use crate::settings::{Settings, TableSelection};
use crate::sink::{ChangeOrigin, ChangeWrite, RowChange, RowChangeBatch, StreamDeadLetter};
use crate::source::RowSource;
use crate::swap::Swapper;
use crate::tables::Plan;
use crate::value::{Value, decode_pg_text};

/// Runs the initial load (if not done) and then streams the pipeline's
/// tables.
pub async fn sync(
    settings: &Settings,
    selection: &TableSelection,
    options: &SyncOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SyncReport> {
    crate::daemon::health().beat("starting");
    let (plan, mut target, position, mut report, swapper, stored) = open_stream(settings, selection).await?;
    for table in &plan.tables {
        if let Some(plugin) = &table.plugin {
            let (table, sha256) = (table.source.name.to_string(), plugin.sha256().to_string());
            metrics::gauge!(crate::daemon::names::PLUGIN_INFO, "table" => table, "sha256" => sha256).set(1.0);
        }
    }

    // After a cutover to the new side, a forward stream without its slot
    // (torn down) would load the old side again over what the new side's
    // application wrote since: refused before anything is made.
    if options.origins.as_ref().is_some_and(|o| o.side == "new")
        && target.parallel_owner(&settings.pipeline).await?.is_some_and(|(owner, _)| owner == "new")
        && !engines::open_replication_source(&settings.source.url).await?.slot_exists(&options.slot).await?
    {
        return Err(crate::error::Error::contract(format!(
            "pipeline {} was cut over to the new side and its forward stream was torn down (slot {} is gone): a \
             new forward stream would load {} into {} again, over what the new side's application has written \
             since. To stream from the old side again, hand the writes back first (`ferry cutback`, with the \
             reverse stream running), then `ferry sync` loads and streams anew",
            settings.pipeline, options.slot, settings.source.url, settings.target.url
        )));
    }
    if !options.initial_load
        && let Some(table) = plan.tables.iter().find(|t| t.creates())
    {
        return Err(crate::error::Error::contract(format!(
            "{} has no table {}: a stream that does not load (the reverse stream of a parallel run) writes into \
             existing tables only",
            settings.target.url,
            table.target_names()
        )));
    }
    let mut names: Vec<crate::db::TableName> =
        plan.tables.iter().map(|t| t.source.name.clone()).filter(|n| !plan.dropped.contains(n)).collect();
    // The reverse stream yields from the start: it reads the forward
    // stream's checkpoints (the forward one is given them at the cutover).
    if options.origins.as_ref().is_some_and(|o| o.detect && o.side == "old") {
        names.push(checkpoints_table());
    }
    let (mut replication, has_slot) = super::sync::prepare_source(settings, options, &names).await?;
    check_publication(replication.as_mut(), options, &plan, selection).await?;
    // Before the slot, so that no statement after its snapshot goes
    // uncaptured.
    if settings.capture_ddl {
        replication.install_ddl_capture().await?;
    }
    let capture = replication.ddl_capture().await?;
    if capture && !selection.include.is_empty() {
        let (include, exclude) =
            (TableSelection::regexes(&selection.include), TableSelection::regexes(&selection.exclude));
        if let Err(e) = replication.publish_new_tables(&options.publication, &include, &exclude).await {
            tracing::warn!(
                "tables the source creates will not join the stream (a superuser's `ferry sync` sets it up): {e:#}"
            );
        }
    }
    if !capture {
        tracing::info!(
            "no DDL capture in the source ([source] capture_ddl): a change of a table's columns pauses the stream \
             until the target table is altered to match"
        );
    }
    let versions = evolve::known_versions(replication.as_mut(), &plan, &stored).await?;
    drop(replication);
    let mut client = super::sync::open_gated(settings, options, position).await?;
    let latest = target.latest_run(&settings.pipeline).await?;
    if let Some(run) = latest.as_ref().filter(|r| has_slot && r.status == crate::control::RunStatus::RolledBack) {
        return Err(crate::error::Error::contract(format!(
            "run {} of pipeline {} was rolled back, but slot {} still holds the stream's place after it: \
             tear the stream down (`ferry sync{} --teardown`) and start it again",
            run.run_id,
            settings.pipeline,
            options.slot,
            if options.initial_load { "" } else { " --reverse" }
        )));
    }
    let loaded = latest.as_ref().is_some_and(|r| r.status == crate::control::RunStatus::Completed);
    let paged = Settings { batch_size: options.chunk_rows.unwrap_or(settings.batch_size), ..settings.clone() };
    let load = if !options.initial_load {
        if !has_slot {
            // The stream starts at the slot's consistent point; its
            // snapshot is not needed.
            super::sync::create_slot(&mut client, options).await?;
        }
        None
    } else if !has_slot {
        let snapshot = super::sync::create_slot(&mut client, options).await?;
        // A new slot means a new initial load, whatever an earlier one did.
        let fresh = MigrateOptions { restart: true, resume_only: false, progress: false };
        Some(crate::tables::migrate_in_snapshot(&paged, selection, fresh, Some(&snapshot), Arc::clone(&stop)).await?)
    } else if !loaded {
        // The snapshot died with the process that loaded: the rest in a
        // fresh one, and the stream (from the slot's start) converges.
        let resume = MigrateOptions { restart: false, resume_only: false, progress: false };
        Some(crate::tables::migrate_in_snapshot(&paged, selection, resume, None, Arc::clone(&stop)).await?)
    } else {
        None
    };
    if let Some(load) = load {
        report.snapshot_rows = load.rows_this_session;
        report.snapshot_chunks = load.tables.len() as u64;
        report.stream.dead_lettered += load.stats.dead_lettered;
        tracing::info!(rows = load.rows_this_session, tables = load.tables.len(), "initial load");
        match load.ending {
            Ending::Completed | Ending::AlreadyCompleted => {}
            Ending::Interrupted => return Ok(report),
            Ending::Fatal => {
                report.stream.fatal = load.message;
                return Ok(report);
            }
        }
    }
    let mut applier = TablesApplier::new(settings, plan, target, position, report, swapper);
    applier.stop = Arc::clone(&stop);
    applier.versions = versions;
    applier.capture = capture;
    applier.selection = Some(selection.clone());
    applier.publication = Some(options.publication.clone());
    // Met past the stored position: made when the stream reads their
    // statement; rows before it (a table without a key) pause the stream.
    applier.keyless_new.extend(applier.plan.later.iter().cloned());
    applier.store_versions(&stored).await?;
    applier.load_holds().await?;
    applier.start_journal().await?;
    applier.origin = options.origins.as_ref().map(|o| o.own.clone());
    applier.mark_origin().await?;
    applier.quiet_triggers().await?;
    if let Some(parallel) = options.origins.clone().filter(|o| o.detect) {
        // Where the stream resumes, its source had seen what was stored
        // with that position; a new slot starts from the value given.
        let stored = applier.target.stream_status(&settings.pipeline).await?.and_then(|s| s.peer_seen_micros);
        applier.stored_seen = if has_slot { stored } else { None };
        applier.parallel = Some(parallel);
        applier.poll_owner(true, options.watch.as_ref().map(|w| w.seen_until)).await?;
        if applier.watch.is_some() {
            require_checkpoints_published(settings, options).await?;
        }
    }
    super::sync::follow(settings, options, client, &mut applier, &stop).await?;
    applier.end_journal().await?;
    applier.swapper.flush(applier.target.as_mut()).await?;
    // Logical replication carries no sequence values: where the stream
    // stops, the target's sequences catch up with the source's.
    let mut live = applier.plan.clone();
    live.tables = (0..live.tables.len())
        .filter(|t| !applier.gone.contains(t) && !live.dropped.contains(&live.tables[*t].source.name))
        .map(|t| applier.plan.tables[t].clone())
        .collect();
    crate::tables::advance_sequences(settings, &live, applier.target.as_mut()).await?;
    Ok(applier.report)
}

/// The plan (from the source's catalog), the target with its control and
/// stream tables, the stored stream position and an empty report.
#[allow(clippy::type_complexity)]
async fn open_stream(
    settings: &Settings,
    selection: &TableSelection,
) -> anyhow::Result<(Plan, Box<dyn RowTarget>, Option<Position>, SyncReport, Swapper, Vec<(String, TableVersion)>)> {
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    target.ensure_control_tables().await?;
    target.ensure_stream_tables().await?;
    // Where the stream stands, its tables have the columns it last stored.
    let stored = target.stream_versions(&settings.pipeline).await?;
    let mut plan = crate::tables::plan_as_of(settings, selection, source.as_mut(), target.as_mut(), &stored).await?;
    if let Some(table) = plan.tables.iter().find(|t| t.keyless()) {
        return Err(crate::error::Error::contract(format!(
            "table {} has no key: a change stream applies updates and deletes by key, so it cannot follow it. \
             Give it a primary key (or name a unique NOT NULL one: key = [\"column\", …]), or leave it out of \
             the stream (source.exclude) and copy it with `ferry migrate` (keyless = \"ctid\")",
            table.source.name
        )));
    }
    let position = target.stream_position(&settings.pipeline).await?;
    let report = SyncReport {
        stream: ApplyReport { pipeline: settings.pipeline.clone(), ..Default::default() },
        ..Default::default()
    };
    // A version deployed into an earlier run of the stream is still the live one.
    let mut swapper = Swapper::new(settings, &plan);
    swapper.restore(&mut plan, target.as_mut()).await?;
    Ok((plan, target, position, report, swapper, stored))
}

/// A publication ferry did not make may lack tables of the pipeline (their
/// changes would never arrive): refused with the fix. Tables it has beyond
/// the pipeline are reported (their changes become dead letters).
async fn check_publication(
    source: &mut dyn crate::replication::ReplicationSource,
    options: &SyncOptions,
    plan: &Plan,
    selection: &TableSelection,
) -> anyhow::Result<()> {
    let published: Vec<(String, String)> = source
        .publication_tables(&options.publication)
        .await?
        .into_iter()
        .map(|t| (t.schema.unwrap_or_default(), t.name))
        .collect();
    let is_published = |def: &TableDef| published.iter().any(|(s, t)| names_table(def, Some(s), t));
    let checkpoints = |schema: &str, table: &str| schema == "ferry" && table == "change_checkpoints";
    let missing: Vec<String> = plan
        .tables
        .iter()
        .filter(|t| !is_published(&t.source) && !plan.dropped.contains(&t.source.name))
        .map(|t| t.source.name.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(crate::error::Error::contract(format!(
            "publication {} does not publish {} of the pipeline; add them (ALTER PUBLICATION {} ADD TABLE …) \
             and run `ferry sync --teardown` to load them from a new slot, or drop the publication so ferry creates it",
            options.publication,
            missing.join(", "),
            crate::db::quote_ident(&options.publication)
        )));
    }
    // Tables the stream meets later were published by the DDL capture
    // when they were made; one that was not can only come from a new load.
    if let Some(table) =
        plan.later.iter().find(|t| !published.iter().any(|(s, n)| t.schema.as_deref() == Some(s) && t.name == *n))
    {
        return Err(crate::error::Error::contract(format!(
            "table {table}, which source.include brings into the pipeline, is not part of the change stream (it \
             was not there when the stream started, and no captured statement made it since): load it with the \
             others from a new slot (`ferry sync --teardown`, then `ferry sync`), or leave it out (source.exclude)"
        )));
    }
    for (schema, table) in &published {
        // A table `include` brings in joins when the stream reads the
        // statement that made it (the DDL capture published it).
        let name = crate::db::TableName { schema: Some(schema.clone()), name: table.clone() };
        let known =
            plan.tables.iter().any(|t| names_table(&t.source, Some(schema), table)) || selection.includes(&name);
        if !known && !checkpoints(schema, table) {
            tracing::warn!(
                "publication {} also publishes {schema}.{table}, which the pipeline does not name: its changes \
                 will be dead-lettered (add it to [[tables]] or source.include, or drop it from the publication)",
                options.publication
            );
        }
    }
    Ok(())
}

/// The stream checkpoints' table, which conflict detection reads.
pub(crate) fn checkpoints_table() -> crate::db::TableName {
    crate::db::TableName { schema: Some("ferry".into()), name: "change_checkpoints".into() }
}

/// A stream that yields to its target's writes reads the other stream's
/// checkpoints: its publication must carry them.
async fn require_checkpoints_published(settings: &Settings, options: &SyncOptions) -> anyhow::Result<()> {
    let mut source = engines::open_replication_source(&settings.source.url).await?;
    let published = source.publication_tables(&options.publication).await?;
    if !published.iter().any(|t| t.schema.as_deref() == Some("ferry") && t.name == "change_checkpoints") {
        return Err(crate::error::Error::contract(format!(
            "publication {} does not publish ferry.change_checkpoints, which conflict detection reads; add it \
             (ALTER PUBLICATION {} ADD TABLE ferry.change_checkpoints)",
            options.publication,
            crate::db::quote_ident(&options.publication)
        )));
    }
    Ok(())
}

/// How a relation of the stream maps onto a planned source table.
struct Mapped {
    /// The relation's column names when mapped (a new Relation message
    /// with other columns is mapped again).
    names: Vec<String>,
    /// `None`: the pipeline does not name the table.
    table: Option<usize>,
    /// For each column of the table's definition, its index in the tuple.
    columns: Arc<[Option<usize>]>,
    /// `schema.table` as the stream names it.
    label: String,
}

/// What one change of a source table asks for.
enum Op {
    /// A new version of a row (`update`: a row of that key existed).
    Upsert {
        row: Row,
        update: bool,
    },
    /// A row went: its key (source key order) and, with REPLICA IDENTITY
    /// FULL, the whole old row.
    Delete {
        key: Row,
        old: Option<Row>,
    },
    Truncate,
    /// Not applicable: a dead letter.
    Dead {
        kind: DeadLetterKind,
        reason: String,
    },
    /// The table's columns change here: the changes after it are rows of
    /// the new version (see [`evolve`]).
    Schema(Box<evolve::Step>),
    /// The stream cannot go past here until this is resolved.
    Pause(Box<evolve::Pause>),
    /// The table cannot go past here until this is resolved; the others
    /// go on ([`evolve`]'s holds).
    Hold(Box<evolve::Pause>),
    /// Statements that give the target the source's enum types as they are
    /// here: a target transaction of their own (a label added in one cannot
    /// be used before it commits).
    Types(Vec<String>),
}

/// One decoded change, positioned.
pub(crate) struct Change {
    /// `None`: a Debezium snapshot read (they share one position).
    position: Option<Position>,
    /// The planned table (`None`: a table outside the pipeline).
    table: Option<usize>,
    label: String,
    key: Option<Key>,
    what: &'static str,
    op: Op,
    /// Conflict detection: the target's commits its source had seen
    /// ([`crate::sink::ChangeWrite::seen_until`]).
    seen: Option<i64>,
    /// A copied table: the target definition (in `targets`) its rows have.
    out: Option<usize>,
    /// A dead letter's replay: its dedup key (see [`TablesApplier::replay_dead_letters`]).
    replay: Option<String>,
}

impl Change {
    /// A change at `position` with no row key of its own (a schema step, a
    /// pause, a dead letter of a table outside the plan).
    fn at(position: Position, table: Option<usize>, label: String, what: &'static str, op: Op) -> Change {
        Change { position: Some(position), table, label, key: None, what, op, seen: None, out: None, replay: None }
    }

    fn origin(&self) -> ChangeOrigin {
        let key = self.key.as_ref().map(Key::label);
        ChangeOrigin {
            dedup_key: match (&self.replay, self.position) {
                (Some(replayed), _) => replayed.clone(),
                (None, Some(p)) => p.to_string(),
                (None, None) => format!("snapshot:{}:{}", self.label, key.as_deref().unwrap_or_default()),
            },
            source_table: self.label.clone(),
            source_key: key.clone(),
            event: serde_json::json!({ "pgoutput": self.what, "table": self.label, "key": key }).to_string(),
        }
    }
}

/// The many-table pipeline in the replication loop.
struct TablesApplier<'a> {
    settings: &'a Settings,
    plan: Plan,
    /// Every target table of the plan; `outputs[t]` indexes those of
    /// planned table `t`.
    targets: Arc<Vec<TableDef>>,
    outputs: Vec<Vec<usize>>,
    mapped: HashMap<u32, Mapped>,
    transformers: HashMap<usize, TableTransformer>,
    target: Box<dyn RowTarget>,
    position: Option<Position>,
    report: SyncReport,
    /// Reads rows whose unchanged TOASTed values a change lacks.
    reread: Option<Box<dyn RowSource>>,
    producers: String,
    /// Takes deployed plugin versions between two target transactions.
    swapper: Swapper,
    /// The replication origin the target connection marks its
    /// transactions with (a parallel run).
    origin: Option<String>,
    /// Conflict detection: how far the opposite stream had applied this
    /// stream's target when the changes now arriving were made.
    watch: Option<super::sync::Watch>,
    /// The `watch.seen_until` stored with the position.
    stored_seen: Option<i64>,
    /// A parallel run with conflict detection: this stream's part in it.
    parallel: Option<super::sync::Origins>,
    /// When the owner of the writes was last read.
    owner_read: Option<std::time::Instant>,
    /// The run whose undo journal the writes go into.
    undo_run: Option<String>,
    /// When the stream last looked whether its run's journal was forgotten.
    undo_read: Option<std::time::Instant>,
    /// Each planned table's columns as the changes now arriving have
    /// them (`None`: their catalog numbers are unknown — `ferry apply`).
    versions: Vec<Option<TableVersion>>,
    /// Each planned table's definition when the stream started, which a
    /// version's columns replace.
    base: Vec<TableDef>,
    /// Tables whose changes wait behind a pause in the group received.
    blocked: HashSet<usize>,
    /// Signalled to stop (a pause waits for it or for its resolution).
    stop: Arc<AtomicBool>,
    /// The source has the DDL capture: a statement's message follows.
    capture: bool,
    /// `ferry sync`: the pipeline's selection, which new tables of the
    /// source may join (see [`evolve`]).
    selection: Option<TableSelection>,
    /// Planned tables the stream no longer follows (dropped in the source,
    /// or made past the position it read again from).
    gone: HashSet<usize>,
    /// Planned tables the stream made.
    added: HashSet<usize>,
    /// New tables `include` brings in that have no key yet.
    keyless_new: HashSet<crate::db::TableName>,
    /// Tables renamed out of the pipeline: their changes are skipped (and
    /// they leave `publication`, as `unpublish` lists, between two target
    /// transactions).
    left: HashSet<crate::db::TableName>,
    unpublish: Vec<crate::db::TableName>,
    /// When the dead letters asked to be replayed were last looked for.
    replays_read: Option<std::time::Instant>,
    /// Tables held (their changes skipped, the others going on) until
    /// their hold is resolved.
    holds: HashMap<usize, evolve::Until>,
    /// When the holds were last checked.
    holds_read: Option<std::time::Instant>,
    /// Tables the source wrote in one transaction with another (never held
    /// alone), and the tables of the transaction being read.
    co_written: HashSet<usize>,
    transaction_tables: (u64, HashSet<usize>),
    /// The table being copied again (`ferry resync`), and how far.
    resyncing: Option<(usize, crate::sink::Resync)>,
    /// When the resyncs asked were last looked for.
    resyncs_read: Option<std::time::Instant>,
    /// `ferry sync`: the publication the stream reads.
    publication: Option<String>,
}

impl<'a> TablesApplier<'a> {
    fn new(
        settings: &'a Settings,
        plan: Plan,
        target: Box<dyn RowTarget>,
        position: Option<Position>,
        report: SyncReport,
        swapper: Swapper,
    ) -> Self {
        let mut targets = Vec::new();
        let mut outputs = Vec::new();
        for table in &plan.tables {
            let mut mine = Vec::new();
            for output in &table.outputs {
                mine.push(targets.len());
                targets.push(output.def.clone());
            }
            outputs.push(mine);
        }
        let producers = crate::tables::producers(&plan);
        let base = plan.tables.iter().map(|t| t.source.clone()).collect();
        TablesApplier {
            settings,
            versions: vec![None; plan.tables.len()],
            base,
            blocked: HashSet::new(),
            stop: Arc::new(AtomicBool::new(false)),
            capture: false,
            selection: None,
            gone: HashSet::new(),
            added: HashSet::new(),
            keyless_new: HashSet::new(),
            left: HashSet::new(),
            unpublish: Vec::new(),
            replays_read: None,
            holds: HashMap::new(),
            holds_read: None,
            co_written: HashSet::new(),
            transaction_tables: (0, HashSet::new()),
            resyncing: None,
            resyncs_read: None,
            publication: None,
            plan,
            targets: Arc::new(targets),
            outputs,
            mapped: HashMap::new(),
            transformers: HashMap::new(),
            target,
            position,
            report,
            reread: None,
            producers,
            swapper,
            origin: None,
            watch: None,
            stored_seen: None,
            undo_run: None,
            undo_read: None,
            parallel: None,
            owner_read: None,
        }
    }

    /// A parallel run: reads (at most once a second, or `now`) which side
    /// owns the writes; while it is this stream's target, its changes yield
    /// to the target's own concurrent writes (conflict detection on), else
    /// they apply as they come. `initial`: what the source had seen, for a
    /// stream that starts yielding with nothing stored.
    async fn poll_owner(&mut self, now: bool, initial: Option<i64>) -> anyhow::Result<()> {
        let Some(parallel) = &self.parallel else { return Ok(()) };
        if !now && self.owner_read.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return Ok(());
        }
        self.owner_read = Some(std::time::Instant::now());
        let (owner, seen) = self.target.parallel_owner(&self.settings.pipeline).await?.unwrap_or(("old".into(), None));
        let yields = owner == parallel.side;
        match (&self.watch, yields) {
            (None, true) => {
                let seen_until =
                    self.stored_seen.or(seen).or(initial).unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
                tracing::info!(owner, "the {owner} side owns the writes: this stream's changes yield to its own");
                self.watch = Some(super::sync::Watch { pipeline: parallel.opposite.clone(), seen_until });
            }
            (Some(_), false) => {
                tracing::info!(owner, "the {owner} side owns the writes: this stream's changes apply as they come");
                self.watch = None;
                self.stored_seen = None;
            }
            _ => {}
        }
        self.store_seen().await
    }

    /// Stores what the stream's source had seen with the position, when it
    /// moved without a change to apply (the other stream's bookkeeping).
    async fn store_seen(&mut self) -> anyhow::Result<()> {
        let seen = self.watch.as_ref().map(|w| w.seen_until);
        if seen.is_none() || seen == self.stored_seen {
            return Ok(());
        }
        self.target.apply_row_changes(&self.batch(seen)).await?;
        self.stored_seen = seen;
        Ok(())
    }

    /// An empty batch from the stored position to itself (what the stream
    /// applies is added to it).
    fn batch(&self, seen_until: Option<i64>) -> RowChangeBatch {
        RowChangeBatch {
            pipeline: self.settings.pipeline.clone(),
            tables: Arc::clone(&self.targets),
            previous: self.position,
            next: self.position,
            plugin_sha256: self.producers.clone(),
            seen_until,
            run_id: self.undo_run.clone(),
            ..Default::default()
        }
    }

    /// Journals the stream's writes for `ferry rollback` (unless the
    /// pipeline turned the journal off), under the run [`crate::undo::stream_run`] picks.
    async fn start_journal(&mut self) -> anyhow::Result<()> {
        if self.settings.undo_journal {
            match crate::undo::stream_run(self.settings, self.target.as_mut(), &self.targets).await? {
                Some(run) => {
                    tracing::info!(run = %run, "journaling the stream's writes for rollback");
                    self.undo_run = Some(run);
                }
                None => tracing::info!("the stream's run was accepted (its undo journal forgotten): no journal"),
            }
        } else {
            tracing::warn!(
                "the undo journal is off for pipeline {} ([target] undo_journal = false): this stream's writes \
                 cannot be rolled back",
                self.settings.pipeline
            );
        }
        Ok(())
    }

    /// The stream stops writing for now ([`crate::undo::UndoJournal::end_undo`]).
    async fn end_journal(&mut self) -> anyhow::Result<()> {
        if let Some(run) = &self.undo_run {
            self.target.end_undo(run).await?;
        }
        Ok(())
    }

    /// Marks the target connection's transactions with the pipeline's
    /// origin, if it has one.
    /// As PostgreSQL's own subscriber does: the target's triggers (foreign
    /// keys' checks among them) do not fire on the changes the stream
    /// applies. The source ran them when the change was made, and what they
    /// wrote arrives in the stream too: firing again would rewrite rows
    /// (`last_update`) or write twice (an audit table). Checks and NOT NULL
    /// still refuse. Where the target role may not, a warning names the
    /// triggers that will fire on every applied change.
    async fn quiet_triggers(&mut self) -> anyhow::Result<()> {
        if self.target.may_skip_triggers().await? {
            return self.target.skip_triggers(true).await;
        }
        let fire = self.target.triggers(&self.targets).await?;
        if !fire.is_empty() {
            let names: Vec<String> = fire.iter().map(|(table, trigger, _)| format!("{trigger} on {table}")).collect();
            tracing::warn!(
                "the target's triggers {} fire on every change the stream applies (the target role may not set \
                 session_replication_role): GRANT SET ON PARAMETER session_replication_role to it (PostgreSQL 15+), \
                 or disable them until cutover",
                names.join(", ")
            );
        }
        Ok(())
    }

    async fn mark_origin(&mut self) -> anyhow::Result<()> {
        let Some(origin) = &self.origin else { return Ok(()) };
        // The session of a process that just died may hold the origin a
        // moment longer (until its server notices the connection is gone).
        let mut backoff = crate::retry::Backoff::default();
        loop {
            match self.target.mark_origin(origin).await {
                Err(e) if crate::retry::is_transient(&e) => match backoff.failed() {
                    Some(wait) => {
                        tracing::warn!("{e:#}; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                done => return done,
            }
        }
    }

    /// Between two target transactions: a deployed plugin version is
    /// checked off the hot path, then switched to here.
    async fn between(&mut self) -> anyhow::Result<()> {
        self.poll_owner(false, None).await?;
        if let Some(run) = self.undo_run.clone()
            && self.undo_read.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.undo_read = Some(std::time::Instant::now());
            if self.target.undo_forgotten(&run).await? {
                // What it journaled since the forget goes too.
                self.target.forget_undo(&run).await?;
                self.undo_run = None;
                tracing::info!(run = %run, "the run was accepted (its undo journal forgotten): journaling stops");
            }
        }
        if let (Some(publication), false) = (&self.publication, self.unpublish.is_empty()) {
            let mut replication = engines::open_replication_source(&self.settings.source.url).await?;
            for table in std::mem::take(&mut self.unpublish) {
                if let Err(e) = replication.unpublish(publication, &table).await {
                    tracing::warn!("{table} left the pipeline but stays in publication {publication}: {e:#}");
                }
            }
        }
        let position = self.position.map(|p| p.to_string());
        let switched =
            self.swapper.between(&mut self.plan, &mut self.transformers, self.target.as_mut(), position).await?;
        if let Some(switched) = switched {
            self.producers = crate::tables::producers(&self.plan);
            self.report.stream.plugin_switches.push(switched.sha256);
            tracing::debug!(deployment = switched.deployment, pause = ?switched.pause, "plugin switched");
        }
        Ok(())
    }

    /// Table `t` is written in the source transaction that commits at
    /// `commit`: tables written together are never held apart.
    fn written(&mut self, commit: u64, t: usize) {
        let (at, tables) = &mut self.transaction_tables;
        if *at != commit {
            *at = commit;
            tables.clear();
        }
        if tables.insert(t) && tables.len() > 1 {
            self.co_written.extend(tables.iter().copied());
        }
    }

    /// The dead letters `ferry dlq replay` asked to replay (looked for at
    /// most once a second): each row read again from the source as it is
    /// now and applied through the table's path (its plugin, the live
    /// version) in one target transaction of its own, which also removes
    /// the dead letters (one that fails again is recorded anew). Between
    /// two of the stream's transactions, so nothing the stream applies
    /// interleaves: the row read is at least as new as every change applied
    /// so far, and the changes of the key still to come apply after it, as
    /// after an initial load.
    async fn replay_dead_letters(&mut self) -> anyhow::Result<()> {
        if self.replays_read.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return Ok(());
        }
        self.replays_read = Some(std::time::Instant::now());
        let asked = self.target.stream_replays(&self.settings.pipeline, self.settings.batch_size.max(1)).await?;
        if asked.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(asked.len());
        for (dedup_key, table, key_label) in asked {
            let t = crate::db::TableName::parse(&table).ok().and_then(|name| self.live_table(&name));
            let read = match t {
                None => Err(format!("table {table} is no longer in the pipeline's stream")),
                Some(t) if self.blocked.contains(&t) => continue,
                Some(t) => match crate::tables::replay::key_values(&self.plan.tables[t].source, &key_label) {
                    Ok((_, values)) => Ok((t, values)),
                    Err(e) => Err(format!("{e:#}")),
                },
            };
            let (t, key, op) = match read {
                Ok((t, values)) => {
                    let op = self.read_now(t, &values).await?;
                    (Some(t), Some(Key::of_values(&values)), op)
                }
                Err(reason) => (None, None, Op::Dead { kind: DeadLetterKind::Extract, reason }),
            };
            let out = t.and_then(|t| self.outputs[t].first().copied());
            let (what, replay) = ("replay", Some(dedup_key));
            items.push(Change { position: None, table: t, label: table, key, what, op, seen: None, out, replay });
        }
        let replayed = items.len();
        match self.apply_segment(items, None).await? {
            evolve::Segment::Applied => {
                tracing::info!(replayed, "dead letters replayed");
                Ok(())
            }
            evolve::Segment::Fatal => anyhow::bail!(
                "{}",
                self.report.stream.fatal.clone().unwrap_or_else(|| "the plugin said fatal on a replayed row".into())
            ),
            evolve::Segment::Refused(refused) => Err(refused.into()),
        }
    }

    /// One step of a resync (`ferry resync --table T`), between two of the
    /// stream's transactions: the target table emptied, then one page of
    /// the source table per call, read as it is now and applied through
    /// the table's path (plugin or copy) in a target transaction of its
    /// own. As after an initial load, the stream converges: each row read
    /// is at least as new as every change applied so far, and the changes
    /// still to come apply after it. Where it stands is recorded after each
    /// page; a page done again (after a crash) writes the same rows.
    async fn resync_step(&mut self) -> anyhow::Result<()> {
        if !self.holds.is_empty() && self.holds_read.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            self.holds_read = Some(std::time::Instant::now());
            self.release_holds().await?;
        }
        if self.resyncing.is_none() {
            if self.resyncs_read.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return Ok(());
            }
            self.resyncs_read = Some(std::time::Instant::now());
            let asked =
                self.target.resyncs(&self.settings.pipeline).await?.into_iter().find(|r| !r.done && r.held.is_none());
            let Some(mut asked) = asked else { return Ok(()) };
            let t = crate::db::TableName::parse(&asked.table).ok().and_then(|name| self.live_table(&name));
            let Some(t) = t else {
                tracing::warn!(table = %asked.table, "resync of a table the stream does not follow: nothing to do");
                asked.done = true;
                return self.target.resync_progress(&self.settings.pipeline, &asked).await;
            };
            tracing::info!(table = %asked.table, from = ?asked.last_key, "resync: copying the table again");
            self.resyncing = Some((t, asked));
        }
        let (t, mut resync) = self.resyncing.clone().expect("set above");
        if self.blocked.contains(&t) || self.gone.contains(&t) {
            return Ok(());
        }
        let label = self.plan.tables[t].source.name.to_string();
        let out = self.outputs[t].first().copied();
        let change = |key: Option<Key>, op: Op| Change {
            position: None,
            table: Some(t),
            label: label.clone(),
            key,
            what: "resync",
            op,
            seen: None,
            out,
            replay: None,
        };
        let items = if !resync.truncated {
            resync.truncated = true;
            vec![change(None, Op::Truncate)]
        } else {
            let def = self.plan.tables[t].source.clone();
            let after = resync.last_key.as_deref().map(|k| Key::from_label(k, def.primary_key.len())).transpose()?;
            let limit = self.settings.batch_size.max(1);
            let page = self.reread().await?.read_page(&def, after.as_ref(), limit).await?;
            if page.rows.is_empty() && page.unreadable.is_empty() {
                resync.done = true;
                tracing::info!(table = %label, rows = resync.rows, "resync done");
                self.resyncing = None;
                return self.target.resync_progress(&self.settings.pipeline, &resync).await;
            }
            resync.rows += (page.rows.len() + page.unreadable.len()) as u64;
            resync.last_key = page.last_key.as_ref().map(Key::label);
            let rows = page.rows.into_iter().map(|row| (Some(Key::of(&def, &row)), Op::Upsert { row, update: true }));
            let dead = page
                .unreadable
                .into_iter()
                .map(|d| (Some(d.key), Op::Dead { kind: DeadLetterKind::Extract, reason: d.reason }));
            rows.chain(dead).map(|(key, op)| change(key, op)).collect()
        };
        match self.apply_segment(items, None).await? {
            evolve::Segment::Applied => {}
            evolve::Segment::Fatal => anyhow::bail!(
                "{}",
                self.report.stream.fatal.clone().unwrap_or_else(|| "the plugin said fatal on a resynced row".into())
            ),
            evolve::Segment::Refused(refused) => return Err(refused.into()),
        }
        self.target.resync_progress(&self.settings.pipeline, &resync).await?;
        self.resyncing = Some((t, resync));
        Ok(())
    }

    /// The mapping of relation `oid` (computed again if its columns changed).
    fn mapping(&mut self, relation: &Relation) -> &Mapped {
        let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let stale = self.mapped.get(&relation.oid).is_none_or(|m| m.names != names);
        if stale {
            let name = crate::db::TableName { schema: Some(relation.namespace.clone()), name: relation.name.clone() };
            let table = self.live_table(&name);
            let columns = match table {
                Some(t) => {
                    self.plan.tables[t].source.columns.iter().map(|c| names.iter().position(|n| *n == c.name)).collect()
                }
                None => Arc::from(Vec::new()),
            };
            self.mapped.insert(
                relation.oid,
                Mapped {
                    names: names.iter().map(|n| n.to_string()).collect(),
                    table,
                    columns,
                    label: format!("{}.{}", relation.namespace, relation.name),
                },
            );
        }
        &self.mapped[&relation.oid]
    }

    /// A tuple as a row of planned table `t`: `Ok(None)` if some value is an
    /// unchanged TOASTed one the message does not carry.
    fn row(&self, t: usize, columns: &[Option<usize>], tuple: &[Datum]) -> Result<Option<Row>, String> {
        let table = &self.plan.tables[t];
        // Copied into PostgreSQL: a value ferry cannot read travels as its text.
        let keep_text = table.plugin.is_none() && self.settings.target.url.engine() == Engine::Postgres;
        let mut row = Vec::with_capacity(columns.len());
        for (column, at) in table.source.columns.iter().zip(columns) {
            let at = at.ok_or_else(|| format!("the stream's {} has no column {}", table.source.name, column.name))?;
            row.push(match tuple.get(at) {
                None | Some(Datum::Null) => Value::Null,
                Some(Datum::Unchanged) => return Ok(None),
                Some(Datum::Binary(_)) => return Err(format!("column {} arrived in binary format", column.name)),
                Some(Datum::Text(text)) => match decode_pg_text(&column.kind, &column.sql_type, text) {
                    Ok(v) => v,
                    Err(_) if keep_text => {
                        Value::Unsupported { type_name: column.sql_type.clone(), text: text.clone() }
                    }
                    Err(e) => return Err(format!("column {}: {e}", column.name)),
                },
            });
        }
        Ok(Some(row))
    }

    /// The key values (source key order) in a tuple of planned table `t`.
    fn key(&self, t: usize, columns: &[Option<usize>], tuple: &[Datum]) -> Result<Row, String> {
        let def = &self.plan.tables[t].source;
        def.primary_key
            .iter()
            .map(|&i| {
                let column = &def.columns[i];
                match columns[i].and_then(|at| tuple.get(at)) {
                    Some(Datum::Text(text)) => decode_pg_text(&column.kind, &column.sql_type, text)
                        .or_else(|_| Ok(Value::Unsupported { type_name: column.sql_type.clone(), text: text.clone() })),
                    other => Err(format!("key column {} is {other:?} in the change", column.name)),
                }
            })
            .collect()
    }

    /// The row of planned table `t` with `key` as the source holds it now.
    /// (Once its transaction `xid` is visible.)
    async fn read_back(&mut self, t: usize, key: &Row, xid: u32) -> anyhow::Result<Op> {
        self.reread().await?.wait_visible(xid).await?;
        let op = self.read_now(t, key).await?;
        if matches!(op, Op::Upsert { .. }) {
            // Counted when the read completed the change.
            metrics::counter!(crate::daemon::names::TOAST_REREADS).increment(1);
            self.report.toast_rereads += 1;
        }
        Ok(op)
    }

    /// The source connection that reads rows and definitions again (opened
    /// on first use, and again after a reconnect).
    async fn reread(&mut self) -> anyhow::Result<&mut dyn RowSource> {
        if self.reread.is_none() {
            self.reread = Some(engines::open_row_source(&self.settings.source.url, "source").await?);
        }
        Ok(self.reread.as_mut().expect("connected above").as_mut())
    }

    /// The row of planned table `t` with `key` as the source holds it now:
    /// an upsert, or a delete if it is gone.
    async fn read_now(&mut self, t: usize, key: &Row) -> anyhow::Result<Op> {
        let def = self.plan.tables[t].source.clone();
        let page = self.reread().await?.read_keys(&def, std::slice::from_ref(key)).await?;
        let (row, unreadable) = (page.rows.into_iter().next(), page.unreadable.into_iter().next());
        Ok(match (row, unreadable) {
            (Some(row), _) => Op::Upsert { row, update: true },
            (None, Some(dead)) => Op::Dead { kind: DeadLetterKind::Extract, reason: dead.reason },
            // Deleted since: its delete follows in the stream.
            (None, None) => Op::Delete { key: key.clone(), old: None },
        })
    }

    /// The plugin instance of planned table `t`, told its schema.
    fn transformer(&mut self, t: usize) -> anyhow::Result<&mut TableTransformer> {
        if !self.transformers.contains_key(&t) {
            let table = &self.plan.tables[t];
            let plugin = table.plugin.as_ref().expect("a plugin table");
            let mut instance = tokio::task::block_in_place(|| plugin.instantiate())?;
            tokio::task::block_in_place(|| instance.describe(&table.source))?;
            self.transformers.insert(t, instance);
        }
        Ok(self.transformers.get_mut(&t).expect("inserted above"))
    }

    /// The index (in `targets`) of planned table `t`'s output named `name`.
    fn output(&self, t: usize, name: &str) -> Option<usize> {
        self.outputs[t].iter().copied().find(|&i| {
            let def = &self.targets[i];
            def.name.name == name || def.name.to_string() == name
        })
    }
}

#[async_trait::async_trait]
impl Applier for TablesApplier<'_> {
    type Item = Change;

    async fn receive(
        &mut self,
        relations: &Relations,
        message: Message,
        commit: u64,
        xid: u32,
        seq: &mut u32,
        out: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        if let Message::Ddl(content) = &message {
            *seq += 1;
            let position = Position { commit, lsn: 0, seq: *seq };
            if self.position.is_none_or(|c| position > c) {
                self.captured(content, position, out)?;
            }
            return Ok(());
        }
        // (relation, what, old tuple, new tuple); whether the old tuple is
        // the whole row (REPLICA IDENTITY FULL) or its key only.
        let mut whole_old = false;
        let (oids, what, old, new): (Vec<u32>, &'static str, Option<Vec<Datum>>, Option<Vec<Datum>>) = match message {
            Message::Insert { relation, new } => (vec![relation], "insert", None, Some(new)),
            Message::Update { relation, old, new } => {
                // Unchanged TOASTed values: a full old row carries them.
                let mut new = new;
                if let Some((false, full)) = &old {
                    for (value, previous) in new.iter_mut().zip(full) {
                        if *value == Datum::Unchanged {
                            *value = previous.clone();
                        }
                    }
                }
                (vec![relation], "update", old.map(|(_, o)| o), Some(new))
            }
            Message::Delete { relation, old, key_only } => {
                whole_old = !key_only;
                (vec![relation], "delete", Some(old), None)
            }
            Message::Truncate { relations, .. } => (relations, "truncate", None, None),
            _ => return Ok(()),
        };
        for oid in oids {
            *seq += 1;
            let position = Position { commit, lsn: 0, seq: *seq };
            if self.position.is_some_and(|c| position <= c) {
                self.report.stream.skipped_replayed += 1;
                continue;
            }
            let Some(relation) = relations.get(oid) else {
                anyhow::bail!("the stream used relation {oid} before describing it");
            };
            if super::sync::Watch::is_checkpoints(relation) {
                // Published for conflict detection only (see `observe`).
                *seq -= 1;
                if let (Some(watch), Some(new)) = (self.watch.as_mut(), &new) {
                    watch.observe(relation, new);
                }
                continue;
            }
            if let Some(t) = self.mapping(relation).table {
                self.written(commit, t);
                if self.blocked.contains(&t) {
                    // Behind a pause: read again once it is resolved.
                    continue;
                }
                // No allocation: this runs for every change.
                let columns = relation.columns.iter().map(|c| (c.name.as_str(), c.type_oid));
                let same = match &self.versions[t] {
                    Some(version) => version.matches(columns),
                    None => columns.map(|c| c.0).eq(self.plan.tables[t].source.columns.iter().map(|c| c.name.as_str())),
                };
                if !same {
                    // The columns changed without a captured statement.
                    self.relation_changed(t, relation, position, out).await?;
                    if self.blocked.contains(&t) {
                        continue;
                    }
                }
            }
            let mapped = self.mapping(relation);
            let (table, columns, label) = (mapped.table, Arc::clone(&mapped.columns), mapped.label.clone());
            let out_def = table.and_then(|t| self.outputs[t].first().copied());
            let Some(t) = table else {
                let name =
                    crate::db::TableName { schema: Some(relation.namespace.clone()), name: relation.name.clone() };
                if self.keyless_new.contains(&name) {
                    let reason = format!(
                        "the source created table {label}, which source.include brings into the pipeline, without \
                         a primary key, and wrote rows into it: a stream applies changes by key. Stop ferry sync, \
                         then leave the table out (source.exclude) or give it a primary key and load it again \
                         (`ferry sync --teardown`, then `ferry sync`)"
                    );
                    let pause = evolve::Pause { reason, until: evolve::Until::Restart };
                    out.push(Change::at(position, None, label.clone(), what, Op::Pause(Box::new(pause))));
                    continue;
                }
                if self.left.contains(&name)
                    || self.selection.as_ref().is_some_and(|s| TableSelection::matches(&s.exclude, &name))
                {
                    // Published when it was made (`include` matched it),
                    // left out by the user since.
                    self.report.stream.skipped_excluded += 1;
                    continue;
                }
                let reason = format!(
                    "table {label} is published but not in the pipeline; add it to [[tables]] or source.include \
                     (and load it), or drop it from the publication"
                );
                out.push(Change::at(position, None, label, what, Op::Dead { kind: DeadLetterKind::Extract, reason }));
                continue;
            };
            let dead = |reason: String| Op::Dead { kind: DeadLetterKind::Extract, reason };
            let seen = self.watch.as_ref().map(|w| w.seen_until);
            let change = |key: Option<&Row>, what: &'static str, op: Op| Change {
                position: Some(position),
                table: Some(t),
                label: label.clone(),
                key: key.map(|k| Key::of_values(k)),
                what,
                op,
                seen,
                out: out_def,
                replay: None,
            };
            if what == "truncate" {
                out.push(change(None, what, Op::Truncate));
                continue;
            }
            if let Some(new) = &new {
                let key = match self.key(t, &columns, new) {
                    Ok(key) => key,
                    Err(reason) => {
                        out.push(change(None, what, dead(reason)));
                        continue;
                    }
                };
                // A key change: the old key's row goes first.
                if let Some(old) = &old
                    && let Ok(old_key) = self.key(t, &columns, old)
                    && old_key != key
                {
                    let op = Op::Delete { key: old_key.clone(), old: None };
                    out.push(change(Some(&old_key), "update (old key)", op));
                }
                let op = match self.row(t, &columns, new) {
                    Ok(Some(row)) => Op::Upsert { row, update: what == "update" },
                    Ok(None) => self.read_back(t, &key, xid).await?,
                    Err(reason) => dead(reason),
                };
                out.push(change(Some(&key), what, op));
            } else if let Some(old) = &old {
                match self.key(t, &columns, old) {
                    Ok(key) => {
                        let old = if whole_old { self.row(t, &columns, old).ok().flatten() } else { None };
                        out.push(change(Some(&key), what, Op::Delete { key: key.clone(), old }))
                    }
                    Err(reason) => out.push(change(None, what, dead(reason))),
                }
            }
        }
        Ok(())
    }

    async fn apply(&mut self, items: &mut Vec<Change>, source_commit_micros: Option<i64>) -> anyhow::Result<bool> {
        let done = self.apply_items(items, source_commit_micros).await?;
        if done {
            // Once the target has every step received so far.
            self.replay_dead_letters().await?;
            self.resync_step().await?;
        }
        Ok(done)
    }

    async fn reconnect(&mut self) -> anyhow::Result<Option<Position>> {
        self.target = engines::open_row_target(self.settings).await?;
        self.mark_origin().await?;
        self.quiet_triggers().await?;
        // Its source connection may be gone with the stream's.
        self.reread = None;
        self.resyncing = None;
        self.position = self.target.stream_position(&self.settings.pipeline).await?;
        self.reset_versions().await?;
        self.blocked.extend(self.holds.keys().copied());
        Ok(self.position)
    }

    async fn idle(&mut self) -> anyhow::Result<()> {
        self.between().await?;
        self.replay_dead_letters().await?;
        self.resync_step().await
    }

    fn observe(&mut self, relations: &Relations, message: &Message) -> bool {
        let (Message::Insert { relation, new } | Message::Update { relation, new, .. }) = message else {
            return false;
        };
        let Some(relation) = relations.get(*relation).filter(|r| super::sync::Watch::is_checkpoints(r)) else {
            return false;
        };
        if let Some(watch) = self.watch.as_mut() {
            watch.observe(relation, new);
        }
        true
    }

    fn report(&mut self) -> &mut SyncReport {
        &mut self.report
    }
}

impl TablesApplier<'_> {
    /// Applies a group of received changes: a target transaction per
    /// segment (a schema change begins one), then the pause it ends with.
    async fn apply_items(
        &mut self,
        items: &mut Vec<Change>,
        source_commit_micros: Option<i64>,
    ) -> anyhow::Result<bool> {
        self.between().await?;
        if items.is_empty() {
            self.store_seen().await?;
            return Ok(true);
        }
        let mut items = std::mem::take(items);
        // A table that can wait alone is held; the others go on.
        let holdable: Vec<usize> = (0..items.len())
            .filter(|&i| match (&items[i].op, items[i].table) {
                (Op::Pause(pause), Some(t)) => self.holdable(t, pause, items[i].position, &items),
                _ => false,
            })
            .collect();
        for i in holdable {
            let Op::Pause(pause) = std::mem::replace(&mut items[i].op, Op::Truncate) else { unreachable!() };
            self.hold_table(items[i].table.expect("a table's pause"), &pause).await;
            items[i].op = Op::Hold(pause);
        }
        // What follows a pause is read again once it is resolved.
        let pause = items.iter().position(|i| matches!(i.op, Op::Pause(_))).map(|at| {
            let mut rest = items.split_off(at);
            rest.swap_remove(0)
        });
        // A schema change begins a target transaction of its own: the
        // changes before it commit as they were.
        while !items.is_empty() {
            let boundary = |i: &Change| matches!(i.op, Op::Schema(_) | Op::Types(_));
            let cut = match items[0].op {
                Op::Types(_) => 1,
                _ => items.iter().skip(1).position(boundary).map_or(items.len(), |p| p + 1),
            };
            let rest = items.split_off(cut);
            match self.apply_segment(items, source_commit_micros).await? {
                evolve::Segment::Applied => {}
                evolve::Segment::Fatal => return Ok(false),
                evolve::Segment::Refused(refused) => {
                    let pause = self.refused_pause(&refused);
                    return self.pause(pause).await;
                }
            }
            items = rest;
        }
        match pause.map(|p| p.op) {
            Some(Op::Pause(pause)) => self.pause(*pause).await,
            _ => Ok(true),
        }
    }

    /// Applies `items` (whole transactions, at most one schema change,
    /// first) in one target transaction.
    async fn apply_segment(
        &mut self,
        items: Vec<Change>,
        source_commit_micros: Option<i64>,
    ) -> anyhow::Result<evolve::Segment> {
        let mut items = items;
        if let Some(Change { table: Some(t), op: Op::Schema(step), .. }) = items.first_mut() {
            // A plugin table told its new shape transforms the rows after it.
            if let Some(transformer) = step.transformer.take() {
                self.transformers.insert(*t, transformer);
            }
            self.settle(step).await?;
        }
        // Plugin tables: their upserts transformed in one call per table.
        let mut outcomes: HashMap<usize, std::vec::IntoIter<RowOutcome>> = HashMap::new();
        let mut by_table: HashMap<usize, Vec<Row>> = HashMap::new();
        for item in &items {
            if let (Some(t), Op::Upsert { row, .. }) = (item.table, &item.op)
                && self.plan.tables[t].plugin.is_some()
            {
                by_table.entry(t).or_default().push(row.clone());
            }
        }
        for (t, rows) in by_table {
            let name = self.plan.tables[t].source.name.to_string();
            let transformer = self.transformer(t)?;
            let result = tokio::task::block_in_place(|| transformer.transform_batch(&name, &rows))?;
            // A shadow version (`deploy --shadow`) sees the same rows; with
            // none running, nothing more happens on the hot path.
            if !self.swapper.shadows(t) {
                outcomes.insert(t, result.into_iter());
                continue;
            }
            let (source, targets, outputs) = (&self.plan.tables[t].source, &self.targets, &self.outputs[t]);
            let key = |row: &Row| Key::of(source, row).label();
            let columns = |table: &str| {
                let def =
                    outputs.iter().map(|&o| &targets[o]).find(|d| d.name.name == table || d.name.to_string() == table);
                def.map(|d| d.columns.iter().map(|c| c.name.clone()).collect())
            };
            tokio::task::block_in_place(|| self.swapper.shadow(t, &name, &rows, &result, key, columns));
            outcomes.insert(t, result.into_iter());
        }
        let mut batch =
            RowChangeBatch { source_commit_micros, ..self.batch(self.watch.as_ref().map(|w| w.seen_until)) };
        let (mut upserts, mut deletes, mut truncates) = (0u64, 0u64, 0u64);
        let mut versions = Vec::new();
        for item in items {
            if let Some(at) = item.position {
                batch.next = Some(batch.next.map_or(at, |p| p.max(at)));
            }
            if let Some(replayed) = &item.replay {
                batch.replayed.push(replayed.clone());
            }
            let origin = batch.origins.len();
            let this = item.origin();
            batch.origins.push(this.clone());
            let dead = |kind: DeadLetterKind, reason: String| StreamDeadLetter { origin: this.clone(), kind, reason };
            let Some(t) = item.table else {
                match item.op {
                    Op::Dead { kind, reason } => batch.dead.push(dead(kind, reason)),
                    Op::Types(statements) => batch.ddl.extend(statements),
                    _ => {}
                }
                continue;
            };
            let seen_until = item.seen;
            let mut write = |table: usize, change: RowChange| {
                match &change {
                    RowChange::Upsert(_) => upserts += 1,
                    RowChange::Delete(_) => deletes += 1,
                    RowChange::Truncate => truncates += 1,
                    RowChange::Alter(_) => {}
                }
                batch.writes.push(ChangeWrite { table, change, origin, seen_until });
            };
            let copy = self.plan.tables[t].plugin.is_none();
            match item.op {
                Op::Dead { kind, reason } => batch.dead.push(dead(kind, reason)),
                Op::Truncate if copy => write(item.out.unwrap_or(self.outputs[t][0]), RowChange::Truncate),
                Op::Truncate => {
                    for &o in &self.outputs[t] {
                        write(o, RowChange::Truncate);
                    }
                }
                Op::Upsert { row, .. } if copy => write(item.out.unwrap_or(self.outputs[t][0]), RowChange::Upsert(row)),
                Op::Delete { key, .. } if copy => write(item.out.unwrap_or(self.outputs[t][0]), RowChange::Delete(key)),
                Op::Schema(step) => {
                    if let Some(before) = step.before {
                        step.edits.into_iter().for_each(|edit| write(before, RowChange::Alter(edit)));
                    }
                    // Under the name the table has at the step (a rename
                    // stores its old name's end and its new name's start).
                    if step.resync {
                        batch.resyncs.push(item.label.clone());
                    }
                    // (`ferry apply` knows no catalog numbers: no versions.)
                    if let (Some(at), true) = (item.position, self.versions[t].is_some()) {
                        versions.push((item.label.clone(), at, step.version));
                    }
                }
                Op::Pause(_) => unreachable!("a pause ends the items applied"),
                Op::Hold(pause) => batch.holds.push((item.label.clone(), pause.reason, pause.until.to_json())),
                Op::Types(_) => unreachable!("types name no table"),
                Op::Upsert { ref row, update } => {
                    let outcome = outcomes.get_mut(&t).and_then(Iterator::next).expect("one outcome per upsert");
                    let (refused, rows) = match outcome {
                        RowOutcome::Rows(rows) => (None, rows),
                        RowOutcome::Rejected(reason) => {
                            (Some((DeadLetterKind::Reject, format!("plugin rejected the row: {reason}"))), Vec::new())
                        }
                        RowOutcome::Trapped(reason) => (Some((DeadLetterKind::Trap, reason)), Vec::new()),
                        RowOutcome::Fatal(reason) => {
                            self.report.stream.fatal = Some(format!(
                                "plugin {} fatal on row {} of {}: {reason}",
                                self.plan.tables[t].producer().chars().take(12).collect::<String>(),
                                item.key.as_ref().map_or_else(String::new, Key::label),
                                item.label
                            ));
                            return Ok(evolve::Segment::Fatal);
                        }
                    };
                    let rows = match refused {
                        None => rows,
                        Some((kind, reason)) => {
                            // A dead letter keeps the source row.
                            let row = crate::keyset::row_json(&self.plan.tables[t].source, row);
                            batch.dead.push(StreamDeadLetter { origin: this.with_row(row), kind, reason });
                            // The last good version stays (explained by this
                            // dead letter) or goes, as `target.on_reject` says.
                            if update && self.settings.on_reject == OnReject::Delete {
                                match self.plugin_keys(t, &item, &mut batch.dead)? {
                                    Some(keys) => {
                                        keys.into_iter().for_each(|(o, key)| write(o, RowChange::Delete(key)))
                                    }
                                    None if self.report.stream.fatal.is_some() => return Ok(evolve::Segment::Fatal),
                                    None => {}
                                }
                            }
                            continue;
                        }
                    };
                    let mut placed = Vec::with_capacity(rows.len());
                    let mut bad = None;
                    for (name, values) in rows {
                        match self.output(t, &name) {
                            Some(o) if values.len() == self.targets[o].columns.len() => placed.push((o, values)),
                            Some(o) => {
                                bad = Some(format!(
                                    "the plugin wrote {} values for table {name}, which has {} columns",
                                    values.len(),
                                    self.targets[o].columns.len()
                                ))
                            }
                            None => {
                                bad =
                                    Some(format!("the plugin wrote a row for table {name:?}, which it did not declare"))
                            }
                        }
                    }
                    if let Some(reason) = bad {
                        let row = crate::keyset::row_json(&self.plan.tables[t].source, row);
                        batch.dead.push(StreamDeadLetter {
                            origin: this.with_row(row),
                            kind: DeadLetterKind::Reject,
                            reason,
                        });
                        continue;
                    }
                    if update {
                        // The rows the old version made and the new one does not.
                        let keys = match self.plugin_keys(t, &item, &mut batch.dead)? {
                            Some(keys) => keys,
                            None if self.report.stream.fatal.is_some() => return Ok(evolve::Segment::Fatal),
                            None => continue,
                        };
                        for (o, key) in keys {
                            let def = &self.targets[o];
                            let made_again = key.len() == def.primary_key.len()
                                && placed.iter().any(|(p, v)| *p == o && Key::of(def, v) == Key::of_values(&key));
                            if !made_again {
                                write(o, RowChange::Delete(key));
                            }
                        }
                    }
                    for (o, values) in placed {
                        write(o, RowChange::Upsert(values));
                    }
                }
                Op::Delete { .. } => match self.plugin_keys(t, &item, &mut batch.dead)? {
                    Some(keys) => {
                        for (o, key) in keys {
                            write(o, RowChange::Delete(key));
                        }
                    }
                    None if self.report.stream.fatal.is_some() => return Ok(evolve::Segment::Fatal),
                    None => {}
                },
            }
        }
        batch.versions = versions;
        let done = match self.target.apply_row_changes(&batch).await {
            Ok(done) => done,
            Err(e) => match e.downcast::<crate::sink::SchemaRefused>() {
                Ok(refused) => return Ok(evolve::Segment::Refused(refused)),
                Err(e) => return Err(e),
            },
        };
        self.stored_seen = batch.seen_until;
        let (refused, conflicts) = (done.refused, done.conflicts);
        self.position = batch.next;
        use crate::daemon::names;
        metrics::counter!(names::CHANGES_APPLIED, "op" => "upsert").increment(upserts);
        metrics::counter!(names::CHANGES_APPLIED, "op" => "delete").increment(deletes);
        metrics::counter!(names::CHANGES_APPLIED, "op" => "truncate").increment(truncates);
        metrics::counter!(names::DEAD_LETTERS).increment(batch.dead.len() as u64 + refused);
        metrics::counter!(names::TRANSACTIONS).increment(1);
        crate::daemon::health().beat("streaming");
        let stream = &mut self.report.stream;
        // Refused writes count as dead letters, not as applied.
        stream.upserts += upserts;
        stream.deletes += deletes;
        stream.truncates += truncates;
        stream.dead_lettered += batch.dead.len() as u64 + refused;
        stream.upserts = stream.upserts.saturating_sub(refused);
        // Conflicting writes are recorded, not applied.
        stream.conflicts += conflicts;
        stream.upserts = stream.upserts.saturating_sub(conflicts - done.conflicting_deletes);
        stream.deletes = stream.deletes.saturating_sub(done.conflicting_deletes);
        if conflicts > 0 {
            metrics::counter!(names::CONFLICTS).increment(conflicts);
            tracing::warn!(conflicts, "changes written concurrently on both sides: recorded in ferry.conflicts");
        }
        stream.transactions += 1;
        stream.checkpoint.position = self.position;
        stream.checkpoint.streaming = self.position.is_some();
        Ok(evolve::Segment::Applied)
    }

    /// The target rows the plugin made of `item`'s source row (its
    /// `target-keys`), as (target index, key). `None`: dead-lettered, or
    /// the plugin said `fatal` (then `report.stream.fatal` is set).
    fn plugin_keys(
        &mut self,
        t: usize,
        item: &Change,
        dead: &mut Vec<StreamDeadLetter>,
    ) -> anyhow::Result<Option<Vec<(usize, Row)>>> {
        let key: Row = match &item.op {
            Op::Delete { key, .. } => key.clone(),
            Op::Upsert { row, .. } => self.plan.tables[t].source.primary_key.iter().map(|&i| row[i].clone()).collect(),
            _ => return Ok(None),
        };
        let name = self.plan.tables[t].source.name.to_string();
        let transformer = self.transformer(t)?;
        let mut outcome = tokio::task::block_in_place(|| transformer.target_keys(&name, &key))?;
        // A plugin that cannot map keys (a transform-user plugin without
        // `user-key`) still names the rows an old row made: transform it.
        if let (RowOutcome::Rejected(_), Op::Delete { old: Some(old), .. }) = (&outcome, &item.op) {
            let made = tokio::task::block_in_place(|| transformer.transform_batch(&name, std::slice::from_ref(old)))?;
            if let Some(RowOutcome::Rows(rows)) = made.into_iter().next() {
                let keys = rows
                    .into_iter()
                    .filter_map(|(table, values)| {
                        let o = self.output(t, &table)?;
                        Some((table, self.targets[o].primary_key.iter().map(|&i| values[i].clone()).collect()))
                    })
                    .collect();
                outcome = RowOutcome::Rows(keys);
            }
        }
        let refuse = |kind, reason: String| StreamDeadLetter { origin: item.origin(), kind, reason };
        match outcome {
            RowOutcome::Rows(keys) => {
                let mut found = Vec::with_capacity(keys.len());
                for (table, key) in keys {
                    match self.output(t, &table) {
                        Some(o) if !key.is_empty() && key.len() <= self.targets[o].primary_key.len() => {
                            found.push((o, key))
                        }
                        _ => {
                            dead.push(refuse(
                                DeadLetterKind::Reject,
                                format!("target-keys named {table:?} with {} key values, which is not a key of a declared output table", key.len()),
                            ));
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(found))
            }
            RowOutcome::Rejected(reason) => {
                dead.push(refuse(DeadLetterKind::Reject, format!("target-keys: {reason}")));
                Ok(None)
            }
            RowOutcome::Trapped(reason) => {
                dead.push(refuse(DeadLetterKind::Trap, reason));
                Ok(None)
            }
            RowOutcome::Fatal(reason) => {
                self.report.stream.fatal = Some(format!(
                    "plugin fatal on the keys of row {} of {name}: {reason}",
                    item.key.as_ref().map_or_else(String::new, Key::label)
                ));
                Ok(None)
            }
        }
    }
}

/// Whether `def` is the table `schema.name` a stream names (an
/// unqualified name on either side matches any schema).
fn names_table(def: &TableDef, schema: Option<&str>, name: &str) -> bool {
    def.name.name == name && (schema.is_none() || def.name.schema.as_deref().is_none_or(|d| Some(d) == schema))
}

/// `ferry apply` of a many-table pipeline: Debezium events of any of its
/// tables (`source.schema`/`source.table` name it), decoded with their
/// schema's logical types, applied through the same path as `ferry sync`
/// (plugins, order, one target transaction per group of whole source
/// transactions). The tables' definitions come from `source.url`'s catalog.
pub async fn apply(
    settings: &Settings,
    selection: &TableSelection,
    input: &mut dyn super::input::EventInput,
    options: super::apply::ApplyOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ApplyReport> {
    use super::input::Next;
    use std::sync::atomic::Ordering;
    let (plan, target, position, report, swapper, _) = open_stream(settings, selection).await?;
    if let Some(missing) = plan.tables.iter().flat_map(|t| &t.outputs).find(|o| o.create) {
        return Err(crate::error::Error::contract(format!(
            "target table {} does not exist in {}: run `ferry migrate` (or load the Debezium snapshot into \
             existing tables) first",
            missing.def.name, settings.target.url
        )));
    }
    let mut applier = TablesApplier::new(settings, plan, target, position, report, swapper);
    applier.stop = Arc::clone(&stop);
    applier.start_journal().await?;
    let mut pending: Vec<Change> = Vec::new();
    let (mut current_tx, mut group_last, mut last_seen) = (None, None, None);
    let mut positions = super::debezium::Positions::after(position);
    macro_rules! flush_and_ack {
        () => {
            if !applier.apply(&mut pending, None).await? {
                break;
            }
            if let Some(token) = group_last.take() {
                input.commit(token).await?;
            }
        };
    }
    while !stop.load(Ordering::Relaxed) {
        let (line, token) = match input.next().await? {
            Next::End => break,
            Next::Idle => {
                flush_and_ack!();
                continue;
            }
            Next::Item(line, token) => (line, token),
        };
        applier.report.stream.lines += 1;
        last_seen = Some(token);
        let event = if line.trim().is_empty() { Ok(None) } else { super::debezium::envelope(&line) };
        let event = match event {
            Ok(None) => {
                applier.report.stream.tombstones += 1;
                if pending.is_empty() {
                    input.commit(token).await?;
                }
                continue;
            }
            Ok(Some(e)) => e,
            Err((position, snapshot, reason)) => {
                let position = positions.effective(position, snapshot);
                if super::debezium::replayed(position, applier.position, applier.position.is_some()) {
                    applier.report.stream.skipped_replayed += 1;
                    continue;
                }
                pending.push(Change {
                    position,
                    table: None,
                    label: "?".into(),
                    key: None,
                    what: "event",
                    op: Op::Dead { kind: DeadLetterKind::Extract, reason },
                    seen: None,
                    out: None,
                    replay: None,
                });
                group_last = Some(token);
                continue;
            }
        };
        let position = positions.effective(event.position, event.snapshot);
        let replayed = super::debezium::replayed(position, applier.position, applier.position.is_some());
        if replayed {
            applier.report.stream.skipped_replayed += 1;
            if pending.is_empty() {
                input.commit(token).await?;
            }
            continue;
        }
        if pending.len() >= options.group_size && (event.tx_id.is_none() || event.tx_id != current_tx) {
            flush_and_ack!();
        }
        current_tx = event.tx_id;
        let changes = loop {
            match applier.debezium_change(&event, position, options).await? {
                Decoded::Changes(changes) => break Some(changes),
                // The table's new shape cannot be applied yet: what came
                // before is applied, then the event waits for the fix.
                Decoded::Hold(pause) => {
                    if !applier.apply(&mut pending, None).await? {
                        break None;
                    }
                    if let Some(token) = group_last.take() {
                        input.commit(token).await?;
                    }
                    if !applier.hold(*pause).await? {
                        break None;
                    }
                }
            }
        };
        let Some(changes) = changes else { break };
        pending.extend(changes);
        group_last = Some(token);
    }
    if applier.report.stream.fatal.is_none() {
        applier.apply(&mut pending, None).await?;
        if let Some(token) = last_seen.filter(|_| applier.report.stream.fatal.is_none()) {
            input.commit(token).await?;
        }
    }
    applier.swapper.flush(applier.target.as_mut()).await?;
    applier.end_journal().await?;
    applier.report.stream.checkpoint.position = applier.position;
    applier.report.stream.toast_rereads = applier.report.toast_rereads;
    Ok(applier.report.stream)
}

/// What a Debezium event became.
enum Decoded {
    /// Its change, after the step its table's new shape takes, if any.
    Changes(Vec<Change>),
    /// Its table's new shape cannot be applied until this is resolved.
    Hold(Box<evolve::Pause>),
}

impl TablesApplier<'_> {
    /// What one Debezium event asks of the pipeline.
    async fn debezium_change(
        &mut self,
        event: &super::debezium::Envelope,
        position: Option<Position>,
        options: super::apply::ApplyOptions,
    ) -> anyhow::Result<Decoded> {
        let mut step = None;
        if let (Some(t), Some(after)) =
            (self.debezium_table(event), event.envelope.get("after").and_then(|a| a.as_object()))
            && (after.len() != self.plan.tables[t].source.columns.len()
                || !self.plan.tables[t].source.columns.iter().all(|c| after.contains_key(&c.name)))
        {
            let fields: Vec<String> = super::events::field_order(event.schema.as_ref(), "after")
                .filter(|names| names.len() == after.len())
                .unwrap_or_else(|| after.keys().cloned().collect());
            match self.debezium_shape(t, &fields, position).await? {
                Ok(change) => step = Some(change),
                Err(pause) => return Ok(Decoded::Hold(Box::new(pause))),
            }
        }
        let change = self.debezium_row(event, position, options).await?;
        Ok(Decoded::Changes(step.into_iter().chain([change]).collect()))
    }

    /// The planned table a Debezium event names.
    fn debezium_table(&self, event: &super::debezium::Envelope) -> Option<usize> {
        let (schema_name, name) = event.table.clone().unwrap_or((None, String::new()));
        // An event that names no table (a bare envelope without `source`) is
        // the table's when the pipeline has one.
        match (&event.table, self.plan.tables.len()) {
            (None, 1) => Some(0),
            _ => self.plan.tables.iter().position(|t| names_table(&t.source, schema_name.as_deref(), &name)),
        }
    }

    /// The row change of one Debezium event, decoded with its table's
    /// columns.
    async fn debezium_row(
        &mut self,
        event: &super::debezium::Envelope,
        position: Option<Position>,
        options: super::apply::ApplyOptions,
    ) -> anyhow::Result<Change> {
        let (schema_name, name) = event.table.clone().unwrap_or((None, String::new()));
        let label = match &schema_name {
            Some(s) => format!("{s}.{name}"),
            None => name.clone(),
        };
        let table = self.debezium_table(event);
        let what: &'static str = match event.op.as_str() {
            "r" => "read",
            "c" => "create",
            "u" => "update",
            "d" => "delete",
            "t" => "truncate",
            _ => "event",
        };
        let mut change = Change {
            position,
            table,
            label: label.clone(),
            key: None,
            what,
            op: Op::Truncate,
            seen: None,
            out: None,
            replay: None,
        };
        let dead = |reason: String| Op::Dead { kind: DeadLetterKind::Extract, reason };
        let Some(t) = table else {
            change.op = dead(format!(
                "table {label:?} is not in the pipeline; add it to [[tables]] or source.include, or filter it out \
                 of the stream"
            ));
            return Ok(change);
        };
        change.out = self.outputs[t].first().copied();
        let def = self.plan.tables[t].source.clone();
        let side = |field: &str| event.envelope.get(field).and_then(serde_json::Value::as_object);
        let unit = options.integer_time;
        match event.op.as_str() {
            "t" => change.op = Op::Truncate,
            "r" | "c" | "u" => {
                let Some(after) = side("after") else {
                    change.op = dead(format!("op `{}` without `after`", event.op));
                    return Ok(change);
                };
                let fields = super::events::field_schemas(event.schema.as_ref(), "after");
                let key = match super::events::key_of(&def, after, &fields, unit) {
                    Ok(key) => key,
                    Err(reason) => {
                        change.op = dead(reason);
                        return Ok(change);
                    }
                };
                change.key = Some(Key::of_values(&key));
                let unavailable = after.iter().find(|(_, v)| v.as_str() == Some(super::debezium::UNAVAILABLE));
                change.op = match unavailable {
                    Some(_) if options.reread => self.read_back(t, &key, event.tx_id.map_or(0, |x| x as u32)).await?,
                    Some((column, _)) => dead(format!(
                        "column `{column}` is {} (an unchanged TOASTed value the event does not carry); pass \
                         --reread to read such rows from source.url, or set REPLICA IDENTITY FULL on the source \
                         table, then replay",
                        super::debezium::UNAVAILABLE
                    )),
                    None => match super::events::row_of(&def, after, &fields, unit) {
                        Ok(row) => Op::Upsert { row, update: event.op == "u" },
                        Err(reason) => dead(reason),
                    },
                };
                // A key change: Debezium sends a delete of the old key first.
            }
            "d" => {
                let fields = super::events::field_schemas(event.schema.as_ref(), "before");
                match side("before").map(|before| super::events::key_of(&def, before, &fields, unit)) {
                    Some(Ok(key)) => {
                        change.key = Some(Key::of_values(&key));
                        // A before-image with more than the key (REPLICA
                        // IDENTITY FULL) is the whole old row.
                        let before = side("before").expect("matched above");
                        let key_columns: Vec<&str> = def.key_columns().map(|c| c.name.as_str()).collect();
                        let whole = before.iter().any(|(k, v)| !v.is_null() && !key_columns.contains(&k.as_str()));
                        let old = whole.then(|| super::events::row_of(&def, before, &fields, unit).ok()).flatten();
                        change.op = Op::Delete { key, old };
                    }
                    Some(Err(reason)) => change.op = dead(reason),
                    None => change.op = dead("delete without `before`".into()),
                }
            }
            other => change.op = dead(format!("unknown op `{other}` (want r, c, u, d or t)")),
        }
        Ok(change)
    }
}
