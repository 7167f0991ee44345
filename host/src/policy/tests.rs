//! In-process tests of the policy registry and the Wasm runtime, with every policy built from
//! source by the dev-dependency `kapsule-test-fixtures`. No broker needed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kapsule_test_fixtures::{build_guest, policy_artifacts, Lang, PolicyArtifacts};

use super::config::{BindingConfig, DecryptFailure, LimitsConfig, PolicyConfig};
use super::rules::TopicSelector;
use super::*;
use crate::kafka::records::RecordHeader;
use crate::plan::{EncryptionPlan, Needs, RevealParts, ValuePart};

fn artifacts() -> PolicyArtifacts {
    policy_artifacts().expect("the guest components kapsule-test-fixtures built")
}

/// Shared across test runs so each module is compiled by wasmtime once.
fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("kapsule-policy-test-cache")
}

fn binding(module: PathBuf, topics: &str, config: &str, allowed: &[&str]) -> BindingConfig {
    BindingConfig {
        topics: TopicSelector::from_plain(topics),
        module,
        config: config.into(),
        allowed_key_ids: allowed.iter().map(|s| s.to_string()).collect(),
        on_decrypt_failure: DecryptFailure::Error,
        require_encrypted: false,
        accept_pre_encrypted: false,
    }
}

/// Limits generous enough for a loaded 2-core CI machine, except where a test says otherwise.
fn relaxed_limits() -> LimitsConfig {
    LimitsConfig {
        call_timeout_ms: 2000,
        ..LimitsConfig::default()
    }
}

/// A registry of `bindings` under [`relaxed_limits`].
fn relaxed_registry(bindings: Vec<BindingConfig>) -> PolicyRegistry {
    PolicyRegistry::new(&config(bindings, relaxed_limits())).unwrap()
}

/// A registry of one binding (see [`binding`]) under [`relaxed_limits`].
fn one_binding(module: PathBuf, topics: &str, config: &str, allowed: &[&str]) -> PolicyRegistry {
    relaxed_registry(vec![binding(module, topics, config, allowed)])
}

/// A registry of one binding of the `hostile-misbehave` module in `mode` on every topic, allowed
/// every `kek-*` key, under [`relaxed_limits`].
fn misbehaving_everywhere(mode: &str) -> PolicyRegistry {
    one_binding(artifacts().path("hostile-misbehave"), "*", mode, &["kek-*"])
}

/// The plan of a policy that decides per record from headers only.
fn headers_only_plan() -> TopicPlan {
    TopicPlan::PerRecord(Needs {
        key: false,
        value: false,
        headers: true,
    })
}

fn config(bindings: Vec<BindingConfig>, limits: LimitsConfig) -> PolicyConfig {
    PolicyConfig {
        bindings,
        limits,
        module_cache_dir: Some(cache_dir()),
        ..PolicyConfig::default()
    }
}

fn record(value: &str, headers: &[(&str, &str)]) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: 5,
        offset_delta: 0,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
            })
            .collect(),
    }
}

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| record(&format!("{{\"n\":{i}}}"), &[]))
        .collect()
}

fn whole(key: &str) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: key.into(),
        value: ValuePart::Whole,
        record_key: false,
        headers: vec![],
    })
}

#[test]
fn rules_only_registry_needs_no_wasm() {
    let c: PolicyConfig = serde_norway::from_str(
        r#"
unmatched_topics: reject
rules:
  - {topics: "orders*", key_id: "kek-${topic}", record_key: true, on_decrypt_failure: skip}
  - {topics: {prefix: "logs."}, key_id: unused, value: none}
"#,
    )
    .unwrap();
    let reg = PolicyRegistry::new(&c).unwrap();
    assert!(reg.inner.runtime.is_none());
    match reg.topic_plan("orders.eu", None).unwrap() {
        TopicPlan::EncryptAll(p) => {
            assert_eq!(p.key_id, "kek-orders.eu");
            assert!(p.record_key);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reg.topic_plan("logs.app", None).unwrap(),
        TopicPlan::PassAll
    );
    assert!(
        matches!(reg.topic_plan("other", None).unwrap(), TopicPlan::RejectAll(m) if m.contains("other"))
    );
    let d = reg.decide("orders", None, 0, &records(3)).unwrap();
    assert_eq!(d.len(), 3);
    assert!(matches!(&d[0], RecordDecision::Encrypt(p) if p.key_id == "kek-orders"));
    assert_eq!(
        reg.decrypt_settings("orders").on_decrypt_failure,
        DecryptFailure::Skip
    );
    assert_eq!(reg.decrypt_settings("nothing"), DecryptSettings::default());
    assert!(reg.status().bindings.is_empty());
}

#[test]
fn bindings_come_before_rules_and_plans_are_cached() {
    let a = artifacts();
    let mut c = config(
        vec![binding(
            a.path("encrypt-all"),
            "tenant-*",
            "kek-${topic}+key",
            &["kek-${topic}"],
        )],
        relaxed_limits(),
    );
    c.rules = serde_norway::from_str(r#"[{topics: "*", key_id: "rule-key"}]"#).unwrap();
    let reg = PolicyRegistry::new(&c).unwrap();
    assert_eq!(reg.cached_topic_plan("tenant-a", None), None);
    let p = reg.topic_plan("tenant-a", None).unwrap();
    assert_eq!(
        p,
        TopicPlan::encrypt_all(EncryptionPlan {
            key_id: "kek-tenant-a".into(),
            value: ValuePart::Whole,
            record_key: true,
            headers: vec![],
        })
    );
    assert_eq!(reg.cached_topic_plan("tenant-a", None), Some(p.clone()));
    // Cached: the guest is not called again.
    reg.topic_plan("tenant-a", None).unwrap();
    let d = reg.decide("tenant-a", None, 0, &records(4)).unwrap();
    assert_eq!(
        d,
        vec![
            RecordDecision::Encrypt(match p {
                TopicPlan::EncryptAll(e) => e,
                _ => unreachable!(),
            });
            4
        ]
    );
    assert_eq!(reg.status().bindings[0].calls, 1);
    // The rule catches the rest.
    assert!(
        matches!(reg.topic_plan("other", None).unwrap(), TopicPlan::EncryptAll(e) if e.key_id == "rule-key")
    );
}

#[test]
fn tenant_keys_decides_per_record_from_headers() {
    let a = artifacts();
    let reg = one_binding(a.path("tenant-keys"), "events", "", &["tenant-*"]);
    assert_eq!(reg.topic_plan("events", None).unwrap(), headers_only_plan());
    let recs = vec![
        record("a", &[("tenant", "acme")]),
        record("b", &[]),
        record("c", &[("x", "y"), ("tenant", "bad tenant!")]),
        record("d", &[("tenant", "globex")]),
    ];
    let d = reg.decide("events", None, 1000, &recs).unwrap();
    assert_eq!(d[0], whole("tenant-acme"));
    assert!(matches!(&d[1], RecordDecision::Reject(m) if m.contains("no `tenant` header")));
    assert!(matches!(&d[2], RecordDecision::Reject(m) if m.contains("not a valid tenant")));
    assert_eq!(d[3], whole("tenant-globex"));
    assert_eq!(reg.decide("events", None, 0, &[]).unwrap(), vec![]);
}

#[test]
fn pii_fields_finds_nested_fields_and_fails_closed_on_non_json() {
    let a = artifacts();
    let reg = one_binding(
        a.path("pii-fields"),
        "users",
        r#"{"key_id": "pii-${topic}", "fields": ["email", "ssn", "a/b"]}"#,
        &["pii-*"],
    );
    let recs = vec![
        record(
            r#"{"name":"x","Email":"e@x","kids":[{"ssn":"1"}],"a/b":1}"#,
            &[],
        ),
        record(r#"{"name":"x"}"#, &[]),
        record("not json", &[]),
    ];
    let d = reg.decide("users", None, 0, &recs).unwrap();
    match &d[0] {
        RecordDecision::Encrypt(p) => {
            assert_eq!(p.key_id, "pii-users");
            let ValuePart::JsonFields(f) = &p.value else {
                panic!("{p:?}")
            };
            let mut f = f.clone();
            f.sort();
            assert_eq!(f, vec!["/Email", "/a~1b", "/kids/0/ssn"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d[1], RecordDecision::Pass);
    assert_eq!(d[2], whole("pii-users"));
}

/// A registry with one healthy binding (`good`) and one hostile binding (`bad`).
fn with_hostile(mode: &str, limits: LimitsConfig) -> PolicyRegistry {
    let a = artifacts();
    let c = config(
        vec![
            binding(a.path("hostile-misbehave"), "bad", mode, &["kek-ok"]),
            binding(a.path("tenant-keys"), "good", "", &["tenant-*"]),
        ],
        limits,
    );
    PolicyRegistry::new(&c).unwrap()
}

/// The message of `e`, which must be a trap.
fn trap_message(e: PolicyError) -> String {
    match e {
        PolicyError::Trap { message, .. } => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

fn good_still_serves(reg: &PolicyRegistry) {
    let d = reg
        .decide("good", None, 0, &[record("v", &[("tenant", "acme")])])
        .unwrap();
    assert_eq!(d, vec![whole("tenant-acme")]);
}

#[test]
fn infinite_loop_hits_the_deadline_and_the_instance_is_rebuilt() {
    let reg = with_hostile("loop-decide", LimitsConfig::default());
    // plan is fine in this mode.
    reg.topic_plan("bad", None).unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let e = reg.decide("bad", None, 0, &records(2)).unwrap_err();
        assert!(
            matches!(e, PolicyError::Deadline { timeout_ms: 10, .. }),
            "{e:?}"
        );
        assert!(!e.is_retriable());
        // Deadline plus scheduling slack on a busy machine; far from "forever".
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    good_still_serves(&reg);
    let s = &reg.status().bindings[0];
    assert_eq!(s.deadlines, 2);
    assert_eq!(s.instances_discarded, 2);
    assert!(s.last_error.as_deref().unwrap().contains("deadline"));
}

#[test]
fn infinite_loop_in_plan_is_contained_too() {
    let reg = with_hostile("loop-plan", LimitsConfig::default());
    let e = reg.topic_plan("bad", None).unwrap_err();
    assert!(matches!(e, PolicyError::Deadline { .. }), "{e:?}");
    assert_eq!(
        reg.cached_topic_plan("bad", None),
        None,
        "failures are not cached"
    );
    good_still_serves(&reg);
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let reg = with_hostile(
        "oom-decide",
        LimitsConfig {
            memory_mib: 16,
            ..relaxed_limits()
        },
    );
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(
        matches!(e, PolicyError::MemoryExhausted { limit_mib: 16, .. }),
        "{e:?}"
    );
    good_still_serves(&reg);
    // A fresh instance is built and fails the same way (not "unavailable").
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(matches!(e, PolicyError::MemoryExhausted { .. }), "{e:?}");
    assert_eq!(reg.status().bindings[0].memory_exhausted, 2);
}

#[test]
fn panic_traps_and_stack_overflow_traps() {
    let reg = with_hostile("trap-decide", relaxed_limits());
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(matches!(e, PolicyError::Trap { .. }), "{e:?}");
    good_still_serves(&reg);

    let reg = with_hostile("stack-overflow", relaxed_limits());
    let message = trap_message(reg.decide("bad", None, 0, &records(1)).unwrap_err());
    assert!(message.contains("call stack exhausted"), "{message}");
    good_still_serves(&reg);
}

#[test]
fn wrong_decision_count_bad_pointer_and_foreign_key_are_violations() {
    let reg = with_hostile("wrong-count", relaxed_limits());
    let e = reg.decide("bad", None, 0, &records(3)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("2 decisions for 3 records")),
        "{e:?}"
    );
    let reg = with_hostile("bad-pointer", relaxed_limits());
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("must start with `/`")),
        "{e:?}"
    );
    let reg = with_hostile("bad-key", relaxed_limits());
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::KeyNotAllowed { key_id, topic, .. } if key_id == "kek-someone-else" && topic == "bad"),
        "{e:?}"
    );
    good_still_serves(&reg);
    let s = &reg.status().bindings[0];
    assert_eq!((s.violations, s.instances_discarded), (1, 0));
}

#[test]
fn log_spam_is_rate_limited_and_truncated() {
    let reg = with_hostile(
        "log-spam",
        LimitsConfig {
            call_timeout_ms: 20_000,
            log_messages_per_second: 10,
            ..LimitsConfig::default()
        },
    );
    let d = reg.decide("bad", None, 0, &records(2)).unwrap();
    assert_eq!(d, vec![whole("kek-ok"); 2]);
    let s = &reg.status().bindings[0];
    assert!(s.log_emitted <= 12, "{s:?}");
    assert!(s.log_dropped >= 1988, "{s:?}");
}

#[test]
fn wasi_gives_no_files_env_clock_or_network() {
    let reg = with_hostile("snoop", relaxed_limits());
    match reg.topic_plan("bad", None).unwrap() {
        TopicPlan::RejectAll(report) => assert_eq!(
            report,
            "file=denied dir=denied env=0 home=unset time=0 elapsed=0"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn modules_failing_init_or_linking_are_refused_at_start() {
    let a = artifacts();
    for (module, cfg, needle) in [
        (
            a.path("hostile-misbehave"),
            "init-error",
            "init refused its config: hostile policy refuses its config",
        ),
        (a.path("hostile-misbehave"), "trap-init", "trapped"),
        (
            a.path("hostile-bad-import"),
            "",
            "imports something the sandbox does not provide",
        ),
    ] {
        let c = config(vec![binding(module, "t", cfg, &[])], relaxed_limits());
        let e = format!("{:#}", PolicyRegistry::new(&c).unwrap_err());
        assert!(e.contains(needle), "{cfg}: {e}");
        assert!(e.contains("policy.bindings[0].module"), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let c = config(vec![binding(junk, "t", "", &[])], relaxed_limits());
    let e = format!("{:#}", PolicyRegistry::new(&c).unwrap_err());
    assert!(e.contains("not a valid WebAssembly component"), "{e}");
}

#[test]
fn concurrent_calls_use_several_instances() {
    let a = artifacts();
    let c = config(
        // Unmemoized, so every batch reaches the guest.
        vec![binding(
            a.path("tenant-keys"),
            "events",
            r#"{"memo": false}"#,
            &["tenant-*"],
        )],
        LimitsConfig {
            max_instances: 4,
            ..relaxed_limits()
        },
    );
    let reg = PolicyRegistry::new(&c).unwrap();
    let recs: Vec<Record> = (0..100)
        .map(|i| record("v", &[("tenant", &format!("t{}", i % 7))]))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20 {
                    let d = reg.decide("events", None, 0, &recs).unwrap();
                    assert_eq!(d.len(), 100);
                    assert_eq!(d[3], whole("tenant-t3"));
                }
            });
        }
    });
    let s = &reg.status().bindings[0];
    assert!(s.instances >= 1 && s.instances <= 4, "{s:?}");
    // 160 decide calls plus the plan call(s): threads racing on the cold plan cache may each
    // ask once.
    assert!((161..=168).contains(&s.calls), "{s:?}");
    assert!(s.p99_call_us.is_some());
}

fn copy(src: &Path, dst: &Path) {
    // Write then rename, as deploy tools do, so readers never see a half-written file.
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[test]
fn reload_swaps_good_versions_and_refuses_bad_ones() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    copy(&a.path("encrypt-all"), &module);
    let reg = one_binding(module.clone(), "t", "", &["kek-*"]);
    assert!(matches!(
        reg.topic_plan("t", None).unwrap(),
        TopicPlan::EncryptAll(_)
    ));
    assert_eq!(reg.reload()[0].1, ReloadOutcome::Unchanged);

    copy(&a.path("passthrough"), &module);
    let out = reg.reload();
    assert!(
        matches!(out[0].1, ReloadOutcome::Reloaded { .. }),
        "{out:?}"
    );
    assert_eq!(
        reg.topic_plan("t", None).unwrap(),
        TopicPlan::PassAll,
        "plan cache is per version"
    );

    // A module that is not a component is refused; the previous version keeps serving.
    std::fs::write(dir.path().join("junk"), b"garbage").unwrap();
    copy(&dir.path().join("junk"), &module);
    let out = reg.reload();
    assert!(
        matches!(&out[0].1, ReloadOutcome::Refused { error } if error.contains("not a valid WebAssembly component")),
        "{out:?}"
    );
    assert_eq!(reg.topic_plan("t", None).unwrap(), TopicPlan::PassAll);
    let s = &reg.status().bindings[0];
    assert_eq!((s.loads, s.refusals), (2, 1));
    assert!(s.last_refusal.is_some());
    let json = serde_json::to_value(reg.status()).unwrap();
    assert_eq!(json["bindings"][0]["refusals"], 1);
}

#[test]
fn init_failure_on_reload_keeps_the_old_version() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    // passthrough ignores its config; encrypt-all refuses this one in `init`.
    copy(&a.path("passthrough"), &module);
    let reg = one_binding(module.clone(), "t", "kek with space", &["kek-*"]);
    copy(&a.path("encrypt-all"), &module);
    let out = reg.reload();
    assert!(
        matches!(&out[0].1, ReloadOutcome::Refused { error } if error.contains("contains whitespace")),
        "{out:?}"
    );
    assert_eq!(reg.topic_plan("t", None).unwrap(), TopicPlan::PassAll);
}

#[test]
fn watcher_reloads_changed_modules() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    copy(&a.path("passthrough"), &module);
    let reg = one_binding(module.clone(), "t", "", &["kek-*"]);
    reg.watch().unwrap();
    assert_eq!(reg.topic_plan("t", None).unwrap(), TopicPlan::PassAll);
    let started = Instant::now();
    copy(&a.path("encrypt-all"), &module);
    loop {
        if matches!(reg.topic_plan("t", None).unwrap(), TopicPlan::EncryptAll(_)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "watcher did not reload within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn compiled_modules_are_cached_on_disk_by_content_hash() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let c = PolicyConfig {
        module_cache_dir: Some(dir.path().join("cache")),
        ..config(
            vec![binding(a.path("passthrough"), "t", "", &[])],
            relaxed_limits(),
        )
    };
    let reg = PolicyRegistry::new(&c).unwrap();
    let hash = reg.status().bindings[0].content_hash.clone();
    let entries = cache_entries(&dir.path().join("cache"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with(&hash) && entries[0].ends_with(".cwasm"));
    // A corrupted entry is discarded and rebuilt, not trusted.
    let entry = dir.path().join("cache").join(&entries[0]);
    std::fs::write(&entry, b"corrupt").unwrap();
    let reg2 = PolicyRegistry::new(&c).unwrap();
    assert_eq!(reg2.topic_plan("t", None).unwrap(), TopicPlan::PassAll);
    assert!(std::fs::metadata(&entry).unwrap().len() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_runs_guest_calls_off_the_runtime() {
    let a = artifacts();
    let c = config(
        vec![binding(a.path("tenant-keys"), "events", "", &["tenant-*"])],
        relaxed_limits(),
    );
    let reg = tokio::task::spawn_blocking(move || PolicyRegistry::new(&c).unwrap())
        .await
        .unwrap();
    let recs = vec![record("v", &[("tenant", "acme")])];
    let d = reg.decide_async("events", None, 0, &recs).await.unwrap();
    assert_eq!(d, vec![whole("tenant-acme")]);
    assert!(matches!(
        reg.topic_plan_async("events", None).await.unwrap(),
        TopicPlan::PerRecord(_)
    ));
}

#[test]
fn json_pointer_validation() {
    assert!(validate_json_pointer("/a/b~0~1").is_ok());
    assert!(validate_json_pointer("/").is_ok());
    assert!(validate_json_pointer("").is_err());
    assert!(validate_json_pointer("a").is_err());
    assert!(validate_json_pointer("/a~").is_err());
    assert!(validate_json_pointer("/a~2").is_err());
}

/// The C policy (policies/header-gate/c, built with wit-bindgen c + clang + wasm-component-ld)
/// runs under the same sandbox. Needs the toolchains from scripts/install-policy-toolchains.sh.
#[test]
fn c_policy_header_gate() {
    let module = build_guest(Lang::C, "header-gate").expect("the C header gate builds");
    let reg = one_binding(module, "gated.*", "kek-", &["kek-${topic}"]);
    assert_eq!(
        reg.topic_plan("gated.a", None).unwrap(),
        headers_only_plan()
    );
    let recs = vec![
        record("a", &[("classification", "public")]),
        record("b", &[("classification", "restricted")]),
        record("c", &[("pii", "x")]),
    ];
    let d = reg.decide("gated.a", None, 0, &recs).unwrap();
    assert_eq!(d[0], RecordDecision::Pass);
    assert!(matches!(&d[1], RecordDecision::Reject(m) if m.contains("restricted")));
    assert_eq!(
        d[2],
        RecordDecision::encrypt(EncryptionPlan {
            key_id: "kek-gated.a".into(),
            value: ValuePart::Whole,
            record_key: false,
            headers: vec!["pii".into()],
        })
    );
    // Many batches: the C allocator frees what it is given (no growth to the memory cap).
    let big: Vec<Record> = (0..500).map(|_| record("v", &[("pii", "x")])).collect();
    for _ in 0..200 {
        assert_eq!(reg.decide("gated.a", None, 0, &big).unwrap().len(), 500);
    }
    assert_eq!(reg.status().bindings[0].errors, 0);
}

/// Names of the compiled-module entries in a cache directory.
fn cache_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    v.sort();
    v
}

// ---- Sandbox hardening (issue 8 items 10-14, issue 11 items 2 and 6) ----

#[test]
fn sleeping_guest_is_stopped_at_once_not_after_the_sleep() {
    // Default 10 ms deadline; the guest sleeps 5 s.
    let reg = with_hostile("sleep-decide", LimitsConfig::default());
    reg.topic_plan("bad", None).unwrap();
    let started = Instant::now();
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "call held for {took:?}");
    let message = trap_message(e);
    assert!(message.contains("may not wait"), "{message}");
    good_still_serves(&reg);
}

#[test]
fn sleeping_forever_neither_hangs_nor_exhausts_the_pool() {
    let reg = with_hostile(
        "sleep-forever-decide",
        LimitsConfig {
            max_instances: 1,
            ..LimitsConfig::default()
        },
    );
    reg.topic_plan("bad", None).unwrap();
    let started = Instant::now();
    // With one instance, a call that never returned would make every later call wait 30 s.
    for _ in 0..3 {
        let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
        assert!(matches!(e, PolicyError::Trap { .. }), "{e:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    good_still_serves(&reg);
}

#[test]
fn sleeping_in_init_is_refused_at_once() {
    let a = artifacts();
    let c = config(
        vec![binding(a.path("hostile-misbehave"), "t", "sleep-init", &[])],
        relaxed_limits(),
    );
    let started = Instant::now();
    let e = format!("{:#}", PolicyRegistry::new(&c).unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("may not wait"), "{e}");
}

#[test]
fn reload_to_a_module_that_sleeps_in_init_is_refused_at_once() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("p.wasm");
    copy(&a.path("passthrough"), &module);
    let reg = one_binding(module.clone(), "t", "sleep-init", &[]);
    copy(&a.path("hostile-misbehave"), &module);
    let started = Instant::now();
    let out = reg.reload();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&out[0].1, ReloadOutcome::Refused { error } if error.contains("may not wait")),
        "{out:?}"
    );
}

#[test]
fn sockets_and_other_io_imports_trap_instead_of_reaching_out() {
    let reg = with_hostile("net", relaxed_limits());
    let message = trap_message(reg.topic_plan("bad", None).unwrap_err());
    assert!(message.contains("wasi:sockets"), "{message}");
    good_still_serves(&reg);
}

/// Printing from `init` on an async runtime's worker thread crashed start-up ("Cannot start a
/// runtime from within a runtime"); now output goes to the policy log wherever `new` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_in_init_goes_to_the_policy_log_even_on_a_runtime_thread() {
    let a = artifacts();
    let c = config(
        vec![binding(
            a.path("hostile-misbehave"),
            "bad",
            "print-init",
            &["kek-ok"],
        )],
        relaxed_limits(),
    );
    // Deliberately on the runtime's worker thread, as the proxy's start-up was.
    let reg = PolicyRegistry::new(&c).unwrap();
    let d = reg.decide_async("bad", None, 0, &records(2)).await.unwrap();
    assert_eq!(d, vec![whole("kek-ok"), whole("kek-ok")]);
    // Reload (also from the runtime thread) initializes a new version that prints too.
    let s = &reg.status().bindings[0];
    // init: 2 lines (stdout, stderr); plan: 1; decide: 1.
    assert!(s.log_emitted >= 4, "{s:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn printing_in_init_works_on_a_current_thread_runtime_too() {
    let a = artifacts();
    let reg = one_binding(
        a.path("hostile-misbehave"),
        "bad",
        "print-init",
        &["kek-ok"],
    );
    assert!(reg.status().bindings[0].log_emitted >= 2);
}

#[test]
fn a_panic_message_in_init_is_logged_and_the_module_refused() {
    let a = artifacts();
    let c = config(
        vec![binding(a.path("hostile-misbehave"), "t", "trap-init", &[])],
        relaxed_limits(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let e = format!("{:#}", PolicyRegistry::new(&c).unwrap_err());
    assert!(e.contains("trapped"), "{e}");
}

#[test]
fn answers_over_the_lift_budget_are_refused_as_malformed() {
    let limits = LimitsConfig {
        answer_max_kib: 1024,
        ..relaxed_limits()
    };
    // plan: one 8 MiB reject message.
    let reg = with_hostile("big-plan", limits.clone());
    let e = reg.topic_plan("bad", None).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("answer_max_kib")),
        "{e:?}"
    );
    good_still_serves(&reg);
    // decide: 1 MiB per record, three records.
    let reg = with_hostile("big-answer", limits);
    let e = reg.decide("bad", None, 0, &records(3)).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("answer_max_kib")),
        "{e:?}"
    );
    // Within the budget the same policy is served.
    let reg = with_hostile("big-answer", relaxed_limits());
    let d = reg.decide("bad", None, 0, &records(2)).unwrap();
    assert!(matches!(&d[0], RecordDecision::Reject(m) if m.len() <= 1100));
}

#[test]
fn a_handled_refused_allocation_does_not_turn_a_later_trap_into_memory_exhaustion() {
    let reg = with_hostile("grow-then-trap", relaxed_limits());
    // First call: the guest's allocation is refused, it copes and answers.
    assert_eq!(
        reg.decide("bad", None, 0, &records(1)).unwrap(),
        vec![whole("kek-ok")]
    );
    // Second call on the same instance: a plain panic.
    let e = reg.decide("bad", None, 0, &records(1)).unwrap_err();
    assert!(matches!(e, PolicyError::Trap { .. }), "{e:?}");
}

#[test]
fn stack_kib_that_the_engine_cannot_honour_is_refused_by_validation() {
    for (kib, ok) in [
        (64, true),
        (1024, true),
        (1025, false),
        (2040, false),
        (2048, false),
    ] {
        let c = PolicyConfig {
            limits: LimitsConfig {
                stack_kib: kib,
                ..LimitsConfig::default()
            },
            ..PolicyConfig::default()
        };
        let mut problems = Vec::new();
        c.validate("policy", &mut problems);
        assert_eq!(problems.is_empty(), ok, "{kib}: {problems:?}");
    }
}

#[test]
fn deep_recursion_at_the_largest_stack_traps_on_a_2_mib_thread() {
    // Guest calls run on Tokio blocking threads (2 MiB stacks); the largest accepted Wasm stack
    // must trap there, not overflow the host thread (which aborts the process).
    let limits = LimitsConfig {
        stack_kib: config::MAX_STACK_KIB,
        ..relaxed_limits()
    };
    let reg = with_hostile("stack-overflow", limits);
    let e = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || reg.decide("bad", None, 0, &records(1)))
        .unwrap()
        .join()
        .expect("the host thread survives")
        .unwrap_err();
    assert!(matches!(e, PolicyError::Trap { .. }), "{e:?}");
}

#[test]
fn call_budget_grows_with_the_batch_and_still_stops_a_loop() {
    let limits = LimitsConfig {
        call_timeout_ms: 10,
        call_timeout_per_record_us: 1000,
        call_timeout_max_ms: 5000,
        ..LimitsConfig::default()
    };
    let l = wasm::Limits::from(&limits);
    assert_eq!(l.decide_budget(0), Duration::from_millis(10));
    assert_eq!(l.decide_budget(200), Duration::from_millis(210));
    assert_eq!(l.decide_budget(1_000_000), Duration::from_millis(5000));
    let reg = with_hostile("loop-decide", limits);
    reg.topic_plan("bad", None).unwrap();
    let started = Instant::now();
    let e = reg.decide("bad", None, 0, &records(200)).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            e,
            PolicyError::Deadline {
                timeout_ms: 210,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Plants `from`'s cache entry (or bytes) under the entry name of `victim` in `dir`.
fn plant(dir: &Path, victim_hash: &str, bytes: &[u8]) -> PathBuf {
    let name = cache_entries(dir)
        .into_iter()
        .find(|n| n.starts_with(victim_hash))
        .expect("victim entry exists");
    let path = dir.join(name);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn tampered_or_foreign_cache_entries_are_recompiled_never_loaded() {
    let a = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let pass_bytes = std::fs::read(a.path("passthrough")).unwrap();
    let enc_bytes = std::fs::read(a.path("encrypt-all")).unwrap();
    let rt = WasmRuntime::new(&dir, wasm::Limits::default()).unwrap();
    let (_, pass_hash, o) = rt.compile_traced(&pass_bytes).unwrap();
    assert_eq!(o, wasm::CacheOutcome::Compiled);
    let (_, enc_hash, _) = rt.compile_traced(&enc_bytes).unwrap();
    assert_eq!(
        rt.compile_traced(&enc_bytes).unwrap().2,
        wasm::CacheOutcome::Hit
    );

    // 1. An authentic entry of another module renamed to encrypt-all's name: its tag binds the
    //    name, so it is refused, and encrypt-all is compiled from its own bytes.
    let pass_entry = dir.join(
        cache_entries(&dir)
            .into_iter()
            .find(|n| n.starts_with(&pass_hash))
            .unwrap(),
    );
    let foreign = std::fs::read(&pass_entry).unwrap();
    let victim = plant(&dir, &enc_hash, &foreign);
    let (_, _, o) = rt.compile_traced(&enc_bytes).unwrap();
    assert!(
        matches!(&o, wasm::CacheOutcome::Refused(r) if r.contains("does not verify")),
        "{o:?}"
    );
    assert_ne!(std::fs::read(&victim).unwrap(), foreign, "entry rewritten");

    // 2. A flipped byte in the artifact.
    let mut tampered = std::fs::read(&victim).unwrap();
    let last = tampered.len() - 100;
    tampered[last] ^= 0xff;
    plant(&dir, &enc_hash, &tampered);
    let (_, _, o) = rt.compile_traced(&enc_bytes).unwrap();
    assert!(matches!(o, wasm::CacheOutcome::Refused(_)), "{o:?}");

    // 3. A raw wasmtime artifact (what the old cache wrote, or an attacker's native code).
    let raw = wasmtime::component::Component::new(rt.engine(), &pass_bytes)
        .unwrap()
        .serialize()
        .unwrap();
    plant(&dir, &enc_hash, &raw);
    let (_, _, o) = rt.compile_traced(&enc_bytes).unwrap();
    assert!(
        matches!(&o, wasm::CacheOutcome::Refused(r) if r.contains("bad header")),
        "{o:?}"
    );

    // 4. An entry written by another install (different secret).
    let other_dir = tmp.path().join("other");
    let other = WasmRuntime::new(&other_dir, wasm::Limits::default()).unwrap();
    other.compile_traced(&pass_bytes).unwrap();
    let other_entry = std::fs::read(other_dir.join(&cache_entries(&other_dir)[0])).unwrap();
    plant(&dir, &pass_hash, &other_entry);
    let (_, _, o) = rt.compile_traced(&pass_bytes).unwrap();
    assert!(matches!(o, wasm::CacheOutcome::Refused(_)), "{o:?}");

    // 5. A symlink under an entry's name is removed, not followed.
    let target = tmp.path().join("elsewhere.cwasm");
    std::fs::write(&target, &foreign).unwrap();
    let name = cache_entries(&dir)
        .into_iter()
        .find(|n| n.starts_with(&enc_hash))
        .unwrap();
    std::fs::remove_file(dir.join(&name)).unwrap();
    std::os::unix::fs::symlink(&target, dir.join(&name)).unwrap();
    let (_, _, o) = rt.compile_traced(&enc_bytes).unwrap();
    assert!(matches!(o, wasm::CacheOutcome::Refused(_)), "{o:?}");
    assert!(!std::fs::symlink_metadata(dir.join(&name))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        foreign,
        "symlink target untouched"
    );

    // End to end: a registry over the poisoned directory serves encrypt-all's own plan.
    plant(&dir, &enc_hash, &foreign);
    let c = PolicyConfig {
        module_cache_dir: Some(dir.clone()),
        ..config(
            vec![binding(a.path("encrypt-all"), "t", "", &["*"])],
            relaxed_limits(),
        )
    };
    let reg = PolicyRegistry::new(&c).unwrap();
    assert!(
        matches!(reg.topic_plan("t", None).unwrap(), TopicPlan::EncryptAll(_)),
        "the planted passthrough code must not run"
    );
}

#[test]
fn topics_of_a_compiling_module_get_a_retriable_error_until_it_is_ready() {
    let a = artifacts();
    // An empty cache: the module really compiles, which takes far longer than the first call.
    let tmp = tempfile::tempdir().unwrap();
    let c = PolicyConfig {
        module_cache_dir: Some(tmp.path().join("cache")),
        ..config(
            vec![binding(a.path("tenant-keys"), "events", "", &["tenant-*"])],
            relaxed_limits(),
        )
    };
    let started = Instant::now();
    let reg = PolicyRegistry::start(&c).unwrap();
    let returned_after = started.elapsed();
    let recs = vec![record("v", &[("tenant", "acme")])];
    let e = reg.decide("events", None, 0, &recs).unwrap_err();
    assert!(matches!(e, PolicyError::Loading { .. }), "{e:?}");
    assert!(e.is_retriable());
    assert_eq!(
        crate::error::ProxyError::from(e).kafka_error(),
        kafka_protocol::error::ResponseError::RequestTimedOut
    );
    assert!(matches!(
        reg.topic_plan("events", None),
        Err(PolicyError::Loading { .. })
    ));
    assert_eq!(reg.cached_topic_plan("events", None), None);
    assert_eq!(reg.status().bindings[0].state, "loading");
    assert!(reg.wait_ready(Some(Duration::from_secs(120))));
    assert!(
        returned_after * 2 < started.elapsed(),
        "start returned after {returned_after:?}, ready after {:?}",
        started.elapsed()
    );
    assert_eq!(
        reg.decide("events", None, 0, &recs).unwrap(),
        vec![whole("tenant-acme")]
    );
    assert_eq!(reg.status().bindings[0].state, "ready");
}

#[test]
fn a_module_failing_to_load_in_the_background_refuses_its_topics_until_reloaded() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("p.wasm");
    copy(&a.path("hostile-misbehave"), &module);
    let c = config(
        vec![binding(module.clone(), "t", "trap-init", &[])],
        relaxed_limits(),
    );
    let reg = PolicyRegistry::start(&c).unwrap();
    assert!(reg.wait_ready(Some(Duration::from_secs(120))));
    let e = reg.topic_plan("t", None).unwrap_err();
    assert!(matches!(e, PolicyError::Unavailable { .. }), "{e:?}");
    assert!(!e.is_retriable());
    assert_eq!(reg.status().bindings[0].state, "failed");
    assert_eq!(reg.load_failures().len(), 1);
    // A valid module put in place is loaded by a reload and serves.
    copy(&a.path("passthrough"), &module);
    assert!(matches!(reg.reload()[0].1, ReloadOutcome::Reloaded { .. }));
    assert_eq!(reg.topic_plan("t", None).unwrap(), TopicPlan::PassAll);
    assert_eq!(reg.status().bindings[0].state, "ready");
}

#[test]
fn a_current_sdk_module_loads_and_reports_contract_0_3() {
    let a = artifacts();
    let reg = one_binding(a.path("encrypt-all"), "t", "{}", &["*"]);
    assert!(matches!(
        reg.topic_plan("t", None).unwrap(),
        TopicPlan::EncryptAll(_)
    ));
    assert_eq!(reg.status().bindings[0].wit_version, "0.3.0");
}

/// A module built against 0.2.0 (before schema support) loads next to 0.3 ones, is shown the
/// 0.2 batch layout, keeps its memo on one header and its per-principal reveal.
#[test]
fn v0_2_module_still_loads_and_decides_as_before() {
    let a = artifacts();
    let reg = relaxed_registry(vec![
        binding(a.path("legacy-v0_1"), "per-record.old", "", &["legacy-*"]),
        binding(a.path("legacy-v0_2"), "per-record.*", "", &["legacy-*"]),
        binding(a.path("legacy-v0_2"), "orders", "", &["kek-legacy"]),
    ]);
    let st = reg.status();
    assert_eq!(st.bindings[0].wit_version, "0.1.0");
    assert_eq!(st.bindings[1].wit_version, "0.2.0");
    match reg.topic_plan("orders", None).unwrap() {
        TopicPlan::EncryptAll(p) => assert_eq!(p.key_id, "kek-legacy"),
        other => panic!("{other:?}"),
    }
    reg.topic_plan("per-record.events", None).unwrap();
    assert_eq!(
        reg.memo_key("per-record.events", None),
        Some(MemoKey::Header("tenant".into()))
    );
    let recs = vec![
        record("a", &[("tenant", "acme")]),
        record("b", &[]),
        record("c", &[("tenant", "globex")]),
        record("d", &[("tenant", "acme")]),
    ];
    let expected = vec![
        whole("legacy-acme"),
        RecordDecision::Pass,
        whole("legacy-globex"),
        whole("legacy-acme"),
    ];
    assert_eq!(
        reg.decide("per-record.events", None, 0, &recs).unwrap(),
        expected
    );
    assert_eq!(
        reg.decide("per-record.old", None, 0, &recs).unwrap(),
        expected
    );
    assert_eq!(
        reg.reveal("orders", Some(&sasl("bob"))).unwrap(),
        Reveal::Ciphertext
    );
    assert_eq!(
        reg.reveal("orders", Some(&sasl("alice"))).unwrap(),
        Reveal::All
    );
}

fn schema_pii(tags: &[&str]) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: "kek-t".into(),
        value: ValuePart::SchemaFields(crate::plan::FieldSelection {
            fields: vec![],
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }),
        record_key: false,
        headers: vec![],
    })
}

/// The 0.3 example policy: schema fields by tag, whole values for one tenant, `class: public`
/// passes; its memo on two headers decides each (tenant, class) pair once and stays correct
/// under the audit.
#[test]
fn v0_3_schema_policy_decides_schema_fields_with_a_two_header_memo() {
    let a = artifacts();
    let reg = one_binding(
        a.path("schema-pii"),
        "*",
        r#"{"whole_value_tenants": ["x"]}"#,
        &["kek-*"],
    );
    assert_eq!(reg.status().bindings[0].wit_version, "0.3.0");
    reg.topic_plan("t", None).unwrap();
    assert_eq!(
        reg.memo_key("t", None),
        Some(MemoKey::Headers(vec!["tenant".into(), "class".into()]))
    );
    let recs = vec![
        record("1", &[("tenant", "x")]),
        record("2", &[("tenant", "x"), ("class", "public")]),
        record("3", &[("tenant", "y"), ("class", "public")]),
        record("4", &[("tenant", "y")]),
        record("5", &[("tenant", "y"), ("class", "internal")]),
        record("6", &[("class", "public"), ("tenant", "y")]),
        record("7", &[]),
    ];
    let expected = vec![
        whole("kek-t"),
        whole("kek-t"),
        RecordDecision::Pass,
        schema_pii(&["PII"]),
        schema_pii(&["PII"]),
        RecordDecision::Pass,
        schema_pii(&["PII"]),
    ];
    for _ in 0..3 {
        assert_eq!(reg.decide("t", None, 0, &recs).unwrap(), expected);
    }
    let s = &reg.status().bindings[0];
    assert!(!s.memo_disabled && s.memo_mismatches == 0, "{s:?}");
    // One value per distinct (tenant, class) pair: (x,-) (x,public) (y,public) (y,-)
    // (y,internal) (-,-).
    assert_eq!(s.memoized_values, 6, "{s:?}");
}

/// A memo on several headers is audited like one on a single header: a module whose decision
/// depends on more than the headers it names is caught and the memo turned off.
#[test]
fn a_lying_two_header_memo_is_caught_by_the_audit() {
    let reg = misbehaving_everywhere("lying-two-header-memo");
    let recs = vec![
        record("x", &[("tenant", "a"), ("classification", "c")]),
        record("y", &[("tenant", "a"), ("classification", "c")]),
        record("z", &[("tenant", "a"), ("classification", "d")]),
    ];
    let d = reg.decide("t", None, 0, &recs).unwrap();
    assert_eq!(d, vec![whole("kek-x"), whole("kek-y"), whole("kek-z")]);
    let s = &reg.status().bindings[0];
    assert!(s.memo_disabled && s.memo_mismatches == 1, "{s:?}");
    // Unaudited (what `policy check` compares), the memo alone answers `y` from `x`.
    let unaudited = misbehaving_everywhere("lying-two-header-memo");
    let d = unaudited
        .decide_using("t", None, 0, &recs, MemoUse::Unaudited)
        .unwrap();
    assert_eq!(d, vec![whole("kek-x"), whole("kek-x"), whole("kek-z")]);
}

#[test]
fn v0_1_module_still_loads_and_encrypts() {
    let a = artifacts();
    let reg = one_binding(a.path("legacy-v0_1"), "*", "", &["kek-legacy", "legacy-*"]);
    assert_eq!(reg.status().bindings[0].wit_version, "0.1.0");
    match reg.topic_plan("orders", None).unwrap() {
        TopicPlan::EncryptAll(p) => assert_eq!(p.key_id, "kek-legacy"),
        other => panic!("{other:?}"),
    }
    let recs = vec![
        record("a", &[("tenant", "acme")]),
        record("b", &[]),
        record("c", &[("tenant", "globex")]),
    ];
    let d = reg.decide("per-record.events", None, 0, &recs).unwrap();
    assert_eq!(
        d,
        vec![
            whole("legacy-acme"),
            RecordDecision::Pass,
            whole("legacy-globex")
        ]
    );
    // A 0.1 module has no `reveal`: every principal reads all.
    let alice = Principal::new("alice", crate::principal::AuthMechanism::SaslPlain);
    assert_eq!(reg.reveal("orders", Some(&alice)).unwrap(), Reveal::All);
    assert_eq!(reg.reveal("orders", None).unwrap(), Reveal::All);
}

fn sasl(name: &str) -> Principal {
    Principal::new(name, crate::principal::AuthMechanism::SaslScramSha256)
}

#[test]
fn plan_is_asked_and_cached_per_topic_and_principal() {
    let a = artifacts();
    let reg = one_binding(a.path("reveal-by-principal"), "*", "", &["kek-*"]);
    let (alice, bob) = (sasl("alice"), sasl("bob"));
    let key = |p: TopicPlan| match p {
        TopicPlan::EncryptAll(e) => e.key_id.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(key(reg.topic_plan("t", Some(&alice)).unwrap()), "kek-alice");
    assert_eq!(reg.cached_topic_plan("t", Some(&bob)), None);
    assert_eq!(key(reg.topic_plan("t", Some(&bob)).unwrap()), "kek-bob");
    assert!(matches!(
        reg.topic_plan("t", None).unwrap(),
        TopicPlan::RejectAll(m) if m.contains("authenticate")
    ));
    // Same name, other mechanism: another principal, asked again (same answer here).
    let alice_tls = Principal::new(
        "alice",
        crate::principal::AuthMechanism::TlsClientCertificate,
    );
    assert_eq!(reg.cached_topic_plan("t", Some(&alice_tls)), None);
    let calls = reg.status().bindings[0].calls;
    assert_eq!(
        key(reg.cached_topic_plan("t", Some(&alice)).unwrap()),
        "kek-alice"
    );
    assert_eq!(key(reg.topic_plan("t", Some(&alice)).unwrap()), "kek-alice");
    assert_eq!(
        reg.status().bindings[0].calls,
        calls,
        "served from the cache"
    );
    // decide repeats the principal's plan.
    assert_eq!(
        reg.decide("t", Some(&bob), 0, &records(2)).unwrap(),
        vec![whole_fields("kek-bob"), whole_fields("kek-bob")]
    );
}

fn whole_fields(key: &str) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: key.into(),
        value: ValuePart::JsonFields(vec!["/customer/email".into(), "/card".into()]),
        record_key: false,
        headers: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_sees_the_client_principal() {
    let reg = misbehaving_everywhere("echo-client");
    let carol = sasl("carol");
    assert_eq!(
        reg.decide_async("t", Some(&carol), 0, &records(2))
            .await
            .unwrap(),
        vec![whole("kek-carol"), whole("kek-carol")]
    );
    assert_eq!(
        reg.decide("t", None, 0, &records(1)).unwrap(),
        vec![whole("kek-anonymous")]
    );
}

/// Records with every kind of tenant value: repeated, absent, null, invalid, and duplicate
/// headers (the first one counts).
fn mixed_tenant_batch() -> Vec<Record> {
    let mut recs = Vec::new();
    for i in 0..40 {
        let tenant = ["acme", "globex", "acme", "initech"][i % 4];
        recs.push(record(&format!("v{i}"), &[("tenant", tenant)]));
    }
    recs.push(record("none", &[]));
    recs.push(record("bad", &[("tenant", "not a tenant!")]));
    recs.push(record("dup", &[("tenant", "globex"), ("tenant", "acme")]));
    let mut null = record("null", &[]);
    null.headers.push(RecordHeader {
        key: Bytes::from_static(b"tenant"),
        value: None,
    });
    recs.push(null);
    recs.push(record("acme-again", &[("tenant", "acme")]));
    recs
}

fn memo_registry(on_missing: &str) -> PolicyRegistry {
    let a = artifacts();
    let cfg = |memo: bool| format!(r#"{{"on_missing": "{on_missing}", "memo": {memo}}}"#);
    relaxed_registry(vec![
        binding(a.path("tenant-keys"), "m.*", &cfg(true), &["tenant-*"]),
        binding(a.path("tenant-keys"), "u.*", &cfg(false), &["tenant-*"]),
    ])
}

fn module_of(reg: &PolicyRegistry, i: usize) -> Arc<LoadedModule> {
    reg.inner.bindings[i].current.load_full().unwrap()
}

#[test]
fn memoized_decisions_equal_deciding_every_record() {
    for on_missing in ["pass", "reject"] {
        let reg = memo_registry(on_missing);
        let recs = mixed_tenant_batch();
        let unmemoized = reg.decide("u.t", None, 0, &recs).unwrap();
        assert!(unmemoized
            .iter()
            .any(|d| matches!(d, RecordDecision::Reject(_))));
        assert_eq!(
            reg.memo_key("m.t", None),
            None,
            "no plan cached before the first call"
        );
        let first = reg.decide("m.t", None, 0, &recs).unwrap();
        assert_eq!(first, unmemoized, "on_missing {on_missing}");
        assert_eq!(
            reg.memo_key("m.t", None),
            Some(MemoKey::Header("tenant".into()))
        );
        assert_eq!(reg.memo_key("u.t", None), Some(MemoKey::None));
        // acme, globex, initech, absent, invalid, null.
        assert_eq!(module_of(&reg, 0).memoized_values(), 6);
        let calls = reg.status().bindings[0].calls;
        // Same values again, shuffled: every decision comes from the cache (unaudited: this
        // early after the load, production also shows the guest the memo's answers to audit).
        let unaudited = |recs: &[Record]| {
            reg.decide_using("m.t", None, 0, recs, MemoUse::Unaudited)
                .unwrap()
        };
        let mut again = recs.clone();
        again.reverse();
        let mut expected = unmemoized.clone();
        expected.reverse();
        assert_eq!(unaudited(&again), expected);
        assert_eq!(
            reg.status().bindings[0].calls,
            calls,
            "no guest call for cached values"
        );
        // One new value: one call, the rest cached.
        let mut one_new = recs.clone();
        one_new.push(record("new", &[("tenant", "umbrella")]));
        let d = unaudited(&one_new);
        assert_eq!(d[..recs.len()], unmemoized[..]);
        assert_eq!(d[recs.len()], whole("tenant-umbrella"));
        assert_eq!(reg.status().bindings[0].calls, calls + 1);
        assert_eq!(reg.status().bindings[0].memoized_values, 7);
        // Another topic and another principal have their own cache.
        let alice = sasl("alice");
        assert_eq!(
            reg.decide("m.u", Some(&alice), 0, &recs).unwrap(),
            unmemoized
        );
        assert_eq!(module_of(&reg, 0).memoized_values(), 13);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memoized_decisions_are_answered_inline_on_the_async_path() {
    let reg = memo_registry("reject");
    let recs = mixed_tenant_batch();
    let unmemoized = reg.decide_async("u.t", None, 0, &recs).await.unwrap();
    assert_eq!(
        reg.decide_async("m.t", None, 0, &recs).await.unwrap(),
        unmemoized
    );
    assert_eq!(
        reg.decide_async("m.t", None, 0, &recs).await.unwrap(),
        unmemoized
    );
}

#[test]
fn the_memo_cache_is_bounded_in_bytes() {
    let reg = memo_registry("reject");
    let budget = reg.status().bindings[0].cache_budget_bytes;
    assert_eq!(budget, 8 << 20, "the default budget");
    let per_batch = 10_000;
    for b in 0..8 {
        let recs: Vec<Record> = (0..per_batch)
            .map(|i| record("v", &[("tenant", &format!("t{b}x{i}"))]))
            .collect();
        let d = reg.decide("m.t", None, 0, &recs).unwrap();
        assert_eq!(d[17], whole(&format!("tenant-t{b}x17")));
        let s = &reg.status().bindings[0];
        assert!(s.cached_bytes <= budget, "{} > {budget}", s.cached_bytes);
    }
    let s = &reg.status().bindings[0];
    assert!(s.cache_evictions > 0, "80,000 values do not fit in 8 MiB");
    assert!(s.memoized_values > 10_000, "{}", s.memoized_values);
    // Values too long to remember are still decided (once per batch) but not cached.
    let long = "l".repeat(300);
    let recs = vec![record("v", &[("tenant", &long)]); 3];
    let before = module_of(&reg, 0).memoized_values();
    let d = reg.decide("m.t", None, 0, &recs).unwrap();
    assert!(d
        .iter()
        .all(|d| matches!(d, RecordDecision::Reject(m) if m.contains("not a valid tenant"))));
    assert_eq!(module_of(&reg, 0).memoized_values(), before);
}

/// A registry binding `bad*` to the hostile module in `huge-headers` mode (3.5 MB plans and
/// reveals) under `limits`.
fn huge_answers(limits: LimitsConfig) -> PolicyRegistry {
    let a = artifacts();
    PolicyRegistry::new(&config(
        vec![
            binding(
                a.path("hostile-misbehave"),
                "bad*",
                "huge-headers",
                &["kek-ok"],
            ),
            binding(a.path("tenant-keys"), "good", "", &["tenant-*"]),
        ],
        limits,
    ))
    .unwrap()
}

#[test]
fn huge_answers_over_many_topics_are_not_cached_past_the_entry_cap() {
    // Issue 17: a plan carrying 3.5 MB of header names was cached once per topic name (422 MiB
    // over 120 names). Under the default caps such an answer is used and not kept.
    let reg = huge_answers(relaxed_limits());
    let alice = sasl("alice");
    for i in 0..120 {
        let t = format!("bad{i}");
        match reg.topic_plan(&t, None).unwrap() {
            TopicPlan::EncryptAll(p) => assert_eq!(p.headers.len(), 875),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(reg.reveal(&t, Some(&alice)).unwrap(), Reveal::Parts(p) if p.headers.len() == 875)
        );
        assert!(
            reg.cached_topic_plan(&t, None).is_none(),
            "a 3.5 MB plan must not be cached (topic {t})"
        );
        let s = &reg.status().bindings[0];
        assert!(s.cached_bytes <= s.cache_budget_bytes);
    }
    let s = &reg.status().bindings[0];
    assert_eq!(s.cached_bytes, 0);
    assert_eq!(s.answers_not_cached, 240, "{s:?}");
    good_still_serves(&reg);
}

#[test]
fn huge_answers_under_a_raised_entry_cap_stay_inside_the_byte_budget() {
    let limits = LimitsConfig {
        answer_cache_kib: 8 << 10,
        answer_cache_entry_max_kib: 8 << 10,
        ..relaxed_limits()
    };
    let reg = huge_answers(limits);
    for i in 0..120 {
        let t = format!("bad{i}");
        reg.topic_plan(&t, None).unwrap();
        let s = &reg.status().bindings[0];
        assert!(
            s.cached_bytes <= 8 << 20,
            "{} bytes cached after {} topics",
            s.cached_bytes,
            i + 1
        );
    }
    let s = &reg.status().bindings[0];
    assert!(s.cached_answers <= 2, "{s:?}");
    assert!(s.cache_evictions >= 118, "{s:?}");
    // The most recent plan is cached, the first long evicted.
    assert!(reg.cached_topic_plan("bad119", None).is_some());
    assert!(reg.cached_topic_plan("bad0", None).is_none());
}

#[test]
fn a_module_swap_drops_memoized_decisions() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("policy.wasm");
    copy(&a.path("tenant-keys"), &module);
    let reg = one_binding(module.clone(), "*", "", &["*"]);
    let recs = vec![record("v", &[("tenant", "acme")]); 3];
    assert_eq!(
        reg.decide("t", None, 0, &recs).unwrap()[0],
        whole("tenant-acme")
    );
    assert_eq!(reg.status().bindings[0].memoized_values, 1);
    // The new version decides every record itself (misbehave in `ok` mode: kek-ok).
    copy(&a.path("hostile-misbehave"), &module);
    assert!(matches!(reg.reload()[0].1, ReloadOutcome::Reloaded { .. }));
    assert_eq!(reg.status().bindings[0].memoized_values, 0);
    assert_eq!(
        reg.decide("t", None, 0, &recs).unwrap(),
        vec![whole("kek-ok"); 3]
    );
}

#[test]
fn a_module_lying_about_its_memo_key_is_caught_by_the_audit_and_breaks_nothing() {
    let a = artifacts();
    let reg = misbehaving_everywhere("lying-memo");
    // Same tenant, different values: the policy decides from the value, but promised the
    // tenant header decides. Shown one record per tenant plus, this early after the load, every
    // record the memo answers: the audit sees the lie, turns the memo off and the batch is
    // decided record by record.
    let recs = vec![
        record("x", &[("tenant", "a")]),
        record("y", &[("tenant", "a")]),
        record("z", &[("tenant", "b")]),
    ];
    let d = reg.decide("t", None, 0, &recs).unwrap();
    assert_eq!(d, vec![whole("kek-x"), whole("kek-y"), whole("kek-z")]);
    // Without audits the memo alone answers for `y` from `x` (what `policy check` compares).
    let reg_unaudited = misbehaving_everywhere("lying-memo");
    let d = reg_unaudited
        .decide_using("t", None, 0, &recs, MemoUse::Unaudited)
        .unwrap();
    assert_eq!(d, vec![whole("kek-x"), whole("kek-x"), whole("kek-z")]);
    // A lie that names a key outside allowed_key_ids is still refused, as unmemoized.
    let bad = vec![record("../escape", &[("tenant", "c")])];
    let reg2 = one_binding(a.path("hostile-misbehave"), "*", "lying-memo", &["kek-x"]);
    let e = reg2.decide("t", None, 0, &bad).unwrap_err();
    assert!(matches!(e, PolicyError::KeyNotAllowed { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_is_asked_per_principal_validated_and_cached() {
    let a = artifacts();
    let reg = one_binding(a.path("reveal-by-principal"), "*", "", &["kek-*"]);
    let r = |name: &str| reg.reveal("orders", Some(&sasl(name)));
    assert_eq!(r("alice").unwrap(), Reveal::All);
    assert_eq!(
        r("analytics").unwrap(),
        Reveal::Parts(RevealParts {
            json_fields: vec!["/card".into()],
            ..RevealParts::default()
        })
    );
    assert_eq!(r("auditor").unwrap(), Reveal::Ciphertext);
    assert!(matches!(r("intruder").unwrap(), Reveal::Deny(m) if m.contains("not allowed")));
    assert!(matches!(
        reg.reveal("orders", None).unwrap(),
        Reveal::Deny(_)
    ));
    // Answers that break the contract are refused like malformed plans, and not cached.
    let e = r("bad-pointer").unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("must start with `/`")),
        "{e}"
    );
    let e = r("bad-header").unwrap_err();
    assert!(
        matches!(&e, PolicyError::Malformed { reason, .. } if reason.contains("empty header name")),
        "{e}"
    );
    let violations = reg.status().bindings[0].violations;
    assert_eq!(violations, 2);
    assert!(r("bad-pointer").is_err());
    // Cached per (topic, principal): no further guest calls, inline on the async path too.
    let calls = reg.status().bindings[0].calls;
    assert_eq!(r("auditor").unwrap(), Reveal::Ciphertext);
    assert_eq!(
        reg.reveal_async("orders", Some(&sasl("analytics")))
            .await
            .unwrap(),
        r("analytics").unwrap()
    );
    assert_eq!(reg.status().bindings[0].calls, calls);
    // A principal not asked yet goes to the guest from the async path.
    assert_eq!(
        reg.reveal_async("orders", Some(&sasl("zoe")))
            .await
            .unwrap(),
        Reveal::All
    );
    assert_eq!(reg.status().bindings[0].calls, calls + 1);
}

/// The cookbook's tenant policy with a `classification: public` exception, memo left on
/// `tenant`: production audits the memo, catches it, and never encrypts less than the module
/// decides — the audited record included.
#[test]
fn an_audit_turns_a_broken_memo_off_and_every_record_gets_the_modules_decision() {
    let reg = misbehaving_everywhere("tenant-memo-public-passes");
    let own = |recs: &[Record]| {
        recs.iter()
            .map(|r| {
                let h = |n: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.key == n.as_bytes())
                        .and_then(|h| h.value.clone())
                };
                if h("classification").as_deref() == Some(&b"public"[..]) {
                    RecordDecision::Pass
                } else {
                    let t = String::from_utf8(h("tenant").unwrap().to_vec()).unwrap();
                    whole(&format!("kek-{t}"))
                }
            })
            .collect::<Vec<_>>()
    };
    // The first record of each tenant is public: a memo on `tenant` alone would pass the
    // tenant's later records in clear.
    let recs = vec![
        record("v1", &[("tenant", "acme"), ("classification", "public")]),
        record("v2", &[("tenant", "acme"), ("classification", "internal")]),
        record("v3", &[("tenant", "globex"), ("classification", "public")]),
        record(
            "v4",
            &[("tenant", "globex"), ("classification", "internal")],
        ),
    ];
    assert_eq!(reg.decide("t", None, 0, &recs).unwrap(), own(&recs));
    let s = &reg.status().bindings[0];
    assert!(s.memo_disabled, "{s:?}");
    assert_eq!(s.memo_mismatches, 1, "{s:?}");
    // From then on every record is decided by the module, including answers the memo cached.
    let later = vec![
        record("v5", &[("tenant", "acme"), ("classification", "internal")]),
        record("v6", &[("tenant", "globex"), ("classification", "public")]),
    ];
    assert_eq!(reg.decide("t", None, 0, &later).unwrap(), own(&later));
    assert_eq!(reg.status().bindings[0].memo_mismatches, 1);
}

/// A memo that keeps its promise stays on: audited while the version is new, then sampled, so
/// most batches still cost no guest call.
#[test]
fn audits_of_a_correct_memo_are_few_and_leave_it_on() {
    let a = artifacts();
    let reg = one_binding(a.path("tenant-keys"), "*", "", &["tenant-*"]);
    let recs = vec![record("v", &[("tenant", "acme")]); 100];
    for _ in 0..10 {
        assert_eq!(
            reg.decide("t", None, 0, &recs).unwrap(),
            vec![whole("tenant-acme"); 100]
        );
    }
    let s = &reg.status().bindings[0];
    assert!(!s.memo_disabled && s.memo_mismatches == 0, "{s:?}");
    // One `plan` call; the first 256 memo answers are all audited (three `decide` calls), the
    // rest one in 1024 (none more in 1000 records).
    assert_eq!(s.calls, 4, "{s:?}");
}

/// A record whose value is in the Confluent wire format under schema `id` (body irrelevant:
/// the policy sees only the id).
fn wire_record(id: u32) -> Record {
    let mut value = vec![0];
    value.extend_from_slice(&id.to_be_bytes());
    value.extend_from_slice(b"\x02");
    Record {
        value: Some(Bytes::from(value)),
        ..record("", &[])
    }
}

fn schema_fields(fields: &[&str], tags: &[&str]) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: "kek-t".into(),
        value: ValuePart::SchemaFields(crate::plan::FieldSelection {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }),
        record_key: false,
        headers: vec![],
    })
}

/// A policy that imports `describe-schema` chooses fields from the schemas of its batch:
/// Kapsule fetched them before `decide` (here: preloaded into the registry's cache; id 8 is
/// not there and the registry does not answer, so the policy falls back to tags, which the
/// record stage then enforces fail-closed).
#[tokio::test(flavor = "multi_thread")]
async fn describe_schema_lets_a_policy_choose_fields_by_name() {
    let a = artifacts();
    let reg = one_binding(a.path("schema-by-name"), "*", "", &["kek-*"]);
    let schemas = Arc::new(crate::schema::SchemaRegistry::unreachable_for_tests());
    schemas.preload(
        crate::schema::RegisteredSchema::parse(
            7,
            None,
            r#"{"type": "record", "name": "Order", "fields": [
                {"name": "email", "type": "string"},
                {"name": "email_count", "type": "long"},
                {"name": "customer", "type": {"type": "record", "name": "C", "fields": [
                    {"name": "work_email", "type": ["null", "bytes"]},
                    {"name": "name", "type": "string"}]}}]}"#,
        )
        .unwrap(),
    );
    schemas.preload(
        crate::schema::RegisteredSchema::parse(
            9,
            Some("JSON"),
            r#"{"type": "object", "properties": {"n": {"type": "integer"}}}"#,
        )
        .unwrap(),
    );
    let recs = vec![
        wire_record(7),
        wire_record(8),
        record("{}", &[]),
        wire_record(9),
        wire_record(7),
    ];
    let by_name = schema_fields(&["email", "customer.work_email"], &[]);
    let expected = vec![
        by_name.clone(),
        schema_fields(&[], &["PII"]),
        whole("kek-t"),
        RecordDecision::Pass,
        by_name,
    ];
    // Without a registry attached every schema is an error: the policy falls back to tags.
    let d = reg.decide_async("t", None, 0, &recs).await.unwrap();
    assert_eq!(d[0], schema_fields(&[], &["PII"]));
    reg.attach_schema_registry(schemas);
    assert_eq!(
        reg.decide_async("t", None, 0, &recs).await.unwrap(),
        expected
    );
    // The synchronous path (`policy check`) reads the registry's cache only.
    assert_eq!(reg.decide("t", None, 0, &recs).unwrap(), expected);
}
