//! Memoized decisions: the amortised host cost per record of the tenant pattern (a per-record
//! plan whose decision depends only on the `tenant` header), against deciding every record.
//!
//! Run: `cargo bench -p kapsule --bench memo` (release). Policies are built from source first.
//! Batches are 1000 records of about 1 KiB with 8 tenants interleaved, produced by one principal.
//! Once every tenant's decision is cached no guest code runs but the memo audits (after the first
//! 256 answers, one record in 1024 and at most one every 100 ms: the bench checks the binding's
//! call counter against that bound), so the memoized figure is nearly the same whatever language
//! the policy is written in.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use kapsule::kafka::records::{Record, RecordHeader};
use kapsule::policy::config::{BindingConfig, DecryptFailure, PolicyConfig};
use kapsule::policy::rules::TopicSelector;
use kapsule::policy::PolicyRegistry;
use kapsule::principal::{AuthMechanism, Principal};

const BATCH: usize = 1000;
const TENANTS: usize = 8;

fn record(i: usize) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: i as i64,
        offset_delta: i as i32,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(format!(
            r#"{{"id":{i},"notes":"{}"}}"#,
            "x".repeat(1000)
        ))),
        headers: vec![
            RecordHeader {
                key: Bytes::from_static(b"trace"),
                value: Some(Bytes::from_static(b"0af7651916cd43dd8448eb211c80319c")),
            },
            RecordHeader {
                key: Bytes::from_static(b"tenant"),
                value: Some(Bytes::from(format!("tenant{}", i % TENANTS))),
            },
        ],
    }
}

fn binding(module: &Path, topics: &str, config: &str) -> BindingConfig {
    BindingConfig {
        topics: TopicSelector::from_plain(topics),
        module: module.to_path_buf(),
        config: config.into(),
        allowed_key_ids: vec!["tenant-*".into()],
        on_decrypt_failure: DecryptFailure::Error,
        require_encrypted: false,
        accept_pre_encrypted: false,
    }
}

fn memo(c: &mut Criterion) {
    let a = kapsule_test_fixtures::policy_artifacts().expect("the guest components");
    let tenant_keys = a.path("tenant-keys");
    let mut cfg = PolicyConfig {
        bindings: vec![
            binding(&tenant_keys, "memo", r#"{"memo": true}"#),
            binding(&tenant_keys, "plain", r#"{"memo": false}"#),
        ],
        module_cache_dir: Some(std::env::temp_dir().join("kapsule-policy-bench-cache")),
        ..PolicyConfig::default()
    };
    cfg.limits.call_timeout_ms = 1000;
    let reg = PolicyRegistry::new(&cfg).expect("registry");
    let recs: Vec<Record> = (0..BATCH).map(record).collect();
    let alice = Principal::new("alice", AuthMechanism::SaslScramSha256);
    let p = Some(&alice);

    // Warm: plans and the 8 tenants' decisions cached.
    let first = reg.decide("memo", p, 0, &recs).unwrap();
    assert_eq!(first, reg.decide("plain", p, 0, &recs).unwrap());
    let calls_before = reg.status().bindings[0].calls;
    let started = Instant::now();

    let mut g = c.benchmark_group("tenant_pattern_1000x1KiB");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function(BenchmarkId::new("memoized", "cached"), |b| {
        b.iter(|| reg.decide("memo", p, 0, &recs).unwrap())
    });
    g.bench_function(BenchmarkId::new("unmemoized", "every_record"), |b| {
        b.iter(|| reg.decide("plain", p, 0, &recs).unwrap())
    });
    g.finish();
    // Guest calls while memoized: only the sampled audits, at most one per 100 ms.
    let audits = reg.status().bindings[0].calls - calls_before;
    let bound = started.elapsed().as_millis() as u64 / 100 + 1;
    assert!(
        audits <= bound,
        "memoized batches ran {audits} guest calls, more than the audit bound {bound}"
    );

    // A plain figure for BENCHMARKS.md, independent of criterion's report format.
    for (name, topic) in [("memoized", "memo"), ("unmemoized", "plain")] {
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(reg.decide(topic, p, 0, &recs).unwrap());
        }
        let ns = t.elapsed().as_nanos() as f64 / (rounds * BATCH) as f64;
        println!("tenant pattern, {name}: {ns:.1} ns/record amortised ({BATCH}-record batches, {TENANTS} tenants)");
    }
}

criterion_group!(benches, memo);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
