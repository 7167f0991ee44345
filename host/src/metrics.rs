//! The one `/metrics` registry and the helpers every room encodes its families with.
//!
//! A leaf: it imports nothing from the crate. Each room keeps its own counters and implements
//! [`MetricsSource`] for them (proxy: [`crate::proxy::metrics`]; encryption:
//! [`crate::crypto::CryptoMetrics`]; KMS: [`crate::kms::metrics`]; policies: [`crate::policy::metrics`]; memory:
//! [`crate::proxy::budget`]); the app registers each with [`MetricsRegistry::register`], and the
//! admin endpoint serves [`MetricsRegistry::render`]. Families are encoded with prometheus-client
//! at scrape time (OpenMetrics text: `# EOF` at the end, `# TYPE` lines name counters without
//! `_total`, histogram `le` values like `1.0`, and `le` comes first in bucket labels). Every label
//! value is escaped in one place, [`escape_label_value`].

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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

/// The `/metrics` registry: every room's [`MetricsSource`], encoded in registration order.
#[derive(Default)]
pub struct MetricsRegistry {
    registry: RwLock<Registry>,
}

impl MetricsRegistry {
    /// Adds a room's families to `/metrics`.
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

/// Kafka API name for a key (`unknown_<n>` when kafka-protocol does not know it).
pub fn api_name(key: i16) -> String {
    match kafka_protocol::messages::ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("unknown_{key}"),
    }
}
