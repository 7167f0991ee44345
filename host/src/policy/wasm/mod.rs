//! The Wasm policy runtime: the only module that touches wasmtime.
//!
//! - One [`WasmRuntime`] per process: one [`wasmtime::Engine`] (epoch interruption on, a 1 ms
//!   ticker thread), one linker with the `log` import and a WASI context that grants nothing.
//! - [`WasmRuntime::load`] compiles a component (or reuses the compiled artifact cached on disk
//!   under its content hash, produced earlier by this same engine), pre-instantiates it, creates a
//!   first instance and runs `init`; any failure refuses the module. This is slow (milliseconds
//!   to seconds) and never runs on the request path.
//! - A [`LoadedModule`] owns a pool of initialized instances. A call checks one out, runs with a
//!   fresh epoch deadline, and checks it back in. A call that traps, runs past its deadline, or
//!   exhausts memory discards the instance; the next call builds a fresh one.
//!
//! All calls are synchronous and may block for up to the call deadline (plus instance creation on
//! a cold pool): async callers run them on `tokio::task::spawn_blocking` (see
//! [`crate::policy::PolicyRegistry::decide_async`]).

mod cache;
pub use cache::default_dir as default_cache_dir;
#[cfg(test)]
pub(crate) use cache::CacheOutcome;
pub(crate) mod host;
mod lift;
mod wasi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Func, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use self::host::{HostState, LogSink};
use super::config::LimitsConfig;
use super::PolicyError;

/// Bindings generated from `wit/policy.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "kapsule:policy/policy",
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::kapsule::policy::types as wit;

/// Epoch tick period: deadlines are counted in ticks of this length.
const TICK: Duration = Duration::from_millis(1);

/// Sandbox limits in the units the runtime uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: usize,
    /// Deadline of one `plan` call, and the base deadline of a `decide` call.
    pub call_timeout: Duration,
    /// Extra deadline of a `decide` call per record of the batch.
    pub call_per_record: Duration,
    /// Largest deadline of one call, whatever the batch size.
    pub call_max: Duration,
    /// Most host bytes one guest answer may lift.
    pub answer_max_bytes: usize,
    /// Deadline of instantiation plus `init`.
    pub init_timeout: Duration,
    /// Wasm stack limit, bytes.
    pub stack_bytes: usize,
    /// Most live instances per module.
    pub max_instances: usize,
    /// Log messages per second per binding.
    pub log_per_second: u32,
    /// Longest log message kept, bytes.
    pub log_max_bytes: usize,
    /// Largest module file accepted, bytes.
    pub module_max_bytes: u64,
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Self {
        Self {
            memory_bytes: usize::try_from(c.memory_mib << 20).unwrap_or(usize::MAX),
            call_timeout: Duration::from_millis(c.call_timeout_ms),
            call_per_record: Duration::from_micros(c.call_timeout_per_record_us),
            call_max: Duration::from_millis(c.call_timeout_max_ms.max(c.call_timeout_ms)),
            answer_max_bytes: usize::try_from(c.answer_max_kib << 10).unwrap_or(usize::MAX),
            init_timeout: Duration::from_millis(c.init_timeout_ms),
            stack_bytes: usize::try_from(c.stack_kib << 10).unwrap_or(usize::MAX),
            max_instances: c.max_instances,
            log_per_second: c.log_messages_per_second,
            log_max_bytes: c.log_message_max_bytes,
            module_max_bytes: c.module_max_mib << 20,
        }
    }
}

impl Limits {
    /// The deadline of a `decide` call over `records` records: the base deadline plus the
    /// per-record allowance, capped at `call_max`. An infinite loop is stopped within it.
    pub fn decide_budget(&self, records: usize) -> Duration {
        let per = self
            .call_per_record
            .saturating_mul(u32::try_from(records).unwrap_or(u32::MAX));
        self.call_timeout.saturating_add(per).min(self.call_max)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from(&LimitsConfig::default())
    }
}

/// The process-wide Wasm engine, linker, epoch ticker and compiled-module cache.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    cache: cache::CompileCache,
    limits: Limits,
    ticker: Option<Ticker>,
}

/// The epoch ticker: advances the engine's epoch every [`TICK`] while guest code runs, and parks
/// while none does, so an idle proxy does not wake up a thousand times a second.
struct Ticker {
    stop: Arc<AtomicBool>,
    /// Guest calls in progress.
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Marks a guest call as running until the guard drops; wakes the ticker if it was idle.
    fn busy(&self) -> BusyGuard {
        if self.active.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        BusyGuard(self.active.clone())
    }
}

/// See [`Ticker::busy`].
struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("cache_dir", &self.cache_dir)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// Creates the engine, the linker and the epoch ticker thread; `cache_dir` is created (mode
    /// 0700) if missing and refused if another user could write it (see [`cache`]).
    pub fn new(cache_dir: &Path, limits: Limits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.stack_bytes)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow!("{e:#}"))
            .context("creating the Wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker)
            .map_err(|e| anyhow!("{e:#}"))
            .context("linking the (deny-all) WASI interfaces")?;
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("{e:#}"))
            .context("linking the policy imports")?;
        let cache = cache::CompileCache::open(cache_dir, limits.stack_bytes)?;

        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            let active = active.clone();
            std::thread::Builder::new()
                .name("kapsule-policy-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if active.load(Ordering::SeqCst) == 0 {
                            // Deadlines count from the epoch at call start, so pausing the
                            // epoch while no call runs changes no deadline.
                            std::thread::park_timeout(Duration::from_millis(200));
                            continue;
                        }
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .context("starting the policy epoch ticker thread")?
        };
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            cache,
            limits,
            ticker: Some(Ticker {
                stop,
                active,
                thread: Some(thread),
            }),
        })
    }

    /// Keeps the epoch advancing (deadlines enforced) until the guard drops.
    fn busy(&self) -> Option<BusyGuard> {
        self.ticker.as_ref().map(Ticker::busy)
    }

    /// The sandbox limits every instance gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles `bytes` into a component, reusing the authenticated artifact cached on disk
    /// under the bytes' SHA-256 when this engine produced it earlier. Returns the component and
    /// the hex hash.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<(Component, String)> {
        self.compile_traced(bytes).map(|(c, h, _)| (c, h))
    }

    /// The engine (tests build raw artifacts with it).
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// As [`WasmRuntime::compile`], also saying whether the cache was used.
    pub(crate) fn compile_traced(
        &self,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, String, cache::CacheOutcome)> {
        let hash = hex::encode(Sha256::digest(bytes));
        let (component, outcome) = self.cache.compile(&self.engine, &hash, bytes)?;
        Ok((component, hash, outcome))
    }

    /// Reads, compiles, links, instantiates and initializes a module; the result serves calls.
    /// Fails (and the caller keeps the old version) on any problem: unreadable or oversized
    /// file, not a component, imports the sandbox does not provide, exports not matching the
    /// `kapsule:policy/policy` world, a trap or deadline in `init`, or `init` returning an error.
    pub(crate) fn load(
        self: &Arc<Self>,
        path: &Path,
        config: &str,
        log: Arc<LogSink>,
    ) -> anyhow::Result<LoadedModule> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading policy module {}", path.display()))?;
        if meta.len() > self.limits.module_max_bytes {
            anyhow::bail!(
                "policy module {} is {} bytes, larger than limits.module_max_mib allows",
                path.display(),
                meta.len()
            );
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading policy module {}", path.display()))?;
        self.load_bytes(&bytes, path, config, log)
    }

    /// As [`WasmRuntime::load`], from bytes already read (`path` is only reported).
    pub(crate) fn load_bytes(
        self: &Arc<Self>,
        bytes: &[u8],
        path: &Path,
        config: &str,
        log: Arc<LogSink>,
    ) -> anyhow::Result<LoadedModule> {
        let (component, hash) = self
            .compile(bytes)
            .with_context(|| format!("compiling policy module {}", path.display()))?;
        let linker = wasi::with_denying_stubs(&self.linker, &self.engine, &component)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| format!("linking policy module {}", path.display()))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| {
                format!(
                    "linking policy module {}: it imports something the sandbox does not \
                     provide (only `log` and deny-all WASI are available)",
                    path.display()
                )
            })?;
        let pre = bindings::PolicyPre::new(pre)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| {
                format!(
                    "policy module {} does not implement the kapsule:policy/policy world \
                     (exports init, plan, decide)",
                    path.display()
                )
            })?;
        let module = LoadedModule {
            runtime: self.clone(),
            pre,
            hash,
            path: path.to_path_buf(),
            config: config.to_string(),
            loaded_at: SystemTime::now(),
            log,
            pool: Pool {
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    live: 0,
                }),
                cv: Condvar::new(),
                max: self.limits.max_instances.max(1),
            },
            plans: Mutex::new(HashMap::new()),
        };
        // Build and init one instance now so a broken module is refused before it serves.
        let inst = module
            .new_instance()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("initializing policy module {}", path.display()))?;
        {
            let mut st = module.pool.state.lock();
            st.live += 1;
            st.idle.push(inst);
        }
        Ok(module)
    }
}

/// Stack of a loader thread: compilation and `init` (which runs under `limits.stack_kib` of Wasm
/// stack, at most 1 MiB) with room to spare.
const LOADER_STACK: usize = 8 << 20;

/// Runs `f` (compiling, instantiating, initializing modules) on a new thread of `scope`: outside
/// any async runtime, whatever thread the caller is on, so guest output and WASI calls never try
/// to block on a runtime worker ("Cannot start a runtime from within a runtime").
pub(crate) fn spawn_loader<'scope, 'env, R: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'scope,
) -> std::io::Result<std::thread::ScopedJoinHandle<'scope, anyhow::Result<R>>> {
    std::thread::Builder::new()
        .name("kapsule-policy-load".into())
        .stack_size(LOADER_STACK)
        .spawn_scoped(scope, f)
}

/// Waits for a loader started by [`spawn_loader`]; a thread that could not start or panicked
/// is an error.
pub(crate) fn join_loader<R>(
    h: std::io::Result<std::thread::ScopedJoinHandle<'_, anyhow::Result<R>>>,
) -> anyhow::Result<R> {
    h.context("starting a policy loader thread")?
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the policy loader thread panicked")))
}

/// One initialized policy instance with its own store. `plan` and `decide` are called through
/// typed views whose answers are lifted lazily (see [`lift`]).
struct Instance {
    store: Store<HostState>,
    exports: Exports,
}

/// The guest functions Kapsule calls after `init`.
#[derive(Clone, Copy)]
struct Exports {
    plan: Func,
    decide: Func,
}

struct PoolState {
    idle: Vec<Instance>,
    live: usize,
}

struct Pool {
    state: Mutex<PoolState>,
    cv: Condvar,
    max: usize,
}

/// A loaded, initialized version of one policy module; immutable except for its instance pool and
/// plan cache. Replaced as a whole on reload.
pub struct LoadedModule {
    runtime: Arc<WasmRuntime>,
    pre: bindings::PolicyPre<HostState>,
    hash: String,
    path: PathBuf,
    config: String,
    loaded_at: SystemTime,
    log: Arc<LogSink>,
    pool: Pool,
    /// Validated plans by topic (this module version only).
    pub(crate) plans: Mutex<HashMap<String, Arc<super::TopicEntry>>>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("path", &self.path)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Failure of one guest call, before it is attributed to a binding.
#[derive(Debug)]
pub(crate) enum CallError {
    Deadline(Duration),
    Memory(usize),
    Trap(String),
    Malformed(String),
    Unavailable(String),
}

impl CallError {
    pub(crate) fn into_policy_error(self, binding: &str) -> PolicyError {
        let binding = binding.to_string();
        match self {
            CallError::Deadline(t) => PolicyError::Deadline {
                binding,
                timeout_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            },
            CallError::Memory(b) => PolicyError::MemoryExhausted {
                binding,
                limit_mib: (b >> 20) as u64,
            },
            CallError::Trap(message) => PolicyError::Trap { binding, message },
            CallError::Malformed(reason) => PolicyError::Malformed { binding, reason },
            CallError::Unavailable(reason) => PolicyError::Unavailable { binding, reason },
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Deadline(t) => write!(f, "exceeded its {} ms deadline", t.as_millis()),
            CallError::Memory(b) => write!(f, "exceeded its {} MiB memory limit", b >> 20),
            CallError::Trap(m) => write!(f, "trapped: {m}"),
            CallError::Malformed(m) => write!(f, "returned a malformed answer: {m}"),
            CallError::Unavailable(m) => write!(f, "unavailable: {m}"),
        }
    }
}

impl LoadedModule {
    /// SHA-256 (hex) of the module file this version was built from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The module file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When this version finished loading.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Live instances (idle plus in use).
    pub fn live_instances(&self) -> usize {
        self.pool.state.lock().live
    }

    fn new_store(&self) -> Store<HostState> {
        let limits = &self.runtime.limits;
        let mut store = Store::new(
            &self.runtime.engine,
            HostState::new(limits.memory_bytes, self.log.clone()),
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store
    }

    /// Instantiates and runs `init` under the init deadline.
    fn new_instance(&self) -> Result<Instance, CallError> {
        let _busy = self.runtime.busy();
        let limits = &self.runtime.limits;
        let mut store = self.new_store();
        store.set_epoch_deadline(ticks(limits.init_timeout));
        let init_failed = |store: &Store<HostState>, e| {
            classify(store, e, limits.init_timeout, limits.memory_bytes)
        };
        let instance = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| init_failed(&store, e))?;
        let policy =
            bindings::Policy::new(&mut store, &instance).map_err(|e| init_failed(&store, e))?;
        let export = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| CallError::Unavailable(format!("the module exports no `{name}`")))
        };
        let plan = export(&mut store, "plan")?;
        let decide = export(&mut store, "decide")?;
        match policy.call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Instance {
                store,
                exports: Exports { plan, decide },
            }),
            Ok(Err(msg)) => Err(CallError::Unavailable(format!(
                "init refused its config: {}",
                truncate(&msg, 1024)
            ))),
            Err(e) => Err(classify(
                &store,
                e,
                limits.init_timeout,
                limits.memory_bytes,
            )),
        }
    }

    fn checkout(&self) -> Result<Instance, CallError> {
        let mut st = self.pool.state.lock();
        loop {
            if let Some(i) = st.idle.pop() {
                return Ok(i);
            }
            if st.live < self.pool.max {
                st.live += 1;
                drop(st);
                return self.new_instance().inspect_err(|_| {
                    self.pool.state.lock().live -= 1;
                    self.pool.cv.notify_one();
                });
            }
            // Every instance is busy: wait for one. Calls are bounded by their deadline, so
            // this wait is too; the timeout only guards against a bug.
            if self
                .pool
                .cv
                .wait_for(&mut st, Duration::from_secs(30))
                .timed_out()
            {
                return Err(CallError::Unavailable(format!(
                    "all {} instances stayed busy for 30 s",
                    self.pool.max
                )));
            }
        }
    }

    fn checkin(&self, inst: Instance, healthy: bool) {
        let mut st = self.pool.state.lock();
        if healthy {
            st.idle.push(inst);
        } else {
            st.live -= 1;
            drop(st);
            drop(inst);
        }
        self.pool.cv.notify_one();
    }

    /// Runs `f` on a pooled instance under the deadline `budget`, lifting at most
    /// `limits.answer_max_bytes` of answer. On failure the instance is discarded; the next
    /// call builds a fresh one.
    fn with_instance<R>(
        &self,
        budget: Duration,
        f: impl FnOnce(&mut Store<HostState>, Exports) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let _busy = self.runtime.busy();
        let limits = &self.runtime.limits;
        let mut inst = self.checkout()?;
        inst.store.set_epoch_deadline(ticks(budget));
        // A refused growth in an earlier, successful call must not colour this call's trap.
        inst.store.data_mut().limiter.start_call();
        let (result, too_large) =
            lift::with_budget(limits.answer_max_bytes, || f(&mut inst.store, inst.exports));
        match result {
            Ok(r) => {
                self.checkin(inst, true);
                Ok(r)
            }
            Err(_) if too_large => {
                self.checkin(inst, false);
                Err(CallError::Malformed(format!(
                    "the answer needs more than {} KiB of host memory \
                     (raise policy.limits.answer_max_kib if that is legitimate)",
                    limits.answer_max_bytes >> 10
                )))
            }
            Err(e) => {
                let err = classify(&inst.store, e, budget, limits.memory_bytes);
                self.checkin(inst, false);
                Err(err)
            }
        }
    }

    /// Calls the guest's `plan` under the call deadline.
    pub(crate) fn call_plan(&self, topic: &str) -> Result<wit::TopicPlan, CallError> {
        self.with_instance(self.runtime.limits.call_timeout, |store, ex| {
            let f = ex.plan.typed::<(&str,), (lift::RawTopicPlan,)>(&*store)?;
            let (raw,) = f.call(&mut *store, (topic,))?;
            Ok(raw.into())
        })
    }

    /// Calls the guest's `decide` under the deadline for a batch of this size
    /// ([`Limits::decide_budget`]).
    pub(crate) fn call_decide(
        &self,
        topic: &str,
        batch: &wit::BatchView,
    ) -> Result<wit::Decisions, CallError> {
        let budget = self.runtime.limits.decide_budget(batch.records.len());
        self.with_instance(budget, |store, ex| {
            let f = ex
                .decide
                .typed::<(&str, &wit::BatchView), (lift::RawDecisions,)>(&*store)?;
            let (raw,) = f.call(&mut *store, (topic, batch))?;
            Ok(raw.into())
        })
    }
}

/// Epoch ticks for a deadline, rounded up, plus one so a call that starts just before a tick
/// still gets at least its full time.
fn ticks(d: Duration) -> u64 {
    let t = d.as_micros().div_ceil(TICK.as_micros());
    u64::try_from(t).unwrap_or(u64::MAX / 2).saturating_add(1)
}

/// Maps a wasmtime error to what happened: deadline, memory exhaustion or another trap.
fn classify(
    store: &Store<HostState>,
    e: wasmtime::Error,
    deadline: Duration,
    mem: usize,
) -> CallError {
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return CallError::Deadline(deadline);
    }
    if store.data().limiter.hit {
        return CallError::Memory(mem);
    }
    // The trap itself ("wasm trap: call stack exhausted"); the wasm backtrace wasmtime attaches
    // is only logged at debug level.
    tracing::debug!(error = %format!("{e:?}"), "policy trap details");
    match e.downcast_ref::<Trap>() {
        Some(t) => CallError::Trap(t.to_string()),
        None => CallError::Trap(truncate(&format!("{e:#}"), 2048)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker.take();
    }
}
