//! Policy metrics for `/metrics`, bridged from the policy registry's status (owned by
//! `policy/stats.rs`).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter_family, gauge_family, MetricsSource};
use crate::policy::{BindingStatus, PolicyRegistry};

/// One label set per configured binding: `kapsule_policy_calls_total{binding}`,
/// `kapsule_policy_errors_total{binding,kind}` (kind: `deadline`, `memory`, `trap`,
/// `violation`), `kapsule_policy_instances_discarded_total{binding}`,
/// `kapsule_policy_reload_refusals_total{binding}`, `kapsule_policy_loads_total{binding}`,
/// `kapsule_policy_memo_mismatches_total{binding}`,
/// `kapsule_policy_instances{binding}`.
pub struct PolicyMetrics(pub PolicyRegistry);

impl MetricsSource for PolicyMetrics {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let status = self.0.status();
        let b = |s: &BindingStatus| vec![("binding", s.binding.clone())];
        let per = |f: fn(&BindingStatus) -> u64| status.bindings.iter().map(move |s| (b(s), f(s)));
        counter_family(
            e,
            "kapsule_policy_calls",
            "Guest calls (plan and decide).",
            per(|s| s.calls),
        )?;
        counter_family(
            e,
            "kapsule_policy_errors",
            "Failed guest calls by kind.",
            status.bindings.iter().flat_map(|s| {
                [
                    ("deadline", s.deadlines),
                    ("memory", s.memory_exhausted),
                    ("trap", s.traps),
                    ("violation", s.violations),
                ]
                .map(|(k, v)| {
                    let mut l = b(s);
                    l.push(("kind", k.to_owned()));
                    (l, v)
                })
            }),
        )?;
        counter_family(
            e,
            "kapsule_policy_instances_discarded",
            "Instances discarded after a failure.",
            per(|s| s.instances_discarded),
        )?;
        counter_family(
            e,
            "kapsule_policy_reload_refusals",
            "Module versions refused on reload.",
            per(|s| s.refusals),
        )?;
        counter_family(
            e,
            "kapsule_policy_memo_mismatches",
            "Audits that found a memo answer differing from the module's own decision (the memo \
             is then off for that module version).",
            per(|s| s.memo_mismatches),
        )?;
        counter_family(
            e,
            "kapsule_policy_loads",
            "Module versions loaded.",
            per(|s| s.loads),
        )?;
        gauge_family(
            e,
            "kapsule_policy_instances",
            "Live guest instances.",
            status
                .bindings
                .iter()
                .map(|s| (b(s), i64::try_from(s.instances).unwrap_or(i64::MAX))),
        )?;
        gauge_family(
            e,
            "kapsule_policy_cached_bytes",
            "Bytes of plans, reveals and memoized decisions cached for the module (bounded by \
             its cache budget).",
            status
                .bindings
                .iter()
                .map(|s| (b(s), i64::try_from(s.cached_bytes).unwrap_or(i64::MAX))),
        )
    }
}
