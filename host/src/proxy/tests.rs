//! In-process tests of the relay against a fake broker (real sockets, fake Kafka semantics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, ProduceRequest,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::records::RecordStage;
use super::Proxy;
use crate::config::Config;
use crate::error::Reason;
use crate::kafka::frame::{
    decode_response, encode_request, encode_response, read_frame, write_frame, RequestMeta,
};
use crate::proxy::config::RecordsMode;
use crate::proxy::metrics::Metrics;

/// A fake broker: answers Metadata with `nodes` (all pointing at itself), never answers
/// Produce with acks=0, answers anything else with an empty body echoing the correlation id.
async fn fake_broker(nodes: Vec<i32>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let nodes = nodes.clone();
            tokio::spawn(async move {
                while let Ok(Some(frame)) = read_frame(&mut s, 1 << 20).await {
                    let meta = RequestMeta::parse(&frame).unwrap();
                    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
                    let body = match meta.known_api() {
                        Some(ApiKey::Metadata) => {
                            let brokers = nodes
                                .iter()
                                .map(|n| {
                                    MetadataResponseBroker::default()
                                        .with_node_id(BrokerId(*n))
                                        .with_host(StrBytes::from_static_str("127.0.0.1"))
                                        .with_port(addr.port() as i32)
                                })
                                .collect();
                            let resp = MetadataResponse::default().with_brokers(brokers);
                            encode_response(ApiKey::Metadata, meta.api_version, &header, &resp)
                                .unwrap()
                        }
                        Some(ApiKey::Produce)
                            if crate::kafka::frame::produce_acks(&frame).unwrap() == 0 =>
                        {
                            continue
                        }
                        _ => Bytes::copy_from_slice(&meta.correlation_id.to_be_bytes()),
                    };
                    // Small delay so pipelined requests really overlap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if write_frame(&mut s, &body).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn start_proxy(
    upstream: SocketAddr,
    tweak: impl FnOnce(&mut Config),
) -> (SocketAddr, Arc<super::ProxyShared>) {
    let mut config = Config::from_flags("127.0.0.1:0".into(), upstream.to_string());
    config.records = RecordsMode::Passthrough;
    tweak(&mut config);
    let proxy = bind_proxy(&config).await;
    let addr = proxy.local_addr().unwrap();
    let shared = proxy.shared();
    tokio::spawn(proxy.run(std::future::pending()));
    (addr, shared)
}

/// A proxy for `config` with no encryption, bound but not yet running.
async fn bind_proxy(config: &Config) -> Proxy {
    Proxy::bind(
        &config.proxy,
        Arc::new(Metrics::default()),
        RecordStage::new(config.records, None),
    )
    .await
    .unwrap()
}

fn raw_request(api: i16, version: i16, correlation_id: i32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&api.to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&correlation_id.to_be_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    v
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let broker = fake_broker(vec![1]).await;
    let (proxy, _) = start_proxy(broker, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    for id in 0..50 {
        // ListOffsets v1: relayed untouched.
        write_frame(&mut c, &raw_request(2, 1, id)).await.unwrap();
    }
    for id in 0..50i32 {
        let frame = read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
        assert_eq!(&frame[..4], &id.to_be_bytes());
    }
}

#[tokio::test]
async fn produce_with_acks_zero_expects_no_response() {
    let broker = fake_broker(vec![1]).await;
    let (proxy, _) = start_proxy(broker, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(1);
    let body = ProduceRequest::default().with_acks(0);
    write_frame(
        &mut c,
        &encode_request(ApiKey::Produce, &header, &body).unwrap(),
    )
    .await
    .unwrap();
    write_frame(&mut c, &raw_request(2, 1, 2)).await.unwrap();
    let frame = read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
    assert_eq!(
        &frame[..4],
        &2i32.to_be_bytes(),
        "the acks=0 produce must not wait for a response"
    );
}

#[tokio::test]
async fn metadata_brokers_point_at_per_broker_listeners_that_reach_the_broker() {
    let broker = fake_broker(vec![1, 2, 3]).await;
    let (proxy, shared) = start_proxy(broker, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(3)
        .with_request_api_version(12)
        .with_correlation_id(9);
    let req = MetadataRequest::default();
    write_frame(
        &mut c,
        &encode_request(ApiKey::Metadata, &header, &req).unwrap(),
    )
    .await
    .unwrap();
    let frame = read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
    let (_, resp) = decode_response::<MetadataResponse>(ApiKey::Metadata, 12, frame).unwrap();
    assert_eq!(resp.brokers.len(), 3);
    let mut ports: Vec<i32> = resp.brokers.iter().map(|b| b.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each broker gets its own port");
    for b in &resp.brokers {
        assert_eq!(b.host.as_str(), "127.0.0.1");
        assert_ne!(
            b.port,
            broker.port() as i32,
            "no client may learn the real broker port"
        );
        let mut n = TcpStream::connect(("127.0.0.1", b.port as u16))
            .await
            .unwrap();
        write_frame(&mut n, &raw_request(2, 1, 77)).await.unwrap();
        let frame = read_frame(&mut n, 1 << 20).await.unwrap().unwrap();
        assert_eq!(&frame[..4], &77i32.to_be_bytes());
    }
    assert_eq!(
        shared.upstream_for(&super::Route::Node(2)).unwrap(),
        broker.to_string()
    );
}

#[tokio::test]
async fn node_port_base_gives_deterministic_ports() {
    let broker = fake_broker(vec![4]).await;
    // Pick a base whose base+4 is free by asking the OS for one and subtracting.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = probe.local_addr().unwrap().port();
    drop(probe);
    let (proxy, _) = start_proxy(broker, |c| c.proxy.node_port_base = Some(free - 4)).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(3)
        .with_request_api_version(1)
        .with_correlation_id(1);
    write_frame(
        &mut c,
        &encode_request(ApiKey::Metadata, &header, &MetadataRequest::default()).unwrap(),
    )
    .await
    .unwrap();
    let frame = read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
    let (_, resp) = decode_response::<MetadataResponse>(ApiKey::Metadata, 1, frame).unwrap();
    assert_eq!(resp.brokers[0].port, free as i32);
}

#[tokio::test]
async fn api_versions_newer_than_supported_gets_kip511_fallback() {
    let broker = fake_broker(vec![1]).await;
    let (proxy, _) = start_proxy(broker, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    write_frame(&mut c, &raw_request(18, 99, 5)).await.unwrap();
    let frame = read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
    let (h, resp) = decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 0, frame).unwrap();
    assert_eq!(h.correlation_id, 5);
    assert_eq!(resp.error_code, 35);
    assert_eq!(resp.api_keys[0].max_version, 4);
}

#[tokio::test]
async fn oversized_frame_closes_the_connection_and_is_counted() {
    let broker = fake_broker(vec![1]).await;
    let (proxy, shared) = start_proxy(broker, |c| c.proxy.max_frame_bytes = 4096).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(&(1_000_000i32).to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection must be closed");
    assert_eq!(shared.metrics.error_count(Reason::FrameTooLarge), 1);
    // The proxy keeps serving others.
    let mut d = TcpStream::connect(proxy).await.unwrap();
    write_frame(&mut d, &raw_request(2, 1, 3)).await.unwrap();
    assert!(read_frame(&mut d, 1 << 20).await.unwrap().is_some());
}

#[tokio::test]
async fn client_disconnect_mid_request_does_not_disturb_others() {
    let broker = fake_broker(vec![1]).await;
    let (proxy, shared) = start_proxy(broker, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(&[0, 0, 0, 100, 0, 2]).await.unwrap();
    drop(c);
    let mut d = TcpStream::connect(proxy).await.unwrap();
    write_frame(&mut d, &raw_request(2, 1, 3)).await.unwrap();
    assert!(read_frame(&mut d, 1 << 20).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shared.metrics.active_connections(), 1);
}

#[tokio::test]
async fn upstream_unreachable_closes_the_client_connection() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (proxy, shared) = start_proxy(dead, |_| {}).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(shared.metrics.error_count(Reason::UpstreamConnect), 1);
}

/// A broker that reads requests, counts them, and answers only after `delay`.
async fn slow_broker(delay: Duration) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
                tokio::spawn(async move {
                    while let Some(id) = rx.recv().await {
                        tokio::time::sleep(delay).await;
                        if write_frame(&mut w, &id.to_be_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
                while let Ok(Some(frame)) = read_frame(&mut r, 1 << 20).await {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send(RequestMeta::parse(&frame).unwrap().correlation_id);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn in_flight_limit_stops_reading_from_the_client() {
    let (broker, seen) = slow_broker(Duration::from_secs(3600)).await;
    let (proxy, _) = start_proxy(broker, |c| c.proxy.max_in_flight = 2).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    for id in 0..20 {
        write_frame(&mut c, &raw_request(2, 1, id)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forwarded = seen.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        forwarded <= 2,
        "proxy forwarded {forwarded} requests past an in-flight limit of 2"
    );
    assert_eq!(forwarded, 2);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let (broker, _) = slow_broker(Duration::from_millis(300)).await;
    let config = Config::from_flags("127.0.0.1:0".into(), broker.to_string());
    let proxy = bind_proxy(&config).await;
    let addr = proxy.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));
    let mut c = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut c, &raw_request(2, 1, 42)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    let frame = read_frame(&mut c, 1 << 20)
        .await
        .unwrap()
        .expect("in-flight response delivered");
    assert_eq!(&frame[..4], &42i32.to_be_bytes());
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// A broker answering Metadata (no brokers named) after `delay`, counting Metadata requests.
async fn counting_metadata_broker(
    delay: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(Some(frame)) = read_frame(&mut s, 1 << 20).await {
                    let meta = RequestMeta::parse(&frame).unwrap();
                    if meta.known_api() == Some(ApiKey::Metadata) {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(delay).await;
                    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
                    let body = encode_response(
                        ApiKey::Metadata,
                        meta.api_version,
                        &header,
                        &MetadataResponse::default(),
                    )
                    .unwrap();
                    if write_frame(&mut s, &body).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// Issue 17, item 9: connections for node ids this instance has not seen (SNI names are
/// client-chosen) share one Metadata look-up instead of one each, and within
/// DISCOVERY_INTERVAL an unknown id costs the broker nothing.
#[tokio::test]
async fn unknown_node_look_ups_are_coalesced() {
    use std::sync::atomic::Ordering;
    let (broker, lookups) = counting_metadata_broker(Duration::from_millis(200)).await;
    let (_, shared) = start_proxy(broker, |_| {}).await;
    let attempts = (0..20).map(|i| {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared
                .resolve_upstream(&super::Route::Node(500 + i % 3))
                .await
        })
    });
    for a in attempts {
        assert!(a.await.unwrap().is_err(), "no broker 500..502 exists");
    }
    let lookups = || lookups.load(Ordering::SeqCst);
    assert_eq!(lookups(), 1, "20 connections, one look-up");
    let node_777_is_refused = || async {
        let refused = shared.resolve_upstream(&super::Route::Node(777)).await;
        assert!(refused.is_err(), "no broker 777 exists");
    };
    for _ in 0..5 {
        node_777_is_refused().await;
    }
    assert_eq!(lookups(), 1, "refused from the last look-up");
    tokio::time::sleep(super::DISCOVERY_INTERVAL).await;
    node_777_is_refused().await;
    assert_eq!(lookups(), 2, "a later interval looks again");
}

/// A broker that closes every connection on its first request, as a SASL-only listener does
/// with a request other than ApiVersions/SaslHandshake.
async fn sasl_only_broker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = read_frame(&mut s, 1 << 20).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_admission_probe_tells_brokers_requiring_authentication_apart() {
    use super::admission::{self, NotAdmitted, Verdict};
    use super::sasl::AuthenticationMode;
    use super::session::ClientSession;
    let open = fake_broker(vec![1]).await;
    let sasl = sasl_only_broker().await;
    let (_, shared) = start_proxy(open, |_| {}).await;
    assert_eq!(
        admission::probe(&shared, &open.to_string()).await.unwrap(),
        Verdict::AcceptsAnonymous
    );
    assert_eq!(
        admission::probe(&shared, &sasl.to_string()).await.unwrap(),
        Verdict::RequiresAuthentication
    );
    // Nothing listens on a port just released: the probe cannot tell, and says so.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(admission::probe(&shared, &gone.to_string()).await.is_err());

    // An unauthenticated session is admitted to work only where the broker serves anonymous
    // clients; where it does not, the session is treated as `required`.
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let to_open = ClientSession::new(peer);
    to_open.set_upstream(&open.to_string());
    assert_eq!(admission::admit_work(&shared, &to_open).await, Ok(()));
    assert_eq!(
        admission::mode_for(&shared, &to_open),
        AuthenticationMode::Optional
    );
    let to_sasl = ClientSession::new(peer);
    to_sasl.set_upstream(&sasl.to_string());
    assert!(matches!(
        admission::admit_work(&shared, &to_sasl).await,
        Err(NotAdmitted::RequiresAuthentication { .. })
    ));
    assert_eq!(
        admission::mode_for(&shared, &to_sasl),
        AuthenticationMode::Required
    );
    let to_gone = ClientSession::new(peer);
    to_gone.set_upstream(&gone.to_string());
    assert!(matches!(
        admission::admit_work(&shared, &to_gone).await,
        Err(NotAdmitted::Unknown { .. })
    ));
    // An authenticated session is admitted whatever its broker.
    let authed = ClientSession::authenticated(
        peer,
        crate::principal::Principal::new("alice", crate::principal::AuthMechanism::SaslPlain),
    );
    authed.set_upstream(&sasl.to_string());
    assert_eq!(admission::admit_work(&shared, &authed).await, Ok(()));
}
