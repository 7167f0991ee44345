//! The Fetch stage per principal: Deny fails every partition of the topic, Ciphertext forwards
//! stored bytes, Parts and All decrypt what they reveal; the producer is unaffected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::super::{Encryption, RecordStage};
use crate::crypto::keys::DekConfig;
use crate::crypto::record::WITHHELD_HEADER;
use crate::crypto::{RecordEncryptor, HEADER_KEY};
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
    let mut records = BytesMut::new();
    plain().encode(&mut records).unwrap();
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
