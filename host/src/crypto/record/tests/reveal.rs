//! Partial reveal ([`RevealScope`]): which parts a principal sees in clear, what replaces the
//! descriptor, that revealed parts are still authenticated, and that withholding needs no key.

use std::sync::Arc;

use bytes::Bytes;

use super::super::*;
use crate::crypto::keys::DekConfig;
use crate::kafka::records::{Record, RecordBatch, RecordHeader};
use crate::kms::memory::MemoryKms;
use crate::kms::KmsErrorKind;
use crate::plan::{EncryptionPlan, RecordDecision, RevealParts, ValuePart};

const TOPIC: &str = "customers";
const JSON: &str = r#"{"id":7,"name":"Ada","email":"ada@example.com","ssn":"078-05-1120"}"#;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn hdr(k: &str, v: &str) -> RecordHeader {
    RecordHeader {
        key: b(k),
        value: Some(b(v)),
    }
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|h| h.key == name.as_bytes())
        .and_then(|h| h.value.as_deref())
}

fn withheld(r: &Record) -> Option<serde_json::Value> {
    header(r, WITHHELD_HEADER).map(|v| serde_json::from_slice(v).unwrap())
}

/// The plaintext records: one JSON value with PII fields, one opaque value.
fn plain() -> RecordBatch {
    let rec = |i: i32, key: &str, value: &str| Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: i,
        key: Some(b(key)),
        value: Some(b(value)),
        headers: vec![
            hdr("trace", "t-1"),
            hdr("pii", "Ada L."),
            hdr("clear", "c"),
            hdr("pii", "second"),
        ],
    };
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes: 0,
        last_offset_delta: 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: vec![rec(0, "user-7", JSON), rec(1, "user-8", "opaque bytes")],
    }
}

fn plan(value: ValuePart) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: "k1".into(),
        value,
        record_key: true,
        headers: vec!["trace".into(), "pii".into()],
    })
}

/// Stored batch: record 0 with JSON fields /email and /ssn encrypted, record 1 with its whole
/// value encrypted; both with encrypted key and headers `trace` and `pii`.
async fn stored() -> (Arc<MemoryKms>, RecordBatch) {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let mut bt = plain();
    let fields = ValuePart::JsonFields(vec!["/email".into(), "/ssn".into()]);
    enc.encrypt_batch(TOPIC, &mut bt, &[plan(fields), plan(ValuePart::Whole)])
        .await
        .unwrap();
    (kms, bt)
}

/// Opens `bt` with a fresh encryptor (empty key caches) under `scope`.
async fn reveal(
    kms: &Arc<MemoryKms>,
    bt: &RecordBatch,
    scope: RevealScope<'_>,
    options: &DecryptOptions<'_>,
) -> Result<(RecordBatch, DecryptStats), DecryptError> {
    let enc = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let mut out = bt.clone();
    let stats = enc
        .decrypt_batch_revealing(TOPIC, &mut out, options, scope)
        .await?;
    Ok((out, stats))
}

fn json(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v).unwrap()
}

#[tokio::test]
async fn all_and_parts_covering_everything_give_the_plaintext_without_kapsule_headers() {
    let (kms, bt) = stored().await;
    let every = RevealParts {
        value: true,
        json_fields: vec![],
        record_key: true,
        headers: vec!["trace".into(), "pii".into()],
        schema_fields: vec![],
    };
    for scope in [RevealScope::All, RevealScope::Parts(&every)] {
        let (out, stats) = reveal(&kms, &bt, scope, &DecryptOptions::default())
            .await
            .unwrap();
        assert_eq!(out, plain(), "{scope:?}");
        assert_eq!(stats.records_decrypted, 2);
    }
}

#[tokio::test]
async fn analytics_sees_json_records_with_pii_fields_still_ciphertext() {
    let (kms, bt) = stored().await;
    let analytics = RevealParts {
        value: false,
        json_fields: vec!["/email".into()],
        record_key: false,
        headers: vec!["trace".into()],
        schema_fields: vec![],
    };
    let (out, _) = reveal(
        &kms,
        &bt,
        RevealScope::Parts(&analytics),
        &DecryptOptions::default(),
    )
    .await
    .unwrap();
    let r = &out.records[0];
    let v = json(r.value.as_deref().unwrap());
    assert_eq!(v["name"], "Ada");
    assert_eq!(v["email"], "ada@example.com");
    let ssn = v["ssn"].as_str().unwrap();
    assert!(ssn.starts_with("kapsule:v1:"), "{ssn}");
    assert!(!String::from_utf8_lossy(r.value.as_deref().unwrap()).contains("078-05-1120"));
    // The stored ciphertext string is delivered byte for byte.
    assert_eq!(
        json(bt.records[0].value.as_deref().unwrap())["ssn"],
        v["ssn"]
    );
    // Key and the `pii` header stay as stored; `trace` and clear headers are in clear.
    assert_eq!(r.key, bt.records[0].key);
    assert_ne!(r.key.as_deref(), Some(&b"user-7"[..]));
    assert_eq!(header(r, "trace"), Some(&b"t-1"[..]));
    assert_eq!(header(r, "pii"), header(&bt.records[0], "pii"));
    assert_eq!(header(r, "clear"), Some(&b"c"[..]));
    // No descriptor claiming parts that are now plaintext; the withheld parts are named.
    assert_eq!(header(r, HEADER_KEY), None);
    assert_eq!(
        withheld(r).unwrap(),
        serde_json::json!({"key": true, "json_fields": ["/ssn"], "headers": ["pii"]})
    );
    // The wholly encrypted value is withheld too (`json_fields` does not reveal it).
    let r1 = &out.records[1];
    assert_eq!(r1.value, bt.records[1].value);
    assert_eq!(
        withheld(r1).unwrap(),
        serde_json::json!({"key": true, "value": true, "headers": ["pii"]})
    );
}

#[tokio::test]
async fn revealing_only_the_key_leaves_the_value_as_stored() {
    let (kms, bt) = stored().await;
    let key_only = RevealParts {
        record_key: true,
        ..RevealParts::default()
    };
    let (out, _) = reveal(
        &kms,
        &bt,
        RevealScope::Parts(&key_only),
        &DecryptOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(out.records[1].key.as_deref(), Some(&b"user-8"[..]));
    assert_eq!(out.records[1].value, bt.records[1].value);
    assert_eq!(
        withheld(&out.records[1]).unwrap(),
        serde_json::json!({"value": true, "headers": ["trace", "pii"]})
    );
}

#[tokio::test]
async fn withholding_every_part_and_ciphertext_need_no_kms() {
    let (kms, bt) = stored().await;
    // Any KMS call would now fail the batch.
    kms.fail_with(Some(KmsErrorKind::Transient));
    let (out, stats) = reveal(
        &kms,
        &bt,
        RevealScope::Ciphertext,
        &DecryptOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(out, bt, "ciphertext scope delivers records as stored");
    assert_eq!(stats.records_withheld, 2);

    let other_header = RevealParts {
        headers: vec!["not-encrypted-here".into()],
        ..RevealParts::default()
    };
    let (out, stats) = reveal(
        &kms,
        &bt,
        RevealScope::Parts(&other_header),
        &DecryptOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(stats.records_withheld, 2);
    for (r, s) in out.records.iter().zip(&bt.records) {
        assert_eq!((&r.key, &r.value), (&s.key, &s.value));
        assert_eq!(header(r, HEADER_KEY), None);
        assert!(withheld(r).is_some());
    }
    // A scope that reveals something does need the KMS, and says so (retriable).
    let e = reveal(
        &kms,
        &bt,
        RevealScope::Parts(&RevealParts {
            record_key: true,
            ..RevealParts::default()
        }),
        &DecryptOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(e.is_retriable(), "{e}");
}

#[tokio::test]
async fn ciphertext_scope_still_enforces_require_encrypted() {
    let (kms, mut bt) = stored().await;
    bt.records.push(Record {
        offset_delta: 2,
        ..plain().records[0].clone()
    });
    let strict = DecryptOptions {
        require_encrypted: true,
        ..DecryptOptions::default()
    };
    let e = reveal(&kms, &bt, RevealScope::Ciphertext, &strict)
        .await
        .unwrap_err();
    assert!(matches!(e, DecryptError::NotEncrypted { index: 2 }), "{e}");
}

/// Flips one byte inside `v` (after `skip` bytes).
fn flip(v: &Bytes, skip: usize) -> Bytes {
    let mut m = v.to_vec();
    m[skip] ^= 1;
    Bytes::from(m)
}

#[tokio::test]
async fn a_tampered_part_fails_when_revealed() {
    let (kms, bt) = stored().await;
    let everything = RevealParts {
        value: true,
        record_key: true,
        headers: vec!["trace".into(), "pii".into()],
        ..RevealParts::default()
    };
    let only = |p: RevealParts| p;
    let cases: Vec<(&str, RecordBatch, RevealParts)> = vec![
        (
            "whole value",
            {
                let mut t = bt.clone();
                t.records[1].value = Some(flip(t.records[1].value.as_ref().unwrap(), 3));
                t
            },
            only(RevealParts {
                value: true,
                ..RevealParts::default()
            }),
        ),
        (
            "record key",
            {
                let mut t = bt.clone();
                t.records[1].key = Some(flip(t.records[1].key.as_ref().unwrap(), 0));
                t
            },
            only(RevealParts {
                record_key: true,
                ..RevealParts::default()
            }),
        ),
        (
            "header",
            {
                let mut t = bt.clone();
                let h = &mut t.records[0].headers[0];
                h.value = Some(flip(h.value.as_ref().unwrap(), 0));
                t
            },
            only(RevealParts {
                headers: vec!["trace".into()],
                ..RevealParts::default()
            }),
        ),
        (
            "JSON field",
            {
                let mut t = bt.clone();
                let v = String::from_utf8(t.records[0].value.as_ref().unwrap().to_vec()).unwrap();
                let mut doc = json(v.as_bytes());
                let s = doc["email"].as_str().unwrap().to_owned();
                // Swap the two PII ciphertexts: each still decodes, neither authenticates.
                doc["email"] = doc["ssn"].clone();
                doc["ssn"] = s.into();
                t.records[0].value = Some(Bytes::from(doc.to_string()));
                t
            },
            only(RevealParts {
                json_fields: vec!["/email".into()],
                ..RevealParts::default()
            }),
        ),
        ("everything, untampered control", bt.clone(), everything),
    ];
    for (what, tampered, parts) in cases {
        let r = reveal(
            &kms,
            &tampered,
            RevealScope::Parts(&parts),
            &DecryptOptions::default(),
        )
        .await;
        if what.contains("control") {
            assert!(r.is_ok(), "{what}: {:?}", r.err());
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(e, DecryptError::Integrity { .. }),
                "{what}: expected an integrity failure, got {e}"
            );
        }
    }
    // A withheld JSON field is covered by the record tag: editing it fails even when only
    // another field is revealed.
    let mut t = bt.clone();
    let mut doc = json(t.records[0].value.as_deref().unwrap());
    doc["ssn"] = "kapsule:v1:AAAA".into();
    t.records[0].value = Some(Bytes::from(doc.to_string()));
    let parts = RevealParts {
        json_fields: vec!["/email".into()],
        ..RevealParts::default()
    };
    let e = reveal(
        &kms,
        &t,
        RevealScope::Parts(&parts),
        &DecryptOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DecryptError::Integrity { .. }), "{e}");
}

#[tokio::test]
async fn a_stored_withheld_header_never_reaches_the_client() {
    let (kms, mut bt) = stored().await;
    // Clear headers are not authenticated: anyone can store one called kapsule.withheld.
    bt.records[0]
        .headers
        .insert(0, hdr(WITHHELD_HEADER, r#"{"value":true}"#));
    let (out, _) = reveal(&kms, &bt, RevealScope::All, &DecryptOptions::default())
        .await
        .unwrap();
    assert_eq!(header(&out.records[0], WITHHELD_HEADER), None);
    let parts = RevealParts {
        value: true,
        ..RevealParts::default()
    };
    let (out, _) = reveal(
        &kms,
        &bt,
        RevealScope::Parts(&parts),
        &DecryptOptions::default(),
    )
    .await
    .unwrap();
    let all: Vec<_> = out.records[0]
        .headers
        .iter()
        .filter(|h| h.key == WITHHELD_HEADER.as_bytes())
        .collect();
    assert_eq!(all.len(), 1);
    assert_eq!(
        withheld(&out.records[0]).unwrap(),
        serde_json::json!({"key": true, "headers": ["trace", "pii"]})
    );
}
