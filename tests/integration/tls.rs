//! TLS on both sides: real clients (confluent-kafka, kafka-python, openssl s_client) speak TLS
//! to Kapsule, Kapsule speaks TLS (with a client certificate) to stunnel4 in front of tansu.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::tls::{
    create_topic, tansu_advertising, Issued, KeyKind, Pki, RawKapsule, Stunnel,
};
use kapsule_integration::{free_port, probe, run_python, unique_name, TestRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{args, assert_records_match, ck_consume, ck_produce, CLIENT_TIMEOUT};

/// Kapsule's config: `tls`/`upstream_tls` blocks are indented YAML under `proxy:`.
fn config(upstream: &str, tls: &str, upstream_tls: &str, extra: &str) -> String {
    format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{upstream}\"\n{tls}{upstream_tls}admin:\n  listen: \"{{admin}}\"\nrecords: reencode\n{extra}"
    )
}

fn server_tls(cert: &Issued, client_ca: Option<&Path>, require: bool) -> String {
    let mut s = format!(
        "  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    reload_interval_secs: 1\n",
        cert.cert.display(),
        cert.key.display()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!(
            "    client_ca_file: \"{}\"\n    require_client_cert: {require}\n",
            ca.display()
        ));
    }
    s
}

/// The `proxy.upstream_tls` block trusting `ca`, presenting `client` when given.
pub(crate) fn upstream_tls(ca: &Path, client: Option<&Issued>) -> String {
    let mut s = format!("  upstream_tls:\n    ca_file: \"{}\"\n", ca.display());
    if let Some(c) = client {
        s.push_str(&format!(
            "    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    s
}

const RULES: &str = "policy:\n  rules:\n    - topics: {prefix: \"whole-\"}\n      key_id: kek-tls\n      value: whole\n";

/// librdkafka settings for TLS to a listener whose CA is `ca`, optionally with a client cert.
fn ck_ssl(ca: &Path, client: Option<&Issued>) -> Vec<String> {
    let mut v = vec![
        "--config".into(),
        "security.protocol=SSL".into(),
        "--config".into(),
        format!("ssl.ca.location={}", ca.display()),
    ];
    if let Some(c) = client {
        v.extend([
            "--config".into(),
            format!("ssl.certificate.location={}", c.cert.display()),
            "--config".into(),
            format!("ssl.key.location={}", c.key.display()),
        ]);
    }
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A broker reachable only over mutual TLS: tansu advertising a stunnel that requires client
/// certificates from `back`'s CA.
async fn tls_broker(back: &Pki) -> (kapsule_integration::ProcessGuard, String, Stunnel) {
    let port = free_port();
    let (tansu, plain) = tansu_advertising(&format!("127.0.0.1:{port}"))
        .await
        .expect("tansu");
    let cert = back
        .issue("broker", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let stunnel = Stunnel::start(port, &plain, &cert, Some(&back.ca_cert()))
        .await
        .expect("stunnel");
    (tansu, plain, stunnel)
}

/// Clients → TLS → Kapsule → mTLS → stunnel → tansu: confluent-kafka and kafka-python round trip,
/// records are encrypted at rest (read through stunnel, bypassing Kapsule) and decrypted on consume.
#[tokio::test(flavor = "multi_thread")]
async fn tls_both_sides_round_trip_and_records_are_encrypted_at_rest() {
    let front = Pki::new("front").unwrap();
    let back = Pki::new("back").unwrap();
    let (_tansu, plain, stunnel) = tls_broker(&back).await;
    // Kapsule's certificate comes with an intermediate and an RSA PKCS#1 key.
    let kapsule_cert = front
        .issue("kapsule", KeyKind::RsaPkcs1, true, false)
        .unwrap();
    let to_broker = back
        .issue("kapsule-client", KeyKind::EcSec1, false, false)
        .unwrap();
    let kms = LocalKms::new().unwrap();
    let yaml = config(
        &stunnel.addr,
        &server_tls(&kapsule_cert, None, false),
        &upstream_tls(&back.ca_cert(), Some(&to_broker)),
        &format!("{}{RULES}", kms.yaml()),
    );
    let kapsule = RawKapsule::start(&yaml).await.expect("kapsule");

    let topic = unique_name("whole-tls");
    create_topic(&plain, &topic, 1).await.unwrap();
    let mut records = Vec::new();
    let mut markers = Vec::new();
    for i in 0..20 {
        let v = format!("TLSMARK-{i:03}-secret-value");
        markers.push(v.clone().into_bytes());
        records.push(TestRecord::kv(format!("k{i}"), v));
    }
    let ssl = ck_ssl(&front.ca_cert(), None);
    ck_produce(&kapsule.listen, &topic, &records, &refs(&ssl)).await;
    let back_through_kapsule =
        ck_consume(&kapsule.listen, &topic, records.len(), &refs(&ssl)).await;
    assert_records_match(&records, &back_through_kapsule);

    // Straight from the broker (through stunnel, with a broker-side client certificate).
    let direct_ssl = ck_ssl(&back.ca_cert(), Some(&to_broker));
    let stored = ck_consume(&stunnel.addr, &topic, records.len(), &refs(&direct_ssl)).await;
    let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
    assert_eq!(stored.len(), records.len());
    assert_no_plaintext(&stored, &markers);

    // kafka-python over TLS, same path.
    let kp_topic = unique_name("whole-kp-tls");
    create_topic(&plain, &kp_topic, 1).await.unwrap();
    let out = run_python(
        "kp_tls.py",
        &args(&[
            "--bootstrap",
            &kapsule.listen,
            "--topic",
            &kp_topic,
            "--count",
            "10",
            "--cafile",
            &front.ca_cert().display().to_string(),
            "--prefix",
            "KPMARK",
        ]),
        CLIENT_TIMEOUT,
    )
    .await
    .expect("kafka-python over TLS");
    let values: Vec<String> = out.json["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(hex::decode(v.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..10).map(|i| format!("KPMARK-{i}")).collect::<Vec<_>>()
    );
    let stored = ck_consume(&stunnel.addr, &kp_topic, 10, &refs(&direct_ssl)).await;
    let stored: Vec<TestRecord> = stored.into_iter().map(|c| c.record).collect();
    assert_no_plaintext(&stored, &[b"KPMARK".to_vec()]);
    assert!(!kapsule.logs().contains("ERROR"), "{}", kapsule.logs());
}

/// Runs `openssl s_client` against `addr` and returns once it exits (stdin closed).
async fn s_client(addr: &str, ca: &Path, client: Option<&Issued>) -> String {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        "-verify_return_error",
        "-CAfile",
    ])
    .arg(ca);
    if let Some(c) = client {
        cmd.arg("-cert").arg(&c.cert).arg("-key").arg(&c.key);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("s_client finished")
        .expect("s_client ran");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Plaintext clients, missing, untrusted and expired client certificates, and a client that does
/// not trust Kapsule: each is one clear log line and a closed connection; good clients still work.
#[tokio::test(flavor = "multi_thread")]
async fn tls_bad_clients_are_logged_and_closed_while_good_ones_work() {
    let front = Pki::new("mtls").unwrap();
    let rogue = Pki::new("rogue").unwrap();
    let back = Pki::new("back2").unwrap();
    let (_tansu, plain, stunnel) = tls_broker(&back).await;
    let to_broker = back.issue("k", KeyKind::EcPkcs8, false, false).unwrap();
    let server = front
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let yaml = config(
        &stunnel.addr,
        &server_tls(&server, Some(&front.ca_cert()), true),
        &upstream_tls(&back.ca_cert(), Some(&to_broker)),
        "",
    );
    let mut kapsule = RawKapsule::start(&yaml).await.expect("kapsule");
    let good = front
        .issue("good-client", KeyKind::EcSec1, false, false)
        .unwrap();
    let expired = front
        .issue("old-client", KeyKind::EcPkcs8, false, true)
        .unwrap();
    let untrusted = rogue
        .issue("rogue-client", KeyKind::EcPkcs8, false, false)
        .unwrap();

    // Plaintext Kafka on the TLS port.
    assert!(probe::api_versions(&kapsule.listen, Duration::from_secs(5))
        .await
        .is_err());
    kapsule
        .wait_log("sent plaintext to a TLS listener", Duration::from_secs(10))
        .await
        .unwrap();
    s_client(&kapsule.listen, &front.ca_cert(), None).await;
    kapsule
        .wait_log("presented no certificate", Duration::from_secs(10))
        .await
        .unwrap();
    s_client(&kapsule.listen, &front.ca_cert(), Some(&untrusted)).await;
    kapsule
        .wait_log("not issued by a trusted CA", Duration::from_secs(10))
        .await
        .unwrap();
    s_client(&kapsule.listen, &front.ca_cert(), Some(&expired)).await;
    kapsule
        .wait_log("certificate has expired", Duration::from_secs(10))
        .await
        .unwrap();
    // A client that trusts another CA aborts the handshake itself.
    s_client(&kapsule.listen, &rogue.ca_cert(), Some(&good)).await;
    kapsule
        .wait_log("aborted the handshake with alert", Duration::from_secs(10))
        .await
        .unwrap();
    kapsule.process.ensure_running().expect("kapsule survived");
    assert!(!kapsule.logs().contains("panicked"), "{}", kapsule.logs());

    // A well-behaved mTLS client still gets through.
    let topic = unique_name("mtls");
    create_topic(&plain, &topic, 1).await.unwrap();
    let records = TestRecord::varied("mtls", 5);
    let ssl = ck_ssl(&front.ca_cert(), Some(&good));
    ck_produce(&kapsule.listen, &topic, &records, &refs(&ssl)).await;
    let back_records = ck_consume(&kapsule.listen, &topic, records.len(), &refs(&ssl)).await;
    assert_records_match(&records, &back_records);
}

fn api_versions_frame(correlation: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

async fn tls_connect(
    addr: &str,
    ca: &Path,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 reports a rejected handshake on first use: do one request before returning.
    api_versions_over(&mut s, 1).await?;
    Ok(s)
}

async fn api_versions_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    correlation: i32,
) -> anyhow::Result<()> {
    s.write_all(&api_versions_frame(correlation)).await?;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await??;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await?;
    anyhow::ensure!(body[..4] == correlation.to_be_bytes(), "correlation id");
    anyhow::ensure!(body[4..6] == [0, 0], "ApiVersions error {:?}", &body[4..6]);
    Ok(())
}

/// Replaced certificate files take effect for new connections without dropping open ones;
/// SIGHUP forces a reload.
#[tokio::test(flavor = "multi_thread")]
async fn tls_certificate_reload_keeps_open_connections() {
    let old_ca = Pki::new("old").unwrap();
    let new_ca = Pki::new("new").unwrap();
    let old = old_ca
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let new = new_ca
        .issue("kapsule", KeyKind::RsaPkcs1, false, false)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let live = Issued {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let tansu = kapsule_integration::Tansu::start().await.expect("tansu");
    let yaml = config(&tansu.bootstrap(), &server_tls(&live, None, false), "", "");
    let kapsule = RawKapsule::start(&yaml).await.expect("kapsule");

    let mut open = tls_connect(&kapsule.listen, &old_ca.ca_cert())
        .await
        .expect("connect with the old certificate");
    // Swap both files atomically (as a Kubernetes secret update does).
    for (src, dst) in [(&new.key, &live.key), (&new.cert, &live.cert)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
    kapsule
        .wait_log("TLS certificate reloaded", Duration::from_secs(15))
        .await
        .unwrap();
    tls_connect(&kapsule.listen, &new_ca.ca_cert())
        .await
        .expect("new connections get the new certificate");
    assert!(
        tls_connect(&kapsule.listen, &old_ca.ca_cert())
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    api_versions_over(&mut open, 2)
        .await
        .expect("the connection opened before the reload still works");

    let before = kapsule.logs().matches("TLS certificate reloaded").count();
    let pid = kapsule.process.pid().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    kapsule_integration::wait::until("a SIGHUP reload", Duration::from_secs(10), || {
        let n = kapsule.logs().matches("TLS certificate reloaded").count();
        async move { Ok((n > before).then_some(())) }
    })
    .await
    .unwrap();
    api_versions_over(&mut open, 3)
        .await
        .expect("still open after SIGHUP");
}

/// Missing files, a key that does not match its certificate and an inconsistent section stop
/// start-up with a message naming the problem.
#[tokio::test(flavor = "multi_thread")]
async fn tls_config_errors_are_reported_at_start_up() {
    let pki = Pki::new("cfg").unwrap();
    let a = pki.issue("a", KeyKind::EcPkcs8, false, false).unwrap();
    let b = pki.issue("b", KeyKind::EcPkcs8, false, false).unwrap();
    let upstream = format!("127.0.0.1:{}", free_port());
    let mismatched = Issued {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let missing = Issued {
        cert: pki.dir().join("nope.pem"),
        key: a.key.clone(),
    };
    let cases = [
        (server_tls(&missing, None, false), "nope.pem".to_owned()),
        (
            server_tls(&mismatched, None, false),
            "do not form a usable pair".to_owned(),
        ),
        (
            "  tls:\n    cert_file: a\n    key_file: b\n    require_client_cert: true\n".to_owned(),
            "needs proxy.tls.client_ca_file".to_owned(),
        ),
    ];
    for (tls, expected) in cases {
        let mut k = RawKapsule::spawn(&config(&upstream, &tls, "", "")).unwrap();
        let status =
            kapsule_integration::wait::until("kapsule to exit", Duration::from_secs(20), || {
                let s = k.process.exit_status();
                async move { Ok(s) }
            })
            .await
            .expect("kapsule refuses to start");
        assert!(!status.success());
        assert!(
            k.logs().contains(&expected),
            "expected `{expected}` in:\n{}",
            k.logs()
        );
    }
}

/// Broker certificates are verified by default: a broker whose CA Kapsule does not trust is
/// refused with a clear log line; a broker requiring client certificates refuses Kapsule without
/// one; `insecure_skip_verify` connects and says loudly that it is insecure.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_verifies_brokers_and_insecure_mode_is_loud() {
    let back = Pki::new("back3").unwrap();
    let other = Pki::new("other").unwrap();
    let (_tansu, _plain, stunnel) = tls_broker(&back).await;
    let client = back.issue("k", KeyKind::EcPkcs8, false, false).unwrap();

    let wrong_ca = config(
        &stunnel.addr,
        "",
        &upstream_tls(&other.ca_cert(), Some(&client)),
        "",
    );
    let k = RawKapsule::start(&wrong_ca).await.expect("kapsule");
    assert!(probe::api_versions(&k.listen, Duration::from_secs(5))
        .await
        .is_err());
    k.wait_log("not issued by a trusted CA", Duration::from_secs(10))
        .await
        .unwrap();
    drop(k);

    let no_client_cert = config(&stunnel.addr, "", &upstream_tls(&back.ca_cert(), None), "");
    let k = RawKapsule::start(&no_client_cert).await.expect("kapsule");
    assert!(probe::api_versions(&k.listen, Duration::from_secs(5))
        .await
        .is_err());
    drop(k);

    let good = config(
        &stunnel.addr,
        "",
        &upstream_tls(&back.ca_cert(), Some(&client)),
        "",
    );
    let k = RawKapsule::start(&good).await.expect("kapsule");
    probe::api_versions(&k.listen, Duration::from_secs(5))
        .await
        .expect("verified mTLS to the broker works");
    drop(k);

    let insecure = config(
        &stunnel.addr,
        "",
        &format!(
            "  upstream_tls:\n    insecure_skip_verify: true\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            client.cert.display(),
            client.key.display()
        ),
        "",
    );
    let k = RawKapsule::start(&insecure).await.expect("kapsule");
    probe::api_versions(&k.listen, Duration::from_secs(5))
        .await
        .expect("insecure mode connects");
    assert!(k.logs().contains("NOT verified"), "{}", k.logs());
}
