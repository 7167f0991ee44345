//! Schema fields through the record stage: Avro and JSON Schema values encrypted field by field
//! stay valid wire-format values, open byte-exact with fresh caches and no registry, reveal per
//! path, and fail closed on tampering, a wrong type, a missing prefix and an unreachable registry.

use std::sync::Arc;

use bytes::Bytes;

use super::super::*;
use crate::crypto::keys::DekConfig;
use crate::crypto::wire::JSON_PREFIX;
use crate::kafka::records::{Record, RecordBatch};
use crate::kms::memory::MemoryKms;
use crate::plan::{EncryptionPlan, FieldSelection, RecordDecision, RevealParts, ValuePart};
use crate::schema::registry::SchemaRegistryConfig;
use crate::schema::varint::{read_zigzag, write_zigzag};
use crate::schema::{RegisteredSchema, SchemaRegistry};

const TOPIC: &str = "orders";

const AVRO: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"long"},
  {"name":"ssn","type":"string","confluent:tags":["PII"]},
  {"name":"photo","type":["null","bytes"],"confluent:tags":["PII"]},
  {"name":"cards","type":{"type":"array","items":"string"}},
  {"name":"note","type":"string"}]}"#;

const JSON_SCHEMA: &str = r#"{"type":"object","properties":{
  "id":{"type":"integer"},"ssn":{"type":"string","confluent:tags":["PII"]},
  "note":{"type":"string"}}}"#;

fn registry(url: &str) -> Arc<SchemaRegistry> {
    let cfg: SchemaRegistryConfig =
        serde_norway::from_str(&format!("url: {url}\ntimeout_ms: 300\n")).unwrap();
    let r = SchemaRegistry::new(&cfg).unwrap();
    r.preload(RegisteredSchema::parse(1, None, AVRO).unwrap());
    r.preload(RegisteredSchema::parse(2, Some("JSON"), JSON_SCHEMA).unwrap());
    Arc::new(r)
}

fn avro_value(ssn: &str, photo: Option<&[u8]>, note: &str) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, 1];
    write_zigzag(&mut v, 7);
    let s = |v: &mut Vec<u8>, b: &[u8]| {
        write_zigzag(v, b.len() as i64);
        v.extend_from_slice(b);
    };
    s(&mut v, ssn.as_bytes());
    match photo {
        None => write_zigzag(&mut v, 0),
        Some(p) => {
            write_zigzag(&mut v, 1);
            s(&mut v, p);
        }
    }
    write_zigzag(&mut v, 2);
    s(&mut v, b"4111");
    s(&mut v, b"5500");
    write_zigzag(&mut v, 0);
    s(&mut v, note.as_bytes());
    v
}

fn batch(values: Vec<Vec<u8>>) -> RecordBatch {
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes: 0,
        last_offset_delta: values.len() as i32 - 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: values
            .into_iter()
            .enumerate()
            .map(|(i, v)| Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: i as i32,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from(v)),
                headers: vec![],
            })
            .collect(),
    }
}

fn plan(fields: &[&str], tags: &[&str]) -> RecordDecision {
    RecordDecision::encrypt(EncryptionPlan {
        key_id: "k1".into(),
        value: ValuePart::SchemaFields(FieldSelection {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }),
        record_key: false,
        headers: vec![],
    })
}

fn encryptor(kms: &Arc<MemoryKms>) -> RecordEncryptor {
    RecordEncryptor::new(kms.clone(), DekConfig::default())
        .with_schema_registry(registry("http://127.0.0.1:9"))
}

/// Reads the Avro `Order` body of `v`: (ssn, photo, cards, note) as raw field contents.
/// ssn, photo, cards, note.
type DecodedOrder = (Vec<u8>, Option<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>);

fn decode_order(v: &[u8]) -> DecodedOrder {
    let mut pos = 5;
    let s = |pos: &mut usize| {
        let n = read_zigzag(v, pos).unwrap() as usize;
        let out = v[*pos..*pos + n].to_vec();
        *pos += n;
        out
    };
    assert_eq!(read_zigzag(v, &mut pos), Some(7));
    let ssn = s(&mut pos);
    let photo = match read_zigzag(v, &mut pos).unwrap() {
        0 => None,
        _ => Some(s(&mut pos)),
    };
    let n = read_zigzag(v, &mut pos).unwrap();
    let cards = (0..n).map(|_| s(&mut pos)).collect();
    assert_eq!(read_zigzag(v, &mut pos), Some(0));
    let note = s(&mut pos);
    assert_eq!(pos, v.len(), "whole body consumed");
    (ssn, photo, cards, note)
}

#[tokio::test]
async fn avro_fields_round_trip_byte_exact_and_stay_valid_avro() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let plain = batch(vec![
        avro_value("078-05-1120", Some(b"\x00\xffjpeg"), "hello"),
        avro_value("", None, "n2"),
    ]);
    let mut bt = plain.clone();
    let d = plan(&["cards"], &["PII"]);
    encryptor(&kms)
        .encrypt_batch(TOPIC, &mut bt, &[d.clone(), d])
        .await
        .unwrap();
    let (ssn, photo, cards, note) = decode_order(bt.records[0].value.as_ref().unwrap());
    assert!(
        ssn.starts_with(JSON_PREFIX.as_bytes()),
        "ssn: text ciphertext"
    );
    let photo = photo.expect("photo stays the bytes branch");
    assert_eq!(
        photo.len(),
        1 + 6,
        "bytes: raw ciphertext of the length and content (no tag of its own: revision 3)"
    );
    assert!(cards.iter().all(|c| c.starts_with(JSON_PREFIX.as_bytes())));
    assert_eq!(note, b"hello", "unselected field untouched");
    assert_eq!(
        &bt.records[0].value.as_ref().unwrap()[..5],
        &[0, 0, 0, 0, 1]
    );
    let (_, photo2, _, _) = decode_order(bt.records[1].value.as_ref().unwrap());
    assert_eq!(photo2, None, "null stays null");

    // A fresh encryptor without any registry opens it: the descriptor carries the spans.
    let reader = RecordEncryptor::new(kms.clone(), DekConfig::default());
    let mut out = bt.clone();
    reader
        .decrypt_batch(TOPIC, &mut out, &DecryptOptions::default())
        .await
        .unwrap();
    assert_eq!(out, plain);

    // Reveal one path: cards in clear (both elements), ssn and photo withheld.
    let parts = RevealParts {
        schema_fields: vec!["cards".into()],
        ..Default::default()
    };
    let mut out = bt.clone();
    reader
        .decrypt_batch_revealing(
            TOPIC,
            &mut out,
            &DecryptOptions::default(),
            RevealScope::Parts(&parts),
        )
        .await
        .unwrap();
    let (ssn, _, cards, _) = decode_order(out.records[0].value.as_ref().unwrap());
    assert!(ssn.starts_with(JSON_PREFIX.as_bytes()));
    assert_eq!(cards, vec![b"4111".to_vec(), b"5500".to_vec()]);
    let w = out.records[0]
        .headers
        .iter()
        .find(|h| h.key == WITHHELD_HEADER.as_bytes())
        .unwrap();
    let w: serde_json::Value = serde_json::from_slice(w.value.as_ref().unwrap()).unwrap();
    assert_eq!(w, serde_json::json!({"schema_fields": ["ssn", "photo"]}));

    // Tampering with a ciphertext byte, or moving to another topic, fails authentication.
    let mut bad = bt.clone();
    let mut v = bad.records[0].value.as_ref().unwrap().to_vec();
    let at = v.len() - 10;
    v[at] ^= 1;
    bad.records[0].value = Some(Bytes::from(v));
    let e = reader
        .decrypt_batch(TOPIC, &mut bad, &DecryptOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, DecryptError::Integrity { .. }), "{e}");
    let mut moved = bt.clone();
    assert!(reader
        .decrypt_batch("other", &mut moved, &DecryptOptions::default())
        .await
        .is_err());
}

#[tokio::test]
async fn json_schema_fields_round_trip_byte_exact() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let mut v = vec![0, 0, 0, 0, 2];
    v.extend_from_slice(br#"{ "id": 1, "ssn" : "078-05-1120", "note": "x" }"#);
    let plain = batch(vec![v]);
    let mut bt = plain.clone();
    encryptor(&kms)
        .encrypt_batch(TOPIC, &mut bt, &[plan(&[], &["PII"])])
        .await
        .unwrap();
    let stored = bt.records[0].value.as_ref().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&stored[5..]).unwrap();
    assert!(doc["ssn"].as_str().unwrap().starts_with(JSON_PREFIX));
    assert_eq!(doc["note"], "x");
    let reader = RecordEncryptor::new(kms.clone(), DekConfig::default());
    reader
        .decrypt_batch(TOPIC, &mut bt, &DecryptOptions::default())
        .await
        .unwrap();
    assert_eq!(bt, plain);
}

#[tokio::test]
async fn unfit_records_are_refused_and_an_unreachable_registry_is_retriable() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = encryptor(&kms);
    let refuse = |value: Vec<u8>, d: RecordDecision| {
        let enc = &enc;
        async move {
            let mut bt = batch(vec![value]);
            let before = bt.clone();
            let e = enc.encrypt_batch(TOPIC, &mut bt, &[d]).await.unwrap_err();
            assert_eq!(bt, before, "batch untouched on error");
            e
        }
    };
    let e = refuse(b"{\"ssn\":\"x\"}".to_vec(), plan(&[], &["PII"])).await;
    assert!(
        e.to_string()
            .contains("not in the Confluent Schema Registry wire format"),
        "{e}"
    );
    assert!(!e.is_retriable());
    let e = refuse(avro_value("a", None, "b"), plan(&["id"], &[])).await;
    assert!(e.to_string().contains("field `id` is an Avro long"), "{e}");
    let mut truncated = avro_value("a", None, "b");
    truncated.pop();
    let e = refuse(truncated, plan(&[], &["PII"])).await;
    assert!(
        e.to_string().contains("does not decode under schema id 1"),
        "{e}"
    );
    // Schema id 3 is not cached and the registry (port 9, discard) does not answer: retriable.
    let mut other = avro_value("a", None, "b");
    other[4] = 3;
    let e = refuse(other, plan(&[], &["PII"])).await;
    assert!(e.is_retriable(), "{e}");
    assert!(e.to_string().contains("schema registry unavailable"), "{e}");
}
