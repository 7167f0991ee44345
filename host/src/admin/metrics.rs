//! Proxy metrics and the one `/metrics` registry (prometheus-client, OpenMetrics text).
//!
//! Counters are plain atomics indexed by API key so the hot path never takes a lock; they are
//! encoded at scrape time by a prometheus-client [`Collector`]. Other modules (crypto and KMS:
//! [`crate::crypto::CryptoMetrics`]; policies: [`PolicyMetrics`]) join the same registry through
//! [`Metrics::register`]. Sample names and labels are those of the former hand-written renderer;
//! the exposition is OpenMetrics (`# EOF` at the end, `# TYPE` lines name counters without
//! `_total`, histogram `le` values like `1.0`, and `le` comes first in bucket labels).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

const API_KEYS: usize = 128;
/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A module that contributes metric families to `/metrics` (encoded on each scrape).
pub trait MetricsSource: Send + Sync {
    /// Encodes this module's families into `encoder` (see [`counter_family`] and friends).
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

/// Labels of one sample: `(name, value)` pairs, values as they are (unescaped): the family
/// encoders below escape every value through `escape_label_value`, the one place that does.
pub type Labels = Vec<(&'static str, String)>;

/// Escapes a label value for the OpenMetrics text exposition: `\` → `\\`, `"` → `\"`,
/// newline → `\n`. prometheus-client writes label values verbatim, so a value holding a quote
/// and a newline (a principal or topic name chosen by a client) could otherwise end its sample
/// and add samples of its own. Applied by [`counter_family`], [`gauge_family`] and
/// [`histogram_family`] to every label value; callers pass raw values.
fn escape_label_value(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `labels` with every value escaped ([`escape_label_value`]).
fn escaped(labels: Labels) -> Labels {
    labels
        .into_iter()
        .map(|(k, v)| (k, escape_label_value(&v)))
        .collect()
}

/// Encodes counter family `name` (without `_total`; the encoder appends it).
pub fn counter_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        } else {
            m.encode_family(&escaped(labels))?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    Ok(())
}

/// Encodes gauge family `name`.
pub fn gauge_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            m.encode_gauge(&v)?;
        } else {
            m.encode_family(&escaped(labels))?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// One histogram sample: labels, sum, count and per-bucket (not cumulative) counts by upper
/// bound (`f64::MAX` is `+Inf`).
pub type HistogramSample = (Labels, f64, u64, Vec<(f64, u64)>);

/// Encodes histogram family `name`.
pub fn histogram_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = HistogramSample>,
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sum, count, buckets) in samples {
        m.encode_family(&escaped(labels))?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// Adapts a [`MetricsSource`] to prometheus-client.
struct SourceCollector(Arc<dyn MetricsSource>);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut encoder)
    }
}

/// Encodes `source` alone as OpenMetrics text (without `# EOF`), for tests and tools.
pub fn encode_source(source: Arc<dyn MetricsSource>, out: &mut String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SourceCollector(source)));
    let _ = prometheus_client::encoding::text::encode_registry(out, &registry);
}

/// Policy metrics, bridged from the policy registry's status (owned by `policy/stats.rs`), one
/// label set per configured binding: `kapsule_policy_calls_total{binding}`,
/// `kapsule_policy_errors_total{binding,kind}` (kind: `deadline`, `memory`, `trap`,
/// `violation`), `kapsule_policy_instances_discarded_total{binding}`,
/// `kapsule_policy_reload_refusals_total{binding}`, `kapsule_policy_loads_total{binding}`,
/// `kapsule_policy_memo_mismatches_total{binding}`,
/// `kapsule_policy_instances{binding}`.
pub struct PolicyMetrics(pub crate::policy::PolicyRegistry);

impl MetricsSource for PolicyMetrics {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let status = self.0.status();
        let b = |s: &crate::policy::BindingStatus| vec![("binding", s.binding.clone())];
        let per = |f: fn(&crate::policy::BindingStatus) -> u64| {
            status.bindings.iter().map(move |s| (b(s), f(s)))
        };
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

/// Traffic direction of a counted frame.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Client → broker (requests).
    Request,
    /// Broker → client (responses).
    Response,
}

/// All proxy-level metrics and the `/metrics` registry. Cheap to share (`Arc`).
pub struct Metrics {
    inner: Arc<ProxyCounters>,
    registry: RwLock<Registry>,
    principals: OnceLock<Arc<PrincipalMetrics>>,
}

struct ProxyCounters {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    frames: [[AtomicU64; API_KEYS]; 2],
    bytes: [[AtomicU64; API_KEYS]; 2],
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; API_KEYS],
    latency_sum_micros: [AtomicU64; API_KEYS],
}

impl Default for Metrics {
    fn default() -> Self {
        let inner = Arc::new(ProxyCounters::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SourceCollector(inner.clone())));
        Self {
            inner,
            registry: RwLock::new(registry),
            principals: OnceLock::new(),
        }
    }
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

    /// Counts one error of a fixed kind (e.g. `frame_too_large`, `upstream_connect`).
    pub fn error(&self, kind: &'static str) {
        *self.inner.errors.lock().entry(kind).or_default() += 1;
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

    /// Number of currently open client connections.
    pub fn active_connections(&self) -> u64 {
        self.inner.connections_active.load(Relaxed)
    }

    /// Count of errors of `kind` so far.
    pub fn error_count(&self, kind: &str) -> u64 {
        self.inner.errors.lock().get(kind).copied().unwrap_or(0)
    }

    /// Turns on the per-principal families (`admin.principal_metrics`), with at most
    /// `max_principals` distinct principal labels; later principals are counted as `other`.
    /// Called once at start-up; later calls are ignored.
    pub fn enable_principal_label(&self, max_principals: usize) {
        let p = Arc::new(PrincipalMetrics::new(max_principals));
        if self.principals.set(p.clone()).is_ok() {
            self.register(p);
        }
    }

    /// The counters of `principal` (or of `other` once the label cap is reached); `None` when
    /// the principal label is off. Look it up once per connection, then count through it.
    pub fn principal(&self, principal: &str) -> Option<Arc<PrincipalCounters>> {
        self.principals.get().map(|p| p.counters(principal))
    }

    /// Adds a module's families to the `/metrics` registry.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.registry
            .write()
            .register_collector(Box::new(SourceCollector(source)));
    }

    /// Renders every registered family as OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.read());
        out
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
    fn principal_label_is_bounded_and_off_by_default() {
        let m = Metrics::default();
        assert!(m.principal("alice").is_none());
        m.enable_principal_label(2);
        for name in ["alice", "bob", "carol", "dave", "alice"] {
            m.principal(name).unwrap().request(0, 10);
        }
        let text = m.render();
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
        let render = |name: &str| {
            let m = Metrics::default();
            m.enable_principal_label(10);
            m.principal(name).unwrap().request(0, 10);
            m.principal(name).unwrap().response(20);
            m.render()
        };
        let benign = parse_samples(&render("alice"));
        let page = render(hostile);
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
        m.error("frame_too_large");
        let text = m.render();
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
