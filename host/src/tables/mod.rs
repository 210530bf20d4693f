//! `ferry migrate` for a pipeline of many tables (`[[tables]]`,
//! `source.include`): every table copied as it is, with no WASM on its path.
//!
//! ```text
//!  plan: source catalog → tables, keys, target names, load order
//!  copy: `workers` tables at a time; per table an extractor (keyset pages
//!        on the whole key) feeding its loader through a bounded channel:
//!        rows + dead letters + table checkpoint, one transaction per page
//!  build: secondary indexes per table once its rows are in, then checks
//!         and foreign keys once every table is (as pgcopydb does)
//! ```
//! Memory is bounded by `workers × (CHANNEL_DEPTH + 2)` pages whatever the
//! number of tables. Each table's checkpoint is its own (the whole encoded
//! key), so after `kill -9` every table resumes exactly after its last
//! committed page.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Keyless, OnConflict};
use crate::control::{RunRecord, RunStatus, Stats, TablePhase, TableProgress};
use crate::db::{Engine, TableName};
use crate::engines::{self, RowTarget};
use crate::keyset::{Key, RowPage};
use crate::migrate::{Ending, MigrateOptions, RunStopped};
use crate::plugin::{RowOutcome, TablePlugin, TableTransformer};
use crate::schema::{NameMap, TableDef, dependency_order};
use crate::settings::{Settings, TableSelection};
use crate::sink::{RowBatch, TableWrite};
use crate::source::RowSource;

pub mod bench;
pub mod diff;
pub mod replay;
pub mod reprocess;
pub mod validate;

/// Pages queued between a table's extractor and its loader.
const CHANNEL_DEPTH: usize = 2;

/// Target size of a page forwarded undecoded (PostgreSQL to PostgreSQL),
/// from the catalog's row-size estimate; at most RAW_PAGE_ROWS rows.
const RAW_PAGE_BYTES: u64 = 4 << 20;
const RAW_PAGE_ROWS: usize = 20_000;

pub use crate::sink::IDENTITY;

/// The pipeline's latest run, which must have completed before `what`
/// (`replaying its dead letters`, `reprocessing its rows`).
pub(crate) async fn completed_run(
    settings: &Settings,
    target: &mut dyn RowTarget,
    what: &str,
) -> anyhow::Result<RunRecord> {
    let run = target.latest_run(&settings.pipeline).await?.ok_or_else(|| {
        crate::error::Error::contract(format!(
            "no run of pipeline {} is recorded in {}",
            settings.pipeline, settings.target.url
        ))
    })?;
    if run.status != crate::control::RunStatus::Completed {
        return Err(crate::error::Error::contract(format!(
            "run {} of pipeline {} is {}: finish it (`ferry migrate`) before {what}",
            run.run_id,
            settings.pipeline,
            run.status.as_str()
        )));
    }
    Ok(run)
}

/// A table the pipeline writes.
#[derive(Debug, Clone)]
pub struct Output {
    /// The target table as ferry writes it.
    pub def: TableDef,
    /// It does not exist: ferry creates it.
    pub create: bool,
}

/// One source table of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    pub source: TableDef,
    /// Where its rows go: for a copy, one table with the source's columns;
    /// for a plugin, the tables it declared (in its own column order).
    pub outputs: Vec<Output>,
    /// `None`: copied as it is, no WASM on the path.
    pub plugin: Option<TablePlugin>,
    pub on_conflict: OnConflict,
}

impl PlannedTable {
    /// The first (for a copy, the only) target table.
    pub fn target(&self) -> &TableDef {
        &self.outputs[0].def
    }

    pub fn target_names(&self) -> String {
        self.outputs.iter().map(|o| o.def.name.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether ferry creates one of its target tables in this attempt.
    pub fn creates(&self) -> bool {
        self.outputs.iter().any(|o| o.create)
    }

    /// Whether ferry made its target tables in this run (this attempt or an
    /// earlier one, as recorded).
    fn made_by_ferry(&self, progress: &HashMap<String, TableProgress>) -> bool {
        progress.get(&self.source.name.to_string()).map_or(self.creates(), |p| p.created)
    }

    /// No key (the plan let it through: `keyless = "ctid"`): copied in
    /// storage order, validated as a multiset of rows.
    pub fn keyless(&self) -> bool {
        self.source.primary_key.is_empty()
    }

    /// What produced the rows: the plugin's SHA-256, or [`IDENTITY`].
    pub fn producer(&self) -> &str {
        self.plugin.as_ref().map_or(IDENTITY, |p| p.sha256())
    }
}

/// What a many-table pipeline will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// In load order (parents before children).
    pub tables: Vec<PlannedTable>,
    pub names: NameMap,
}

/// Resolves the selection against both catalogs. Every problem found is
/// reported at once (a table without a key, a missing column…), with its fix.
pub async fn plan(
    settings: &Settings,
    selection: &TableSelection,
    source: &mut dyn RowSource,
    target: &mut dyn RowTarget,
) -> anyhow::Result<Plan> {
    let target_engine = settings.target.url.engine();
    let mut names: Vec<TableName> = Vec::new();
    for spec in &selection.tables {
        names.push(spec.source.clone());
    }
    if !selection.include.is_empty() {
        for name in source.list_tables().await? {
            if TableSelection::matches(&selection.include, &name)
                && !TableSelection::matches(&selection.exclude, &name)
                && selection.spec(&name).is_none()
            {
                names.push(name);
            }
        }
    }
    let mut problems = Vec::new();
    let mut kind = crate::error::ErrorKind::Contract;
    let mut tables = Vec::new();
    let mut seen_targets: HashMap<TableName, TableName> = HashMap::new();
    for name in names {
        let spec = selection.spec(&name);
        let Some(mut def) = source.describe(&name).await? else {
            problems
                .push(format!("source table {name} does not exist in {}; check [[tables]] name", settings.source.url));
            continue;
        };
        if let Some(key) = spec.and_then(|s| s.key.as_ref()) {
            match chosen_key(&def, key) {
                Ok((indexes, index)) => {
                    def.primary_key = indexes;
                    def.key_index = index;
                }
                Err(e) => {
                    problems.push(format!("table {}: {e}", def.name));
                    continue;
                }
            }
        } else if def.primary_key.is_empty() {
            let keyless = spec.map_or(selection.keyless, |s| s.keyless);
            if keyless == Keyless::Refuse {
                problems.push(format!(
                    "table {} has no primary key: ferry pages, checkpoints and validates by key. Add a primary key, \
                     or name a unique NOT NULL key: [[tables]] name = \"{}\" key = [\"column\", …], or copy it in \
                     storage order into a table holding nothing else: keyless = \"ctid\" (in [[tables]] or [source])",
                    def.name, def.name
                ));
                continue;
            }
            if spec.is_some_and(|s| s.plugin.is_some()) {
                problems.push(format!(
                    "table {} has no primary key and a plugin: a transformed table needs a key (its dead letters \
                     and target keys are named by it); add a primary key or name one: key = [\"column\", …]",
                    def.name
                ));
                continue;
            }
        }
        let target_name = match spec.and_then(|s| s.target.clone()) {
            Some(t) => t,
            None if target_engine == Engine::Sqlite => TableName { schema: None, name: def.name.name.clone() },
            None => def.name.clone(),
        };
        let on_conflict = spec.and_then(|s| s.on_conflict).unwrap_or(settings.on_conflict);
        let plugin = match spec.and_then(|s| s.plugin.clone()) {
            None => None,
            Some(ps) => {
                let loaded = tokio::task::spawn_blocking(move || TablePlugin::load(&ps.path, &ps.options)).await?;
                match loaded {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // A plugin that cannot run at all says so in the exit code.
                        let e = anyhow::Error::from(e);
                        if crate::error::ErrorKind::of(&e) == crate::error::ErrorKind::Plugin {
                            kind = crate::error::ErrorKind::Plugin;
                        }
                        problems.push(format!("table {}: {e}", def.name));
                        continue;
                    }
                }
            }
        };
        // What the table becomes: itself, or the plugin's declared tables.
        let wanted: Vec<TableDef> = match &plugin {
            None => vec![def.for_target(target_name.clone(), target_engine)],
            Some(plugin) => {
                let (p, source_def) = (plugin.clone(), def.clone());
                let declared = tokio::task::spawn_blocking(move || p.instantiate()?.describe(&source_def)).await?;
                match declared {
                    Err(e) => {
                        problems.push(format!("table {}: {e}", def.name));
                        continue;
                    }
                    Ok(declared) => declared
                        .into_iter()
                        .map(|out| {
                            let name = match (&out.name.schema, target_engine) {
                                (_, Engine::Sqlite) => TableName { schema: None, name: out.name.name.clone() },
                                (Some(_), _) => out.name.clone(),
                                (None, _) => {
                                    TableName { schema: target_name.schema.clone(), name: out.name.name.clone() }
                                }
                            };
                            let mut t = out.for_target(name.clone(), target_engine);
                            t.name = name;
                            t
                        })
                        .collect(),
                }
            }
        };
        let mut outputs = Vec::new();
        for wanted in wanted {
            let target_name = wanted.name.clone();
            if let Some(other) = seen_targets.insert(target_name.clone(), def.name.clone()) {
                // Several source tables may merge into one plugin-declared
                // table; a copy needs a table of its own.
                let merging = plugin.is_some()
                    && tables.iter().any(|t: &PlannedTable| t.plugin.is_some() && t.source.name == other);
                if !merging {
                    problems.push(format!(
                        "tables {other} and {} would both be copied into {target_name}; give one a `target` in [[tables]]",
                        def.name
                    ));
                    continue;
                }
            }
            let existing = target.describe(&target_name).await?;
            let already = tables.iter().flat_map(|t| &t.outputs).any(|o| o.def.name == target_name && o.create);
            if let Some(existing) = &existing {
                // A plugin declares its output's types: a target column
                // that cannot hold them would refuse every row.
                let mut mismatches: Vec<String> = Vec::new();
                for c in &wanted.columns {
                    match existing.column_index(&c.name).map(|i| &existing.columns[i]) {
                        None => mismatches.push(format!("column `{}` is missing", c.name)),
                        Some(there)
                            if plugin.is_some()
                                && target_engine == Engine::Postgres
                                && !holds(&there.kind, &c.kind) =>
                        {
                            mismatches.push(format!(
                                "column `{}` has type {} but the plugin writes {:?} values",
                                c.name, there.sql_type, c.kind
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if !mismatches.is_empty() {
                    let what = if plugin.is_some() { "the plugin's output for" } else { "the copy of" };
                    problems.push(format!(
                        "target table {target_name} does not match {what} {}: {}; fix the target table, or drop it \
                         and ferry creates it",
                        def.name,
                        mismatches.join("; ")
                    ));
                    continue;
                }
            }
            outputs.push(Output { def: wanted, create: existing.is_none() && !already });
        }
        if outputs.is_empty() {
            continue;
        }
        tables.push(PlannedTable { source: def, outputs, plugin, on_conflict });
    }
    if !problems.is_empty() {
        return Err(crate::error::Error::raise(
            kind,
            format!("the pipeline's tables cannot be copied:\n  - {}", problems.join("\n  - ")),
        ));
    }
    if tables.is_empty() {
        anyhow::bail!(crate::config::ConfigError::Invalid {
            path: "pipeline".into(),
            message: format!("no source table matches source.include in {}; check the patterns", settings.source.url),
        });
    }
    let map = NameMap(
        tables
            .iter()
            .filter(|t| t.plugin.is_none())
            .map(|t| (t.source.name.clone(), t.target().name.clone()))
            .collect(),
    );
    let defs: Vec<TableDef> = tables.iter().map(|t| t.source.clone()).collect();
    let order = dependency_order(&defs);
    let tables = order.into_iter().map(|i| tables[i].clone()).collect();
    Ok(Plan { tables, names: map })
}

/// Whether a PostgreSQL column of kind `column` holds values of kind
/// `value` as they are: numbers in number columns, times in time columns,
/// anything in a text (or unknown) column; never text into a number.
fn holds(column: &crate::value::Kind, value: &crate::value::Kind) -> bool {
    use crate::value::Kind::*;
    let number = |k: &crate::value::Kind| matches!(k, Int16 | Int32 | Int64 | Float32 | Float64 | Numeric);
    let instant = |k: &crate::value::Kind| matches!(k, Date | Timestamp | TimestampTz);
    match (column, value) {
        (Text | Other, _) | (_, Other) => true,
        (Json, Json | Text) | (Uuid, Uuid | Text) => true,
        (Array(c), Array(v)) => holds(c, v),
        (c, v) if number(c) => number(v),
        (c, v) if instant(c) => instant(v),
        (c, v) => c == v,
    }
}

/// The column indexes of a user-chosen key (columns that exist, are NOT
/// NULL and carry a unique index) and that index (`None` if it is the
/// primary key), else why not.
fn chosen_key(def: &TableDef, key: &[String]) -> Result<(Vec<usize>, Option<String>), String> {
    let mut indexes = Vec::new();
    for name in key {
        let i = def.column_index(name).ok_or_else(|| format!("key column {name} does not exist"))?;
        if def.columns[i].nullable {
            return Err(format!("key column {name} is nullable; a key's columns must be NOT NULL"));
        }
        indexes.push(i);
    }
    if def.primary_key == indexes {
        return Ok((indexes, None));
    }
    let index = def
        .indexes
        .iter()
        .find(|ix| ix.unique && ix.columns.len() == key.len() && key.iter().all(|k| ix.columns.contains(k)));
    let Some(index) = index else {
        return Err(format!(
            "no unique index on ({}): a key must be unique; create one (CREATE UNIQUE INDEX … ON {} ({}))",
            key.join(", "),
            def.name,
            key.join(", ")
        ));
    };
    Ok((indexes, Some(index.name.clone())))
}

/// One table's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub target: String,
    pub phase: TablePhase,
    /// Rows in the source table when the run (re)started.
    pub source_rows: u64,
    pub loaded: u64,
    pub skipped: u64,
    pub filtered: u64,
    pub dead_lettered: u64,
    /// The plugin that ran the table at the end (`None`: copied as it is).
    pub plugin_sha256: Option<String>,
    /// `source_rows == loaded + skipped + filtered + dead_lettered`.
    pub accounted: bool,
}

/// What `ferry migrate` of many tables reports.
#[derive(Debug, Clone, Serialize)]
pub struct TablesReport {
    pub run_id: String,
    pub pipeline: String,
    pub ending: Ending,
    pub resumed: bool,
    pub tables: Vec<TableReport>,
    pub source_rows: u64,
    pub stats: Stats,
    pub filtered: u64,
    pub rows_this_session: u64,
    pub elapsed_seconds: f64,
    pub rows_per_second: f64,
    pub accounted: bool,
    pub message: Option<String>,
}

/// Runs (or resumes) a many-table migration.
pub async fn migrate(
    settings: &Settings,
    selection: &TableSelection,
    options: MigrateOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<TablesReport> {
    migrate_in_snapshot(settings, selection, options, None, stop).await
}

/// [`migrate`], every table read in the exported snapshot `snapshot` when
/// given (`ferry sync`'s initial load: the replication slot's snapshot, so
/// the stream starts exactly where the copy ends).
pub async fn migrate_in_snapshot(
    settings: &Settings,
    selection: &TableSelection,
    options: MigrateOptions,
    snapshot: Option<&str>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<TablesReport> {
    let started = Instant::now();
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    // Nothing is written to the target before the plan holds (missing
    // tables, keys, a plugin that cannot run, a target that does not fit).
    let mut plan = plan(settings, selection, source.as_mut(), target.as_mut()).await?;
    target.ensure_control_tables().await?;
    // A version deployed into this pipeline (`ferry plugin deploy`) is the
    // one its tables run, here as in a stream.
    crate::swap::Swapper::for_migration(settings, &plan).restore(&mut plan, target.as_mut()).await?;
    let target_engine = settings.target.url.engine();

    let latest = target.latest_run(&settings.pipeline).await?;
    let (run, resumed) = match latest {
        // Its checkpoint is one integer key: the one-table path of earlier
        // versions started it, and its pages are not this pipeline's.
        Some(run) if run.status.resumable() && !options.restart && run.last_key.is_some() => {
            return Err(crate::error::Error::contract(format!(
                "run {} of pipeline {} was started by an earlier ferry's one-table path (checkpoint: key {}); \
                 finish it with that version, or start over with `ferry migrate --restart`",
                run.run_id,
                settings.pipeline,
                run.last_key.unwrap_or_default()
            )));
        }
        Some(run) if run.status.resumable() && !options.restart => (run, true),
        Some(run) if run.status == RunStatus::Completed && !options.restart && !options.resume_only => {
            let progress = target.table_progress(&run.run_id).await?;
            let counts = count_all(source.as_mut(), &plan).await?;
            let message =
                format!("run {} already completed; nothing to do (pass --restart to migrate again)", run.run_id);
            return Ok(report(
                &run,
                &plan,
                &progress,
                &counts,
                Ending::AlreadyCompleted,
                false,
                0,
                started,
                Some(message),
            ));
        }
        other => {
            let run = crate::control::start_run(
                target.as_mut(),
                &settings.pipeline,
                other,
                options.resume_only,
                settings.source.url.to_string(),
                format!("{} tables", plan.tables.len()),
                producers(&plan),
            )
            .await?;
            (run, false)
        }
    };
    if resumed {
        target.set_status(&run.run_id, RunStatus::Running, None).await?;
    }
    // Each table is recorded before its target is created, so a crash in
    // between still knows ferry made it (and builds its indexes later).
    let known: HashMap<String, TableProgress> =
        target.table_progress(&run.run_id).await?.into_iter().map(|p| (p.table.clone(), p)).collect();
    for table in &plan.tables {
        let name = table.source.name.to_string();
        target.start_table(&run.run_id, &name, &table.target_names(), table.made_by_ferry(&known)).await?;
        for output in table.outputs.iter().filter(|o| o.create) {
            target.create_table(&built_later(table, &output.def, target_engine), &plan.names).await?;
        }
    }
    // The journal starts before the run writes anything into a table.
    let outputs: Vec<&TableDef> = plan.tables.iter().flat_map(|t| t.outputs.iter().map(|o| &o.def)).collect();
    crate::undo::begin(settings, target.as_mut(), &run.run_id, &outputs).await?;
    let counts = count_all(source.as_mut(), &plan).await?;
    drop(source);

    let started_tables: HashMap<String, TableProgress> =
        target.table_progress(&run.run_id).await?.into_iter().map(|p| (p.table.clone(), p)).collect();
    // Rows of every table, and those earlier attempts of the run committed.
    let bar = options.progress.then(|| {
        let done = started_tables.values().map(|p| p.stats.extracted).sum();
        crate::migrate::progress_bar(counts.values().sum(), done)
    });
    let outcome = copy_tables(settings, &plan, &run, started_tables, snapshot, stop.clone(), bar.clone()).await;
    if settings.undo_journal {
        // What the run left (SQLite's second copy). When the copy failed,
        // that failure is the run's outcome and is reported as such (it may
        // be a lost connection the run resumes after): the copy's is a
        // warning, and its rollback will need --force.
        match (target.end_undo(&run.run_id).await, &outcome) {
            (Err(e), Ok(_)) => return Err(e),
            (Err(e), Err(_)) => tracing::warn!("recording what run {} left for rollback: {e:#}", run.run_id),
            (Ok(()), _) => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let progress = target.table_progress(&run.run_id).await?;
    let stored = target.latest_run(&settings.pipeline).await?.filter(|r| r.run_id == run.run_id).unwrap_or(run.clone());
    match outcome {
        Ok(rows) => {
            let interrupted = stop.load(Ordering::Relaxed);
            let all_loaded = progress.iter().all(|p| !p.phase.copying());
            let (ending, message) = if interrupted || !all_loaded {
                (Ending::Interrupted, Some("interrupted by signal after the last committed pages".to_string()))
            } else {
                // Every table's rows are in: sequences where the source's
                // stand, then checks and foreign keys.
                advance_sequences(settings, &plan, target.as_mut()).await?;
                for table in plan.tables.iter().filter(|t| created(&progress, t)) {
                    for output in &table.outputs {
                        target.add_constraints(&output.def, &plan.names).await?;
                    }
                }
                for table in &plan.tables {
                    target.set_table_phase(&run.run_id, &table.source.name.to_string(), TablePhase::Done).await?;
                }
                (Ending::Completed, None)
            };
            let status = if ending == Ending::Completed { RunStatus::Completed } else { RunStatus::Interrupted };
            target.set_status(&run.run_id, status, message.as_deref()).await?;
            let progress = target.table_progress(&run.run_id).await?;
            Ok(report(&stored, &plan, &progress, &counts, ending, resumed, rows, started, message))
        }
        Err(e) if e.downcast_ref::<PluginFatal>().is_some() => {
            let message = format!("{e:#}; every committed batch is kept: fix the plugin or the row and run again");
            target.set_status(&run.run_id, RunStatus::Failed, Some(&message)).await?;
            let progress = target.table_progress(&run.run_id).await?;
            Ok(report(&stored, &plan, &progress, &counts, Ending::Fatal, resumed, 0, started, Some(message)))
        }
        Err(e) => {
            let message = format!("{e:#}");
            if let Err(e2) = target.set_status(&run.run_id, RunStatus::Failed, Some(&message)).await {
                tracing::warn!("could not record the failure of run {}: {e2:#}", run.run_id);
            }
            Err(e.context(RunStopped { run_id: run.run_id.clone(), checkpoint: "per table".into() }))
        }
    }
}

/// Moves the target's sequences (identity and `serial` columns of tables
/// copied as they are) to where the source's stand now, so that rows
/// written into the target later get keys past the copied ones. Sequences
/// are not transactional and logical replication does not carry them, so
/// this runs after the data, and again whenever a change stream stops.
pub async fn advance_sequences(settings: &Settings, plan: &Plan, target: &mut dyn RowTarget) -> anyhow::Result<()> {
    let tables: Vec<&PlannedTable> =
        plan.tables.iter().filter(|t| t.plugin.is_none() && t.source.sequence_columns().next().is_some()).collect();
    if tables.is_empty() {
        return Ok(());
    }
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    for table in tables {
        let positions = source.sequence_positions(&table.source).await?;
        for output in &table.outputs {
            target.advance_sequences(&output.def, &positions).await?;
        }
    }
    Ok(())
}

/// `def` as ferry creates it: a copy into PostgreSQL gets its key after
/// the data (see [`TableDef::defer_key`]).
fn built_later(table: &PlannedTable, def: &TableDef, engine: Engine) -> TableDef {
    let mut def = def.clone();
    def.defer_key = table.plugin.is_none() && engine == Engine::Postgres && !def.primary_key.is_empty();
    def
}

/// The run's plugin hashes (or `identity`), comma-separated.
pub(crate) fn producers(plan: &Plan) -> String {
    let mut all: Vec<&str> = plan.tables.iter().map(|t| t.producer()).collect();
    all.sort_unstable();
    all.dedup();
    all.join(",")
}

fn created(progress: &[TableProgress], table: &PlannedTable) -> bool {
    let name = table.source.name.to_string();
    progress.iter().find(|p| p.table == name).is_some_and(|p| p.created)
}

async fn count_all(source: &mut dyn RowSource, plan: &Plan) -> anyhow::Result<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for table in &plan.tables {
        counts.insert(table.source.name.to_string(), source.count_rows(&table.source).await?);
    }
    Ok(counts)
}

#[allow(clippy::too_many_arguments)]
fn report(
    run: &RunRecord,
    plan: &Plan,
    progress: &[TableProgress],
    counts: &HashMap<String, u64>,
    ending: Ending,
    resumed: bool,
    rows_this_session: u64,
    started: Instant,
    message: Option<String>,
) -> TablesReport {
    let mut tables = Vec::new();
    let mut stats = Stats::default();
    let mut filtered = 0;
    for table in &plan.tables {
        let name = table.source.name.to_string();
        let p = progress.iter().find(|p| p.table == name);
        let s = p.map(|p| p.stats).unwrap_or_default();
        let f = p.map_or(0, |p| p.filtered);
        let source_rows = counts.get(&name).copied().unwrap_or(0);
        stats.extracted += s.extracted;
        stats.transformed += s.transformed;
        stats.loaded += s.loaded;
        stats.skipped += s.skipped;
        stats.dead_lettered += s.dead_lettered;
        filtered += f;
        tables.push(TableReport {
            table: name,
            target: table.target_names(),
            phase: p.map_or(TablePhase::Copying, |p| p.phase),
            source_rows,
            loaded: s.loaded,
            skipped: s.skipped,
            filtered: f,
            dead_lettered: s.dead_lettered,
            plugin_sha256: table.plugin.as_ref().map(|p| p.sha256().to_string()),
            accounted: source_rows == s.loaded + s.skipped + f + s.dead_lettered,
        });
    }
    let source_rows = tables.iter().map(|t| t.source_rows).sum();
    let elapsed = started.elapsed().as_secs_f64();
    TablesReport {
        run_id: run.run_id.clone(),
        pipeline: run.pipeline.clone(),
        ending,
        resumed,
        accounted: tables.iter().all(|t| t.accounted),
        tables,
        source_rows,
        stats,
        filtered,
        rows_this_session,
        elapsed_seconds: elapsed,
        rows_per_second: if elapsed > 0.0 { rows_this_session as f64 / elapsed } else { 0.0 },
        message,
    }
}

/// Which tables are left and which may start: with constraints already in
/// the target, a table waits for the tables it references.
struct Queue {
    waiting: Vec<usize>,
    done: Vec<bool>,
    /// For each table, the tables it must wait for.
    parents: Vec<Vec<usize>>,
}

impl Queue {
    fn next(&mut self) -> Option<Result<usize, ()>> {
        if self.waiting.is_empty() {
            return None;
        }
        let ready = self.waiting.iter().position(|&t| self.parents[t].iter().all(|&p| self.done[p]));
        Some(ready.map(|at| self.waiting.remove(at)).ok_or(()))
    }
}

/// Copies every table that is not loaded yet, `workers` at a time; the rows
/// this process extracted.
async fn copy_tables(
    settings: &Settings,
    plan: &Plan,
    run: &RunRecord,
    progress: HashMap<String, TableProgress>,
    snapshot: Option<&str>,
    stop: Arc<AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<u64> {
    let n = plan.tables.len();
    let position = |name: &TableName| plan.tables.iter().position(|t| &t.source.name == name);
    let mut parents = vec![Vec::new(); n];
    for (i, table) in plan.tables.iter().enumerate() {
        // Only a constraint that already exists in the target orders loads.
        if !table.creates() {
            parents[i] = table
                .source
                .foreign_keys
                .iter()
                .filter_map(|fk| position(&fk.references))
                .filter(|&p| p != i)
                .collect();
        }
    }
    let mut done = vec![false; n];
    let mut waiting = Vec::new();
    for (i, table) in plan.tables.iter().enumerate() {
        match progress.get(&table.source.name.to_string()) {
            Some(p) if !p.phase.copying() => done[i] = true,
            _ => waiting.push(i),
        }
    }
    // Biggest first, so the last table to finish is a small one.
    waiting.sort_by_key(|&i| std::cmp::Reverse(plan.tables[i].source.estimated_rows));
    let queue = Arc::new(Mutex::new(Queue { waiting, done, parents }));
    let notify = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::new(AtomicBool::new(false));
    let workers = settings.workers.min(n).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let notify = Arc::clone(&notify);
        let stop = Arc::clone(&stop);
        let failed = Arc::clone(&failed);
        let plan = plan.clone();
        let run_id = run.run_id.clone();
        let settings = settings.clone();
        let progress = progress.clone();
        let snapshot = snapshot.map(str::to_string);
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut rows = 0u64;
            let mut target = engines::open_row_target(&settings).await?;
            loop {
                if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    return Ok(rows);
                }
                let next = queue.lock().expect("queue lock").next();
                let index = match next {
                    None => return Ok(rows),
                    Some(Ok(i)) => i,
                    Some(Err(())) => {
                        // Everything left waits for a table another worker copies.
                        tokio::time::timeout(std::time::Duration::from_millis(200), notify.notified()).await.ok();
                        continue;
                    }
                };
                let table = &plan.tables[index];
                let name = table.source.name.to_string();
                let known = progress.get(&name);
                let mut start = known.and_then(|p| p.last_key.clone());
                // A copy into a table ferry made holds only what this run
                // committed (exactly once): plain COPY, key built after.
                let ours = table.made_by_ferry(&progress) && table.plugin.is_none();
                // A keyless table is plain inserts: no key to conflict on.
                let policy = if ours || table.keyless() { OnConflict::Error } else { table.on_conflict };
                // An interrupted heap-order copy cannot resume (its block
                // positions mean nothing in a new snapshot): the table
                // starts over — in key order this time when it has a key,
                // so that a second interruption loses nothing more.
                let restarted = (ours || table.keyless()) && known.is_some_and(|p| p.phase == TablePhase::CopyingHeap);
                if restarted {
                    let again = if table.keyless() { "in storage order (it has no key)" } else { "in key order" };
                    tracing::warn!(table = %name, "the heap-order copy was interrupted; copying the table again, {again}");
                    let targets: Vec<&TableDef> = table.outputs.iter().map(|o| &o.def).collect();
                    target.restart_table(&run_id, &name, &targets).await?;
                    start = None;
                } else if table.keyless() && !ours {
                    // Starting over empties the target: it must hold
                    // nothing but what this copy writes.
                    let held = target.count_rows(table.target()).await?;
                    if held > 0 {
                        return Err(crate::error::Error::contract(format!(
                            "table {name} has no key, so it is copied into a table that holds nothing else, but {} \
                             already holds {held} rows: empty it (TRUNCATE {}), or drop it and ferry creates it",
                            table.target().name,
                            table.target().quoted()
                        )));
                    }
                }
                // A fresh copy into a table of its own reads the source in
                // storage order: no index walk, no random heap reads. A
                // keyless table has no other order.
                let order = if table.keyless() || (ours && !restarted && start.is_none() && snapshot.is_none()) {
                    ReadOrder::Heap
                } else {
                    ReadOrder::Key
                };
                let began = Instant::now();
                let result = copy_table(
                    &settings,
                    (&plan, index),
                    &run_id,
                    start,
                    target.as_mut(),
                    snapshot.as_deref(),
                    order,
                    &stop,
                    policy,
                    bar.as_ref(),
                )
                .await;
                match result {
                    Ok((copied, complete)) => {
                        rows += copied;
                        tracing::info!(table = %name, rows = copied, seconds = began.elapsed().as_secs_f64(), "rows copied");
                        if complete {
                            if table.made_by_ferry(&progress) {
                                let engine = settings.target.url.engine();
                                for output in &table.outputs {
                                    target.build_indexes(&built_later(table, &output.def, engine)).await?;
                                }
                            }
                            tracing::info!(table = %name, seconds = began.elapsed().as_secs_f64(), "indexes built");
                            target.set_table_phase(&run_id, &name, TablePhase::Loaded).await?;
                            queue.lock().expect("queue lock").done[index] = true;
                            notify.notify_waiters();
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e.context(format!("copying table {name}")));
                    }
                }
            }
        });
    }
    let mut rows = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a copy worker panicked")? {
            Ok(n) => rows += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// A plugin `fatal`: the run stops before the batch holding that row, its
/// checkpoint intact.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} fatal on row {key} of {table}: {reason}")]
pub struct PluginFatal {
    pub table: String,
    pub key: String,
    /// The version that said it (SHA-256, first 12 digits).
    pub plugin: String,
    pub reason: String,
}

/// Sorts a page's outcomes into the batch: rows per output table, dead
/// letters for rejected and trapped rows, filtered rows counted.
pub(crate) fn transformed(
    table: &PlannedTable,
    sources: &[crate::keyset::Row],
    outcomes: Vec<RowOutcome>,
    batch: &mut RowBatch,
) -> anyhow::Result<()> {
    use crate::model::DeadLetterKind;
    for output in &table.outputs {
        batch.writes.push(TableWrite { target: output.def.clone(), rows: Vec::new(), keys: Vec::new(), raw: None });
    }
    for (row, outcome) in sources.iter().zip(outcomes) {
        let key = Key::of(&table.source, row);
        let dead = |kind: DeadLetterKind, reason: String| crate::keyset::RowDeadLetter {
            table: table.source.name.to_string(),
            key: key.clone(),
            row: crate::keyset::row_json(&table.source, row),
            kind,
            reason,
        };
        match outcome {
            RowOutcome::Rows(out) if out.is_empty() => batch.filtered += 1,
            RowOutcome::Rows(out) => {
                let mut bad = None;
                let mut placed = Vec::with_capacity(out.len());
                for (name, values) in out {
                    let at =
                        table.outputs.iter().position(|o| o.def.name.name == name || o.def.name.to_string() == name);
                    match at {
                        None => {
                            bad = Some(format!("the plugin wrote a row for table {name:?}, which it did not declare"))
                        }
                        Some(i) if values.len() != table.outputs[i].def.columns.len() => {
                            bad = Some(format!(
                                "the plugin wrote {} values for table {name}, which has {} columns",
                                values.len(),
                                table.outputs[i].def.columns.len()
                            ))
                        }
                        Some(i) => placed.push((i, values)),
                    }
                }
                match bad {
                    Some(reason) => batch.dead.push(dead(DeadLetterKind::Reject, reason)),
                    None => {
                        batch.producing += 1;
                        for (i, values) in placed {
                            batch.writes[i].rows.push(values);
                            batch.writes[i].keys.push(key.clone());
                        }
                    }
                }
            }
            RowOutcome::Rejected(reason) => batch.dead.push(dead(DeadLetterKind::Reject, reason)),
            RowOutcome::Trapped(reason) => batch.dead.push(dead(DeadLetterKind::Trap, reason)),
            RowOutcome::Fatal(reason) => {
                return Err(PluginFatal {
                    table: table.source.name.to_string(),
                    key: key.label(),
                    plugin: batch.plugin_sha256.chars().take(12).collect(),
                    reason,
                }
                .into());
            }
        }
    }
    // Each producing source row made one row, all into one table: a row
    // left alone under `on_conflict = skip` is its source row, skipped.
    let filled = batch.writes.iter().filter(|w| !w.rows.is_empty()).count();
    batch.one_to_one = filled <= 1 && batch.writes.iter().map(|w| w.rows.len() as u64).sum::<u64>() == batch.producing;
    Ok(())
}

/// Blocks per heap-order page: the block range holding about as many rows
/// as a key-order page would (`batch_size`, from the catalog's estimates of
/// rows and bytes, TOAST included), at most [`RAW_PAGE_BYTES`] of heap.
fn heap_page_blocks(def: &TableDef, blocks: u64, batch_size: usize) -> u64 {
    if def.engine == Engine::Sqlite {
        // Positions are rowids: about one row each.
        return batch_size as u64;
    }
    let rows_per_block = def.estimated_rows as f64 / blocks.max(1) as f64;
    if rows_per_block <= 0.0 {
        // Never analyzed: pages of the most a heap page may hold.
        return RAW_PAGE_BYTES / 8192;
    }
    ((batch_size as f64 / rows_per_block).ceil() as u64).clamp(1, RAW_PAGE_BYTES / 8192)
}

/// How a copy reads its source table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadOrder {
    /// Keyset pages in key order: resumable at any page.
    Key,
    /// Storage order in one snapshot ([`RowSource::begin_heap_scan`]),
    /// where the engine has it and the copy is undecoded: cheaper for the
    /// source (a sequential scan, no index), restarted if interrupted.
    Heap,
}

/// Copies one table from `start` on: `(rows extracted, whether the table is
/// complete)`.
#[allow(clippy::too_many_arguments)]
async fn copy_table(
    settings: &Settings,
    (plan, index): (&Plan, usize),
    run_id: &str,
    start: Option<Key>,
    target: &mut dyn RowTarget,
    snapshot: Option<&str>,
    order: ReadOrder,
    stop: &Arc<AtomicBool>,
    policy: OnConflict,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(u64, bool)> {
    let table = &plan.tables[index];
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    if let Some(name) = snapshot {
        source.use_snapshot(name).await?;
    }
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<RowPage>>(CHANNEL_DEPTH);
    let def = table.source.clone();
    // A page forwarded as it is costs no decoding: fewer, bigger pages
    // (fewer transactions), about RAW_PAGE_BYTES each, never fewer rows
    // than batch_size.
    let raw = table.plugin.is_none()
        && settings.source.url.engine() == Engine::Postgres
        && settings.target.url.engine() == Engine::Postgres;
    let batch_size = match (raw, def.row_bytes) {
        (true, bytes) if bytes > 0 => {
            ((RAW_PAGE_BYTES / bytes) as usize).clamp(settings.batch_size, RAW_PAGE_ROWS.max(settings.batch_size))
        }
        _ => settings.batch_size,
    };
    let heap = match order {
        ReadOrder::Heap if raw || table.keyless() => source.begin_heap_scan(&def).await?,
        _ => None,
    };
    if heap.is_none() && table.keyless() {
        return Err(crate::error::Error::contract(format!(
            "table {} has no key and {} has no storage order to copy it by: give it a primary key",
            table.source.name, settings.source.url
        )));
    }
    if heap.is_some() {
        target.set_table_phase(run_id, &table.source.name.to_string(), TablePhase::CopyingHeap).await?;
    }
    let extract_stop = Arc::clone(stop);
    let mut after = start.clone();
    // A copy between two PostgreSQL databases forwards COPY's own bytes.
    let extractor = tokio::spawn(async move {
        if let Some(blocks) = heap {
            let per_page = heap_page_blocks(&def, blocks, batch_size);
            let mut from = 0;
            loop {
                if extract_stop.load(Ordering::Relaxed) {
                    return;
                }
                let to = from + per_page;
                let last = to >= blocks;
                let page = source.read_heap(&def, from, (!last).then_some(to), raw).await;
                let failed = page.is_err();
                if page.as_ref().is_ok_and(|p| p.is_empty()) {
                    // Blocks without live rows: nothing to commit.
                } else if tx.send(page).await.is_err() || failed {
                    return;
                }
                if last {
                    return;
                }
                from = to;
            }
        }
        loop {
            if extract_stop.load(Ordering::Relaxed) {
                return;
            }
            let page = match raw {
                true => match source.read_page_raw(&def, after.as_ref(), batch_size).await {
                    Ok(Some(page)) => Ok(page),
                    Ok(None) => source.read_page(&def, after.as_ref(), batch_size).await,
                    Err(e) => Err(e),
                },
                false => source.read_page(&def, after.as_ref(), batch_size).await,
            };
            let last = match &page {
                Ok(p) if p.is_empty() => return,
                Ok(p) => p.last_key.clone(),
                Err(_) => None,
            };
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                return;
            }
            after = last;
        }
    });
    // Pages become batches (transformed, when the table has a plugin) in a
    // stage of their own: the plugin works on the next page while the
    // target commits this one. Batches stay in order, so each still
    // commits on the previous one's checkpoint.
    let (batches, mut ready) = mpsc::channel::<anyhow::Result<RowBatch>>(1);
    // A plugin table takes a deployed version between two pages.
    let swap = match &table.plugin {
        None => None,
        Some(_) => Some(SwapStage {
            swapper: crate::swap::Swapper::for_table(settings, plan, index),
            store: engines::open_row_target(settings).await?,
            plan: plan.clone(),
            index,
        }),
    };
    let preparer = tokio::spawn({
        let (table, run_id) = (table.clone(), run_id.to_string());
        let previous = start.clone();
        async move {
            let prepared = prepare_batches(&table, &run_id, previous, &mut rx, &batches, swap).await;
            if let Err(e) = prepared {
                batches.send(Err(e)).await.ok();
            }
        }
    });
    let mut rows = 0;
    let mut complete = true;
    while let Some(batch) = ready.recv().await {
        let batch = batch?;
        if stop.load(Ordering::Relaxed) {
            complete = false;
            break;
        }
        target.commit_rows(&batch, policy).await?;
        rows += batch.extracted;
        // `ferry sync --listen` shows its initial load (no recorder: no-op).
        metrics::counter!(crate::daemon::names::SNAPSHOT_ROWS).increment(batch.extracted);
        if let Some(bar) = bar {
            bar.inc(batch.extracted);
        }
    }
    drop(ready);
    preparer.await.context("the transform task panicked")?;
    extractor.await.context("the extraction task panicked")?;
    if stop.load(Ordering::Relaxed) {
        complete = false;
    }
    Ok((rows, complete))
}

/// A plugin table's side of hot swap in a migration: its own swapper and
/// control-store connection, polled between two pages.
struct SwapStage {
    swapper: crate::swap::Swapper,
    store: Box<dyn RowTarget>,
    plan: Plan,
    index: usize,
}

/// The batch stage of [`copy_table`]: each page read after `previous`
/// becomes its batch, through the table's plugin if it has one, sent on in
/// order; stops when the pages end or the loader is gone. Between two pages
/// a deployed plugin version may replace the running one (`swap`): every
/// batch names the version that transformed it.
async fn prepare_batches(
    table: &PlannedTable,
    run_id: &str,
    mut previous: Option<Key>,
    pages: &mut mpsc::Receiver<anyhow::Result<RowPage>>,
    batches: &mpsc::Sender<anyhow::Result<RowBatch>>,
    mut swap: Option<SwapStage>,
) -> anyhow::Result<()> {
    let name = table.source.name.to_string();
    let mut transformer = match &table.plugin {
        None => None,
        Some(plugin) => {
            let (plugin, def) = (plugin.clone(), table.source.clone());
            Some(
                tokio::task::spawn_blocking(move || -> anyhow::Result<TableTransformer> {
                    let mut t = plugin.instantiate()?;
                    t.describe(&def)?;
                    Ok(t)
                })
                .await??,
            )
        }
    };
    let mut seq = 0;
    let mut producer = table.producer().to_string();
    let mut producer_path = table.plugin.as_ref().map(|p| p.path().display().to_string()).unwrap_or_default();
    while let Some(page) = pages.recv().await {
        let mut page = page?;
        if let (Some(stage), Some(running)) = (swap.as_mut(), transformer.take()) {
            let mut transformers = HashMap::from([(stage.index, running)]);
            let position = crate::swap::migration_position(&name, previous.as_ref());
            let switched =
                stage.swapper.between(&mut stage.plan, &mut transformers, stage.store.as_mut(), Some(position)).await?;
            if let Some(switched) = switched {
                producer = switched.sha256;
                producer_path = switched.path;
            }
            transformer = transformers.remove(&stage.index);
        }
        let extracted = page.len() as u64;
        let last_key = page.last_key.clone().expect("a non-empty page has a last key");
        if table.keyless() {
            // No key to name a dead letter by: its place in the scan
            // (unique in the run: a restart drops the table's dead letters).
            for (i, unreadable) in page.unreadable.iter_mut().enumerate() {
                unreadable.key = Key(vec![format!("{last_key} unreadable {}", i + 1)]);
            }
        }
        let mut batch = RowBatch {
            run_id: run_id.to_string(),
            table: name.clone(),
            seq,
            previous_key: previous.clone(),
            last_key: last_key.clone(),
            writes: Vec::new(),
            producing: 0,
            one_to_one: transformer.is_none(),
            dead: page.unreadable,
            extracted,
            filtered: 0,
            plugin_sha256: producer.clone(),
            plugin_path: producer_path.clone(),
            replacing: None,
            replayed: Vec::new(),
        };
        match transformer.take() {
            None => {
                let keys = match table.keyless() {
                    true => (1..=page.rows.len()).map(|i| Key(vec![format!("{last_key} row {i}")])).collect(),
                    false => page.rows.iter().map(|r| Key::of(&table.source, r)).collect(),
                };
                batch.producing = (page.rows.len() + page.raw.as_ref().map_or(0, |r| r.rows)) as u64;
                batch.writes.push(TableWrite { target: table.target().clone(), rows: page.rows, keys, raw: page.raw });
            }
            Some(mut t) => {
                let (source_name, source_rows) = (name.clone(), page.rows);
                let (t, source_rows, outcomes) = tokio::task::spawn_blocking(move || {
                    let outcomes = t.transform_batch(&source_name, &source_rows);
                    (t, source_rows, outcomes)
                })
                .await?;
                transformer = Some(t);
                transformed(table, &source_rows, outcomes?, &mut batch)?;
            }
        }
        if batches.send(Ok(batch)).await.is_err() {
            return Ok(());
        }
        previous = Some(last_key);
        seq += 1;
    }
    Ok(())
}
