//! Encryption throughput: raw AES-256-GCM, whole-value record encryption, per-field JSON
//! encryption, schema-field (Avro, Protobuf, JSON Schema) encryption against whole-value
//! encryption of the same records, and decryption.
//! Run: `cargo bench -p kapsule --bench crypto`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kapsule::crypto::primitives::Dek;
use kapsule::crypto::record::RecordFormat;
use kapsule::crypto::{DecryptOptions, DekConfig, RecordEncryptor};
use kapsule::kafka::records::{Record, RecordBatch};
use kapsule::kms::memory::MemoryKms;
use kapsule::plan::{EncryptionPlan, FieldSelection, RecordDecision, ValuePart};
use kapsule::schema::registry::SchemaRegistryConfig;
use kapsule::schema::{varint, RegisteredSchema, SchemaRegistry};

/// The allocator the `kapsule` binary ships with, so allocation costs are the ones it pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 100;

fn batch(values: Vec<Bytes>) -> RecordBatch {
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
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(v),
                headers: vec![],
            })
            .collect(),
    }
}

fn json_record(i: usize) -> Bytes {
    let mut s = String::from("{");
    for f in 0..10 {
        if f > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "\"field{f}\":\"value-{i}-{f}-{}\"",
            "x".repeat(60)
        ));
    }
    s.push('}');
    Bytes::from(s)
}

/// Ten string fields, `field0`..`field9`; `field0`, `field3` and `field6` are tagged PII.
const TAGGED: [usize; 3] = [0, 3, 6];

/// The text of field `f` of record `i`, `len` bytes.
fn text(i: usize, f: usize, len: usize) -> String {
    let mut s = format!("value-{i}-{f}-");
    s.extend(std::iter::repeat_n('x', len - s.len()));
    s
}

/// Avro: a record of the ten string fields.
fn avro_schema() -> String {
    let fields: Vec<String> = (0..10)
        .map(|f| {
            let tags = if TAGGED.contains(&f) {
                r#","confluent:tags":["PII"]"#
            } else {
                ""
            };
            format!(r#"{{"name":"field{f}","type":"string"{tags}}}"#)
        })
        .collect();
    format!(
        r#"{{"type":"record","name":"R","fields":[{}]}}"#,
        fields.join(",")
    )
}

/// A 1 KiB Avro record in the wire format (schema id 1): nine strings of 100 bytes and one of 99
/// (each after a 2-byte length), 5 bytes of prefix.
fn avro_record(i: usize) -> Bytes {
    let mut v = vec![0, 0, 0, 0, 1];
    for f in 0..10 {
        let s = text(i, f, if f == 9 { 99 } else { 100 });
        varint::write_zigzag(&mut v, s.len() as i64);
        v.extend_from_slice(s.as_bytes());
    }
    assert_eq!(v.len(), 1024);
    Bytes::from(v)
}

/// Protobuf: a proto3 message of the ten string fields, tagged with `(confluent.field_meta)`.
fn protobuf_schema() -> String {
    let fields: String = (0..10)
        .map(|f| {
            let tags = if TAGGED.contains(&f) {
                r#" [(confluent.field_meta) = { tags: ["PII"] }]"#
            } else {
                ""
            };
            format!("  string field{f} = {}{tags};\n", f + 1)
        })
        .collect();
    format!("syntax = \"proto3\";\nimport \"confluent/meta.proto\";\nmessage R {{\n{fields}}}\n")
}

/// A 1 KiB Protobuf record in the wire format (schema id 2, message index `[0]` as the single
/// byte 0): nine strings of 100 bytes and one of 98, each after a 1-byte key and 1-byte length.
fn protobuf_record(i: usize) -> Bytes {
    let mut v = vec![0, 0, 0, 0, 2, 0];
    for f in 0..10 {
        let s = text(i, f, if f == 9 { 98 } else { 100 });
        v.push((((f + 1) << 3) | 2) as u8);
        varint::write_unsigned(&mut v, s.len() as u64);
        v.extend_from_slice(s.as_bytes());
    }
    assert_eq!(v.len(), 1024);
    Bytes::from(v)
}

/// JSON Schema: an object of the ten string properties.
fn json_schema() -> String {
    let props: Vec<String> = (0..10)
        .map(|f| {
            let tags = if TAGGED.contains(&f) {
                r#","confluent:tags":["PII"]"#
            } else {
                ""
            };
            format!(r#""field{f}":{{"type":"string"{tags}}}"#)
        })
        .collect();
    format!(
        r#"{{"type":"object","properties":{{{}}}}}"#,
        props.join(",")
    )
}

/// A 1 KiB JSON record in the wire format (schema id 3): nine strings of 90 bytes and one of 88.
fn json_schema_record(i: usize) -> Bytes {
    let body: Vec<String> = (0..10)
        .map(|f| {
            format!(
                r#""field{f}":"{}""#,
                text(i, f, if f == 9 { 88 } else { 90 })
            )
        })
        .collect();
    let mut v = vec![0, 0, 0, 0, 3];
    v.extend_from_slice(format!("{{{}}}", body.join(",")).as_bytes());
    assert_eq!(v.len(), 1024);
    Bytes::from(v)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let dek = Dek::new(&[7u8; 32], "k", b"edek");
    let pt = vec![0x5au8; 1024];
    let mut g = c.benchmark_group("aes256gcm");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("seal_1KiB", |b| {
        b.iter(|| dek.seal(&[1u8; 12], b"associated data of ~100 bytes", &pt))
    });
    g.finish();

    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let enc = RecordEncryptor::new(kms.clone(), DekConfig::default());
    // Whole values as releases before revision 3 for whole values wrote them (two AES-GCM calls).
    let enc_rev1 =
        RecordEncryptor::new(kms, DekConfig::default()).with_record_format(RecordFormat {
            whole_value_revision: 1,
        });
    let whole = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k".into(),
        value: ValuePart::Whole,
        record_key: false,
        headers: vec![],
    });
    let whole_keyed = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k".into(),
        value: ValuePart::Whole,
        record_key: true,
        headers: vec![],
    });
    let fields = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k".into(),
        value: ValuePart::JsonFields((0..10).map(|f| format!("/field{f}")).collect()),
        record_key: false,
        headers: vec![],
    });
    let values = batch(
        (0..RECORDS)
            .map(|_| Bytes::from(vec![0x42u8; 1024]))
            .collect(),
    );
    let jsons = batch((0..RECORDS).map(json_record).collect());
    let registry = SchemaRegistry::new(
        &serde_norway::from_str::<SchemaRegistryConfig>("url: http://127.0.0.1:9").unwrap(),
    )
    .unwrap();
    registry.preload(RegisteredSchema::parse(1, None, &avro_schema()).unwrap());
    registry.preload(RegisteredSchema::parse(2, Some("PROTOBUF"), &protobuf_schema()).unwrap());
    registry.preload(RegisteredSchema::parse(3, Some("JSON"), &json_schema()).unwrap());
    let schema_enc =
        RecordEncryptor::new(Arc::new(MemoryKms::with_keys(&["k"])), DekConfig::default())
            .with_schema_registry(Arc::new(registry));
    let pii_fields = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k".into(),
        value: ValuePart::SchemaFields(FieldSelection {
            fields: vec![],
            tags: vec!["PII".into()],
        }),
        record_key: false,
        headers: vec![],
    });
    let d_pii = vec![pii_fields; RECORDS];
    let d_whole = vec![whole; RECORDS];
    let d_keyed = vec![whole_keyed; RECORDS];
    let d_fields = vec![fields; RECORDS];

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, enc, b0, d) in [
        ("encrypt_whole_1KiB", &enc, &values, &d_whole),
        (
            "encrypt_whole_1KiB_revision_1",
            &enc_rev1,
            &values,
            &d_whole,
        ),
        ("encrypt_whole_1KiB_and_key", &enc, &values, &d_keyed),
        ("encrypt_json_10_fields", &enc, &jsons, &d_fields),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || b0.clone(),
                |mut bt| rt.block_on(enc.encrypt_batch("bench", &mut bt, d)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    for (name, enc, b0, d) in [
        ("decrypt_whole_1KiB", &enc, &values, &d_whole),
        (
            "decrypt_whole_1KiB_revision_1",
            &enc_rev1,
            &values,
            &d_whole,
        ),
        ("decrypt_json_10_fields", &enc, &jsons, &d_fields),
    ] {
        let mut encrypted = b0.clone();
        rt.block_on(enc.encrypt_batch("bench", &mut encrypted, d))
            .unwrap();
        g.bench_function(name, |b| {
            b.iter_batched(
                || encrypted.clone(),
                |mut bt| {
                    rt.block_on(enc.decrypt_batch("bench", &mut bt, &DecryptOptions::default()))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // Schema fields: the same 1 KiB record of each format, its three PII fields encrypted (walk
    // by the writer schema, one GCM part per field, spans in the descriptor) and whole.
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (format, records) in [
        ("avro", batch((0..RECORDS).map(avro_record).collect())),
        (
            "protobuf",
            batch((0..RECORDS).map(protobuf_record).collect()),
        ),
        (
            "json",
            batch((0..RECORDS).map(json_schema_record).collect()),
        ),
    ] {
        let mut check = records.clone();
        rt.block_on(schema_enc.encrypt_batch("bench", &mut check, &d_pii))
            .unwrap();
        let stored = String::from_utf8_lossy(check.records[0].value.as_ref().unwrap()).into_owned();
        for f in 0..10 {
            let clear = stored.contains(&format!("value-0-{f}-"));
            assert_eq!(
                clear,
                !TAGGED.contains(&f),
                "{format}: field{f} in {stored}"
            );
        }
        if format == "json" {
            // The JSON scan alone (validation and the three targets' spans) on the body of
            // each record: the part of the JSON Schema case that the other formats do not pay.
            let bodies: Vec<Bytes> = records
                .records
                .iter()
                .map(|r| r.value.as_ref().unwrap().slice(5..))
                .collect();
            let names: Vec<String> = TAGGED.iter().map(|f| format!("/field{f}")).collect();
            let pointers: Vec<Vec<String>> = names
                .iter()
                .map(|p| kapsule::json::parse_pointer(p).unwrap())
                .collect();
            g.bench_function("json_scan_3_targets_1KiB", |b| {
                b.iter(|| {
                    for body in &bodies {
                        let spans = kapsule::json::find_spans(body, &pointers, &names).unwrap();
                        assert!(spans.iter().all(Option::is_some));
                    }
                })
            });
        }
        for (what, d) in [("3_string_fields", &d_pii), ("whole", &d_whole)] {
            g.bench_function(format!("{format}_{what}_1KiB"), |b| {
                b.iter_batched(
                    || records.clone(),
                    |mut bt| {
                        rt.block_on(schema_enc.encrypt_batch("bench", &mut bt, d))
                            .unwrap()
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = crypto;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(crypto);
