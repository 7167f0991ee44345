//! Counters of the encryption stage and the KMS, rendered as Prometheus text.
//!
//! One [`CryptoMetrics`] is shared (`Arc`) by the [`crate::crypto::RecordEncryptor`] and its
//! [`crate::kms::DekManager`]; the admin endpoint calls [`CryptoMetrics::render_prometheus`].
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `kapsule_records_encrypted_total` | topic | records that got an encryption descriptor |
//! | `kapsule_bytes_encrypted_total` | topic | plaintext bytes encrypted (values, keys, headers, fields) |
//! | `kapsule_records_decrypted_total` | topic | records decrypted |
//! | `kapsule_bytes_decrypted_total` | topic | plaintext bytes recovered |
//! | `kapsule_encrypt_failures_total` | topic, reason | batches refused (`rejected`, `invalid_record`, `kms_*`) |
//! | `kapsule_decrypt_failures_total` | topic, reason | records that failed (`integrity`, `malformed`, `missing_header`, `kms_*`) |
//! | `kapsule_kms_calls_total` | op, outcome | KMS calls by operation (`generate`, `decrypt`, `derive`) and outcome (`ok` or error class) |
//! | `kapsule_kms_call_duration_seconds_sum` / `_count` | op | total latency and count of KMS calls |
//! | `kapsule_dek_cache_hits_total` / `_misses_total` | cache | `decrypt` (EDEK to DEK) and `derive` (record-key keys) caches |
//! | `kapsule_dek_rotations_total` | reason | encryption DEKs retired by `age`, `count` or `bytes` |
//!
//! Label sets are bounded: at most `deks.max_topics` distinct `topic` values (default 10000; the
//! first topics seen keep their own label, later ones count under `topic="~other"`), names Kafka
//! would refuse count under `topic="~invalid"` (`~` is not legal in a topic name, so neither
//! collides with a real topic), and `reason`, `op`, `outcome` and `cache` are fixed sets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::kafka::names::is_valid_topic_name;

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
    kms_calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    kms_latency: Mutex<BTreeMap<&'static str, (u64, f64)>>,
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

    /// Records one KMS call.
    pub fn kms_call(&self, op: &'static str, outcome: &'static str, latency: Duration) {
        *self.kms_calls.lock().entry((op, outcome)).or_default() += 1;
        let mut l = self.kms_latency.lock();
        let e = l.entry(op).or_default();
        e.0 += 1;
        e.1 += latency.as_secs_f64();
    }

    /// Number of KMS calls for `op` with `outcome` so far.
    pub fn kms_call_count(&self, op: &str, outcome: &str) -> u64 {
        self.kms_calls
            .lock()
            .iter()
            .filter(|((o, r), _)| *o == op && *r == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Appends all metrics in Prometheus text exposition format to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        fn esc(s: &str) -> String {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }
        let topics: Vec<(String, Arc<TopicCounters>)> = self
            .topics
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        type Getter = fn(&TopicCounters) -> &AtomicU64;
        let per_topic: [(&str, &str, Getter); 4] = [
            (
                "kapsule_records_encrypted_total",
                "Records encrypted.",
                |c| &c.records_encrypted,
            ),
            (
                "kapsule_bytes_encrypted_total",
                "Plaintext bytes encrypted.",
                |c| &c.bytes_encrypted,
            ),
            (
                "kapsule_records_decrypted_total",
                "Records decrypted.",
                |c| &c.records_decrypted,
            ),
            (
                "kapsule_bytes_decrypted_total",
                "Plaintext bytes decrypted.",
                |c| &c.bytes_decrypted,
            ),
        ];
        for (name, help, get) in per_topic {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, c) in &topics {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\"}} {}",
                    esc(t),
                    get(c).load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, map) in [
            (
                "kapsule_encrypt_failures_total",
                "Produce batches refused by the encryption stage.",
                &self.encrypt_failures,
            ),
            (
                "kapsule_decrypt_failures_total",
                "Fetched records that could not be decrypted.",
                &self.decrypt_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((t, r), n) in map.lock().iter() {
                let _ = writeln!(out, "{name}{{topic=\"{}\",reason=\"{r}\"}} {n}", esc(t));
            }
        }
        let _ = writeln!(
            out,
            "# HELP kapsule_kms_calls_total KMS calls by operation and outcome.\n# TYPE kapsule_kms_calls_total counter"
        );
        for ((op, outcome), n) in self.kms_calls.lock().iter() {
            let _ = writeln!(
                out,
                "kapsule_kms_calls_total{{op=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kapsule_kms_call_duration_seconds KMS call latency.\n# TYPE kapsule_kms_call_duration_seconds summary"
        );
        for (op, (n, sum)) in self.kms_latency.lock().iter() {
            let _ = writeln!(
                out,
                "kapsule_kms_call_duration_seconds_sum{{op=\"{op}\"}} {sum}\nkapsule_kms_call_duration_seconds_count{{op=\"{op}\"}} {n}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP kapsule_dek_cache_hits_total Key cache hits.\n# TYPE kapsule_dek_cache_hits_total counter\n\
             kapsule_dek_cache_hits_total{{cache=\"decrypt\"}} {}\nkapsule_dek_cache_hits_total{{cache=\"derive\"}} {}\n\
             # HELP kapsule_dek_cache_misses_total Key cache misses.\n# TYPE kapsule_dek_cache_misses_total counter\n\
             kapsule_dek_cache_misses_total{{cache=\"decrypt\"}} {}\nkapsule_dek_cache_misses_total{{cache=\"derive\"}} {}\n\
             # HELP kapsule_dek_rotations_total Encryption DEKs retired.\n# TYPE kapsule_dek_rotations_total counter\n\
             kapsule_dek_rotations_total{{reason=\"age\"}} {}\nkapsule_dek_rotations_total{{reason=\"count\"}} {}\n\
             kapsule_dek_rotations_total{{reason=\"bytes\"}} {}",
            load(&self.decrypt_cache_hits),
            load(&self.derive_cache_hits),
            load(&self.decrypt_cache_misses),
            load(&self.derive_cache_misses),
            load(&self.rotations_age),
            load(&self.rotations_count),
            load(&self.rotations_bytes),
        );
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
        m.kms_call("generate", "ok", Duration::from_millis(5));
        m.encrypt_failure("o\"x", "rejected");
        m.encrypt_failure("orders", "rejected");
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(
            s.contains("kapsule_records_encrypted_total{topic=\"orders\"} 3"),
            "{s}"
        );
        assert!(s.contains("kapsule_kms_calls_total{op=\"generate\",outcome=\"ok\"} 1"));
        assert!(
            s.contains("kapsule_encrypt_failures_total{topic=\"~invalid\",reason=\"rejected\"} 1")
        );
        assert!(
            s.contains("kapsule_encrypt_failures_total{topic=\"orders\",reason=\"rejected\"} 1")
        );
        assert!(s.contains("kapsule_kms_call_duration_seconds_count{op=\"generate\"} 1"));
        assert_eq!(m.kms_call_count("generate", "ok"), 1);
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
