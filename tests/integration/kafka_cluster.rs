//! A 3-node Apache Kafka cluster behind one Kapsule under steady load: a broker that leads
//! partitions stops and comes back while an idempotent producer and a consumer group keep
//! running through Kapsule. Leadership moves, Kapsule's per-broker listeners follow, and every
//! acknowledged record is read back decrypted exactly once.

use std::time::Duration;

use kapsule_integration::clients::run_python_in_netns;
use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::fleet::Member;
use kapsule_integration::kafka::wait_for_new_leader;
use kapsule_integration::netns::Netns;
use kapsule_integration::records::{assert_records_match, write_records_file, ConsumedRecord};
use kapsule_integration::tls::Pki;
use kapsule_integration::{
    free_port, run_python, unique_name, KafkaCluster, KafkaOptions, Kapsule, KapsuleConfig,
    Listener, RecordsMode, TestRecord,
};

use crate::common::{
    args, assert_group_read_all, assert_read_exactly_once, ck_consume, json_strings, CLIENT_TIMEOUT,
};
use crate::sni::{sni_yaml, wildcard_certificate, BOOTSTRAP_HOST};

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

/// SNI routing (`proxy.sni`, one TLS port) in front of the 3-node cluster: the metadata names
/// every broker `broker-<id>.kafka.example` on the one port; after the leader of partition 0
/// stops, the metadata names the new leader by its own SNI name and confluent-kafka (host names
/// verified) produces to it through the same port; once the old leader is back, every record
/// produced before, during and after the stop is read back decrypted through SNI, and the
/// brokers hold only ciphertext.
#[tokio::test(flavor = "multi_thread")]
async fn sni_names_follow_a_leader_change_on_a_kafka_cluster() {
    let mut cluster = KafkaCluster::start(KafkaOptions::cluster(3))
        .await
        .expect("start a 3-node Kafka cluster");
    let ids = cluster.node_ids();
    let broker_name = |id: i32| format!("broker-{id}.kafka.example");
    let mut names: Vec<String> = vec![BOOTSTRAP_HOST.into()];
    names.extend(ids.iter().map(|&id| broker_name(id)));
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ns = Netns::create(&name_refs).expect("network namespace");
    let pki = Pki::new("sni-cluster").unwrap();
    let cert = wildcard_certificate(&pki);
    let ca = pki.ca_cert().display().to_string();

    let topic = unique_name("steady-sni");
    cluster.create_topic(&topic, 3).await.unwrap();
    let leader = cluster.leader(&topic, 0).await.unwrap();
    let survivor = ids.iter().copied().find(|id| *id != leader).unwrap();
    let upstream = cluster.address(survivor, Listener::Plaintext).unwrap();
    let kms = LocalKms::new().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}{}{RULES}",
        sni_yaml(&format!("{}:{port}", ns.host_ip), &upstream, &cert),
        kms.yaml()
    );
    let kapsule = Member::start("sni-cluster", &yaml, "info")
        .await
        .expect("kapsule with proxy.sni before the cluster");
    let bootstrap = format!("{BOOTSTRAP_HOST}:{port}");
    let ssl = args(&[
        "--config",
        "security.protocol=SSL",
        "--config",
        &format!("ssl.ca.location={ca}"),
    ]);
    let metadata = || {
        let mut a = args(&["--bootstrap", &bootstrap, "--topic", &topic]);
        a.extend(ssl.clone());
        let ns = ns.name.clone();
        async move {
            run_python_in_netns(&ns, "ck_metadata.py", &a, CLIENT_TIMEOUT)
                .await
                .expect("ck_metadata.py over SNI")
                .json
        }
    };
    let produce = |records: Vec<TestRecord>| {
        let file = write_records_file(&records).unwrap();
        let mut a = args(&["--bootstrap", &bootstrap, "--topic", &topic, "--input"]);
        a.push(file.path().display().to_string());
        a.extend(ssl.clone());
        let ns = ns.name.clone();
        async move {
            let out = run_python_in_netns(&ns, "ck_produce.py", &a, CLIENT_TIMEOUT)
                .await
                .expect("confluent-kafka produce over SNI")
                .json;
            drop(file);
            assert_eq!(out["produced"], records.len(), "{out}");
        }
    };

    let md = metadata().await;
    let mut seen: Vec<(i64, String, i64)> = md["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap(),
                b["host"].as_str().unwrap().to_owned(),
                b["port"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(i64, String, i64)> = ids
        .iter()
        .map(|&id| (i64::from(id), broker_name(id), i64::from(port)))
        .collect();
    assert_eq!(
        seen, want,
        "every broker by its SNI name on the one port: {md}"
    );
    assert_eq!(md["leaders"]["0"], leader, "{md}");

    let before = TestRecord::varied("sni-before", 30);
    produce(before.clone()).await;

    cluster.stop_node(leader).unwrap();
    let new_leader = wait_for_new_leader(&upstream, &topic, leader)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    // Through Kapsule the client learns the new leader under its own SNI name.
    let md = metadata().await;
    assert_eq!(md["leaders"]["0"], new_leader, "{md}");
    let listed: Vec<&str> = md["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["host"].as_str())
        .collect();
    assert!(listed.contains(&broker_name(new_leader).as_str()), "{md}");
    assert!(
        md["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["port"] == port),
        "{md}"
    );
    let during = TestRecord::varied("sni-during", 30);
    produce(during.clone()).await;

    cluster.start_node(leader).await.unwrap();
    let after = TestRecord::varied("sni-after", 30);
    produce(after.clone()).await;

    let all: Vec<TestRecord> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let mut a = args(&[
        "--bootstrap",
        &bootstrap,
        "--topic",
        &topic,
        "--count",
        &all.len().to_string(),
        "--group",
        &unique_name("sni-cluster-group"),
    ]);
    a.extend(ssl.clone());
    let out = run_python_in_netns(&ns.name, "ck_consume.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("confluent-kafka consume over SNI")
        .json;
    // Every record exactly once, byte-exact, in produce order within each partition.
    assert_records_match(&all, &ConsumedRecord::list_from_output(&out).unwrap());
    assert!(
        !kapsule
            .logs()
            .contains("is neither proxy.sni.bootstrap_host"),
        "no SNI name went unrouted:\n{}",
        kapsule.logs()
    );

    let stored: Vec<TestRecord> = ck_consume(&cluster.bootstrap(), &topic, all.len(), &[])
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    let markers: Vec<Vec<u8>> = all.iter().filter_map(|r| r.value.clone()).collect();
    assert_no_plaintext(&stored, &markers);
}
