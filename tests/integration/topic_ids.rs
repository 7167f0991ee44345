//! Topic-id versions (KIP-516: Produce v13, Fetch v13+) through Kapsule in front of Apache Kafka:
//! ids are resolved to names from Metadata the broker sent through Kapsule, so ciphertext stays
//! bound to the topic name, and an id Kapsule has not seen named is refused, never relayed.
//!
//! Requests are hand-built with [`RawConnection`] so each step controls the version exactly.

use std::time::Duration;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::probe::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchResponse, FetchSnapshotRequest,
    ProduceRequest, ProduceResponse,
};
use kapsule_integration::probe::{
    end_offset, fetch_request, fetched_values, partition_errors, produce_request, record_batch,
    topic_ids, RawConnection,
};
use kapsule_integration::{unique_name, KafkaCluster, Kapsule, KapsuleConfig, RecordsMode};

const WAIT: Duration = Duration::from_secs(30);
const UNKNOWN_TOPIC_ID: i16 = 100;

async fn start_kapsule(kafka: &KafkaCluster, kms_yaml: &str, policy: &str) -> Kapsule {
    let config = KapsuleConfig::new(RecordsMode::Passthrough)
        .with_yaml(kms_yaml)
        .with_yaml(policy);
    Kapsule::start(&kafka.bootstrap(), config)
        .await
        .expect("start kapsule")
}

/// The id the broker gave `topic` (from a Metadata request sent to the broker itself).
async fn topic_id(kafka: &KafkaCluster, topic: &str) -> uuid::Uuid {
    topic_ids(&kafka.bootstrap(), WAIT)
        .await
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == topic)
        .map(|(_, id)| id)
        .expect("the broker lists the topic with its id")
}

async fn topic(kafka: &KafkaCluster, prefix: &str) -> String {
    let name = unique_name(prefix);
    kafka.create_topic(&name, 1).await.expect("create topic");
    name
}

/// Topic-id versions (Produce v13, Fetch v13+) and the flexible versions before them are offered
/// as far as the broker offers them. A topic named by an id that no Metadata response through
/// Kapsule has named is refused with UNKNOWN_TOPIC_ID and never reaches the broker; once a
/// Metadata response has named it, records produced by id are encrypted under the topic's name
/// and read back by id decrypted, while `require_encrypted` still refuses plaintext injected on
/// the broker. APIs Kapsule does not transform (FetchSnapshot) close the connection.
#[tokio::test(flavor = "multi_thread")]
async fn topic_id_versions_are_resolved_from_broker_metadata_and_never_bypass_encryption() {
    use kapsule_integration::probe::kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    let kafka = KafkaCluster::shared().await.expect("shared Kafka node");
    let kms = LocalKms::new().unwrap();
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"ver-\"}\n      key_id: kek-ver\n      require_encrypted: true\n      on_decrypt_failure: error\n";
    let kapsule = start_kapsule(kafka, &kms.yaml(), policy).await;
    let t = topic(kafka, "ver-").await;
    let id = topic_id(kafka, &t).await;

    // Plaintext written straight to the broker: only a bypass could hand it to a consumer. A
    // partition the controller just assigned can still answer NOT_LEADER_OR_FOLLOWER (6) for a
    // moment after Metadata names its leader; retried as Kafka's clients retry it.
    let mut direct = RawConnection::connect(&kafka.bootstrap()).await.unwrap();
    let plain = record_batch(&[(b"k", b"PLAINTEXT-DIRECT")]);
    let mut attempts = 0;
    let r = loop {
        attempts += 1;
        direct
            .send(
                ApiKey::Produce,
                3,
                attempts,
                &produce_request(&t, None, 5000, plain.clone()),
            )
            .await
            .unwrap();
        let (_, r) = direct
            .recv_as::<ProduceResponse>(ApiKey::Produce, 3, WAIT)
            .await
            .unwrap();
        if partition_errors(&r)[0].0 != 6 || attempts == 20 {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(partition_errors(&r)[0].0, 0, "direct write failed: {r:?}");
    assert_eq!(end_offset(&kafka.bootstrap(), &t, WAIT).await.unwrap(), 1);

    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    c.send(ApiKey::ApiVersions, 2, 1, &ApiVersionsRequest::default())
        .await
        .unwrap();
    let (_, versions) = c
        .recv_as::<ApiVersionsResponse>(ApiKey::ApiVersions, 2, WAIT)
        .await
        .unwrap();
    let max_of = |k: ApiKey| {
        versions
            .api_keys
            .iter()
            .find(|v| v.api_key == k as i16)
            .map(|v| v.max_version)
    };
    // Apache Kafka 4.4 offers Produce v13 and Fetch v18: Kapsule offers them too.
    assert_eq!(max_of(ApiKey::Produce), Some(13), "{versions:?}");
    assert_eq!(max_of(ApiKey::Fetch), Some(18), "{versions:?}");
    for k in [ApiKey::FetchSnapshot, ApiKey::Envelope] {
        assert_eq!(max_of(k), None, "{k:?} is advertised: {versions:?}");
    }
    // Share groups are offered at what kafka-protocol decodes (ShareFetch v1).
    assert_eq!(max_of(ApiKey::ShareFetch), Some(1), "{versions:?}");

    // Produce v13 by an id no Metadata through Kapsule has named: refused, never forwarded.
    let v13 = produce_request("", Some(id), 5000, record_batch(&[(b"k", b"SECRET-V13")]));
    c.send(ApiKey::Produce, 13, 2, &v13).await.unwrap();
    let (corr, r) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 13, WAIT)
        .await
        .unwrap();
    assert_eq!(corr, 2);
    let errors = partition_errors(&r);
    assert_eq!(errors.len(), 1, "{r:?}");
    assert_eq!(errors[0].0, UNKNOWN_TOPIC_ID, "{r:?}");
    assert_eq!(
        r.responses[0].topic_id, id,
        "the answer names the topic by id"
    );
    assert_eq!(
        end_offset(&kafka.bootstrap(), &t, WAIT).await.unwrap(),
        1,
        "a Produce by an unresolved topic id reached the broker"
    );

    // The client refreshes its metadata through Kapsule, which learns the id...
    c.send(
        ApiKey::Metadata,
        12,
        3,
        &MetadataRequest::default().with_topics(None),
    )
    .await
    .unwrap();
    c.recv_as::<MetadataResponse>(ApiKey::Metadata, 12, WAIT)
        .await
        .unwrap();
    // ...and the same Produce v13 is encrypted under the topic's name and written.
    c.send(ApiKey::Produce, 13, 4, &v13).await.unwrap();
    let (_, r) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 13, WAIT)
        .await
        .unwrap();
    assert_eq!(partition_errors(&r)[0].0, 0, "{r:?}");
    assert_eq!(end_offset(&kafka.bootstrap(), &t, WAIT).await.unwrap(), 2);

    // Produce v9 (flexible, by name) goes through the same stage.
    let v9: ProduceRequest = produce_request(&t, None, 5000, record_batch(&[(b"k", b"SECRET-V9")]));
    c.send(ApiKey::Produce, 9, 5, &v9).await.unwrap();
    let (_, r) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 9, WAIT)
        .await
        .unwrap();
    assert_eq!(partition_errors(&r)[0].0, 0, "{r:?}");
    assert_eq!(end_offset(&kafka.bootstrap(), &t, WAIT).await.unwrap(), 3);

    // At rest: ciphertext (read by name from the broker itself, below every topic-id version).
    let mut at_rest = fetch_request(&t, None);
    at_rest.topics[0].partitions[0].fetch_offset = 1;
    direct.send(ApiKey::Fetch, 11, 6, &at_rest).await.unwrap();
    let (_, f) = direct
        .recv_as::<FetchResponse>(ApiKey::Fetch, 11, WAIT)
        .await
        .unwrap();
    let (code, stored) = fetched_values(&f);
    assert_eq!(code, 0, "{f:?}");
    assert_eq!(stored.len(), 2, "{f:?}");
    for v in &stored {
        assert!(
            !v.windows(6).any(|w| w == b"SECRET"),
            "plaintext at rest: {:?}",
            String::from_utf8_lossy(v)
        );
    }

    // Fetch v13 by id through Kapsule: decrypted under the topic's name.
    let mut by_id = fetch_request("", Some(id));
    by_id.topics[0].partitions[0].fetch_offset = 1;
    c.send(ApiKey::Fetch, 13, 7, &by_id).await.unwrap();
    let (_, f) = c
        .recv_as::<FetchResponse>(ApiKey::Fetch, 13, WAIT)
        .await
        .unwrap();
    assert_eq!(f.responses[0].topic_id, id);
    let (code, values) = fetched_values(&f);
    assert_eq!(code, 0, "{f:?}");
    assert_eq!(values, vec![b"SECRET-V13".to_vec(), b"SECRET-V9".to_vec()]);

    // From offset 0 the injected plaintext is refused (require_encrypted), never delivered.
    c.send(ApiKey::Fetch, 13, 8, &fetch_request("", Some(id)))
        .await
        .unwrap();
    let (_, f) = c
        .recv_as::<FetchResponse>(ApiKey::Fetch, 13, WAIT)
        .await
        .unwrap();
    let (code, values) = fetched_values(&f);
    assert_ne!(
        code, 0,
        "plaintext accepted on a require_encrypted topic: {f:?}"
    );
    assert!(values.is_empty(), "records delivered with an error: {f:?}");

    // FetchSnapshot returns raw log bytes Kapsule does not transform: the connection is closed.
    c.send(
        ApiKey::FetchSnapshot,
        1,
        9,
        &FetchSnapshotRequest::default(),
    )
    .await
    .unwrap();
    let closed = c.recv(WAIT).await.unwrap();
    assert!(closed.is_none(), "FetchSnapshot was answered: {closed:?}");
    let log = kapsule.logs();
    assert!(
        log.lines()
            .any(|l| l.contains("FetchSnapshot") && l.contains("closing the connection")),
        "no log line names the refused FetchSnapshot:\n{log}"
    );
}

/// A Fetch v13 by an id Kapsule has never seen named is answered UNKNOWN_TOPIC_ID without
/// records, even when the broker holds records for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_by_an_unresolved_topic_id_delivers_no_records() {
    let kafka = KafkaCluster::shared().await.expect("shared Kafka node");
    let kms = LocalKms::new().unwrap();
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"vid-\"}\n      key_id: kek-vid\n";
    let kapsule = start_kapsule(kafka, &kms.yaml(), policy).await;
    let t = topic(kafka, "vid-").await;
    let id = topic_id(kafka, &t).await;
    let mut direct = RawConnection::connect(&kafka.bootstrap()).await.unwrap();
    let plain = record_batch(&[(b"k", b"INJECTED")]);
    direct
        .send(
            ApiKey::Produce,
            3,
            1,
            &produce_request(&t, None, 5000, plain),
        )
        .await
        .unwrap();
    direct
        .recv_as::<ProduceResponse>(ApiKey::Produce, 3, WAIT)
        .await
        .unwrap();

    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    c.send(ApiKey::Fetch, 13, 1, &fetch_request("", Some(id)))
        .await
        .unwrap();
    let (_, f) = c
        .recv_as::<FetchResponse>(ApiKey::Fetch, 13, WAIT)
        .await
        .unwrap();
    let (code, values) = fetched_values(&f);
    assert_eq!(code, UNKNOWN_TOPIC_ID, "{f:?}");
    assert!(values.is_empty(), "records delivered: {f:?}");
}
