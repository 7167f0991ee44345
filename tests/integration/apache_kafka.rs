//! Kapsule in front of real Apache Kafka 4.x (KRaft, `transaction.version=2`), with the reference
//! clients: the Apache Kafka Java client (producer, classic and KIP-848 consumer groups,
//! transactional producer, AdminClient) and franz-go. Records round-trip byte for byte with
//! whole-value encryption and every compression codec, and the same records read directly from
//! the broker (not through Kapsule) hold only ciphertext.
//!
//! Every test shares the process's single Kafka node ([`KafkaCluster::shared`]: one JVM start per
//! test process) and isolates itself by unique topic, group and transactional-id names; each test
//! starts its own Kapsule.

use std::time::Duration;

use rstest::rstest;
use serde_json::Value;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::records::{write_records_file, ConsumedRecord};
use kapsule_integration::{
    run_franz, run_java, run_python, unique_name, KafkaCluster, KafkaOptions, Kapsule,
    KapsuleConfig, Listener, RecordsMode, TestRecord,
};

use crate::common::{
    args, assert_fetches_read_ahead, assert_in_offset_order, assert_records_match, read_ahead_count,
};

/// Time one reference-client run may take (a JVM start included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Encryption rules: `whole-` topics encrypt the value whole, the record key and the `secret`
/// header; other topics pass through (re-encoded).
const RULES: &str = r#"policy:
  rules:
    - topics: {prefix: "whole-"}
      key_id: "kek-$${topic}"
      value: whole
      record_key: true
      headers: [secret]
"#;

/// A reference client, as producer and consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefClient {
    /// The Java client; consumer in a classic group.
    Java,
    /// The Java client; consumer in a KIP-848 group (`group.protocol=consumer`).
    JavaKip848,
    /// franz-go; consumer in a (classic) group.
    Franz,
}

/// The shared Kafka node and a Kapsule (reencode, local KMS, [`RULES`]) in front of it.
struct KafkaRig<'k> {
    kafka: &'k KafkaCluster,
    kapsule: Kapsule,
    kms: LocalKms,
}

impl KafkaRig<'static> {
    async fn start() -> Self {
        let kafka = KafkaCluster::shared().await.expect("shared Kafka node");
        KafkaRig::start_on(kafka).await
    }
}

impl<'k> KafkaRig<'k> {
    async fn start_on(kafka: &'k KafkaCluster) -> Self {
        let kms = LocalKms::new().unwrap();
        let config = KapsuleConfig::new(RecordsMode::Reencode)
            .with_yaml(&kms.yaml())
            .with_yaml(RULES);
        let kapsule = Kapsule::start(&kafka.bootstrap(), config)
            .await
            .expect("start kapsule in front of Apache Kafka");
        Self {
            kafka,
            kapsule,
            kms,
        }
    }

    fn bootstrap(&self) -> String {
        self.kapsule.bootstrap()
    }

    async fn topic(&self, prefix: &str, partitions: u32) -> String {
        let name = unique_name(prefix);
        self.kafka
            .create_topic(&name, partitions)
            .await
            .expect("create topic on Kafka");
        name
    }
}

/// Produces `records` with `client` to `topic` at `bootstrap`; `extra` are client arguments.
async fn produce(
    client: RefClient,
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    extra: &[&str],
) -> Value {
    let file = write_records_file(records).expect("write records");
    let mut a = args(&[
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--input",
    ]);
    a.push(file.path().display().to_string());
    a.extend(args(extra));
    let out = match client {
        RefClient::Java | RefClient::JavaKip848 => run_java(&a, CLIENT_TIMEOUT).await,
        RefClient::Franz => run_franz(&a, CLIENT_TIMEOUT).await,
    }
    .unwrap_or_else(|e| panic!("{client:?} produce to {topic}: {e:#}"));
    assert_eq!(out.json["produced"], records.len(), "{}", out.json);
    out.json
}

/// Consumes `count` records of `topic` with `client` in a new group (or, with `group = None`,
/// every partition directly from the beginning); fails if fewer arrive within 60 s.
pub(crate) async fn consume(
    client: RefClient,
    bootstrap: &str,
    topic: &str,
    count: usize,
    group: Option<&str>,
    extra: &[&str],
) -> Vec<ConsumedRecord> {
    let mut a = args(&[
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--timeout",
        "60",
    ]);
    a.extend(["--count".to_owned(), count.to_string()]);
    match (client, group) {
        (RefClient::Java | RefClient::JavaKip848, None) => a.push("--assign".into()),
        (_, None) => {}
        (_, Some(g)) => a.extend(args(&["--group", g])),
    }
    if client == RefClient::JavaKip848 && group.is_some() {
        a.extend(args(&["--group-protocol", "consumer"]));
    }
    a.extend(args(extra));
    let out = match client {
        RefClient::Java | RefClient::JavaKip848 => run_java(&a, CLIENT_TIMEOUT).await,
        RefClient::Franz => run_franz(&a, CLIENT_TIMEOUT).await,
    }
    .unwrap_or_else(|e| panic!("{client:?} consume from {topic}: {e:#}"));
    assert_eq!(
        out.json["timed_out"], false,
        "{client:?} read fewer than {count} records of {topic}: {}\n----- client stderr -----\n{}",
        out.json, out.stderr
    );
    ConsumedRecord::list_from_output(&out.json).expect("parse consumed records")
}

/// Reads `count` records of `topic` directly from the broker (Java client, no group, bypassing
/// Kapsule): what is stored at rest.
async fn read_at_rest(kafka: &KafkaCluster, topic: &str, count: usize) -> Vec<ConsumedRecord> {
    consume(RefClient::Java, &kafka.bootstrap(), topic, count, None, &[]).await
}

/// Records with plaintext markers in the key, value and `secret` header (all encrypted by the
/// `whole-` rule), binary bytes of every value in the value, and a clear `visible` header.
fn marked_records(tag: &str, n: usize) -> (Vec<TestRecord>, Vec<Vec<u8>>) {
    let mut markers = Vec::new();
    let records = (0..n)
        .map(|i| {
            let key = format!("KEYMARK-{tag}-{i}");
            let mut value = format!("VALMARK-{tag}-{i}-").into_bytes();
            value.extend((0..=255u8).map(|b| b ^ i as u8));
            value.extend("payload ".repeat(i % 40).into_bytes());
            let secret = format!("HDRMARK-{tag}-{i}");
            markers.push(key.clone().into_bytes());
            markers.push(format!("VALMARK-{tag}-{i}-").into_bytes());
            markers.push(secret.clone().into_bytes());
            TestRecord {
                key: Some(key.into_bytes()),
                value: Some(value),
                headers: vec![
                    ("secret".into(), Some(secret.into_bytes())),
                    ("visible".into(), Some(format!("clear-{i}").into_bytes())),
                ],
                timestamp: Some(1_700_000_000_000 + i as i64),
                partition: None,
            }
        })
        .collect();
    (records, markers)
}

/// Asserts the stored form (read at rest) of the records consumed through Kapsule is encrypted,
/// matching them by partition and offset: no plaintext marker anywhere, a `kapsule.enc` header,
/// a changed key, the unlisted `visible` header clear.
fn assert_encrypted_at_rest(
    consumed: &[ConsumedRecord],
    stored: &[ConsumedRecord],
    markers: &[Vec<u8>],
) {
    assert_eq!(stored.len(), consumed.len(), "records at rest");
    let stored_records: Vec<TestRecord> = stored.iter().map(|c| c.record.clone()).collect();
    assert_no_plaintext(&stored_records, markers);
    for c in consumed {
        let at = (c.record.partition, c.offset);
        let s = stored
            .iter()
            .find(|s| (s.record.partition, s.offset) == at)
            .unwrap_or_else(|| panic!("no record at rest at partition/offset {at:?}"));
        assert!(
            s.record.header("kapsule.enc").is_some(),
            "record at {at:?} lacks the kapsule.enc header at rest"
        );
        assert_ne!(
            s.record.key, c.record.key,
            "record at {at:?} has its plaintext key at rest"
        );
        assert_eq!(
            s.record.header("visible"),
            c.record.header("visible"),
            "unlisted header stays clear"
        );
    }
}

/// The rig itself: the shared node answers, creates topics with a leader, and the Java client
/// and franz-go produce to it and read back directly (no Kapsule).
#[tokio::test(flavor = "multi_thread")]
async fn shared_kafka_node_serves_both_reference_clients_directly() {
    let kafka = KafkaCluster::shared().await.expect("shared Kafka node");
    let topic = unique_name("direct");
    kafka.create_topic(&topic, 2).await.unwrap();
    assert_eq!(kafka.leader(&topic, 0).await.unwrap(), 1);
    let records = TestRecord::varied("direct", 20);
    produce(RefClient::Java, &kafka.bootstrap(), &topic, &records, &[]).await;
    let back = consume(
        RefClient::Franz,
        &kafka.bootstrap(),
        &topic,
        records.len(),
        None,
        &[],
    )
    .await;
    assert_records_match(&records, &back);
}

/// Whole-value encryption through Kapsule: each reference client produces and consumes (in a
/// consumer group: classic for Java and franz-go, KIP-848 for `JavaKip848`) byte for byte, while
/// the broker holds only ciphertext. Unencrypted topics (re-encoded by Kapsule) keep every byte
/// of records with binary and null keys, null and empty values, and repeated headers.
#[rstest]
#[case::java_classic_group(RefClient::Java)]
#[case::java_kip848_group(RefClient::JavaKip848)]
#[case::franz_go(RefClient::Franz)]
#[tokio::test(flavor = "multi_thread")]
async fn reference_client_round_trip_with_encryption(#[case] client: RefClient) {
    let rig = KafkaRig::start().await;
    let whole = rig.topic("whole-rt", 3).await;
    let (records, markers) = marked_records("rt", 60);
    produce(client, &rig.bootstrap(), &whole, &records, &[]).await;
    let group = unique_name("rt-group");
    let back = consume(
        client,
        &rig.bootstrap(),
        &whole,
        records.len(),
        Some(&group),
        &[],
    )
    .await;
    assert_records_match(&records, &back);
    let stored = read_at_rest(rig.kafka, &whole, records.len()).await;
    assert_encrypted_at_rest(&back, &stored, &markers);

    let plain = rig.topic("plain-rt", 1).await;
    let varied = TestRecord::varied("rt", 30);
    produce(client, &rig.bootstrap(), &plain, &varied, &[]).await;
    let back = consume(
        client,
        &rig.bootstrap(),
        &plain,
        varied.len(),
        Some(&unique_name("rt-plain-group")),
        &[],
    )
    .await;
    assert_records_match(&varied, &back);
}

/// Every compression codec, with each producer: encrypted records round-trip byte for byte
/// through Kapsule and are ciphertext at rest.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn every_codec_round_trips_encrypted(
    #[values("none", "gzip", "snappy", "lz4", "zstd")] codec: &str,
    #[values(RefClient::Java, RefClient::Franz)] client: RefClient,
) {
    let rig = KafkaRig::start().await;
    let topic = rig.topic(&format!("whole-{codec}"), 1).await;
    let (records, markers) = marked_records(codec, 50);
    produce(
        client,
        &rig.bootstrap(),
        &topic,
        &records,
        &["--compression", codec],
    )
    .await;
    let back = consume(client, &rig.bootstrap(), &topic, records.len(), None, &[]).await;
    assert_records_match(&records, &back);
    let stored = read_at_rest(rig.kafka, &topic, records.len()).await;
    assert_encrypted_at_rest(&back, &stored, &markers);
}

/// Transactions through Kapsule on Kafka 4 (`transaction.version=2` finalized): a committed,
/// an aborted and a committed transaction of the Java transactional producer; a `read_committed`
/// consumer reads exactly the committed records (the aborted ones lie between them in the log,
/// so seeing them would break the order), a `read_uncommitted` one reads all three.
///
/// Regression (failed on 0764bb5, which capped Produce at v8 while relaying the finalized
/// feature `transaction.version=2`): the Java client then skips AddPartitionsToTxn and the broker
/// answers INVALID_TXN_STATE. Kapsule now offers Produce v12+ (and lowers the feature to 1 should
/// it ever offer less, see `rewrite::rewrite_api_versions`).
#[rstest]
#[case::java_classic(RefClient::Java)]
#[case::java_kip848(RefClient::JavaKip848)]
#[tokio::test(flavor = "multi_thread")]
async fn transactional_producer_commit_and_abort_with_read_committed(#[case] client: RefClient) {
    let rig = KafkaRig::start().await;
    transactions_commit_and_abort(&rig, client).await;
}

/// The same transactions as [`transactional_producer_commit_and_abort_with_read_committed`] on a
/// node of its own formatted with `transaction.version=1` (explicit AddPartitionsToTxn): what
/// Kapsule supports today.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_work_on_transaction_version_1() {
    let kafka = KafkaCluster::start(KafkaOptions::single().with_feature("transaction.version", 1))
        .await
        .expect("start a Kafka node with transaction.version=1");
    let rig = KafkaRig::start_on(&kafka).await;
    transactions_commit_and_abort(&rig, RefClient::Java).await;
}

/// Committed, aborted, committed transactions of the Java producer through `rig`; `client` reads
/// them back with both isolation levels.
async fn transactions_commit_and_abort(rig: &KafkaRig<'_>, client: RefClient) {
    let topic = rig.topic("whole-tx", 2).await;
    let tx_id = unique_name("tx");
    let (first, mut markers) = marked_records("tx-commit-1", 20);
    let (aborted, m2) = marked_records("tx-abort", 20);
    let (second, m3) = marked_records("tx-commit-2", 20);
    markers.extend(m2);
    markers.extend(m3);
    for (records, end) in [(&first, "commit"), (&aborted, "abort"), (&second, "commit")] {
        let out = produce(
            RefClient::Java,
            &rig.bootstrap(),
            &topic,
            records,
            &["--transactional-id", &tx_id, "--transaction", end],
        )
        .await;
        assert_eq!(out["transaction"], end, "{out}");
    }
    let committed: Vec<TestRecord> = first.iter().chain(&second).cloned().collect();
    let back = consume(
        client,
        &rig.bootstrap(),
        &topic,
        committed.len(),
        Some(&unique_name("tx-rc")),
        &["--isolation", "read_committed"],
    )
    .await;
    assert_records_match(&committed, &back);

    let everything: Vec<TestRecord> = first
        .iter()
        .chain(&aborted)
        .chain(&second)
        .cloned()
        .collect();
    let back = consume(
        client,
        &rig.bootstrap(),
        &topic,
        everything.len(),
        Some(&unique_name("tx-ru")),
        &["--isolation", "read_uncommitted"],
    )
    .await;
    assert_records_match(&everything, &back);
    let stored = read_at_rest(rig.kafka, &topic, everything.len()).await;
    assert_encrypted_at_rest(&back, &stored, &markers);
}

/// A transaction of franz-go's transactional producer, committed and aborted, read back by the
/// Java client with `read_committed` through Kapsule.
///
/// Regression (failed on 0764bb5): franz-go 1.22 takes the KIP-890 part 2 path from the
/// finalized feature `transaction.version=2` alone; with Produce capped at v8 its produces failed
/// with INVALID_TXN_STATE.
#[tokio::test(flavor = "multi_thread")]
async fn franz_go_transactions_through_kapsule() {
    let rig = KafkaRig::start().await;
    let topic = rig.topic("whole-ftx", 1).await;
    let tx_id = unique_name("ftx");
    let (first, _) = marked_records("ftx-commit", 10);
    let (aborted, _) = marked_records("ftx-abort", 10);
    let (second, _) = marked_records("ftx-commit-2", 10);
    for (records, end) in [(&first, "commit"), (&aborted, "abort"), (&second, "commit")] {
        produce(
            RefClient::Franz,
            &rig.bootstrap(),
            &topic,
            records,
            &["--transactional-id", &tx_id, "--transaction", end],
        )
        .await;
    }
    let committed: Vec<TestRecord> = first.iter().chain(&second).cloned().collect();
    let back = consume(
        RefClient::Java,
        &rig.bootstrap(),
        &topic,
        committed.len(),
        Some(&unique_name("ftx-rc")),
        &["--isolation", "read_committed"],
    )
    .await;
    assert_records_match(&committed, &back);
}

async fn admin(bootstrap: &str, op: &str, extra: &[&str]) -> Value {
    let mut a = args(&["admin", "--bootstrap", bootstrap, "--op", op]);
    a.extend(args(extra));
    run_java(&a, CLIENT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("AdminClient {op}: {e:#}"))
        .json
}

/// The Java AdminClient through Kapsule: creates, describes, lists, configures and deletes a
/// topic, lists and describes a consumer group; every broker address it learns is Kapsule's.
#[tokio::test(flavor = "multi_thread")]
async fn admin_client_through_kapsule() {
    let rig = KafkaRig::start().await;
    let bootstrap = rig.bootstrap();
    let cluster = admin(&bootstrap, "describe-cluster", &[]).await;
    assert_eq!(cluster["cluster_id"], rig.kafka.cluster_id(), "{cluster}");
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 1, "{cluster}");

    let topic = unique_name("whole-admin");
    admin(
        &bootstrap,
        "create-topic",
        &[
            "--topic",
            &topic,
            "--partitions",
            "3",
            "--topic-config",
            "retention.bytes=1073741824",
        ],
    )
    .await;
    let d = admin(&bootstrap, "describe-topic", &["--topic", &topic]).await;
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3, "{d}");
    let configs = admin(&bootstrap, "describe-configs", &["--topic", &topic]).await;
    assert_eq!(
        configs["configs"]["retention.bytes"], "1073741824",
        "{configs}"
    );
    let listed = admin(&bootstrap, "list-topics", &[]).await;
    assert!(
        listed["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &topic),
        "{listed}"
    );

    // A group that consumed through Kapsule is visible to the AdminClient through Kapsule.
    let (records, _) = marked_records("admin", 5);
    produce(RefClient::Java, &bootstrap, &topic, &records, &[]).await;
    let group = unique_name("admin-group");
    let back = consume(
        RefClient::Java,
        &bootstrap,
        &topic,
        records.len(),
        Some(&group),
        &["--commit"],
    )
    .await;
    assert_records_match(&records, &back);
    let groups = admin(&bootstrap, "list-groups", &[]).await;
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group_id"] == group),
        "{groups}"
    );
    let g = admin(&bootstrap, "describe-group", &["--group", &group]).await;
    assert_eq!(g["group_id"], group, "{g}");

    admin(&bootstrap, "delete-topic", &["--topic", &topic]).await;
    let listed = admin(&bootstrap, "list-topics", &[]).await;
    assert!(
        !listed["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &topic),
        "{listed}"
    );
}

/// The 3-node cluster (3 combined controller/broker nodes): a topic replicated to all three has a
/// leader; stopping that node moves leadership to another, and records produced and consumed
/// through one Kapsule before, during and after the outage all come back decrypted exactly once.
/// A KIP-932 share consumer that runs through Kapsule across the stop and the restart (its
/// ShareFetch follows the leader to another of Kapsule's broker listeners) reads every record
/// decrypted too.
#[tokio::test(flavor = "multi_thread")]
async fn three_node_cluster_survives_leader_stop_through_kapsule() {
    use kapsule_integration::kafka::wait_for_new_leader;

    let mut cluster = KafkaCluster::start(KafkaOptions::cluster(3))
        .await
        .expect("start a 3-node Kafka cluster");
    let topic = unique_name("whole-failover");
    cluster.create_topic(&topic, 1).await.unwrap();
    let leader = cluster.leader(&topic, 0).await.unwrap();
    assert!(cluster.node_ids().contains(&leader), "leader {leader}");

    let kms = LocalKms::new().unwrap();
    let config = KapsuleConfig::new(RecordsMode::Reencode)
        .with_yaml(&kms.yaml())
        .with_yaml(RULES);
    // Kapsule's bootstrap must survive the stop: point it at a node that stays up.
    let survivor = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let upstream = cluster.address(survivor, Listener::Plaintext).unwrap();
    let kapsule = Kapsule::start(&upstream, config)
        .await
        .expect("start kapsule");

    let (before, mut markers) = marked_records("before-stop", 30);
    produce(
        RefClient::Java,
        &kapsule.bootstrap(),
        &topic,
        &before,
        &["--idempotent", "true"],
    )
    .await;
    // Started before the stop, it reads all three sets as they arrive.
    let share_consumer = {
        let (bootstrap, topic) = (kapsule.bootstrap(), topic.clone());
        tokio::spawn(async move { share_consume_within(&bootstrap, &topic, 90, &[], 240).await })
    };

    cluster.stop_node(leader).unwrap();
    let new_leader = wait_for_new_leader(&upstream, &topic, leader)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);

    let (during, m2) = marked_records("during-stop", 30);
    markers.extend(m2);
    produce(
        RefClient::Java,
        &kapsule.bootstrap(),
        &topic,
        &during,
        &["--idempotent", "true"],
    )
    .await;

    cluster.start_node(leader).await.unwrap();
    let (after, m3) = marked_records("after-restart", 30);
    markers.extend(m3);
    produce(
        RefClient::Franz,
        &kapsule.bootstrap(),
        &topic,
        &after,
        &["--idempotent"],
    )
    .await;

    let all: Vec<TestRecord> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let back = consume(
        RefClient::Java,
        &kapsule.bootstrap(),
        &topic,
        all.len(),
        Some(&unique_name("failover-group")),
        &[],
    )
    .await;
    assert_records_match(&all, &back);
    let shared = share_consumer.await.expect("share consumer task");
    assert_records_match(&all, &shared);
    let stored = consume(
        RefClient::Java,
        &cluster.bootstrap(),
        &topic,
        all.len(),
        None,
        &[],
    )
    .await;
    assert_encrypted_at_rest(&back, &stored, &markers);
}

/// DescribeCluster through Kapsule names Kapsule as every broker (and as the controller), and
/// describeTopics and describeConsumerGroups name the same Kapsule address as every partition
/// leader and group coordinator, so an AdminClient that bootstraps through Kapsule never learns
/// the broker's own address (Kapsule serves each broker on a port of its own, not the bootstrap).
#[tokio::test(flavor = "multi_thread")]
async fn admin_describe_cluster_names_only_kapsule() {
    let rig = KafkaRig::start().await;
    let bootstrap = rig.bootstrap();
    let broker = rig.kafka.bootstrap();
    let port_of = |addr: &str| -> i64 { addr.rsplit_once(':').unwrap().1.parse().unwrap() };
    let (kapsule_bootstrap_port, broker_port) = (port_of(&bootstrap), port_of(&broker));
    let cluster = admin(&bootstrap, "describe-cluster", &[]).await;
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{cluster}");
    let kapsule_node_port = nodes[0]["port"].clone();
    if !rig.kapsule.is_direct() {
        assert_ne!(
            kapsule_node_port, broker_port,
            "DescribeCluster names the broker's own address: {cluster}"
        );
        assert_ne!(kapsule_node_port, kapsule_bootstrap_port, "{cluster}");
        assert_eq!(
            cluster["controller"]["port"], kapsule_node_port,
            "{cluster}"
        );
    }
    let topic = rig.topic("admin-leaders", 2).await;
    let d = admin(&bootstrap, "describe-topic", &["--topic", &topic]).await;
    if !rig.kapsule.is_direct() {
        for p in d["partitions"].as_array().unwrap() {
            assert_eq!(
                p["leader"]["port"], kapsule_node_port,
                "leader not Kapsule's broker port: {d}"
            );
        }
    }
    let (records, _) = marked_records("admin-coordinator", 2);
    produce(RefClient::Java, &bootstrap, &topic, &records, &[]).await;
    let group = unique_name("admin-coordinator");
    consume(
        RefClient::Java,
        &bootstrap,
        &topic,
        records.len(),
        Some(&group),
        &["--commit"],
    )
    .await;
    let g = admin(&bootstrap, "describe-group", &["--group", &group]).await;
    if !rig.kapsule.is_direct() {
        assert_eq!(
            g["coordinator"]["port"], kapsule_node_port,
            "coordinator not Kapsule's broker port: {g}"
        );
    }
}

/// KIP-932 share groups (the Java `KafkaShareConsumer`; enabled by default on Kafka 4.4) through
/// Kapsule: the share consumer's ShareFetch responses are decrypted like a Fetch's (topics named
/// by id from the Metadata Kapsule saw), its acknowledgements (ShareAcknowledge) are relayed, and
/// it reads every record of an encrypted topic byte for byte while the broker holds ciphertext.
/// Records of a topic that is not encrypted come through as produced. The share consumers of
/// librdkafka (confluent-kafka) and franz-go read the encrypted topic byte for byte as well.
#[tokio::test(flavor = "multi_thread")]
async fn share_consumer_reads_decrypted_records() {
    let rig = KafkaRig::start().await;
    let whole = rig.topic("whole-share", 2).await;
    let (records, markers) = marked_records("share", 20);
    produce(RefClient::Java, &rig.bootstrap(), &whole, &records, &[]).await;
    let back = share_consume(&rig.bootstrap(), &whole, records.len(), &[]).await;
    assert_records_match(&records, &back);
    let stored = read_at_rest(rig.kafka, &whole, records.len()).await;
    assert_encrypted_at_rest(&back, &stored, &markers);

    let plain = rig.topic("plain-share", 1).await;
    let varied = TestRecord::varied("share", 10);
    produce(RefClient::Java, &rig.bootstrap(), &plain, &varied, &[]).await;
    let back = share_consume(&rig.bootstrap(), &plain, varied.len(), &[]).await;
    assert_records_match(&varied, &back);

    // So do the share consumers of librdkafka (confluent-kafka `ShareConsumer`) and franz-go
    // (`kgo.ShareGroup`).
    for client in ["librdkafka", "franz-go"] {
        let count = records.len().to_string();
        let group = unique_name("share-group");
        let a = args(&[
            "--bootstrap",
            &rig.bootstrap(),
            "--topic",
            &whole,
            "--count",
            &count,
            "--group",
            &group,
            "--timeout",
            "90",
        ]);
        let out = if client == "librdkafka" {
            run_python("ck_share_consume.py", &a, CLIENT_TIMEOUT).await
        } else {
            run_franz(&[args(&["share-consume"]), a].concat(), CLIENT_TIMEOUT).await
        }
        .unwrap_or_else(|e| panic!("{client} share consumer: {e:#}"));
        assert_eq!(out.json["timed_out"], false, "{client}: {}", out.stderr);
        let back =
            ConsumedRecord::list_from_output(&out.json).expect("parse share-consumed records");
        assert_records_match(&records, &back);
    }
}

/// Reads `count` records of `topic` with a Java share consumer in a new share group; `extra` are
/// client arguments (`--config k=v` pairs).
pub async fn share_consume(
    bootstrap: &str,
    topic: &str,
    count: usize,
    extra: &[&str],
) -> Vec<ConsumedRecord> {
    share_consume_within(bootstrap, topic, count, extra, 90).await
}

/// [`share_consume`], giving up after `secs` seconds. Each offset is listed once (a share group
/// may deliver a record again).
pub async fn share_consume_within(
    bootstrap: &str,
    topic: &str,
    count: usize,
    extra: &[&str],
    secs: u64,
) -> Vec<ConsumedRecord> {
    let mut a = args(&[
        "share-consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--group",
        &unique_name("share-group"),
        "--timeout",
        &secs.to_string(),
    ]);
    a.extend(args(extra));
    let out = run_java(&a, Duration::from_secs(secs + 30))
        .await
        .unwrap_or_else(|e| panic!("share consumer of {topic}: {e:#}"));
    assert_eq!(out.json["timed_out"], false, "{}", out.stderr);
    ConsumedRecord::list_from_output(&out.json).expect("parse share-consumed records")
}

/// Read-ahead for clients with KIP-227 fetch sessions: Kapsule serves the sessions of the Java
/// consumer (classic group) and franz-go itself and asks the broker sessionlessly, so their
/// fetches are answered from responses fetched and decrypted ahead. With small fetch sizes each
/// client reads three partitions of an encrypted topic in many incremental fetches; every record
/// comes back byte for byte, once, in offset order per partition, and most fetches are answered
/// ahead. Against the build before sessions were served, `served` stays 0 for both clients.
#[tokio::test(flavor = "multi_thread")]
async fn clients_with_fetch_sessions_are_read_ahead() {
    let rig = KafkaRig::start().await;
    let whole = rig.topic("whole-sessions", 3).await;
    let (records, markers) = marked_records("fs", 600);
    // Small producer batches, so each small fetch below carries a few of them.
    let small_batches = ["--config", "batch.size=2048", "--config", "linger.ms=0"];
    produce(
        RefClient::Java,
        &rig.bootstrap(),
        &whole,
        &records,
        &small_batches,
    )
    .await;
    let stored: Vec<TestRecord> = read_at_rest(rig.kafka, &whole, records.len())
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    assert_no_plaintext(&stored, &markers);

    let java_small_fetches = [
        "--config",
        "max.partition.fetch.bytes=4096",
        "--config",
        "fetch.max.bytes=8192",
    ];
    let franz_small_fetches = ["--fetch-max-bytes", "8192"];
    for (client, extra) in [
        (RefClient::Java, &java_small_fetches[..]),
        (RefClient::Franz, &franz_small_fetches[..]),
    ] {
        // A Kapsule of its own per client (same KMS): its counters are the client's.
        let config = KapsuleConfig::new(RecordsMode::Reencode)
            .with_yaml(&rig.kms.yaml())
            .with_yaml(RULES);
        let kapsule = Kapsule::start(&rig.kafka.bootstrap(), config)
            .await
            .expect("start kapsule");
        let group = unique_name("sessions-group");
        let back = consume(
            client,
            &kapsule.bootstrap(),
            &whole,
            records.len(),
            Some(&group),
            extra,
        )
        .await;
        assert_records_match(&records, &back);
        let who = format!("{client:?}");
        assert_in_offset_order(&back, 3, &who);
        assert_fetches_read_ahead(&kapsule, &who).await;
    }
}

/// Kapsule restarted (SIGKILL) under a Java consumer (partitions assigned) whose fetch session
/// Kapsule was serving:
/// every connection drops, and with them the sessions the old process kept. The consumer finds
/// Kapsule's new broker listener through Metadata; its next Fetch names a session the new process
/// does not hold (closing it, or continuing it, which is answered FETCH_SESSION_ID_NOT_FOUND, as a
/// restarted broker answers); the consumer opens a new session and reads every record once,
/// decrypted: those produced before the restart and those produced after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_recovers_its_fetch_session_when_kapsule_restarts() {
    let mut rig = KafkaRig::start().await;
    let whole = rig.topic("whole-restart", 3).await;
    let small_batches = ["--config", "batch.size=2048", "--config", "linger.ms=0"];
    let (first, _) = marked_records("before-restart", 300);
    produce(
        RefClient::Java,
        &rig.bootstrap(),
        &whole,
        &first,
        &small_batches,
    )
    .await;
    let (second, _) = marked_records("after-restart", 300);
    let all: Vec<TestRecord> = first.iter().chain(&second).cloned().collect();

    let consumer = {
        let (bootstrap, topic, count) = (rig.bootstrap(), whole.clone(), all.len());
        tokio::spawn(async move {
            let small_fetches = [
                "--config",
                "max.partition.fetch.bytes=4096",
                "--config",
                "fetch.max.bytes=8192",
            ];
            // Partitions assigned, no group: a rebalance would send a consumer without committed
            // offsets back to the start; what is tested here is the fetch session alone.
            consume(
                RefClient::Java,
                &bootstrap,
                &topic,
                count,
                None,
                &small_fetches,
            )
            .await
        })
    };
    // Restart only once the consumer's session fetches are being answered ahead.
    let mut served = 0;
    for _ in 0..600 {
        let (_, metrics) = rig.kapsule.admin_get("/metrics").await.unwrap();
        served = read_ahead_count(&metrics, "served");
        if served >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 3, "the consumer's fetches were never read ahead");
    rig.kapsule.restart().await.expect("restart kapsule");

    produce(
        RefClient::Java,
        &rig.bootstrap(),
        &whole,
        &second,
        &small_batches,
    )
    .await;
    let back = consumer.await.expect("consumer task");
    assert_records_match(&all, &back);
    assert_in_offset_order(&back, 3, "Java consumer across the restart");
}
