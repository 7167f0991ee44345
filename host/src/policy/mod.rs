//! Where encryption plans come from: built-in config rules and sandboxed Wasm policy components.
//!
//! The proxy talks to one type, [`PolicyRegistry`]:
//! - [`PolicyRegistry::topic_plan`] once per produce batch (cached per topic and module version;
//!   only a cache miss on a Wasm binding runs guest code);
//! - [`PolicyRegistry::decide`] for topics whose plan is [`TopicPlan::PerRecord`]: one guest call
//!   per record batch, showing only the parts the plan's [`Needs`] asked for;
//! - [`PolicyRegistry::decrypt_settings`] on Fetch.
//!
//! Resolution order for a topic: the bindings in config order, then the rules in config order;
//! the first match wins; a topic nothing matches is passed or rejected as `unmatched_topics` says.
//!
//! Blocking: the sync methods may run guest code for up to `limits.call_timeout_ms` (plus instance
//! creation when the pool is cold). From async code use [`PolicyRegistry::topic_plan_async`] and
//! [`PolicyRegistry::decide_async`], which answer cached and rule-based plans inline and move
//! guest calls to `tokio::task::spawn_blocking`.
//!
//! Every [`PolicyError`] is non-retriable: the proxy fails the affected partitions (Kafka error
//! `POLICY_VIOLATION`, code 44) and never forwards their records.

pub mod cli;
pub mod config;
pub mod fixtures;
mod loading;
pub mod rules;
pub mod scaffold;
mod stats;
pub mod wasm;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use globset::{GlobSet, GlobSetBuilder};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use self::config::{DecryptSettings, KekAllowance, PolicyConfig, UnmatchedTopics};
use self::rules::{Rule, TopicMatcher};
use self::stats::BindingStats;
use self::wasm::bindings::kapsule::policy::types as wit;
use self::wasm::host::LogSink;
use self::wasm::{CallError, Limits, LoadedModule, WasmRuntime};
use crate::kafka::records::Record;
use crate::plan::{EncryptionPlan, Needs, RecordDecision, Reveal, TopicPlan, ValuePart};
use crate::principal::Principal;

/// Longest key id a policy may name.
const MAX_KEY_ID_LEN: usize = 256;
/// Longest reject message kept (longer ones are truncated).
const MAX_REJECT_LEN: usize = 1024;
/// Topics remembered in the resolution cache before it is cleared.
const MAX_CACHED_TOPICS: usize = 65_536;

/// A policy failed to give a usable answer. The affected records must not be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The guest trapped (panic, unreachable, out-of-bounds access, stack overflow, ...).
    #[error("policy {binding} trapped: {message}; the instance was discarded")]
    Trap {
        /// Which binding.
        binding: String,
        /// The trap, as wasmtime reports it.
        message: String,
    },
    /// The guest ran past its call deadline.
    #[error(
        "policy {binding} exceeded its {timeout_ms} ms call deadline; the instance was discarded \
         (raise policy.limits.call_timeout_ms if the policy is legitimately slow)"
    )]
    Deadline {
        /// Which binding.
        binding: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error(
        "policy {binding} exceeded its {limit_mib} MiB memory limit; the instance was discarded \
         (raise policy.limits.memory_mib if needed)"
    )]
    MemoryExhausted {
        /// Which binding.
        binding: String,
        /// The cap.
        limit_mib: u64,
    },
    /// The guest's answer breaks the contract (wrong decision count, bad JSON pointer, ...).
    #[error("policy {binding} returned a malformed answer: {reason}")]
    Malformed {
        /// Which binding.
        binding: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest named a key outside the binding's `allowed_key_ids`.
    #[error(
        "policy {binding} named key id `{key_id}` for topic `{topic}`, which its allowed_key_ids \
         do not allow"
    )]
    KeyNotAllowed {
        /// Which binding.
        binding: String,
        /// The topic.
        topic: String,
        /// The refused key id.
        key_id: String,
    },
    /// The binding's module is still being compiled at start-up; retriable. Its records are
    /// not forwarded.
    #[error(
        "policy {binding} is still compiling its module; retry shortly (nothing was forwarded)"
    )]
    Loading {
        /// Which binding.
        binding: String,
    },
    /// The policy could not be run at all (instance creation failed, pool stuck, task lost).
    #[error("policy {binding} is unavailable: {reason}")]
    Unavailable {
        /// Which binding.
        binding: String,
        /// Why.
        reason: String,
    },
}

impl PolicyError {
    /// The binding the error belongs to (`bindings[i] (file)`).
    pub fn binding(&self) -> &str {
        match self {
            Self::Trap { binding, .. }
            | Self::Deadline { binding, .. }
            | Self::MemoryExhausted { binding, .. }
            | Self::Malformed { binding, .. }
            | Self::KeyNotAllowed { binding, .. }
            | Self::Loading { binding }
            | Self::Unavailable { binding, .. } => binding,
        }
    }

    /// `true` only for [`PolicyError::Loading`]: otherwise retrying the same records against
    /// the same policy gives the same answer.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Loading { .. })
    }

    /// The Kafka error to answer: REQUEST_TIMED_OUT (retriable) while the module compiles,
    /// POLICY_VIOLATION otherwise.
    pub fn kafka_error(&self) -> kafka_protocol::error::ResponseError {
        use kafka_protocol::error::ResponseError;
        if self.is_retriable() {
            ResponseError::RequestTimedOut
        } else {
            ResponseError::PolicyViolation
        }
    }

    /// The numeric Kafka error code of [`PolicyError::kafka_error`].
    pub fn kafka_error_code(&self) -> i16 {
        self.kafka_error().code()
    }

    /// Short machine-readable kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Trap { .. } => "trap",
            Self::Deadline { .. } => "deadline",
            Self::MemoryExhausted { .. } => "memory",
            Self::Malformed { .. } => "malformed",
            Self::KeyNotAllowed { .. } => "key_not_allowed",
            Self::Loading { .. } => "loading",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Checks RFC 6901 syntax: empty is refused (use `whole`), otherwise `/`-separated tokens where
/// `~` is only followed by `0` or `1`.
pub fn validate_json_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty JSON pointer (it would name the whole value; use `whole`)".into());
    }
    if !p.starts_with('/') {
        return Err(format!("JSON pointer `{p}` must start with `/`"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "JSON pointer `{p}` has `~` not followed by 0 or 1 (escape `~` as `~0`, `/` as `~1`)"
            ));
        }
    }
    Ok(())
}

/// A validated plan of one topic under one module version, with the key allowance expanded for
/// the topic.
#[derive(Debug)]
pub(crate) struct TopicEntry {
    plan: TopicPlan,
    allowed: GlobSet,
}

/// One `bindings[i]` entry with its current module version.
struct Binding {
    label: Arc<str>,
    selector: String,
    matcher: TopicMatcher,
    module_path: PathBuf,
    config: String,
    allowed: Vec<String>,
    decrypt: DecryptSettings,
    /// `None` until the first version has loaded (see [`loading`]).
    current: ArcSwapOption<LoadedModule>,
    /// Why the first version failed to load at start-up (`None` while loading or once loaded).
    load_error: Mutex<Option<String>>,
    stats: BindingStats,
    log: Arc<LogSink>,
    reload_lock: Mutex<()>,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Binding(usize),
    Rule(usize),
    Unmatched,
}

struct Inner {
    runtime: Option<Arc<WasmRuntime>>,
    /// Bindings whose first load has not finished, and its condition variable.
    pending: Mutex<usize>,
    ready: parking_lot::Condvar,
    bindings: Vec<Binding>,
    rules: Vec<Rule>,
    unmatched: UnmatchedTopics,
    resolved: RwLock<HashMap<String, Target>>,
    watcher: Mutex<Option<watch::ModuleWatcher>>,
}

/// The single entry point of the proxy into policies. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PolicyRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRegistry")
            .field("bindings", &self.inner.bindings.len())
            .field("rules", &self.inner.rules.len())
            .finish_non_exhaustive()
    }
}

/// Outcome of reloading one binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The file's content hash did not change.
    Unchanged,
    /// A new version was loaded and now serves.
    Reloaded {
        /// SHA-256 of the new version.
        content_hash: String,
    },
    /// The new version failed; the old one keeps serving.
    Refused {
        /// Why.
        error: String,
    },
}

/// Snapshot for `GET /policies`.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// What happens to topics nothing matches (`pass` or `reject`).
    pub unmatched_topics: &'static str,
    /// Number of built-in rules.
    pub rules: usize,
    /// One entry per binding, in config order.
    pub bindings: Vec<BindingStatus>,
}

/// State and counters of one binding.
#[derive(Debug, Clone, Serialize)]
pub struct BindingStatus {
    /// `bindings[i] (file)`.
    pub binding: String,
    /// The topic selector.
    pub topics: String,
    /// Module file.
    pub module: String,
    /// `loading` (first version still compiling), `ready`, or `failed` (first version refused;
    /// its topics are refused until a reload succeeds).
    pub state: &'static str,
    /// SHA-256 of the version serving now (empty before the first load).
    pub content_hash: String,
    /// When that version was loaded (Unix ms).
    pub loaded_at_unix_ms: u64,
    /// Live instances.
    pub instances: usize,
    /// Guest calls (`plan` and `decide`) since start.
    pub calls: u64,
    /// Failed guest calls and contract violations since start.
    pub errors: u64,
    /// Of which: deadline exceeded.
    pub deadlines: u64,
    /// Of which: memory exhausted.
    pub memory_exhausted: u64,
    /// Of which: traps.
    pub traps: u64,
    /// Of which: malformed answers and key violations.
    pub violations: u64,
    /// Instances discarded after a failure.
    pub instances_discarded: u64,
    /// Versions refused on reload.
    pub refusals: u64,
    /// Versions loaded (including the first).
    pub loads: u64,
    /// Guest log messages emitted / dropped by the rate limit.
    pub log_emitted: u64,
    /// Guest log messages dropped by the rate limit.
    pub log_dropped: u64,
    /// 99th percentile guest call time since start, microseconds (`None` before the first call).
    pub p99_call_us: Option<f64>,
    /// Most recent call error.
    pub last_error: Option<String>,
    /// Most recent refused reload.
    pub last_refusal: Option<String>,
}

impl PolicyRegistry {
    /// Compiles the rules and topic selectors and starts the Wasm runtime (only if there are
    /// bindings); every binding starts without a module. Fast: no module is compiled here.
    fn build(config: &PolicyConfig) -> anyhow::Result<Self> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::compile(r).with_context(|| format!("policy.rules[{i}]")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let limits = Limits::from(&config.limits);
        let runtime = if config.bindings.is_empty() {
            None
        } else {
            let dir = config
                .module_cache_dir
                .clone()
                .unwrap_or_else(wasm::default_cache_dir);
            Some(Arc::new(WasmRuntime::new(&dir, limits.clone())?))
        };
        let mut bindings = Vec::new();
        let mut failures = Vec::new();
        for (i, b) in config.bindings.iter().enumerate() {
            let label = binding_label(i, &b.module);
            let matcher = match b.topics.compile() {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("policy.bindings[{i}].topics: {e}"));
                    continue;
                }
            };
            let log = Arc::new(LogSink::new(
                label.clone(),
                limits.log_per_second,
                limits.log_max_bytes,
            ));
            bindings.push(Binding {
                label,
                selector: b.topics.to_string(),
                matcher,
                module_path: b.module.clone(),
                config: b.config.clone(),
                allowed: b.allowed_key_ids.clone(),
                decrypt: DecryptSettings {
                    on_decrypt_failure: b.on_decrypt_failure,
                    require_encrypted: b.require_encrypted,
                    accept_pre_encrypted: b.accept_pre_encrypted,
                    covered: true,
                },
                current: ArcSwapOption::empty(),
                load_error: Mutex::new(None),
                stats: BindingStats::default(),
                log,
                reload_lock: Mutex::new(()),
            });
        }
        if !failures.is_empty() {
            anyhow::bail!("invalid policy bindings:\n  - {}", failures.join("\n  - "));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                runtime,
                pending: Mutex::new(bindings.len()),
                ready: parking_lot::Condvar::new(),
                bindings,
                rules,
                unmatched: config.unmatched_topics,
                resolved: RwLock::new(HashMap::new()),
                watcher: Mutex::new(None),
            }),
        })
    }

    fn resolve(&self, topic: &str) -> Target {
        if let Some(t) = self.inner.resolved.read().get(topic) {
            return *t;
        }
        let t = self
            .inner
            .bindings
            .iter()
            .position(|b| b.matcher.matches(topic))
            .map(Target::Binding)
            .or_else(|| {
                self.inner
                    .rules
                    .iter()
                    .position(|r| r.matches(topic))
                    .map(Target::Rule)
            })
            .unwrap_or(Target::Unmatched);
        let mut w = self.inner.resolved.write();
        if w.len() >= MAX_CACHED_TOPICS {
            w.clear();
        }
        w.insert(topic.to_string(), t);
        t
    }

    fn unmatched_plan(&self, topic: &str) -> TopicPlan {
        match self.inner.unmatched {
            UnmatchedTopics::Pass => TopicPlan::PassAll,
            UnmatchedTopics::Reject => TopicPlan::RejectAll(format!(
                "topic `{topic}` matches no encryption policy and unmatched topics are rejected"
            )),
        }
    }

    /// The plan for `topic` if it can be given without running guest code (rules, unmatched
    /// topics, or a plan cached for the current module version).
    pub fn cached_topic_plan(&self, topic: &str) -> Option<TopicPlan> {
        match self.resolve(topic) {
            Target::Rule(i) => Some(self.inner.rules[i].plan(topic)),
            Target::Unmatched => Some(self.unmatched_plan(topic)),
            Target::Binding(i) => {
                let m = self.inner.bindings[i].current.load();
                let plans = m.as_ref()?.plans.lock();
                plans.get(topic).map(|e| e.plan.clone())
            }
        }
    }

    /// The plan for `topic`. Runs the guest's `plan` on the first call per topic and module
    /// version (blocking, bounded by the call deadline); cached afterwards.
    pub fn topic_plan(&self, topic: &str) -> Result<TopicPlan, PolicyError> {
        match self.resolve(topic) {
            Target::Rule(i) => Ok(self.inner.rules[i].plan(topic)),
            Target::Unmatched => Ok(self.unmatched_plan(topic)),
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                let m = b.module()?;
                Ok(b.topic_entry(&m, topic)?.plan.clone())
            }
        }
    }

    /// One decision per record, in order. For plans other than `per-record` the topic plan is
    /// repeated; for `per-record` the guest's `decide` runs once for the whole slice (blocking,
    /// bounded by the call deadline). `base_timestamp` is the batch's base timestamp; each
    /// record's timestamp is `base_timestamp + timestamp_delta`.
    pub fn decide(
        &self,
        topic: &str,
        base_timestamp: i64,
        records: &[Record],
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        match self.resolve(topic) {
            Target::Rule(i) => Ok(repeat(&self.inner.rules[i].plan(topic), records.len())),
            Target::Unmatched => Ok(repeat(&self.unmatched_plan(topic), records.len())),
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                let m = b.module()?;
                let entry = b.topic_entry(&m, topic)?;
                match entry.plan {
                    TopicPlan::PerRecord(needs) => {
                        let batch =
                            batch_view(records, base_timestamp, needs).map_err(|reason| {
                                PolicyError::Unavailable {
                                    binding: b.label.to_string(),
                                    reason,
                                }
                            })?;
                        b.decide(&m, &entry, topic, &batch)
                    }
                    ref other => Ok(repeat(other, records.len())),
                }
            }
        }
    }

    /// Async form of [`PolicyRegistry::topic_plan`]: answers inline when no guest code must run,
    /// otherwise on `spawn_blocking`.
    pub async fn topic_plan_async(&self, topic: &str) -> Result<TopicPlan, PolicyError> {
        if let Some(p) = self.cached_topic_plan(topic) {
            return Ok(p);
        }
        let this = self.clone();
        let t = topic.to_string();
        let label = self.label_for(topic);
        tokio::task::spawn_blocking(move || this.topic_plan(&t))
            .await
            .unwrap_or_else(|e| {
                Err(PolicyError::Unavailable {
                    binding: label,
                    reason: format!("policy task failed: {e}"),
                })
            })
    }

    /// Async form of [`PolicyRegistry::decide`]: answers inline when no guest code must run; for
    /// `per-record` plans copies the needed record parts and calls the guest on
    /// `spawn_blocking`.
    pub async fn decide_async(
        &self,
        topic: &str,
        base_timestamp: i64,
        records: &[Record],
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        let plan = self.topic_plan_async(topic).await?;
        let needs = match plan {
            TopicPlan::PerRecord(needs) => needs,
            other => return Ok(repeat(&other, records.len())),
        };
        let label = self.label_for(topic);
        let batch = batch_view(records, base_timestamp, needs).map_err(|reason| {
            PolicyError::Unavailable {
                binding: label.clone(),
                reason,
            }
        })?;
        let this = self.clone();
        let t = topic.to_string();
        tokio::task::spawn_blocking(move || this.decide_views(&t, &batch))
            .await
            .unwrap_or_else(|e| {
                Err(PolicyError::Unavailable {
                    binding: label,
                    reason: format!("policy task failed: {e}"),
                })
            })
    }

    fn decide_views(
        &self,
        topic: &str,
        batch: &wit::BatchView,
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        let n = batch.records.len();
        match self.resolve(topic) {
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                let m = b.module()?;
                let entry = b.topic_entry(&m, topic)?;
                match entry.plan {
                    // The module may have been swapped since the plan was read; re-check.
                    TopicPlan::PerRecord(_) => b.decide(&m, &entry, topic, batch),
                    ref other => Ok(repeat(other, n)),
                }
            }
            Target::Rule(i) => Ok(repeat(&self.inner.rules[i].plan(topic), n)),
            Target::Unmatched => Ok(repeat(&self.unmatched_plan(topic), n)),
        }
    }

    fn label_for(&self, topic: &str) -> String {
        match self.resolve(topic) {
            Target::Binding(i) => self.inner.bindings[i].label.to_string(),
            Target::Rule(i) => format!("rules[{i}]"),
            Target::Unmatched => "unmatched_topics".into(),
        }
    }

    /// Decrypt-side settings of `topic` (from its binding or rule; defaults when unmatched).
    pub fn decrypt_settings(&self, topic: &str) -> DecryptSettings {
        match self.resolve(topic) {
            Target::Binding(i) => self.inner.bindings[i].decrypt,
            Target::Rule(i) => self.inner.rules[i].decrypt_settings(),
            Target::Unmatched => DecryptSettings::default(),
        }
    }

    /// What `principal` (`None`: an unauthenticated connection) may read of `topic`'s encrypted
    /// records on Fetch. Topics no rule or binding covers reveal everything Kapsule can decrypt.
    pub fn reveal(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<Reveal, PolicyError> {
        match self.resolve(topic) {
            Target::Rule(i) => Ok(self.inner.rules[i].reveal(principal)),
            Target::Binding(i) => self.inner.bindings[i].reveal(topic, principal),
            Target::Unmatched => Ok(Reveal::All),
        }
    }

    /// Which KEK ids stored descriptors of `topic` may name: the rule's key, or what the
    /// binding's `allowed_key_ids` match (an invalid pattern matches nothing). `None` when no rule
    /// or binding covers the topic.
    pub fn allowed_keks(&self, topic: &str) -> Option<KekAllowance> {
        match self.resolve(topic) {
            Target::Rule(i) => Some(KekAllowance::Exact(self.inner.rules[i].key_id(topic))),
            Target::Binding(i) => Some(KekAllowance::Globs(
                self.inner.bindings[i]
                    .allowance(topic)
                    .unwrap_or_else(|_| GlobSet::empty()),
            )),
            Target::Unmatched => None,
        }
    }

    /// Re-reads every binding's module file; a file whose content changed is compiled,
    /// instantiated and initialized, then swapped in atomically (batches already running finish
    /// under the old version). A version that fails is refused and the old one keeps serving.
    /// Blocking and slow (compilation): call from a blocking thread. Wire to SIGHUP and
    /// `POST /policies/reload`.
    pub fn reload(&self) -> Vec<(String, ReloadOutcome)> {
        (0..self.inner.bindings.len())
            .map(|i| {
                (
                    self.inner.bindings[i].label.to_string(),
                    self.reload_binding(i),
                )
            })
            .collect()
    }

    /// Reloads the bindings whose module file is `path` (used by the watcher).
    pub(crate) fn reload_path(&self, path: &std::path::Path) -> Vec<(String, ReloadOutcome)> {
        let mut out = Vec::new();
        for (i, b) in self.inner.bindings.iter().enumerate() {
            if watch::same_file(&b.module_path, path) {
                out.push((b.label.to_string(), self.reload_binding(i)));
            }
        }
        out
    }

    fn reload_binding(&self, i: usize) -> ReloadOutcome {
        let b = &self.inner.bindings[i];
        let _guard = b.reload_lock.lock();
        let rt = self
            .inner
            .runtime
            .as_ref()
            .expect("runtime exists when bindings do");
        let outcome = (|| -> anyhow::Result<ReloadOutcome> {
            let bytes = std::fs::read(&b.module_path)
                .with_context(|| format!("reading {}", b.module_path.display()))?;
            if bytes.len() as u64 > rt.limits().module_max_bytes {
                anyhow::bail!(
                    "{} is {} bytes, larger than limits.module_max_mib allows",
                    b.module_path.display(),
                    bytes.len()
                );
            }
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if b.current.load().as_ref().is_some_and(|m| m.hash() == hash) {
                return Ok(ReloadOutcome::Unchanged);
            }
            let m = std::thread::scope(|scope| {
                wasm::join_loader(wasm::spawn_loader(scope, || {
                    rt.load_bytes(&bytes, &b.module_path, &b.config, b.log.clone())
                }))
            })?;
            let content_hash = m.hash().to_string();
            b.current.store(Some(Arc::new(m)));
            b.load_error.lock().take();
            Ok(ReloadOutcome::Reloaded { content_hash })
        })();
        match outcome {
            Ok(o @ ReloadOutcome::Reloaded { .. }) => {
                b.stats
                    .loads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let ReloadOutcome::Reloaded { content_hash } = &o {
                    tracing::info!(policy = %b.label, hash = %content_hash, "policy module reloaded");
                }
                o
            }
            Ok(o) => o,
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(policy = %b.label, error = %error, "policy module refused; the previous version keeps serving");
                b.stats.record_refusal(&error);
                ReloadOutcome::Refused { error }
            }
        }
    }

    /// Starts watching the bindings' module files; a change triggers a reload of the affected
    /// bindings on a background thread (debounced). Idempotent. No-op without bindings.
    pub fn watch(&self) -> anyhow::Result<()> {
        if self.inner.bindings.is_empty() {
            return Ok(());
        }
        let mut w = self.inner.watcher.lock();
        if w.is_none() {
            let paths = self
                .inner
                .bindings
                .iter()
                .map(|b| b.module_path.clone())
                .collect::<Vec<_>>();
            *w = Some(watch::ModuleWatcher::start(
                Arc::downgrade(&self.inner),
                &paths,
            )?);
        }
        Ok(())
    }

    /// Snapshot of every binding for `GET /policies`.
    pub fn status(&self) -> PolicyStatus {
        use std::sync::atomic::Ordering::Relaxed;
        PolicyStatus {
            unmatched_topics: match self.inner.unmatched {
                UnmatchedTopics::Pass => "pass",
                UnmatchedTopics::Reject => "reject",
            },
            rules: self.inner.rules.len(),
            bindings: self
                .inner
                .bindings
                .iter()
                .map(|b| {
                    let m = b.current.load();
                    let m = m.as_ref();
                    let s = &b.stats;
                    BindingStatus {
                        binding: b.label.to_string(),
                        topics: b.selector.clone(),
                        module: b.module_path.display().to_string(),
                        state: match (m, b.load_error.lock().is_some()) {
                            (Some(_), _) => "ready",
                            (None, true) => "failed",
                            (None, false) => "loading",
                        },
                        content_hash: m.map(|m| m.hash().to_string()).unwrap_or_default(),
                        loaded_at_unix_ms: m.map_or(0, |m| unix_ms(m.loaded_at())),
                        instances: m.map_or(0, |m| m.live_instances()),
                        calls: s.calls.load(Relaxed),
                        errors: s.errors.load(Relaxed),
                        deadlines: s.deadlines.load(Relaxed),
                        memory_exhausted: s.memory.load(Relaxed),
                        traps: s.traps.load(Relaxed),
                        violations: s.violations.load(Relaxed),
                        instances_discarded: s.discarded.load(Relaxed),
                        refusals: s.refusals.load(Relaxed),
                        loads: s.loads.load(Relaxed),
                        log_emitted: b.log.emitted.load(Relaxed),
                        log_dropped: b.log.dropped.load(Relaxed),
                        p99_call_us: s.histogram.quantile_us(0.99),
                        last_error: s.last_error.lock().clone(),
                        last_refusal: s.last_refusal.lock().clone(),
                    }
                })
                .collect(),
        }
    }
}

/// `bindings[i] (file)`: how logs, errors and `/policies` name a binding.
fn binding_label(i: usize, module: &std::path::Path) -> Arc<str> {
    let file = module
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("bindings[{i}] ({file})").into()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn repeat(plan: &TopicPlan, n: usize) -> Vec<RecordDecision> {
    let d = match plan {
        TopicPlan::PassAll | TopicPlan::PerRecord(_) => RecordDecision::Pass,
        TopicPlan::EncryptAll(p) => RecordDecision::Encrypt(p.clone()),
        TopicPlan::RejectAll(m) => RecordDecision::Reject(m.clone()),
    };
    vec![d; n]
}

/// Lays out the parts `needs` asks for as one flat batch view: the bytes in one buffer, records
/// and headers as spans into it. Errors (a batch over 4 GiB of needed bytes) are not expected
/// from Kafka's frame limits but are reported rather than truncated.
fn batch_view(
    records: &[Record],
    base_timestamp: i64,
    needs: Needs,
) -> Result<wit::BatchView, String> {
    let mut size = 0usize;
    let mut header_count = 0usize;
    for r in records {
        if needs.key {
            size += r.key.as_ref().map_or(0, |k| k.len());
        }
        if needs.value {
            size += r.value.as_ref().map_or(0, |v| v.len());
        }
        if needs.headers {
            header_count += r.headers.len();
            for h in &r.headers {
                size += h.key.len() + h.value.as_ref().map_or(0, |v| v.len());
            }
        }
    }
    if u32::try_from(size).is_err() || u32::try_from(header_count).is_err() {
        return Err(format!(
            "batch too large to show the policy ({size} bytes, {header_count} headers; limit 4 GiB)"
        ));
    }
    let mut data = Vec::with_capacity(size);
    let mut push = |bytes: &[u8]| -> wit::Span {
        let span = wit::Span {
            offset: data.len() as u32,
            len: bytes.len() as u32,
        };
        data.extend_from_slice(bytes);
        span
    };
    let mut headers = Vec::with_capacity(header_count);
    let mut views = Vec::with_capacity(records.len());
    for r in records {
        let key = if needs.key {
            r.key.as_deref().map(&mut push)
        } else {
            None
        };
        let value = if needs.value {
            r.value.as_deref().map(&mut push)
        } else {
            None
        };
        let headers_start = headers.len() as u32;
        if needs.headers {
            for h in &r.headers {
                headers.push(wit::HeaderView {
                    key: push(&h.key),
                    value: h.value.as_deref().map(&mut push),
                });
            }
        }
        views.push(wit::RecordView {
            key,
            value,
            headers_start,
            headers_len: headers.len() as u32 - headers_start,
            timestamp: base_timestamp.wrapping_add(r.timestamp_delta),
        });
    }
    Ok(wit::BatchView {
        data,
        records: views,
        headers,
    })
}

fn truncate_msg(s: String) -> String {
    if s.len() <= MAX_REJECT_LEN {
        return s;
    }
    let mut cut = MAX_REJECT_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

impl Binding {
    /// What `principal` may read of `topic`.
    // Seam: modules of `kapsule:policy@0.2.0` export `reveal`; until that is wired every
    // principal reads all.
    fn reveal(&self, _topic: &str, _principal: Option<&Principal>) -> Result<Reveal, PolicyError> {
        Ok(Reveal::All)
    }

    /// The version serving now, or why there is none: still compiling (retriable) or failed.
    fn module(&self) -> Result<Arc<LoadedModule>, PolicyError> {
        if let Some(m) = self.current.load_full() {
            return Ok(m);
        }
        match self.load_error.lock().as_ref() {
            Some(e) => Err(PolicyError::Unavailable {
                binding: self.label.to_string(),
                reason: format!("its module failed to load ({e}); fix it and reload"),
            }),
            None => Err(PolicyError::Loading {
                binding: self.label.to_string(),
            }),
        }
    }

    fn malformed(&self, reason: String) -> PolicyError {
        PolicyError::Malformed {
            binding: self.label.to_string(),
            reason,
        }
    }

    /// Accounts for a failed call: counters, last error, log.
    fn fail(&self, err: PolicyError, discarded: bool) -> PolicyError {
        self.stats.record_error(&err, discarded);
        tracing::warn!(policy = %self.label, kind = err.kind(), error = %err, "policy call failed");
        err
    }

    fn call_failed(&self, e: CallError) -> PolicyError {
        let discarded = !matches!(e, CallError::Unavailable(_));
        self.fail(e.into_policy_error(&self.label), discarded)
    }

    /// Cached validated plan of `topic` under module version `m`, computing it on a miss.
    fn topic_entry(&self, m: &LoadedModule, topic: &str) -> Result<Arc<TopicEntry>, PolicyError> {
        if let Some(e) = m.plans.lock().get(topic) {
            return Ok(e.clone());
        }
        let started = Instant::now();
        let raw = m.call_plan(topic);
        self.stats.record_call(started.elapsed());
        let raw = raw.map_err(|e| self.call_failed(e))?;
        let allowed = self.allowance(topic)?;
        let plan = match raw {
            wit::TopicPlan::PassAll => TopicPlan::PassAll,
            wit::TopicPlan::RejectAll(m) => TopicPlan::RejectAll(truncate_msg(m)),
            wit::TopicPlan::PerRecord(n) => TopicPlan::PerRecord(Needs {
                key: n.contains(wit::Needs::KEY),
                value: n.contains(wit::Needs::VALUE),
                headers: n.contains(wit::Needs::HEADERS),
            }),
            wit::TopicPlan::EncryptAll(e) => TopicPlan::EncryptAll(
                self.convert_encrypt(e, &allowed, topic, "plan")
                    .map(Arc::new)
                    .map_err(|e| self.fail(e, false))?,
            ),
        };
        let entry = Arc::new(TopicEntry { plan, allowed });
        let mut plans = m.plans.lock();
        if plans.len() >= MAX_CACHED_TOPICS {
            plans.clear();
        }
        plans.insert(topic.to_string(), entry.clone());
        Ok(entry)
    }

    fn allowance(&self, topic: &str) -> Result<GlobSet, PolicyError> {
        let escaped = globset::escape(topic);
        let mut b = GlobSetBuilder::new();
        for p in &self.allowed {
            let g = globset::Glob::new(&p.replace("${topic}", &escaped)).map_err(|e| {
                PolicyError::Unavailable {
                    binding: self.label.to_string(),
                    reason: format!("allowed_key_ids pattern `{p}` is invalid: {e}"),
                }
            })?;
            b.add(g);
        }
        b.build().map_err(|e| PolicyError::Unavailable {
            binding: self.label.to_string(),
            reason: format!("allowed_key_ids: {e}"),
        })
    }

    fn convert_encrypt(
        &self,
        e: wit::Encrypt,
        allowed: &GlobSet,
        topic: &str,
        what: &str,
    ) -> Result<EncryptionPlan, PolicyError> {
        if e.key_id.is_empty() || e.key_id.len() > MAX_KEY_ID_LEN {
            return Err(self.malformed(format!(
                "{what}: key id must be 1..={MAX_KEY_ID_LEN} bytes, got {}",
                e.key_id.len()
            )));
        }
        if !allowed.is_match(&e.key_id) {
            return Err(PolicyError::KeyNotAllowed {
                binding: self.label.to_string(),
                topic: topic.to_string(),
                key_id: e.key_id,
            });
        }
        let value = match e.value {
            wit::ValuePart::None => ValuePart::None,
            wit::ValuePart::Whole => ValuePart::Whole,
            wit::ValuePart::JsonFields(f) if f.is_empty() => ValuePart::None,
            wit::ValuePart::JsonFields(f) => {
                for p in &f {
                    validate_json_pointer(p).map_err(|r| self.malformed(format!("{what}: {r}")))?;
                }
                ValuePart::JsonFields(f)
            }
        };
        if let Some(h) = e.headers.iter().find(|h| h.is_empty()) {
            return Err(self.malformed(format!("{what}: empty header name {h:?}")));
        }
        Ok(EncryptionPlan {
            key_id: e.key_id,
            value,
            record_key: e.record_key,
            headers: e.headers,
        })
    }

    fn decide(
        &self,
        m: &LoadedModule,
        entry: &TopicEntry,
        topic: &str,
        batch: &wit::BatchView,
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        let n = batch.records.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let raw = m.call_decide(topic, batch);
        self.stats.record_call(started.elapsed());
        let raw = raw.map_err(|e| self.call_failed(e))?;
        if raw.choices.len() != n {
            return Err(self.fail(
                self.malformed(format!(
                    "decide returned {} decisions for {} records",
                    raw.choices.len(),
                    n
                )),
                false,
            ));
        }
        if let Some((i, c)) = raw
            .choices
            .iter()
            .enumerate()
            .find(|(_, c)| **c as usize >= raw.distinct.len())
        {
            return Err(self.fail(
                self.malformed(format!(
                    "decision of record {i} points at distinct decision {c}, but only {} were returned",
                    raw.distinct.len()
                )),
                false,
            ));
        }
        // Each distinct decision is validated once, however many records share it.
        let mut distinct = Vec::with_capacity(raw.distinct.len());
        for (i, d) in raw.distinct.into_iter().enumerate() {
            distinct.push(match d {
                wit::Decision::Pass => RecordDecision::Pass,
                wit::Decision::Reject(m) => RecordDecision::Reject(truncate_msg(m)),
                wit::Decision::Encrypt(e) => RecordDecision::Encrypt(
                    self.convert_encrypt(
                        e,
                        &entry.allowed,
                        topic,
                        &format!("distinct decision {i}"),
                    )
                    .map(Arc::new)
                    .map_err(|e| self.fail(e, false))?,
                ),
            });
        }
        Ok(raw
            .choices
            .iter()
            .map(|&c| distinct[c as usize].clone())
            .collect())
    }
}

#[cfg(test)]
mod tests;
