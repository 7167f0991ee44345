//! confluent-kafka (librdkafka): records come back byte-exact under every compression codec, with
//! an idempotent producer, and at 5 MiB.

use rstest::rstest;

use kapsule_integration::{RecordsMode, TestRecord};

use crate::common::{assert_records_match, ck_consume, ck_produce, Rig};

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn records_survive_byte_exact_per_compression(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
    #[values("none", "gzip", "snappy", "lz4", "zstd")] compression: &str,
) {
    let rig = Rig::start(mode).await;
    let topic = rig.topic(&format!("ck-{compression}"), 1).await;
    // Duplicate header keys, null header values, null keys and values, empty values, explicit
    // timestamps and every byte value in keys.
    let records = TestRecord::varied(&format!("ck-{compression}-{mode}"), 60);
    ck_produce(
        &rig.bootstrap(),
        &topic,
        &records,
        &["--compression", compression],
    )
    .await;
    let consumed = ck_consume(&rig.bootstrap(), &topic, records.len(), &[]).await;
    assert_records_match(&records, &consumed);
    for c in &consumed {
        assert_eq!(c.record.partition, Some(0));
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producer_delivers_each_record_once(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let rig = Rig::start(mode).await;
    let topic = rig.topic("ck-idem", 3).await;
    let records: Vec<TestRecord> = (0..300)
        .map(|i| {
            TestRecord::kv(
                format!("idem-{i}"),
                format!("value-{i}-{}", "x".repeat(i % 97)),
            )
        })
        .collect();
    let out = ck_produce(
        &rig.bootstrap(),
        &topic,
        &records,
        &[
            "--idempotent",
            "--compression",
            "lz4",
            "--config",
            "max.in.flight.requests.per.connection=5",
        ],
    )
    .await;
    // Offsets reported to the producer are distinct per partition and dense from 0.
    let mut per_partition: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for d in out["deliveries"].as_array().unwrap() {
        per_partition
            .entry(d["partition"].as_i64().unwrap())
            .or_default()
            .push(d["offset"].as_i64().unwrap());
    }
    for (p, offs) in &mut per_partition {
        offs.sort_unstable();
        let dense: Vec<i64> = (0..offs.len() as i64).collect();
        assert_eq!(*offs, dense, "partition {p} offsets not dense from 0");
    }
    let consumed = ck_consume(&rig.bootstrap(), &topic, records.len(), &[]).await;
    assert_records_match(&records, &consumed);
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn five_mib_record_round_trips(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let rig = Rig::start(mode).await;
    // Kafka refuses batches over the topic's `max.message.bytes` (1 MiB by default).
    let topic = rig
        .topic_with("ck-large", 1, &[("max.message.bytes", "16777216")])
        .await;
    let size = 5 * 1024 * 1024;
    // Incompressible-looking but deterministic bytes (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let value: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut big = TestRecord::kv("large-key", value);
    big.headers = vec![("h".into(), Some(vec![0xff; 3]))];
    let records = vec![
        TestRecord::kv("before", "small"),
        big,
        TestRecord::kv("after", "small"),
    ];
    let limits = [
        "--config",
        "message.max.bytes=16777216",
        "--config",
        "batch.size=16777216",
    ];
    ck_produce(&rig.bootstrap(), &topic, &records, &limits).await;
    let consumed = ck_consume(
        &rig.bootstrap(),
        &topic,
        records.len(),
        &[
            "--config",
            "fetch.max.bytes=16777216",
            "--config",
            "max.partition.fetch.bytes=16777216",
            "--config",
            "receive.message.max.bytes=33554432",
        ],
    )
    .await;
    assert_records_match(&records, &consumed);
}
