//! Memory bounded process-wide (issue 17, item 6): a compression bomb in one small Produce
//! request, many of them at once, and consumers that pipeline large Fetch requests and stop
//! reading must keep Kapsule's resident memory inside the configured budget, and it must come
//! back down afterwards. Resident memory is read from `/proc/<pid>/status` (`VmRSS`, and
//! `VmHWM` for the peak, reset through `/proc/<pid>/clear_refs`).

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use kapsule::kafka::records::{Record, RecordBatch};
use kapsule_integration::encryption::LocalKms;
use kapsule_integration::kapsule::direct_mode;
use kapsule_integration::probe::RawConnection;
use kapsule_integration::{unique_name, Kapsule, KapsuleConfig, RecordsMode, Tansu};

const MIB: u64 = 1024 * 1024;

/// `field` (e.g. `VmRSS`) of `/proc/<pid>/status`, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// Resets the peak resident size (`VmHWM`) to the current one.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

/// Waits up to `within` for Kapsule's RSS to drop to `limit` bytes; returns the last value.
async fn rss_settles(pid: u32, limit: u64, within: Duration) -> u64 {
    let start = tokio::time::Instant::now();
    loop {
        let rss = proc_status(pid, "VmRSS");
        if rss <= limit || start.elapsed() > within {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A config encrypting every topic whose name starts with `mem-` (whole values, local KMS),
/// with `proxy_extra` under `proxy:`.
fn encrypting_config(kms: &LocalKms, proxy_extra: &str) -> KapsuleConfig {
    KapsuleConfig::from_raw(
        RecordsMode::Passthrough,
        format!(
            "proxy:\n  listen: 127.0.0.1:1\n  upstream: 127.0.0.1:1\n{proxy_extra}admin:\n  listen: 127.0.0.1:1\nrecords: passthrough\n{}policy:\n  rules:\n    - topics: {{prefix: \"mem-\"}}\n      key_id: kek-mem\n      value: whole\n",
            kms.yaml()
        ),
    )
}

/// One zstd batch holding one record whose value is `zeros` zero bytes (a few KB on the wire).
fn zstd_zero_batch(zeros: usize) -> Bytes {
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 4, // zstd
        last_offset_delta: 0,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: vec![Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: None,
            value: Some(Bytes::from(vec![0u8; zeros])),
            headers: vec![],
        }],
    }
    .to_bytes()
    .expect("encode zstd batch")
}

/// The request: 6 zstd batches of 90 MiB of zeros for partition 0 of `topic`.
fn bomb_request(topic: &str, batch: &Bytes) -> ProduceRequest {
    let mut records = Vec::with_capacity(batch.len() * 6);
    for _ in 0..6 {
        records.extend_from_slice(batch);
    }
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(60_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])])
}

/// Sends the bomb on a fresh connection and returns the partition's error code.
async fn send_bomb(addr: &str, request: &ProduceRequest) -> i16 {
    let mut c = RawConnection::connect(addr).await.expect("connect");
    c.send(ApiKey::Produce, 7, 1, request).await.expect("send");
    let (_, response) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 7, Duration::from_secs(120))
        .await
        .expect("produce response");
    response.responses[0].partition_responses[0].error_code
}

async fn start(kms: &LocalKms, proxy_extra: &str) -> (Tansu, Kapsule, String, u32) {
    let tansu = Tansu::start().await.expect("start tansu");
    let kapsule = Kapsule::start(&tansu.bootstrap(), encrypting_config(kms, proxy_extra))
        .await
        .expect("start kapsule");
    let topic = unique_name("mem-");
    tansu.create_topic(&topic, 1).await.unwrap();
    let pid = kapsule.pid().expect("kapsule pid");
    (tansu, kapsule, topic, pid)
}

#[tokio::test]
async fn a_zstd_bomb_in_one_small_produce_request_grows_rss_by_less_than_256_mib() {
    if direct_mode() {
        return;
    }
    let kms = LocalKms::new().unwrap();
    let (_tansu, kapsule, topic, pid) = start(&kms, "").await;
    let batch = zstd_zero_batch(90 * MIB as usize);
    let request = bomb_request(&topic, &batch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = proc_status(pid, "VmRSS");
    reset_peak(pid);

    let code = send_bomb(&kapsule.bootstrap(), &request).await;
    let peak = proc_status(pid, "VmHWM");
    // RECORD_LIST_TOO_LARGE: refused, not written.
    assert_eq!(code, 18, "the bomb must be refused as too large");
    assert!(
        peak.saturating_sub(baseline) < 256 * MIB,
        "a {} byte request grew RSS from {} MiB to a peak of {} MiB",
        batch.len() * 6,
        baseline / MIB,
        peak / MIB
    );
    let after = rss_settles(pid, baseline + 64 * MIB, Duration::from_secs(10)).await;
    assert!(
        after <= baseline + 64 * MIB,
        "RSS stayed at {} MiB after the request (baseline {} MiB)",
        after / MIB,
        baseline / MIB
    );
}

#[tokio::test]
async fn twenty_zstd_bombs_at_once_stay_inside_the_memory_budget() {
    if direct_mode() {
        return;
    }
    let kms = LocalKms::new().unwrap();
    // Batches up to 96 MiB are allowed, so each 90 MiB batch is really decompressed and
    // encrypted: only the process-wide budget (320 MiB) bounds the 20 requests together.
    let budget = 320 * MIB;
    let (_tansu, kapsule, topic, pid) = start(
        &kms,
        &format!(
            "  max_decompressed_bytes_per_batch: {}\n  memory_budget_bytes: {budget}\n  memory_wait_ms: 2000\n",
            96 * MIB
        ),
    )
    .await;
    let batch = zstd_zero_batch(90 * MIB as usize);
    let request = bomb_request(&topic, &batch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = proc_status(pid, "VmRSS");
    reset_peak(pid);

    let request = std::sync::Arc::new(request);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, request) = (kapsule.bootstrap(), request.clone());
        sends.spawn(async move { send_bomb(&addr, &request).await });
    }
    let codes = sends.join_all().await;
    let peak = proc_status(pid, "VmHWM");
    for code in &codes {
        // RECORD_LIST_TOO_LARGE (the per-request budget) or REQUEST_TIMED_OUT (the memory
        // budget stayed busy: retriable); never written.
        assert!(
            *code == 18 || *code == 7,
            "unexpected error code {code} in {codes:?}"
        );
    }
    assert!(
        peak.saturating_sub(baseline) < budget + 64 * MIB,
        "20 requests grew RSS from {} MiB to a peak of {} MiB (budget {} MiB)",
        baseline / MIB,
        peak / MIB,
        budget / MIB
    );
    let (_, metrics) = kapsule.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("kapsule_memory_waits_total{use=\"produce_decompression\"}"),
        "{metrics}"
    );
    let after = rss_settles(pid, baseline + 64 * MIB, Duration::from_secs(10)).await;
    assert!(
        after <= baseline + 64 * MIB,
        "RSS stayed at {} MiB after the requests (baseline {} MiB)",
        after / MIB,
        baseline / MIB
    );
}

/// Produces about `mib` MiB of incompressible records to partition 0 of `topic` through Kapsule
/// (encrypted there), in 1 MiB requests.
async fn fill_topic(addr: &str, topic: &str, mib: usize) {
    let mut c = RawConnection::connect(addr).await.expect("connect");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..mib {
        let mut records = Vec::new();
        for r in 0..16 {
            let mut value = vec![0u8; 64 * 1024];
            for chunk in value.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            records.push(Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: r,
                key: None,
                value: Some(Bytes::from(value)),
                headers: vec![],
            });
        }
        let batch = RecordBatch {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            last_offset_delta: 15,
            base_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records,
        }
        .to_bytes()
        .unwrap();
        let request = kapsule_integration::probe::produce_request(topic, None, 30_000, batch);
        c.send(ApiKey::Produce, 7, i as i32, &request)
            .await
            .unwrap();
        let (_, response) = c
            .recv_as::<ProduceResponse>(ApiKey::Produce, 7, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            response.responses[0].partition_responses[0].error_code, 0,
            "filling {topic}"
        );
    }
}

/// A Fetch v11 of up to 16 MiB from offset 0 of partition 0 of `topic`.
fn big_fetch(topic: &str) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(16 * MIB as i32)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(16 * MIB as i32)])])
}

/// `consumers` connections each pipeline `fetches` 16 MiB Fetch requests on an encrypted topic
/// and never read; Kapsule's peak RSS growth must stay under `bound`, and RSS must come back
/// once they close.
async fn stalled_consumers(consumers: usize, fetches: i32, proxy_extra: &str, bound: u64) {
    let kms = LocalKms::new().unwrap();
    let (_tansu, kapsule, topic, pid) = start(&kms, proxy_extra).await;
    let addr = kapsule.bootstrap();
    fill_topic(&addr, &topic, 20).await;
    // One full read, to know a response is large (tansu answers ~5 MiB of records).
    let mut probe = RawConnection::connect(&addr).await.unwrap();
    probe
        .send(ApiKey::Fetch, 11, 1, &big_fetch(&topic))
        .await
        .unwrap();
    let size = read_raw_frame_len(&mut probe).await;
    assert!(
        size > 4 * MIB as usize,
        "a fetch returned only {size} bytes"
    );
    drop(probe);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = proc_status(pid, "VmRSS");
    reset_peak(pid);

    let mut conns = Vec::new();
    for _ in 0..consumers {
        let mut c = RawConnection::connect(&addr).await.unwrap();
        for id in 0..fetches {
            c.send(ApiKey::Fetch, 11, id, &big_fetch(&topic))
                .await
                .unwrap();
        }
        conns.push(c);
    }
    // Let Kapsule read, decrypt and try to write everything it will.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let peak = proc_status(pid, "VmHWM");
    drop(conns);
    assert!(
        peak.saturating_sub(baseline) < bound,
        "{consumers} stalled consumers grew RSS from {} MiB to a peak of {} MiB (bound {} MiB)",
        baseline / MIB,
        peak / MIB,
        bound / MIB
    );
    let after = rss_settles(pid, baseline + 64 * MIB, Duration::from_secs(15)).await;
    assert!(
        after <= baseline + 64 * MIB,
        "RSS stayed at {} MiB after the consumers closed (baseline {} MiB)",
        after / MIB,
        baseline / MIB
    );
}

/// Reads one response frame off `c` and returns its size (the body is discarded).
async fn read_raw_frame_len(c: &mut RawConnection) -> usize {
    // RawConnection::recv caps frames at 16 MiB; a fetch of 16 MiB of records is just over.
    match c.recv(Duration::from_secs(60)).await {
        Ok(Some(frame)) => frame.len(),
        Ok(None) => panic!("Kapsule closed the connection instead of answering the fetch"),
        Err(e) if format!("{e:#}").contains("out of range") => 16 * MIB as usize,
        Err(e) => panic!("fetch: {e:#}"),
    }
}

#[tokio::test]
async fn four_consumers_that_stop_reading_hold_little_memory() {
    if direct_mode() {
        return;
    }
    // The case: 975 MiB before; now each connection holds one response.
    stalled_consumers(4, 40, "", 200 * MIB).await;
}

#[tokio::test]
async fn forty_consumers_that_stop_reading_stay_inside_the_memory_budget() {
    if direct_mode() {
        return;
    }
    let budget = 256 * MIB;
    stalled_consumers(
        40,
        4,
        &format!("  memory_budget_bytes: {budget}\n  memory_wait_ms: 2000\n"),
        budget + 96 * MIB,
    )
    .await;
}
