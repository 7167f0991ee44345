//! One loaded version of a policy module: its pool of initialized instances, the guest calls,
//! and the caches of validated answers. The caches belong to this version only and are dropped
//! with it when a reload swaps in a new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use wasmtime::component::{Func, InstancePre};
use wasmtime::{Store, Trap};

use super::answer::{self, Plan};
use super::answer_cache::{AnswerCache, CacheStats};
use super::bindings::kapsule::policy::types as wit;
use super::bindings_v0_1::kapsule::policy::types::BatchView as V0_1BatchView;
use super::deadline::CallClock;
use super::host::{HostState, LogSink};
use super::memo::{self, Grouped, MemoAudit, MemoUse, Pending};
use super::schemas::BatchSchemas;
use super::{lift, wasi, Caller, WasmRuntime, WitVersion};
use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision, Reveal, TopicPlan};
use crate::policy::PolicyError;
use crate::principal::Principal;

mod decide_call;
pub(crate) use decide_call::{Decide, DecideCall, Decided};

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
    /// `None` for 0.1 modules.
    reveal: Option<Func>,
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
/// caches. Replaced as a whole on reload.
pub struct LoadedModule {
    runtime: Arc<WasmRuntime>,
    pre: InstancePre<HostState>,
    version: WitVersion,
    hash: String,
    path: PathBuf,
    config: String,
    loaded_at: SystemTime,
    log: Arc<LogSink>,
    pool: Pool,
    /// Validated plans and reveals by (topic, principal) and decisions of memoizable plans by
    /// (topic, principal, value), this module version only, bounded in bytes.
    answers: AnswerCache,
    /// Audits of this version's memo answers; a mismatch turns its memo off.
    memo_audit: MemoAudit,
    /// The component imports `describe-schema`: its batches' schemas are fetched before
    /// `decide` ([`DecideCall::schema_ids`]).
    describes_schemas: bool,
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
pub(super) enum CallError {
    Deadline(Duration),
    Memory(usize),
    Trap(String),
    Malformed(String),
    Unavailable(String),
}

impl CallError {
    pub(super) fn into_policy_error(self, binding: &str) -> PolicyError {
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
    /// Wraps a linked component and builds and initializes one instance now, so a broken module
    /// is refused before it serves.
    pub(super) fn new(
        runtime: Arc<WasmRuntime>,
        pre: InstancePre<HostState>,
        version: WitVersion,
        hash: String,
        path: &Path,
        config: &str,
        log: Arc<LogSink>,
    ) -> Result<Self, CallError> {
        let max = runtime.limits.max_instances.max(1);
        let (cache_budget, cache_entry_max) = (
            runtime.limits.answer_cache_bytes,
            runtime.limits.answer_cache_entry_max_bytes,
        );
        let module = LoadedModule {
            runtime,
            pre,
            version,
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
                max,
            },
            answers: AnswerCache::new(cache_budget, cache_entry_max),
            memo_audit: MemoAudit::default(),
            describes_schemas: false,
        };
        let inst = module.new_instance()?;
        {
            let mut st = module.pool.state.lock();
            st.live += 1;
            st.idle.push(inst);
        }
        Ok(module)
    }

    /// Marks a module whose component imports `describe-schema`.
    pub(super) fn describing_schemas(mut self, yes: bool) -> Self {
        self.describes_schemas = yes;
        self
    }

    /// The validated plan of `topic` for `principal` if this version has computed it.
    pub(crate) fn cached_plan(&self, topic: &str, principal: Option<&Principal>) -> Option<Plan> {
        self.answers.plan(topic, self.client_key(principal))
    }

    /// The principal answers are cached under: none for 0.1 modules, which never see it.
    fn client_key<'p>(&self, principal: Option<&'p Principal>) -> Option<&'p Principal> {
        match self.version {
            WitVersion::V0_1 => None,
            WitVersion::V0_2 | WitVersion::V0_3 => principal,
        }
    }

    /// What `principal` may read of `topic`, if this version has answered it already.
    pub(crate) fn cached_reveal(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Option<Reveal> {
        self.answers.reveal(topic, self.client_key(principal))
    }

    /// What `principal` may read of `topic`: cached, or asked of the guest's `reveal` (blocking,
    /// bounded by the call deadline), validated and cached. A 0.1 module reveals all without a
    /// call. Failures are accounted to `c`.
    pub(crate) fn reveal(
        &self,
        c: &Caller<'_>,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<Reveal, PolicyError> {
        let principal = self.client_key(principal);
        if let Some(r) = self.answers.reveal(topic, principal) {
            return Ok(r);
        }
        if self.version == WitVersion::V0_1 {
            return Ok(Reveal::All);
        }
        let started = Instant::now();
        let raw = self.call_reveal(topic, principal);
        c.stats.record_call(started.elapsed());
        let reveal = answer::reveal(c, raw.map_err(|e| c.call_failed(e))?)?;
        self.answers.put_reveal(topic, principal, &reveal);
        Ok(reveal)
    }

    /// Decisions of memoizable plans cached now.
    #[cfg(test)]
    pub(crate) fn memoized_values(&self) -> usize {
        self.answers.stats().decisions
    }

    /// Whether an audit found this version's memo wrong and turned it off.
    pub(crate) fn memo_disabled(&self) -> bool {
        self.memo_audit.is_broken()
    }

    /// What this version's answer cache holds now (bytes, budget, entries, evictions).
    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.answers.stats()
    }

    /// The contract version the module implements.
    pub(crate) fn version(&self) -> WitVersion {
        self.version
    }

    /// The validated plan of `topic` for `principal`: cached, or computed by the guest's `plan`
    /// (blocking, bounded by the call deadline) and cached. Failures are accounted to `c`.
    pub(crate) fn plan(
        &self,
        c: &Caller<'_>,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<Plan, PolicyError> {
        // A 0.1 plan cannot depend on the client: one entry serves every principal.
        let principal = self.client_key(principal);
        if let Some(p) = self.answers.plan(topic, principal) {
            return Ok(p);
        }
        let started = Instant::now();
        let raw = self.call_plan(topic, principal);
        c.stats.record_call(started.elapsed());
        let raw = raw.map_err(|e| c.call_failed(e))?;
        let plan = Plan(Arc::new(answer::topic_entry(c, raw, topic)?));
        self.answers.put_plan(topic, principal, &plan);
        Ok(plan)
    }

    /// Decides `records` under `plan` (which this version gave) without running guest code when
    /// it can: plans other than `per-record` are repeated, and under a memo key (unless `memo`
    /// is [`MemoUse::Off`] or an audit turned this version's memo off) records whose value has
    /// a cached decision take it. Otherwise lays out the batch the guest must see: every record,
    /// or under a memo key one record per value still undecided plus the memo answers audited
    /// (with [`MemoUse::Audited`]). `base_timestamp` is the batch's base timestamp; each
    /// record's timestamp is `base_timestamp + timestamp_delta`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare_decide(
        self: &Arc<Self>,
        c: &Caller<'_>,
        plan: &Plan,
        topic: &str,
        principal: Option<&Principal>,
        base_timestamp: i64,
        records: &[Record],
        memo: MemoUse,
    ) -> Result<Decide, PolicyError> {
        let needs = match plan.topic_plan() {
            TopicPlan::PerRecord(needs) if !records.is_empty() => *needs,
            other => return Ok(Decide::Done(other.repeated(records.len()))),
        };
        let principal = self.client_key(principal);
        let memoized =
            plan.0.memo != MemoKey::None && memo != MemoUse::Off && !self.memo_audit.is_broken();
        let (batch, memo) = if !memoized {
            let batch = answer::batch_view(records.iter(), base_timestamp, needs);
            (batch, None)
        } else {
            let audit = (memo == MemoUse::Audited).then_some(&self.memo_audit);
            match memo::group(
                &self.answers,
                audit,
                topic,
                principal,
                &plan.0.memo,
                records,
            ) {
                Grouped::Done(d) => return Ok(Decide::Done(d)),
                Grouped::Pending(p) => {
                    let shown = p.shown().map(|i| &records[i]);
                    (answer::batch_view(shown, base_timestamp, needs), Some(p))
                }
            }
        };
        Ok(Decide::Call(Box::new(DecideCall {
            module: self.clone(),
            plan: plan.clone(),
            topic: topic.to_string(),
            principal: principal.cloned(),
            batch: batch.map_err(|reason| c.unavailable(reason))?,
            memo,
            schemas: BatchSchemas::default(),
        })))
    }

    /// SHA-256 (hex) of the module file this version was built from.
    pub fn hash(&self) -> &str {
        &self.hash
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
            HostState::new(
                limits.memory_bytes,
                wasi::deny_all_wasi(&self.log),
                self.log.clone(),
            ),
        );
        store.limiter(|s| &mut s.limiter);
        // Deadlines count the CPU time of the call (see `deadline`).
        store.epoch_deadline_callback(|ctx| Ok(ctx.data().clock.on_deadline()));
        store
    }

    /// Instantiates and runs `init` under the init deadline.
    fn new_instance(&self) -> Result<Instance, CallError> {
        let _busy = self.runtime.busy();
        let limits = &self.runtime.limits;
        let mut store = self.new_store();
        start_clock(&mut store, limits.init_timeout);
        let init_failed = |store: &Store<HostState>, e| {
            classify(store, e, limits.init_timeout, limits.memory_bytes)
        };
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| init_failed(&store, e))?;
        let export = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| CallError::Unavailable(format!("the module exports no `{name}`")))
        };
        let init = export(&mut store, "init")?;
        let plan = export(&mut store, "plan")?;
        let decide = export(&mut store, "decide")?;
        let reveal = match self.version {
            WitVersion::V0_1 => None,
            WitVersion::V0_2 | WitVersion::V0_3 => Some(export(&mut store, "reveal")?),
        };
        let answer = init
            .typed::<(&str,), (Result<(), String>,)>(&store)
            .and_then(|f| f.call(&mut store, (self.config.as_str(),)));
        match answer {
            Ok((Ok(()),)) => Ok(Instance {
                store,
                exports: Exports {
                    plan,
                    decide,
                    reveal,
                },
            }),
            Ok((Err(msg),)) => Err(CallError::Unavailable(format!(
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
        start_clock(&mut inst.store, budget);
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
    fn call_plan(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<wit::TopicPlan, CallError> {
        self.with_instance(self.runtime.limits.call_timeout, |store, ex| {
            Ok(match self.version {
                WitVersion::V0_1 => {
                    let f = ex
                        .plan
                        .typed::<(&str,), (lift::RawTopicPlanV0_1,)>(&*store)?;
                    f.call(&mut *store, (topic,))?.0.into()
                }
                WitVersion::V0_2 => {
                    let f = ex
                        .plan
                        .typed::<(&str, &wit::Client), (lift::RawTopicPlanV0_2,)>(&*store)?;
                    f.call(&mut *store, (topic, &client(principal)))?.0.into()
                }
                WitVersion::V0_3 => {
                    let f = ex
                        .plan
                        .typed::<(&str, &wit::Client), (lift::RawTopicPlan,)>(&*store)?;
                    f.call(&mut *store, (topic, &client(principal)))?.0.into()
                }
            })
        })
    }

    /// Calls the guest's `decide` under the deadline for a batch of this size
    /// ([`super::Limits::decide_budget`]).
    fn call_decide(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        batch: &wit::BatchView,
        schemas: &BatchSchemas,
    ) -> Result<wit::Decisions, CallError> {
        let budget = self
            .runtime
            .limits
            .decide_budget(answer::record_count(batch));
        self.with_instance(budget, |store, ex| {
            // Answered for this call only: cleared again before the instance is pooled.
            store.data_mut().schemas = schemas.clone();
            let decided = Ok(match self.version {
                WitVersion::V0_1 => ex
                    .decide
                    .typed::<(&str, &V0_1BatchView), (lift::RawDecisionsV0_2,)>(&*store)?
                    .call(&mut *store, (topic, &answer::batch_view_v0_1(batch)))?
                    .0
                    .into(),
                WitVersion::V0_2 => ex
                    .decide
                    .typed::<(&str, &wit::Client, &answer::BatchViewV0_2<'_>), (lift::RawDecisionsV0_2,)>(
                        &*store,
                    )?
                    .call(
                        &mut *store,
                        (topic, &client(principal), &answer::batch_view_v0_2(batch)),
                    )?
                    .0
                    .into(),
                WitVersion::V0_3 => ex
                    .decide
                    .typed::<(&str, &wit::Client, &wit::BatchView), (lift::RawDecisions,)>(&*store)?
                    .call(&mut *store, (topic, &client(principal), batch))?
                    .0
                    .into(),
            });
            store.data_mut().schemas = BatchSchemas::default();
            decided
        })
    }

    /// Calls the guest's `reveal` under the call deadline; a 0.1 module (no `reveal`) reveals
    /// all.
    fn call_reveal(
        &self,
        topic: &str,
        principal: Option<&Principal>,
    ) -> Result<wit::Reveal, CallError> {
        self.with_instance(self.runtime.limits.call_timeout, |store, ex| {
            let Some(reveal) = ex.reveal else {
                return Ok(wit::Reveal::All);
            };
            let f = reveal.typed::<(&str, &wit::Client), (lift::RawReveal,)>(&*store)?;
            Ok(f.call(&mut *store, (topic, &client(principal)))?.0.into())
        })
    }
}

/// The `client` argument of a guest call.
fn client(principal: Option<&Principal>) -> wit::Client {
    use crate::principal::AuthMechanism as M;
    wit::Client {
        principal: principal.map(|p| wit::Principal {
            name: p.name().to_string(),
            mechanism: match p.mechanism() {
                M::SaslPlain => wit::AuthMechanism::SaslPlain,
                M::SaslScramSha256 => wit::AuthMechanism::SaslScramSha256,
                M::SaslScramSha512 => wit::AuthMechanism::SaslScramSha512,
                M::SaslOauthBearer => wit::AuthMechanism::SaslOauthbearer,
                M::TlsClientCertificate => wit::AuthMechanism::Mtls,
            },
        }),
    }
}

/// Starts the CPU-time budget of the call about to run on `store` (see `deadline`).
fn start_clock(store: &mut Store<HostState>, budget: Duration) {
    let clock = CallClock::start(budget);
    store.data_mut().clock = clock;
    store.set_epoch_deadline(clock.first_deadline());
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
