//! Record-batch codec throughput: decode, encode and decode+encode (the proxy's path) of a
//! realistic batch (100 records, 1 KiB text-like values, 16-byte keys, 2 headers each),
//! uncompressed and with every codec. Throughput is reported against the uncompressed records
//! size. Run: `cargo bench -p kapsule --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kapsule::kafka::compression::Compression;
use kapsule::kafka::records::{Record, RecordBatch, RecordHeader};

/// Deterministic text-like payload (compresses roughly like JSON log lines do).
fn payload(seed: u64, len: usize) -> Bytes {
    const WORDS: [&str; 16] = [
        "\"user\":",
        "\"event\":",
        "\"click\"",
        "\"view\"",
        "12345",
        "\"ts\":",
        "true,",
        "null,",
        "\"sku\":",
        "\"EUR\"",
        "{",
        "}",
        "\"session\":",
        "0.75,",
        "\"de-DE\"",
        "\"id\":",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        // Some entropy so it does not compress absurdly well.
        v.extend_from_slice(format!("{:x}", x >> 40).as_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn batch(compression: Compression) -> RecordBatch {
    let records = (0..100u64)
        .map(|i| Record {
            attributes: 0,
            timestamp_delta: i as i64,
            offset_delta: i as i32,
            key: Some(Bytes::from(format!("customer-{i:07}"))),
            value: Some(payload(i, 1024)),
            headers: vec![
                RecordHeader {
                    key: Bytes::from_static(b"content-type"),
                    value: Some(Bytes::from_static(b"application/json")),
                },
                RecordHeader {
                    key: Bytes::from_static(b"trace-id"),
                    value: Some(Bytes::from(format!("{:032x}", i * 7919))),
                },
            ],
        })
        .collect();
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes: compression.apply_to_attributes(0),
        last_offset_delta: 99,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_099,
        producer_id: 1000,
        producer_epoch: 0,
        base_sequence: 0,
        records,
    }
}

fn bench_codec(c: &mut Criterion) {
    let plain_len = batch(Compression::None).to_bytes().unwrap().len() as u64;
    for (name, group_fn) in [("decode", 0), ("encode", 1), ("decode+encode", 2)] {
        let mut group = c.benchmark_group(format!("codec/{name}"));
        group.throughput(Throughput::Bytes(plain_len));
        for compression in Compression::ALL {
            let b = batch(compression);
            let wire = b.to_bytes().unwrap();
            group.bench_with_input(
                BenchmarkId::from_parameter(compression),
                &(b, wire),
                |bench, (b, wire)| match group_fn {
                    0 => bench.iter(|| RecordBatch::decode(black_box(wire)).unwrap()),
                    1 => bench.iter(|| {
                        let mut out = BytesMut::new();
                        black_box(b).encode(&mut out).unwrap();
                        out
                    }),
                    _ => bench.iter(|| {
                        let decoded = RecordBatch::decode(black_box(wire)).unwrap();
                        let mut out = BytesMut::with_capacity(wire.len() + 64);
                        decoded.encode(&mut out).unwrap();
                        out
                    }),
                },
            );
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench_codec
}
criterion_main!(benches);
