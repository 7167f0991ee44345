//! Counters of the encryption stage, rendered as Prometheus text (the KMS's own are
//! [`crate::kms::metrics`]).
//!
//! One [`CryptoMetrics`] is shared (`Arc`) by the [`crate::crypto::RecordEncryptor`] and its
//! [`crate::crypto::keys::DekManager`]; it is a [`MetricsSource`] of the admin registry
//! ([`crate::metrics::MetricsRegistry::register`]), encoded with prometheus-client on each scrape.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `kapsule_records_encrypted_total` | topic | records that got an encryption descriptor |
//! | `kapsule_bytes_encrypted_total` | topic | plaintext bytes encrypted (values, keys, headers, fields) |
//! | `kapsule_records_decrypted_total` | topic | records decrypted |
//! | `kapsule_bytes_decrypted_total` | topic | plaintext bytes recovered |
//! | `kapsule_encrypt_failures_total` | topic, reason | batches refused (`rejected`, `invalid_record`, `kms_*`) |
//! | `kapsule_decrypt_failures_total` | topic, reason | records that failed (`integrity`, `malformed`, `missing_header`, `kms_*`) |
//! | `kapsule_dek_cache_hits_total` / `_misses_total` | cache | `decrypt` (EDEK to DEK) and `derive` (record-key keys) caches |
//! | `kapsule_dek_rotations_total` | reason | encryption DEKs retired by `age`, `count` or `bytes` |
//!
//! Label sets are bounded: at most `deks.max_topics` distinct `topic` values (default 10000; the
//! first topics seen keep their own label, later ones count under `topic="~other"`), names Kafka
//! would refuse count under `topic="~invalid"` (`~` is not legal in a topic name, so neither
//! collides with a real topic), and `reason` and `cache` are fixed sets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::DescriptorEncoder;

use crate::crypto::keys::rotation::RotationReason;
use crate::kafka::names::is_valid_topic_name;
use crate::metrics::{counter_family, encode_source, MetricsSource};

/// `topic` label of topics beyond the label cap.
pub const OTHER_TOPIC_LABEL: &str = "~other";
/// `topic` label of names Kafka does not allow.
pub const INVALID_TOPIC_LABEL: &str = "~invalid";
/// Default cap on distinct `topic` labels.
pub const DEFAULT_TOPIC_LABEL_CAP: usize = 10_000;

/// Per-topic counters.
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// Records encrypted.
    pub records_encrypted: AtomicU64,
    /// Plaintext bytes encrypted.
    pub bytes_encrypted: AtomicU64,
    /// Records decrypted.
    pub records_decrypted: AtomicU64,
    /// Plaintext bytes decrypted.
    pub bytes_decrypted: AtomicU64,
}

/// All counters (see the module docs for names).
#[derive(Debug, Default)]
pub struct CryptoMetrics {
    topics: Mutex<BTreeMap<String, Arc<TopicCounters>>>,
    /// Most distinct real topic labels (0: [`DEFAULT_TOPIC_LABEL_CAP`]).
    topic_cap: AtomicUsize,
    encrypt_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    decrypt_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// EDEK→DEK cache hits.
    pub decrypt_cache_hits: AtomicU64,
    /// EDEK→DEK cache misses.
    pub decrypt_cache_misses: AtomicU64,
    /// Record-key (derived) key cache hits.
    pub derive_cache_hits: AtomicU64,
    /// Record-key (derived) key cache misses.
    pub derive_cache_misses: AtomicU64,
    /// DEKs retired because too old.
    pub rotations_age: AtomicU64,
    /// DEKs retired because of the encryption count limit.
    pub rotations_count: AtomicU64,
    /// DEKs retired because of the byte limit.
    pub rotations_bytes: AtomicU64,
}

impl CryptoMetrics {
    /// Sets the most distinct `topic` labels (see the module docs); topics already labelled keep
    /// their label.
    pub fn set_topic_cap(&self, cap: usize) {
        self.topic_cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// The label `topic` is counted under, and its counters (created on first use while the cap
    /// allows).
    fn admit(&self, topic: &str) -> (String, Arc<TopicCounters>) {
        let label = if is_valid_topic_name(topic) {
            topic
        } else {
            INVALID_TOPIC_LABEL
        };
        let mut t = self.topics.lock();
        if let Some(c) = t.get(label) {
            return (label.to_owned(), c.clone());
        }
        let cap = match self.topic_cap.load(Ordering::Relaxed) {
            0 => DEFAULT_TOPIC_LABEL_CAP,
            n => n,
        };
        let real = t.keys().filter(|k| !k.starts_with('~')).count();
        let label = if label.starts_with('~') || real < cap {
            label
        } else {
            OTHER_TOPIC_LABEL
        };
        let c = t.entry(label.to_owned()).or_default().clone();
        (label.to_owned(), c)
    }

    /// Counters of `topic` (created on first use; shared `~other`/`~invalid` counters beyond
    /// the cap or for illegal names).
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        self.admit(topic).1
    }

    /// Number of distinct `topic` labels (bounded by the cap plus the two shared labels).
    pub fn topic_label_count(&self) -> usize {
        self.topics.lock().len()
    }

    /// Counts `records` records encrypted for `topic`, `bytes` plaintext bytes in all.
    pub fn encrypted(&self, topic: &str, records: u64, bytes: u64) {
        let t = self.topic(topic);
        t.records_encrypted.fetch_add(records, Ordering::Relaxed);
        t.bytes_encrypted.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `records` records decrypted for `topic`, `bytes` plaintext bytes in all.
    pub fn decrypted(&self, topic: &str, records: u64, bytes: u64) {
        let t = self.topic(topic);
        t.records_decrypted.fetch_add(records, Ordering::Relaxed);
        t.bytes_decrypted.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one refused produce batch.
    pub fn encrypt_failure(&self, topic: &str, reason: &'static str) {
        let (label, _) = self.admit(topic);
        *self
            .encrypt_failures
            .lock()
            .entry((label, reason))
            .or_default() += 1;
    }

    /// Counts `n` records that failed to decrypt.
    pub fn decrypt_failure(&self, topic: &str, reason: &'static str, n: u64) {
        let (label, _) = self.admit(topic);
        *self
            .decrypt_failures
            .lock()
            .entry((label, reason))
            .or_default() += n;
    }

    /// Records one encryption DEK retired for `reason`.
    pub fn rotation(&self, reason: RotationReason) {
        match reason {
            RotationReason::Age => &self.rotations_age,
            RotationReason::Count => &self.rotations_count,
            RotationReason::Bytes => &self.rotations_bytes,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Appends all metrics as OpenMetrics text (no `# EOF`) to `out` (tests and tools; the
    /// proxy registers the metrics with the admin registry instead).
    pub fn render_prometheus(&self, out: &mut String) {
        encode_source(Arc::new(self.snapshot()), out);
    }

    /// A point-in-time copy of every value, encodable on its own.
    fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            topics: self
                .topics
                .lock()
                .iter()
                .map(|(t, c)| {
                    (
                        t.clone(),
                        [
                            load(&c.records_encrypted),
                            load(&c.bytes_encrypted),
                            load(&c.records_decrypted),
                            load(&c.bytes_decrypted),
                        ],
                    )
                })
                .collect(),
            encrypt_failures: self.encrypt_failures.lock().clone(),
            decrypt_failures: self.decrypt_failures.lock().clone(),
            caches: [
                load(&self.decrypt_cache_hits),
                load(&self.derive_cache_hits),
                load(&self.decrypt_cache_misses),
                load(&self.derive_cache_misses),
            ],
            rotations: [
                load(&self.rotations_age),
                load(&self.rotations_count),
                load(&self.rotations_bytes),
            ],
        }
    }
}

impl MetricsSource for CryptoMetrics {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        self.snapshot().encode(encoder)
    }
}

/// Values copied out of [`CryptoMetrics`] at scrape time.
struct Snapshot {
    topics: Vec<(String, [u64; 4])>,
    encrypt_failures: BTreeMap<(String, &'static str), u64>,
    decrypt_failures: BTreeMap<(String, &'static str), u64>,
    caches: [u64; 4],
    rotations: [u64; 3],
}

impl MetricsSource for Snapshot {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let topic = |t: &str| vec![("topic", t.to_owned())];
        for (i, (name, help)) in [
            ("kapsule_records_encrypted", "Records encrypted."),
            ("kapsule_bytes_encrypted", "Plaintext bytes encrypted."),
            ("kapsule_records_decrypted", "Records decrypted."),
            ("kapsule_bytes_decrypted", "Plaintext bytes decrypted."),
        ]
        .into_iter()
        .enumerate()
        {
            let samples = self.topics.iter().map(|(t, v)| (topic(t), v[i]));
            counter_family(e, name, help, samples)?;
        }
        for (name, help, map) in [
            (
                "kapsule_encrypt_failures",
                "Produce batches refused by the encryption stage.",
                &self.encrypt_failures,
            ),
            (
                "kapsule_decrypt_failures",
                "Fetched records that could not be decrypted.",
                &self.decrypt_failures,
            ),
        ] {
            let samples = map.iter().map(|((t, r), n)| {
                let mut l = topic(t);
                l.push(("reason", r.to_string()));
                (l, *n)
            });
            counter_family(e, name, help, samples)?;
        }
        let cache = |c: &str| vec![("cache", c.to_owned())];
        counter_family(
            e,
            "kapsule_dek_cache_hits",
            "Key cache hits.",
            [
                (cache("decrypt"), self.caches[0]),
                (cache("derive"), self.caches[1]),
            ],
        )?;
        counter_family(
            e,
            "kapsule_dek_cache_misses",
            "Key cache misses.",
            [
                (cache("decrypt"), self.caches[2]),
                (cache("derive"), self.caches[3]),
            ],
        )?;
        let reason = |r: &str| vec![("reason", r.to_owned())];
        counter_family(
            e,
            "kapsule_dek_rotations",
            "Encryption DEKs retired.",
            [
                (reason(RotationReason::Age.label()), self.rotations[0]),
                (reason(RotationReason::Count.label()), self.rotations[1]),
                (reason(RotationReason::Bytes.label()), self.rotations[2]),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = CryptoMetrics::default();
        m.topic("orders")
            .records_encrypted
            .fetch_add(3, Ordering::Relaxed);
        m.encrypt_failure("o\"x", "rejected");
        m.encrypt_failure("orders", "rejected");
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(
            s.contains("kapsule_records_encrypted_total{topic=\"orders\"} 3"),
            "{s}"
        );
        assert!(
            s.contains("kapsule_encrypt_failures_total{topic=\"~invalid\",reason=\"rejected\"} 1")
        );
        assert!(
            s.contains("kapsule_encrypt_failures_total{topic=\"orders\",reason=\"rejected\"} 1")
        );
    }

    #[test]
    fn topic_labels_are_bounded() {
        let m = CryptoMetrics::default();
        m.set_topic_cap(3);
        for i in 0..100 {
            m.topic(&format!("t{i}"))
                .records_encrypted
                .fetch_add(1, Ordering::Relaxed);
            m.encrypt_failure(&format!("t{i}"), "rejected");
            m.decrypt_failure(&format!("bad/{i}"), "integrity", 1);
        }
        // t0..t2, ~other, ~invalid.
        assert_eq!(m.topic_label_count(), 5);
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(
            s.contains("kapsule_records_encrypted_total{topic=\"t2\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("kapsule_records_encrypted_total{topic=\"~other\"} 97"),
            "{s}"
        );
        assert!(s.contains(
            "kapsule_decrypt_failures_total{topic=\"~invalid\",reason=\"integrity\"} 100"
        ));
        assert_eq!(
            s.matches("kapsule_encrypt_failures_total{").count(),
            4,
            "{s}"
        );
    }
}
