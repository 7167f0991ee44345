//! The Google Cloud KMS back end (`kms.type: gcp`) against drongo, a server that speaks the Cloud
//! KMS REST API (see `kapsule_integration::gcp_kms` for what it does not do); records produced
//! and consumed with confluent-kafka through Kapsule in front of a real tansu broker. The outage
//! tests shared with Vault and AWS are parameterised in encryption.rs and pipeline.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kapsule::kms::gcp::{GcpKms, GcpKmsConfig};
use kapsule::kms::{Kms, KmsErrorKind};
use kapsule_integration::encryption::assert_no_plaintext;
use kapsule_integration::gcp_kms::{GcpKmsEmulator, KEY_RING};
use kapsule_integration::kms_server::KmsServer;
use kapsule_integration::probe::end_offset;
use kapsule_integration::{Kapsule, KapsuleConfig, RecordsMode, Tansu, TestRecord};

use crate::common::{assert_records_match, ck_consume, ck_produce, kapsule_keys};
use crate::encryption::{marked_records, produce_report, read_direct, topic};

const WAIT: Duration = Duration::from_secs(20);

/// An in-process client configured like [`GcpKmsEmulator::kapsule_yaml`], plus `keys` entries.
fn client(kms: &GcpKmsEmulator, keys: &[(&str, &str)]) -> GcpKms {
    let keys: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|(id, name)| (id.to_string(), (*name).into()))
        .collect();
    let config: GcpKmsConfig = serde_json::from_value(serde_json::json!({
        "endpoint": kms.endpoint(),
        "key_template": format!("{KEY_RING}/cryptoKeys/{{key_id}}"),
        "keys": keys,
        "credential": {"type": "access_token_file", "file": kms.token_file()},
        "timeout_ms": 2000,
        "retries": 2,
    }))
    .unwrap();
    GcpKms::new(&config).unwrap()
}

/// Starts a Kapsule in front of `tansu` using `kms` with `policy`.
async fn start_with(kms: &KmsServer, tansu: &Tansu, policy: &str) -> Kapsule {
    let config = kms.kapsule_config(KapsuleConfig::new(RecordsMode::Reencode), 2_000, 2);
    Kapsule::start(&tansu.bootstrap(), config.with_yaml(policy))
        .await
        .expect("start kapsule")
}

/// Data keys round-trip through a fresh client; an EDEK decrypts only for the key id it was made
/// for, even when another key id maps to the same CryptoKey (the AAD binds it); unknown keys fail
/// at once as `unknown_key`; `key_info` reads the primary version.
#[tokio::test]
async fn gcp_data_keys_round_trip_and_edeks_are_bound_to_their_key_id() {
    let server = GcpKmsEmulator::start().await.unwrap();
    server.create_key("orders").await.unwrap();
    server.create_key("other").await.unwrap();
    let same = format!("{KEY_RING}/cryptoKeys/orders");
    let kms: Arc<dyn Kms> = Arc::new(client(&server, &[("orders-copy", &same)]));

    let dk = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(dk.kek_version, 1);
    let fresh = client(&server, &[]);
    assert_eq!(
        *fresh.decrypt_data_key("orders", &dk.edek).await.unwrap(),
        *dk.plaintext
    );
    assert_eq!(kms.key_info("orders").await.unwrap().latest_version, 1);
    for other in ["orders-copy", "other"] {
        let e = kms.decrypt_data_key(other, &dk.edek).await.unwrap_err();
        assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{other}: {e:?}");
    }
    let t = Instant::now();
    let e = kms.generate_data_key("never-created").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "unknown keys are not retried"
    );
}

/// Two Kapsule instances sharing one Cloud KMS key: records produced through either are
/// ciphertext on the broker and readable through the other (empty caches, nothing shared but the
/// KMS); a topic whose KEK does not exist fails closed with a retriable-free error and nothing
/// written.
#[tokio::test(flavor = "multi_thread")]
async fn gcp_two_kapsules_sharing_one_key_read_each_others_records() {
    let kms = KmsServer::start("gcp").await.unwrap();
    kms.create_key("fleet-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"gcpfleet-\"}\n      key_id: fleet-kek\n      headers: [secret]\n    - topics: {prefix: \"gcpmissing-\"}\n      key_id: missing-kek\n";
    let a = start_with(&kms, &tansu, policy).await;
    let b = start_with(&kms, &tansu, policy).await;
    let t = topic(&tansu, "gcpfleet-").await;
    let (from_a, markers_a) = marked_records("gcp-a", 20);
    let (from_b, markers_b) = marked_records("gcp-b", 20);
    ck_produce(&a.bootstrap(), &t, &from_a, &[]).await;
    ck_produce(&b.bootstrap(), &t, &from_b, &[]).await;
    let all: Vec<TestRecord> = from_a.iter().chain(&from_b).cloned().collect();

    let stored = read_direct(&tansu, &t, all.len()).await;
    // Values and the `secret` header are encrypted; record keys stay clear (no `macSign` here).
    let markers: Vec<Vec<u8>> = [markers_a, markers_b]
        .concat()
        .into_iter()
        .filter(|m| !m.starts_with(b"KEYMARK-"))
        .collect();
    assert_no_plaintext(&stored, &markers);
    assert!(stored.iter().all(|r| r.header("kapsule.enc").is_some()));
    for reader in [&a, &b] {
        let back = ck_consume(&reader.bootstrap(), &t, all.len(), &[]).await;
        assert_records_match(&all, &back);
    }

    let missing = topic(&tansu, "gcpmissing-").await;
    let (records, _) = marked_records("gcp-missing", 3);
    let out = produce_report(
        &a.bootstrap(),
        &missing,
        &records,
        &["--timeout", "10", "--config", "retries=0"],
    )
    .await;
    assert_eq!(out["delivered"], 0, "{out}");
    assert_eq!(
        end_offset(&tansu.bootstrap(), &missing, WAIT)
            .await
            .unwrap(),
        0
    );
    let log = a.logs();
    assert!(log.contains("unknown_key"), "{log}");
    assert!(
        !log.contains("kapsule-rig-access-token"),
        "token in the log"
    );
}

/// `kapsule keys list` and `describe` against drongo, as an operator runs them: the key ring's
/// keys whose name `key_template` makes, with their primary version and its state; a key of
/// another purpose (MAC) and keys outside the template left out; every `keys` entry listed, a
/// missing one as `unknown_key`; `describe` names a missing key.
#[tokio::test(flavor = "multi_thread")]
async fn gcp_keys_list_and_describe_show_template_and_mapped_keys() {
    let server = GcpKmsEmulator::start().await.unwrap();
    server.create_key("kapsule-orders").await.unwrap();
    server.create_key("kapsule-payments").await.unwrap();
    server
        .create_key_with_purpose("kapsule-orders-mac", "MAC")
        .await
        .unwrap();
    server.create_key("unrelated").await.unwrap();
    let yaml = server.kapsule_yaml(2_000, 0).replace(
        "/cryptoKeys/{key_id}",
        "/cryptoKeys/kapsule-{key_id}",
    ) + &format!(
        "  keys: {{ legacy: \"{KEY_RING}/cryptoKeys/unrelated\", gone: \"{KEY_RING}/cryptoKeys/never-created\" }}\n"
    );
    let config = KapsuleConfig::new(RecordsMode::Reencode).with_yaml(&yaml);
    let (ok, stdout, stderr) = kapsule_keys(&config, &["list"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("gone\tv1\t{KEY_RING}/cryptoKeys/never-created\tunknown_key"),
            format!("legacy\tv1\t{KEY_RING}/cryptoKeys/unrelated\tENABLED"),
            format!("orders\tv1\t{KEY_RING}/cryptoKeys/kapsule-orders\tENABLED"),
            format!("payments\tv1\t{KEY_RING}/cryptoKeys/kapsule-payments\tENABLED"),
        ],
        "{stdout}"
    );

    let (ok, stdout, stderr) = kapsule_keys(&config, &["describe", "orders"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "orders\tgcp\tv1");
    let (ok, _, stderr) = kapsule_keys(&config, &["describe", "never-created"]);
    assert!(!ok);
    assert!(stderr.contains("unknown_key"), "{stderr}");
    // A key of another purpose is named as such.
    let (ok, _, stderr) = kapsule_keys(&config, &["describe", "orders-mac"]);
    assert!(!ok);
    assert!(stderr.contains("ENCRYPT_DECRYPT"), "{stderr}");
}
