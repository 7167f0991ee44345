//! PROXY protocol v2 from a real haproxy (TCP mode, `send-proxy-v2`) in front of Kapsule: clients
//! know only haproxy, Kapsule logs their real addresses and refuses connections without a header,
//! and a header from a peer outside `proxy.proxy_protocol_from` is refused unread.

use std::time::Duration;

use kapsule_integration::tls::{Haproxy, RawKapsule};
use kapsule_integration::{free_port, probe, unique_name, Tansu, TestRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{assert_records_match, ck_consume, ck_produce};

/// tansu 0.6 always has node id 111.
const TANSU_NODE_ID: u16 = 111;

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_proxy_protocol_v2_gives_real_client_addresses() {
    let tansu = Tansu::start().await.expect("tansu");
    // Kapsule on 127.0.0.1, haproxy on the same ports of 127.0.0.2; clients are told 127.0.0.2.
    let node_port = free_port();
    let base = node_port - TANSU_NODE_ID;
    let yaml = format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\n  advertised_host: 127.0.0.2\n  node_port_base: {base}\n  proxy_protocol: v2\n  proxy_protocol_from: [127.0.0.1/32]\nadmin:\n  listen: \"{{admin}}\"\n",
        tansu.bootstrap()
    );
    let kapsule =
        RawKapsule::spawn_with_log(&yaml, "info,kapsule::proxy::connection=debug").unwrap();
    let kapsule = RawKapsule::wait_ready(kapsule).await.expect("kapsule");
    let port = kapsule.listen.rsplit_once(':').unwrap().1.to_owned();
    let _haproxy = Haproxy::start(&[
        (format!("127.0.0.2:{port}"), kapsule.listen.clone()),
        (
            format!("127.0.0.2:{node_port}"),
            format!("127.0.0.1:{node_port}"),
        ),
    ])
    .await
    .expect("haproxy");
    let lb = format!("127.0.0.2:{port}");

    // A real client through the load balancer only.
    let topic = unique_name("pp2");
    tansu.create_topic(&topic, 1).await.unwrap();
    let records = TestRecord::varied("pp2", 10);
    ck_produce(&lb, &topic, &records, &[]).await;
    assert_records_match(&records, &ck_consume(&lb, &topic, records.len(), &[]).await);

    // A client from 127.0.0.3: haproxy connects from 127.0.0.1, Kapsule must log 127.0.0.3.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut c = sock.connect(lb.parse().unwrap()).await.unwrap();
    let me = c.local_addr().unwrap();
    let frame: &[u8] = &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
    c.write_all(frame).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut len))
        .await
        .expect("ApiVersions answer through haproxy")
        .unwrap();
    kapsule
        .wait_log(
            &format!("connection opened peer={me}"),
            Duration::from_secs(10),
        )
        .await
        .expect("Kapsule logs the client's own address, not haproxy's");
    assert!(
        kapsule
            .logs()
            .lines()
            .any(|l| l.contains("proxied{via=127.0.0.1:") && l.contains(&format!("peer={me}"))),
        "connection lines carry both the load balancer and the claimed client address"
    );

    // A client that reaches Kapsule directly from 127.0.0.3 (not a listed load balancer) and
    // forges a header claiming 203.0.113.9: closed before anything is read or answered.
    let forged: std::net::SocketAddr = "203.0.113.9:4242".parse().unwrap();
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[203, 0, 113, 9, 127, 0, 0, 1]);
    header.extend_from_slice(&4242u16.to_be_bytes());
    header.extend_from_slice(&port.parse::<u16>().unwrap().to_be_bytes());
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut direct = sock.connect(kapsule.listen.parse().unwrap()).await.unwrap();
    let _ = direct.write_all(&header).await;
    let _ = direct.write_all(frame).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), direct.read_to_end(&mut answer))
        .await
        .expect("the untrusted connection is closed");
    assert!(
        read.is_err() || answer.is_empty(),
        "a forged header from an untrusted peer got a {}-byte answer",
        answer.len()
    );
    kapsule
        .wait_log("not in proxy.proxy_protocol_from", Duration::from_secs(10))
        .await
        .expect("the refusal names the setting");
    assert!(
        !kapsule.logs().contains(&format!("peer={forged}")),
        "the forged address must never be used"
    );

    // Straight to Kapsule, bypassing the load balancer: refused, and Kapsule keeps serving.
    let refusals = || {
        kapsule
            .logs()
            .matches("no valid PROXY protocol v2 header")
            .count()
    };
    let before = refusals();
    assert!(probe::api_versions(&kapsule.listen, Duration::from_secs(5))
        .await
        .is_err());
    kapsule_integration::wait::until("the refusal to be logged", Duration::from_secs(10), || {
        let n = refusals();
        async move { Ok((n > before).then_some(())) }
    })
    .await
    .unwrap();
    assert_records_match(&records, &ck_consume(&lb, &topic, records.len(), &[]).await);
}
