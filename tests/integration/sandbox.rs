//! The policy sandbox through Kapsule with real clients: a module that prints in `init` (which
//! used to crash Kapsule at start-up) serves and its output reaches Kapsule's log; a module that
//! sleeps in `decide` is stopped at once instead of holding the produce request for seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::{Tansu, TestRecord};
use kapsule_test_fixtures::policy_artifacts;
use serde_json::Value;

use crate::common::{assert_records_match, ck_consume, ck_produce};
use crate::encryption::{produce_report, read_direct, start_kapsule, topic};

/// Kafka error code POLICY_VIOLATION.
const POLICY_VIOLATION: i64 = 44;

fn binding(prefix: &str, module: &Path, config: &str) -> String {
    format!(
        "    - topics: {{prefix: \"{prefix}\"}}\n      module: \"{}\"\n      config: '{config}'\n      allowed_key_ids: [\"kek-ok\"]\n",
        module.display()
    )
}

/// A copy of the hostile module in `dir`.
fn hostile_module(dir: &Path) -> PathBuf {
    let art = policy_artifacts().expect("the guest components kapsule-test-fixtures built");
    let dst = dir.join("hostile.wasm");
    std::fs::copy(art.path("hostile-misbehave"), &dst).unwrap();
    dst
}

#[tokio::test(flavor = "multi_thread")]
async fn printing_and_sleeping_policies_through_kapsule() {
    let dir = tempfile::tempdir().unwrap();
    let module = hostile_module(dir.path());
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let mut policy =
        String::from("policy:\n  watch: false\n  limits:\n    call_timeout_ms: 10\n  bindings:\n");
    policy += &binding("sb-print-", &module, "print-init");
    policy += &binding("sb-sleep-", &module, "sleep-decide");
    // Kapsule used to abort here: "Cannot start a runtime from within a runtime".
    let kapsule = start_kapsule(&tansu, &kms.yaml(), &policy).await;
    let b = kapsule.bootstrap();

    // The printing module serves: records are encrypted and read back in clear.
    let t = topic(&tansu, "sb-print-").await;
    let records: Vec<TestRecord> = (0..5)
        .map(|i| TestRecord::kv(format!("k{i}"), format!("PRINTED-{i}")))
        .collect();
    ck_produce(&b, &t, &records, &[]).await;
    let stored = read_direct(&tansu, &t, 5).await;
    assert_no_plaintext(&stored, &[b"PRINTED-".to_vec()]);
    assert_records_match(&records, &ck_consume(&b, &t, 5, &[]).await);
    // Its stdout and stderr reached Kapsule's log through the policy log.
    let logs = kapsule.logs();
    assert!(logs.contains("hello from init on stdout"), "{logs}");
    assert!(logs.contains("hello from init on stderr"), "{logs}");

    // The sleeping module is stopped at once with POLICY_VIOLATION; nothing is stored.
    let t = topic(&tansu, "sb-sleep-").await;
    let started = Instant::now();
    let out = produce_report(
        &b,
        &t,
        &[TestRecord::kv("s", "SLEEPY")],
        &["--timeout", "15"],
    )
    .await;
    let took = started.elapsed();
    let errs: Vec<&Value> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert_eq!(errs.len(), 1, "{out}");
    assert_eq!(errs[0]["code"], POLICY_VIOLATION, "{out}");
    // The guest sleeps 5 s per call; the client (with Python start-up) answers well before.
    assert!(took < Duration::from_secs(5), "produce took {took:?}");
    assert!(
        kapsule.logs().contains("may not wait"),
        "the refusal names the blocked wait"
    );
}
