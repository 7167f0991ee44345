//! Encrypted topics end to end: real clients produce and consume through Kapsule in front of a
//! real broker (Apache Kafka; tansu with `KAPSULE_TEST_BROKER=tansu`), with the local KMS or a
//! real OpenBao; the same topics read directly from the broker must show only ciphertext.

use std::time::Duration;

use rstest::rstest;

use kapsule_integration::clients::tail;
use kapsule_integration::encryption::{
    assert_no_plaintext, contains_bytes, vault_kms_yaml, LocalKms,
};
use kapsule_integration::kms_server::KmsServer;
use kapsule_integration::openbao::OpenBao;
use kapsule_integration::records::{write_records_file, ConsumedRecord};
use kapsule_integration::tls::strip_ansi;
use kapsule_integration::{
    run_python, unique_name, Broker, Kapsule, KapsuleConfig, RecordsMode, TestBroker, TestRecord,
};
use serde_json::Value;

use crate::common::{
    args, assert_fetches_read_ahead, assert_in_offset_order, assert_records_match, ck_consume,
    ck_produce, read_ahead_count, CLIENT_TIMEOUT,
};

/// Rules used by most tests: topic prefixes select what is encrypted and how.
const RULES: &str = r#"policy:
  rules:
    - topics: {prefix: "whole-"}
      key_id: "kek-$${topic}"
      value: whole
      record_key: true
      headers: [secret]
    - topics: {prefix: "json-"}
      key_id: kek-json
      value: {json_fields: ["/card/number", "/email"]}
    - topics: {prefix: "strict-error-"}
      key_id: kek-strict
      require_encrypted: true
      on_decrypt_failure: error
    - topics: {prefix: "strict-skip-"}
      key_id: kek-strict
      require_encrypted: true
      on_decrypt_failure: skip
"#;

/// The config of a Kapsule that re-encodes records and encrypts them per `policy` with the KMS
/// section `kms`; listen, upstream and admin come from the rig.
pub fn encrypting(kms: &str, policy: &str) -> KapsuleConfig {
    KapsuleConfig::new(RecordsMode::Reencode)
        .with_yaml(kms)
        .with_yaml(policy)
}

/// Starts Kapsule (reencode mode, so non-encrypted batches also go through the codec) with `kms`
/// and `policy` YAML sections in front of `broker`.
pub async fn start_kapsule(broker: &impl TestBroker, kms: &str, policy: &str) -> Kapsule {
    Kapsule::start(&broker.bootstrap(), encrypting(kms, policy))
        .await
        .expect("start kapsule")
}

/// Creates a uniquely named topic (one partition) on the broker.
pub async fn topic(broker: &impl TestBroker, prefix: &str) -> String {
    let name = unique_name(prefix);
    broker.create_topic(&name, 1).await.expect("create topic");
    name
}

/// Output of `ck_produce_report.py`.
pub async fn produce_report(
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    extra: &[&str],
) -> Value {
    let file = write_records_file(records).expect("write records");
    let mut a = args(&["--bootstrap", bootstrap, "--topic", topic, "--input"]);
    a.push(file.path().display().to_string());
    a.extend(args(extra));
    let out = run_python("ck_produce_report.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_produce_report.py");
    let mut json = out.json;
    // A record with no delivery report at all: keep what the client said (its librdkafka log,
    // with `--config debug=...`), so the failing assertion shows where the answer went.
    let undelivered = json["results"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["error"] == "no delivery report"));
    if undelivered {
        json["client_stderr"] = Value::String(tail(&out.stderr, 12_000).to_owned());
    }
    json
}

/// Output of `ck_consume_report.py` (reads from the beginning, collects errors).
pub async fn consume_report(
    bootstrap: &str,
    topic: &str,
    extra: &[&str],
) -> (Vec<ConsumedRecord>, Vec<Value>) {
    let mut a = args(&["--bootstrap", bootstrap, "--topic", topic]);
    a.extend(args(extra));
    let out = run_python("ck_consume_report.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_consume_report.py")
        .json;
    let records = ConsumedRecord::list_from_output(&out).expect("parse records");
    let errors = out["errors"].as_array().cloned().unwrap_or_default();
    (records, errors)
}

/// Reads `count` records of `topic` directly from the broker, bypassing Kapsule.
pub async fn read_direct(broker: &impl TestBroker, topic: &str, count: usize) -> Vec<TestRecord> {
    ck_consume(&broker.bootstrap(), topic, count, &[])
        .await
        .into_iter()
        .map(|c| c.record)
        .collect()
}

/// Records with distinctive plaintext markers in the key, value and `secret` header, and a clear
/// `visible` header.
pub(crate) fn marked_records(tag: &str, n: usize) -> (Vec<TestRecord>, Vec<Vec<u8>>) {
    let mut markers = Vec::new();
    let records = (0..n)
        .map(|i| {
            let key = format!("KEYMARK-{tag}-{i}");
            let value = format!("VALMARK-{tag}-{i}-{}", "payload ".repeat(i % 40));
            let secret = format!("HDRMARK-{tag}-{i}");
            markers.push(key.clone().into_bytes());
            markers.push(format!("VALMARK-{tag}-{i}-").into_bytes());
            markers.push(secret.clone().into_bytes());
            TestRecord {
                key: Some(key.into_bytes()),
                value: Some(value.into_bytes()),
                headers: vec![
                    ("secret".into(), Some(secret.into_bytes())),
                    ("visible".into(), Some(format!("clear-{i}").into_bytes())),
                ],
                timestamp: Some(1_700_000_000_000 + i as i64),
                partition: None,
            }
        })
        .collect();
    (records, markers)
}

fn json_records(tag: &str, n: usize) -> (Vec<TestRecord>, Vec<Vec<u8>>) {
    let mut markers = Vec::new();
    let records = (0..n)
        .map(|i| {
            let card = format!("CARDMARK{tag}{i:04}");
            let email = format!("EMAILMARK-{tag}-{i}@example.com");
            markers.push(card.clone().into_bytes());
            markers.push(email.clone().into_bytes());
            let v = serde_json::json!({
                "id": i, "name": format!("name-{i}"),
                "card": {"number": card, "brand": "visa"},
                "email": email, "tags": ["a", "b"],
            });
            TestRecord::kv(format!("k{i}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    (records, markers)
}

/// Every compression codec: whole value + record key + a named header, and JSON fields, round
/// trip byte-exact through Kapsule while the broker holds no plaintext marker.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_round_trip_per_compression(
    #[values("none", "gzip", "snappy", "lz4", "zstd")] compression: &str,
) {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let whole = topic(&broker, &format!("whole-{compression}")).await;
    let json = topic(&broker, &format!("json-{compression}")).await;
    let comp = ["--compression", compression];

    let (records, markers) = marked_records(compression, 50);
    ck_produce(&kapsule.bootstrap(), &whole, &records, &comp).await;
    let back = ck_consume(&kapsule.bootstrap(), &whole, records.len(), &[]).await;
    assert_records_match(&records, &back);
    let stored = read_direct(&broker, &whole, records.len()).await;
    assert_eq!(stored.len(), records.len());
    assert_no_plaintext(&stored, &markers);
    for (i, s) in stored.iter().enumerate() {
        assert!(
            s.header("kapsule.enc").is_some(),
            "stored record {i} lacks the kapsule.enc header"
        );
        assert_eq!(
            s.header("visible"),
            Some(format!("clear-{i}").as_bytes()),
            "unlisted header stays clear"
        );
        assert_ne!(s.key, records[i].key);
    }

    let (jrecords, jmarkers) = json_records(compression, 40);
    ck_produce(&kapsule.bootstrap(), &json, &jrecords, &comp).await;
    let back = ck_consume(&kapsule.bootstrap(), &json, jrecords.len(), &[]).await;
    assert_records_match(&jrecords, &back);
    let stored = read_direct(&broker, &json, jrecords.len()).await;
    assert_no_plaintext(&stored, &jmarkers);
    for (i, s) in stored.iter().enumerate() {
        let v: Value = serde_json::from_slice(s.value.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("stored value {i} is not valid JSON: {e}"));
        assert_eq!(v["id"], i, "clear field readable directly");
        assert_eq!(v["name"], format!("name-{i}"));
        assert_eq!(v["card"]["brand"], "visa");
        assert!(
            v["card"]["number"].is_string() && v["email"].is_string(),
            "{v}"
        );
        assert_eq!(
            s.key.as_deref(),
            Some(format!("k{i}").as_bytes()),
            "record key not encrypted by this rule"
        );
    }
}

/// Record sets of tens of KiB both ways (600 records, batched by the producer and returned in
/// large fetches), which Kapsule writes as pieces of their frames instead of copying them into
/// one buffer: byte-exact round trip, every stored record encrypted.
#[tokio::test(flavor = "multi_thread")]
async fn large_record_sets_round_trip_byte_exact() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let t = topic(&broker, "whole-large").await;
    let (records, markers) = marked_records("large", 600);
    ck_produce(&kapsule.bootstrap(), &t, &records, &[]).await;
    let back = ck_consume(&kapsule.bootstrap(), &t, records.len(), &[]).await;
    assert_records_match(&records, &back);
    let stored = read_direct(&broker, &t, records.len()).await;
    assert_eq!(stored.len(), records.len());
    assert_no_plaintext(&stored, &markers);
    assert!(stored.iter().all(|s| s.header("kapsule.enc").is_some()));
}

/// Two Kapsule instances sharing a local KMS (same key file and master key) in front of one
/// broker read each other's records.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_decrypt_each_others_records() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let a = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let t = topic(&broker, "whole-scale").await;
    let (ra, ma) = marked_records("from-a", 20);
    ck_produce(&a.bootstrap(), &t, &ra, &[]).await;
    // B starts after A created the KEK: it must load the key from the shared file.
    let b = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let (rb, mb) = marked_records("from-b", 20);
    ck_produce(&b.bootstrap(), &t, &rb, &[]).await;
    let all: Vec<TestRecord> = ra.iter().chain(&rb).cloned().collect();
    for k in [&a, &b] {
        let back = ck_consume(&k.bootstrap(), &t, all.len(), &[]).await;
        assert_records_match(&all, &back);
    }
    let stored = read_direct(&broker, &t, all.len()).await;
    assert_no_plaintext(&stored, &[ma, mb].concat());
}

/// The associated data revision a stored record's descriptor names (flags byte, bits 5 and 6).
fn stored_revision(stored: &TestRecord) -> u8 {
    let descriptor = stored.header("kapsule.enc").expect("kapsule.enc header");
    match descriptor[1] & 0x60 {
        0x00 => 1,
        0x20 => 2,
        0x40 => 3,
        other => panic!("both revision bits set: {other:#x}"),
    }
}

/// A rolling upgrade: a writer pinned to `record_format.whole_value_revision: 1` and one on the
/// default (revision 3, value and record tag in one AES-GCM stream) write to one topic; the
/// stored records carry the revision each wrote (revision 3 values are their plaintext's length,
/// revision 1 ones 16 bytes longer), and both instances read every record back byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn whole_value_revisions_1_and_3_are_written_as_configured_and_both_read() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let current = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let pinned = Kapsule::start(
        &broker.bootstrap(),
        encrypting(&kms.yaml(), RULES).with_yaml("record_format:\n  whole_value_revision: 1\n"),
    )
    .await
    .expect("start kapsule pinned to revision 1");
    let t = topic(&broker, "whole-revisions").await;
    let (r1, m1) = marked_records("rev1", 15);
    ck_produce(&pinned.bootstrap(), &t, &r1, &[]).await;
    let (r3, m3) = marked_records("rev3", 15);
    ck_produce(&current.bootstrap(), &t, &r3, &[]).await;
    let all: Vec<TestRecord> = r1.iter().chain(&r3).cloned().collect();
    let stored = read_direct(&broker, &t, all.len()).await;
    assert_no_plaintext(&stored, &[m1, m3].concat());
    for (i, (s, plain)) in stored.iter().zip(&all).enumerate() {
        let (revision, tag) = if i < r1.len() { (1, 16) } else { (3, 0) };
        assert_eq!(stored_revision(s), revision, "record {i}");
        assert_eq!(
            s.value.as_ref().unwrap().len(),
            plain.value.as_ref().unwrap().len() + tag,
            "record {i}: stored value length"
        );
    }
    for k in [&current, &pinned] {
        let back = ck_consume(&k.bootstrap(), &t, all.len(), &[]).await;
        assert_records_match(&all, &back);
    }
}

fn edek_versions(stored: &[TestRecord]) -> Vec<String> {
    stored
        .iter()
        .map(|s| {
            let enc = s.header("kapsule.enc").expect("kapsule.enc header");
            let text = String::from_utf8_lossy(enc);
            let at = text.find("vault:v").expect("vault EDEK in the descriptor");
            text[at..].split(':').nth(1).unwrap().to_owned()
        })
        .collect()
}

/// The KEK is rotated in OpenBao between two produce runs: new DEKs are wrapped by the new
/// version and every record stays readable, also through a fresh Kapsule with empty caches.
#[tokio::test(flavor = "multi_thread")]
async fn openbao_kek_rotation_mid_stream_keeps_records_readable() {
    let bao = OpenBao::start().unwrap();
    let broker = Broker::start_default().await.expect("start the broker");
    let (kms, _token) = vault_kms_yaml(&bao, 2000, 2).unwrap();
    // Small DEK lifetime so the rotation is picked up by the next DEK.
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"rot-\"}\n      key_id: rot-kek\n      record_key: true\n      headers: [secret]\ndeks:\n  max_encryptions: 40\n";
    bao.create_key("rot-kek").unwrap();
    let kapsule = start_kapsule(&broker, &kms, policy).await;
    let t = topic(&broker, "rot-").await;
    let (r1, m1) = marked_records("before", 15);
    ck_produce(&kapsule.bootstrap(), &t, &r1, &[]).await;
    bao.rotate_key("rot-kek").unwrap();
    let (r2, m2) = marked_records("after", 40);
    ck_produce(&kapsule.bootstrap(), &t, &r2, &[]).await;
    let all: Vec<TestRecord> = r1.iter().chain(&r2).cloned().collect();

    let stored = read_direct(&broker, &t, all.len()).await;
    assert_no_plaintext(&stored, &[m1, m2].concat());
    let versions = edek_versions(&stored);
    assert!(versions[..15].iter().all(|v| v == "v1"), "{versions:?}");
    assert_eq!(
        versions.last().map(String::as_str),
        Some("v2"),
        "{versions:?}"
    );

    let back = ck_consume(&kapsule.bootstrap(), &t, all.len(), &[]).await;
    assert_records_match(&all, &back);
    let fresh = start_kapsule(&broker, &kms, policy).await;
    let back = ck_consume(&fresh.bootstrap(), &t, all.len(), &[]).await;
    assert_records_match(&all, &back);
}

/// Deleting the KEK in OpenBao makes the records unreadable; each topic gets its configured
/// failure mode: error, skip, or the stored ciphertext.
#[tokio::test(flavor = "multi_thread")]
async fn openbao_deleted_kek_gives_the_configured_failure() {
    let bao = OpenBao::start().unwrap();
    let broker = Broker::start_default().await.expect("start the broker");
    let (kms, _token) = vault_kms_yaml(&bao, 2000, 1).unwrap();
    let mut policy = String::from("policy:\n  rules:\n");
    for mode in ["error", "skip", "ciphertext"] {
        policy.push_str(&format!(
            "    - topics: {{prefix: \"del-{mode}-\"}}\n      key_id: doomed\n      on_decrypt_failure: {mode}\n"
        ));
    }
    bao.create_key("doomed").unwrap();
    let writer = start_kapsule(&broker, &kms, &policy).await;
    let mut topics = Vec::new();
    for mode in ["error", "skip", "ciphertext"] {
        let t = topic(&broker, &format!("del-{mode}-")).await;
        let (r, _) = marked_records(mode, 10);
        ck_produce(&writer.bootstrap(), &t, &r, &[]).await;
        let back = ck_consume(&writer.bootstrap(), &t, r.len(), &[]).await;
        assert_records_match(&r, &back);
        topics.push(t);
    }
    drop(writer);
    bao.delete_key("doomed").unwrap();
    // A fresh instance: no DEK cached from producing.
    let reader = start_kapsule(&broker, &kms, &policy).await;

    let (records, errors) = consume_report(
        &reader.bootstrap(),
        &topics[0],
        &["--timeout", "15", "--max-errors", "1"],
    )
    .await;
    assert!(
        records.is_empty(),
        "error mode delivered {} records",
        records.len()
    );
    assert!(
        errors.iter().any(|e| e["retriable"] == false),
        "error mode: expected a non-retriable consume error, got {errors:?}"
    );

    let (records, errors) =
        consume_report(&reader.bootstrap(), &topics[1], &["--timeout", "8"]).await;
    assert!(
        records.is_empty(),
        "skip mode delivered {} records",
        records.len()
    );
    assert!(
        errors.iter().all(|e| e["retriable"] == true),
        "skip mode must not fail the fetch: {errors:?}"
    );

    let (records, _) = consume_report(
        &reader.bootstrap(),
        &topics[2],
        &["--count", "10", "--timeout", "20"],
    )
    .await;
    let stored = read_direct(&broker, &topics[2], 10).await;
    let delivered: Vec<TestRecord> = records.into_iter().map(|c| c.record).collect();
    assert_eq!(
        delivered, stored,
        "ciphertext mode delivers the records as stored"
    );
}

/// The KMS (OpenBao, AWS KMS, Cloud KMS) stops answering while a producer writes to a topic with
/// no cached DEK: the producer gets retriable errors, keeps retrying, and every record lands
/// (encrypted) once the KMS is back. Record keys are encrypted too where the server can derive
/// keys (not drongo, which has no `macSign`).
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn kms_outage_makes_produce_retry_without_loss(
    #[values("vault", "aws", "gcp")] backend: &str,
) {
    let kms = KmsServer::start(backend).await.unwrap();
    let broker = Broker::start_default().await.expect("start the broker");
    let policy = format!(
        "policy:\n  rules:\n    - topics: {{prefix: \"outage-\"}}\n      key_id: outage-kek\n      record_key: {}\n      headers: [secret]\n",
        kms.derives_keys()
    );
    kms.create_key("outage-kek").await.unwrap();
    let config = kms.kapsule_config(KapsuleConfig::new(RecordsMode::Reencode), 300, 1);
    let kapsule = Kapsule::start(&broker.bootstrap(), config.with_yaml(&policy))
        .await
        .expect("start kapsule");
    let t = topic(&broker, "outage-").await;
    let (records, markers) = marked_records("outage", 30);

    kms.pause().unwrap();
    let bootstrap = kapsule.bootstrap();
    let (t2, r2) = (t.clone(), records.clone());
    let producer = tokio::spawn(async move {
        produce_report(
            &bootstrap,
            &t2,
            &r2,
            &["--timeout", "45", "--config", "retry.backoff.ms=200"],
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, metrics) = kapsule.admin_get("/metrics").await.unwrap();
    kms.resume().unwrap();
    let out = producer.await.unwrap();
    assert_eq!(out["failed"], 0, "records lost during the outage: {out}");
    assert_eq!(out["delivered"], records.len());
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kapsule_kms_calls_total") && l.contains("transient")),
        "the outage never reached the KMS client:\n{metrics}"
    );
    let log = kapsule.logs();
    assert!(
        log.contains("refusing produce partition"),
        "no produce was refused during the outage:\n{log}"
    );

    let stored = read_direct(&broker, &t, records.len()).await;
    let markers: Vec<Vec<u8>> = markers
        .into_iter()
        .filter(|m| kms.derives_keys() || !m.starts_with(b"KEYMARK-"))
        .collect();
    assert_no_plaintext(&stored, &markers);
    let back = ck_consume(&kapsule.bootstrap(), &t, records.len(), &[]).await;
    assert_records_match(&records, &back);
}

/// Plaintext written directly to the broker on a `require_encrypted` topic is never delivered as
/// if it had been encrypted; an encrypted record copied to another topic fails decryption.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_records_are_not_delivered() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;

    // Plaintext injected behind Kapsule's back.
    let forged = vec![TestRecord::kv("forged", "FORGED-PLAINTEXT")];
    let strict_error = topic(&broker, "strict-error-").await;
    ck_produce(&broker.bootstrap(), &strict_error, &forged, &[]).await;
    let (records, errors) = consume_report(
        &kapsule.bootstrap(),
        &strict_error,
        &["--timeout", "15", "--max-errors", "1"],
    )
    .await;
    assert!(
        records.is_empty(),
        "plaintext delivered on a require_encrypted topic: {records:?}"
    );
    assert!(
        errors.iter().any(|e| e["retriable"] == false),
        "expected a consume error: {errors:?}"
    );

    let strict_skip = topic(&broker, "strict-skip-").await;
    ck_produce(&broker.bootstrap(), &strict_skip, &forged, &[]).await;
    let genuine = vec![TestRecord::kv("genuine", "through kapsule")];
    ck_produce(&kapsule.bootstrap(), &strict_skip, &genuine, &[]).await;
    let (records, _) = consume_report(
        &kapsule.bootstrap(),
        &strict_skip,
        &["--timeout", "10", "--idle", "4"],
    )
    .await;
    let got: Vec<TestRecord> = records.into_iter().map(|c| c.record).collect();
    assert_eq!(got.len(), 1, "skip mode: only the genuine record: {got:?}");
    assert_eq!(got[0].value, genuine[0].value);

    // Ciphertext moved to another topic (same KEK naming rule) does not decrypt there.
    let src = topic(&broker, "whole-src-").await;
    let dst = topic(&broker, "whole-dst-").await;
    let (records, markers) = marked_records("copy", 5);
    ck_produce(&kapsule.bootstrap(), &src, &records, &[]).await;
    let stored = read_direct(&broker, &src, records.len()).await;
    ck_produce(&broker.bootstrap(), &dst, &stored, &[]).await;
    let (back, errors) = consume_report(
        &kapsule.bootstrap(),
        &dst,
        &["--timeout", "15", "--max-errors", "1"],
    )
    .await;
    assert!(
        back.is_empty(),
        "copied ciphertext decrypted on another topic: {back:?}"
    );
    assert!(
        errors.iter().any(|e| e["retriable"] == false),
        "expected a decryption error: {errors:?}"
    );
    for c in &back {
        for m in &markers {
            assert!(!contains_bytes(
                c.record.value.as_deref().unwrap_or_default(),
                m
            ));
        }
    }
}

/// An idempotent producer and a transactional producer work through an encrypted topic exactly
/// as they do against the broker directly.
#[tokio::test(flavor = "multi_thread")]
async fn idempotent_and_transactional_producers_on_encrypted_topic() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;

    let t = topic(&broker, "whole-idem-").await;
    let (records, markers) = marked_records("idem", 100);
    let out = produce_report(
        &kapsule.bootstrap(),
        &t,
        &records,
        &["--idempotent", "--compression", "zstd"],
    )
    .await;
    assert_eq!(out["failed"], 0, "{out}");
    let offsets: Vec<i64> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..100).collect::<Vec<i64>>(),
        "each record exactly once, in order"
    );
    let back = ck_consume(&kapsule.bootstrap(), &t, records.len(), &[]).await;
    assert_records_match(&records, &back);
    assert_no_plaintext(&read_direct(&broker, &t, records.len()).await, &markers);

    // Transactions: first ask the broker itself, then require the same outcome through Kapsule.
    let (committed, cmarkers) = marked_records("txn-commit", 10);
    let (aborted, _) = marked_records("txn-abort", 5);
    let abort_file = write_records_file(&aborted).unwrap();
    let abort_path = abort_file.path().display().to_string();
    let direct_topic = topic(&broker, "plain-txn-").await;
    let direct = produce_report(
        &broker.bootstrap(),
        &direct_topic,
        &committed,
        &[
            "--transactional-id",
            &unique_name("txn-direct"),
            "--abort-input",
            &abort_path,
            "--timeout",
            "20",
        ],
    )
    .await;
    let t = topic(&broker, "whole-txn-").await;
    let proxied = produce_report(
        &kapsule.bootstrap(),
        &t,
        &committed,
        &[
            "--transactional-id",
            &unique_name("txn-proxied"),
            "--abort-input",
            &abort_path,
            "--timeout",
            "20",
        ],
    )
    .await;
    eprintln!("transactions directly on the broker: {direct}\nthrough kapsule: {proxied}");
    if direct["transaction_error"].is_null() {
        assert!(
            proxied["transaction_error"].is_null(),
            "the broker supports transactions but Kapsule broke them: {proxied}"
        );
        assert_eq!(proxied["failed"], 0, "{proxied}");
        let (back, errors) = consume_report(
            &kapsule.bootstrap(),
            &t,
            &[
                "--isolation",
                "read_committed",
                "--timeout",
                "15",
                "--idle",
                "5",
            ],
        )
        .await;
        assert!(errors.iter().all(|e| e["retriable"] == true), "{errors:?}");
        let got: Vec<TestRecord> = back
            .into_iter()
            .map(|c| TestRecord {
                partition: None,
                ..c.record
            })
            .collect();
        let direct_back = consume_report(
            &broker.bootstrap(),
            &direct_topic,
            &[
                "--isolation",
                "read_committed",
                "--timeout",
                "15",
                "--idle",
                "5",
            ],
        )
        .await
        .0;
        // Kapsule delivers what the broker delivers for read_committed (decrypted).
        assert_eq!(
            got.len(),
            direct_back.len(),
            "read_committed differs through Kapsule"
        );
        assert!(got.len() >= committed.len());
        assert_eq!(
            &got[..committed.len()],
            &committed[..],
            "committed records decrypt"
        );
        assert_no_plaintext(&read_direct(&broker, &t, committed.len()).await, &cmarkers);
    } else {
        // the broker itself refuses transactions: Kapsule must fail the same way, not differently.
        assert!(
            !proxied["transaction_error"].is_null(),
            "the broker refused transactions ({}) but Kapsule reported success: {proxied}",
            direct["transaction_error"]
        );
        eprintln!(
            "NOTE: the broker does not support transactions here: {}",
            direct["transaction_error"]
        );
    }
}

/// A record that fits the topic's `max.message.bytes` in clear but not once encrypted (the
/// envelope adds bytes) is refused to its producer with Kafka's own MSG_SIZE_TOO_LARGE: never
/// stored in clear, never truncated; a smaller record produced alongside is delivered encrypted.
/// Apache Kafka only (tansu enforces no size limit).
#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_outgrows_max_message_bytes_once_encrypted_is_refused_with_kafkas_error() {
    let broker = Broker::kafka().await.expect("start Apache Kafka");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let limit: usize = 100_000;
    let name = unique_name("whole-limit-");
    broker
        .create_topic_with(&name, 1, &[("max.message.bytes", &limit.to_string())])
        .await
        .unwrap();
    // Clear batch: the value plus ~100 bytes of batch and record framing, under the limit.
    let mut near_limit = TestRecord::kv("near-limit", vec![b'N'; limit - 150]);
    near_limit.timestamp = Some(1_700_000_000_000);
    let small = TestRecord::kv("small", "SMALLMARK");
    // One record per batch (linger 0), so each batch is judged on its own size.
    let report = produce_report(
        &kapsule.bootstrap(),
        &name,
        &[near_limit.clone()],
        &["--config", "linger.ms=0"],
    )
    .await;
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(
        report["results"][0]["name"], "MSG_SIZE_TOO_LARGE",
        "the producer must see Kafka's size error: {report}"
    );
    // The same record goes through directly: only encryption made it too large.
    let direct = unique_name("plain-limit-");
    broker
        .create_topic_with(&direct, 1, &[("max.message.bytes", &limit.to_string())])
        .await
        .unwrap();
    let report = produce_report(&broker.bootstrap(), &direct, &[near_limit], &[]).await;
    assert_eq!(report["delivered"], 1, "fits in clear: {report}");

    ck_produce(
        &kapsule.bootstrap(),
        &name,
        std::slice::from_ref(&small),
        &[],
    )
    .await;
    let stored = read_direct(&broker, &name, 1).await;
    assert_eq!(stored.len(), 1, "only the small record is stored");
    assert!(stored[0].header("kapsule.enc").is_some());
    assert_no_plaintext(&stored, &[b"SMALLMARK".to_vec()]);
    let back = ck_consume(&kapsule.bootstrap(), &name, 1, &[]).await;
    assert_records_match(&[small], &back);
}

/// Fetch read-ahead (on by default) on Apache Kafka with librdkafka, whose fetches are
/// sessionless: with small fetch sizes a consumer reads three partitions of an encrypted topic in
/// many fetches, most answered from responses Kapsule fetched and decrypted ahead. Every record
/// comes back byte for byte, once, in offset order per partition; the consumer then reaches the
/// end of the log, where read-aheads find nothing new. With `fetch_read_ahead: false` the same
/// consumer gets the same records and nothing is read ahead.
#[tokio::test(flavor = "multi_thread")]
async fn read_ahead_fetches_give_every_record_once_and_in_order() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let t = unique_name("whole-read-ahead");
    broker.create_topic(&t, 3).await.expect("create topic");
    let (records, markers) = marked_records("ra", 900);
    // Small producer batches, so each fetch below carries a few batches of one partition.
    ck_produce(
        &kapsule.bootstrap(),
        &t,
        &records,
        &[
            "--config",
            "batch.num.messages=10",
            "--config",
            "linger.ms=0",
        ],
    )
    .await;
    assert_no_plaintext(&read_direct(&broker, &t, records.len()).await, &markers);

    let small_fetches = [
        "--config",
        "max.partition.fetch.bytes=4096",
        "--config",
        "fetch.max.bytes=8192",
        "--config",
        "message.max.bytes=8192",
    ];
    let back = ck_consume(&kapsule.bootstrap(), &t, records.len(), &small_fetches).await;
    assert_records_match(&records, &back);
    assert_in_offset_order(&back, 3, "librdkafka");
    assert_fetches_read_ahead(&kapsule, "librdkafka").await;

    let off = Kapsule::start(
        &broker.bootstrap(),
        encrypting(&kms.yaml(), RULES).with_proxy_setting("fetch_read_ahead: false"),
    )
    .await
    .expect("start kapsule without read-ahead");
    let back = ck_consume(&off.bootstrap(), &t, records.len(), &small_fetches).await;
    assert_records_match(&records, &back);
    let (_, metrics) = off.admin_get("/metrics").await.unwrap();
    assert_eq!(read_ahead_count(&metrics, "sent"), 0);
}

/// `proxy.worker_threads: 1` (the setting docs/deployment.md suggests where Kapsule shares its
/// cores): encryption, decryption on tasks of their own and read-ahead all run on the one worker
/// thread, records are ciphertext at rest and come back byte-exact, and a second client keeps
/// being served while the first consumes.
#[tokio::test(flavor = "multi_thread")]
async fn one_worker_thread_encrypts_decrypts_and_reads_ahead() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = Kapsule::start(
        &broker.bootstrap(),
        encrypting(&kms.yaml(), RULES).with_proxy_setting("worker_threads: 1"),
    )
    .await
    .expect("start kapsule with one worker thread");
    // The log may be coloured: compare its text without the escape sequences.
    let plain = strip_ansi(&kapsule.logs());
    assert!(
        plain.contains("worker_threads=1"),
        "the start-up line reports one worker thread: {plain}"
    );
    let (t, u) = (
        unique_name("whole-one-worker"),
        unique_name("whole-one-worker"),
    );
    for topic in [&t, &u] {
        broker.create_topic(topic, 3).await.expect("create topic");
    }
    let (records, markers) = marked_records("ow", 600);
    let bootstrap = kapsule.bootstrap();
    let small_batches = [
        "--config",
        "batch.num.messages=10",
        "--config",
        "linger.ms=0",
    ];
    // Each call asserts that every record was acknowledged.
    tokio::join!(
        ck_produce(&bootstrap, &t, &records, &small_batches),
        ck_produce(&bootstrap, &u, &records, &small_batches),
    );
    for topic in [&t, &u] {
        assert_no_plaintext(&read_direct(&broker, topic, records.len()).await, &markers);
    }

    let small_fetches = ["--config", "max.partition.fetch.bytes=4096"];
    let (back_t, back_u) = tokio::join!(
        ck_consume(&bootstrap, &t, records.len(), &small_fetches),
        ck_consume(&bootstrap, &u, records.len(), &small_fetches),
    );
    assert_records_match(&records, &back_t);
    assert_records_match(&records, &back_u);
    let (_, metrics) = kapsule.admin_get("/metrics").await.unwrap();
    assert!(
        read_ahead_count(&metrics, "served") > 0,
        "read-ahead answered none of the consumers' fetches with one worker thread"
    );
}
