//! Policy authoring that cannot leak by mistake (issue 18 item 6), end to end: a throwing
//! `decide` fails `kapsule policy check` with the exception and the guest's traceback (Python
//! and JavaScript), a Python syntax error is shown as file:line: message without a Rust
//! backtrace, a binding added to the YAML refuses SIGHUP and `POST /policies/reload` with "restart",
//! and a refused record is named in the Produce response (raw Produce v9; confluent-kafka sees
//! the whole batch refused).

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use kapsule_integration::encryption::LocalKms;
use kapsule_integration::kapsule::direct_mode;
use kapsule_integration::probe::{produce_request, RawConnection};
use kapsule_integration::{Tansu, TestRecord};
use kapsule_test_fixtures::{policy_artifacts, repo_root};

use crate::encryption::{consume_report, produce_report, start_kapsule, topic};
use crate::hardening::http;
use crate::policies::{binding, errors_of, POLICY_VIOLATION};
use crate::polyglot::{built, policy_check, Lang};

/// `policy check` of the hostile module in `raise-decide` mode (its `decide` throws on every
/// record): the check fails and shows the exception's message and where it was raised.
async fn a_throwing_decide_fails_the_check(lang: Lang, message: &str, traceback: &[&str]) {
    let module = built(lang, "hostile").await;
    let (ok, report) = policy_check(
        &module,
        &[
            "--config",
            "raise-decide",
            "--allowed-key-id",
            "kek-ok",
            "--call-timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(
        !ok,
        "{lang:?}: a throwing decide passed the check:\n{report}"
    );
    assert!(
        report.contains("policy check failed") && report.contains("the policy's code failed"),
        "{lang:?}: {report}"
    );
    assert!(
        report.contains(message),
        "{lang:?}: no exception message:\n{report}"
    );
    for line in traceback {
        assert!(report.contains(line), "{lang:?}: no `{line}` in:\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_decide_that_raises_fails_policy_check_with_its_traceback() {
    a_throwing_decide_fails_the_check(
        Lang::Python,
        "RuntimeError: hostile policy raises in decide",
        &["Traceback (most recent call last):", "app.py", "in decide"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_js_decide_that_throws_fails_policy_check_with_its_stack() {
    a_throwing_decide_fails_the_check(
        Lang::Js,
        "Error: hostile policy throws in decide",
        &["decide"],
    )
    .await;
}

/// A syntax error in a Python policy is reported first and briefly (file, line, message), in
/// about a second, whatever RUST_BACKTRACE says.
#[test]
fn a_python_syntax_error_is_shown_as_file_line_message_without_a_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        "from kapsule_policy import Policy, export\n\nclass P(Policy):\n    def decide(self,, topic, client, records):\n        return []\n\nWitWorld = export(P)\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-m", "kapsule_policy._build"])
        .arg(&app)
        .arg(dir.path().join("app.wasm"))
        .env("PYTHONPATH", repo_root().join("guest-sdk/python"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run build.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.contains(&format!("{}:4: SyntaxError", app.display())),
        "the cause is not first: {text}"
    );
    assert!(!text.contains("Stack backtrace"), "{text}");
    assert!(text.lines().count() <= 5, "{text}");
}

/// A binding added to the YAML is not silently ignored: SIGHUP and `POST /policies/reload` are
/// refused with an error naming the change and saying a restart applies it; once the file is
/// back as Kapsule started with it, reloads work again.
#[tokio::test(flavor = "multi_thread")]
async fn a_binding_added_to_the_yaml_refuses_the_reload_and_asks_for_a_restart() {
    if direct_mode() {
        return;
    }
    let art = policy_artifacts().expect("the guest components kapsule-test-fixtures built");
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let policy = format!(
        "policy:\n  watch: false\n  bindings:\n{}",
        binding(
            "rl-a-",
            &art.path("encrypt-all"),
            "kek-${topic}",
            &["kek-*"]
        )
    );
    let kapsule = start_kapsule(&tansu, &kms.yaml(), &policy).await;
    let admin = kapsule.admin().unwrap().to_owned();
    let file = kapsule.config_file().unwrap().to_owned();
    let original = std::fs::read_to_string(&file).unwrap();
    let (status, body) = http(&admin, "POST", "/policies/reload", "").await.unwrap();
    assert_eq!(status, 200, "unchanged file: {body}");

    let added = format!(
        "{original}{}",
        binding("rl-b-", &art.path("tenant-keys"), "", &["tenant-*"])
    );
    std::fs::write(&file, added).unwrap();
    let (status, body) = http(&admin, "POST", "/policies/reload", "").await.unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(
        body.contains("policy.bindings[1] was added") && body.contains("restart Kapsule"),
        "{body}"
    );
    let pid = kapsule.pid().unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut logged = false;
    for _ in 0..50 {
        let logs = kapsule.logs();
        if logs.contains("policy reload refused") && logs.contains("restart Kapsule") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "SIGHUP: no refusal logged:\n{}", kapsule.logs());
    let (_, status) = kapsule.admin_get("/policies").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["bindings"].as_array().unwrap().len(), 1, "{status}");

    std::fs::write(&file, &original).unwrap();
    let (status, body) = http(&admin, "POST", "/policies/reload", "").await.unwrap();
    assert_eq!(status, 200, "file restored: {body}");
}

/// A magic v2 batch of `records` given as (value, tenant header or none).
fn tenant_batch(records: &[(&str, Option<&str>)]) -> Bytes {
    use kapsule::kafka::records::{Record, RecordBatch, RecordHeader};
    let batch = RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: records
            .iter()
            .enumerate()
            .map(|(i, (v, tenant))| Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: i as i32,
                key: None,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: tenant
                    .iter()
                    .map(|t| RecordHeader {
                        key: Bytes::from_static(b"tenant"),
                        value: Some(Bytes::copy_from_slice(t.as_bytes())),
                    })
                    .collect(),
            })
            .collect(),
    };
    batch.to_bytes().expect("encode record batch")
}

/// One record the policy refuses refuses its whole batch (Kafka semantics), and the Produce
/// response names it: KIP-467 `record_errors` (batch index and the policy's message) and the
/// partition's `error_message`, which confluent-kafka shows as the error string.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_record_is_named_in_the_produce_response() {
    if direct_mode() {
        return;
    }
    let art = policy_artifacts().expect("the guest components kapsule-test-fixtures built");
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let policy = format!(
        "policy:\n  watch: false\n  bindings:\n{}",
        binding("re-", &art.path("tenant-keys"), "", &["tenant-*"])
    );
    let kapsule = start_kapsule(&tansu, &kms.yaml(), &policy).await;
    let t = topic(&tansu, "re-").await;

    // Raw Produce v9: three records, the second without a tenant.
    let batch = tenant_batch(&[("A", Some("acme")), ("B", None), ("C", Some("globex"))]);
    let mut conn = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    conn.send(
        ApiKey::Produce,
        9,
        7,
        &produce_request(&t, None, 10_000, batch),
    )
    .await
    .unwrap();
    let (_, resp): (i32, ProduceResponse) = conn
        .recv_as(ApiKey::Produce, 9, Duration::from_secs(20))
        .await
        .unwrap();
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(i64::from(p.error_code), POLICY_VIOLATION, "{p:?}");
    let message = p.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("record 1 rejected by policy") && message.contains("tenant"),
        "{message}"
    );
    assert_eq!(p.record_errors.len(), 1, "{p:?}");
    assert_eq!(p.record_errors[0].batch_index, 1, "{p:?}");
    let why = p.record_errors[0]
        .batch_index_error_message
        .as_deref()
        .unwrap_or_default();
    assert!(why.contains("record has no `tenant` header"), "{why}");

    // confluent-kafka: every record of the batch fails with POLICY_VIOLATION. librdkafka 2.16
    // does not show the response's messages (str(err) is "Broker: Policy violation"): the
    // reason is in Kapsule's log, which names topic, partition and record.
    let mut records: Vec<TestRecord> = (0..3)
        .map(|i| TestRecord::kv(format!("k{i}"), format!("V{i}")))
        .collect();
    records[0].headers = vec![("tenant".into(), Some(b"acme".to_vec()))];
    records[2].headers = vec![("tenant".into(), Some(b"globex".to_vec()))];
    let out = produce_report(
        &kapsule.bootstrap(),
        &t,
        &records,
        &["--timeout", "15", "--config", "linger.ms=200"],
    )
    .await;
    let errs = errors_of(&out);
    assert_eq!(errs.len(), 3, "one refused record refuses its batch: {out}");
    for e in &errs {
        assert_eq!(e["code"], POLICY_VIOLATION, "{out}");
    }
    assert!(
        kapsule.logs().contains("record 1 rejected by policy"),
        "{}",
        kapsule.logs()
    );
    let (stored, _) =
        consume_report(&tansu.bootstrap(), &t, &["--timeout", "4", "--idle", "2"]).await;
    assert!(stored.is_empty(), "refused records stored: {stored:?}");
}
