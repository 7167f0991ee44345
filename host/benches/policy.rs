//! Policy benchmarks: cost per record of deciding a 100-record batch of 1 KiB records, and the
//! time from a module file change to the new version serving.
//!
//! Run: `cargo bench -p kapsule --bench policy`. Policies are built from source first.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use kapsule::kafka::records::{Record, RecordHeader};
use kapsule::plan::TopicPlan;
use kapsule::policy::config::{BindingConfig, DecryptFailure, PolicyConfig};
use kapsule::policy::rules::TopicSelector;
use kapsule::policy::PolicyRegistry;
use kapsule_test_fixtures::policy_artifacts;

const BATCH: usize = 100;

fn json_record(i: usize) -> Record {
    // ~1 KiB JSON with two PII fields, one nested.
    let filler = "x".repeat(900);
    let v = format!(
        r#"{{"id":{i},"email":"user{i}@example.com","profile":{{"phone":"+1-555-{i:04}","city":"Lyon"}},"notes":"{filler}"}}"#
    );
    Record {
        attributes: 0,
        timestamp_delta: i as i64,
        offset_delta: i as i32,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(v)),
        headers: vec![
            RecordHeader {
                key: Bytes::from_static(b"tenant"),
                value: Some(Bytes::from(format!("t{}", i % 5))),
            },
            RecordHeader {
                key: Bytes::from_static(b"trace"),
                value: Some(Bytes::from_static(b"abc")),
            },
        ],
    }
}

fn binding(module: &Path, topics: &str, config: &str, allowed: &str) -> BindingConfig {
    BindingConfig {
        topics: TopicSelector::from_plain(topics),
        module: module.to_path_buf(),
        config: config.into(),
        allowed_key_ids: vec![allowed.into()],
        on_decrypt_failure: DecryptFailure::Error,
        require_encrypted: false,
        accept_pre_encrypted: false,
    }
}

fn registry() -> PolicyRegistry {
    let a = policy_artifacts().expect("the guest components");
    let mut c = PolicyConfig {
        bindings: vec![
            binding(&a.path("encrypt-all"), "all", "kek-${topic}", "kek-*"),
            binding(&a.path("pii-fields"), "pii", "", "pii-*"),
            binding(&a.path("tenant-keys"), "tenants", "", "tenant-*"),
        ],
        module_cache_dir: Some(std::env::temp_dir().join("kapsule-policy-bench-cache")),
        ..PolicyConfig::default()
    };
    c.rules = serde_norway::from_str(r#"[{topics: "ruled", key_id: "kek-${topic}"}]"#).unwrap();
    c.limits.call_timeout_ms = 1000;
    PolicyRegistry::new(&c).expect("registry")
}

fn decide(c: &mut Criterion) {
    let reg = registry();
    let recs: Vec<Record> = (0..BATCH).map(json_record).collect();
    let mut g = c.benchmark_group("decide_batch_100x1KiB");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, topic) in [
        ("rules_encrypt_all", "ruled"),
        ("wasm_encrypt_all_cached_plan", "all"),
        ("wasm_pii_fields_per_record", "pii"),
        ("wasm_tenant_keys_headers_per_record", "tenants"),
    ] {
        // Warm the plan cache and the instance pool.
        let d = reg.decide(topic, None, 0, &recs).expect("decide");
        assert_eq!(d.len(), BATCH);
        g.bench_function(name, |b| {
            b.iter(|| reg.decide(topic, None, 0, &recs).unwrap())
        });
    }
    g.finish();
}

fn copy(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// Time from replacing the module file to the new version answering, via `reload()` (warm compile
/// cache), via `reload()` with a cold cache, and via the file watcher.
fn hot_swap(c: &mut Criterion) {
    let a = policy_artifacts().expect("the guest components");
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("swap.wasm");
    copy(&a.path("passthrough"), &module);
    let mk = |cache: &Path| PolicyConfig {
        bindings: vec![binding(&module, "t", "", "kek-*")],
        module_cache_dir: Some(cache.to_path_buf()),
        ..PolicyConfig::default()
    };
    let warm_cache = dir.path().join("cache");
    let reg = PolicyRegistry::new(&mk(&warm_cache)).unwrap();
    let versions = [a.path("encrypt-all"), a.path("passthrough")];
    let mut g = c.benchmark_group("hot_swap");
    g.sample_size(10);
    g.bench_function("file_change_to_serving_reload_warm_cache", |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                copy(&versions[i % 2], &module);
                let t = Instant::now();
                reg.reload();
                let _ = reg.topic_plan("t", None).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("file_change_to_serving_reload_cold_cache", |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                let cold = dir.path().join(format!("cold-{i}"));
                copy(&versions[i % 2], &module);
                let t = Instant::now();
                let r = PolicyRegistry::new(&mk(&cold)).unwrap();
                let _ = r.topic_plan("t", None).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();

    // Through the watcher (includes the 150 ms debounce), measured directly.
    reg.watch().unwrap();
    let mut samples = Vec::new();
    for i in 0..6 {
        let want_encrypt = i % 2 == 0;
        let src = if want_encrypt {
            &versions[0]
        } else {
            &versions[1]
        };
        copy(src, &module);
        let t = Instant::now();
        loop {
            let p = reg.topic_plan("t", None).unwrap();
            if matches!(p, TopicPlan::EncryptAll(_)) == want_encrypt {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "watcher did not reload"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "hot_swap/file_change_to_serving_via_watcher: median {:?} (min {:?}, max {:?}, n={})",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
        samples.len()
    );
}

criterion_group!(benches, decide, hot_swap);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
