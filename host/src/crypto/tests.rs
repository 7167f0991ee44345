//! Tests of the record encryptor: round trips, binding (tamper) tests, failure modes, golden
//! vectors.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::primitives::{Dek, RecordKeyCipher};
use super::record::{testing, RecordFormat};
use super::wire::AadScheme;
use super::*;
use crate::crypto::keys::DekConfig;
use crate::kafka::records::{Record, RecordBatch, RecordHeader};
use crate::kms::local::LocalKms;
use crate::kms::memory::MemoryKms;
use crate::kms::KmsErrorKind;
use crate::plan::{EncryptionPlan, RecordDecision, ValuePart};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn hdr(k: &str, v: Option<&str>) -> RecordHeader {
    RecordHeader {
        key: b(k),
        value: v.map(b),
    }
}

fn rec(key: Option<&str>, value: Option<&str>, headers: Vec<RecordHeader>) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: 0,
        key: key.map(b),
        value: value.map(b),
        headers,
    }
}

/// A batch of `records` with offset deltas 0, 1, ...; shared by the record-path tests.
pub(in crate::crypto) fn batch(records: Vec<Record>) -> RecordBatch {
    let mut records = records;
    for (i, r) in records.iter_mut().enumerate() {
        r.offset_delta = i as i32;
    }
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records,
    }
}

fn plan(value: ValuePart, key: bool, headers: &[&str]) -> EncryptionPlan {
    EncryptionPlan {
        key_id: "k1".into(),
        value,
        record_key: key,
        headers: headers.iter().map(|s| s.to_string()).collect(),
    }
}

fn whole() -> RecordDecision {
    RecordDecision::encrypt(plan(ValuePart::Whole, true, &["h", "a", "b"]))
}

fn fields(ptrs: &[&str]) -> RecordDecision {
    RecordDecision::encrypt(plan(
        ValuePart::JsonFields(ptrs.iter().map(|s| s.to_string()).collect()),
        false,
        &[],
    ))
}

/// A KMS with KEK `k1` and an encryptor whose DEKs rotate after every encryption.
fn setup_rotating_every_encryption() -> (Arc<MemoryKms>, RecordEncryptor) {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = RecordEncryptor::new(
        kms.clone(),
        DekConfig {
            max_encryptions: 1,
            ..Default::default()
        },
    );
    (kms, enc)
}

fn setup() -> (Arc<MemoryKms>, RecordEncryptor) {
    let kms = Arc::new(MemoryKms::with_keys(&["k1", "k2"]));
    let enc = RecordEncryptor::new(kms.clone(), DekConfig::default());
    (kms, enc)
}

const STRICT: DecryptOptions<'static> = DecryptOptions {
    on_failure: DecryptFailure::Error,
    require_encrypted: false,
    allowed_kek: None,
};

const JSON: &str =
    r#"{"id": 7, "name":"Ada", "card": {"number": "4111", "cvv": 123}, "tags":["x","y"]}"#;

#[tokio::test]
async fn round_trip_of_every_part_kind() {
    let (_, enc) = setup();
    let original = batch(vec![
        rec(
            Some("user-1"),
            Some("hello world"),
            vec![
                hdr("h", Some("one")),
                hdr("c", Some("clear")),
                hdr("h", None),
                hdr("h", Some("two")),
            ],
        ),
        rec(None, Some(JSON), vec![]),
        rec(Some("user-2"), None, vec![]),
        rec(Some("user-3"), Some("passes"), vec![]),
        rec(None, Some(""), vec![hdr("a", Some(""))]),
    ]);
    let decisions = vec![
        whole(),
        fields(&["/name", "/card", "/tags/1", "/missing"]),
        whole(),
        RecordDecision::Pass,
        whole(),
    ];
    let mut enc_batch = original.clone();
    let stats = enc
        .encrypt_batch("orders", &mut enc_batch, &decisions)
        .await
        .unwrap();
    assert_eq!(stats.records_encrypted, 4);
    assert_eq!(stats.records_passed, 1);
    assert!(batch_has_encrypted_records(&enc_batch));

    let r0 = &enc_batch.records[0];
    assert_ne!(r0.key, original.records[0].key);
    assert_ne!(r0.value, original.records[0].value);
    assert_eq!(r0.headers.len(), 5);
    assert_eq!(r0.headers[1], hdr("c", Some("clear")));
    assert_eq!(r0.headers[2], hdr("h", None));
    assert_ne!(r0.headers[0].value, Some(b("one")));
    assert_eq!(r0.headers[4].key, b(HEADER_KEY));

    // JSON stays valid JSON, untouched fields keep their exact bytes.
    let v1 = enc_batch.records[1].value.clone().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&v1).unwrap();
    assert_eq!(doc["id"], 7);
    assert!(doc["name"].as_str().unwrap().starts_with("kapsule:v1:"));
    assert!(doc["card"].as_str().unwrap().starts_with("kapsule:v1:"));
    assert_eq!(doc["tags"][0], "x");
    assert!(doc["tags"][1].as_str().unwrap().starts_with("kapsule:v1:"));
    assert!(std::str::from_utf8(&v1)
        .unwrap()
        .starts_with(r#"{"id": 7, "name":"kapsule:v1:"#));

    // Tombstone stays null but its key is encrypted (compaction still works).
    assert_eq!(enc_batch.records[2].value, None);
    assert_ne!(enc_batch.records[2].key, original.records[2].key);
    assert_eq!(enc_batch.records[3], original.records[3]);

    let mut dec = enc_batch.clone();
    let st = enc
        .decrypt_batch("orders", &mut dec, &STRICT)
        .await
        .unwrap();
    assert_eq!(dec, original);
    assert_eq!(st.records_decrypted, 4);
    assert_eq!(st.records_plain, 1);
    assert!(st.plaintext_bytes > 0);

    let mut text = String::new();
    enc.metrics().render_prometheus(&mut text);
    assert!(
        text.contains("kapsule_records_encrypted_total{topic=\"orders\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("kapsule_records_decrypted_total{topic=\"orders\"} 4"),
        "{text}"
    );
}

#[tokio::test]
async fn record_keys_are_deterministic_per_topic_across_dek_rotation() {
    let (kms, enc) = setup_rotating_every_encryption();
    let mk = || {
        batch(vec![
            rec(Some("same"), Some("v1"), vec![]),
            rec(Some("same"), Some("v2"), vec![]),
            rec(Some("other"), Some("v3"), vec![]),
        ])
    };
    let d = vec![whole(), whole(), whole()];
    let mut a = mk();
    enc.encrypt_batch("t", &mut a, &d).await.unwrap();
    let mut a2 = mk();
    enc.encrypt_batch("t", &mut a2, &d).await.unwrap();
    let mut c = mk();
    enc.encrypt_batch("t2", &mut c, &d).await.unwrap();
    assert_eq!(a.records[0].key, a.records[1].key);
    assert_eq!(a.records[0].key, a2.records[0].key);
    assert_ne!(a.records[0].key, a.records[2].key);
    assert_ne!(a.records[0].key, c.records[0].key);
    // Values use different DEKs (rotation every encryption) and so differ.
    assert_ne!(a.records[0].value, a2.records[0].value);
    assert!(kms.generate_calls.load(Ordering::SeqCst) >= 6);
    // A fresh encryptor (another proxy instance) produces the same key ciphertext.
    let enc2 = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let mut e = mk();
    enc2.encrypt_batch("t", &mut e, &d).await.unwrap();
    assert_eq!(e.records[0].key, a.records[0].key);
}

/// Encrypts two records and returns (encryptor, encrypted batch).
async fn two_records(decision: RecordDecision) -> (RecordEncryptor, RecordBatch) {
    two_records_in(RecordFormat::default(), decision).await
}

/// The whole-value revisions a writer can be configured to write (revision 3 is the default).
fn whole_value_formats() -> [RecordFormat; 2] {
    [3, 1].map(|whole_value_revision| RecordFormat {
        whole_value_revision,
    })
}

/// [`two_records`] written in `format`.
async fn two_records_in(
    format: RecordFormat,
    decision: RecordDecision,
) -> (RecordEncryptor, RecordBatch) {
    let (_, enc) = setup();
    let enc = enc.with_record_format(format);
    let mut bt = batch(vec![
        rec(
            Some("k-a"),
            Some(JSON),
            vec![hdr("a", Some("alpha")), hdr("b", Some("beta"))],
        ),
        rec(
            Some("k-b"),
            Some(JSON),
            vec![hdr("a", Some("gamma")), hdr("b", Some("delta"))],
        ),
    ]);
    enc.encrypt_batch("orders", &mut bt, &[decision.clone(), decision])
        .await
        .unwrap();
    (enc, bt)
}

/// Decrypts `bt` strictly, expecting a failure, and returns it.
async fn decrypt_error(enc: &RecordEncryptor, topic: &str, mut bt: RecordBatch) -> DecryptError {
    enc.decrypt_batch(topic, &mut bt, &STRICT)
        .await
        .unwrap_err()
}

async fn expect_integrity(enc: &RecordEncryptor, topic: &str, mut bt: RecordBatch, what: &str) {
    let before = bt.clone();
    let e = enc
        .decrypt_batch(topic, &mut bt, &STRICT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, DecryptError::Integrity { .. }),
        "{what}: expected integrity failure, got {e}"
    );
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 2);
    assert_eq!(bt, before, "{what}: batch modified on error");
}

#[tokio::test]
async fn ciphertext_moved_to_another_topic_fails() {
    let (enc, bt) = two_records(whole()).await;
    expect_integrity(&enc, "payments", bt.clone(), "other topic").await;
    // Key ciphertext is bound too (the SIV key is per topic).
    let mut only_key = bt;
    for r in &mut only_key.records {
        r.value = None;
    }
    let e = decrypt_error(&enc, "payments", only_key).await;
    assert!(matches!(e, DecryptError::Integrity { .. }), "{e}");
}

#[tokio::test]
async fn values_swapped_between_records_fail() {
    let (enc, bt) = two_records(whole()).await;
    let mut swapped = bt.clone();
    swapped.records[0].value = bt.records[1].value.clone();
    swapped.records[1].value = bt.records[0].value.clone();
    expect_integrity(&enc, "orders", swapped, "values swapped").await;
    // Same with equal record keys: the per-record id still binds the value.
    let (_, enc2) = setup();
    let mut same = batch(vec![
        rec(Some("k"), Some("v0"), vec![]),
        rec(Some("k"), Some("v1"), vec![]),
    ]);
    enc2.encrypt_batch("orders", &mut same, &[whole(), whole()])
        .await
        .unwrap();
    assert_eq!(same.records[0].key, same.records[1].key);
    let mut s2 = same.clone();
    s2.records[0].value = same.records[1].value.clone();
    expect_integrity(&enc2, "orders", s2, "values swapped, equal keys").await;
    // Keys swapped (descriptor and values stay): value AAD binds the wire key.
    let mut keys = bt.clone();
    keys.records[0].key = bt.records[1].key.clone();
    expect_integrity(&enc, "orders", keys, "keys swapped").await;
}

#[tokio::test]
async fn edited_descriptor_fails() {
    for format in whole_value_formats() {
        edited_descriptor_fails_in(format).await;
    }
}

async fn edited_descriptor_fails_in(format: RecordFormat) {
    let (enc, bt) = two_records_in(format, whole()).await;
    let di = bt.records[0].headers.len() - 1;
    let desc = bt.records[0].headers[di].value.clone().unwrap();
    // Flip one bit in the record id and in the nonce base.
    for pos in [2usize, 18] {
        let mut t = bt.clone();
        let mut d = desc.to_vec();
        d[pos] ^= 1;
        t.records[0].headers[di].value = Some(Bytes::from(d));
        expect_integrity(&enc, "orders", t, &format!("descriptor byte {pos}")).await;
    }
    // Key version edited: the KMS has no such version (or the SIV check fails): refused.
    let mut t = bt.clone();
    let mut d = desc.to_vec();
    d[33] ^= 1;
    t.records[0].headers[di].value = Some(Bytes::from(d));
    let e = decrypt_error(&enc, "orders", t).await;
    assert!(!e.is_retriable(), "{e}");
    // Remove the whole-value flag: the value would be delivered as ciphertext-as-plaintext.
    // Revision 1: the record tag fails; revision 3: the descriptor no longer decodes (the
    // revision 3 flag needs an encrypted value). Refused either way.
    let mut t = bt.clone();
    let mut d = desc.to_vec();
    d[1] &= !super::wire::FLAG_VALUE_WHOLE;
    t.records[0].headers[di].value = Some(Bytes::from(d));
    let e = decrypt_error(&enc, "orders", t).await;
    assert!(
        matches!(
            e,
            DecryptError::Integrity { .. } | DecryptError::Malformed { .. }
        ),
        "value flag cleared ({format:?}): {e}"
    );
    // Swap the descriptors of the two records.
    let mut t = bt.clone();
    t.records[0].headers[di].value = bt.records[1].headers[di].value.clone();
    expect_integrity(&enc, "orders", t, "descriptors swapped").await;
    // Unknown version is malformed, not silently passed.
    let mut t = bt.clone();
    let mut d = desc.to_vec();
    d[0] = 9;
    t.records[0].headers[di].value = Some(Bytes::from(d));
    let e = decrypt_error(&enc, "orders", t).await;
    assert!(matches!(e, DecryptError::Malformed { .. }), "{e}");
}

#[tokio::test]
async fn header_ciphertext_moved_to_another_header_fails() {
    let (enc, bt) = two_records(whole()).await;
    // Swap the values of headers a and b.
    let mut t = bt.clone();
    let (va, vb) = (
        t.records[0].headers[0].value.clone(),
        t.records[0].headers[1].value.clone(),
    );
    t.records[0].headers[0].value = vb;
    t.records[0].headers[1].value = va;
    expect_integrity(&enc, "orders", t, "header values swapped").await;
    // Rename header a to b.
    let mut t = bt.clone();
    t.records[0].headers[0].key = b("b");
    expect_integrity(&enc, "orders", t, "header renamed").await;
    // Header from another record.
    let mut t = bt.clone();
    t.records[0].headers[0].value = bt.records[1].headers[0].value.clone();
    expect_integrity(&enc, "orders", t, "header from other record").await;
    // Encrypted header removed or nulled.
    let mut t = bt.clone();
    t.records[0].headers.remove(0);
    expect_integrity(&enc, "orders", t, "header removed").await;
    let mut t = bt.clone();
    t.records[0].headers[1].value = None;
    expect_integrity(&enc, "orders", t, "header nulled").await;
}

#[tokio::test]
async fn json_field_ciphertext_moved_to_another_field_fails() {
    let (enc, bt) = two_records(fields(&["/name", "/card/number"])).await;
    let v = bt.records[0].value.clone().unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&v).unwrap();
    let name = doc["name"].clone();
    doc["name"] = doc["card"]["number"].clone();
    doc["card"]["number"] = name;
    let mut t = bt.clone();
    t.records[0].value = Some(Bytes::from(serde_json::to_vec(&doc).unwrap()));
    expect_integrity(&enc, "orders", t, "JSON fields swapped").await;
    // Field from the other record.
    let other: serde_json::Value =
        serde_json::from_slice(bt.records[1].value.as_ref().unwrap()).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&v).unwrap();
    doc["name"] = other["name"].clone();
    let mut t = bt.clone();
    t.records[0].value = Some(Bytes::from(serde_json::to_vec(&doc).unwrap()));
    expect_integrity(&enc, "orders", t, "JSON field from other record").await;
    // Field replaced by a plaintext value, or a clear field edited: never passed through.
    for (ptr, val) in [("/name", "Mallory"), ("/id", "8")] {
        let mut doc: serde_json::Value = serde_json::from_slice(&v).unwrap();
        *doc.pointer_mut(ptr).unwrap() = serde_json::json!(val);
        let mut t = bt.clone();
        t.records[0].value = Some(Bytes::from(serde_json::to_vec(&doc).unwrap()));
        expect_integrity(&enc, "orders", t, ptr).await;
    }
}

#[tokio::test]
async fn descriptor_copied_onto_a_forged_record_fails() {
    // Only the key is encrypted: the value is in clear, yet covered by the record tag.
    let (_, enc) = setup();
    let mut bt = batch(vec![rec(Some("k"), Some("genuine"), vec![])]);
    enc.encrypt_batch(
        "orders",
        &mut bt,
        &[RecordDecision::encrypt(plan(ValuePart::None, true, &[]))],
    )
    .await
    .unwrap();
    assert_eq!(bt.records[0].value, Some(b("genuine")));
    let mut forged = bt.clone();
    forged.records[0].value = Some(b("forged"));
    expect_integrity(&enc, "orders", forged, "clear value replaced").await;
    let mut forged = bt.clone();
    forged.records[0].value = None;
    expect_integrity(&enc, "orders", forged, "clear value nulled").await;
    // A tombstone's descriptor cannot be moved onto a record with a value.
    let mut t = batch(vec![rec(Some("k"), None, vec![])]);
    enc.encrypt_batch("orders", &mut t, &[whole()])
        .await
        .unwrap();
    let mut forged = t.clone();
    forged.records[0].value = Some(b("injected"));
    expect_integrity(&enc, "orders", forged, "value added to tombstone").await;
}

/// Decrypts a batch of topic `orders` with the given failure mode and require-encrypted flag.
async fn decrypt_orders(
    enc: &RecordEncryptor,
    batch: &mut RecordBatch,
    on_failure: DecryptFailure,
    require_encrypted: bool,
) -> Result<DecryptStats, DecryptError> {
    enc.decrypt_batch(
        "orders",
        batch,
        &DecryptOptions {
            on_failure,
            require_encrypted,
            allowed_kek: None,
        },
    )
    .await
}

#[tokio::test]
async fn failure_modes_and_injection() {
    let (enc, bt) = two_records(whole()).await;
    let mut tampered = bt.clone();
    tampered.records[0].value = bt.records[1].value.clone();
    let injected = rec(Some("x"), Some("plain injected"), vec![]);
    tampered.records.push(injected.clone());

    let mut t = tampered.clone();
    let st = decrypt_orders(&enc, &mut t, DecryptFailure::Ciphertext, false)
        .await
        .unwrap();
    assert_eq!(
        (
            st.records_decrypted,
            st.records_left_encrypted,
            st.records_plain
        ),
        (1, 1, 1)
    );
    assert_eq!(
        t.records[0], tampered.records[0],
        "left encrypted, with its descriptor"
    );
    assert_eq!(t.records[1].value, Some(b(JSON)));

    let mut t = tampered.clone();
    let st = decrypt_orders(&enc, &mut t, DecryptFailure::Skip, true)
        .await
        .unwrap();
    assert_eq!((st.records_decrypted, st.records_dropped), (1, 2));
    assert_eq!(t.records.len(), 1);

    // A batch whose every record is skipped still spans its offsets, so consumers move past
    // it (as after compaction) instead of fetching the same offset again.
    let mut t = tampered.clone();
    t.records.remove(1);
    let span = (t.base_offset, t.last_offset_delta);
    let st = decrypt_orders(&enc, &mut t, DecryptFailure::Skip, true)
        .await
        .unwrap();
    assert_eq!(st.records_dropped, 2);
    assert!(t.records.is_empty());
    let reread = crate::kafka::records::RecordBatch::decode(&t.to_bytes().unwrap()).unwrap();
    assert_eq!((reread.base_offset, reread.last_offset_delta), span);
    assert!(reread.records.is_empty());

    // Injection in ciphertext mode is dropped, never delivered as if decrypted.
    let mut t = batch(vec![injected.clone()]);
    let st = decrypt_orders(&enc, &mut t, DecryptFailure::Ciphertext, true)
        .await
        .unwrap();
    assert_eq!(st.records_dropped, 1);
    assert!(t.records.is_empty());

    let mut t = batch(vec![injected]);
    let e = decrypt_orders(&enc, &mut t, DecryptFailure::Error, true)
        .await
        .unwrap_err();
    assert!(matches!(e, DecryptError::NotEncrypted { index: 0 }));
}

#[tokio::test]
async fn kms_outage_is_retriable_in_every_mode_and_recovers() {
    let (kms, enc) = setup();
    let mut bt = batch(vec![rec(Some("k"), Some("v"), vec![])]);
    enc.encrypt_batch("orders", &mut bt, &[whole()])
        .await
        .unwrap();
    // Reader with a cold cache.
    let reader = RecordEncryptor::new(kms.clone(), DekConfig::default());
    kms.fail_with(Some(KmsErrorKind::Transient));
    for mode in [
        DecryptFailure::Error,
        DecryptFailure::Ciphertext,
        DecryptFailure::Skip,
    ] {
        let mut t = bt.clone();
        let e = reader
            .decrypt_batch(
                "orders",
                &mut t,
                &DecryptOptions {
                    on_failure: mode,
                    require_encrypted: false,
                    allowed_kek: None,
                },
            )
            .await
            .unwrap_err();
        assert!(e.is_retriable());
        assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 56);
        assert_eq!(t, bt);
    }
    // Produce on a topic without cached DEK fails retriably and leaves the batch untouched.
    let mut p = batch(vec![rec(Some("k"), Some("secret"), vec![])]);
    let before = p.clone();
    let e = reader
        .encrypt_batch("new-topic", &mut p, &[whole()])
        .await
        .unwrap_err();
    assert!(e.is_retriable());
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 7);
    assert_eq!(p, before);
    kms.fail_with(None);
    let mut t = bt.clone();
    reader
        .decrypt_batch("orders", &mut t, &STRICT)
        .await
        .unwrap();
    assert_eq!(t.records[0].value, Some(b("v")));
    // Unknown KEK: permanent, not retriable.
    let mut p = batch(vec![rec(None, Some("secret"), vec![])]);
    let mut pl = plan(ValuePart::Whole, false, &[]);
    pl.key_id = "nope".into();
    let e = reader
        .encrypt_batch("orders", &mut p, &[RecordDecision::encrypt(pl)])
        .await
        .unwrap_err();
    assert!(!e.is_retriable());
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), -1);
    assert!(e.to_string().contains("unknown_key"), "{e}");
}

#[tokio::test]
async fn rejections_and_invalid_records_refuse_the_whole_batch() {
    let (kms, enc) = setup();
    let mut bt = batch(vec![
        rec(None, Some("a"), vec![]),
        rec(None, Some("b"), vec![]),
    ]);
    let before = bt.clone();
    let e = enc
        .encrypt_batch(
            "t",
            &mut bt,
            &[whole(), RecordDecision::Reject("no PII".into())],
        )
        .await
        .unwrap_err();
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 44);
    assert!(!e.is_retriable());
    assert!(e.to_string().contains("no PII"));
    assert_eq!(bt, before);
    assert_eq!(
        kms.generate_calls.load(Ordering::SeqCst),
        0,
        "no KMS call before rejecting"
    );

    let e = enc
        .encrypt_batch("t", &mut bt, &[whole(), fields(&["/x"])])
        .await
        .unwrap_err();
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 87);
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    assert_eq!(bt, before);

    let mut forged = batch(vec![rec(None, Some("a"), vec![hdr(HEADER_KEY, Some("x"))])]);
    let e = enc
        .encrypt_batch("t", &mut forged, &[whole()])
        .await
        .unwrap_err();
    assert_eq!(crate::error::ProxyError::from(e.clone()).code(), 87);

    let e = enc
        .encrypt_batch("t", &mut bt, &[whole()])
        .await
        .unwrap_err();
    assert!(matches!(e, EncryptError::DecisionCount { .. }));
}

#[tokio::test]
async fn kek_rotation_new_deks_use_new_version_and_old_records_decrypt() {
    let (kms, enc) = setup_rotating_every_encryption();
    let mut old = batch(vec![rec(None, Some("old"), vec![])]);
    enc.encrypt_batch("t", &mut old, &[whole()]).await.unwrap();
    assert_eq!(kms.rotate_key("k1"), 2);
    let mut new = batch(vec![rec(None, Some("new"), vec![])]);
    enc.encrypt_batch("t", &mut new, &[whole()]).await.unwrap();
    let desc = |bt: &RecordBatch| {
        let v = bt.records[0].headers[0].value.as_ref().unwrap();
        super::wire::Descriptor::decode(super::wire::split_header(v).unwrap().0)
            .unwrap()
            .into_owned()
    };
    assert_eq!(desc(&old).edek[..4], 1u32.to_be_bytes());
    assert_eq!(desc(&new).edek[..4], 2u32.to_be_bytes());
    let reader = RecordEncryptor::new(kms.clone(), DekConfig::default());
    for (mut bt, v) in [(old, "old"), (new, "new")] {
        reader.decrypt_batch("t", &mut bt, &STRICT).await.unwrap();
        assert_eq!(bt.records[0].value, Some(b(v)));
    }
}

#[tokio::test]
async fn prefetch_resolves_each_key_once() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1", "k2"]));
    let enc = RecordEncryptor::new(
        kms.clone(),
        DekConfig {
            max_encryptions: 2,
            ..Default::default()
        },
    );
    let mut batches = Vec::new();
    for _ in 0..3 {
        let mut bt = batch(
            (0..4)
                .map(|i| rec(Some("k"), Some(&format!("v{i}")), vec![]))
                .collect(),
        );
        let mut p2 = plan(ValuePart::Whole, true, &[]);
        p2.key_id = "k2".into();
        let ds = vec![
            whole(),
            whole(),
            RecordDecision::encrypt(p2.clone()),
            RecordDecision::encrypt(p2),
        ];
        enc.encrypt_batch("t", &mut bt, &ds).await.unwrap();
        batches.push(bt);
    }
    let distinct_deks: std::collections::HashSet<Vec<u8>> = batches
        .iter()
        .flat_map(|bt| bt.records.iter())
        .map(|r| {
            let v = r.headers.last().unwrap().value.as_ref().unwrap();
            super::wire::Descriptor::decode(super::wire::split_header(v).unwrap().0)
                .unwrap()
                .edek
                .into_owned()
        })
        .collect();
    let reader = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let before = kms.decrypt_calls.load(Ordering::SeqCst);
    let n = reader.prefetch("t", &refs).await;
    assert_eq!(n, distinct_deks.len() + 2);
    assert_eq!(
        kms.decrypt_calls.load(Ordering::SeqCst) - before,
        distinct_deks.len() as u64
    );
    for mut bt in batches {
        reader.decrypt_batch("t", &mut bt, &STRICT).await.unwrap();
    }
    assert_eq!(
        kms.decrypt_calls.load(Ordering::SeqCst) - before,
        distinct_deks.len() as u64
    );
}

#[tokio::test]
async fn local_kms_round_trip_across_fresh_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let master = || zeroize::Zeroizing::new([5u8; 32]);
    let original = batch(vec![rec(
        Some("id-1"),
        Some(JSON),
        vec![hdr("h", Some("x"))],
    )]);
    let mut bt = original.clone();
    {
        let kms = Arc::new(LocalKms::open_with_master_key(&path, master(), true).unwrap());
        let enc = RecordEncryptor::new(kms, DekConfig::default());
        enc.encrypt_batch("orders", &mut bt, &[whole()])
            .await
            .unwrap();
    }
    let kms = Arc::new(LocalKms::open_with_master_key(&path, master(), false).unwrap());
    let enc = RecordEncryptor::new(kms, DekConfig::default());
    let mut dec = bt.clone();
    enc.decrypt_batch("orders", &mut dec, &STRICT)
        .await
        .unwrap();
    assert_eq!(dec, original);
    // Same record key ciphertext from the fresh instance.
    let mut again = original.clone();
    enc.encrypt_batch("orders", &mut again, &[whole()])
        .await
        .unwrap();
    assert_eq!(again.records[0].key, bt.records[0].key);
}

#[test]
fn cheap_checks_and_send_futures() {
    let plain = batch(vec![rec(None, Some("x"), vec![hdr("a", Some("b"))])]);
    assert!(!batch_has_encrypted_records(&plain));
    assert!(!may_contain_encrypted(b"\x00\x02ab\x00"));
    assert!(may_contain_encrypted(b"\x16kapsule.enc\x02"));
    fn is_send<T: Send>(_: &T) {}
    let (_, enc) = setup();
    let mut bt = plain.clone();
    let f = enc.encrypt_batch("t", &mut bt, &[]);
    is_send(&f);
    drop(f);
    let f = enc.decrypt_batch("t", &mut bt, &STRICT);
    is_send(&f);
}

// ---------------------------------------------------------------------------------------------
// Golden vectors: host/src/crypto/testdata/golden_v1.json (associated data revision 1, frozen:
// written before revision 2 existed), golden_aad_v2.json (revision 2) and golden_aad_v3.json
// (revision 3).

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct GoldenRecord {
    key: Option<String>,
    value: Option<String>,
    headers: Vec<(String, Option<String>)>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct GoldenCase {
    name: String,
    nonce_base: String,
    record_id: String,
    value: String,
    fields: Vec<String>,
    record_key: bool,
    headers: Vec<String>,
    /// Plaintext record (strings are UTF-8).
    input: GoldenRecord,
    /// Encrypted record (all strings hex).
    output: GoldenRecord,
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct GoldenFile {
    description: String,
    topic: String,
    kek_id: String,
    dek: String,
    edek: String,
    record_key_material: String,
    record_key_kek_version: u32,
    cases: Vec<GoldenCase>,
}

/// Revision 1 vectors, never regenerated: today's reader must keep reading them, and today's
/// writer must still produce its whole-value cases byte for byte.
const GOLDEN_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/crypto/testdata/golden_v1.json"
);
/// Revision 2 vectors (records whose value is wholly or partly in clear).
const GOLDEN_V2_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/crypto/testdata/golden_aad_v2.json"
);
/// Revision 3 vectors (values with encrypted fields).
const GOLDEN_V3_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/crypto/testdata/golden_aad_v3.json"
);

fn golden_keys(g: &GoldenFile) -> (Dek, RecordKeyCipher) {
    let dek: [u8; 32] = hex::decode(&g.dek).unwrap().try_into().unwrap();
    let mat: [u8; 32] = hex::decode(&g.record_key_material)
        .unwrap()
        .try_into()
        .unwrap();
    (
        Dek::new(&dek, &g.kek_id, &hex::decode(&g.edek).unwrap()),
        RecordKeyCipher::from_material(&mat, &g.topic, g.record_key_kek_version),
    )
}

fn to_record(g: &GoldenRecord, hex_enc: bool) -> Record {
    let conv = |s: &String| {
        if hex_enc {
            Bytes::from(hex::decode(s).unwrap())
        } else {
            b(s)
        }
    };
    Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: 0,
        key: g.key.as_ref().map(conv),
        value: g.value.as_ref().map(conv),
        headers: g
            .headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: b(k),
                value: v.as_ref().map(conv),
            })
            .collect(),
    }
}

fn golden_plan(c: &GoldenCase, kek: &str) -> EncryptionPlan {
    EncryptionPlan {
        key_id: kek.into(),
        value: match c.value.as_str() {
            "whole" => ValuePart::Whole,
            "json" => ValuePart::JsonFields(c.fields.clone()),
            _ => ValuePart::None,
        },
        record_key: c.record_key,
        headers: c.headers.clone(),
    }
}

/// Seals case `c` writing revision `scheme` for an encrypted value (whole values: revision 3
/// when `scheme` is, revision 1 otherwise).
fn seal_case(g: &GoldenFile, c: &GoldenCase, scheme: AadScheme) -> Record {
    let (dek, kc) = golden_keys(g);
    testing::seal(
        &g.topic,
        &to_record(&c.input, false),
        &golden_plan(c, &g.kek_id),
        &dek,
        Some(&kc),
        testing::Fixed {
            nonce_base: hex::decode(&c.nonce_base).unwrap().try_into().unwrap(),
            record_id: hex::decode(&c.record_id).unwrap().try_into().unwrap(),
            fields_scheme: scheme,
            whole_scheme: if scheme == AadScheme::V3 {
                AadScheme::V3
            } else {
                AadScheme::V1
            },
        },
    )
    .unwrap()
}

fn golden_case(
    name: &str,
    value: &str,
    fields: &[&str],
    record_key: bool,
    headers: &[&str],
    input: GoldenRecord,
) -> GoldenCase {
    GoldenCase {
        name: name.into(),
        nonce_base: "a1a2a3a40000000000000010".into(),
        record_id: "000102030405060708090a0b0c0d0e0f".into(),
        value: value.into(),
        fields: fields.iter().map(|s| s.to_string()).collect(),
        record_key,
        headers: headers.iter().map(|s| s.to_string()).collect(),
        input,
        output: GoldenRecord {
            key: None,
            value: None,
            headers: vec![],
        },
    }
}

/// The revision 2 cases: a value partly or wholly in clear.
fn golden_v2_cases() -> Vec<GoldenCase> {
    vec![
        golden_case("json fields", "json", &["/card/number", "/name"], false, &[], GoldenRecord {
            key: None,
            value: Some("{\"name\":\"Ada\",\"card\":{\"number\":\"4111111111111111\",\"exp\":\"12/29\"},\"qty\":3}".into()),
            headers: vec![],
        }),
        golden_case("clear value, encrypted key and header", "none", &[], true, &["trace"], GoldenRecord {
            key: Some("order-42".into()),
            value: Some("{\"amount\":12.5}".into()),
            headers: vec![("trace".into(), Some("abc".into())), ("content-type".into(), Some("json".into()))],
        }),
    ]
}

fn read_golden(path: &str) -> GoldenFile {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks every case of `g`: the checked-in bytes decrypt to the input, a flipped bit in the
/// value is detected, and (when `reencode` says so for the case) the writer reproduces the bytes,
/// writing `fields_scheme` for values with encrypted fields.
fn check_golden(g: &GoldenFile, fields_scheme: AadScheme, reencode: impl Fn(&GoldenCase) -> bool) {
    let (dek, kc) = golden_keys(g);
    for c in &g.cases {
        let expected = to_record(&c.output, true);
        let opened = testing::open(&g.topic, &expected, &dek, Some(&kc)).unwrap();
        assert_eq!(opened, to_record(&c.input, false), "case {}", c.name);
        if reencode(c) {
            assert_eq!(seal_case(g, c, fields_scheme), expected, "case {}", c.name);
        }
        if let Some(v) = &expected.value {
            let mut t = expected.clone();
            let mut vb = v.to_vec();
            let last = vb.len() - 1;
            vb[last] ^= 1;
            t.value = Some(Bytes::from(vb));
            assert!(
                testing::open(&g.topic, &t, &dek, Some(&kc)).is_err(),
                "case {}",
                c.name
            );
        }
    }
}

/// Revision 1 records written before revision 2 existed still decrypt, and whole-value records
/// written with `record_format.whole_value_revision: 1` are revision 1 byte for byte (so readers
/// that predate revision 3 for whole values read them).
#[test]
fn golden_v1_vectors_still_decrypt_and_whole_values_reencode_exactly() {
    let g = read_golden(GOLDEN_PATH);
    assert_eq!(g.cases.len(), 4);
    check_golden(&g, AadScheme::V1, |c| c.value == "whole");
    // By default the writer now writes revision 3 for them.
    for whole in g
        .cases
        .iter()
        .filter(|c| c.value == "whole" && c.input.value.is_some())
    {
        assert_ne!(
            seal_case(&g, whole, AadScheme::V3),
            to_record(&whole.output, true)
        );
    }
    // The frozen JSON case is revision 1; the writer now writes revision 3 for it.
    let json = g.cases.iter().find(|c| c.value == "json").unwrap();
    let written = seal_case(&g, json, AadScheme::V3);
    assert_ne!(written, to_record(&json.output, true));
}

/// Writes `cases` sealed by today's writer (fields in `fields_scheme`) to `path`, when
/// `KAPSULE_REGEN_GOLDEN` is set: only when the format changes on purpose (add a new revision
/// then, and keep the old vectors).
fn regenerate_golden(
    path: &str,
    description: &str,
    cases: Vec<GoldenCase>,
    fields_scheme: AadScheme,
) {
    if std::env::var_os("KAPSULE_REGEN_GOLDEN").is_none() {
        return;
    }
    let mut g = GoldenFile {
        description: description.into(),
        topic: "orders".into(),
        kek_id: "orders-kek".into(),
        dek: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
        edek: hex::encode("vault:v1:RklYRUQtRURFSy1GT1ItVEVTVFM="),
        record_key_material: "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f"
            .into(),
        record_key_kek_version: 1,
        cases,
    };
    let outs: Vec<Record> = g
        .cases
        .iter()
        .map(|c| seal_case(&g, c, fields_scheme))
        .collect();
    for (c, r) in g.cases.iter_mut().zip(outs) {
        c.output = GoldenRecord {
            key: r.key.map(hex::encode),
            value: r.value.map(hex::encode),
            headers: r
                .headers
                .iter()
                .map(|h| {
                    (
                        String::from_utf8(h.key.to_vec()).unwrap(),
                        h.value.as_ref().map(hex::encode),
                    )
                })
                .collect(),
        };
    }
    std::fs::write(path, serde_json::to_string_pretty(&g).unwrap() + "\n").unwrap();
}

/// Regenerate with `KAPSULE_REGEN_GOLDEN=1 cargo test -p kapsule --lib golden` (only when the
/// format changes on purpose: add a new revision then, and keep the old vectors).
#[test]
fn golden_v2_vectors_decrypt_and_reencode_exactly() {
    regenerate_golden(
        GOLDEN_V2_PATH,
        "Kapsule wire format v1, associated data revision 2 (flag 0x20) test vectors; see docs/wire-format.md. Inputs are UTF-8, outputs hex.",
        golden_v2_cases(),
        AadScheme::V2,
    );
    let g = read_golden(GOLDEN_V2_PATH);
    assert_eq!(g.cases.len(), 2);
    check_golden(&g, AadScheme::V2, |_| true);
}

/// The revision 3 cases: values with encrypted fields and whole values, alone and beside an
/// encrypted key and header (whose part takes nonce index 0, the stream index 1).
fn golden_v3_cases() -> Vec<GoldenCase> {
    vec![
        golden_case("json fields", "json", &["/card/number", "/name"], false, &[], GoldenRecord {
            key: None,
            value: Some("{\"name\":\"Ada\",\"card\":{\"number\":\"4111111111111111\",\"exp\":\"12/29\"},\"qty\":3}".into()),
            headers: vec![],
        }),
        golden_case("json fields, encrypted key and header", "json", &["/ssn"], true, &["trace"], GoldenRecord {
            key: Some("customer-7".into()),
            value: Some("{\"ssn\":\"078-05-1120\",\"plan\":\"gold\"}".into()),
            headers: vec![("trace".into(), Some("abc".into())), ("content-type".into(), Some("json".into()))],
        }),
        golden_case("whole value", "whole", &[], false, &[], GoldenRecord {
            key: Some("order-42".into()),
            value: Some("{\"amount\":12.5,\"card\":\"4111111111111111\"}".into()),
            headers: vec![("content-type".into(), Some("json".into()))],
        }),
        golden_case("whole value, encrypted key and header", "whole", &[], true, &["trace"], GoldenRecord {
            key: Some("customer-7".into()),
            value: Some("{\"ssn\":\"078-05-1120\",\"plan\":\"gold\"}".into()),
            headers: vec![("trace".into(), Some("abc".into())), ("content-type".into(), Some("json".into()))],
        }),
    ]
}

/// Revision 3 vectors: today's writer reproduces them and today's reader reads them.
/// Regenerate as the revision 2 ones (`KAPSULE_REGEN_GOLDEN=1`), only on purpose.
#[test]
fn golden_v3_vectors_decrypt_and_reencode_exactly() {
    regenerate_golden(
        GOLDEN_V3_PATH,
        "Kapsule wire format v1, associated data revision 3 (flag 0x40) test vectors; see docs/wire-format.md. Inputs are UTF-8, outputs hex.",
        golden_v3_cases(),
        AadScheme::V3,
    );
    let g = read_golden(GOLDEN_V3_PATH);
    assert_eq!(g.cases.len(), 4);
    check_golden(&g, AadScheme::V3, |_| true);
    for c in &g.cases {
        let desc = &to_record(&c.output, true)
            .headers
            .last()
            .unwrap()
            .value
            .clone()
            .unwrap();
        assert_eq!(desc[1] & 0x60, 0x40, "case {}: revision 3 flag", c.name);
    }
}

/// `lp32(b)`: u32 big-endian length, then the bytes (docs/wire-format.md).
fn lp32(v: &mut Vec<u8>, b: &[u8]) {
    v.extend((b.len() as u32).to_be_bytes());
    v.extend(b);
}

/// `lp16(b)`: u16 big-endian length, then the bytes.
fn lp16(v: &mut Vec<u8>, b: &[u8]) {
    v.extend((b.len() as u16).to_be_bytes());
    v.extend(b);
}

/// The descriptor of golden case `c` without encrypted headers or key, assembled by hand from
/// the documented layout with flags byte `flags`.
fn documented_descriptor(g: &GoldenFile, c: &GoldenCase, flags: u8) -> Vec<u8> {
    let mut desc = vec![1u8, flags];
    desc.extend(hex::decode(&c.record_id).unwrap());
    desc.extend(hex::decode(&c.nonce_base).unwrap());
    desc.extend(0u32.to_be_bytes());
    desc.push(g.kek_id.len() as u8);
    desc.extend(g.kek_id.as_bytes());
    lp16(&mut desc, &hex::decode(&g.edek).unwrap());
    desc.extend((c.fields.len() as u16).to_be_bytes());
    for f in &c.fields {
        lp16(&mut desc, f.as_bytes());
    }
    desc.extend(0u16.to_be_bytes());
    desc
}

/// Asserts that `rec` (sealed by golden file `g`, descriptor last) fails to open once any byte
/// of its descriptor (record id, nonce base, EDEK...) is edited, and under another topic.
fn assert_descriptor_edits_and_other_topics_fail(g: &GoldenFile, rec: &Record) {
    let (dek, kc) = golden_keys(g);
    let desc_at = rec.headers.len() - 1;
    let dlen = rec.headers[desc_at].value.as_ref().unwrap().len() - 16;
    for at in [2, 18, 30, dlen - 1] {
        let mut t = rec.clone();
        let mut hv = t.headers[desc_at].value.as_ref().unwrap().to_vec();
        hv[at] ^= 1;
        t.headers[desc_at].value = Some(Bytes::from(hv));
        assert!(
            testing::open(&g.topic, &t, &dek, Some(&kc)).is_err(),
            "descriptor byte {at} edited"
        );
    }
    assert!(testing::open("payments", rec, &dek, Some(&kc)).is_err());
}

/// Asserts golden case `c` has exactly one header, `kapsule.enc` = `desc ‖ tag`.
fn assert_documented_header(c: &GoldenCase, desc: &[u8], tag: &[u8]) {
    let mut header = desc.to_vec();
    header.extend(tag);
    assert_eq!(
        c.output.headers,
        vec![("kapsule.enc".to_owned(), Some(hex::encode(&header)))]
    );
}

/// A JSON field's stored form for ciphertext `ct`: `"kapsule:v1:" + base64(ct)` as a JSON string.
fn stored_json_field(ct: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "\"kapsule:v1:{}\"",
        base64::engine::general_purpose::STANDARD.encode(ct)
    )
}

/// Rebuilds the first golden case from the byte layout in docs/wire-format.md alone, with the
/// raw AES-GCM primitive, to check the document and the code agree.
#[test]
fn golden_case_matches_the_documented_layout() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let g: GoldenFile =
        serde_json::from_str(&std::fs::read_to_string(GOLDEN_PATH).unwrap()).unwrap();
    let c = &g.cases[0];
    let desc = documented_descriptor(&g, c, 0x01);
    let key = c.input.key.as_ref().unwrap().as_bytes();
    let lp = lp32;
    let mut aad = b"kapsule/v1/part".to_vec();
    aad.push(1);
    aad.extend(0u32.to_be_bytes());
    lp(&mut aad, g.topic.as_bytes());
    lp(&mut aad, b"");
    aad.push(1);
    lp(&mut aad, key);
    lp(&mut aad, &desc);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(&g.dek).unwrap()).unwrap();
    let nonce = hex::decode(&c.nonce_base).unwrap();
    let ct = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: c.input.value.as_ref().unwrap().as_bytes(),
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(hex::encode(&ct), *c.output.value.as_ref().unwrap());
    // Record tag: empty plaintext, nonce index 1 (after the one value part).
    let mut raad = b"kapsule/v1/record".to_vec();
    lp(&mut raad, g.topic.as_bytes());
    raad.push(1);
    lp(&mut raad, key);
    raad.push(2); // whole value encrypted: marker 2, empty bytes
    lp(&mut raad, b"");
    lp(&mut raad, &desc);
    let mut nonce1 = nonce.clone();
    nonce1[11] += 1;
    let tag = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce1),
            Payload {
                msg: b"",
                aad: &raad,
            },
        )
        .unwrap();
    assert_eq!(tag.len(), 16);
    let mut header = desc.clone();
    header.extend(tag);
    assert_eq!(
        c.output.headers,
        vec![("kapsule.enc".to_owned(), Some(hex::encode(&header)))]
    );
    assert_eq!(c.output.key.as_deref(), Some(hex::encode(key).as_str()));
}

/// The nonces and DEK of each record of `bt`, from its descriptor.
fn nonces_and_edeks(bt: &RecordBatch) -> Vec<([u8; 12], Vec<u8>)> {
    bt.records
        .iter()
        .map(|r| {
            let v = r.headers.last().unwrap().value.as_ref().unwrap();
            let d =
                super::wire::Descriptor::decode(super::wire::split_header(v).unwrap().0).unwrap();
            (d.nonce_base, d.edek.into_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_batch_under_one_kek_takes_disjoint_nonce_ranges_of_one_dek() {
    for format in whole_value_formats() {
        disjoint_nonce_ranges_in(format).await;
    }
}

async fn disjoint_nonce_ranges_in(format: RecordFormat) {
    let (kms, enc) = setup();
    let enc = enc.with_record_format(format);
    // Revision 1: value part and record tag; revision 3: one stream.
    let parts: u64 = if format.whole_value_revision == 3 {
        1
    } else {
        2
    };
    let mut bt = batch(
        (0..50)
            .map(|i| rec(Some("k"), Some(&format!("value {i}")), vec![]))
            .collect(),
    );
    let original = bt.clone();
    enc.encrypt_batch("t", &mut bt, &vec![whole(); 50])
        .await
        .unwrap();
    let seen = nonces_and_edeks(&bt);
    let edeks: std::collections::HashSet<_> = seen.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(edeks.len(), 1, "one DEK for the whole batch");
    // Every part's nonce is unique.
    let mut counters: Vec<u64> = seen
        .iter()
        .flat_map(|(n, _)| {
            let c = u64::from_be_bytes(n[4..].try_into().unwrap());
            (c..c + parts).collect::<Vec<_>>()
        })
        .collect();
    counters.sort_unstable();
    counters.dedup();
    assert_eq!(
        counters.len() as u64,
        50 * parts,
        "nonces reused within the batch"
    );
    let reader = RecordEncryptor::new(kms, DekConfig::default());
    reader.decrypt_batch("t", &mut bt, &STRICT).await.unwrap();
    assert_eq!(bt.records, original.records);
}

#[tokio::test]
async fn a_batch_over_a_deks_encryption_limit_spreads_over_several_deks() {
    for format in whole_value_formats() {
        spread_over_several_deks_in(format).await;
    }
}

async fn spread_over_several_deks_in(format: RecordFormat) {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = RecordEncryptor::new(
        kms.clone(),
        DekConfig {
            max_encryptions: 6,
            ..Default::default()
        },
    )
    .with_record_format(format);
    // Revision 1: 2 encryptions per record (value, record tag); revision 3: one stream.
    let per_record = if format.whole_value_revision == 3 {
        1
    } else {
        2
    };
    let mut bt = batch(
        (0..9)
            .map(|i| rec(None, Some(&format!("v{i}")), vec![]))
            .collect(),
    );
    let original = bt.clone();
    enc.encrypt_batch("t", &mut bt, &vec![whole(); 9])
        .await
        .unwrap();
    let seen = nonces_and_edeks(&bt);
    let mut per_dek: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, e) in &seen {
        *per_dek.entry(e.clone()).or_default() += 1;
    }
    // At most 6 encryptions per DEK.
    assert!(
        per_dek.values().all(|&n| n * per_record <= 6),
        "{per_dek:?}"
    );
    assert_eq!(
        per_dek.len(),
        9 * per_record / 6 + usize::from(9 * per_record % 6 != 0)
    );
    let reader = RecordEncryptor::new(kms, DekConfig::default());
    reader.decrypt_batch("t", &mut bt, &STRICT).await.unwrap();
    assert_eq!(bt.records, original.records);
}

/// Associated data revision 2 binds what revision 1 binds: a record cannot be downgraded to
/// revision 1 (or a revision 1 record upgraded) by flipping the flag, and a clear byte of the
/// value, a part moved between records or an edited descriptor still fail.
#[test]
fn revision_2_records_resist_downgrade_and_edits() {
    let g = read_golden(GOLDEN_V2_PATH);
    let (dek, kc) = golden_keys(&g);
    let json = to_record(&g.cases[0].output, true);
    let desc_at = json.headers.len() - 1;
    let flipped = |rec: &Record, at: usize| {
        let mut t = rec.clone();
        let mut hv = t.headers[desc_at].value.as_ref().unwrap().to_vec();
        hv[at] ^= 0x20;
        t.headers[desc_at].value = Some(Bytes::from(hv));
        t
    };
    // Byte 1 is the flags byte: clear FLAG_AAD_V2.
    assert!(testing::open(&g.topic, &flipped(&json, 1), &dek, Some(&kc)).is_err());
    // And set it on a revision 1 record.
    let v1 = read_golden(GOLDEN_PATH);
    let whole = to_record(&v1.cases[0].output, true);
    let t = {
        let mut t = whole.clone();
        let mut hv = t.headers[0].value.as_ref().unwrap().to_vec();
        hv[1] |= 0x20;
        t.headers[0].value = Some(Bytes::from(hv));
        t
    };
    assert!(testing::open(&v1.topic, &t, &dek, Some(&kc)).is_err());
    // A clear byte of the value (the `3` of `"qty":3`, the last digit before `}`).
    let mut t = json.clone();
    let mut v = t.value.as_ref().unwrap().to_vec();
    let at = v.len() - 2;
    v[at] = b'4';
    t.value = Some(Bytes::from(v));
    assert!(testing::open(&g.topic, &t, &dek, Some(&kc)).is_err());
    assert_descriptor_edits_and_other_topics_fail(&g, &json);
}

/// Rebuilds the first revision 2 case (two JSON fields) from the byte layout in
/// docs/wire-format.md alone, with the raw AES-GCM primitive.
#[test]
fn golden_v2_case_matches_the_documented_layout() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let g = read_golden(GOLDEN_V2_PATH);
    let c = &g.cases[0];
    let lp = lp32;
    let record_id = hex::decode(&c.record_id).unwrap();
    let nonce_base = hex::decode(&c.nonce_base).unwrap();
    let desc = documented_descriptor(&g, c, 0x02 | 0x20);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(&g.dek).unwrap()).unwrap();
    let nonce = |i: u8| {
        let mut n = nonce_base.clone();
        n[11] += i;
        n
    };
    // Part i: the field's exact bytes, AAD with the record id instead of the descriptor.
    let mut value = c.input.value.clone().unwrap();
    for (i, (pointer, original)) in [
        ("/card/number", "\"4111111111111111\""),
        ("/name", "\"Ada\""),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(c.fields[i], pointer);
        let mut aad = b"kapsule/v2/part".to_vec();
        aad.push(2);
        aad.extend((i as u32).to_be_bytes());
        lp(&mut aad, g.topic.as_bytes());
        lp(&mut aad, pointer.as_bytes());
        aad.push(0);
        lp(&mut aad, b"");
        aad.extend(&record_id);
        let ct = cipher
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce(i as u8)),
                Payload {
                    msg: original.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap();
        let stored = stored_json_field(&ct);
        value = value.replacen(original, &stored, 1);
    }
    assert_eq!(hex::encode(&value), *c.output.value.as_ref().unwrap());
    // Record tag: the stored value sealed as plaintext, nonce index 2, descriptor in the AAD.
    let mut raad = b"kapsule/v2/record".to_vec();
    lp(&mut raad, g.topic.as_bytes());
    raad.push(0);
    lp(&mut raad, b"");
    raad.push(1);
    lp(&mut raad, &desc);
    let sealed = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce(2)),
            Payload {
                msg: value.as_bytes(),
                aad: &raad,
            },
        )
        .unwrap();
    assert_documented_header(c, &desc, &sealed[value.len()..]);
}

/// Rebuilds the first revision 3 case (two JSON fields) from the byte layout in
/// docs/wire-format.md alone, with the raw AES-GCM primitive: one stream of prefix, field
/// plaintexts and the value outside the fields, whose tag is the record tag.
#[test]
fn golden_v3_case_matches_the_documented_layout() {
    let g = read_golden(GOLDEN_V3_PATH);
    let c = &g.cases[0];
    let lp = lp32;
    let desc = documented_descriptor(&g, c, 0x02 | 0x40);
    // Descriptor order: /card/number, then /name.
    let fields = ["\"4111111111111111\"", "\"Ada\""];
    let value = c.input.value.clone().unwrap();
    let mut stream = b"kapsule/v3/value".to_vec();
    lp(&mut stream, g.topic.as_bytes());
    stream.push(0);
    lp(&mut stream, b"");
    lp(&mut stream, &desc);
    stream.extend(2u32.to_be_bytes());
    for f in fields {
        stream.extend((f.len() as u32).to_be_bytes());
    }
    let fields_at = stream.len();
    for f in fields {
        stream.extend(f.as_bytes());
    }
    let outside = value.replacen(fields[0], "", 1).replacen(fields[1], "", 1);
    stream.extend(outside.as_bytes());
    // No header parts: the stream takes nonce index 0, with no AAD.
    let sealed = reference_seal_stream(&g, c, &stream);
    let mut stored = value.clone();
    let mut at = fields_at;
    for f in fields {
        let ct = &sealed[at..at + f.len()];
        at += f.len();
        stored = stored.replacen(f, &stored_json_field(ct), 1);
    }
    assert_eq!(hex::encode(&stored), *c.output.value.as_ref().unwrap());
    assert_documented_header(c, &desc, &sealed[stream.len()..]);
}

/// The revision 3 whole-value case rebuilt from docs/wire-format.md alone with the raw AES-GCM
/// primitive: the value is the stream's one field, nothing is outside it, and the stored value
/// is its ciphertext without a tag.
#[test]
fn golden_v3_whole_value_matches_the_documented_layout() {
    let g = read_golden(GOLDEN_V3_PATH);
    let c = &g.cases[2];
    assert_eq!(c.value, "whole");
    let desc = documented_descriptor(&g, c, 0x01 | 0x40);
    let value = c.input.value.clone().unwrap();
    let key = c.input.key.clone().unwrap();
    let mut stream = b"kapsule/v3/value".to_vec();
    lp32(&mut stream, g.topic.as_bytes());
    stream.push(1);
    lp32(&mut stream, key.as_bytes());
    lp32(&mut stream, &desc);
    stream.extend(1u32.to_be_bytes());
    stream.extend((value.len() as u32).to_be_bytes());
    let value_at = stream.len();
    stream.extend(value.as_bytes());
    // No header parts: the stream takes nonce index 0, with no AAD.
    let sealed = reference_seal_stream(&g, c, &stream);
    let out = to_record(&c.output, true);
    assert_eq!(
        out.value.as_deref(),
        Some(&sealed[value_at..stream.len()]),
        "stored value = the value's ciphertext, no tag"
    );
    let mut header = desc.clone();
    header.extend(&sealed[stream.len()..]);
    let last = out.headers.last().unwrap();
    assert_eq!(&last.key[..], b"kapsule.enc");
    assert_eq!(last.value.as_deref(), Some(&header[..]));
    assert_eq!(out.headers[0], to_record(&c.input, false).headers[0]);
}

/// An edit of a descriptor's flags byte.
type FlagsEdit = fn(u8) -> u8;

/// The flag edits that relabel a revision 3 descriptor: as revision 1, as revision 2, and with
/// both revision flags.
const REVISION_3_RELABELS: [(&str, FlagsEdit); 3] = [
    ("revision 1", |b| b & !0x40),
    ("revision 2", |b| (b & !0x40) | 0x20),
    ("both flags", |b| b | 0x20),
];

/// `rec` with the flags byte of its descriptor (the last header) changed by `f`.
fn with_descriptor_flags(rec: &Record, f: FlagsEdit) -> Record {
    let desc_at = rec.headers.len() - 1;
    let mut t = rec.clone();
    let mut hv = t.headers[desc_at].value.as_ref().unwrap().to_vec();
    hv[1] = f(hv[1]);
    t.headers[desc_at].value = Some(Bytes::from(hv));
    t
}

/// The ciphertext and tag the independent RustCrypto AES-GCM gives `stream` under golden file
/// `g`'s DEK at case `c`'s nonce base, with no AAD (a revision 3 stream with no header parts).
fn reference_seal_stream(g: &GoldenFile, c: &GoldenCase, stream: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(&g.dek).unwrap()).unwrap();
    cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&hex::decode(&c.nonce_base).unwrap()),
            Payload {
                msg: stream,
                aad: b"",
            },
        )
        .unwrap()
}

/// A revision 3 whole value fails to open when relabelled as revision 1 or 2, when a byte of
/// it is flipped, when it is cut, extended or nulled, when its key or descriptor is edited, or
/// under another topic; it opens with the reveal scope's rules (withheld: left as stored).
#[test]
fn revision_3_whole_values_resist_downgrade_and_edits() {
    let g = read_golden(GOLDEN_V3_PATH);
    let (dek, kc) = golden_keys(&g);
    for c in &g.cases[2..] {
        let rec = to_record(&c.output, true);
        let plain = to_record(&c.input, false);
        assert_eq!(
            testing::open(&g.topic, &rec, &dek, Some(&kc)).unwrap(),
            plain
        );
        let fails = |t: &Record, what: &str| {
            assert!(
                testing::open(&g.topic, t, &dek, Some(&kc)).is_err(),
                "case {}: {what} opened",
                c.name
            );
        };
        for (what, f) in REVISION_3_RELABELS {
            fails(&with_descriptor_flags(&rec, f), what);
        }
        let v = rec.value.clone().unwrap();
        for (what, edited) in [
            ("first byte flipped", {
                let mut b = v.to_vec();
                b[0] ^= 1;
                Some(b)
            }),
            ("cut by one byte", Some(v[..v.len() - 1].to_vec())),
            ("extended by one byte", Some([&v[..], &[0u8]].concat())),
            ("nulled", None),
        ] {
            let mut t = rec.clone();
            t.value = edited.map(Bytes::from);
            fails(&t, what);
        }
        let mut t = rec.clone();
        let mut k = t.key.clone().unwrap().to_vec();
        k[0] ^= 1;
        t.key = Some(Bytes::from(k));
        fails(&t, "key edited");
        assert_descriptor_edits_and_other_topics_fail(&g, &rec);
    }
}

/// A revision 3 record cannot be relabelled as revision 2 or 1 (nor carry both flags), and an
/// edited clear byte, field ciphertext or descriptor byte, fields swapped between records of
/// the same key, or another topic all fail; the withheld path leaves the fields as stored.
#[test]
fn revision_3_records_resist_downgrade_and_edits() {
    let g = read_golden(GOLDEN_V3_PATH);
    let (dek, kc) = golden_keys(&g);
    let json = to_record(&g.cases[0].output, true);
    let plain = to_record(&g.cases[0].input, false);
    assert_eq!(
        testing::open(&g.topic, &json, &dek, Some(&kc)).unwrap(),
        plain
    );
    for (what, f) in REVISION_3_RELABELS {
        assert!(
            testing::open(&g.topic, &with_descriptor_flags(&json, f), &dek, Some(&kc)).is_err(),
            "{what}"
        );
    }
    let stored = json.value.as_ref().unwrap().to_vec();
    let text = String::from_utf8(stored.clone()).unwrap();
    // A clear byte (the `3` of `"qty":3`), and one base64 character of each field's ciphertext.
    let mut edits = vec![stored.len() - 2];
    for (i, _) in text.match_indices("kapsule:v1:") {
        edits.push(i + "kapsule:v1:".len() + 2);
    }
    assert_eq!(edits.len(), 3);
    for at in edits {
        let mut t = json.clone();
        let mut v = stored.clone();
        v[at] = match v[at] {
            b'3' => b'4',
            b'A' => b'B',
            _ => b'A',
        };
        t.value = Some(Bytes::from(v));
        let e = testing::open(&g.topic, &t, &dek, Some(&kc)).unwrap_err();
        assert!(e.contains("altered"), "byte {at}: {e}");
    }
    // The two fields' stored strings swapped.
    let mut doc: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let name = doc["name"].clone();
    doc["name"] = doc["card"]["number"].clone();
    doc["card"]["number"] = name;
    let mut t = json.clone();
    t.value = Some(Bytes::from(serde_json::to_vec(&doc).unwrap()));
    assert!(testing::open(&g.topic, &t, &dek, Some(&kc)).is_err());
    assert_descriptor_edits_and_other_topics_fail(&g, &json);
    // Revealing one field: it is opened, the other stays as stored.
    let parts = crate::plan::RevealParts {
        json_fields: vec!["/name".into()],
        ..Default::default()
    };
    let partly = testing::open_revealing(
        &g.topic,
        &json,
        &dek,
        Some(&kc),
        super::record::RevealScope::Parts(&parts),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(partly.value.as_ref().unwrap()).unwrap();
    assert_eq!(doc["name"], "Ada");
    assert!(doc["card"]["number"]
        .as_str()
        .unwrap()
        .starts_with("kapsule:v1:"));
    assert_eq!(doc["qty"], 3);
}
