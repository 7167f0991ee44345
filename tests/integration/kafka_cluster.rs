//! A 3-node Apache Kafka cluster behind one Kapsule under steady load: a broker that leads
//! partitions stops and comes back while an idempotent producer and a consumer group keep
//! running through Kapsule. Leadership moves, Kapsule's per-broker listeners follow, and every
//! acknowledged record is read back decrypted exactly once.

use std::time::Duration;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::kafka::wait_for_new_leader;
use kapsule_integration::{
    run_python, unique_name, KafkaCluster, KafkaOptions, Kapsule, KapsuleConfig, Listener,
    RecordsMode, TestRecord,
};

use crate::common::{
    args, assert_group_read_all, assert_read_exactly_once, ck_consume, json_strings, CLIENT_TIMEOUT,
};

/// Whole-value encryption of `steady-` topics (value, record key).
const RULES: &str = r#"policy:
  rules:
    - topics: {prefix: "steady-"}
      key_id: kek-steady
      value: whole
      record_key: true
"#;

/// Runs `ck_fleet.py <mode>` in the background.
fn spawn_fleet_client(
    a: Vec<String>,
) -> tokio::task::JoinHandle<anyhow::Result<kapsule_integration::ClientOutput>> {
    tokio::spawn(async move { run_python("ck_fleet.py", &a, Duration::from_secs(300)).await })
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_load_survives_a_leader_stop_and_restart_through_kapsule() {
    let mut cluster = KafkaCluster::start(KafkaOptions::cluster(3))
        .await
        .expect("start a 3-node Kafka cluster");
    let topic = unique_name("steady-failover");
    cluster.create_topic(&topic, 3).await.unwrap();
    let leader = cluster.leader(&topic, 0).await.unwrap();
    // Kapsule's bootstrap must survive the stop: point it at a node that stays up.
    let survivor = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let upstream = cluster.address(survivor, Listener::Plaintext).unwrap();
    let kms = LocalKms::new().unwrap();
    let config = KapsuleConfig::new(RecordsMode::Reencode)
        .with_yaml(&kms.yaml())
        .with_yaml(RULES);
    let kapsule = Kapsule::start(&upstream, config)
        .await
        .expect("start kapsule");
    let boot = kapsule.bootstrap();

    let dir = tempfile::tempdir().unwrap();
    let (stop_produce, stop_group) = (dir.path().join("produce"), dir.path().join("group"));
    let producer = spawn_fleet_client(args(&[
        "produce",
        "--bootstrap",
        &boot,
        "--topic",
        &topic,
        "--rate",
        "100",
        "--prefix",
        "STEADYMARK",
        "--stop-file",
        &stop_produce.display().to_string(),
    ]));
    let group = spawn_fleet_client(args(&[
        "group",
        "--bootstrap",
        &boot,
        "--topic",
        &topic,
        "--group",
        &unique_name("steady-group"),
        "--timeout",
        "280",
        "--stop-file",
        &stop_group.display().to_string(),
    ]));

    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.stop_node(leader).unwrap();
    let new_leader = wait_for_new_leader(&upstream, &topic, leader)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.start_node(leader).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;

    std::fs::write(&stop_produce, "").unwrap();
    let produced = producer.await.unwrap().expect("ck_fleet.py produce").json;
    let acked = json_strings(&produced, "acked");
    let sent = produced["sent"].as_u64().unwrap() as usize;
    assert_eq!(produced["undelivered"], 0, "{produced}");
    assert_eq!(
        acked.len(),
        sent,
        "every record sent was acknowledged across the stop: {}",
        produced["errors"]
    );
    assert!(sent >= 1000, "the producer ran steadily: {sent} records");

    // A fresh consumer through Kapsule: every acknowledged record exactly once, decrypted.
    let drained = run_python(
        "ck_fleet.py",
        &args(&[
            "drain",
            "--bootstrap",
            &boot,
            "--topic",
            &topic,
            "--group",
            &unique_name("steady-drain"),
            "--min",
            &sent.to_string(),
        ]),
        CLIENT_TIMEOUT,
    )
    .await
    .expect("ck_fleet.py drain")
    .json;
    assert_read_exactly_once(&acked, json_strings(&drained, "values"));

    // The group kept consuming through the stop (at least once: a rebalance may replay).
    std::fs::write(&stop_group, "").unwrap();
    let grouped = group.await.unwrap().expect("ck_fleet.py group").json;
    assert_group_read_all(&acked, json_strings(&grouped, "values"));

    // At rest on the brokers: ciphertext only.
    let stored: Vec<TestRecord> = ck_consume(&cluster.bootstrap(), &topic, 200, &[])
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    let markers: Vec<Vec<u8>> = acked
        .iter()
        .take(200)
        .map(|v| v.as_bytes().to_vec())
        .collect();
    assert_no_plaintext(&stored, &markers);
}
