//! Per-binding counters and a lock-free call-time histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use super::PolicyError;

/// Counters of one binding, cumulative since start (they survive module reloads).
#[derive(Default)]
pub(crate) struct BindingStats {
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) deadlines: AtomicU64,
    pub(crate) memory: AtomicU64,
    pub(crate) traps: AtomicU64,
    pub(crate) violations: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) refusals: AtomicU64,
    pub(crate) loads: AtomicU64,
    /// Audits that found a memo answer differing from the module's own decision.
    pub(crate) memo_mismatches: AtomicU64,
    pub(crate) histogram: Histogram,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) last_refusal: Mutex<Option<String>>,
}

impl BindingStats {
    pub(crate) fn record_call(&self, d: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.histogram.record(d);
    }

    pub(crate) fn record_error(&self, e: &PolicyError, discarded: bool) {
        self.errors.fetch_add(1, Relaxed);
        match e {
            PolicyError::Deadline { .. } => &self.deadlines,
            PolicyError::MemoryExhausted { .. } => &self.memory,
            PolicyError::Trap { .. }
            | PolicyError::Unavailable { .. }
            | PolicyError::Loading { .. } => &self.traps,
            PolicyError::Malformed { .. } | PolicyError::KeyNotAllowed { .. } => &self.violations,
        }
        .fetch_add(1, Relaxed);
        if discarded {
            self.discarded.fetch_add(1, Relaxed);
        }
        *self.last_error.lock() = Some(e.to_string());
    }

    pub(crate) fn record_refusal(&self, e: &str) {
        self.refusals.fetch_add(1, Relaxed);
        *self.last_refusal.lock() = Some(e.to_string());
    }
}

/// Log-linear histogram of durations in nanoseconds: 4 sub-buckets per power of two (worst-case
/// relative error 25%), 256 buckets covering everything a u64 holds.
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..256).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let log = 63 - u64::from(ns.leading_zeros());
    let mant = (ns >> (log - 2)) & 3;
    (log * 4 + mant) as usize
}

/// Upper bound (exclusive) of a bucket, in nanoseconds.
fn bucket_upper(i: usize) -> f64 {
    if i < 4 {
        return (i + 1) as f64;
    }
    let log = (i / 4) as i32;
    let mant = (i % 4) as f64;
    (4.0 + mant + 1.0) * 2f64.powi(log - 2)
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket(ns)].fetch_add(1, Relaxed);
    }

    /// Upper bound of the bucket holding quantile `q`, in microseconds; `None` when empty.
    pub(crate) fn quantile_us(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper(i) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut prev = 0;
        for ns in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            12_345,
            1 << 40,
            (1 << 63) + 1,
        ] {
            let b = bucket(ns);
            assert!(b >= prev, "{ns}");
            assert!(
                bucket_upper(b) > ns as f64,
                "{ns} -> {b} -> {}",
                bucket_upper(b)
            );
            prev = b;
        }
        assert_eq!(bucket(u64::MAX), 255);
    }

    #[test]
    fn p99_reflects_the_tail() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.99), None);
        for _ in 0..990 {
            h.record(Duration::from_micros(10));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(5));
        }
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((10.0..15.0).contains(&p99), "{p99}");
        let p999 = h.quantile_us(0.999).unwrap();
        assert!((5000.0..6500.0).contains(&p999), "{p999}");
    }
}
