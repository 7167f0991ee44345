//! The proxy's own counters: connections, frames and bytes by API and direction, errors by
//! [`Reason`], upstream latency, and (with `admin.principal_metrics`) per-principal requests and
//! bytes.
//!
//! Counters are plain atomics indexed by API key so the hot path never takes a lock; they are
//! encoded at scrape time as a [`MetricsSource`] of the one registry
//! ([`crate::metrics::MetricsRegistry`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::DescriptorEncoder;

use crate::error::Reason;
use crate::metrics::{
    api_name, counter_family, gauge_family, histogram_family, Labels, MetricsSource,
};

const API_KEYS: usize = 128;
/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Traffic direction of a counted frame.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client → broker (requests).
    Request,
    /// Broker → client (responses).
    Response,
}

/// All proxy-level metrics: one [`MetricsSource`] for the registry. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Metrics {
    inner: ProxyCounters,
    principals: OnceLock<PrincipalMetrics>,
}

struct ProxyCounters {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    frames: [[AtomicU64; API_KEYS]; 2],
    bytes: [[AtomicU64; API_KEYS]; 2],
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; API_KEYS],
    latency_sum_micros: [AtomicU64; API_KEYS],
    read_ahead_sent: AtomicU64,
    read_ahead_served: AtomicU64,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        Self {
            connections_total: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            frames: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            bytes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            errors: Mutex::new(BTreeMap::new()),
            latency_buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_micros: std::array::from_fn(|_| AtomicU64::new(0)),
            read_ahead_sent: AtomicU64::new(0),
            read_ahead_served: AtomicU64::new(0),
        }
    }
}

fn slot(api_key: i16) -> usize {
    (api_key.max(0) as usize).min(API_KEYS - 1)
}

impl Metrics {
    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.inner.connections_total.fetch_add(1, Relaxed);
        self.inner.connections_active.fetch_add(1, Relaxed);
    }

    /// A client connection ended.
    pub fn connection_closed(&self) {
        self.inner.connections_active.fetch_sub(1, Relaxed);
    }

    /// Counts one frame of `len` bytes for `api_key` in `direction`.
    pub fn frame(&self, direction: Direction, api_key: i16, len: usize) {
        let d = direction as usize;
        self.inner.frames[d][slot(api_key)].fetch_add(1, Relaxed);
        self.inner.bytes[d][slot(api_key)].fetch_add(len as u64, Relaxed);
    }

    /// Counts one error (`kapsule_errors_total{kind}`, the kind being [`Reason::label`]).
    pub fn error(&self, reason: Reason) {
        *self.inner.errors.lock().entry(reason.label()).or_default() += 1;
    }

    /// Records the time between forwarding a request and receiving its response.
    pub fn upstream_latency(&self, api_key: i16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.inner.latency_buckets[slot(api_key)][i].fetch_add(1, Relaxed);
        self.inner.latency_sum_micros[slot(api_key)].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A Fetch was sent ahead of a client (see `proxy::connection::read_ahead`).
    pub fn read_ahead_sent(&self) {
        self.inner.read_ahead_sent.fetch_add(1, Relaxed);
    }

    /// A client's Fetch was answered with a response read ahead.
    pub fn read_ahead_served(&self) {
        self.inner.read_ahead_served.fetch_add(1, Relaxed);
    }

    /// Fetches sent ahead of clients and client Fetches answered with them, so far.
    pub fn read_ahead_counts(&self) -> (u64, u64) {
        (
            self.inner.read_ahead_sent.load(Relaxed),
            self.inner.read_ahead_served.load(Relaxed),
        )
    }

    /// Number of currently open client connections.
    pub fn active_connections(&self) -> u64 {
        self.inner.connections_active.load(Relaxed)
    }

    /// Count of errors for `reason` so far.
    pub fn error_count(&self, reason: Reason) -> u64 {
        self.inner
            .errors
            .lock()
            .get(reason.label())
            .copied()
            .unwrap_or(0)
    }

    /// Turns on the per-principal families (`admin.principal_metrics`), with at most
    /// `max_principals` distinct principal labels; later principals are counted as `other`.
    /// Called once at start-up, before the metrics are registered; later calls are ignored.
    pub fn enable_principal_label(&self, max_principals: usize) {
        let _ = self.principals.set(PrincipalMetrics::new(max_principals));
    }

    /// The counters of `principal` (or of `other` once the label cap is reached); `None` when
    /// the principal label is off. Look it up once per connection, then count through it.
    pub fn principal(&self, principal: &str) -> Option<Arc<PrincipalCounters>> {
        self.principals.get().map(|p| p.counters(principal))
    }
}

impl MetricsSource for Metrics {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.inner.encode(e)?;
        match self.principals.get() {
            Some(p) => p.encode(e),
            None => Ok(()),
        }
    }
}

impl MetricsSource for ProxyCounters {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        counter_family(
            e,
            "kapsule_connections",
            "Client connections accepted.",
            [(Vec::new(), self.connections_total.load(Relaxed))],
        )?;
        gauge_family(
            e,
            "kapsule_connections_active",
            "Client connections open now.",
            [(
                Vec::new(),
                i64::try_from(self.connections_active.load(Relaxed)).unwrap_or(i64::MAX),
            )],
        )?;
        for (name, help, table) in [
            (
                "kapsule_frames",
                "Kafka frames relayed, by API and direction.",
                &self.frames,
            ),
            (
                "kapsule_bytes",
                "Kafka frame bytes relayed, by API and direction.",
                &self.bytes,
            ),
        ] {
            let samples = ["request", "response"]
                .iter()
                .enumerate()
                .flat_map(|(d, dir)| {
                    table[d].iter().enumerate().filter_map(move |(k, v)| {
                        let v = v.load(Relaxed);
                        (v > 0).then(|| {
                            (
                                vec![("api", api_name(k as i16)), ("direction", dir.to_string())],
                                v,
                            )
                        })
                    })
                });
            counter_family(e, name, help, samples)?;
        }
        counter_family(
            e,
            "kapsule_fetch_read_ahead",
            "Fetches Kapsule sent ahead of consumers (outcome=sent) and consumer Fetches answered with them (outcome=served).",
            [
                (
                    vec![("outcome", "sent".to_string())],
                    self.read_ahead_sent.load(Relaxed),
                ),
                (
                    vec![("outcome", "served".to_string())],
                    self.read_ahead_served.load(Relaxed),
                ),
            ],
        )?;
        let errors: Vec<(Labels, u64)> = self
            .errors
            .lock()
            .iter()
            .map(|(k, n)| (vec![("kind", k.to_string())], *n))
            .collect();
        counter_family(e, "kapsule_errors", "Errors by kind.", errors)?;
        let latency = self
            .latency_buckets
            .iter()
            .enumerate()
            .filter_map(|(k, b)| {
                let counts: Vec<u64> = b.iter().map(|c| c.load(Relaxed)).collect();
                let total: u64 = counts.iter().sum();
                (total > 0).then(|| {
                    let buckets = LATENCY_BUCKETS
                        .iter()
                        .copied()
                        .chain([f64::MAX])
                        .zip(counts)
                        .collect();
                    let sum = self.latency_sum_micros[k].load(Relaxed) as f64 / 1e6;
                    (vec![("api", api_name(k as i16))], sum, total, buckets)
                })
            });
        histogram_family(
            e,
            "kapsule_upstream_latency_seconds",
            "Time from forwarding a request to its broker response.",
            latency,
        )
    }
}

/// Label value for principals beyond the cap.
pub const OTHER_PRINCIPAL: &str = "other";

/// Per-principal counters (`kapsule_principal_requests`, `kapsule_principal_bytes`), bounded
/// to a fixed number of distinct principals.
pub struct PrincipalMetrics {
    max: usize,
    by_name: Mutex<HashMap<String, Arc<PrincipalCounters>>>,
    other: Arc<PrincipalCounters>,
}

/// One principal's request and byte counters; cheap to update (atomics).
pub struct PrincipalCounters {
    requests: [AtomicU64; API_KEYS],
    bytes: [AtomicU64; 2],
}

impl Default for PrincipalCounters {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PrincipalCounters {
    /// Counts one request of `api_key`, `len` bytes.
    pub fn request(&self, api_key: i16, len: usize) {
        self.requests[slot(api_key)].fetch_add(1, Relaxed);
        self.bytes[Direction::Request as usize].fetch_add(len as u64, Relaxed);
    }

    /// Counts one response of `len` bytes.
    pub fn response(&self, len: usize) {
        self.bytes[Direction::Response as usize].fetch_add(len as u64, Relaxed);
    }
}

impl PrincipalMetrics {
    fn new(max: usize) -> Self {
        Self {
            max,
            by_name: Mutex::new(HashMap::new()),
            other: Arc::default(),
        }
    }

    fn counters(&self, principal: &str) -> Arc<PrincipalCounters> {
        let mut map = self.by_name.lock();
        if let Some(c) = map.get(principal) {
            return c.clone();
        }
        if map.len() >= self.max || principal == OTHER_PRINCIPAL {
            return self.other.clone();
        }
        let c = Arc::new(PrincipalCounters::default());
        map.insert(principal.to_owned(), c.clone());
        c
    }
}

impl MetricsSource for PrincipalMetrics {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut all: Vec<(String, Arc<PrincipalCounters>)> = self
            .by_name
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.push((OTHER_PRINCIPAL.to_owned(), self.other.clone()));
        let requests = all.iter().flat_map(|(name, c)| {
            c.requests.iter().enumerate().filter_map(move |(k, v)| {
                let v = v.load(Relaxed);
                (v > 0).then(|| {
                    (
                        vec![("principal", name.clone()), ("api", api_name(k as i16))],
                        v,
                    )
                })
            })
        });
        counter_family(
            e,
            "kapsule_principal_requests",
            "Requests by authenticated principal and API (admin.principal_metrics).",
            requests,
        )?;
        let bytes = all.iter().flat_map(|(name, c)| {
            ["request", "response"]
                .iter()
                .enumerate()
                .filter_map(move |(d, dir)| {
                    let v = c.bytes[d].load(Relaxed);
                    (v > 0).then(|| {
                        (
                            vec![("principal", name.clone()), ("direction", dir.to_string())],
                            v,
                        )
                    })
                })
        });
        counter_family(
            e,
            "kapsule_principal_bytes",
            "Frame bytes by authenticated principal and direction (admin.principal_metrics).",
            bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `m` alone as OpenMetrics text (ends with `# EOF`), as `/metrics` renders it.
    fn render(m: Metrics) -> String {
        let registry = crate::metrics::MetricsRegistry::default();
        registry.register(Arc::new(m));
        registry.render()
    }

    #[test]
    fn principal_label_is_bounded_and_off_by_default() {
        let m = Metrics::default();
        assert!(m.principal("alice").is_none());
        m.enable_principal_label(2);
        for name in ["alice", "bob", "carol", "dave", "alice"] {
            m.principal(name).unwrap().request(0, 10);
        }
        let text = render(m);
        assert!(
            text.contains(r#"kapsule_principal_requests_total{principal="alice",api="Produce"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"principal="bob""#), "{text}");
        assert!(!text.contains("carol") && !text.contains("dave"), "{text}");
        assert!(
            text.contains(r#"kapsule_principal_requests_total{principal="other",api="Produce"} 2"#),
            "{text}"
        );
    }

    /// One parsed sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, String);

    /// Parses an OpenMetrics text page: one `(name, labels, value)` per sample line, label
    /// values unescaped. Panics on a line that is not a comment or a well-formed sample.
    fn parse_samples(page: &str) -> Vec<Sample> {
        let mut out = Vec::new();
        for line in page.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).expect("sample name");
            let name = line[..name_end].to_owned();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad metric name in {line:?}"
            );
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    let eq = rest.find("=\"").expect("label =\"");
                    let key = rest[..eq].trim_start_matches(',').to_owned();
                    let mut value = String::new();
                    let mut chars = rest[eq + 2..].char_indices();
                    let end = loop {
                        match chars.next().expect("unterminated label value") {
                            (_, '\\') => match chars.next().expect("escape").1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c} in {line:?}"),
                            },
                            (i, '"') => break i,
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((key, value));
                    rest = &rest[eq + 2 + end + 1..];
                }
            }
            let value = rest
                .strip_prefix(' ')
                .expect("space before value")
                .to_owned();
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            out.push((name, labels, value));
        }
        out
    }

    #[test]
    fn label_values_are_escaped_so_a_principal_cannot_add_samples() {
        let hostile = "evil\"} 1e9\nkapsule_connections_active 999\n# \\";
        let page_for = |name: &str| {
            let m = Metrics::default();
            m.enable_principal_label(10);
            m.principal(name).unwrap().request(0, 10);
            m.principal(name).unwrap().response(20);
            render(m)
        };
        let benign = parse_samples(&page_for("alice"));
        let page = page_for(hostile);
        let samples = parse_samples(&page);
        assert_eq!(samples.len(), benign.len(), "{page}");
        let principals: Vec<&str> = samples
            .iter()
            .flat_map(|(_, l, _)| l.iter())
            .filter(|(k, _)| k == "principal")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(principals, vec![hostile; 3], "{page}");
        assert!(
            !page
                .lines()
                .any(|l| l.starts_with("kapsule_connections_active 999")),
            "{page}"
        );
        assert!(
            page.contains(r#"principal="evil\"} 1e9\nkapsule_connections_active 999\n# \\""#),
            "{page}"
        );
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.connection_opened();
        m.frame(Direction::Request, 0, 100);
        m.frame(Direction::Response, 0, 40);
        m.upstream_latency(0, Duration::from_millis(3));
        m.error(Reason::FrameTooLarge);
        let text = render(m);
        assert!(text.contains("kapsule_connections_active 1"));
        assert!(text.contains("kapsule_bytes_total{api=\"Produce\",direction=\"request\"} 100"));
        assert!(text
            .contains("kapsule_upstream_latency_seconds_bucket{le=\"0.005\",api=\"Produce\"} 1"));
        assert!(text
            .contains("kapsule_upstream_latency_seconds_bucket{le=\"0.002\",api=\"Produce\"} 0"));
        assert!(
            text.contains("kapsule_upstream_latency_seconds_bucket{le=\"+Inf\",api=\"Produce\"} 1")
        );
        assert!(text.contains("kapsule_upstream_latency_seconds_count{api=\"Produce\"} 1"));
        assert!(text.contains("kapsule_errors_total{kind=\"frame_too_large\"} 1"));
        assert!(text.contains("kapsule_connections_total 1"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
