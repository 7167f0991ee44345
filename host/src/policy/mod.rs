//! Where encryption plans come from: built-in config rules and sandboxed Wasm policy components.
//!
//! The proxy talks to one type, [`PolicyRegistry`]:
//! - [`PolicyRegistry::topic_plan`] once per produce batch (cached per topic, client principal
//!   and module version; only a cache miss on a Wasm binding runs guest code);
//! - [`PolicyRegistry::decide`] for topics whose plan is [`TopicPlan::PerRecord`]: at most one
//!   guest call per record batch, showing only the parts the plan's
//!   [`Needs`](crate::plan::Needs) asked for (with a memo key, only records whose value has no
//!   cached decision yet);
//! - [`PolicyRegistry::decrypt_settings`] and [`PolicyRegistry::reveal`] on Fetch.
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

pub mod config;
mod error;
mod loading;
pub mod metrics;
mod reload;
pub mod rules;
mod stats;
mod status;
pub mod topics;
pub mod wasm;
mod watch;

pub use self::error::{validate_json_pointer, PolicyError};
pub use self::reload::{ReloadOutcome, ReloadRefused};
pub use self::status::{BindingStatus, PolicyStatus};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use globset::{GlobSet, GlobSetBuilder};
use parking_lot::{Mutex, RwLock};

use self::config::{DecryptSettings, PolicyConfig, UnmatchedTopics};
use self::rules::{KekAllowance, Rule, TopicMatcher};
use self::stats::BindingStats;
use self::wasm::host::LogSink;
pub use self::wasm::MemoUse;
use self::wasm::{Caller, Decide, Decided, Limits, LoadedModule, WasmRuntime};
use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision, Reveal, TopicPlan};
use crate::principal::Principal;

/// Topics remembered in the resolution cache before it is cleared.
const MAX_CACHED_TOPICS: usize = 65_536;

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
    /// The `policy:` section this registry was built from: bindings, rules and limits are read
    /// at start-up only (see [`PolicyRegistry::reload_from`]).
    started_with: PolicyConfig,
    /// Where `describe-schema` gets schemas ([`PolicyRegistry::attach_schema_registry`]).
    schema_registry: std::sync::OnceLock<Arc<crate::schema::SchemaRegistry>>,
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
                decrypt: b.decrypt_settings(),
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
                started_with: config.clone(),
                schema_registry: Default::default(),
            }),
        })
    }

    /// Lets policies describe the schemas of the batches they decide (`describe-schema`)
    /// from `registry` (the one the record stage uses). Call once, before serving; without it
    /// `describe-schema` answers that no registry is configured.
    pub fn attach_schema_registry(&self, registry: Arc<crate::schema::SchemaRegistry>) {
        let _ = self.inner.schema_registry.set(registry);
    }

    fn schema_registry(&self) -> Option<&crate::schema::SchemaRegistry> {
        self.inner.schema_registry.get().map(|r| &**r)
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
    pub fn cached_topic_plan(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Option<TopicPlan> {
        match self.resolve(topic) {
            Target::Rule(i) => Some(self.inner.rules[i].plan(topic)),
            Target::Unmatched => Some(self.unmatched_plan(topic)),
            Target::Binding(i) => {
                let m = self.inner.bindings[i].current.load_full()?;
                let plan = m.cached_plan(topic, principal)?;
                Some(plan.topic_plan().clone())
            }
        }
    }

    /// What the cached plan of `topic` for `principal` says its decisions depend on: `None` when
    /// no Wasm plan is cached (rules and unmatched topics decide without a guest).
    pub fn memo_key(&self, topic: &str, principal: Option<&Principal>) -> Option<MemoKey> {
        match self.resolve(topic) {
            Target::Binding(i) => {
                let m = self.inner.bindings[i].current.load_full()?;
                Some(m.cached_plan(topic, principal)?.memo_key().clone())
            }
            Target::Rule(_) | Target::Unmatched => None,
        }
    }

    /// The plan for `topic` when `principal` (`None`: an unauthenticated connection) produces
    /// to it. Runs the guest's `plan` on the first call per (topic, principal) and module version
    /// (blocking, bounded by the call deadline); cached afterwards (bounded).
    pub fn topic_plan(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<TopicPlan, PolicyError> {
        match self.resolve(topic) {
            Target::Rule(i) => Ok(self.inner.rules[i].plan(topic)),
            Target::Unmatched => Ok(self.unmatched_plan(topic)),
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                let m = b.module()?;
                Ok(m.plan(&b.caller(), topic, principal)?.topic_plan().clone())
            }
        }
    }

    /// One decision per record produced by `principal`, in order. For plans other than
    /// `per-record` the topic plan is repeated; for `per-record` the guest's `decide` runs at
    /// most once for the whole slice (blocking, bounded by the call deadline). `base_timestamp` is the batch's base timestamp; each
    /// record's timestamp is `base_timestamp + timestamp_delta`.
    pub fn decide(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        base_timestamp: i64,
        records: &[Record],
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        self.decide_using(topic, principal, base_timestamp, records, MemoUse::Audited)
    }

    /// [`PolicyRegistry::decide`] with the memo used as `memo` says: production uses
    /// [`MemoUse::Audited`]; `policy check` compares [`MemoUse::Unaudited`] with
    /// [`MemoUse::Off`] to show where a memo key decides wrongly.
    pub fn decide_using(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        base_timestamp: i64,
        records: &[Record],
        memo: MemoUse,
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        match self.resolve(topic) {
            Target::Rule(i) => Ok(self.inner.rules[i].plan(topic).repeated(records.len())),
            Target::Unmatched => Ok(self.unmatched_plan(topic).repeated(records.len())),
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                let c = b.caller();
                let m = b.module()?;
                let plan = m.plan(&c, topic, principal)?;
                // A second round only follows a broken memo, which is then off: it runs unmemoized.
                for _ in 0..2 {
                    let prepared = m.prepare_decide(
                        &c,
                        &plan,
                        topic,
                        principal,
                        base_timestamp,
                        records,
                        memo,
                    )?;
                    match prepared {
                        Decide::Done(d) => return Ok(d),
                        Decide::Call(mut call) => {
                            let ids = call.schema_ids();
                            if !ids.is_empty() {
                                call.with_schemas(wasm::schemas::from_cache(
                                    self.schema_registry(),
                                    &ids,
                                ));
                            }
                            match call.run(&c)? {
                                Decided::Records(d) => return Ok(d),
                                Decided::MemoBroken => continue,
                            }
                        }
                    }
                }
                Err(b.memo_not_settled())
            }
        }
    }

    /// Async form of [`PolicyRegistry::topic_plan`]: answers inline when no guest code must run,
    /// otherwise on `spawn_blocking`.
    pub async fn topic_plan_async(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<TopicPlan, PolicyError> {
        match self.resolve(topic) {
            Target::Binding(i) => {
                let m = self.inner.bindings[i].module()?;
                if let Some(p) = m.cached_plan(topic, principal) {
                    return Ok(p.topic_plan().clone());
                }
                let (t, p) = (topic.to_string(), principal.cloned());
                let plan = self
                    .blocking(i, move |b| m.plan(&b.caller(), &t, p.as_ref()))
                    .await?;
                Ok(plan.topic_plan().clone())
            }
            Target::Rule(i) => Ok(self.inner.rules[i].plan(topic)),
            Target::Unmatched => Ok(self.unmatched_plan(topic)),
        }
    }

    /// Async form of [`PolicyRegistry::decide`]: answers inline when no guest code must run; for
    /// `per-record` plans copies the needed record parts and calls the guest on
    /// `spawn_blocking`.
    pub async fn decide_async(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        base_timestamp: i64,
        records: &[Record],
    ) -> Result<Vec<RecordDecision>, PolicyError> {
        let i = match self.resolve(topic) {
            Target::Binding(i) => i,
            Target::Rule(i) => return Ok(self.inner.rules[i].plan(topic).repeated(records.len())),
            Target::Unmatched => return Ok(self.unmatched_plan(topic).repeated(records.len())),
        };
        let b = &self.inner.bindings[i];
        let m = b.module()?;
        let plan = match m.cached_plan(topic, principal) {
            Some(p) => p,
            None => {
                let (m, t, p) = (m.clone(), topic.to_string(), principal.cloned());
                self.blocking(i, move |b| m.plan(&b.caller(), &t, p.as_ref()))
                    .await?
            }
        };
        // The module may be swapped meanwhile: this batch finishes under the version that
        // planned it. A second round only follows a broken memo, which is then off.
        for _ in 0..2 {
            let prepared = m.prepare_decide(
                &b.caller(),
                &plan,
                topic,
                principal,
                base_timestamp,
                records,
                MemoUse::Audited,
            )?;
            match prepared {
                Decide::Done(d) => return Ok(d),
                Decide::Call(mut call) => {
                    let ids = call.schema_ids();
                    if !ids.is_empty() {
                        call.with_schemas(
                            wasm::schemas::prefetch(self.schema_registry(), &ids).await,
                        );
                    }
                    match self.blocking(i, move |b| call.run(&b.caller())).await? {
                        Decided::Records(d) => return Ok(d),
                        Decided::MemoBroken => continue,
                    }
                }
            }
        }
        Err(b.memo_not_settled())
    }

    /// Runs `f` on binding `i` on a blocking thread (guest code may run for up to its deadline).
    async fn blocking<R: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&Binding) -> Result<R, PolicyError> + Send + 'static,
    ) -> Result<R, PolicyError> {
        let this = self.clone();
        let label = self.inner.bindings[i].label.to_string();
        tokio::task::spawn_blocking(move || f(&this.inner.bindings[i]))
            .await
            .unwrap_or_else(|e| {
                Err(PolicyError::Unavailable {
                    binding: label,
                    reason: format!("policy task failed: {e}"),
                })
            })
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
    /// records on Fetch: the rule's `reveal_to`, or the binding module's `reveal` answer (asked
    /// once per (topic, principal) and module version, then cached; a 0.1 module reveals all).
    /// Topics no rule or binding covers reveal everything Kapsule can decrypt. Blocking on a
    /// cache miss of a Wasm binding (bounded by the call deadline): from async code use
    /// [`PolicyRegistry::reveal_async`].
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

    /// Async form of [`PolicyRegistry::reveal`]: answers inline when no guest code must run,
    /// otherwise calls the guest on `spawn_blocking`.
    pub async fn reveal_async(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<Reveal, PolicyError> {
        let i = match self.resolve(topic) {
            Target::Binding(i) => i,
            _ => return self.reveal(topic, principal),
        };
        let m = self.inner.bindings[i].module()?;
        if let Some(r) = m.cached_reveal(topic, principal) {
            return Ok(r);
        }
        let (t, p) = (topic.to_string(), principal.cloned());
        self.blocking(i, move |b| m.reveal(&b.caller(), &t, p.as_ref()))
            .await
    }

    /// Which KEK ids stored descriptors of `topic` may name: the rule's key, or what the
    /// binding's `allowed_key_ids` match (an invalid pattern matches nothing). `None` when no rule
    /// or binding covers the topic.
    pub fn allowed_keks(&self, topic: &str) -> Option<KekAllowance> {
        match self.resolve(topic) {
            Target::Rule(i) => Some(KekAllowance::Exact(self.inner.rules[i].key_id(topic))),
            Target::Binding(i) => {
                let b = &self.inner.bindings[i];
                Some(KekAllowance::Globs(
                    key_allowance(&b.label, &b.allowed, topic).unwrap_or_else(|_| GlobSet::empty()),
                ))
            }
            Target::Unmatched => None,
        }
    }

    /// Starts keeping every binding's trace-level guest messages, where the SDKs send the
    /// message and traceback of an exception in the policy's code (`policy check` only: they may
    /// quote record contents).
    pub(crate) fn capture_guest_traces(&self) {
        for b in &self.inner.bindings {
            b.log.capture();
        }
    }

    /// The trace-level guest messages kept since the last call (see
    /// [`PolicyRegistry::capture_guest_traces`]).
    pub(crate) fn take_guest_traces(&self) -> Vec<String> {
        self.inner
            .bindings
            .iter()
            .flat_map(|b| b.log.take_captured())
            .collect()
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
}

/// `bindings[i] (file)`: how logs, errors and `/policies` name a binding.
fn binding_label(i: usize, module: &std::path::Path) -> Arc<str> {
    let file = module
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("bindings[{i}] ({file})").into()
}

/// The key ids a binding's answers for `topic` may name: its `allowed_key_ids` patterns with
/// `${topic}` expanded (escaped, so a topic name cannot widen the pattern).
pub(crate) fn key_allowance(
    label: &str,
    patterns: &[String],
    topic: &str,
) -> Result<GlobSet, PolicyError> {
    let escaped = globset::escape(topic);
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = globset::Glob::new(&p.replace("${topic}", &escaped)).map_err(|e| {
            PolicyError::Unavailable {
                binding: label.to_string(),
                reason: format!("allowed_key_ids pattern `{p}` is invalid: {e}"),
            }
        })?;
        b.add(g);
    }
    b.build().map_err(|e| PolicyError::Unavailable {
        binding: label.to_string(),
        reason: format!("allowed_key_ids: {e}"),
    })
}

impl Binding {
    /// What `principal` may read of `topic`: the module's cached or computed `reveal` answer.
    fn reveal(&self, topic: &str, principal: Option<&Principal>) -> Result<Reveal, PolicyError> {
        self.module()?.reveal(&self.caller(), topic, principal)
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

    /// A batch still memoized after its memo was turned off: cannot happen (the second round
    /// runs unmemoized); refused rather than forwarded if it ever did.
    fn memo_not_settled(&self) -> PolicyError {
        PolicyError::Unavailable {
            binding: self.label.to_string(),
            reason: "internal error: the batch was still memoized after its memo was turned off"
                .into(),
        }
    }

    /// How guest calls for this binding are named, checked and counted.
    fn caller(&self) -> Caller<'_> {
        Caller {
            label: &self.label,
            allowed_key_ids: &self.allowed,
            stats: &self.stats,
        }
    }
}

#[cfg(test)]
mod tests;
