//! Security features end to end on Apache Kafka (issue 16 item 4, issue 17 item 1): Kapsule in
//! front of a real broker's SASL_PLAINTEXT, SSL and MTLS listeners, with real clients.
//!
//! - SASL PLAIN, SCRAM-SHA-256/512 and OAUTHBEARER (Kafka's unsecured JWS validator): the
//!   principal Kapsule learns drives `reveal_to` (alice reads plaintext, bob the stored
//!   ciphertext), records are ciphertext at rest, a wrong credential is an authentication error
//!   and Kapsule stays up.
//! - KIP-368 re-authentication (`connections.max.reauth.ms` 4 s for PLAIN and SCRAM-SHA-512): a
//!   long-lived client keeps its connection; a switch to another principal ends the connection.
//! - Kapsule's upstream TLS to the broker's own TLS listener, and mTLS to its MTLS listener.
//! - The broker's ACLs (StandardAuthorizer) still apply to clients behind Kapsule.
//! - An OAUTHBEARER message with a forged `auth=` first and the client's own token last is
//!   refused by Kapsule (Kafka would authenticate it under the last one).
//!
//! Every test shares one Kafka node of this module ([`broker`]: authorizer on, with
//! `allow.everyone.if.no.acl.found`, so only topics given ACLs are restricted) and isolates itself
//! by unique topic names; each test starts its own Kapsule.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceResponse};
use rstest::rstest;
use tokio::sync::OnceCell;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::probe::{self, RawConnection};
use kapsule_integration::records::{write_records_file, ConsumedRecord};
use kapsule_integration::sasl::{
    oauthbearer_message, plain_message, raw_authenticate, raw_handshake, unsecured_jwt,
};
use kapsule_integration::tls::{Issued, KeyKind, Pki, RawKapsule};
use kapsule_integration::{
    run_python, unique_name, AclOperation, KafkaCluster, KafkaOptions, Listener, TestRecord,
};

use crate::apache_kafka::{consume, share_consume, RefClient};
use crate::common::{args, assert_records_match, ck_consume, ck_produce, CLIENT_TIMEOUT};
use crate::reveal::refs;
use crate::sasl::marked;
use crate::tls::upstream_tls;

/// Session lifetime the broker grants PLAIN and SCRAM-SHA-512 logins (KIP-368).
const REAUTH_MS: u64 = 4_000;

/// The node every test of this module shares: StandardAuthorizer with `User:admin` as super user
/// and `allow.everyone.if.no.acl.found` (a topic without ACLs is open to every principal), and
/// re-authentication every [`REAUTH_MS`] for PLAIN and SCRAM-SHA-512 on the SASL listener.
async fn broker() -> &'static KafkaCluster {
    static BROKER: OnceCell<KafkaCluster> = OnceCell::const_new();
    let reauth = REAUTH_MS.to_string();
    BROKER
        .get_or_try_init(|| {
            KafkaCluster::start(
                KafkaOptions::single()
                    .with_authorizer(&["User:admin"])
                    .with_property("allow.everyone.if.no.acl.found", "true")
                    .with_property(
                        "listener.name.sasl_plaintext.plain.connections.max.reauth.ms",
                        &reauth,
                    )
                    .with_property(
                        "listener.name.sasl_plaintext.scram-sha-512.connections.max.reauth.ms",
                        &reauth,
                    ),
            )
        })
        .await
        .expect("the security module's Kafka node")
}

/// A SASL mechanism the broker's SASL listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Scram256,
    Scram512,
    OauthBearer,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram256 => "SCRAM-SHA-256",
            Mechanism::Scram512 => "SCRAM-SHA-512",
            Mechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    /// librdkafka (`--config`) settings to log in as `user` with `password`.
    fn ck_config(self, user: &str, password: &str) -> Vec<String> {
        let mut c = vec![
            "security.protocol=SASL_PLAINTEXT".to_owned(),
            format!("sasl.mechanism={}", self.name()),
        ];
        match self {
            Mechanism::OauthBearer => c.extend([
                format!("sasl.oauthbearer.config=principal={user}"),
                "enable.sasl.oauthbearer.unsecure.jwt=true".to_owned(),
            ]),
            _ => c.extend([
                format!("sasl.username={user}"),
                format!("sasl.password={password}"),
            ]),
        }
        c.into_iter().flat_map(|c| ["--config".into(), c]).collect()
    }

    /// Java client (`--config`) settings to log in as `user` with `password`.
    fn java_config(self, user: &str, password: &str) -> Vec<String> {
        let jaas = match self {
            Mechanism::Plain => format!(
                "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{user}\" password=\"{password}\";"
            ),
            Mechanism::Scram256 | Mechanism::Scram512 => format!(
                "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";"
            ),
            Mechanism::OauthBearer => format!(
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"{user}\";"
            ),
        };
        [
            "security.protocol=SASL_PLAINTEXT".to_owned(),
            format!("sasl.mechanism={}", self.name()),
            format!("sasl.jaas.config={jaas}"),
        ]
        .into_iter()
        .flat_map(|c| ["--config".into(), c])
        .collect()
    }
}

/// The password of a rig user (see `KafkaUser::new`).
fn password(user: &str) -> String {
    format!("{user}-secret")
}

/// Kapsule in front of `kafka`'s SASL listener (`proxy.authentication: required`), encrypting
/// topics `prefix*` whole under a KEK per topic; alice authenticated with `reveal_mechanism`
/// reads them in clear, everyone else gets the stored ciphertext.
async fn sasl_kapsule(
    kafka: &KafkaCluster,
    prefix: &str,
    reveal_mechanism: &str,
) -> (RawKapsule, LocalKms) {
    let kms = LocalKms::new().unwrap();
    let yaml = format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\n  authentication: required\nadmin:\n  listen: \"{{admin}}\"\nrecords: reencode\n{}\
policy:\n  rules:\n    - topics: {{prefix: \"{prefix}\"}}\n      key_id: \"kek-$${{topic}}\"\n      value: whole\n      reveal_to:\n        - {{principal: alice, mechanism: {reveal_mechanism}, reveal: all}}\n      reveal_default: ciphertext\n",
        kafka.bootstrap_for(Listener::Sasl),
        kms.yaml()
    );
    let kapsule = RawKapsule::spawn_with_log(&yaml, "info").expect("spawn kapsule");
    let kapsule = RawKapsule::wait_ready(kapsule).await.expect("kapsule");
    (kapsule, kms)
}

/// Reads `count` records of `topic` straight from the broker's PLAINTEXT listener (bypassing
/// Kapsule): what is stored.
async fn at_rest(kafka: &KafkaCluster, topic: &str, count: usize) -> Vec<ConsumedRecord> {
    ck_consume(&kafka.bootstrap(), topic, count, &[]).await
}

/// Runs `ck_produce.py` expecting it to fail; returns its error text.
async fn ck_produce_failing(bootstrap: &str, topic: &str, extra: &[String]) -> String {
    let file = write_records_file(&[TestRecord::kv("k", "v")]).expect("records file");
    let mut a = args(&[
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--timeout",
        "10",
    ]);
    a.extend(args(&["--input", &file.path().display().to_string()]));
    a.extend(extra.iter().cloned());
    let err = run_python("ck_produce.py", &a, CLIENT_TIMEOUT)
        .await
        .expect_err("the producer must fail");
    format!("{err:#}")
}

/// Asserts the log shows `user` authenticated by `mechanism` (Kapsule learned the principal).
async fn assert_learned(kapsule: &RawKapsule, user: &str, mechanism: &str) {
    kapsule
        .wait_log(
            &format!("principal={user} mechanism=\"{mechanism}\""),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
}

/// Per mechanism, with real clients: a wrong credential is an authentication error and Kapsule
/// stays up; alice (allowed by `reveal_to` for this mechanism) produces with confluent-kafka and
/// reads her records back in clear with the Java client; bob reads exactly the stored
/// ciphertext with confluent-kafka; the broker holds only ciphertext. With PLAIN, their Java share
/// consumers (KIP-932) get the same: alice plaintext, bob the stored ciphertext.
#[rstest]
#[case::plain(Mechanism::Plain)]
#[case::scram_sha_256(Mechanism::Scram256)]
#[case::scram_sha_512(Mechanism::Scram512)]
#[case::oauthbearer(Mechanism::OauthBearer)]
#[tokio::test(flavor = "multi_thread")]
async fn sasl_principal_learned_on_kafka_drives_reveal_to(#[case] mechanism: Mechanism) {
    let kafka = broker().await;
    let prefix = format!("sec-{}-", mechanism.name().to_ascii_lowercase());
    let (mut kapsule, _kms) = sasl_kapsule(kafka, &prefix, mechanism.name()).await;
    let topic = unique_name(&format!("{prefix}t"));
    kafka.create_topic(&topic, 1).await.unwrap();

    if mechanism == Mechanism::OauthBearer {
        // Kafka's unsecured validator refuses an expired token.
        let mut c = RawConnection::connect(&kapsule.listen).await.unwrap();
        assert_eq!(raw_handshake(&mut c, "OAUTHBEARER", 1).await.unwrap(), 0);
        let expired = unsecured_jwt("alice", -600);
        let refused = oauth_login_fails(&mut c, &expired).await;
        assert!(refused, "an expired token must not authenticate");
    } else {
        let wrong = mechanism.ck_config("alice", "not-the-password");
        let text = ck_produce_failing(&kapsule.listen, &topic, &wrong)
            .await
            .to_lowercase();
        assert!(text.contains("authentication failed"), "{text}");
        kapsule
            .wait_log("broker refused SASL authentication", Duration::from_secs(5))
            .await
            .unwrap();
    }
    kapsule.process.ensure_running().expect("kapsule is up");

    let (records, markers) = marked(&format!("SEC{}", mechanism.name()), 10);
    let alice = mechanism.ck_config("alice", &password("alice"));
    ck_produce(&kapsule.listen, &topic, &records, &refs(&alice)).await;
    let java_alice = mechanism.java_config("alice", &password("alice"));
    let seen = consume(
        RefClient::Java,
        &kapsule.listen,
        &topic,
        records.len(),
        None,
        &refs(&java_alice),
    )
    .await;
    assert_records_match(&records, &seen);

    let bob = mechanism.ck_config("bob", &password("bob"));
    let bob_sees = ck_consume(&kapsule.listen, &topic, records.len(), &refs(&bob)).await;
    let stored = at_rest(kafka, &topic, records.len()).await;
    let stored_records: Vec<TestRecord> = stored.iter().map(|c| c.record.clone()).collect();
    assert_no_plaintext(&stored_records, &markers);
    assert_eq!(bob_sees.len(), stored.len());
    for (b, s) in bob_sees.iter().zip(&stored) {
        assert!(
            s.record.header("kapsule.enc").is_some(),
            "stored records are encrypted"
        );
        assert_eq!(
            (b.offset, &b.record.value, &b.record.headers),
            (s.offset, &s.record.value, &s.record.headers),
            "bob gets the stored ciphertext"
        );
    }

    if mechanism == Mechanism::Plain {
        // Share consumers (KIP-932) get what Fetch consumers get: alice her records in clear,
        // bob the stored ciphertext. One mechanism is enough: the principal is the same.
        let seen = share_consume(&kapsule.listen, &topic, records.len(), &refs(&java_alice)).await;
        assert_records_match(&records, &seen);
        let java_bob = mechanism.java_config("bob", &password("bob"));
        let bob_shared =
            share_consume(&kapsule.listen, &topic, records.len(), &refs(&java_bob)).await;
        let mut bob_shared: Vec<_> = bob_shared
            .iter()
            .map(|c| (c.offset, &c.record.value))
            .collect();
        bob_shared.sort();
        let stored: Vec<_> = stored.iter().map(|c| (c.offset, &c.record.value)).collect();
        assert_eq!(
            bob_shared, stored,
            "bob's share consumer gets the stored ciphertext"
        );
    }

    assert_learned(&kapsule, "alice", mechanism.name()).await;
    assert_learned(&kapsule, "bob", mechanism.name()).await;
    let logs = kapsule.logs();
    for secret in [
        "not-the-password",
        "alice-secret",
        "bob-secret",
        "-secret\"",
    ] {
        assert!(!logs.contains(secret), "a credential in Kapsule's log");
    }
    assert!(
        !logs.contains("ERROR") && !logs.contains("panicked"),
        "{logs}"
    );
}

/// Runs an OAUTHBEARER login with `token` on `c` (after the handshake) and tells whether it
/// failed: an error code, an error challenge followed by a failure, or a closed connection.
async fn oauth_login_fails(c: &mut RawConnection, token: &str) -> bool {
    let Some(first) = raw_authenticate(c, oauthbearer_message(&[token]), 2)
        .await
        .unwrap()
    else {
        return true;
    };
    if first.error_code != 0 {
        return true;
    }
    if first.auth_bytes.is_empty() {
        return false;
    }
    // An error challenge: RFC 7628 has the client answer with a lone %x01; the broker then fails.
    match raw_authenticate(c, vec![1], 3).await {
        Ok(Some(last)) => last.error_code != 0,
        Ok(None) | Err(_) => true,
    }
}

/// Peers (client addresses) of Kapsule's `client authenticated` log lines for `user` by
/// `mechanism`, with how often each authenticated.
fn authentications_per_peer(logs: &str, user: &str, mechanism: &str) -> HashMap<String, usize> {
    let who = format!("principal={user} mechanism=\"{mechanism}\"");
    let mut per_peer = HashMap::new();
    for line in logs.lines() {
        if !line.contains("client authenticated") || !line.contains(&who) {
            continue;
        }
        if let Some(peer) = line.split_whitespace().find(|f| f.starts_with("peer=")) {
            *per_peer.entry(peer.to_owned()).or_default() += 1;
        }
    }
    per_peer
}

/// KIP-368 with a real client: confluent-kafka produces as alice (SCRAM-SHA-512) through Kapsule
/// for 14 s without retries while the broker makes it re-authenticate every 4 s. Every record
/// is delivered, and Kapsule saw one connection authenticate as alice several times (the client
/// re-authenticated on its connection instead of reconnecting).
#[tokio::test(flavor = "multi_thread")]
async fn reauthentication_as_the_same_principal_keeps_a_real_client_working() {
    let kafka = broker().await;
    let (kapsule, _kms) = sasl_kapsule(kafka, "reauth-", "SCRAM-SHA-512").await;
    let topic = unique_name("reauth-steady");
    kafka.create_topic(&topic, 1).await.unwrap();
    let mut a = args(&[
        "--bootstrap",
        &kapsule.listen,
        "--topic",
        &topic,
        "--seconds",
        "14",
        "--rate",
        "20",
        "--prefix",
        "REAUTHMARK",
    ]);
    a.extend(Mechanism::Scram512.ck_config("alice", &password("alice")));
    let out = run_python("ck_steady.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_steady.py");
    let sent = out.json["sent"].as_u64().unwrap();
    assert!(sent >= 200, "{}", out.json);
    assert_eq!(out.json["failed"], 0, "{}", out.json);
    assert_eq!(out.json["delivered"].as_u64(), Some(sent), "{}", out.json);

    let logs = kapsule.logs();
    let per_peer = authentications_per_peer(&logs, "alice", "SCRAM-SHA-512");
    let most = per_peer.values().copied().max().unwrap_or(0);
    assert!(
        most >= 3,
        "expected one connection to authenticate as alice at least 3 times in 14 s (re-authentication every 4 s): {per_peer:?}\n{logs}"
    );
    assert!(!logs.contains("ERROR") && !logs.contains("WARN"), "{logs}");
    let stored = at_rest(kafka, &topic, sent as usize).await;
    let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
    assert_no_plaintext(&stored, &[b"REAUTHMARK".to_vec()]);
}

/// Produces one record with value `value` on `c` (partition 0 of `topic`, Produce v8) and returns
/// the partition error codes, or `None` when the connection closed instead of answering.
async fn raw_produce(
    c: &mut RawConnection,
    topic: &str,
    value: &[u8],
    correlation_id: i32,
) -> Option<Vec<i16>> {
    let batch = probe::record_batch(&[(b"k", value)]);
    let produce = probe::produce_request(topic, None, 5_000, batch);
    c.send(ApiKey::Produce, 8, correlation_id, &produce)
        .await
        .ok()?;
    let frame = c.recv(Duration::from_secs(10)).await.ok()??;
    let (_, resp) =
        kapsule::kafka::frame::decode_response::<ProduceResponse>(ApiKey::Produce, 8, frame)
            .unwrap();
    Some(
        probe::partition_errors(&resp)
            .into_iter()
            .map(|(code, _)| code)
            .collect(),
    )
}

/// The record values of partition 0 of `topic` read on `c` (Fetch v12 from offset 0).
async fn raw_fetch(c: &mut RawConnection, topic: &str, correlation_id: i32) -> Vec<Vec<u8>> {
    c.send(
        ApiKey::Fetch,
        12,
        correlation_id,
        &probe::fetch_request(topic, None),
    )
    .await
    .unwrap();
    let (_, resp) = c
        .recv_as::<FetchResponse>(ApiKey::Fetch, 12, Duration::from_secs(10))
        .await
        .unwrap();
    let (code, values) = probe::fetched_values(&resp);
    assert_eq!(code, 0, "fetch error");
    values
}

/// KIP-368 on one raw connection through Kapsule (PLAIN, 4 s sessions): alice re-authenticates
/// as alice and keeps producing and reading in clear (her `reveal_to` grant still applies); a
/// re-authentication as bob does not succeed and the connection ends (Apache Kafka itself
/// refuses a principal change, and Kapsule would close the connection if a broker did not), and
/// Kapsule never records bob as the connection's principal.
#[tokio::test(flavor = "multi_thread")]
async fn reauthentication_keeps_the_principal_and_a_switch_ends_the_connection() {
    let kafka = broker().await;
    let (kapsule, _kms) = sasl_kapsule(kafka, "reauthraw-", "PLAIN").await;
    let topic = unique_name("reauthraw-t");
    kafka.create_topic(&topic, 1).await.unwrap();

    let mut c = RawConnection::connect(&kapsule.listen).await.unwrap();
    assert_eq!(raw_handshake(&mut c, "PLAIN", 1).await.unwrap(), 0);
    let login = raw_authenticate(&mut c, plain_message("alice", &password("alice")), 2)
        .await
        .unwrap()
        .expect("an answer");
    assert_eq!(login.error_code, 0);
    assert!(
        login.session_lifetime_ms > 0 && login.session_lifetime_ms <= REAUTH_MS as i64,
        "the broker's session lifetime reaches the client: {}",
        login.session_lifetime_ms
    );
    assert_eq!(
        raw_produce(&mut c, &topic, b"REAUTHRAW-1", 3).await,
        Some(vec![0])
    );

    // The broker accepts one re-authentication per second at most.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(raw_handshake(&mut c, "PLAIN", 4).await.unwrap(), 0);
    let again = raw_authenticate(&mut c, plain_message("alice", &password("alice")), 5)
        .await
        .unwrap()
        .expect("an answer to the re-authentication");
    assert_eq!(again.error_code, 0, "re-authentication as alice");
    assert_eq!(
        raw_produce(&mut c, &topic, b"REAUTHRAW-2", 6).await,
        Some(vec![0])
    );
    assert_eq!(
        raw_fetch(&mut c, &topic, 7).await,
        vec![b"REAUTHRAW-1".to_vec(), b"REAUTHRAW-2".to_vec()],
        "alice still reads in clear after re-authenticating"
    );
    let per_peer = authentications_per_peer(&kapsule.logs(), "alice", "PLAIN");
    assert_eq!(per_peer.values().copied().max(), Some(2), "{per_peer:?}");

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(raw_handshake(&mut c, "PLAIN", 8).await.unwrap(), 0);
    let switch = raw_authenticate(&mut c, plain_message("bob", &password("bob")), 9)
        .await
        .unwrap();
    if let Some(answer) = &switch {
        assert_ne!(answer.error_code, 0, "re-authentication as bob must fail");
    }
    assert_eq!(
        raw_produce(&mut c, &topic, b"REAUTHRAW-3", 10).await,
        None,
        "the connection must end after a principal switch"
    );
    kapsule
        .wait_log("user=bob", Duration::from_secs(5))
        .await
        .unwrap();
    let logs = kapsule.logs();
    assert!(
        authentications_per_peer(&logs, "bob", "PLAIN").is_empty(),
        "Kapsule took bob as a principal:\n{logs}"
    );
    let stored = at_rest(kafka, &topic, 2).await;
    assert_eq!(stored.len(), 2);
    let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
    assert_no_plaintext(&stored, &[b"REAUTHRAW".to_vec()]);
}

/// Kapsule in front of `upstream` over TLS (trusting `ca`, presenting `client` when given),
/// encrypting `tls-*` topics whole.
fn tls_kapsule_yaml(upstream: &str, ca: &Path, client: Option<&Issued>, kms: &LocalKms) -> String {
    let tls = upstream_tls(ca, client);
    format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{upstream}\"\n{tls}admin:\n  listen: \"{{admin}}\"\nrecords: reencode\n{}\
policy:\n  rules:\n    - topics: {{prefix: \"tls-\"}}\n      key_id: kek-tls\n      value: whole\n",
        kms.yaml()
    )
}

/// Kapsule's upstream TLS against the broker's own listeners, no stunnel: to the SSL listener
/// (server verified against the rig's CA) and to the MTLS listener with a client certificate,
/// records round-trip through Kapsule and are ciphertext at rest; a CA that did not issue the
/// broker's certificate, and mTLS without a client certificate, are refused with a log line
/// that says why and which setting to check.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_tls_and_mtls_listeners_behind_kapsule_and_a_wrong_ca_is_refused() {
    let kafka = broker().await;
    let client_cert = kafka
        .pki()
        .issue("kapsule-upstream", KeyKind::EcPkcs8, false, false)
        .unwrap();
    for (listener, client) in [(Listener::Ssl, None), (Listener::Mtls, Some(&client_cert))] {
        let kms = LocalKms::new().unwrap();
        let yaml = tls_kapsule_yaml(
            &kafka.bootstrap_for(listener),
            &kafka.ca_cert(),
            client,
            &kms,
        );
        let kapsule = RawKapsule::start(&yaml).await.expect("kapsule");
        let topic = unique_name(&format!("tls-{}", listener.name().to_ascii_lowercase()));
        kafka.create_topic(&topic, 1).await.unwrap();
        let (records, markers) = marked(&format!("TLS{}", listener.name()), 10);
        ck_produce(&kapsule.listen, &topic, &records, &[]).await;
        let seen = ck_consume(&kapsule.listen, &topic, records.len(), &[]).await;
        assert_records_match(&records, &seen);
        let stored = at_rest(kafka, &topic, records.len()).await;
        let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
        assert_no_plaintext(&stored, &markers);
        let logs = kapsule.logs();
        assert!(!logs.contains("ERROR"), "{listener:?}: {logs}");
    }

    let other = Pki::new("not-kafkas").unwrap();
    let kms = LocalKms::new().unwrap();
    let wrong_ca = tls_kapsule_yaml(
        &kafka.bootstrap_for(Listener::Ssl),
        &other.ca_cert(),
        None,
        &kms,
    );
    let kapsule = RawKapsule::start(&wrong_ca).await.expect("kapsule");
    assert!(probe::api_versions(&kapsule.listen, Duration::from_secs(5))
        .await
        .is_err());
    kapsule
        .wait_log(
            "the broker's certificate is not issued by a trusted CA",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(kapsule.logs().contains("proxy.upstream_tls.ca_file"));
    drop(kapsule);

    let no_client_cert = tls_kapsule_yaml(
        &kafka.bootstrap_for(Listener::Mtls),
        &kafka.ca_cert(),
        None,
        &kms,
    );
    let kapsule = RawKapsule::start(&no_client_cert).await.expect("kapsule");
    assert!(probe::api_versions(&kapsule.listen, Duration::from_secs(5))
        .await
        .is_err());
    // TLS 1.3: the broker checks the client certificate after Kapsule's side of the handshake
    // is done, and refuses it with an alert on the first read.
    kapsule
        .wait_log(
            "the broker refused Kapsule's TLS client certificate",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// The broker's ACLs still apply behind Kapsule: on a topic where alice may WRITE and bob may
/// only DESCRIBE, bob's produce through Kapsule fails with TOPIC_AUTHORIZATION_FAILED and
/// nothing is stored; alice's succeeds and reads back in clear.
#[tokio::test(flavor = "multi_thread")]
async fn broker_acls_apply_to_clients_behind_kapsule() {
    let kafka = broker().await;
    let (kapsule, kms) = sasl_kapsule(kafka, "acl-", "SCRAM-SHA-256").await;
    let topic = unique_name("acl-t");
    kafka.create_topic(&topic, 1).await.unwrap();
    kafka
        .allow(
            "User:alice",
            &topic,
            &[
                AclOperation::Write,
                AclOperation::Read,
                AclOperation::Describe,
            ],
        )
        .await
        .unwrap();
    kafka
        .allow("User:bob", &topic, &[AclOperation::Describe])
        .await
        .unwrap();

    let (records, markers) = marked("ACLMARK", 5);
    let file = write_records_file(&records).unwrap();
    let mut a = args(&["--bootstrap", &kapsule.listen, "--topic", &topic]);
    a.extend(args(&[
        "--input",
        &file.path().display().to_string(),
        "--timeout",
        "15",
    ]));
    a.extend(Mechanism::Scram256.ck_config("bob", &password("bob")));
    let out = run_python("ck_produce_report.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_produce_report.py")
        .json;
    assert_eq!(out["delivered"], 0, "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), records.len(), "{out}");
    for r in results {
        assert_eq!(r["name"], "TOPIC_AUTHORIZATION_FAILED", "{out}");
    }
    assert_eq!(
        probe::end_offset(&kafka.bootstrap(), &topic, Duration::from_secs(5))
            .await
            .unwrap(),
        0,
        "bob's records reached the log"
    );
    // Kapsule encrypts before the broker decides, so it cannot know that bob will be refused;
    // report whether it created the topic's KEK for him.
    let keys = std::fs::read_to_string(kms.key_file()).unwrap_or_default();
    eprintln!(
        "KEK for {topic} after bob's refused produce: {}",
        if keys.contains(&format!("kek-{topic}")) {
            "created"
        } else {
            "not created"
        }
    );

    let alice = Mechanism::Scram256.ck_config("alice", &password("alice"));
    ck_produce(&kapsule.listen, &topic, &records, &refs(&alice)).await;
    let seen = ck_consume(&kapsule.listen, &topic, records.len(), &refs(&alice)).await;
    assert_records_match(&records, &seen);
    let stored = at_rest(kafka, &topic, records.len()).await;
    let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
    assert_no_plaintext(&stored, &markers);
    assert!(!kapsule.logs().contains("panicked"), "{}", kapsule.logs());
}

/// Issue 17 item 1 against Kafka's real OAUTHBEARER listener. Kafka reads the client-first
/// message into a map, so of two `auth=` keys the last wins: straight to the broker, a message
/// with a forged token naming alice first and bob's own token last authenticates as bob.
/// Through Kapsule the same message is refused (repeated key) before it reaches the broker, the
/// connection closes without an answer, and alice's `reveal_to` grant never applies to it; bob
/// with his own token alone reads ciphertext while alice reads in clear.
#[tokio::test(flavor = "multi_thread")]
async fn oauthbearer_forged_first_auth_gets_no_grants_on_kafka() {
    let kafka = broker().await;
    let (kapsule, _kms) = sasl_kapsule(kafka, "spoof-", "OAUTHBEARER").await;
    let topic = unique_name("spoof-t");
    kafka.create_topic(&topic, 1).await.unwrap();
    let forged = unsecured_jwt("alice", 3600);
    let own = unsecured_jwt("bob", 3600);
    let spoof = oauthbearer_message(&[&forged, &own]);

    let mut direct = RawConnection::connect(&kafka.bootstrap_for(Listener::Sasl))
        .await
        .unwrap();
    assert_eq!(
        raw_handshake(&mut direct, "OAUTHBEARER", 1).await.unwrap(),
        0
    );
    let answer = raw_authenticate(&mut direct, spoof.clone(), 2)
        .await
        .unwrap()
        .expect("the broker answers");
    assert!(
        answer.error_code == 0 && answer.auth_bytes.is_empty(),
        "Kafka accepts a repeated auth= key (the threat this test guards against)"
    );
    drop(direct);

    let mut c = RawConnection::connect(&kapsule.listen).await.unwrap();
    assert_eq!(raw_handshake(&mut c, "OAUTHBEARER", 1).await.unwrap(), 0);
    let through = raw_authenticate(&mut c, spoof, 2).await.unwrap();
    assert!(
        through.is_none(),
        "Kapsule must close the connection instead of relaying the spoof"
    );
    kapsule
        .wait_log(
            "refused a request over authentication",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        authentications_per_peer(&kapsule.logs(), "alice", "OAUTHBEARER").is_empty(),
        "{}",
        kapsule.logs()
    );

    // Each with their own token: alice produces and reads in clear, bob reads ciphertext.
    let mut alice = RawConnection::connect(&kapsule.listen).await.unwrap();
    assert_eq!(
        raw_handshake(&mut alice, "OAUTHBEARER", 1).await.unwrap(),
        0
    );
    assert!(!oauth_login_fails(&mut alice, &forged).await);
    assert_eq!(
        raw_produce(&mut alice, &topic, b"SPOOFMARK", 4).await,
        Some(vec![0])
    );
    assert_eq!(
        raw_fetch(&mut alice, &topic, 5).await,
        vec![b"SPOOFMARK".to_vec()]
    );
    let mut bob = RawConnection::connect(&kapsule.listen).await.unwrap();
    assert_eq!(raw_handshake(&mut bob, "OAUTHBEARER", 1).await.unwrap(), 0);
    assert!(!oauth_login_fails(&mut bob, &own).await);
    let bob_sees = raw_fetch(&mut bob, &topic, 4).await;
    assert_eq!(bob_sees.len(), 1);
    assert!(
        !kapsule_integration::encryption::contains_bytes(&bob_sees[0], b"SPOOFMARK"),
        "bob read alice's plaintext"
    );
    assert_learned(&kapsule, "bob", "OAUTHBEARER").await;
    let mut kapsule = kapsule;
    kapsule.process.ensure_running().expect("kapsule is up");
}
