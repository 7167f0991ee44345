//! Stage tests: real codec, real crypto, in-memory KMS, rules from YAML.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::*;
use crate::crypto::keys::DekConfig;
use crate::crypto::HEADER_KEY;
use crate::kafka::compression::Compression;
use crate::kafka::records::{Record, RecordBatch, RecordHeader};
use crate::kms::memory::MemoryKms;
use crate::policy::config::PolicyConfig;

fn session() -> crate::proxy::session::ClientSession {
    crate::proxy::session::ClientSession::new(peer())
}

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

fn record(i: i64, value: Bytes) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: i * 5,
        offset_delta: i as i32,
        key: None,
        value: Some(value),
        headers: vec![
            RecordHeader {
                key: Bytes::from_static(b"h"),
                value: None,
            },
            RecordHeader {
                key: Bytes::from_static(b"h"),
                value: Some(Bytes::from_static(b"2")),
            },
        ],
    }
}

fn batch_of(n: i64, compression: Compression) -> RecordBatch {
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: compression.apply_to_attributes(0),
        last_offset_delta: (n - 1) as i32,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_005,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: (0..n)
            .map(|i| record(i, Bytes::from(format!("value-{i}"))))
            .collect(),
    }
}

fn batch() -> RecordBatch {
    batch_of(2, Compression::None)
}

fn forged(compression: Compression) -> RecordBatch {
    let mut b = batch_of(2, compression);
    b.records[1].headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from_static(b"\x01forged")),
    });
    b
}

fn set(batches: &[RecordBatch]) -> Bytes {
    let mut out = BytesMut::new();
    for b in batches {
        b.encode(&mut out).unwrap();
    }
    out.freeze()
}

fn stage(yaml: &str, kms: Arc<MemoryKms>, mode: RecordsMode) -> RecordStage {
    let config: PolicyConfig = serde_norway::from_str(yaml).unwrap();
    let policy = PolicyRegistry::new(&config).unwrap();
    let encryptor = Arc::new(RecordEncryptor::new(kms, DekConfig::default()));
    RecordStage::new(mode, Some(Encryption { encryptor, policy }))
}

const RULES: &str = r#"
rules:
  - topics: {glob: "enc-*"}
    key_id: k1
  - topics: {glob: "pre-*"}
    key_id: k1
    accept_pre_encrypted: true
  - topics: {glob: "skip-*"}
    key_id: k1
    on_decrypt_failure: skip
  - topics: {glob: "strict-*"}
    key_id: k1
    require_encrypted: true
  - topics: {glob: "tenant-*"}
    key_id: "kek-${topic}"
"#;

fn produce_request(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(records))])])
}

/// The records forwarded to the broker, or the refusal (code, message).
async fn produce(stage: &RecordStage, topic: &str, records: Bytes) -> Result<Bytes, (i16, String)> {
    let mut req = produce_request(topic, records);
    let patch = stage.on_produce(&mut req, &session()).await;
    if patch.is_empty() {
        return Ok(req.topic_data[0].partition_data[0].records.clone().unwrap());
    }
    assert!(
        req.topic_data.is_empty(),
        "a refused partition was forwarded"
    );
    let resp = patch.into_response();
    let p = &resp.responses[0].partition_responses[0];
    Err((p.error_code, p.error_message.as_ref().unwrap().to_string()))
}

/// The partition as the client gets it: (error code, records).
async fn fetch(stage: &RecordStage, topic: &str, records: Bytes) -> (i16, Bytes) {
    let mut resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_records(Some(records))])]);
    stage.on_fetch(&mut resp, &session()).await.unwrap();
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.records.clone().unwrap())
}

fn decode_all(records: &Bytes) -> Vec<RecordBatch> {
    split_record_set(records)
        .map(|e| match e.unwrap() {
            RecordSetEntry::Batch(raw) => raw.decode().unwrap(),
            RecordSetEntry::Partial(_) => panic!("partial batch"),
        })
        .collect()
}

#[test]
fn reencode_is_byte_identical_for_uncompressed_batches() {
    let set = set(&[batch(), batch()]);
    assert_eq!(
        reencode_record_set(&set, RecordSetOrigin::Produce).unwrap(),
        set
    );
}

#[test]
fn trailing_partial_batch_is_kept_in_fetch_and_refused_in_produce() {
    let full = set(&[batch()]).len();
    let truncated = set(&[batch(), batch()]).slice(..full + 20);
    assert_eq!(
        reencode_record_set(&truncated, RecordSetOrigin::Fetch).unwrap(),
        truncated
    );
    assert!(reencode_record_set(&truncated, RecordSetOrigin::Produce).is_err());
}

#[test]
fn corrupted_batch_is_refused() {
    let mut bytes = set(&[batch()]).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert!(reencode_record_set(&Bytes::from(bytes), RecordSetOrigin::Produce).is_err());
}

#[tokio::test]
async fn client_supplied_descriptors_are_refused_on_every_produce_path() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    for mode in [RecordsMode::Passthrough, RecordsMode::Reencode] {
        let s = stage(RULES, kms.clone(), mode);
        for c in [Compression::None, Compression::Zstd] {
            // A topic no rule covers, and an encrypted one.
            for topic in ["plain", "enc-a"] {
                let (code, message) = produce(&s, topic, set(&[batch(), forged(c)]))
                    .await
                    .expect_err("forged descriptor forwarded");
                assert_eq!(
                    code,
                    ResponseError::InvalidRecord.code(),
                    "{topic} {mode:?}"
                );
                assert!(message.contains("accept_pre_encrypted"), "{message}");
            }
        }
        // Clean records still pass on both.
        let clean = set(&[batch()]);
        assert_eq!(produce(&s, "plain", clean.clone()).await.unwrap(), clean);
        assert!(produce(&s, "enc-a", clean).await.is_ok());
    }
}

#[tokio::test]
async fn accept_pre_encrypted_forwards_descriptors_without_encrypting_them_again() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let s = stage(RULES, kms, RecordsMode::Passthrough);
    let out = produce(&s, "pre-a", set(&[forged(Compression::None)]))
        .await
        .unwrap();
    let b = &decode_all(&out)[0];
    // Record 0 was encrypted by Kapsule; record 1 went on with its own descriptor only.
    assert_eq!(b.records[1], forged(Compression::None).records[1]);
    assert_ne!(b.records[0].value, batch().records[0].value);
}

#[tokio::test]
async fn key_ids_with_path_tricks_are_refused_before_the_kms() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let s = stage(RULES, kms, RecordsMode::Passthrough);
    // The rule expands `kek-${topic}`: a topic name smuggles a path into the key id.
    let (code, message) = produce(&s, "tenant-b/../tenant-a-secret", set(&[batch()]))
        .await
        .unwrap_err();
    assert_eq!(code, ResponseError::PolicyViolation.code());
    assert!(message.contains("path separator"), "{message}");
}

#[tokio::test]
async fn fetch_forwards_descriptors_on_uncovered_topics_as_stored() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let s = stage(RULES, kms, RecordsMode::Passthrough);
    let stored = set(&[forged(Compression::None), forged(Compression::Gzip)]);
    assert_eq!(fetch(&s, "plain", stored.clone()).await, (0, stored));
}

#[tokio::test]
async fn skip_mode_turns_an_emptied_compressed_batch_into_an_uncompressed_one() {
    let writer = stage(
        RULES,
        Arc::new(MemoryKms::with_keys(&["k1"])),
        RecordsMode::Passthrough,
    );
    // Another KMS with the same key id but another key: nothing it fetches decrypts.
    let reader = stage(
        RULES,
        Arc::new(MemoryKms::with_keys(&["k1"])),
        RecordsMode::Passthrough,
    );
    for c in Compression::ALL {
        let mut b = batch_of(3, c);
        b.base_offset = 40;
        let stored = produce(&writer, "skip-a", set(&[b.clone()])).await.unwrap();
        let mut ok = batch_of(1, Compression::None);
        ok.base_offset = 43;
        let stored = [stored, set(&[ok.clone()])].concat();
        let (code, out) = fetch(&reader, "skip-a", Bytes::from(stored)).await;
        assert_eq!(code, 0, "{c:?}");
        let batches = decode_all(&out);
        assert_eq!(batches.len(), 2, "{c:?}");
        let empty = &batches[0];
        assert!(empty.records.is_empty(), "{c:?}");
        assert_eq!(empty.compression().unwrap(), Compression::None, "{c:?}");
        assert_eq!(
            (empty.base_offset, empty.last_offset_delta),
            (40, 2),
            "{c:?}"
        );
        assert_eq!(batches[1], ok, "{c:?}");
    }
}

#[tokio::test]
async fn require_encrypted_refuses_descriptors_under_another_kek() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1", "k2"]));
    let s = stage(RULES, kms.clone(), RecordsMode::Passthrough);
    // Encrypted by Kapsule under k2 (another rule's key), then stored on the strict topic.
    let other = stage(
        "rules: [{topics: {glob: '*'}, key_id: k2}]",
        kms,
        RecordsMode::Passthrough,
    );
    let under_k2 = produce(&other, "strict-a", set(&[batch()])).await.unwrap();
    let (code, out) = fetch(&s, "strict-a", under_k2.clone()).await;
    assert_eq!(code, ResponseError::CorruptMessage.code());
    assert!(out.is_empty());
    // The same records under k1 are delivered.
    let under_k1 = produce(&s, "strict-a", set(&[batch()])).await.unwrap();
    let (code, out) = fetch(&s, "strict-a", under_k1).await;
    assert_eq!(code, 0);
    assert_eq!(decode_all(&out)[0], batch());
}

/// Many small zstd batches that each expand to 1 MiB: together far over the budget.
fn bomb(batches: usize) -> Bytes {
    let mut b = batch_of(1, Compression::Zstd);
    b.records[0].value = Some(Bytes::from(vec![0u8; 1 << 20]));
    let one = set(&[b]);
    assert!(one.len() < 1024, "{} bytes", one.len());
    Bytes::from(one.repeat(batches))
}

#[tokio::test]
async fn produce_requests_have_a_decompression_budget() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    for topic in ["plain", "enc-a"] {
        let s = stage(RULES, kms.clone(), RecordsMode::Reencode).with_decompression_budget(8 << 20);
        let (code, message) = produce(&s, topic, bomb(64)).await.unwrap_err();
        assert_eq!(code, ResponseError::RecordListTooLarge.code(), "{topic}");
        assert!(message.contains("decompression budget"), "{message}");
        // Within the budget the same batches pass.
        assert!(produce(&s, topic, bomb(4)).await.is_ok(), "{topic}");
    }
}

#[tokio::test]
async fn fetch_responses_have_a_decompression_budget() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let s = stage(RULES, kms, RecordsMode::Reencode).with_decompression_budget(8 << 20);
    // The record set ends where the budget ran out; the client fetches the rest later.
    let (code, out) = fetch(&s, "enc-a", bomb(64)).await;
    assert_eq!(code, 0);
    let n = decode_all(&out).len();
    assert!((1..=8).contains(&n), "{n} batches delivered");
    // A single batch larger than the whole budget fails its partition.
    let s = s.with_decompression_budget(512 << 10);
    let (code, out) = fetch(&s, "enc-a", bomb(1)).await;
    assert_eq!(code, ResponseError::CorruptMessage.code());
    assert!(out.is_empty());
}

/// A Metadata response naming `topic` with `id` (what a broker answers from v10).
fn metadata_naming(topic: &str, id: uuid::Uuid) -> kafka_protocol::messages::MetadataResponse {
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    kafka_protocol::messages::MetadataResponse::default().with_topics(vec![
        MetadataResponseTopic::default()
            .with_topic_id(id)
            .with_name(Some(TopicName(StrBytes::from_string(topic.into())))),
    ])
}

fn produce_request_by_id(id: uuid::Uuid, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
        .with_topic_id(id)
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(records))])])
}

#[tokio::test]
async fn a_produce_by_unresolved_topic_id_is_refused_and_answered_by_id() {
    let stage = stage(
        RULES,
        Arc::new(MemoryKms::with_keys(&["k1"])),
        RecordsMode::Passthrough,
    );
    let id = uuid::Uuid::from_u128(7);
    let mut req = produce_request_by_id(id, set(&[batch()]));
    let patch = stage.on_produce(&mut req, &session()).await;
    assert!(req.topic_data.is_empty(), "an unresolved id was forwarded");
    let resp = patch.into_response();
    let t = &resp.responses[0];
    assert_eq!(t.topic_id, id, "the answer names the topic by id");
    assert!(t.name.is_empty(), "v13 answers carry no name");
    assert_eq!(t.partition_responses[0].error_code, 100);
    // Encodable at v13, the version the client used.
    let mut buf = BytesMut::new();
    kafka_protocol::protocol::Encodable::encode(&resp, &mut buf, 13).unwrap();
}

#[tokio::test]
async fn a_produce_by_topic_id_is_encrypted_under_the_name_metadata_gave_it() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let stage = stage(RULES, kms.clone(), RecordsMode::Passthrough);
    let id = uuid::Uuid::from_u128(8);
    stage
        .topic_ids()
        .learn_metadata(&metadata_naming("enc-by-id", id));
    let mut req = produce_request_by_id(id, set(&[batch()]));
    let patch = stage.on_produce(&mut req, &session()).await;
    assert!(patch.is_empty(), "refused: {:?}", patch.into_response());
    let stored = req.topic_data[0].partition_data[0].records.clone().unwrap();
    assert!(crate::crypto::record::batch_has_encrypted_records(
        &decode_all(&stored)[0]
    ));
    // Bound to the name: a Fetch by name decrypts it, as does a Fetch by the same id.
    let (code, by_name) = fetch(&stage, "enc-by-id", stored.clone()).await;
    assert_eq!(code, 0);
    assert_eq!(
        decode_all(&by_name)[0].records[0].value,
        batch().records[0].value
    );
    let mut resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic_id(id)
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_records(Some(stored.clone()))])]);
    stage.on_fetch(&mut resp, &session()).await.unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(
        decode_all(p.records.as_ref().unwrap())[0].records[1].value,
        batch().records[1].value
    );
    // Under another name the same ciphertext does not decrypt (AAD binds the topic name).
    let (code, _) = fetch(&stage, "enc-other", stored).await;
    assert_ne!(code, 0);
}

#[tokio::test]
async fn a_fetch_by_unresolved_topic_id_delivers_no_records() {
    let stage = stage(
        RULES,
        Arc::new(MemoryKms::with_keys(&["k1"])),
        RecordsMode::Passthrough,
    );
    let mut resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic_id(uuid::Uuid::from_u128(9))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_records(Some(set(&[batch()])))])]);
    stage.on_fetch(&mut resp, &session()).await.unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 100);
    assert!(p.records.as_ref().unwrap().is_empty());
}

#[test]
fn records_cannot_bypass_a_stage_that_transforms_them() {
    let stage = stage(
        RULES,
        Arc::new(MemoryKms::with_keys(&["k1"])),
        RecordsMode::Passthrough,
    );
    assert!(stage.pass_produce(Bytes::from_static(b"frame")).is_err());
    assert!(stage.pass_fetch(Bytes::from_static(b"frame")).is_err());
    let plain = RecordStage::new(RecordsMode::Passthrough, None);
    assert!(plain.pass_produce(Bytes::from_static(b"frame")).is_ok());
    assert!(plain.pass_fetch(Bytes::from_static(b"frame")).is_ok());
    let reencode = RecordStage::new(RecordsMode::Reencode, None);
    assert!(reencode.pass_produce(Bytes::from_static(b"frame")).is_err());
}

/// One zstd batch of one record of `bytes` zeros.
fn zero_batch(bytes: usize) -> Bytes {
    let mut b = batch_of(1, Compression::Zstd);
    b.records[0].value = Some(Bytes::from(vec![0u8; bytes]));
    set(&[b])
}

#[tokio::test]
async fn a_batch_over_the_per_batch_limit_is_refused_before_it_is_decompressed_in_full() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let s = stage(RULES, kms, RecordsMode::Passthrough).with_batch_decompression_limit(1 << 20);
    let (code, message) = produce(&s, "enc-a", zero_batch(2 << 20)).await.unwrap_err();
    assert_eq!(code, ResponseError::RecordListTooLarge.code());
    assert!(
        message.contains("max_decompressed_bytes_per_batch"),
        "{message}"
    );
    assert!(produce(&s, "enc-a", zero_batch(900 << 10)).await.is_ok());
    assert_eq!(s.memory().in_use(), 0, "every charge is given back");
}

/// A passthrough stage under [`RULES`] (KMS key `k1`) charging a process-wide memory budget of
/// `limit` bytes whose charges wait at most `wait` (1 MiB of unwritten responses per connection).
fn stage_with_budget(limit: usize, wait: std::time::Duration) -> RecordStage {
    use crate::proxy::budget::MemoryBudget;
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let memory = MemoryBudget::new(limit, wait, 1 << 20);
    stage(RULES, kms, RecordsMode::Passthrough).with_memory_budget(Arc::new(memory))
}

#[tokio::test]
async fn a_busy_memory_budget_refuses_produce_retriably_and_ends_fetch_early() {
    use crate::proxy::budget::Use;
    use std::time::Duration;
    let s = stage_with_budget(16 << 20, Duration::from_millis(50));
    let memory = s.memory().clone();
    let stored = produce(&s, "enc-a", zero_batch(1 << 20)).await.unwrap();
    // Another request holds almost all of the budget for longer than the wait.
    let held = memory.charge(15 << 20, Use::Response).await.unwrap();
    let (code, message) = produce(&s, "enc-a", zero_batch(1 << 20)).await.unwrap_err();
    assert_eq!(code, ResponseError::RequestTimedOut.code(), "{message}");
    assert!(message.contains("safe to retry"), "{message}");
    // The fetch delivers nothing yet and no error: the client fetches the same offset again.
    let (code, out) = fetch(&s, "enc-a", stored.clone()).await;
    assert_eq!((code, out.len()), (0, 0));
    drop(held);
    let (code, out) = fetch(&s, "enc-a", stored).await;
    assert_eq!(code, 0);
    assert_eq!(decode_all(&out).len(), 1);
    assert_eq!(memory.in_use(), 0);
}

#[tokio::test]
async fn a_bomb_larger_than_the_whole_budget_is_stopped_at_its_charge() {
    use std::time::Duration;
    // The per-batch limit would allow 64 MiB; the budget (16 MiB, charged 3x) never can.
    let s = stage_with_budget(16 << 20, Duration::from_secs(5))
        .with_batch_decompression_limit(64 << 20);
    let memory = s.memory().clone();
    let (code, message) = produce(&s, "enc-a", zero_batch(40 << 20))
        .await
        .unwrap_err();
    assert_eq!(code, ResponseError::RecordListTooLarge.code());
    assert!(message.contains("memory budget"), "{message}");
    assert_eq!(memory.in_use(), 0);
}

#[tokio::test]
async fn encrypted_records_stay_charged_until_their_frame_is_written() {
    use std::time::Duration;
    let s = stage_with_budget(64 << 20, Duration::from_secs(5));
    let memory = s.memory().clone();
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(kafka_protocol::messages::ApiKey::Produce as i16)
        .with_request_api_version(7);
    let request = produce_request("enc-a", zero_batch(4 << 20));
    let staged = s.stage_produce(&header, request, &session()).await.unwrap();
    let frame = staged.forward.as_ref().unwrap().frame().len();
    assert!(frame > 4 << 20, "encrypted zeros do not compress: {frame}");
    // The frame (about the size of its encrypted records) is charged while it waits to be
    // written; the decoded batch and its working copies are not any more.
    let held = memory.in_use();
    assert!(
        held >= frame && held < frame + (64 << 10),
        "{held} bytes charged for a {frame} byte frame"
    );
    drop(staged);
    assert_eq!(memory.in_use(), 0);
}

#[tokio::test]
async fn a_request_whose_records_and_next_batch_cannot_fit_together_is_refused_at_once() {
    use std::time::{Duration, Instant};
    let s = stage_with_budget(32 << 20, Duration::from_secs(5));
    let memory = s.memory().clone();
    // Each batch is charged 3 x 7 MiB while encrypted; the first one's encrypted records stay
    // charged (2 x 7 MiB) beside the second: 35 MiB, more than the whole budget.
    let one = zero_batch(7 << 20);
    let records = Bytes::from([one.clone(), one].concat());
    let started = Instant::now();
    let (code, message) = produce(&s, "enc-a", records).await.unwrap_err();
    assert_eq!(code, ResponseError::RecordListTooLarge.code(), "{message}");
    assert!(message.contains("memory budget"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused only after {:?}: waiting could never help",
        started.elapsed()
    );
    assert_eq!(memory.in_use(), 0);
    // One such batch alone fits.
    assert!(produce(&s, "enc-a", zero_batch(7 << 20)).await.is_ok());
}

#[tokio::test]
async fn uncompressed_batches_are_charged_while_they_are_encrypted() {
    use std::time::Duration;
    let s = stage_with_budget(16 << 20, Duration::from_millis(50));
    let memory = s.memory().clone();
    let mut b = batch_of(1, Compression::None);
    b.records[0].value = Some(Bytes::from(vec![7u8; 6 << 20]));
    // 3 x 6 MiB while encrypted: more than the 16 MiB budget.
    let (code, message) = produce(&s, "enc-a", set(&[b])).await.unwrap_err();
    assert_eq!(code, ResponseError::RecordListTooLarge.code(), "{message}");
    assert!(message.contains("memory budget"), "{message}");
    assert_eq!(memory.in_use(), 0);
}
