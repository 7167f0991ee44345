//! Encryption throughput: raw AES-256-GCM, whole-value record encryption, per-field JSON
//! encryption, schema-field (Avro) encryption, and decryption.
//! Run: `cargo bench -p kapsule --bench crypto`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kapsule::crypto::primitives::Dek;
use kapsule::crypto::{DecryptOptions, DekConfig, RecordEncryptor};
use kapsule::kafka::records::{Record, RecordBatch};
use kapsule::kms::memory::MemoryKms;
use kapsule::plan::{EncryptionPlan, FieldSelection, RecordDecision, ValuePart};
use kapsule::schema::registry::SchemaRegistryConfig;
use kapsule::schema::{varint, RegisteredSchema, SchemaRegistry};

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

/// An Avro schema of ten string fields, three of them tagged PII.
fn avro_schema() -> String {
    let fields: Vec<String> = (0..10)
        .map(|f| {
            let tags = if f % 3 == 0 && f < 9 {
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

/// A 1 KiB Avro record in the wire format (schema id 1) of [`avro_schema`]: nine strings of 100
/// bytes and one of 99 (each after a 2-byte length), 5 bytes of prefix.
fn avro_record(i: usize) -> Bytes {
    let mut v = vec![0, 0, 0, 0, 1];
    for f in 0..10 {
        let len = if f == 9 { 99 } else { 100 };
        let mut s = format!("value-{i}-{f}-");
        s.extend(std::iter::repeat_n('x', len - s.len()));
        varint::write_zigzag(&mut v, s.len() as i64);
        v.extend_from_slice(s.as_bytes());
    }
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
    let enc = RecordEncryptor::new(kms, DekConfig::default());
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
    let avros = batch((0..RECORDS).map(avro_record).collect());
    let registry = SchemaRegistry::new(
        &serde_norway::from_str::<SchemaRegistryConfig>("url: http://127.0.0.1:9").unwrap(),
    )
    .unwrap();
    registry.preload(RegisteredSchema::parse(1, None, &avro_schema()).unwrap());
    let schema_enc =
        RecordEncryptor::new(Arc::new(MemoryKms::with_keys(&["k"])), DekConfig::default())
            .with_schema_registry(Arc::new(registry));
    let avro_fields = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k".into(),
        value: ValuePart::SchemaFields(FieldSelection {
            fields: vec![],
            tags: vec!["PII".into()],
        }),
        record_key: false,
        headers: vec![],
    });
    let d_avro = vec![avro_fields; RECORDS];
    let d_whole = vec![whole; RECORDS];
    let d_keyed = vec![whole_keyed; RECORDS];
    let d_fields = vec![fields; RECORDS];

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for (name, b0, d) in [
        ("encrypt_whole_1KiB", &values, &d_whole),
        ("encrypt_whole_1KiB_and_key", &values, &d_keyed),
        ("encrypt_json_10_fields", &jsons, &d_fields),
        ("encrypt_whole_avro_1KiB", &avros, &d_whole),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || b0.clone(),
                |mut bt| rt.block_on(enc.encrypt_batch("bench", &mut bt, d)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("encrypt_avro_3_string_fields_1KiB", |b| {
        b.iter_batched(
            || avros.clone(),
            |mut bt| {
                rt.block_on(schema_enc.encrypt_batch("bench", &mut bt, &d_avro))
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    for (name, b0, d) in [
        ("decrypt_whole_1KiB", &values, &d_whole),
        ("decrypt_json_10_fields", &jsons, &d_fields),
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
}

criterion_group! {
    name = crypto;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(crypto);
