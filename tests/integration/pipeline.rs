//! One client connection through Kapsule, at the protocol level: what may reach the broker (only
//! versions Kapsule advertises), how pipelined requests share the connection (a slow KMS on one
//! topic does not queue the others behind it) and when a Produce is too late to be written.
//!
//! Requests are hand-built with [`RawConnection`] so each test controls versions, pipelining and
//! `timeout_ms` exactly; the broker is a real tansu, the KMS the local one or a real OpenBao.

use std::time::{Duration, Instant};

use rstest::rstest;

use kapsule_integration::encryption::{vault_kms_yaml, LocalKms};
use kapsule_integration::kms_server::KmsServer;
use kapsule_integration::openbao::OpenBao;
use kapsule_integration::probe::kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchResponse, FetchSnapshotRequest,
    ProduceRequest, ProduceResponse,
};
use kapsule_integration::probe::{
    end_offset, fetch_request, fetched_values, partition_errors, produce_request, record_batch,
    RawConnection,
};
use kapsule_integration::{unique_name, Kapsule, KapsuleConfig, RecordsMode, Tansu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// Kafka error codes the tests expect.
const REQUEST_TIMED_OUT: i16 = 7;

/// Starts Kapsule with `kms`'s `kms:` section (4 attempts of 2 s each) and `policy`.
async fn start_kapsule_with(kms: &KmsServer, tansu: &Tansu, policy: &str) -> Kapsule {
    let config = kms.kapsule_config(KapsuleConfig::new(RecordsMode::Passthrough), 2_000, 3);
    Kapsule::start(&tansu.bootstrap(), config.with_yaml(policy))
        .await
        .expect("start kapsule")
}

async fn start_kapsule(tansu: &Tansu, kms_yaml: &str, policy: &str) -> Kapsule {
    let config = KapsuleConfig::new(RecordsMode::Passthrough)
        .with_yaml(kms_yaml)
        .with_yaml(policy);
    Kapsule::start(&tansu.bootstrap(), config)
        .await
        .expect("start kapsule")
}

async fn topic(tansu: &Tansu, prefix: &str) -> String {
    let name = unique_name(prefix);
    tansu.create_topic(&name, 1).await.expect("create topic");
    name
}

/// The highest Produce and Fetch versions offered at `addr` (ApiVersions v2). Through Kapsule
/// (`proxied`), the APIs it does not transform must not be offered at all.
async fn offered(addr: &str, proxied: bool) -> (Option<i16>, Option<i16>) {
    let mut c = RawConnection::connect(addr).await.unwrap();
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
    for k in [ApiKey::FetchSnapshot, ApiKey::Envelope] {
        if proxied {
            assert_eq!(max_of(k), None, "{k:?} is advertised: {versions:?}");
        }
    }
    (max_of(ApiKey::Produce), max_of(ApiKey::Fetch))
}

/// Kapsule offers the flexible Produce and Fetch versions as far as the broker offers them (no
/// cap for another broker's quirk); on tansu, whose Fetch v12 responses carry a tagged field v12
/// does not define, records produced with Produce v9 are stored encrypted and read back through
/// Fetch v12 decrypted. APIs Kapsule does not transform (FetchSnapshot) close the connection.
#[tokio::test(flavor = "multi_thread")]
async fn flexible_versions_are_offered_as_far_as_the_broker_offers_them() {
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"ver-\"}\n      key_id: kek-ver\n      require_encrypted: true\n      on_decrypt_failure: error\n";
    let kapsule = start_kapsule(&tansu, &kms.yaml(), policy).await;
    let t = topic(&tansu, "ver-").await;

    let (broker_produce, broker_fetch) = offered(&tansu.bootstrap(), false).await;
    let (produce, fetch) = offered(&kapsule.bootstrap(), true).await;
    assert_eq!(produce, broker_produce, "Produce range capped");
    assert_eq!(fetch, broker_fetch, "Fetch range capped");
    assert!(
        produce >= Some(9) && fetch >= Some(12),
        "{produce:?} {fetch:?}"
    );

    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    let v9: ProduceRequest = produce_request(&t, None, 5000, record_batch(&[(b"k", b"SECRET-V9")]));
    c.send(ApiKey::Produce, 9, 2, &v9).await.unwrap();
    let (_, r) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 9, WAIT)
        .await
        .unwrap();
    assert_eq!(partition_errors(&r)[0].0, 0, "{r:?}");
    assert_eq!(end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(), 1);

    // At rest: ciphertext.
    let mut direct = RawConnection::connect(&tansu.bootstrap()).await.unwrap();
    direct
        .send(ApiKey::Fetch, 11, 1, &fetch_request(&t, None))
        .await
        .unwrap();
    let (_, f) = direct
        .recv_as::<FetchResponse>(ApiKey::Fetch, 11, WAIT)
        .await
        .unwrap();
    let (code, stored) = fetched_values(&f);
    assert_eq!((code, stored.len()), (0, 1), "{f:?}");
    assert!(
        !stored[0].windows(6).any(|w| w == b"SECRET"),
        "plaintext at rest"
    );

    // Through Kapsule with Fetch v12: decoded despite tansu's stray tag, decrypted.
    c.send(ApiKey::Fetch, 12, 3, &fetch_request(&t, None))
        .await
        .unwrap();
    let (_, f) = c
        .recv_as::<FetchResponse>(ApiKey::Fetch, 12, WAIT)
        .await
        .unwrap();
    let (code, values) = fetched_values(&f);
    assert_eq!(code, 0, "{f:?}");
    assert_eq!(values, vec![b"SECRET-V9".to_vec()]);

    // FetchSnapshot returns raw log bytes Kapsule does not transform: the connection is closed.
    c.send(
        ApiKey::FetchSnapshot,
        1,
        4,
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

/// A TCP relay to `target` that delivers every byte coming back from it `delay` late: a slow
/// link to the KMS, for fault injection. Runs until the test's runtime ends.
async fn slow_relay(target: String, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                };
                let read_down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0
                            || tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                        {
                            break;
                        }
                    }
                };
                let write_down = async {
                    while let Some((due, chunk)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if cw.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, read_down, write_down);
            });
        }
    });
    addr
}

/// Four encrypted topics whose first DEK comes from an OpenBao behind a slow link (1.5 s per
/// answer) and one plain topic, produced to on one pipelined connection: the requests are
/// prepared concurrently, so the plain topic's answer (which Kafka ordering puts after the four)
/// comes after about one KMS delay, not four; responses stay in request order.
#[tokio::test(flavor = "multi_thread")]
async fn slow_kms_on_some_topics_does_not_queue_the_connection_behind_it() {
    const DELAY: Duration = Duration::from_millis(1500);
    let bao = OpenBao::start().unwrap();
    bao.create_key("slow-kek").unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let relay = slow_relay(bao.address().replace("http://", ""), DELAY).await;
    let (kms, _token) = vault_kms_yaml(&bao, 10_000, 1).unwrap();
    let kms = kms.replace(&bao.address(), &format!("http://{relay}"));
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"slow-\"}\n      key_id: slow-kek\n";
    let kapsule = start_kapsule(&tansu, &kms, policy).await;
    let mut topics = Vec::new();
    for _ in 0..4 {
        topics.push(topic(&tansu, "slow-").await);
    }
    topics.push(topic(&tansu, "plain-").await);

    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    let start = Instant::now();
    for (i, t) in topics.iter().enumerate() {
        let batch = record_batch(&[(b"k", format!("value-{i}").as_bytes())]);
        c.send(
            ApiKey::Produce,
            8,
            i as i32 + 1,
            &produce_request(t, None, 30_000, batch),
        )
        .await
        .unwrap();
    }
    let mut answered = Vec::new();
    for _ in &topics {
        let (corr, r) = c
            .recv_as::<ProduceResponse>(ApiKey::Produce, 8, Duration::from_secs(60))
            .await
            .unwrap();
        answered.push((corr, start.elapsed()));
        assert_eq!(partition_errors(&r)[0].0, 0, "request {corr}: {r:?}");
    }
    let order: Vec<i32> = answered.iter().map(|(c, _)| *c).collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5], "responses out of request order");
    let plain_after = answered[4].1;
    eprintln!("answers after {answered:?}");
    assert!(
        plain_after >= DELAY,
        "the plain topic was answered before the slow ones ({plain_after:?}): is the KMS really slow?"
    );
    assert!(
        plain_after < DELAY * 2 + Duration::from_millis(500),
        "the plain topic waited {plain_after:?} behind 4 slow KMS calls of {DELAY:?}: requests were prepared one after another"
    );
    for t in &topics {
        assert_eq!(end_offset(&tansu.bootstrap(), t, WAIT).await.unwrap(), 1);
    }
}

/// While the KMS (OpenBao, AWS KMS, Cloud KMS) is frozen, Produce requests to a topic that needs a new DEK
/// are answered REQUEST_TIMED_OUT within their own `timeout_ms` (the KMS retries are cut to it),
/// and when the KMS comes back none of them is written late; a request sent afterwards is written.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn produce_past_its_timeout_during_a_kms_outage_is_never_written(
    #[values("vault", "aws", "gcp")] backend: &str,
) {
    const TIMEOUT_MS: i32 = 2_000;
    let kms = KmsServer::start(backend).await.unwrap();
    kms.create_key("late-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    // Four attempts of 2 s each: far longer than the client waits.
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"late-\"}\n      key_id: late-kek\n";
    let kapsule = start_kapsule_with(&kms, &tansu, policy).await;
    let t = topic(&tansu, "late-").await;

    kms.pause().unwrap();
    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    let start = Instant::now();
    for i in 1..=3 {
        let batch = record_batch(&[(b"k", format!("late-{i}").as_bytes())]);
        c.send(
            ApiKey::Produce,
            8,
            i,
            &produce_request(&t, None, TIMEOUT_MS, batch),
        )
        .await
        .unwrap();
    }
    for i in 1..=3 {
        let (corr, r) = c
            .recv_as::<ProduceResponse>(ApiKey::Produce, 8, Duration::from_secs(30))
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(corr, i);
        let errors = partition_errors(&r);
        assert_eq!(errors[0].0, REQUEST_TIMED_OUT, "request {i}: {r:?}");
        // Cut by its own deadline ("... not written"), or — when it shared the DEK call started by
        // an earlier request whose deadline came first (seen when the requests reach Kapsule a
        // few hundred ms apart on a loaded machine) — refused with that call's transient KMS error.
        // Either way nothing was forwarded; the broker check below proves it.
        let message = &errors[0].1;
        assert!(
            message.contains("not written")
                || (message.contains("KMS transient error") && message.contains("retry later")),
            "request {i}: {message}"
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS as u64),
            "request {i} answered after {took:?}, past its timeout of {TIMEOUT_MS} ms"
        );
    }
    // The KMS answers again; whatever Kapsule still had queued must not be written now.
    kms.resume().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(),
        0,
        "records the client was told had failed were written after their timeout"
    );

    // Recovery: the same connection writes again.
    let batch = record_batch(&[(b"k", b"after")]);
    c.send(
        ApiKey::Produce,
        8,
        4,
        &produce_request(&t, None, 20_000, batch),
    )
    .await
    .unwrap();
    let (_, r) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 8, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(partition_errors(&r)[0].0, 0, "{r:?}");
    assert_eq!(end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(), 1);
}

/// The same outage seen by a real client: confluent-kafka (librdkafka) with a 3 s delivery and
/// request timeout and no retries, one record per request. Every record it reports failed is
/// missing from the broker after the KMS is back, and none is reported delivered.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn confluent_producer_records_reported_failed_are_not_written_late(
    #[values("vault", "aws", "gcp")] backend: &str,
) {
    use kapsule_integration::records::write_records_file;
    use kapsule_integration::{run_python, TestRecord};

    let kms = KmsServer::start(backend).await.unwrap();
    kms.create_key("late-ck-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let policy =
        "policy:\n  rules:\n    - topics: {prefix: \"lateck-\"}\n      key_id: late-ck-kek\n";
    let kapsule = start_kapsule_with(&kms, &tansu, policy).await;
    let t = topic(&tansu, "lateck-").await;
    let records = TestRecord::varied("late-ck", 10);
    let file = write_records_file(&records).unwrap();

    kms.pause().unwrap();
    let start = Instant::now();
    let args: Vec<String> = [
        "--bootstrap",
        &kapsule.bootstrap(),
        "--topic",
        &t,
        "--input",
        &file.path().display().to_string(),
        "--timeout",
        "3",
        "--config",
        "request.timeout.ms=3000",
        "--config",
        "retries=0",
        "--config",
        "batch.num.messages=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_python("ck_produce_report.py", &args, Duration::from_secs(120))
        .await
        .expect("ck_produce_report.py")
        .json;
    let took = start.elapsed();
    kms.resume().unwrap();
    assert_eq!(out["delivered"], 0, "delivered during the outage: {out}");
    assert_eq!(out["failed"], records.len(), "{out}");
    assert!(
        took < Duration::from_secs(15),
        "the client waited {took:?} for its failures"
    );
    // Whatever Kapsule still had queued when the KMS came back must not be written now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        end_offset(&tansu.bootstrap(), &t, WAIT).await.unwrap(),
        0,
        "records confluent-kafka reported failed were written after their timeout: {out}"
    );
}
