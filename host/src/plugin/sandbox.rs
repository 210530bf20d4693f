//! The sandbox: engine configuration, per-instance limits and the CPU
//! deadline, all in one place with their defaults named.
//!
//! A plugin gets no filesystem, network, environment, arguments or clock: the
//! WASI context is empty (a wasm32-wasip2 component imports WASI interfaces
//! even when it never uses them, so they are linked, granting nothing), the
//! clocks are frozen at the epoch, `wasi:random` is a seeded generator reset
//! before every call ([`arm`]), stdout is discarded and stderr is captured
//! (bounded) so a panic message can be reported with the trap.

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Config, Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Default memory cap per plugin instance. The seed transform needs well
/// under 2 MiB for a batch of 10k rows; 64 MiB leaves room for real plugins
/// with large documents while keeping N workers × cap far below the host's
/// memory target.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

/// Default CPU deadline per plugin call. A batch of 10k seed rows takes about
/// 20 ms; a call still running after 2 s is a plugin stuck in a loop.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The epoch ticker's period: the resolution of the call deadline. Epoch
/// interruption costs ~35% less than fuel metering on the seed transform.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of the plugin's stderr kept to explain a trap (a panic message).
const STDERR_CAPTURE: usize = 16 << 10;

/// What a pipeline grants its plugins beyond the deny-all default
/// (`[plugin] grants`). Files, sockets, the environment and arguments are
/// never granted. A granted plugin is no longer a pure function of its
/// input: `validate` may see other rows than the run wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Grants {
    /// The host's clocks (wall and monotonic) instead of the epoch.
    pub clocks: bool,
    /// The host's randomness instead of a generator seeded alike for every call.
    pub random: bool,
}

impl Grants {
    /// The names in `[plugin] grants`.
    pub const NAMES: [&'static str; 2] = ["clocks", "random"];

    pub fn parse(names: &[String]) -> Result<Grants, String> {
        let mut grants = Grants::default();
        for name in names {
            match name.as_str() {
                "clocks" => grants.clocks = true,
                "random" => grants.random = true,
                other => {
                    return Err(format!(
                        "plugin.grants: `{other}` is not a grant; the grants are {} (files, sockets and the \
                         environment are never granted)",
                        Grants::NAMES.join(" and ")
                    ));
                }
            }
        }
        Ok(grants)
    }

    /// The grants given, by name (empty: deny-all).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.clocks {
            names.push("clocks");
        }
        if self.random {
            names.push("random");
        }
        names
    }
}

/// Limits applied to every plugin instance, and what it is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory of one instance, in bytes.
    pub memory_bytes: u64,
    /// Maximum wall time of one call into the plugin.
    pub call_timeout: Duration,
    pub grants: Grants,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: DEFAULT_MEMORY_LIMIT, call_timeout: DEFAULT_CALL_TIMEOUT, grants: Grants::default() }
    }
}

impl Limits {
    /// The deadline of one call, in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }
}

/// Builds the engine every plugin runs in. `cache_dir`, when given, keeps
/// compiled plugins on disk so that later runs skip compilation.
pub fn engine(cache_dir: Option<&std::path::Path>) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if let Some(dir) = cache_dir {
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    let engine = Engine::new(&config)?;
    spawn_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped (the thread holds only a weak handle).
fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("ferry-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}

/// What a plugin's store holds: its (empty) WASI context and its limits.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    stderr: MemoryOutputPipe,
    random: SeededRandom,
}

impl State {
    pub fn new(limits: &Limits) -> State {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let random = SeededRandom::new();
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        if !limits.grants.clocks {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        if !limits.grants.random {
            wasi.secure_random(random.clone())
                .insecure_random(random.clone())
                .insecure_random_seed(u128::from(RANDOM_SEED));
        }
        let wasi = wasi.build();
        let limits =
            StoreLimitsBuilder::new().memory_size(limits.memory_bytes as usize).trap_on_grow_failure(true).build();
        State { wasi, table: ResourceTable::new(), limits, stderr, random }
    }

    /// What the plugin wrote to stderr (e.g. a panic message), trimmed.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A clock that never moves: plugins are deterministic functions of their
/// input, so that validation can re-run them and get the same rows.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A store for one instance: the memory cap as its limiter, the CPU
/// deadline armed.
pub fn store(engine: &Engine, limits: &Limits) -> wasmtime::Store<State> {
    let mut store = wasmtime::Store::new(engine, State::new(limits));
    store.limiter(|s| &mut s.limits);
    arm(&mut store, limits);
    store
}

/// Before every call into a plugin: the CPU deadline starts again, and
/// `wasi:random` starts again from the same seed — so a plugin that draws
/// random numbers still returns the same output for the same call (the
/// rows `validate` re-transforms, the row-by-row replay after a trap).
/// What an instance keeps between calls in its own memory is its own.
pub fn arm(store: &mut wasmtime::Store<State>, limits: &Limits) {
    store.set_epoch_deadline(limits.deadline_ticks());
    store.data().random.reset();
}

/// The seed every call's random numbers start from.
const RANDOM_SEED: u64 = 0x6665_7272_7921;

/// `wasi:random` for plugins (secure and insecure alike): a seeded
/// generator shared with the host, which resets it before each call.
#[derive(Clone)]
pub struct SeededRandom(std::sync::Arc<std::sync::Mutex<wasi_rand::rngs::StdRng>>);

impl SeededRandom {
    fn new() -> SeededRandom {
        use wasi_rand::SeedableRng;
        SeededRandom(std::sync::Arc::new(std::sync::Mutex::new(wasi_rand::rngs::StdRng::seed_from_u64(RANDOM_SEED))))
    }

    fn reset(&self) {
        use wasi_rand::SeedableRng;
        *self.0.lock().expect("random lock") = wasi_rand::rngs::StdRng::seed_from_u64(RANDOM_SEED);
    }
}

impl wasi_rand::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(wasi_rand::Rng::next_u32(&mut *self.0.lock().expect("random lock")))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(wasi_rand::Rng::next_u64(&mut *self.0.lock().expect("random lock")))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        wasi_rand::Rng::fill_bytes(&mut *self.0.lock().expect("random lock"), dst);
        Ok(())
    }
}
