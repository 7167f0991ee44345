//! Proxy metrics, rendered in the Prometheus text exposition format.
//!
//! Counters are plain atomics indexed by API key so the hot path never takes a lock. Other
//! modules (crypto, KMS, policy) plug their own series in through [`MetricsSource`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

const API_KEYS: usize = 128;
/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A module that contributes series to `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends complete `# HELP`/`# TYPE`/sample lines to `out`.
    fn render(&self, out: &mut String);
}

/// Traffic direction of a counted frame.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client → broker (requests).
    Request,
    /// Broker → client (responses).
    Response,
}

/// All proxy-level metrics. Cheap to share (`Arc`).
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    frames: [[AtomicU64; API_KEYS]; 2],
    bytes: [[AtomicU64; API_KEYS]; 2],
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; API_KEYS],
    latency_sum_micros: [AtomicU64; API_KEYS],
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            frames: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            bytes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            errors: Mutex::new(BTreeMap::new()),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_micros: std::array::from_fn(|_| AtomicU64::new(0)),
            sources: Mutex::new(Vec::new()),
        }
    }
}

fn slot(api_key: i16) -> usize {
    (api_key.max(0) as usize).min(API_KEYS - 1)
}

impl Metrics {
    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }

    /// A client connection ended.
    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    /// Counts one frame of `len` bytes for `api_key` in `direction`.
    pub fn frame(&self, direction: Direction, api_key: i16, len: usize) {
        let d = direction as usize;
        self.frames[d][slot(api_key)].fetch_add(1, Relaxed);
        self.bytes[d][slot(api_key)].fetch_add(len as u64, Relaxed);
    }

    /// Counts one error of a fixed kind (e.g. `frame_too_large`, `upstream_connect`).
    pub fn error(&self, kind: &'static str) {
        *self.errors.lock().entry(kind).or_default() += 1;
    }

    /// Records the time between forwarding a request and receiving its response.
    pub fn upstream_latency(&self, api_key: i16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[slot(api_key)][i].fetch_add(1, Relaxed);
        self.latency_sum_micros[slot(api_key)].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Number of currently open client connections.
    pub fn active_connections(&self) -> u64 {
        self.connections_active.load(Relaxed)
    }

    /// Count of errors of `kind` so far.
    pub fn error_count(&self, kind: &str) -> u64 {
        self.errors.lock().get(kind).copied().unwrap_or(0)
    }

    /// Adds a module's series to the `/metrics` output.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.sources.lock().push(source);
    }

    /// Renders every series in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP kapsule_connections_total Client connections accepted."
        );
        let _ = writeln!(out, "# TYPE kapsule_connections_total counter");
        let _ = writeln!(
            out,
            "kapsule_connections_total {}",
            self.connections_total.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kapsule_connections_active Client connections open now."
        );
        let _ = writeln!(out, "# TYPE kapsule_connections_active gauge");
        let _ = writeln!(
            out,
            "kapsule_connections_active {}",
            self.connections_active.load(Relaxed)
        );
        for (name, help, table) in [
            (
                "kapsule_frames_total",
                "Kafka frames relayed, by API and direction.",
                &self.frames,
            ),
            (
                "kapsule_bytes_total",
                "Kafka frame bytes relayed, by API and direction.",
                &self.bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (d, dir) in ["request", "response"].iter().enumerate() {
                for (k, v) in table[d].iter().enumerate() {
                    let v = v.load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "{name}{{api=\"{}\",direction=\"{dir}\"}} {v}",
                            api_name(k as i16)
                        );
                    }
                }
            }
        }
        let _ = writeln!(out, "# HELP kapsule_errors_total Errors by kind.");
        let _ = writeln!(out, "# TYPE kapsule_errors_total counter");
        for (kind, n) in self.errors.lock().iter() {
            let _ = writeln!(out, "kapsule_errors_total{{kind=\"{kind}\"}} {n}");
        }
        let name = "kapsule_upstream_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from forwarding a request to its broker response."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (k, buckets) in self.latency_buckets.iter().enumerate() {
            let counts: Vec<u64> = buckets.iter().map(|b| b.load(Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let api = api_name(k as i16);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += counts[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{api=\"{api}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "{name}_bucket{{api=\"{api}\",le=\"+Inf\"}} {total}");
            let sum = self.latency_sum_micros[k].load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{api=\"{api}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{api=\"{api}\"}} {total}");
        }
        for source in self.sources.lock().iter() {
            source.render(&mut out);
        }
        out
    }
}

/// Kafka API name for a key (`unknown_<n>` when kafka-protocol does not know it).
pub fn api_name(key: i16) -> String {
    match kafka_protocol::messages::ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("unknown_{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.connection_opened();
        m.frame(Direction::Request, 0, 100);
        m.frame(Direction::Response, 0, 40);
        m.upstream_latency(0, Duration::from_millis(3));
        m.error("frame_too_large");
        let text = m.render();
        assert!(text.contains("kapsule_connections_active 1"));
        assert!(text.contains("kapsule_bytes_total{api=\"Produce\",direction=\"request\"} 100"));
        assert!(text
            .contains("kapsule_upstream_latency_seconds_bucket{api=\"Produce\",le=\"0.005\"} 1"));
        assert!(text
            .contains("kapsule_upstream_latency_seconds_bucket{api=\"Produce\",le=\"0.002\"} 0"));
        assert!(text.contains("kapsule_errors_total{kind=\"frame_too_large\"} 1"));
    }
}
