//! Kapsule keeps serving when clients misbehave and when the broker dies and comes back.

use std::time::Duration;

use rstest::rstest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use kapsule_integration::probe;
use kapsule_integration::records::write_records_file;
use kapsule_integration::{InteractiveClient, RecordsMode, TestRecord};

use crate::common::{args, assert_records_match, ck_consume, ck_produce, Rig};

/// Clients only ever learn Kapsule's addresses: Metadata through Kapsule advertises listeners of
/// Kapsule (which answer Kafka requests themselves), never the broker behind it, otherwise clients
/// would bypass the proxy after bootstrap.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn metadata_advertises_only_kapsule(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let rig = Rig::start(mode).await;
    let topic = rig.topic("md", 2).await;
    let md = probe::metadata(&rig.bootstrap(), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!md.brokers.is_empty());
    for b in &md.brokers {
        let advertised = format!("{}:{}", b.host, b.port);
        if rig.kapsule.is_direct() {
            assert_eq!(advertised, rig.broker.bootstrap());
        } else {
            assert_ne!(
                advertised,
                rig.broker.bootstrap(),
                "the broker leaked to clients: {b:?}"
            );
        }
        // Whatever is advertised serves Kafka and advertises itself consistently.
        let again = probe::metadata(&advertised, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("advertised {advertised} does not serve Metadata: {e:#}"));
        assert_eq!(again.brokers, md.brokers);
    }
    let t = md
        .topics
        .iter()
        .find(|t| t.name == topic)
        .expect("topic listed");
    assert_eq!(t.partitions, 2);
}

/// Connections that send part of a frame (or garbage sizes) and hang up must not disturb anyone.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn client_disconnecting_mid_request_does_not_hurt_others(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let mut rig = Rig::start(mode).await;
    let topic = rig.topic("halfframe", 1).await;
    let before = TestRecord::varied("before", 10);
    ck_produce(&rig.bootstrap(), &topic, &before, &[]).await;

    // A valid Produce header announcing 200 bytes, of which only 30 arrive.
    let mut half_produce = Vec::new();
    half_produce.extend_from_slice(&200i32.to_be_bytes());
    half_produce.extend_from_slice(&0i16.to_be_bytes()); // Produce
    half_produce.extend_from_slice(&9i16.to_be_bytes());
    half_produce.extend_from_slice(&1i32.to_be_bytes());
    half_produce.extend_from_slice(&[0u8; 22]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two bytes of the size prefix", vec![0, 0]),
        ("half a produce request", half_produce),
        (
            "size prefix of 2 GiB",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 18, 0, 0],
        ),
        (
            "negative size prefix",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
    ];
    let mut tasks = Vec::new();
    for round in 0..5 {
        for (what, bytes) in cases.clone() {
            let addr = rig.bootstrap();
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr)
                    .await
                    .unwrap_or_else(|e| panic!("connect for {what} (round {round}): {e}"));
                s.write_all(&bytes).await.ok();
                s.flush().await.ok();
                // Close without reading: the proxy sees EOF mid-frame.
                drop(s);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }

    rig.kapsule
        .ensure_alive()
        .await
        .expect("kapsule alive after broken clients");
    probe::api_versions(&rig.bootstrap(), Duration::from_secs(10))
        .await
        .expect("new connections still served");
    let after = TestRecord::varied("after", 10);
    ck_produce(&rig.bootstrap(), &topic, &after, &[]).await;
    let all: Vec<TestRecord> = before.into_iter().chain(after).collect();
    let consumed = ck_consume(&rig.bootstrap(), &topic, all.len(), &[]).await;
    assert_records_match(&all, &consumed);
    rig.kapsule.ensure_alive().await.unwrap();
}

/// The broker crashes (SIGKILL) and restarts on the same port: Kapsule stays up, and a producer that
/// stayed connected to Kapsule throughout delivers new records once the broker is back. tansu's
/// storage is in memory, so the restarted broker is empty and the topic is created again.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_clients_recover_through_kapsule(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let mut rig = Rig::start_on_tansu(mode).await;
    let topic = rig.topic("restart", 1).await;
    let phase1 = TestRecord::varied("phase1", 10);
    let phase2 = TestRecord::varied("phase2", 10);
    let f1 = write_records_file(&phase1).unwrap();
    let f2 = write_records_file(&phase2).unwrap();
    let mut a = args(&[
        "--bootstrap",
        &rig.bootstrap(),
        "--topic",
        &topic,
        "--timeout",
        "90",
    ]);
    a.extend(["--input1".into(), f1.path().display().to_string()]);
    a.extend(["--input2".into(), f2.path().display().to_string()]);
    let mut producer = InteractiveClient::python("ck_phases.py", &a).unwrap();
    let p1 = producer.next_json(Duration::from_secs(60)).await.unwrap();
    assert_eq!(p1["phase"], 1, "{p1}");
    let consumed = ck_consume(&rig.bootstrap(), &topic, phase1.len(), &[]).await;
    assert_records_match(&phase1, &consumed);

    rig.broker.tansu_mut().stop();
    rig.kapsule
        .ensure_alive()
        .await
        .expect("kapsule alive while the broker is down");
    rig.broker.tansu_mut().restart().await.unwrap();
    rig.broker
        .tansu_mut()
        .create_topic(&topic, 1)
        .await
        .unwrap();

    producer.send_line("go").await.unwrap();
    let p2 = producer.next_json(Duration::from_secs(100)).await.unwrap();
    assert_eq!(p2["phase"], 2, "{p2}");
    producer.finish(Duration::from_secs(30)).await.unwrap();

    // The restarted broker holds exactly the phase-2 records, read by a fresh consumer via Kapsule.
    let consumed = ck_consume(&rig.bootstrap(), &topic, phase2.len(), &[]).await;
    assert_records_match(&phase2, &consumed);
    rig.kapsule
        .ensure_alive()
        .await
        .expect("kapsule alive after the broker restart");
}
