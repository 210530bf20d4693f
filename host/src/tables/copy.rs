//! Phase three of a migration: the copy. `workers` tables at a time; per
//! table an extractor (keyset pages on the whole key, or storage order)
//! feeding a batch stage (the plugin, if any) feeding the loader, through
//! bounded channels: rows + dead letters + table checkpoint, one
//! transaction per page.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::{LoadMethod, OnConflict};
use crate::control::{RunRecord, TablePhase, TableProgress};
use crate::db::Engine;
use crate::engines::{self, RowTarget};
use crate::keyset::{Key, RowPage};
use crate::plugin::{RowOutcome, TableTransformer};
use crate::schema::TableDef;
use crate::settings::Settings;
use crate::sink::{RowBatch, TableWrite};
use crate::source::PageForm;

use super::plan::{Plan, PlannedTable};
use super::post_data::built_later;

/// Pages queued between a table's extractor and its loader.
const CHANNEL_DEPTH: usize = 2;

/// Target size of a page forwarded undecoded (PostgreSQL to PostgreSQL),
/// from the catalog's row-size estimate; at most RAW_PAGE_ROWS rows.
const RAW_PAGE_BYTES: u64 = 4 << 20;
const RAW_PAGE_ROWS: usize = 20_000;

/// Which tables are left and which may start: with constraints already in
/// the target, a table waits for the tables it references.
struct Queue {
    waiting: Vec<usize>,
    done: Vec<bool>,
    /// For each table, the tables it must wait for.
    parents: Vec<Vec<usize>>,
    /// Tables being copied now.
    running: usize,
}

/// What a copy worker does next.
enum Next {
    Copy(usize),
    /// Every table left waits for one being copied now.
    Wait,
}

impl Queue {
    /// The next table whose parents are in; `None` when none is left. A
    /// queue where every table left waits and none is being copied would
    /// wait for ever: an error naming them (the plan refuses cycles, so
    /// this is a defect, never a hang).
    fn next(&mut self, plan: &Plan) -> anyhow::Result<Option<Next>> {
        if self.waiting.is_empty() {
            return Ok(None);
        }
        match self.waiting.iter().position(|&t| self.parents[t].iter().all(|&p| self.done[p])) {
            Some(at) => {
                self.running += 1;
                Ok(Some(Next::Copy(self.waiting.remove(at))))
            }
            None if self.running > 0 => Ok(Some(Next::Wait)),
            None => {
                let stuck: Vec<String> = self
                    .waiting
                    .iter()
                    .map(|&t| {
                        let parents: Vec<String> = self.parents[t]
                            .iter()
                            .filter(|&&p| !self.done[p])
                            .map(|&p| plan.tables[p].source.name.to_string())
                            .collect();
                        format!("{} (waits for {})", plan.tables[t].source.name, parents.join(", "))
                    })
                    .collect();
                Err(crate::error::Error::contract(format!(
                    "no table left can be loaded before the others: {}",
                    stuck.join("; ")
                )))
            }
        }
    }

    /// A table's copy ended (`loaded`: all its rows are in).
    fn finished(&mut self, table: usize, loaded: bool) {
        self.running -= 1;
        self.done[table] |= loaded;
    }
}

/// Copies every table that is not loaded yet, `workers` at a time; the rows
/// this process extracted.
pub(super) async fn copy_tables(
    settings: &Settings,
    plan: &Plan,
    run: &RunRecord,
    progress: HashMap<String, TableProgress>,
    snapshot: Option<&str>,
    stop: Arc<AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<u64> {
    let n = plan.tables.len();
    let parents = plan.load_after();
    let mut done = vec![false; n];
    let mut waiting = Vec::new();
    let (builds, built) = mpsc::unbounded_channel::<usize>();
    for (i, table) in plan.tables.iter().enumerate() {
        match progress.get(&table.source.name.to_string()) {
            // Loaded by an earlier attempt, perhaps not built yet: each
            // build skips what exists.
            Some(p) if p.phase == TablePhase::Loaded => {
                done[i] = true;
                builds.send(i).ok();
            }
            Some(p) if !p.phase.copying() => done[i] = true,
            _ => waiting.push(i),
        }
    }
    // Biggest first, so the last table to finish is a small one.
    waiting.sort_by_key(|&i| std::cmp::Reverse(plan.tables[i].source.estimated_rows));
    let queue = Arc::new(Mutex::new(Queue { waiting, done, parents, running: 0 }));
    let notify = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::new(AtomicBool::new(false));
    let workers = settings.workers.min(n).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let builders = spawn_builders(settings, plan, &progress, built, &stop, &failed, &notify);
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
        let builds = builds.clone();
        tasks.spawn(async move {
            let mut rows = 0u64;
            let mut target = engines::open_row_target(&settings).await?;
            loop {
                if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    return Ok(rows);
                }
                let next = queue.lock().expect("queue lock").next(&plan);
                let index = match next {
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        notify.notify_waiters();
                        return Err(e);
                    }
                    Ok(None) => return Ok(rows),
                    Ok(Some(Next::Copy(i))) => i,
                    Ok(Some(Next::Wait)) => {
                        // Everything left waits for a table another worker copies.
                        tokio::time::timeout(std::time::Duration::from_millis(200), notify.notified()).await.ok();
                        continue;
                    }
                };
                let table = &plan.tables[index];
                let name = table.source.name.to_string();
                let skip = plan.skips_triggers(table);
                let copied: anyhow::Result<(u64, bool)> = async {
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
                        ReadOrder::Heap { own_table: ours }
                    } else {
                        ReadOrder::Key
                    };
                    let began = Instant::now();
                    // Rows copied as they are into a table the target held:
                    // its triggers and foreign-key checks stay off while
                    // they load (any order, nothing rewritten).
                    if skip {
                        target.skip_triggers(true).await?;
                    }
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
                    if skip {
                        target.skip_triggers(false).await?;
                    }
                    let (copied, complete) = result?;
                    tracing::info!(table = %name, rows = copied, seconds = began.elapsed().as_secs_f64(), "rows copied");
                    if complete {
                        // Its rows are in: the builders take its keys and
                        // indexes while this worker copies the next table.
                        target.set_table_phase(&run_id, &name, TablePhase::Loaded).await?;
                        builds.send(index).ok();
                    }
                    Ok((copied, complete))
                }
                .await;
                let loaded = copied.as_ref().is_ok_and(|c| c.1);
                queue.lock().expect("queue lock").finished(index, loaded);
                notify.notify_waiters();
                match copied {
                    Ok((n, _)) => rows += n,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e.context(format!("copying table {name}")));
                    }
                }
            }
        });
    }
    // The builders end once the last copy worker has ended and they have
    // built every table sent.
    drop(builds);
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
    let mut builders = builders;
    while let Some(joined) = builders.join_next().await {
        if let Err(e) = joined.context("an index builder panicked")? {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// The index builders, `workers` of them beside the copy workers (as
/// pgcopydb's index jobs): each takes a loaded table of the run's own off
/// `built` and builds its keys, indexes and checks (not its foreign keys or
/// triggers, which wait for every table), then its statistics. A table the
/// target held keeps what it has. They end when `built` is closed and
/// empty, or at a stop or a failure (a resumed run builds what is left).
fn spawn_builders(
    settings: &Settings,
    plan: &Plan,
    progress: &HashMap<String, TableProgress>,
    built: mpsc::UnboundedReceiver<usize>,
    stop: &Arc<AtomicBool>,
    failed: &Arc<AtomicBool>,
    notify: &Arc<tokio::sync::Notify>,
) -> tokio::task::JoinSet<anyhow::Result<()>> {
    let built = Arc::new(tokio::sync::Mutex::new(built));
    let mut builders = tokio::task::JoinSet::new();
    for _ in 0..settings.workers.min(plan.tables.len()).max(1) {
        let (built, stop, failed, notify) = (built.clone(), stop.clone(), failed.clone(), notify.clone());
        let (settings, plan, progress) = (settings.clone(), plan.clone(), progress.clone());
        builders.spawn(async move {
            let mut target: Option<Box<dyn RowTarget>> = None;
            loop {
                let Some(index) = built.lock().await.recv().await else { return Ok(()) };
                if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let table = &plan.tables[index];
                let began = Instant::now();
                let result: anyhow::Result<()> = async {
                    match (&plan.schema, table.made_by_ferry(&progress)) {
                        (_, false) => {}
                        (Some(schema), true) if table.schema_made => schema.0.build_table(&table.target().name).await?,
                        (_, true) => {
                            let target = match &mut target {
                                Some(target) => target,
                                None => target.insert(engines::open_row_target(&settings).await?),
                            };
                            let engine = settings.target.url.engine();
                            for output in &table.outputs {
                                target.build_indexes(&built_later(table, &output.def, engine)).await?;
                            }
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    failed.store(true, Ordering::Relaxed);
                    notify.notify_waiters();
                    return Err(e.context(format!("building the indexes of table {}", table.source.name)));
                }
                tracing::info!(table = %table.source.name, seconds = began.elapsed().as_secs_f64(), "indexes built");
            }
        });
    }
    builders
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
pub(super) fn heap_page_blocks(def: &TableDef, blocks: u64, batch_size: usize) -> u64 {
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
    /// `own_table`: into a table this run made from the source's
    /// definition (the same types).
    Heap { own_table: bool },
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
        ReadOrder::Heap { .. } if raw || table.keyless() => source.begin_heap_scan(&def).await?,
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
    // Into a table of the run's own, PostgreSQL's binary form where the
    // types allow it: neither server formats nor parses text.
    let form = match order {
        _ if !raw => PageForm::Decoded,
        ReadOrder::Heap { own_table: true } if settings.load_method != LoadMethod::CopyText => PageForm::RawSameTypes,
        _ => PageForm::Raw,
    };
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
                let page = source.read_heap(&def, from, (!last).then_some(to), form).await;
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
