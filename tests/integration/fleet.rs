//! Many instances: three Kapsule instances behind haproxy (TCP mode, `/readyz` health checks,
//! PROXY protocol v2) sharing one OpenBao transit KMS. Clients know only haproxy.

use std::time::Duration;

use kapsule_integration::encryption::{assert_no_plaintext, vault_kms_yaml};
use kapsule_integration::fleet::{Frontend, LoadBalancer, Member};
use kapsule_integration::openbao::OpenBao;
use kapsule_integration::{free_port, run_python, unique_name, Broker, TestRecord};

use crate::common::{
    args, assert_group_read_all, assert_read_exactly_once, assert_records_match, ck_consume,
    ck_produce, json_strings, CLIENT_TIMEOUT,
};

/// haproxy listens here; clients are told only this address.
const LB_HOST: &str = "127.0.0.2";
/// haproxy connects to Kapsule from here, so Kapsule logging it would mean the PROXY header was
/// ignored.
const LB_SOURCE: &str = "127.0.0.5";

fn lines_with(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// The whole fleet story, one rig (starting three instances is the expensive part):
///
/// 1. Records produced through instance k0 only (haproxy's runtime API takes k1 and k2 out)
///    are stored encrypted and read back decrypted through k1 only, whose DEK cache is empty:
///    the shared KMS is all instances need to agree.
/// 2. Under a steady idempotent produce (confluent-kafka, acks=all) and a consumer group, both
///    connected through k0, k0 is killed with SIGKILL and later started again: the health checks take it out and back in,
///    no produce fails, and a fresh consumer reads every acknowledged record exactly once.
/// 3. Kapsule logs the clients' own address (from the PROXY header), never haproxy's, and the
///    restarted k0 (empty caches) serves and decrypts the first topic on its own.
#[tokio::test(flavor = "multi_thread")]
async fn three_instances_behind_haproxy_survive_a_kill_and_share_keys() {
    let bao = OpenBao::start().expect("openbao");
    bao.create_key("kek-fleet").unwrap();
    let (kms, _token) = vault_kms_yaml(&bao, 2000, 3).unwrap();
    let broker = Broker::start_default().await.expect("start the broker");
    let node_id = broker.node_id();

    let lb_boot = format!("{LB_HOST}:{}", free_port());
    let lb_node_base = free_port() - node_id;
    let mut members = Vec::new();
    let mut node_addrs = Vec::new();
    for i in 0..3 {
        let node_base = free_port() - node_id;
        let yaml = format!(
            "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\n  advertised_host: {LB_HOST}\n  node_port_base: {node_base}\n  advertised_port_base: {lb_node_base}\n  proxy_protocol: v2\n\
admin:\n  listen: \"{{admin}}\"\n{kms}\
policy:\n  rules:\n    - topics: {{prefix: \"fleet-\"}}\n      key_id: kek-fleet\n      value: whole\n",
            broker.bootstrap()
        );
        let m = Member::start(
            &format!("k{i}"),
            &yaml,
            "info,kapsule::proxy::connection=debug",
        )
        .await
        .expect("kapsule instance");
        assert!(
            !m.logs().contains("behind a load balancer"),
            "a correct fleet member gets no fleet warning:\n{}",
            m.logs()
        );
        node_addrs.push(format!("127.0.0.1:{}", node_base + node_id));
        members.push(m);
    }
    let servers = |addrs: &dyn Fn(usize) -> String| {
        members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), addrs(i), m.admin.clone()))
            .collect::<Vec<_>>()
    };
    let frontends = [
        Frontend {
            name: "boot".into(),
            bind: lb_boot.clone(),
            servers: servers(&|i| members[i].listen.clone()),
            sni_suffix: None,
        },
        Frontend {
            name: "node".into(),
            bind: format!("{LB_HOST}:{}", lb_node_base + node_id),
            servers: servers(&|i| node_addrs[i].clone()),
            sni_suffix: None,
        },
    ];
    let lb = LoadBalancer::start(&frontends, LB_SOURCE)
        .await
        .expect("haproxy");
    let only = |keep: usize| {
        let lb = &lb;
        async move {
            for backend in ["boot", "node"] {
                for i in 0..3 {
                    lb.set_server(backend, &format!("k{i}"), i == keep || keep == usize::MAX)
                        .await
                        .unwrap();
                }
            }
        }
    };

    // 1. Written through k0 only, read through k1 only.
    let cross = unique_name("fleet-cross");
    broker.create_topic(&cross, 1).await.unwrap();
    let records = TestRecord::varied("fleet", 20);
    only(0).await;
    ck_produce(&lb_boot, &cross, &records, &[]).await;
    let k1_before = lines_with(&members[1].logs(), "connection opened");
    let k0_before = lines_with(&members[0].logs(), "connection opened");
    assert!(k0_before > 0, "k0 served the producer");
    assert_eq!(k1_before, 0, "k1 was out of rotation");
    only(1).await;
    assert_records_match(
        &records,
        &ck_consume(&lb_boot, &cross, records.len(), &[]).await,
    );
    assert!(lines_with(&members[1].logs(), "connection opened") > 0);
    assert_eq!(
        lines_with(&members[0].logs(), "connection opened"),
        k0_before,
        "the consumer went through k1 only"
    );
    let stored: Vec<TestRecord> = ck_consume(&broker.bootstrap(), &cross, records.len(), &[])
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    let markers: Vec<Vec<u8>> = records.iter().filter_map(|r| r.value.clone()).collect();
    assert_no_plaintext(&stored, &markers);
    only(usize::MAX).await;

    // 2. Steady idempotent produce and a consumer group while k0 dies and comes back.
    let steady = unique_name("fleet-steady");
    broker.create_topic(&steady, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (stop_produce, stop_group) = (dir.path().join("produce"), dir.path().join("group"));
    // Both clients start on k0 alone, so the kill below certainly cuts their connections.
    only(0).await;
    let producer = {
        let a = args(&[
            "produce",
            "--bootstrap",
            &lb_boot,
            "--topic",
            &steady,
            "--rate",
            "100",
            "--stop-file",
            &stop_produce.display().to_string(),
        ]);
        tokio::spawn(async move { run_python("ck_fleet.py", &a, Duration::from_secs(240)).await })
    };
    let group = {
        let a = args(&[
            "group",
            "--bootstrap",
            &lb_boot,
            "--topic",
            &steady,
            "--group",
            &unique_name("fleet-group"),
            "--timeout",
            "200",
            "--stop-file",
            &stop_group.display().to_string(),
        ]);
        tokio::spawn(async move { run_python("ck_fleet.py", &a, Duration::from_secs(240)).await })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    only(usize::MAX).await;
    members[0].kill9();
    for backend in ["boot", "node"] {
        lb.wait_server(backend, "k0", false).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    members[0].restart().await.expect("k0 restarts");
    for backend in ["boot", "node"] {
        lb.wait_server(backend, "k0", true).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    std::fs::write(&stop_produce, "").unwrap();
    let produced = producer.await.unwrap().expect("ck_fleet.py produce").json;
    let acked = json_strings(&produced, "acked");
    let sent = produced["sent"].as_u64().unwrap() as usize;
    assert_eq!(
        produced["failed"], 0,
        "no produce failed: {}",
        produced["errors"]
    );
    assert_eq!(produced["undelivered"], 0);
    assert_eq!(acked.len(), sent, "every record sent was acknowledged");
    assert!(sent >= 1000, "the producer ran steadily: {sent} records");
    eprintln!("fleet: {sent} records sent and acknowledged across the kill and restart of k0");

    // A fresh consumer through the load balancer: every acknowledged record exactly once.
    let drained = run_python(
        "ck_fleet.py",
        &args(&[
            "drain",
            "--bootstrap",
            &lb_boot,
            "--topic",
            &steady,
            "--group",
            &unique_name("fleet-drain"),
            "--min",
            &sent.to_string(),
        ]),
        CLIENT_TIMEOUT,
    )
    .await
    .expect("ck_fleet.py drain")
    .json;
    assert_read_exactly_once(&acked, json_strings(&drained, "values"));

    // The group kept consuming through the kill: it read every acknowledged record (at least
    // once: a rebalance may replay uncommitted ones).
    tokio::time::sleep(Duration::from_secs(5)).await;
    std::fs::write(&stop_group, "").unwrap();
    let grouped = group.await.unwrap().expect("ck_fleet.py group").json;
    assert_group_read_all(&acked, json_strings(&grouped, "values"));

    // 3. Every instance served clients, logged their own address, never haproxy's, and the
    // restarted k0 took traffic again.
    for m in &members {
        let logs = m.logs();
        assert!(
            logs.contains("connection opened peer=127.0.0.1:"),
            "{}: no client connection logged:\n{logs}",
            m.name
        );
        assert!(
            !logs.contains(&format!("peer={LB_SOURCE}:")),
            "{} logged haproxy's address instead of the client's",
            m.name
        );
        assert!(
            !logs.contains("PROXY protocol v2 header"),
            "{}: a connection without a PROXY header",
            m.name
        );
    }

    // The restarted k0 (empty caches) serves and decrypts again once it is the only one left.
    only(0).await;
    assert_records_match(
        &records,
        &ck_consume(&lb_boot, &cross, records.len(), &[]).await,
    );
    assert!(
        members[0].current_logs().contains("connection opened"),
        "the restarted k0 served the consumer"
    );
}
