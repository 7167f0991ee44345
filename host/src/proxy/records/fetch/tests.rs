//! The Fetch stage per principal: Deny fails every partition of the topic, Ciphertext forwards
//! stored bytes, Parts and All decrypt what they reveal; the producer is unaffected. ShareFetch
//! goes through the same stage, its topics named by id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::share_fetch_response::{
    AcquiredRecords, PartitionData as SharePartitionData, ShareFetchableTopicResponse,
};
use kafka_protocol::messages::{
    FetchResponse, MetadataResponse, ProduceRequest, ShareFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::super::{Encryption, RecordStage};
use crate::crypto::keys::DekConfig;
use crate::crypto::record::WITHHELD_HEADER;
use crate::crypto::{RecordEncryptor, HEADER_KEY};
use crate::kafka::compression::Compression;
use crate::kafka::records::{split_record_set, Record, RecordBatch, RecordHeader, RecordSetEntry};
use crate::kms::memory::MemoryKms;
use crate::policy::config::PolicyConfig;
use crate::policy::PolicyRegistry;
use crate::principal::{AuthMechanism, Principal};
use crate::proxy::config::RecordsMode;
use crate::proxy::session::ClientSession;
use kapsule_test_fixtures::policy_artifacts;

const RULES: &str = r#"
rules:
  - topics: {glob: "cust-*"}
    key_id: k1
    record_key: true
    headers: [pii]
    reveal_to:
      - {principal: app, mechanism: mTLS, reveal: all}
      - {principal: analytics, reveal: {headers: [pii]}}
      - {principal: backup, reveal: ciphertext}
    reveal_default: deny
"#;

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

fn session(name: Option<&str>) -> ClientSession {
    match name {
        Some(n) => ClientSession::authenticated(
            peer(),
            Principal::new(n, AuthMechanism::TlsClientCertificate),
        ),
        None => ClientSession::new(peer()),
    }
}

fn stage() -> RecordStage {
    stage_from(RULES)
}

fn stage_from(policy: &str) -> RecordStage {
    let config: PolicyConfig = serde_norway::from_str(policy).unwrap();
    let policy = PolicyRegistry::new(&config).unwrap();
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let encryptor = Arc::new(RecordEncryptor::new(kms, DekConfig::default()));
    RecordStage::new(
        RecordsMode::Passthrough,
        Some(Encryption { encryptor, policy }),
    )
}

fn plain() -> RecordBatch {
    let rec = |i: i32| Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: i,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(format!("value-{i}"))),
        headers: vec![RecordHeader {
            key: Bytes::from_static(b"pii"),
            value: Some(Bytes::from(format!("secret-{i}"))),
        }],
    };
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0,
        last_offset_delta: 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: vec![rec(0), rec(1)],
    }
}

async fn stored(stage: &RecordStage, who: Option<&str>) -> Bytes {
    stored_batch(stage, who, plain()).await
}

/// `batch` produced to `cust-a` partition 0 through `stage` by `who`, as stored.
async fn stored_batch(stage: &RecordStage, who: Option<&str>, batch: RecordBatch) -> Bytes {
    let mut records = BytesMut::new();
    batch.encode(&mut records).unwrap();
    let mut req = ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("cust-a")))
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(records.freeze()))])]);
    let patch = stage.on_produce(&mut req, &session(who)).await;
    assert!(patch.is_empty(), "{who:?} could not produce");
    req.topic_data[0].partition_data[0].records.clone().unwrap()
}

/// Fetches partition 0 with `records` and partition 1 empty; returns both as (code, records).
async fn fetch(stage: &RecordStage, who: Option<&str>, records: Bytes) -> Vec<(i16, Bytes)> {
    let mut resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("cust-a")))
        .with_partitions(vec![
            PartitionData::default()
                .with_partition_index(0)
                .with_records(Some(records)),
            PartitionData::default()
                .with_partition_index(1)
                .with_records(Some(Bytes::new())),
        ])]);
    stage.on_fetch(&mut resp, &session(who)).await.unwrap();
    resp.responses[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.records.clone().unwrap_or_default()))
        .collect()
}

fn decode(records: &Bytes) -> RecordBatch {
    match split_record_set(records).next().unwrap().unwrap() {
        RecordSetEntry::Batch(raw) => raw.decode().unwrap(),
        RecordSetEntry::Partial(_) => panic!("partial batch"),
    }
}

#[tokio::test]
async fn each_principal_gets_what_its_rule_reveals() {
    let s = stage();
    // Denied readers still produce.
    let stored = stored(&s, None).await;

    let out = fetch(&s, Some("app"), stored.clone()).await;
    assert_eq!(out[0].0, 0);
    assert_eq!(decode(&out[0].1), plain());

    let out = fetch(&s, Some("analytics"), stored.clone()).await;
    let b = decode(&out[0].1);
    let (want, enc) = (plain(), decode(&stored));
    for ((r, p), e) in b.records.iter().zip(&want.records).zip(&enc.records) {
        assert_eq!(r.headers[0], p.headers[0], "pii header revealed");
        assert_eq!(
            (&r.key, &r.value),
            (&e.key, &e.value),
            "key and value as stored"
        );
        assert!(r.headers.iter().all(|h| h.key != HEADER_KEY.as_bytes()));
        let w = r
            .headers
            .iter()
            .find(|h| h.key == WITHHELD_HEADER.as_bytes());
        assert_eq!(
            w.unwrap().value.as_deref(),
            Some(&br#"{"key":true,"value":true}"#[..])
        );
    }

    let out = fetch(&s, Some("backup"), stored.clone()).await;
    assert_eq!(out[0], (0, stored.clone()), "ciphertext: bytes as stored");

    // Not listed, and unauthenticated: the default, deny, on every partition of the topic.
    for who in [Some("mallory"), None] {
        let out = fetch(&s, who, stored.clone()).await;
        let code = ResponseError::TopicAuthorizationFailed.code();
        assert_eq!(
            out,
            vec![(code, Bytes::new()), (code, Bytes::new())],
            "{who:?}"
        );
    }
}

/// A module's `reveal` runs off the async runtime: while it spins until its call deadline, the
/// runtime's only thread keeps serving other tasks (before, the guest ran on it and stalled
/// every connection of that thread); then the topic's partitions fail, nothing is delivered.
#[tokio::test(flavor = "current_thread")]
async fn a_guest_reveal_runs_off_the_async_runtime() {
    let module = policy_artifacts()
        .expect("the guest components kapsule-test-fixtures built")
        .path("hostile-misbehave");
    let cache = std::env::temp_dir().join("kapsule-policy-test-cache");
    let s = Arc::new(stage_from(&format!(
        "bindings:\n  - topics: {{prefix: \"cust-\"}}\n    module: \"{}\"\n    config: loop-reveal\n    allowed_key_ids: [k1]\nlimits:\n  call_timeout_ms: 2000\nmodule_cache_dir: \"{}\"\n",
        module.display(),
        cache.display()
    )));
    let mut records = BytesMut::new();
    plain().encode(&mut records).unwrap();
    let started = Instant::now();
    let fetching = tokio::spawn({
        let s = s.clone();
        async move { fetch(&s, Some("app"), records.freeze()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let woke = started.elapsed();
    assert!(
        woke < Duration::from_secs(1),
        "the runtime thread was held for {woke:?} by the guest's reveal"
    );
    let out = fetching.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ran to its deadline"
    );
    for (code, records) in out {
        assert_ne!(code, 0, "the topic's partitions fail");
        assert!(records.is_empty(), "nothing delivered");
    }
}

/// A ShareFetch response for topic id `id`: partition 0 with `records` acquired (offsets 0-1).
fn share_response(id: uuid::Uuid, records: Bytes) -> ShareFetchResponse {
    ShareFetchResponse::default().with_responses(vec![ShareFetchableTopicResponse::default()
        .with_topic_id(id)
        .with_partitions(vec![SharePartitionData::default()
            .with_partition_index(0)
            .with_records(Some(records))
            .with_acquired_records(vec![AcquiredRecords::default()
                .with_first_offset(0)
                .with_last_offset(1)
                .with_delivery_count(1)])])])
}

/// Teaches the stage that `id` names `cust-a`, as a Metadata response through Kapsule does.
fn learn_cust_a(stage: &RecordStage, id: uuid::Uuid) {
    stage
        .topic_ids()
        .learn_metadata(&MetadataResponse::default().with_topics(
            vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("cust-a"))))
            .with_topic_id(id)],
        ));
}

/// KIP-932 share groups: a ShareFetch response's records are decrypted per principal like a
/// Fetch's, the topic named by the id Metadata taught; an id Kapsule cannot name (or a nil one)
/// fails the partition with UNKNOWN_TOPIC_ID, no records and no acquired records.
#[tokio::test]
async fn share_fetch_records_are_decrypted_by_topic_id_and_unknown_ids_deliver_nothing() {
    let s = stage();
    let stored = stored(&s, None).await;
    let id = uuid::Uuid::from_u128(0x5eed);
    learn_cust_a(&s, id);

    let mut resp = share_response(id, stored.clone());
    s.on_share_fetch_charged(&mut resp, &session(Some("app")))
        .await
        .unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(decode(p.records.as_ref().unwrap()), plain());
    assert_eq!(p.acquired_records.len(), 1, "acquired records kept");

    let mut resp = share_response(id, stored.clone());
    s.on_share_fetch_charged(&mut resp, &session(Some("mallory")))
        .await
        .unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, ResponseError::TopicAuthorizationFailed.code());
    assert!(p.records.as_ref().unwrap().is_empty());
    assert!(p.acquired_records.is_empty());

    for unknown in [uuid::Uuid::from_u128(0xbad), uuid::Uuid::nil()] {
        let mut resp = share_response(unknown, stored.clone());
        s.on_share_fetch_charged(&mut resp, &session(Some("app")))
            .await
            .unwrap();
        let p = &resp.responses[0].partitions[0];
        assert_eq!(
            p.error_code,
            ResponseError::UnknownTopicId.code(),
            "{unknown}"
        );
        assert!(p.records.as_ref().unwrap().is_empty(), "{unknown}");
        assert!(p.acquired_records.is_empty(), "{unknown}");
        let message = p.error_message.as_deref().unwrap_or_default();
        assert!(message.contains("not known to Kapsule"), "{message}");
    }
}

/// A ShareFetch record set is never cut short: where a Fetch delivers the batches that fit the
/// decompression budget (the client fetches the rest), a share consumer's partition fails with
/// an error and no records, so no acquired record goes missing.
#[tokio::test]
async fn a_share_fetch_record_set_is_failed_not_cut_short() {
    let budget = "rules:\n  - topics: {glob: \"cust-*\"}\n    key_id: k1\n";
    // The decompression budget counts compressed batches: room for one of two.
    let mut gzip = plain();
    gzip.attributes = Compression::Gzip.apply_to_attributes(0);
    let s = stage_from(budget);
    let stored = stored_batch(&s, None, gzip).await;
    let mut uncompressed = decode(&stored);
    uncompressed.attributes = 0;
    let mut one = BytesMut::new();
    uncompressed.encode(&mut one).unwrap();
    let s = s.with_decompression_budget(one.len() * 3 / 2);
    let id = uuid::Uuid::from_u128(0x5eed);
    learn_cust_a(&s, id);
    let mut two = BytesMut::from(&stored[..]);
    two.extend_from_slice(&stored);
    let two = two.freeze();

    // A Fetch of the same two batches delivers the first.
    let out = fetch(&s, None, two.clone()).await;
    assert_eq!(out[0].0, 0);
    assert_eq!(decode(&out[0].1).records, plain().records);
    assert!(out[0].1.len() < two.len(), "the Fetch's set was cut short");

    let mut resp = share_response(id, two.clone());
    s.on_share_fetch_charged(&mut resp, &session(None))
        .await
        .unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_ne!(p.error_code, 0, "a partial set was delivered");
    assert!(p.records.as_ref().unwrap().is_empty());
    assert!(p.acquired_records.is_empty());
}
