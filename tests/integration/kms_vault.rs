//! The Vault/OpenBao KMS against a real OpenBao dev server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kapsule::crypto::keys::{DekConfig, DekManager};
use kapsule::crypto::{DecryptOptions, RecordEncryptor};
use kapsule::kafka::records::{Record, RecordBatch};
use kapsule::kms::vault::{VaultKms, VaultKmsConfig};
use kapsule::kms::{DeriveRequest, Kms, KmsErrorKind};
use kapsule::plan::{EncryptionPlan, RecordDecision, ValuePart};
use kapsule_integration::openbao::{OpenBao, ROOT_TOKEN};
use kapsule_integration::{KapsuleConfig, RecordsMode};

use crate::common::kapsule_keys;

fn kms_for(
    bao: &OpenBao,
    token: &str,
    timeout_ms: u64,
    retries: u32,
) -> (VaultKms, tempfile::NamedTempFile) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let cfg = VaultKmsConfig {
        address: bao.address(),
        token_env: None,
        token_file: Some(token_file.path().to_owned()),
        mount: "transit".into(),
        namespace: None,
        ca_cert: None,
        timeout_ms,
        retries,
        auth: None,
    };
    let mut problems = Vec::new();
    cfg.validate("kms", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    (VaultKms::new(&cfg).unwrap(), token_file)
}

fn edek_version(edek: &[u8]) -> String {
    std::str::from_utf8(edek)
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The least-privilege policy documented in docs/kms.md (first ```hcl block).
fn documented_policy() -> String {
    let doc = include_str!("../../docs/kms.md");
    let start = doc.find("```hcl\n").expect("docs/kms.md has an hcl block") + 7;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[tokio::test]
async fn vault_datakey_round_trip_and_kek_rotation() {
    let bao = OpenBao::start().unwrap();
    bao.create_key("orders").unwrap();
    // Everything below runs with the documented least-privilege token, not root.
    let token = bao
        .token_with_policy("kapsule", &documented_policy())
        .unwrap();
    let (kms, _tf) = kms_for(&bao, &token, 5000, 2);
    let kms: Arc<dyn Kms> = Arc::new(kms);

    let dk = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(dk.kek_version, 1);
    assert_eq!(edek_version(&dk.edek), "v1");
    let pt = kms.decrypt_data_key("orders", &dk.edek).await.unwrap();
    assert_eq!(*pt, *dk.plaintext);
    assert_eq!(kms.key_info("orders").await.unwrap().latest_version, 1);
    let d1 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    let d1b = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(1)))
        .await
        .unwrap();
    assert_eq!(*d1.material, *d1b.material);

    // Whole records through the encryptor.
    let enc = RecordEncryptor::new(
        kms.clone(),
        DekConfig {
            max_encryptions: 1,
            ..Default::default()
        },
    );
    let plan = RecordDecision::encrypt(EncryptionPlan {
        key_id: "orders".into(),
        value: ValuePart::Whole,
        record_key: true,
        headers: vec![],
    });
    let mk = |v: &str| RecordBatch {
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
            value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![],
        }],
    };
    let mut old = mk("before rotation");
    enc.encrypt_batch("orders", &mut old, std::slice::from_ref(&plan))
        .await
        .unwrap();

    // Rotate the KEK in OpenBao: new DEKs use v2, old EDEKs still decrypt.
    bao.rotate_key("orders").unwrap();
    assert_eq!(kms.key_info("orders").await.unwrap().latest_version, 2);
    let mgr = DekManager::new(
        kms.clone(),
        DekConfig::default(),
        Arc::new(Default::default()),
    );
    let r = mgr.reserve("orders", "orders", 1, 1).await.unwrap();
    assert_eq!(edek_version(&r.dek.edek), "v2");
    let mut new = mk("after rotation");
    enc.encrypt_batch("orders", &mut new, std::slice::from_ref(&plan))
        .await
        .unwrap();
    let d2 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    assert_eq!(d2.kek_version, 2);
    assert_ne!(*d2.material, *d1.material);

    // A fresh process (empty caches) reads both.
    let (kms2, _tf2) = kms_for(&bao, &token, 5000, 2);
    let reader = RecordEncryptor::new(Arc::new(kms2), DekConfig::default());
    for (mut b, v) in [(old, "before rotation"), (new, "after rotation")] {
        reader
            .decrypt_batch("orders", &mut b, &DecryptOptions::default())
            .await
            .unwrap();
        assert_eq!(b.records[0].value.as_deref(), Some(v.as_bytes()));
        assert_eq!(b.records[0].key.as_deref(), Some(&b"customer-1"[..]));
    }
}

#[tokio::test]
async fn vault_deleted_unknown_and_forbidden_keys_are_not_retried() {
    let bao = OpenBao::start().unwrap();
    bao.create_key("doomed").unwrap();
    let (kms, _tf) = kms_for(&bao, "root", 5000, 3);
    let dk = kms.generate_data_key("doomed").await.unwrap();
    bao.delete_key("doomed").unwrap();
    let t = Instant::now();
    let e = kms.decrypt_data_key("doomed", &dk.edek).await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e}");
    assert!(!e.is_retriable());
    let e = kms.generate_data_key("never-created").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e}");
    let e = kms.key_info("never-created").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "unknown keys must not be retried"
    );

    // A token limited to one key cannot use another.
    bao.create_key("allowed").unwrap();
    bao.create_key("other").unwrap();
    let policy = documented_policy().replace("/*\"", "/allowed\"");
    let token = bao.token_with_policy("one-key", &policy).unwrap();
    let (limited, _tf2) = kms_for(&bao, &token, 5000, 3);
    limited.generate_data_key("allowed").await.unwrap();
    let e = limited.generate_data_key("other").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::PermissionDenied, "{e}");
    // A tampered EDEK is an invalid ciphertext, not a transient error.
    let dk = limited.generate_data_key("allowed").await.unwrap();
    let mut bad = dk.edek.clone();
    let n = bad.len();
    bad[n - 2] = if bad[n - 2] == b'A' { b'B' } else { b'A' };
    let e = limited.decrypt_data_key("allowed", &bad).await.unwrap_err();
    assert!(
        matches!(
            e.kind,
            KmsErrorKind::InvalidCiphertext | KmsErrorKind::Other
        ),
        "{e}"
    );
    assert!(!e.is_retriable());
}

#[tokio::test]
async fn vault_outage_is_transient_and_recovers() {
    let mut bao = OpenBao::start().unwrap();
    bao.create_key("k").unwrap();
    let (kms, _tf) = kms_for(&bao, "root", 300, 1);
    let dk = kms.generate_data_key("k").await.unwrap();

    // Unresponsive server: timeouts, classified transient, retried once.
    bao.pause().unwrap();
    let t = Instant::now();
    let e = kms.decrypt_data_key("k", &dk.edek).await.unwrap_err();
    bao.resume().unwrap();
    assert_eq!(e.kind, KmsErrorKind::Transient, "{e}");
    assert!(e.message.contains("after 2 attempts"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // Works again once the server answers, same keys.
    assert_eq!(
        *kms.decrypt_data_key("k", &dk.edek).await.unwrap(),
        *dk.plaintext
    );

    // Server down: connection refused, transient.
    bao.kill();
    let e = kms.generate_data_key("k").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Transient, "{e}");
    // Restarted (dev mode starts empty): works again once the key exists.
    bao.restart().unwrap();
    bao.create_key("k").unwrap();
    let dk2 = kms.generate_data_key("k").await.unwrap();
    assert_eq!(
        *kms.decrypt_data_key("k", &dk2.edek).await.unwrap(),
        *dk2.plaintext
    );
}

/// The grant `kapsule keys list` needs besides the proxy's least privilege (docs/kms.md, second
/// ```hcl block).
fn documented_list_grant() -> String {
    let doc = include_str!("../../docs/kms.md");
    let first = doc.find("```hcl\n").expect("docs/kms.md has an hcl block") + 7;
    let start = first + doc[first..].find("```hcl\n").expect("a second hcl block") + 7;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

/// A Kapsule config whose `kms:` section is `bao` with `token` (in a file kept by the guard).
fn vault_config(bao: &OpenBao, token: &str) -> (KapsuleConfig, tempfile::NamedTempFile) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), token).unwrap();
    let yaml = format!(
        "kms:\n  type: vault\n  address: \"{}\"\n  token_file: \"{}\"\n  timeout_ms: 2000\n  retries: 0\n",
        bao.address(),
        token_file.path().display()
    );
    (
        KapsuleConfig::new(RecordsMode::Reencode).with_yaml(&yaml),
        token_file,
    )
}

/// `kapsule keys list` and `describe` against OpenBao transit, as an operator runs them: every
/// transit key of the mount with its latest version and type; versions trimmed below
/// `min_decryption_version` and keys Kapsule cannot use (RSA) are named. The proxy's
/// least-privilege token may not list (a permission problem, said so); with the documented
/// `list` grant added it may.
#[tokio::test(flavor = "multi_thread")]
async fn vault_keys_list_and_describe_show_every_transit_key_as_an_operator_sees_it() {
    let bao = OpenBao::start().unwrap();
    let (root, _root_file) = vault_config(&bao, ROOT_TOKEN);
    // An empty mount lists nothing (Vault answers 404), and is no error.
    let (ok, stdout, stderr) = kapsule_keys(&root, &["list"]);
    assert!(ok && stdout.is_empty(), "{stdout}{stderr}");

    bao.create_key("orders").unwrap();
    bao.rotate_key("orders").unwrap();
    bao.rotate_key("orders").unwrap();
    bao.cli(&[
        "write",
        "transit/keys/orders/config",
        "min_decryption_version=2",
    ])
    .unwrap();
    bao.create_key("payments").unwrap();
    bao.cli(&["write", "-f", "transit/keys/signing", "type=rsa-2048"])
        .unwrap();
    let expected = [
        "orders\tv3\ttransit/keys/orders\taes256-gcm96, decrypts v2..v3",
        "payments\tv1\ttransit/keys/payments\taes256-gcm96",
        "signing\tv1\ttransit/keys/signing\trsa-2048: Kapsule needs aes256-gcm96",
    ];
    let (ok, stdout, stderr) = kapsule_keys(&root, &["list"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");

    let (ok, stdout, stderr) = kapsule_keys(&root, &["describe", "orders"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "orders\tvault\tv3");
    let (ok, _, stderr) = kapsule_keys(&root, &["describe", "never-created"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown_key")
            && stderr.contains("vault write -f transit/keys/never-created"),
        "{stderr}"
    );

    let least = bao
        .token_with_policy("kapsule", &documented_policy())
        .unwrap();
    let (least, _least_file) = vault_config(&bao, &least);
    let (ok, stdout, stderr) = kapsule_keys(&least, &["list"]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("permission_denied") && stderr.contains("docs/kms.md"),
        "{stderr}"
    );
    // `describe` needs no more than the proxy itself.
    let (ok, stdout, stderr) = kapsule_keys(&least, &["describe", "orders"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "orders\tvault\tv3");

    let lister = bao
        .token_with_policy(
            "kapsule-lister",
            &(documented_policy() + &documented_list_grant()),
        )
        .unwrap();
    let (lister, _lister_file) = vault_config(&bao, &lister);
    let (ok, stdout, stderr) = kapsule_keys(&lister, &["list"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
}
