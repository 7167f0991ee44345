//! The record path of one Produce request and one Fetch response as the proxy runs it: a batch
//! of 1 KiB records decoded (CRC checked), the topic's built-in rule applied (whole values
//! encrypted), re-encoded with a new CRC; and the stored batch decrypted back the same way.
//!
//! Run: `cargo bench -p kapsule --bench pipeline`.
//!
//! `PIPELINE_ITERS=N` skips criterion and runs N produce-and-fetch rounds of each size in a plain
//! loop, for an instruction count that does not depend on the machine's noise:
//! `PIPELINE_ITERS=200 valgrind --tool=callgrind target/release/deps/pipeline-*`
//! (BENCHMARKS.md, "One copy per encrypted value").

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kapsule::crypto::{DekConfig, RecordEncryptor};
use kapsule::kafka::records::{Record, RecordBatch};
use kapsule::kms::memory::MemoryKms;
use kapsule::policy::config::PolicyConfig;
use kapsule::policy::PolicyRegistry;
use kapsule::proxy::config::RecordsMode;
use kapsule::proxy::records::{Encryption, RecordStage};
use kapsule::proxy::session::ClientSession;

/// The allocator the `kapsule` binary ships with, so allocation costs are the ones it pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Record counts per batch: a Java producer's 16 KiB batch, and a librdkafka batch under load.
const BATCH_SIZES: [usize; 2] = [16, 256];
const VALUE_LEN: usize = 1024;
const TOPIC: &str = "orders";

fn stage() -> RecordStage {
    let config: PolicyConfig = serde_norway::from_str(
        r#"
rules:
  - topics: "*"
    key_id: k1
    value: whole
"#,
    )
    .expect("the benchmark's policy parses");
    let policy = PolicyRegistry::new(&config).expect("the benchmark's policy loads");
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let encryptor = Arc::new(RecordEncryptor::new(kms, DekConfig::default()));
    RecordStage::new(
        RecordsMode::Passthrough,
        Some(Encryption { encryptor, policy }),
    )
}

/// One uncompressed batch of `count` records with 1 KiB values, a short key and no headers, as
/// a producer sends it.
fn produced_batch(count: usize) -> Bytes {
    let records = (0..count)
        .map(|i| Record {
            attributes: 0,
            timestamp_delta: i as i64,
            offset_delta: i as i32,
            key: Some(Bytes::from(format!("order-{i}"))),
            // Not one repeated byte, so nothing downstream can take a shortcut.
            value: Some(Bytes::from(
                (0..VALUE_LEN)
                    .map(|j| (i * 31 + j * 7) as u8)
                    .collect::<Vec<u8>>(),
            )),
            headers: vec![],
        })
        .collect();
    let batch = RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0,
        last_offset_delta: count as i32 - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000 + count as i64,
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: 0,
        records,
    };
    let mut out = BytesMut::new();
    batch
        .encode(&mut out)
        .expect("the benchmark's batch encodes");
    out.freeze()
}

fn produce_request(records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(records))])])
}

fn fetch_response(records: Bytes) -> FetchResponse {
    FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_records(Some(records))])])
}

/// Runs the produce side on `records`; returns the batch as the broker would store it.
async fn produce(stage: &RecordStage, session: &ClientSession, records: Bytes) -> Bytes {
    let mut request = produce_request(records);
    let patch = stage.on_produce(&mut request, session).await;
    assert!(patch.is_empty(), "the benchmark's batch was refused");
    request.topic_data[0].partition_data[0]
        .records
        .clone()
        .expect("records stay in the request")
}

/// Runs the fetch side on the stored `records`; returns what the consumer would receive.
async fn fetch(stage: &RecordStage, session: &ClientSession, records: Bytes) -> Bytes {
    let mut response = fetch_response(records);
    stage
        .on_fetch(&mut response, session)
        .await
        .expect("the benchmark's batch decrypts");
    response.responses[0].partitions[0]
        .records
        .clone()
        .expect("records stay in the response")
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let stage = stage();
    let session = ClientSession::new("127.0.0.1:1".parse::<SocketAddr>().expect("an address"));
    let inputs: Vec<(usize, Bytes, Bytes)> = BATCH_SIZES
        .iter()
        .map(|&count| {
            let produced = produced_batch(count);
            let stored = rt.block_on(produce(&stage, &session, produced.clone()));
            assert_eq!(
                rt.block_on(fetch(&stage, &session, stored.clone())),
                produced,
                "the round trip gives back what was produced"
            );
            (count, produced, stored)
        })
        .collect();

    if let Some(iters) = std::env::var("PIPELINE_ITERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        for _ in 0..iters {
            for (_, produced, stored) in &inputs {
                rt.block_on(produce(&stage, &session, produced.clone()));
                rt.block_on(fetch(&stage, &session, stored.clone()));
            }
        }
        return;
    }

    let mut g = c.benchmark_group("pipeline");
    for (count, produced, stored) in &inputs {
        g.throughput(Throughput::Bytes((count * VALUE_LEN) as u64));
        g.bench_function(format!("produce_whole_{count}x1KiB"), |b| {
            b.iter_batched(
                || produced.clone(),
                |records| rt.block_on(produce(&stage, &session, records)),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("fetch_whole_{count}x1KiB"), |b| {
            b.iter_batched(
                || stored.clone(),
                |records| rt.block_on(fetch(&stage, &session, records)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = pipeline;
    config = Criterion::default().sample_size(30);
    targets = benches
}
criterion_main!(pipeline);
