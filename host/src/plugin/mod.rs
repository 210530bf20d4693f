//! The plugin runtime: the only module that uses wasmtime.
//!
//! [`Plugin`] is a compiled, validated component identified by the SHA-256 of
//! its `.wasm` file; [`Transformer`] is one sandboxed instance of it that
//! transforms batches. A trap never escapes this module as an error: the
//! rows involved come back as [`Outcome::Trapped`] and the poisoned instance
//! is replaced by a fresh one before the next call.

mod bindings;
mod rows;
mod sandbox;

pub use rows::{RowOutcome, RowPlugin, RowTransformer, TablePlugin, TableTransformer};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, Linker, TypedFunc, types::ComponentItem};
use wasmtime::{Engine, Store};

pub use bindings::INTERFACE;

/// Characters of the plugin's stderr kept in a trap's dead-letter reason.
const STDERR_IN_REASON: usize = 500;
pub use sandbox::{DEFAULT_CALL_TIMEOUT, DEFAULT_MEMORY_LIMIT, Grants, Limits};

use crate::model::{LegacyUser, Outcome};
use bindings::{UserTransform, UserTransformPre};
use sandbox::State;

/// Why a plugin cannot be used. Each message says what is wrong and how to
/// fix it.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "plugin {path} is not a WebAssembly file (it does not start with \\0asm); \
         give the path of a component built for wasm32-wasip2"
    )]
    NotWasm { path: PathBuf },
    #[error(
        "plugin {path} is a core WebAssembly module, not a component; build it with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: PathBuf },
    #[error("plugin {path} does not compile as a component: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "plugin {path} does not export `{INTERFACE}` (it exports: {exports}); build it \
         against wit/transform.wit, world `user-transform`"
    )]
    WrongWorld { path: PathBuf, exports: String },
    #[error(
        "plugin {path} exports neither `{}` nor `{INTERFACE}` (it exports: {exports}); a table's plugin \
         is built against wit/row/transform-row.wit, world `row-transform` (or the seed's \
         wit/transform.wit, world `user-transform`)",
        bindings::row::INTERFACE
    )]
    WrongRowWorld { path: PathBuf, exports: String },
    #[error("plugin {path} refused table {table}: {reason}")]
    Refused { path: PathBuf, table: String, reason: String },
    #[error("plugin {path} cannot be instantiated in ferry's sandbox: {message}")]
    Instantiate { path: PathBuf, message: String },
    #[error(
        "plugin {path} has sha256 {actual} but the configuration pins {pinned}; \
         rebuild the pinned version or update plugin.sha256 after reviewing the new one"
    )]
    PinMismatch { path: PathBuf, pinned: String, actual: String },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

impl PluginError {
    /// A plugin of the wrong contract or version is a mismatch to fix in
    /// the pipeline; one that cannot run at all is the plugin's own fault.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            PluginError::WrongWorld { .. }
            | PluginError::WrongRowWorld { .. }
            | PluginError::Refused { .. }
            | PluginError::PinMismatch { .. } => ErrorKind::Contract,
            PluginError::Read { .. }
            | PluginError::NotWasm { .. }
            | PluginError::CoreModule { .. }
            | PluginError::Invalid { .. }
            | PluginError::Instantiate { .. }
            | PluginError::Engine(_) => ErrorKind::Plugin,
        }
    }
}

/// A loaded plugin: compiled once, instantiated many times.
pub struct Plugin {
    engine: Engine,
    pre: UserTransformPre<State>,
    /// The optional `user-key.target-key` export (world `user-transform-keyed`).
    key_export: Option<ComponentExportIndex>,
    path: PathBuf,
    sha256: String,
    limits: Limits,
    facts: Facts,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("sha256", &self.sha256).finish()
    }
}

/// How to load a plugin.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Expected SHA-256 (hex) of the `.wasm`; a mismatch is an error.
    pub pinned_sha256: Option<String>,
    /// Where compiled code is cached between runs (None: no cache).
    pub cache_dir: Option<PathBuf>,
    /// The table a `transform-user` plugin's `new-user` rows go to (default:
    /// the source table's name). A `transform-row` plugin names its own.
    pub output_table: Option<String>,
}

/// The SHA-256 of a file's bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What `ferry plugin info` shows of a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Facts {
    /// Size of the `.wasm`.
    pub bytes: u64,
    /// What it imports (WASI interfaces a toolchain links in; the sandbox
    /// links them deny-all).
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Compiling it to machine code (from the cache when one is set).
    pub compile_seconds: f64,
}

/// A component read, pinned, checked, compiled and linked.
struct Compiled {
    engine: Engine,
    component: Component,
    instance_pre: wasmtime::component::InstancePre<State>,
    sha256: String,
    facts: Facts,
}

/// Reads, pins, checks and compiles a component, and links it against the
/// sandbox's deny-all WASI: what every contract's loading shares.
fn compile(path: &Path, options: &LoadOptions) -> Result<Compiled, PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.into(), source })?;
    let sha256 = sha256_hex(&bytes);
    if let Some(pinned) = options.pinned_sha256.as_ref().filter(|p| !p.eq_ignore_ascii_case(&sha256)) {
        return Err(PluginError::PinMismatch { path: path.into(), pinned: pinned.clone(), actual: sha256 });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm { path: path.into() });
    }
    // Bytes 4..8: version and layer. Core modules are layer 0.
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::CoreModule { path: path.into() });
    }
    let engine = sandbox::engine(options.cache_dir.as_deref()).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let started = std::time::Instant::now();
    let component = Component::new(&engine, &bytes)
        .map_err(|e| PluginError::Invalid { path: path.into(), message: format!("{e:#}") })?;
    let names = |items: &mut dyn Iterator<Item = &str>| items.map(str::to_string).collect::<Vec<_>>();
    let ty = component.component_type();
    let facts = Facts {
        bytes: bytes.len() as u64,
        imports: names(&mut ty.imports(&engine).map(|(name, _)| name)),
        exports: names(&mut ty.exports(&engine).map(|(name, _)| name)),
        compile_seconds: started.elapsed().as_secs_f64(),
    };
    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| PluginError::Instantiate { path: path.into(), message: format!("{e:#}") })?;
    Ok(Compiled { engine, component, instance_pre, sha256, facts })
}

impl Plugin {
    /// Reads, checks, pins and compiles the component at `path`.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Arc<Plugin>, PluginError> {
        let Compiled { engine, component, instance_pre, sha256, facts } = compile(path, options)?;
        let pre = UserTransformPre::new(instance_pre)
            .map_err(|_| PluginError::WrongWorld { path: path.into(), exports: export_names(&engine, &component) })?;
        let key_export = component
            .get_export_index(None, bindings::KEY_INTERFACE)
            .and_then(|instance| component.get_export_index(Some(&instance), "target-key"));
        let plugin = Plugin { engine, pre, key_export, path: path.into(), sha256, limits: options.limits, facts };
        // Instantiate once now: a bad `user-key` signature is a load error.
        plugin.fresh()?;
        Ok(Arc::new(plugin))
    }

    /// SHA-256 of the `.wasm`, lowercase hex: the plugin's identity.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A fresh sandboxed instance.
    pub fn instantiate(self: &Arc<Self>) -> Result<Transformer, PluginError> {
        let (store, bindings, key) = self.fresh()?;
        Ok(Transformer { plugin: Arc::clone(self), store, bindings, key, traps: 0 })
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Whether the plugin maps source keys to target keys (`user-key`).
    pub fn has_key_mapping(&self) -> bool {
        self.key_export.is_some()
    }

    fn fresh(&self) -> Result<(Store<State>, UserTransform, Option<KeyFunc>), PluginError> {
        let instantiate =
            |e: wasmtime::Error| PluginError::Instantiate { path: self.path.clone(), message: format!("{e:#}") };
        let mut store = sandbox::store(&self.engine, &self.limits);
        let instance = self.pre.instance_pre().instantiate(&mut store).map_err(instantiate)?;
        let bindings = UserTransform::new(&mut store, &instance).map_err(instantiate)?;
        let key = match &self.key_export {
            None => None,
            Some(index) => Some(instance.get_typed_func(&mut store, index).map_err(|e| PluginError::Instantiate {
                path: self.path.clone(),
                message: format!("its `{}` export does not have the contract's type: {e:#}", bindings::KEY_INTERFACE),
            })?),
        };
        Ok((store, bindings, key))
    }
}

fn export_names(engine: &Engine, component: &Component) -> String {
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(_) => format!("instance {name}"),
            ComponentItem::ComponentFunc(_) => format!("function {name}"),
            _ => name.to_string(),
        })
        .collect();
    if names.is_empty() { "nothing".into() } else { names.join(", ") }
}

/// `user-key.target-key`: `func(id: s64) -> result<string, row-error>`.
type KeyFunc = TypedFunc<(i64,), (Result<String, bindings::RowError>,)>;

/// What became of a source key in `user-key.target-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    Key(String),
    Rejected(String),
    Trapped(String),
    Fatal(String),
}

/// One sandboxed instance of a plugin. Not shared between threads: each
/// transform worker owns one.
pub struct Transformer {
    plugin: Arc<Plugin>,
    store: Store<State>,
    bindings: UserTransform,
    key: Option<KeyFunc>,
    traps: u64,
}

impl Transformer {
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// How many traps this transformer has contained (each replaced the
    /// instance).
    pub fn traps(&self) -> u64 {
        self.traps
    }

    /// Transforms a batch: one [`Outcome`] per row, in order. The rows are
    /// handed back unchanged (they were moved across the border and back, not
    /// copied) so the caller can dead-letter them.
    ///
    /// The whole batch goes in one call. If that call traps, the instance is
    /// replaced and the batch is replayed one row per call on fresh instances
    /// to find the row(s) that trap; only those become `Trapped`.
    pub fn transform_batch(&mut self, rows: Vec<LegacyUser>) -> Result<(Vec<LegacyUser>, Vec<Outcome>), PluginError> {
        let wit_rows: Vec<_> = rows.into_iter().map(bindings::to_wit).collect();
        sandbox::arm(&mut self.store, &self.plugin.limits);
        let result = self.bindings.ferry_transform_transform_user().call_transform_batch(&mut self.store, &wit_rows);
        let rows: Vec<LegacyUser> = wit_rows.into_iter().map(bindings::from_wit).collect();
        match result {
            Ok(results) if results.len() == rows.len() => {
                Ok((rows, results.into_iter().map(bindings::outcome).collect()))
            }
            Ok(results) => {
                let message = format!(
                    "plugin returned {} results for a batch of {} rows (transform-batch must return one per row)",
                    results.len(),
                    rows.len()
                );
                Ok((rows.clone(), rows.iter().map(|_| Outcome::Fatal(message.clone())).collect()))
            }
            Err(_) => {
                self.replace()?;
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in &rows {
                    outcomes.push(self.transform_one(row)?);
                }
                Ok((rows, outcomes))
            }
        }
    }

    /// Transforms one row (one call). A trap is contained and reported as
    /// [`Outcome::Trapped`]; the instance is then replaced.
    pub fn transform_one(&mut self, row: &LegacyUser) -> Result<Outcome, PluginError> {
        let wit_row = bindings::to_wit(row.clone());
        sandbox::arm(&mut self.store, &self.plugin.limits);
        match self.bindings.ferry_transform_transform_user().call_transform(&mut self.store, &wit_row) {
            Ok(result) => Ok(bindings::outcome(result)),
            Err(err) => {
                let message = self.trap_message(&err);
                self.replace()?;
                Ok(Outcome::Trapped(message))
            }
        }
    }

    /// The target key of a source key, through the plugin's `user-key`
    /// export. `Ok(None)` when the plugin has no such export.
    pub fn target_key(&mut self, id: i64) -> Result<Option<KeyOutcome>, PluginError> {
        let Some(func) = self.key else { return Ok(None) };
        sandbox::arm(&mut self.store, &self.plugin.limits);
        match func.call(&mut self.store, (id,)) {
            Ok((Ok(key),)) => Ok(Some(KeyOutcome::Key(key))),
            Ok((Err(bindings::RowError::Reject(reason)),)) => Ok(Some(KeyOutcome::Rejected(reason))),
            Ok((Err(bindings::RowError::Fatal(reason)),)) => Ok(Some(KeyOutcome::Fatal(reason))),
            Err(err) => {
                let message = self.trap_message(&err);
                self.replace()?;
                Ok(Some(KeyOutcome::Trapped(message)))
            }
        }
    }

    fn trap_message(&self, err: &wasmtime::Error) -> String {
        describe_trap(err, &self.plugin.limits, &self.store.data().stderr())
    }

    fn replace(&mut self) -> Result<(), PluginError> {
        self.traps += 1;
        let (store, bindings, key) = self.plugin.fresh()?;
        self.store = store;
        self.bindings = bindings;
        self.key = key;
        Ok(())
    }
}

/// A trap as a dead letter's reason: what trapped, the limit it hit, and
/// what the plugin said on stderr before (bounded).
fn describe_trap(err: &wasmtime::Error, limits: &Limits, stderr: &str) -> String {
    let trap = match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("plugin trapped: exceeded its CPU deadline of {} ms for one call", limits.call_timeout.as_millis())
        }
        Some(trap) => format!("plugin trapped: {trap}"),
        None => format!("plugin trapped: {}", err.root_cause()),
    };
    // Rust's allocator says "memory allocation … failed"; CPython raises MemoryError.
    let memory = if format!("{err:?}").contains("growing memory")
        || stderr.contains("memory allocation")
        || stderr.contains("MemoryError")
    {
        format!(" (memory cap {} bytes reached)", limits.memory_bytes)
    } else {
        String::new()
    };
    // What the plugin said before dying (a panic message), without the
    // toolchain's hints, bounded.
    let said: Vec<&str> =
        stderr.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("note: run with")).collect();
    let said = said.join(" | ");
    let said = match said.char_indices().rev().nth(STDERR_IN_REASON) {
        Some((i, _)) => format!("…{}", &said[i..]),
        None => said,
    };
    if said.is_empty() { format!("{trap}{memory}") } else { format!("{trap}{memory}; plugin stderr: {said}") }
}
