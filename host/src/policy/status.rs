//! `GET /policies`: a snapshot of every binding's state and counters.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::config::UnmatchedTopics;
use super::PolicyRegistry;

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
    /// The `kapsule:policy` contract the serving version implements (`0.1.0`, `0.2.0`; empty
    /// before the first load).
    pub wit_version: &'static str,
    /// When that version was loaded (Unix ms).
    pub loaded_at_unix_ms: u64,
    /// Live instances.
    pub instances: usize,
    /// Decisions of memoizable plans cached for the serving version (per topic, principal and
    /// value; bounded, dropped on reload).
    pub memoized_values: usize,
    /// Whether an audit turned the serving version's memo off (its memo key broke its
    /// promise; every record is then decided by the guest).
    pub memo_disabled: bool,
    /// Audits since start that found a memo answer differing from the module's own decision.
    pub memo_mismatches: u64,
    /// Bytes charged for every answer the serving version caches (plans, reveals, memoized
    /// decisions), never more than `cache_budget_bytes`.
    pub cached_bytes: usize,
    /// The serving version's answer cache budget (`policy.limits.answer_cache_kib`).
    pub cache_budget_bytes: usize,
    /// Answers the serving version caches now (plans, reveals and memoized decisions).
    pub cached_answers: usize,
    /// Answers evicted by the serving version to stay under its budget.
    pub cache_evictions: u64,
    /// Answers the serving version used once without caching them, being larger than
    /// `policy.limits.answer_cache_entry_max_kib`.
    pub answers_not_cached: u64,
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
                    let cache = m.map(|m| m.cache_stats()).unwrap_or_default();
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
                        wit_version: m.map_or("", |m| m.version().as_str()),
                        loaded_at_unix_ms: m.map_or(0, |m| unix_ms(m.loaded_at())),
                        instances: m.map_or(0, |m| m.live_instances()),
                        memoized_values: cache.decisions,
                        memo_disabled: m.is_some_and(|m| m.memo_disabled()),
                        memo_mismatches: s.memo_mismatches.load(Relaxed),
                        cached_bytes: cache.bytes,
                        cache_budget_bytes: cache.budget,
                        cached_answers: cache.entries,
                        cache_evictions: cache.evictions,
                        answers_not_cached: cache.uncached,
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
