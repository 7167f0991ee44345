//! Counters of the KMS calls, rendered as Prometheus text.
//!
//! One [`KmsMetrics`] per DEK manager receives every call made through its [`super::KmsGate`]
//! (as the gate's [`KmsCallObserver`]); it is a [`MetricsSource`] of the admin registry
//! ([`crate::metrics::MetricsRegistry::register`]), encoded with prometheus-client on each scrape.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `kapsule_kms_calls_total` | op, outcome | KMS calls by operation (`generate`, `decrypt`, `derive`) and outcome (`ok` or error class) |
//! | `kapsule_kms_call_duration_seconds` | op | KMS call latency histogram (`_sum`, `_count`, `_bucket`) |
//!
//! Label sets are bounded: `op` and `outcome` are fixed sets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::DescriptorEncoder;

use super::KmsCallObserver;
use crate::metrics::{counter_family, encode_source, histogram_family, Labels, MetricsSource};

/// Upper bounds (seconds) of the KMS latency histogram buckets: fine below 25 ms, where a local
/// KMS (well under 1 ms) and a cloud KMS in the same region (a few ms) answer, so quantiles read
/// from the buckets tell them apart.
const KMS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Outcome counts and latency of KMS calls (see the module docs for names).
#[derive(Debug, Default)]
pub struct KmsMetrics {
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, KmsLatency>>,
}

/// Latency histogram of one KMS operation.
#[derive(Debug, Default, Clone)]
struct KmsLatency {
    count: u64,
    sum: f64,
    buckets: [u64; KMS_BUCKETS.len() + 1],
}

impl KmsMetrics {
    /// Number of KMS calls for `op` with `outcome` so far.
    pub fn call_count(&self, op: &str, outcome: &str) -> u64 {
        self.calls
            .lock()
            .iter()
            .filter(|((o, r), _)| *o == op && *r == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Appends all metrics as OpenMetrics text (no `# EOF`) to `out` (tests and tools; the
    /// proxy registers the metrics with the admin registry instead).
    pub fn render_prometheus(&self, out: &mut String) {
        encode_source(Arc::new(self.snapshot()), out);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            calls: self.calls.lock().clone(),
            latency: self.latency.lock().clone(),
        }
    }
}

impl KmsCallObserver for KmsMetrics {
    fn kms_call(&self, op: &'static str, outcome: &'static str, latency: Duration) {
        *self.calls.lock().entry((op, outcome)).or_default() += 1;
        let secs = latency.as_secs_f64();
        let mut l = self.latency.lock();
        let e = l.entry(op).or_default();
        e.count += 1;
        e.sum += secs;
        let i = KMS_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(KMS_BUCKETS.len());
        e.buckets[i] += 1;
    }
}

impl MetricsSource for KmsMetrics {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        self.snapshot().encode(encoder)
    }
}

/// Values copied out of [`KmsMetrics`] at scrape time.
struct Snapshot {
    calls: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, KmsLatency>,
}

impl MetricsSource for Snapshot {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        counter_family(
            e,
            "kapsule_kms_calls",
            "KMS calls by operation and outcome.",
            self.calls.iter().map(|((op, outcome), n)| {
                let l: Labels = vec![("op", op.to_string()), ("outcome", outcome.to_string())];
                (l, *n)
            }),
        )?;
        histogram_family(
            e,
            "kapsule_kms_call_duration_seconds",
            "KMS call latency.",
            self.latency.iter().map(|(op, l)| {
                let buckets = KMS_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(l.buckets)
                    .collect();
                (vec![("op", op.to_string())], l.sum, l.count, buckets)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = KmsMetrics::default();
        m.kms_call("generate", "ok", Duration::from_millis(5));
        m.kms_call("generate", "transient", Duration::from_secs(10));
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(
            s.contains("kapsule_kms_calls_total{op=\"generate\",outcome=\"ok\"} 1"),
            "{s}"
        );
        assert!(s.contains("kapsule_kms_call_duration_seconds_count{op=\"generate\"} 2"));
        assert!(
            s.contains("kapsule_kms_call_duration_seconds_bucket{le=\"0.005\",op=\"generate\"} 1"),
            "{s}"
        );
        assert_eq!(m.call_count("generate", "ok"), 1);
        assert_eq!(m.call_count("generate", "transient"), 1);
    }
}
