//! The AWS KMS back end (`kms.type: aws`) against local-kms, a server that speaks the AWS KMS API
//! and enforces key states as AWS does; records produced and consumed with confluent-kafka
//! through Kapsule in front of a real tansu broker. The outage tests shared with Vault are
//! parameterised in encryption.rs and pipeline.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kapsule::crypto::keys::DekConfig;
use kapsule::crypto::{DecryptOptions, RecordEncryptor};
use kapsule::kafka::records::{Record, RecordBatch};
use kapsule::kms::aws::{AwsKms, AwsKmsConfig};
use kapsule::kms::{DeriveRequest, Kms, KmsErrorKind};
use kapsule::plan::{EncryptionPlan, RecordDecision, ValuePart};
use kapsule_integration::aws_kms::{LocalAwsKms, REGION, TEST_CREDENTIALS};
use kapsule_integration::encryption::assert_no_plaintext;
use kapsule_integration::kms_server::KmsServer;
use kapsule_integration::probe::end_offset;
use kapsule_integration::{Kapsule, KapsuleConfig, RecordsMode, Tansu, TestRecord};

use crate::common::{assert_records_match, ck_consume, ck_produce, kapsule_keys};
use crate::encryption::{marked_records, produce_report, read_direct, topic};

const WAIT: Duration = Duration::from_secs(20);

/// An in-process client of `kms` (static test credentials from this process's environment),
/// configured like [`LocalAwsKms::kapsule_yaml`], plus one `keys` entry if given.
fn client(kms: &LocalAwsKms, extra_key: Option<(&str, &str)>) -> AwsKms {
    for (k, v) in TEST_CREDENTIALS {
        // The same values in every test: the SDK's environment provider reads them per call.
        std::env::set_var(k, v);
    }
    let mut config = serde_json::json!({
        "region": REGION,
        "endpoint": kms.endpoint(),
        "key_template": "alias/{key_id}",
        "mac_key_template": "alias/{key_id}-mac",
        "timeout_ms": 2000,
        "retries": 2,
    });
    if let Some((id, reference)) = extra_key {
        config["keys"] = serde_json::json!({ id: reference });
    }
    let config: AwsKmsConfig = serde_json::from_value(config).unwrap();
    AwsKms::new(&config).unwrap()
}

/// Starts a Kapsule in front of `tansu` using `kms` with `policy`.
async fn start_with(
    kms: &KmsServer,
    tansu: &Tansu,
    timeout_ms: u64,
    retries: u32,
    policy: &str,
) -> Kapsule {
    let config = kms.kapsule_config(
        KapsuleConfig::new(RecordsMode::Reencode),
        timeout_ms,
        retries,
    );
    Kapsule::start(&tansu.bootstrap(), config.with_yaml(policy))
        .await
        .expect("start kapsule")
}

fn one_record_batch(value: &str) -> RecordBatch {
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes: 0,
        last_offset_delta: 0,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: vec![Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: Some(bytes::Bytes::from_static(b"customer-1")),
            value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
            headers: vec![],
        }],
    }
}

/// Data keys, derived keys and whole records (value and record key) round-trip through a fresh
/// client; an EDEK only decrypts for the key id it was made for, even when another key id maps
/// to the same AWS key (the encryption context binds it); unknown keys fail at once.
#[tokio::test]
async fn aws_data_keys_and_records_round_trip_and_edeks_are_bound_to_their_key_id() {
    let server = LocalAwsKms::start().await.unwrap();
    server.create_key("orders").await.unwrap();
    server.create_key("other").await.unwrap();
    let kms: Arc<dyn Kms> = Arc::new(client(&server, Some(("orders-alias", "alias/orders"))));

    let dk = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(dk.kek_version, 1);
    let again = kms.decrypt_data_key("orders", &dk.edek).await.unwrap();
    assert_eq!(*again, *dk.plaintext);
    assert_eq!(kms.key_info("orders").await.unwrap().latest_version, 1);
    let d1 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    let d2 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(1)))
        .await
        .unwrap();
    assert_eq!(*d1.material, *d2.material);
    assert_ne!(
        *kms.derive_key(DeriveRequest::new("orders", b"other ctx", None))
            .await
            .unwrap()
            .material,
        *d1.material
    );

    // Same AWS key under another Kapsule key id, and another AWS key: both refused.
    let e = kms
        .decrypt_data_key("orders-alias", &dk.edek)
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e:?}");
    let e = kms.decrypt_data_key("other", &dk.edek).await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e:?}");
    let t = Instant::now();
    let e = kms.generate_data_key("never-created").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "unknown keys are not retried"
    );

    // Whole records (value and record key) through the encryptor; a fresh client reads them.
    let enc = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let plan = RecordDecision::encrypt(EncryptionPlan {
        key_id: "orders".into(),
        value: ValuePart::Whole,
        record_key: true,
        headers: vec![],
    });
    let mut batch = one_record_batch("secret value");
    enc.encrypt_batch("orders", &mut batch, std::slice::from_ref(&plan))
        .await
        .unwrap();
    assert_ne!(
        batch.records[0].value.as_deref(),
        Some(&b"secret value"[..])
    );
    let fresh = RecordEncryptor::new(Arc::new(client(&server, None)), DekConfig::default());
    fresh
        .decrypt_batch("orders", &mut batch, &DecryptOptions::default())
        .await
        .unwrap();
    assert_eq!(
        batch.records[0].value.as_deref(),
        Some(&b"secret value"[..])
    );
    assert_eq!(batch.records[0].key.as_deref(), Some(&b"customer-1"[..]));
}

/// Two Kapsule instances sharing one AWS KEK: records produced through either are ciphertext on
/// the broker and readable through the other (empty caches, no shared state but the KMS).
#[tokio::test(flavor = "multi_thread")]
async fn aws_two_kapsules_sharing_one_kek_read_each_others_records() {
    let kms = KmsServer::start("aws").await.unwrap();
    kms.create_key("fleet-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"awsfleet-\"}\n      key_id: fleet-kek\n      record_key: true\n      headers: [secret]\n";
    let a = start_with(&kms, &tansu, 2_000, 2, policy).await;
    let b = start_with(&kms, &tansu, 2_000, 2, policy).await;
    let t = topic(&tansu, "awsfleet-").await;
    let (from_a, markers_a) = marked_records("aws-a", 20);
    let (from_b, markers_b) = marked_records("aws-b", 20);
    ck_produce(&a.bootstrap(), &t, &from_a, &[]).await;
    ck_produce(&b.bootstrap(), &t, &from_b, &[]).await;
    let all: Vec<TestRecord> = from_a.iter().chain(&from_b).cloned().collect();

    let stored = read_direct(&tansu, &t, all.len()).await;
    assert_no_plaintext(&stored, &[markers_a, markers_b].concat());
    assert!(stored.iter().all(|r| r.header("kapsule.enc").is_some()));
    for reader in [&a, &b] {
        let back = ck_consume(&reader.bootstrap(), &t, all.len(), &[]).await;
        assert_records_match(&all, &back);
    }
    for k in [&a, &b] {
        assert!(!k.logs().contains("KMS call failed"), "{}", k.logs());
    }
}

/// A KEK that is disabled, or scheduled for deletion, before any DEK of it is cached: produce
/// fails closed with a retriable error and nothing reaches the broker; once the key is usable
/// again the same producer writes (the refusal is not cached).
#[tokio::test(flavor = "multi_thread")]
async fn aws_disabled_or_deleted_kek_fails_produce_closed_until_it_is_usable_again() {
    let server = KmsServer::start("aws").await.unwrap();
    let KmsServer::Aws(aws) = &server else {
        unreachable!()
    };
    let disabled = aws.create_key("off-kek").await.unwrap();
    let doomed = aws.create_key("doomed-kek").await.unwrap();
    aws.disable_key(&disabled).await.unwrap();
    aws.schedule_deletion(&doomed).await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"awsoff-\"}\n      key_id: off-kek\n    - topics: {prefix: \"awsdoomed-\"}\n      key_id: doomed-kek\n";
    let kapsule = start_with(&server, &tansu, 2_000, 3, policy).await;

    let mut topics = Vec::new();
    for (prefix, code) in [
        ("awsoff-", "DisabledException"),
        ("awsdoomed-", "KMSInvalidStateException"),
    ] {
        let t = topic(&tansu, prefix).await;
        let (records, _) = marked_records(prefix, 3);
        let started = Instant::now();
        let out = produce_report(
            &kapsule.bootstrap(),
            &t,
            &records,
            &["--timeout", "10", "--config", "retries=0"],
        )
        .await;
        assert_eq!(out["delivered"], 0, "{prefix}: {out}");
        let first = &out["results"][0];
        // A retriable Kafka error code (librdkafka flags it non-retriable only because
        // retries=0 leaves it none).
        assert_eq!(first["name"], "REQUEST_TIMED_OUT", "{prefix}: {out}");
        assert!(started.elapsed() < Duration::from_secs(30), "{prefix}");
        assert_eq!(
            end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(),
            0,
            "{prefix}"
        );
        assert!(
            kapsule.logs().contains(code),
            "{prefix}: {}",
            kapsule.logs()
        );
        topics.push((t, records));
    }
    let log = kapsule.logs();
    assert!(
        !log.contains("kapsule-rig-secret"),
        "credentials in the log"
    );

    // Usable again: the same topics take records (no refusal was remembered).
    aws.enable_key(&disabled).await.unwrap();
    aws.cancel_deletion(&doomed).await.unwrap();
    aws.enable_key(&doomed).await.unwrap();
    for (t, records) in &topics {
        ck_produce(&kapsule.bootstrap(), t, records, &[]).await;
        let back = ck_consume(&kapsule.bootstrap(), t, records.len(), &[]).await;
        assert_records_match(records, &back);
    }
}

/// The KMS process dies: produce fails closed (retriable, nothing on the broker), Kapsule stays
/// up and ready, and once the KMS is back with its keys the same client writes and reads again.
#[tokio::test(flavor = "multi_thread")]
async fn aws_kms_down_fails_closed_and_kapsule_recovers_when_it_returns() {
    let mut server = KmsServer::start("aws").await.unwrap();
    server.create_key("down-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"awsdown-\"}\n      key_id: down-kek\n      record_key: true\n      headers: [secret]\n";
    let mut kapsule = start_with(&server, &tansu, 1_000, 2, policy).await;
    let KmsServer::Aws(aws) = &mut server else {
        unreachable!()
    };
    aws.kill();

    let t = topic(&tansu, "awsdown-").await;
    let (records, markers) = marked_records("down", 5);
    let out = produce_report(
        &kapsule.bootstrap(),
        &t,
        &records,
        &["--timeout", "10", "--config", "retries=0"],
    )
    .await;
    assert_eq!(out["delivered"], 0, "{out}");
    // A retriable Kafka error code (non-retriable for librdkafka only because retries=0).
    assert_eq!(out["results"][0]["name"], "REQUEST_TIMED_OUT", "{out}");
    assert_eq!(end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(), 0);
    kapsule
        .ensure_alive()
        .await
        .expect("kapsule survived the KMS outage");
    let (status, _) = kapsule.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = kapsule.admin_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kapsule_kms_calls_total") && l.contains("transient")),
        "{metrics}"
    );

    aws.restart().await.unwrap();
    ck_produce(&kapsule.bootstrap(), &t, &records, &[]).await;
    let stored = read_direct(&tansu, &t, records.len()).await;
    assert_no_plaintext(&stored, &markers);
    let back = ck_consume(&kapsule.bootstrap(), &t, records.len(), &[]).await;
    assert_records_match(&records, &back);
}

/// `kapsule keys describe` looks a KEK up in AWS KMS with the config's mapping and credentials,
/// and names the problem when the key does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn aws_keys_describe_finds_existing_keys_and_names_missing_ones() {
    let kms = KmsServer::start("aws").await.unwrap();
    kms.create_key("described-kek").await.unwrap();
    let config = kms.kapsule_config(KapsuleConfig::new(RecordsMode::Reencode), 2_000, 0);
    let (ok, stdout, stderr) = kapsule_keys(&config, &["describe", "described-kek"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "described-kek\taws\tv1");
    let (ok, _, stderr) = kapsule_keys(&config, &["describe", "missing-kek"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown_key") && stderr.contains("NotFoundException"),
        "{stderr}"
    );
}

/// `kapsule keys list` with AWS KMS lists the keys the config reaches — the aliases
/// `key_template` produces (not their `-mac` HMAC keys, not aliases outside the template) and
/// every `keys` entry — with their AWS key state; a missing mapped key is named, not skipped.
#[tokio::test(flavor = "multi_thread")]
async fn aws_keys_list_shows_template_aliases_and_mapped_keys_with_their_state() {
    let server = KmsServer::start("aws").await.unwrap();
    let KmsServer::Aws(aws) = &server else {
        unreachable!()
    };
    aws.create_key("listed-a").await.unwrap();
    let b = aws.create_key("listed-b").await.unwrap();
    aws.disable_key(&b).await.unwrap();
    let outside = aws.create_key("elsewhere").await.unwrap();
    let yaml = aws.kapsule_yaml(2_000, 0).replace(
        "key_template: \"alias/{key_id}\"",
        "key_template: \"alias/listed-{key_id}\"",
    ) + &format!("  keys: {{ mapped: \"{outside}\", gone: \"alias/never-created\" }}\n");
    let config = TEST_CREDENTIALS.iter().fold(
        KapsuleConfig::new(RecordsMode::Reencode).with_yaml(&yaml),
        |c, (k, v)| c.with_env(k, v),
    );
    let (ok, stdout, stderr) = kapsule_keys(&config, &["list"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "a\tv1\talias/listed-a\tEnabled",
            "b\tv1\talias/listed-b\tDisabled",
            "gone\tv1\talias/never-created\tunknown_key",
            &format!("mapped\tv1\t{outside}\tEnabled"),
        ],
        "{stdout}"
    );
}
