//! Oracle of the structure-aware `produce` target: arbitrary batches and per-record decisions
//! through encrypt → encode → split → decode → decrypt (fresh encryptor, empty caches), which
//! must give back the input batch exactly.

use bytes::Bytes;

use super::fetch::TOPIC;
use super::kms::{block_on, encryptor, MISSING_KEY_PREFIX};
use crate::crypto::record::{DecryptFailure, DecryptOptions, EncryptError};
use crate::crypto::wire::HEADER_KEY;
use crate::kafka::records::{split_record_set, Record, RecordBatch, RecordSetEntry};
use crate::kms::KmsErrorKind;
use crate::plan::{EncryptionPlan, RecordDecision, ValuePart};

/// JSON pointers of the JSON-fields plan (present in the values [`prepare`] writes).
const POINTERS: [&str; 3] = ["/a", "/b/0", "/absent"];

/// The decision for one record from its selector byte: bits 4-6 pick the kind (0 pass, 1
/// reject, 2 encrypt under a key the KMS does not have, 3-7 encrypt), bits 0-1 the value part
/// (0 none, 1 and 3 whole, 2 JSON fields), bit 2 the record key, bit 3 the first two header
/// names, bit 7 the key id ("k1" or "k2").
pub fn decision(selector: u8, record: &Record) -> RecordDecision {
    let key_id = match (selector >> 4) & 7 {
        0 => return RecordDecision::Pass,
        1 => return RecordDecision::Reject("refused by the fuzz plan".into()),
        2 => format!("{MISSING_KEY_PREFIX}-k"),
        _ if selector & 0x80 != 0 => "k2".into(),
        _ => "k1".into(),
    };
    let value = match selector & 3 {
        0 => ValuePart::None,
        2 => ValuePart::JsonFields(POINTERS.iter().map(|p| p.to_string()).collect()),
        _ => ValuePart::Whole,
    };
    let headers = if selector & 8 != 0 {
        record
            .headers
            .iter()
            .filter_map(|h| std::str::from_utf8(&h.key).ok())
            .take(2)
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    RecordDecision::encrypt(EncryptionPlan {
        key_id,
        value,
        record_key: selector & 4 != 0,
        headers,
    })
}

/// Makes the input meet the decisions where that is the point of the test: a record whose
/// plan encrypts JSON fields gets a JSON value built from its bytes, so the JSON path is
/// exercised on success and not only on "not JSON" errors.
pub fn prepare(batch: &mut RecordBatch, selectors: &[u8]) {
    for (i, r) in batch.records.iter_mut().enumerate() {
        let s = selectors.get(i).copied().unwrap_or(0);
        if (s >> 4) & 7 >= 3 && s & 3 == 2 {
            if let Some(v) = &r.value {
                let text = String::from_utf8_lossy(v);
                let json = serde_json::json!({ "a": text, "b": [v.len(), "x"], "c": null });
                r.value = Some(Bytes::from(json.to_string()));
            }
        }
    }
}

fn has_descriptor(r: &Record) -> bool {
    r.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes())
}

/// Encrypts `input` with per-record decisions from `selectors` ([`decision`]; missing ones
/// pass), then sends it through the wire format and decrypts it with a fresh encryptor. Panics
/// when: a refusal names a record that does not explain it, or changed the batch; the
/// encrypted batch does not encode, split as one batch and decode to itself; a whole value left
/// in clear; or the decrypted batch differs from the input in any field. Inputs that already
/// carry a `kapsule.enc` header are only checked for not panicking.
pub fn check(input: &RecordBatch, selectors: &[u8]) {
    let decisions: Vec<RecordDecision> = input
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| decision(selectors.get(i).copied().unwrap_or(0), r))
        .collect();
    let forged = input.records.iter().any(has_descriptor);
    let mut wire = input.clone();
    let sealer = encryptor();
    if let Err(e) = block_on(sealer.encrypt_batch(TOPIC, &mut wire, &decisions)) {
        assert_eq!(&wire, input, "a refused batch was changed: {e}");
        let explained = match &e {
            EncryptError::Rejected { index, .. } => {
                matches!(decisions[*index], RecordDecision::Reject(_))
            }
            EncryptError::InvalidRecord { index, .. } => {
                has_descriptor(&input.records[*index])
                    || matches!(&decisions[*index], RecordDecision::Encrypt(p)
                        if matches!(p.value, ValuePart::JsonFields(_)))
            }
            EncryptError::PreEncrypted { index } => has_descriptor(&input.records[*index]),
            EncryptError::InvalidKeyId { key_id, .. } => {
                crate::crypto::wire::validate_key_id(key_id).is_err()
            }
            EncryptError::Kms(k) => {
                k.kind == KmsErrorKind::UnknownKey && k.key_id.starts_with(MISSING_KEY_PREFIX)
            }
            // The fuzzer's plans never select schema fields.
            EncryptError::Schema { .. } | EncryptError::DecisionCount { .. } => false,
        };
        assert!(explained, "unexpected refusal: {e}");
        return;
    }
    for ((before, after), d) in input.records.iter().zip(&wire.records).zip(&decisions) {
        if let RecordDecision::Encrypt(plan) = d {
            if plan.value == ValuePart::Whole && before.value.as_ref().is_some_and(|v| v.len() > 8)
            {
                assert_ne!(before.value, after.value, "a whole value was left in clear");
            }
        }
    }
    let bytes = wire.to_bytes().expect("an encrypted batch must encode");
    let entries: Vec<_> = split_record_set(&bytes).collect();
    assert_eq!(entries.len(), 1, "one batch in, one batch out");
    let Some(Ok(RecordSetEntry::Batch(raw))) = entries.into_iter().next() else {
        panic!("an encoded batch must split as one complete batch");
    };
    let mut fetched = raw.decode().expect("an encoded batch must decode");
    assert_eq!(fetched, wire, "decode(encode(b)) != b");
    if forged {
        return;
    }
    let decryptor = encryptor();
    let strict = DecryptOptions {
        on_failure: DecryptFailure::Error,
        require_encrypted: false,
        allowed_kek: None,
    };
    if let Err(e) = block_on(decryptor.decrypt_batch(TOPIC, &mut fetched, &strict)) {
        panic!("a batch this proxy encrypted failed to decrypt: {e}");
    }
    assert_eq!(&fetched, input, "decrypt(encrypt(b)) != b");
}
