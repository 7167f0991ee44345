//! The Wasm policy runtime: the only module that touches wasmtime.
//!
//! - One [`WasmRuntime`] per process: one [`wasmtime::Engine`] (epoch interruption on, a 1 ms
//!   ticker thread), one linker with the `log` and `describe-schema` imports and a WASI context
//!   that grants nothing.
//! - [`WasmRuntime::load`] compiles a component (or reuses the compiled artifact cached on disk
//!   under its content hash, produced earlier by this same engine), pre-instantiates it, creates a
//!   first instance and runs `init`; any failure refuses the module. This is slow (milliseconds
//!   to seconds) and never runs on the request path.
//! - A [`LoadedModule`] owns a pool of initialized instances. A call checks one out, runs with a
//!   fresh deadline, and checks it back in. A call that traps, runs past its deadline, or
//!   exhausts memory discards the instance; the next call builds a fresh one. Deadlines count the
//!   CPU time the call uses, with a wall-clock backstop ([`deadline`]).
//!
//! All calls are synchronous and may block for up to the call deadline (plus instance creation on
//! a cold pool): async callers run them on `tokio::task::spawn_blocking` (see
//! [`crate::policy::PolicyRegistry::decide_async`]).

mod answer;
mod answer_cache;
mod cache;
mod deadline;
pub use cache::default_dir as default_cache_dir;
#[cfg(test)]
pub(crate) use cache::CacheOutcome;
pub(crate) use deadline::thread_cpu_time;
pub(crate) mod host;
mod lift;
mod memo;
pub use memo::MemoUse;
mod module;
pub(crate) mod schemas;
mod wasi;
pub(crate) mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use globset::GlobSet;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use self::host::{HostState, LogSink};
use self::module::CallError;
pub(crate) use self::module::{Decide, Decided, LoadedModule};
use super::config::LimitsConfig;
use super::stats::BindingStats;
use super::PolicyError;

/// Bindings generated from `wit/policy.wit` (`kapsule:policy@0.3.0`): the host's own vocabulary
/// for talking to guests of every version.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "kapsule:policy/policy@0.3.0",
        additional_derives: [PartialEq, Eq],
    });
}

/// Bindings generated from `wit/v0.2/policy.wit` (`kapsule:policy@0.2.0`): only to link and
/// recognize 0.2 components; they are shown the 0.2 batch layout and their answers are lifted
/// into the 0.3 types (see [`lift`]).
pub(crate) mod bindings_v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "kapsule:policy/policy@0.2.0",
    });
}

/// Bindings generated from `wit/v0.1/policy.wit` (`kapsule:policy@0.1.0`): only to link and
/// recognize 0.1 components; their answers are lifted into the 0.2 types (see [`lift`]).
pub(crate) mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "kapsule:policy/policy@0.1.0",
    });
}

/// The contract version a component implements, recognized at load time by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WitVersion {
    /// `kapsule:policy@0.1.0`: `plan(topic)`, `decide(topic, batch)`, no `reveal`. Such a module
    /// sees no client, declares no memo key, and lets every principal read all.
    V0_1,
    /// `kapsule:policy@0.2.0`: no schema ids in the batch, no `schema-fields`, no
    /// `memo-key::headers`.
    V0_2,
    /// `kapsule:policy@0.3.0`.
    V0_3,
}

impl WitVersion {
    /// `0.1.0`, `0.2.0` or `0.3.0`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
            WitVersion::V0_3 => "0.3.0",
        }
    }
}

/// The binding a guest call is made for: how errors name it, which key ids its answers may use,
/// and where its counters go.
pub(crate) struct Caller<'a> {
    /// `bindings[i] (file)`.
    pub(crate) label: &'a str,
    /// The binding's `allowed_key_ids` patterns (`${topic}` not yet expanded).
    pub(crate) allowed_key_ids: &'a [String],
    /// The binding's counters.
    pub(crate) stats: &'a BindingStats,
}

impl Caller<'_> {
    /// The key ids `topic`'s answers may name.
    fn allowance(&self, topic: &str) -> Result<GlobSet, PolicyError> {
        super::key_allowance(self.label, self.allowed_key_ids, topic)
    }

    fn malformed(&self, reason: String) -> PolicyError {
        PolicyError::Malformed {
            binding: self.label.to_string(),
            reason,
        }
    }

    fn unavailable(&self, reason: String) -> PolicyError {
        PolicyError::Unavailable {
            binding: self.label.to_string(),
            reason,
        }
    }

    /// Accounts for a failed call (counters, last error, log) and returns the error.
    fn fail(&self, err: PolicyError, discarded: bool) -> PolicyError {
        self.stats.record_error(&err, discarded);
        tracing::warn!(policy = %self.label, kind = err.kind(), error = %err, "policy call failed");
        err
    }

    /// Reports that an audit found the memo of this binding's module wrong on `topic` (the memo
    /// is now off for that module version): one ERROR line (no record data: only the kinds of
    /// the two decisions) and the memo mismatch counter.
    fn memo_broken(&self, topic: &str, key: &crate::plan::MemoKey, m: &memo::MemoMismatch) {
        self.stats
            .memo_mismatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            policy = %self.label,
            topic,
            memo_key = %key,
            record = m.index,
            memo_decision = decision_kind(&m.memo),
            module_decision = decision_kind(&m.module),
            "policy memo broke its promise: the module decides this record differently from \
             the memo's answer for its memo value; memo turned off for this module version, the \
             batch is decided record by record (fix the policy's memo key: it must cover \
             everything decide reads)"
        );
    }

    fn call_failed(&self, e: CallError) -> PolicyError {
        let discarded = !matches!(e, CallError::Unavailable(_));
        self.fail(e.into_policy_error(self.label), discarded)
    }
}

/// `pass`, `encrypt` or `reject`, without key ids or messages (which may quote record data).
fn decision_kind(d: &crate::plan::RecordDecision) -> &'static str {
    match d {
        crate::plan::RecordDecision::Pass => "pass",
        crate::plan::RecordDecision::Encrypt(_) => "encrypt",
        crate::plan::RecordDecision::Reject(_) => "reject",
    }
}

/// A module file as read from disk: size-checked and hashed, by [`WasmRuntime::read_module`]
/// only.
pub(crate) struct ModuleFile {
    path: PathBuf,
    bytes: Vec<u8>,
    hash: String,
}

impl ModuleFile {
    /// SHA-256 (hex) of the file's content.
    pub(crate) fn hash(&self) -> &str {
        &self.hash
    }
}

/// SHA-256 (hex) of a module's bytes: its identity in the compile cache and in `/policies`.
fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

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
    /// Bytes one module version's cached plans, reveals and memoized decisions may take.
    pub answer_cache_bytes: usize,
    /// Largest single answer cached, bytes (larger ones are used once, not cached).
    pub answer_cache_entry_max_bytes: usize,
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
            answer_cache_bytes: usize::try_from(c.answer_cache_kib << 10).unwrap_or(usize::MAX),
            answer_cache_entry_max_bytes: usize::try_from(c.answer_cache_entry_max_kib << 10)
                .unwrap_or(usize::MAX),
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
        // Every world imports a root `log` with structurally equal types; the 0.3 definition,
        // added last, serves all. The older ones only contribute their (empty) types instances.
        linker.allow_shadowing(true);
        bindings_v0_1::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("{e:#}"))
            .context("linking the kapsule:policy@0.1.0 imports")?;
        bindings_v0_2::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("{e:#}"))
            .context("linking the kapsule:policy@0.2.0 imports")?;
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("{e:#}"))
            .context("linking the kapsule:policy@0.3.0 imports")?;
        linker.allow_shadowing(false);
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

    /// The engine (tests build raw artifacts with it).
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` through the on-disk cache; returns the component, its hash and whether
    /// the cache was used (the compile worker, and tests of the cache).
    pub(crate) fn compile_traced(
        &self,
        bytes: &[u8],
    ) -> anyhow::Result<(wasmtime::component::Component, String, cache::CacheOutcome)> {
        let hash = content_hash(bytes);
        let (component, outcome) = self.cache.compile(&self.engine, &hash, bytes)?;
        Ok((component, hash, outcome))
    }

    /// Reads a module file, refusing it (before reading it whole) when it is larger than
    /// `limits.module_max_mib`, and hashes it.
    pub(crate) fn read_module(&self, path: &Path) -> anyhow::Result<ModuleFile> {
        let too_large = |len: u64| {
            anyhow!(
                "policy module {} is {len} bytes, larger than limits.module_max_mib ({} MiB) allows",
                path.display(),
                self.limits.module_max_bytes >> 20
            )
        };
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading policy module {}", path.display()))?;
        if meta.len() > self.limits.module_max_bytes {
            return Err(too_large(meta.len()));
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading policy module {}", path.display()))?;
        // The file may have grown between the two looks.
        if bytes.len() as u64 > self.limits.module_max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(ModuleFile {
            path: path.to_path_buf(),
            hash: content_hash(&bytes),
            bytes,
        })
    }

    /// Compiles, links, instantiates and initializes a module read by
    /// [`WasmRuntime::read_module`]; the result serves calls. Fails (and the caller keeps the old
    /// version) on any problem: not a component, imports the sandbox does not provide, exports
    /// not matching the `kapsule:policy/policy` world, a trap or deadline in `init`, or `init`
    /// returning an error.
    pub(crate) fn load(
        self: &Arc<Self>,
        file: &ModuleFile,
        config: &str,
        log: Arc<LogSink>,
    ) -> anyhow::Result<LoadedModule> {
        let path = &file.path;
        let (component, _) = self
            .cache
            .compile(&self.engine, &file.hash, &file.bytes)
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
                     provide (only `log`, `describe-schema` and deny-all WASI are available)",
                    path.display()
                )
            })?;
        let version = match bindings::PolicyPre::new(pre.clone()) {
            Ok(_) => WitVersion::V0_3,
            Err(v3) => match bindings_v0_2::PolicyPre::new(pre.clone()) {
                Ok(_) => WitVersion::V0_2,
                Err(v2) => match bindings_v0_1::PolicyPre::new(pre.clone()) {
                    Ok(_) => WitVersion::V0_1,
                    Err(v1) => anyhow::bail!(
                        "policy module {} implements none of kapsule:policy@0.3.0 (exports \
                         init, plan, decide, reveal: {v3:#}), kapsule:policy@0.2.0 ({v2:#}) or \
                         kapsule:policy@0.1.0 (exports init, plan, decide: {v1:#}); rebuild it \
                         with a current SDK or against wit/policy.wit (docs/wit-versions.md \
                         lists what changed)",
                        path.display()
                    ),
                },
            },
        };
        let describes_schemas = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name == "describe-schema");
        LoadedModule::new(
            self.clone(),
            pre,
            version,
            file.hash.clone(),
            path,
            config,
            log,
        )
        .map(|m| m.describing_schemas(describes_schemas))
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("initializing policy module {}", path.display()))
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

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker.take();
    }
}
