//! Hot swap: a running stream (`ferry sync`, `ferry apply` of a many-table
//! pipeline) or a running `ferry migrate` takes a new plugin version
//! without stopping.
//!
//! `ferry plugin deploy` records a pending [`Deployment`] in the target's
//! control store. Between two target transactions the stream (or, in a
//! migration, each plugin table's batch stage between two pages) looks for
//! one (at most every [`POLL`]); it is then loaded, compiled, instantiated
//! and told each table's schema **off the hot path** (a blocking task)
//! while the old version keeps transforming. A candidate that does not load, does
//! not instantiate, refuses a table, or declares other output tables than
//! the live version is refused with the reason, and the old version keeps
//! running. A candidate that passes replaces the live version at the next
//! point between two target transactions — never inside one — and the
//! stored stream position (a migration: the table's key) at that point is
//! recorded with it: the old version produced every change up to that
//! position, the new one every change after it (a migration also records
//! the version of every batch: [`crate::control::Lineage`]). A restarted
//! stream or migration runs the last live version of each table rather
//! than the pipeline file's — unless the file names a version it never ran
//! (a newer decision, which wins).
//!
//! A shadow deployment (`deploy --shadow`) is prepared the same way but
//! does not replace anything: it transforms the same rows as the live
//! version, in the same group, and writes nothing; where the outcomes
//! differ is counted per field with examples ([`ShadowReport`], stored every
//! [`SHADOW_FLUSH`] and when the stream stops). `ferry plugin promote`
//! deploys the shadow's version live, which ends the shadow.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::deployments::{Decision, DeployState, Deployment, DeploymentStore, ShadowReport};
use crate::keyset::Row;
use crate::plugin::{LoadOptions, RowOutcome, TablePlugin, TableTransformer};
use crate::schema::TableDef;
use crate::settings::Settings;
use crate::tables::Plan;

/// The position a migration records for a switch: the table and the key
/// after which the new version runs (a stream records its stream position).
pub(crate) fn migration_position(table: &str, after: Option<&crate::keyset::Key>) -> String {
    format!("{table} {MIGRATION_POSITION} {}", after.map_or("(none)".to_string(), |k| k.label()))
}

const MIGRATION_POSITION: &str = "after key";

/// Whether a deployment went live in a stream (not in a migration).
pub(crate) fn went_live_in_stream(deployment: &Deployment) -> bool {
    deployment.state == DeployState::Live
        && !deployment.position.as_deref().is_some_and(|p| p.contains(&format!(" {MIGRATION_POSITION} ")))
}

/// How often a running stream looks for a deployment: what a request waits,
/// at most, before its compilation starts (one small query each time).
const POLL: Duration = Duration::from_millis(500);

/// How often a running shadow's differences are stored (one small update).
const SHADOW_FLUSH: Duration = Duration::from_secs(1);

/// A version that passed every check, with one instance per table it
/// serves, already told the table's schema: switching costs no compilation
/// and no instantiation on the hot path.
struct Ready {
    plugin: TablePlugin,
    instances: Vec<(usize, TableTransformer)>,
}

/// A deployment being loaded and checked off the hot path.
struct Candidate {
    deployment: Deployment,
    task: tokio::task::JoinHandle<Result<Ready, String>>,
}

/// A switch the stream made.
#[derive(Debug, Clone)]
pub(crate) struct Switched {
    pub deployment: i64,
    pub sha256: String,
    /// The file the version was loaded from.
    pub path: String,
    /// Time spent switching between the two target transactions.
    pub pause: Duration,
}

/// A shadow version running beside the live one.
struct Shadow {
    deployment: Deployment,
    instances: HashMap<usize, TableTransformer>,
    report: ShadowReport,
    /// Compared rows not yet stored.
    dirty: bool,
    flushed: Instant,
}

/// The stream's side of deployments.
pub(crate) struct Swapper {
    pipeline: String,
    /// How each plugin table's plugin is loaded (limits, compiled-code
    /// cache), from the pipeline file; the pin is the deployment's hash.
    options: HashMap<usize, LoadOptions>,
    next_poll: Instant,
    candidate: Option<Candidate>,
    shadow: Option<Shadow>,
    /// Leaves shadow deployments pending (see [`Swapper::for_table`]).
    live_only: bool,
    /// Tables whose deployments are checked against another shape than
    /// the plan's: a stream paused on a table's new shape.
    shapes: HashMap<usize, TableDef>,
}

impl Swapper {
    /// A swapper for planned table `t` alone (a migration's batch stage),
    /// which takes live versions only: a shadow deployment waits for a
    /// stream, which compares it on live rows.
    pub(crate) fn for_table(settings: &Settings, plan: &Plan, t: usize) -> Swapper {
        let mut swapper = Swapper::for_migration(settings, plan);
        swapper.options.retain(|&i, _| i == t);
        swapper
    }

    /// A swapper for a migration: live versions only (see
    /// [`Swapper::for_table`]).
    pub(crate) fn for_migration(settings: &Settings, plan: &Plan) -> Swapper {
        Swapper { live_only: true, ..Swapper::new(settings, plan) }
    }

    pub(crate) fn new(settings: &Settings, plan: &Plan) -> Swapper {
        let mut options = HashMap::new();
        for (t, table) in plan.tables.iter().enumerate() {
            let spec = settings.tables.spec(&table.source.name).and_then(|s| s.plugin.as_ref());
            if let (Some(_), Some(spec)) = (&table.plugin, spec) {
                options.insert(t, spec.options.clone());
            }
        }
        Swapper {
            pipeline: settings.pipeline.clone(),
            options,
            next_poll: Instant::now(),
            candidate: None,
            shadow: None,
            live_only: false,
            shapes: HashMap::new(),
        }
    }

    /// At start: each plugin table runs the last version that went live for
    /// it (a deployment outlives the daemon that took it). A live version
    /// that cannot be loaded any more is an error, unless a later request
    /// waits for that table (it is then decided once the stream runs).
    pub(crate) async fn restore(&mut self, plan: &mut Plan, store: &mut dyn DeploymentStore) -> anyhow::Result<()> {
        let all = store.deployments(&self.pipeline).await?;
        for t in self.plugin_tables(plan) {
            let serves = |d: &&Deployment| serves(plan, t, d);
            let Some(live) = all.iter().rev().filter(serves).find(|d| d.state == DeployState::Live) else { continue };
            let file = plan.tables[t].plugin.as_ref().map(|p| p.sha256().to_string()).unwrap_or_default();
            if file == live.sha256 {
                continue;
            }
            // The pipeline file naming a version this stream never ran is a
            // newer decision than the deployments: it wins.
            let known = all.iter().filter(serves).any(|d| {
                d.state == DeployState::Live && (d.sha256 == file || d.previous_sha256.as_deref() == Some(&*file))
            });
            if !known {
                tracing::warn!(table = %plan.tables[t].source.name, sha256 = %file, replaced = %live.sha256,
                    "the pipeline file names a plugin version never deployed into this stream: it replaces the last deployed one");
                continue;
            }
            let sources = checked_against(plan, &[t], &HashMap::new());
            let options = self.options[&t].clone();
            let loaded = tokio::task::block_in_place(|| prepare(live, options, sources));
            match loaded {
                Ok(ready) => {
                    tracing::info!(table = %plan.tables[t].source.name, sha256 = %live.sha256, deployment = live.id,
                        "running the deployed plugin version");
                    plan.tables[t].plugin = Some(ready.plugin);
                }
                Err(reason) if all.iter().filter(serves).any(|d| d.id > live.id && d.state == DeployState::Pending) => {
                    tracing::warn!(
                        "deployment {} cannot be loaded ({reason}); a later one waits to be decided",
                        live.id
                    )
                }
                Err(reason) => {
                    return Err(crate::error::Error::contract(format!(
                        "table {} runs plugin version {} (deployment {} of pipeline {}), which cannot be loaded \
                         any more: {reason}. Put that file back at {}, or deploy the version to run \
                         (`ferry plugin deploy FILE`): a deployment waiting when the stream starts is decided first",
                        plan.tables[t].source.name, live.sha256, live.id, self.pipeline, live.path
                    )));
                }
            }
        }
        // A shadow that was running goes on running (in a stream).
        if let Some(shadow) = all.iter().rev().find(|d| d.state == DeployState::Shadow && !self.live_only) {
            let tables = self.served(plan, shadow);
            let sources = checked_against(plan, &tables, &HashMap::new());
            let options = tables.first().map(|t| self.options[t].clone());
            match options.map(|o| tokio::task::block_in_place(|| prepare(shadow, o, sources))) {
                Some(Ok(ready)) => self.start_shadow(shadow.clone(), ready),
                Some(Err(reason)) => {
                    tracing::warn!("shadow deployment {} cannot be loaded any more, retired: {reason}", shadow.id);
                    store.end_shadow(shadow.id, DeployState::Retired).await?;
                }
                None => {
                    store.end_shadow(shadow.id, DeployState::Retired).await?;
                }
            }
        }
        Ok(())
    }

    fn start_shadow(&mut self, deployment: Deployment, ready: Ready) {
        let report = deployment.shadow_report.clone().unwrap_or_default();
        self.shadow = Some(Shadow {
            deployment,
            instances: ready.instances.into_iter().collect(),
            report,
            dirty: false,
            flushed: Instant::now(),
        });
    }

    /// The planned plugin tables `deployment` is for.
    fn served(&self, plan: &Plan, deployment: &Deployment) -> Vec<usize> {
        self.plugin_tables(plan).into_iter().filter(|&t| serves(plan, t, deployment)).collect()
    }

    /// Deployments for planned table `t` are checked against `shape` (a
    /// stream paused on the table's new shape), or again the plan's.
    pub(crate) fn set_shape(&mut self, t: usize, shape: Option<TableDef>) {
        match shape {
            Some(shape) => self.shapes.insert(t, shape),
            None => self.shapes.remove(&t),
        };
    }

    /// Whether a shadow version runs beside planned table `t`'s plugin.
    pub(crate) fn shadows(&self, t: usize) -> bool {
        self.shadow.as_ref().is_some_and(|s| s.instances.contains_key(&t))
    }

    /// Runs the shadow version (if one serves planned table `t`) on the
    /// rows the live version just transformed into `live`, and counts where
    /// they differ. `key` names a row; `columns` gives an output table's
    /// column names. A shadow's traps and errors are its own: they count as
    /// differences and never stop the stream.
    pub(crate) fn shadow(
        &mut self,
        t: usize,
        table: &str,
        rows: &[Row],
        live: &[RowOutcome],
        key: impl Fn(&Row) -> String,
        columns: impl Fn(&str) -> Option<Vec<String>>,
    ) {
        let Some(shadow) = self.shadow.as_mut() else { return };
        let Some(instance) = shadow.instances.get_mut(&t) else { return };
        let outcomes = match instance.transform_batch(table, rows) {
            Ok(outcomes) => outcomes,
            Err(e) => rows.iter().map(|_| RowOutcome::Fatal(format!("the shadow version failed: {e}"))).collect(),
        };
        let (mut same, mut different) = (0u64, 0u64);
        for ((row, live), shadowed) in rows.iter().zip(live).zip(&outcomes) {
            if shadow.report.add(|| key(row), live, shadowed, &columns) {
                same += 1;
            } else {
                different += 1;
            }
        }
        shadow.dirty = true;
        metrics::counter!(crate::daemon::names::SHADOW_ROWS, "outcome" => "same").increment(same);
        metrics::counter!(crate::daemon::names::SHADOW_ROWS, "outcome" => "different").increment(different);
    }

    /// Stores a running shadow's differences if some are not stored yet.
    pub(crate) async fn flush(&mut self, store: &mut dyn DeploymentStore) -> anyhow::Result<()> {
        if let Some(shadow) = self.shadow.as_mut().filter(|s| s.dirty) {
            store.report_shadow(shadow.deployment.id, &shadow.report).await?;
            shadow.dirty = false;
            shadow.flushed = Instant::now();
        }
        Ok(())
    }

    /// Called between two target transactions: starts checking a waiting
    /// deployment, or switches to (or refuses) one whose check finished.
    /// The transformers of the tables switched are replaced by the new
    /// version's instances.
    pub(crate) async fn between(
        &mut self,
        plan: &mut Plan,
        transformers: &mut HashMap<usize, TableTransformer>,
        store: &mut dyn DeploymentStore,
        position: Option<String>,
    ) -> anyhow::Result<Option<Switched>> {
        if self.shadow.as_ref().is_some_and(|s| s.dirty && s.flushed.elapsed() >= SHADOW_FLUSH) {
            self.flush(store).await?;
        }
        if let Some(candidate) = self.candidate.take_if(|c| c.task.is_finished()) {
            let started = Instant::now();
            let deployment = candidate.deployment;
            let outcome = candidate.task.await.unwrap_or_else(|e| Err(format!("checking it failed: {e}")));
            let ready = match outcome {
                Ok(ready) => ready,
                Err(reason) => {
                    self.refuse(store, &deployment, &reason).await?;
                    return Ok(None);
                }
            };
            let previous = ready
                .instances
                .first()
                .and_then(|(t, _)| plan.tables[*t].plugin.as_ref())
                .map(|p| p.sha256().to_string());
            let decision = |state| Decision {
                state,
                reason: None,
                position: position.clone(),
                previous_sha256: previous.as_deref(),
            };
            if deployment.shadow {
                if let Some(old) = self.shadow.take() {
                    end_shadow(store, old, DeployState::Retired).await?;
                }
                store.decide_deployment(deployment.id, &decision(DeployState::Shadow)).await?;
                tracing::info!(deployment = deployment.id, sha256 = %deployment.sha256, "shadow version running");
                self.start_shadow(deployment, ready);
                return Ok(None);
            }
            for (t, instance) in ready.instances {
                let table = plan.tables[t].source.name.to_string();
                if let Some(old) = &plan.tables[t].plugin {
                    metrics::gauge!(crate::daemon::names::PLUGIN_INFO, "table" => table.clone(), "sha256" => old.sha256().to_string()).set(0.0);
                }
                metrics::gauge!(crate::daemon::names::PLUGIN_INFO, "table" => table, "sha256" => deployment.sha256.clone()).set(1.0);
                plan.tables[t].plugin = Some(ready.plugin.clone());
                transformers.insert(t, instance);
            }
            store.decide_deployment(deployment.id, &decision(DeployState::Live)).await?;
            // The shadow of this very version has been promoted.
            if let Some(shadow) = self.shadow.take_if(|s| s.deployment.sha256 == deployment.sha256) {
                end_shadow(store, shadow, DeployState::Promoted).await?;
            }
            let pause = started.elapsed();
            metrics::counter!(crate::daemon::names::PLUGIN_SWITCHES, "outcome" => "live").increment(1);
            metrics::gauge!(crate::daemon::names::PLUGIN_SWITCH_PAUSE).set(pause.as_secs_f64());
            tracing::info!(deployment = deployment.id, sha256 = %deployment.sha256, ?pause,
                position = ?position, "switched to the deployed plugin version");
            return Ok(Some(Switched {
                deployment: deployment.id,
                sha256: deployment.sha256,
                path: deployment.path,
                pause,
            }));
        }
        if self.candidate.is_some() || Instant::now() < self.next_poll {
            return Ok(None);
        }
        self.next_poll = Instant::now() + POLL;
        let pending = store
            .deployments(&self.pipeline)
            .await?
            .into_iter()
            .find(|d| d.state == DeployState::Pending && !(self.live_only && d.shadow));
        let Some(deployment) = pending else { return Ok(None) };
        let tables = self.served(plan, &deployment);
        let Some(&first) = tables.first() else {
            let reason = match &deployment.table {
                Some(name) => format!("the pipeline has no table {name} with a plugin"),
                None => "the pipeline has no table with a plugin".to_string(),
            };
            self.refuse(store, &deployment, &reason).await?;
            return Ok(None);
        };
        tracing::info!(deployment = deployment.id, path = %deployment.path, "checking a deployed plugin version");
        let options = self.options[&first].clone();
        let sources = checked_against(plan, &tables, &self.shapes);
        let request = deployment.clone();
        let task = tokio::task::spawn_blocking(move || prepare(&request, options, sources));
        self.candidate = Some(Candidate { deployment, task });
        Ok(None)
    }

    async fn refuse(
        &mut self,
        store: &mut dyn DeploymentStore,
        deployment: &Deployment,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(deployment = deployment.id, "deployment refused, the running version stays: {reason}");
        let decision =
            Decision { state: DeployState::Refused, reason: Some(reason), position: None, previous_sha256: None };
        store.decide_deployment(deployment.id, &decision).await?;
        metrics::counter!(crate::daemon::names::PLUGIN_SWITCHES, "outcome" => "refused").increment(1);
        Ok(())
    }

    fn plugin_tables(&self, plan: &Plan) -> Vec<usize> {
        (0..plan.tables.len()).filter(|t| plan.tables[*t].plugin.is_some() && self.options.contains_key(t)).collect()
    }
}

/// Ends a running shadow (`promoted` or `retired`), its last differences
/// stored first.
async fn end_shadow(store: &mut dyn DeploymentStore, shadow: Shadow, state: DeployState) -> anyhow::Result<()> {
    store.report_shadow(shadow.deployment.id, &shadow.report).await?;
    store.end_shadow(shadow.deployment.id, state).await?;
    Ok(())
}

/// Whether `deployment` is for planned table `t` (a deployment without a
/// table is for every plugin table).
fn serves(plan: &Plan, t: usize, deployment: &Deployment) -> bool {
    let name = &plan.tables[t].source.name;
    match &deployment.table {
        None => true,
        Some(wanted) => *wanted == name.to_string() || *wanted == name.name,
    }
}

/// For each of `tables`: the shape a version is checked against (`shapes`'
/// where given: a paused table's new one), the live version's, and the
/// live version.
fn checked_against(
    plan: &Plan,
    tables: &[usize],
    shapes: &HashMap<usize, TableDef>,
) -> Vec<(usize, TableDef, TableDef, Option<TablePlugin>)> {
    tables
        .iter()
        .map(|&t| {
            let now = plan.tables[t].source.clone();
            let shape = shapes.get(&t).cloned().unwrap_or_else(|| now.clone());
            (t, shape, now, plan.tables[t].plugin.clone())
        })
        .collect()
}

/// Loads the deployed version (exactly the hash recorded at deploy time),
/// instantiates it for each table and checks that it declares the same
/// output tables as the version it replaces: a hot swap changes rules, not
/// the target's schema.
fn prepare(
    deployment: &Deployment,
    mut options: LoadOptions,
    tables: Vec<(usize, TableDef, TableDef, Option<TablePlugin>)>,
) -> Result<Ready, String> {
    options.pinned_sha256 = Some(deployment.sha256.clone());
    let plugin = TablePlugin::load(Path::new(&deployment.path), &options).map_err(|e| e.to_string())?;
    let mut instances = Vec::new();
    // `source`: the shape the version is checked against (a paused table's
    // new one); `now`: the live version's.
    for (t, source, now, old) in tables {
        let instance = match old {
            Some(old) => plugin.replacing_as(&old, &source, &now)?,
            None => {
                let mut instance = plugin.instantiate().map_err(|e| e.to_string())?;
                instance.describe(&source).map_err(|e| e.to_string())?;
                instance
            }
        };
        instances.push((t, instance));
    }
    Ok(Ready { plugin, instances })
}

/// `ferry plugin deploy`: records `path` as the next version of the
/// pipeline's plugin (of `table`, or of its one plugin table), then waits up
/// to `wait` for the running stream to decide it. The deployment as it then
/// stands is returned: `live`, `refused` (with the reason) or still
/// `pending` (no stream running: the next one to start takes it).
pub async fn deploy(
    settings: &Settings,
    path: &Path,
    table: Option<&str>,
    shadow: bool,
    wait: Duration,
) -> anyhow::Result<Deployment> {
    use crate::error::{Error, ErrorKind};
    let selection = &settings.tables;
    let spec = selection.plugin_table(table).map_err(|e| Error::raise(ErrorKind::Config, e))?;
    // Without --table, the deployment is for every plugin table (there is one).
    let table = table.map(|_| spec.source.to_string());
    let read = |e: std::io::Error| {
        anyhow::Error::new(crate::plugin::PluginError::Read { path: path.to_path_buf(), source: e })
    };
    let absolute = std::fs::canonicalize(path).map_err(read)?;
    let sha256 = crate::plugin::sha256_hex(&std::fs::read(&absolute).map_err(read)?);
    let mut target = crate::engines::open_row_target(settings).await?;
    target.ensure_control_tables().await?;
    let id = target
        .request_deployment(&settings.pipeline, table.as_deref(), &absolute.to_string_lossy(), &sha256, shadow)
        .await?;
    decided(target.as_mut(), &settings.pipeline, id, wait).await
}

/// `ferry plugin promote`: deploys the running shadow's version live.
pub async fn promote(settings: &Settings, wait: Duration) -> anyhow::Result<Deployment> {
    let mut target = crate::engines::open_row_target(settings).await?;
    target.ensure_control_tables().await?;
    let all = target.deployments(&settings.pipeline).await?;
    let Some(shadow) = all.iter().rev().find(|d| d.state == DeployState::Shadow) else {
        return Err(crate::error::Error::raise(
            crate::error::ErrorKind::Config,
            format!(
                "no shadow version runs in pipeline {}: start one with `ferry plugin deploy FILE --shadow` \
                 (`ferry status` lists the deployments)",
                settings.pipeline
            ),
        ));
    };
    let id = target
        .request_deployment(&settings.pipeline, shadow.table.as_deref(), &shadow.path, &shadow.sha256, false)
        .await?;
    decided(target.as_mut(), &settings.pipeline, id, wait).await
}

/// Deployment `id` once decided, or as it stands after `wait`.
async fn decided(
    target: &mut dyn DeploymentStore,
    pipeline: &str,
    id: i64,
    wait: Duration,
) -> anyhow::Result<Deployment> {
    let deadline = Instant::now() + wait;
    loop {
        let found = target.deployments(pipeline).await?.into_iter().find(|d| d.id == id);
        let deployment = found.ok_or_else(|| anyhow::anyhow!("deployment {id} vanished from the control store"))?;
        if deployment.state != DeployState::Pending || Instant::now() >= deadline {
            return Ok(deployment);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
