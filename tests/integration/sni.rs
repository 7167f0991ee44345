//! SNI routing (`proxy.sni`): the whole cluster on one TLS port, the TLS server name choosing
//! the broker. Clients use real host names (`kafka.example`, `broker-111.kafka.example`) from a
//! network namespace whose `/etc/hosts` maps them to Kapsule, so the machine's resolver is never
//! touched.

use std::sync::Arc;
use std::time::Duration;

use kapsule_integration::clients::run_python_in_netns;
use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::fleet::Member;
use kapsule_integration::netns::Netns;
use kapsule_integration::records::{write_records_file, ConsumedRecord};
use kapsule_integration::tls::{KeyKind, Pki, RawKapsule};
use kapsule_integration::{free_port, unique_name, Tansu, TestRecord};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{args, assert_records_match, ck_consume, CLIENT_TIMEOUT};

/// tansu 0.6 always has node id 111.
const TANSU_NODE_ID: i32 = 111;
pub(crate) const BOOTSTRAP_HOST: &str = "kafka.example";

fn broker_host() -> String {
    format!("broker-{TANSU_NODE_ID}.kafka.example")
}

/// A certificate for `kafka.example` and every `*.kafka.example` broker name, issued by `pki`.
pub(crate) fn wildcard_certificate(pki: &Pki) -> kapsule_integration::tls::Issued {
    pki.issue_with_sans(
        BOOTSTRAP_HOST,
        KeyKind::EcPkcs8,
        false,
        false,
        "DNS:kafka.example,DNS:*.kafka.example",
    )
    .unwrap()
}

/// `proxy:` (one TLS listener routing by SNI to `upstream`) and `admin:` sections.
pub(crate) fn sni_yaml(
    listen: &str,
    upstream: &str,
    cert: &kapsule_integration::tls::Issued,
) -> String {
    format!(
        "proxy:\n  listen: \"{listen}\"\n  upstream: \"{upstream}\"\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n  sni:\n    bootstrap_host: {BOOTSTRAP_HOST}\n    broker_host: \"broker-$(nodeId).kafka.example\"\nadmin:\n  listen: \"{{admin}}\"\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// A TLS handshake with `server_name` (trusting `ca`), then one ApiVersions request; `Ok` with
/// the number of response bytes read before the connection ended.
async fn handshake_and_ask(
    addr: &str,
    ca: &std::path::Path,
    server_name: &str,
) -> anyhow::Result<usize> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(server_name.to_owned())?, tcp)
        .await?;
    let frame: &[u8] = &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
    tls.write_all(frame).await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    Ok(buf.len())
}

/// One TLS port for the cluster, real names: confluent-kafka and kafka-python produce and consume
/// through `kafka.example:PORT`, the metadata they see names `broker-111.kafka.example:PORT`,
/// records are encrypted at rest and plaintext for consumers. A client without SNI (bootstrap by
/// IP address) reaches the bootstrap broker; an unknown name is logged and closed.
#[tokio::test(flavor = "multi_thread")]
async fn one_tls_port_routes_brokers_by_server_name() {
    let ns = Netns::create(&[BOOTSTRAP_HOST, &broker_host()]).expect("network namespace");
    let pki = Pki::new("sni").unwrap();
    let cert = wildcard_certificate(&pki);
    let ca = pki.ca_cert().display().to_string();
    let tansu = Tansu::start().await.expect("tansu");
    let kms = LocalKms::new().unwrap();
    let port = free_port();
    let listen = format!("{}:{port}", ns.host_ip);
    let yaml = format!(
        "{}{}policy:\n  rules:\n    - topics: {{prefix: \"sni-\"}}\n      key_id: kek-sni\n      value: whole\n",
        sni_yaml(&listen, &tansu.bootstrap(), &cert),
        kms.yaml()
    );
    let kapsule = Member::start("sni", &yaml, "info")
        .await
        .expect("kapsule with proxy.sni");
    assert!(
        !kapsule.logs().contains("does not cover"),
        "the wildcard certificate covers both names:\n{}",
        kapsule.logs()
    );
    let bootstrap = format!("{BOOTSTRAP_HOST}:{port}");
    let ssl = [
        "--config",
        "security.protocol=SSL",
        "--config",
        &format!("ssl.ca.location={ca}"),
    ];

    // The metadata a client sees names the broker by its SNI name on the shared port.
    let mut a = args(&["--bootstrap", &bootstrap]);
    a.extend(args(&ssl));
    let md = run_python_in_netns(&ns.name, "ck_metadata.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_metadata.py")
        .json;
    assert_eq!(
        md["brokers"],
        serde_json::json!([{"id": TANSU_NODE_ID, "host": broker_host(), "port": port}]),
        "{md}"
    );

    // confluent-kafka produces and consumes through the one port (host names verified).
    let topic = unique_name("sni-ck");
    tansu.create_topic(&topic, 2).await.unwrap();
    let records = TestRecord::varied("sni", 20);
    let file = write_records_file(&records).unwrap();
    let mut a = args(&["--bootstrap", &bootstrap, "--topic", &topic, "--input"]);
    a.push(file.path().display().to_string());
    a.extend(args(&ssl));
    let out = run_python_in_netns(&ns.name, "ck_produce.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("confluent-kafka produce over SNI")
        .json;
    assert_eq!(out["produced"], records.len(), "{out}");
    let mut a = args(&[
        "--bootstrap",
        &bootstrap,
        "--topic",
        &topic,
        "--count",
        &records.len().to_string(),
        "--group",
        &unique_name("sni-group"),
    ]);
    a.extend(args(&ssl));
    let out = run_python_in_netns(&ns.name, "ck_consume.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("confluent-kafka consume over SNI")
        .json;
    assert_records_match(&records, &ConsumedRecord::list_from_output(&out).unwrap());

    // Ciphertext at rest, read straight from tansu.
    let stored: Vec<TestRecord> = ck_consume(&tansu.bootstrap(), &topic, records.len(), &[])
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    let markers: Vec<Vec<u8>> = records.iter().filter_map(|r| r.value.clone()).collect();
    assert_no_plaintext(&stored, &markers);

    // kafka-python (ssl_check_hostname) round trip through the same port.
    let kp_topic = unique_name("sni-kp");
    tansu.create_topic(&kp_topic, 1).await.unwrap();
    let out = run_python_in_netns(
        &ns.name,
        "kp_tls.py",
        &args(&[
            "--bootstrap",
            &bootstrap,
            "--topic",
            &kp_topic,
            "--count",
            "10",
            "--cafile",
            &ca,
            "--prefix",
            "kp-sni",
        ]),
        CLIENT_TIMEOUT,
    )
    .await
    .expect("kafka-python over SNI")
    .json;
    let values: Vec<String> = out["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(hex::decode(v.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("kp-sni-{i}")).collect();
    assert_eq!(values, want);

    // Bootstrap by IP address: no SNI, so the bootstrap broker; the broker connection that
    // follows uses the advertised name.
    let mut a = args(&[
        "--bootstrap",
        &listen,
        "--config",
        "ssl.endpoint.identification.algorithm=none",
    ]);
    a.extend(args(&ssl));
    let md = run_python_in_netns(&ns.name, "ck_metadata.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("bootstrap without SNI")
        .json;
    assert_eq!(md["brokers"][0]["host"], broker_host(), "{md}");

    // An unknown name: handshake completes (the wildcard covers it), then Kapsule logs the name
    // and closes without answering.
    let read = handshake_and_ask(&listen, &pki.ca_cert(), "nope.kafka.example")
        .await
        .expect("handshake with an unknown name");
    assert_eq!(read, 0, "an unknown server name gets no Kafka answer");
    let logs = || kapsule.logs();
    kapsule_integration::wait::until(
        "the unknown name to be logged",
        Duration::from_secs(10),
        || {
            let found = logs().contains("TLS server name `nope.kafka.example` is neither");
            async move { Ok(found.then_some(())) }
        },
    )
    .await
    .unwrap();
    // And the known names still work on a raw connection too.
    assert!(
        handshake_and_ask(&listen, &pki.ca_cert(), &broker_host())
            .await
            .unwrap()
            > 0
    );
}

/// Start-up checks: a certificate that does not cover the SNI names is warned about, naming the
/// name and what to do; `proxy.sni` without `proxy.tls` stops start-up.
#[tokio::test(flavor = "multi_thread")]
async fn sni_certificate_and_config_mistakes_are_reported_at_start_up() {
    let pki = Pki::new("sni-bad").unwrap();
    let cert = pki
        .issue("localhost", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let yaml = sni_yaml("{listen}", "127.0.0.1:1", &cert);
    let kapsule = RawKapsule::spawn(&yaml).unwrap();
    kapsule
        .wait_log(
            "does not cover `broker-0.kafka.example`",
            Duration::from_secs(20),
        )
        .await
        .expect("warning about the certificate");
    assert!(kapsule
        .logs()
        .contains("proxy.sni.bootstrap_host: the certificate"));
    drop(kapsule);

    let no_tls = "proxy:\n  listen: \"{listen}\"\n  upstream: \"127.0.0.1:1\"\n  sni:\n    bootstrap_host: kafka.example\n    broker_host: broker.kafka.example\nadmin:\n  listen: \"{admin}\"\n";
    let mut kapsule = RawKapsule::spawn(no_tls).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kapsule.process.exit_status().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = kapsule.logs();
    assert!(
        kapsule.process.exit_status().is_some(),
        "start-up must fail:\n{logs}"
    );
    for needle in ["proxy.sni: needs proxy.tls", "exactly once"] {
        assert!(logs.contains(needle), "missing {needle} in:\n{logs}");
    }
}

/// A client may reach an instance that never relayed the metadata naming its broker (another
/// fleet member advertised it, or this one just restarted): Kapsule asks the bootstrap broker and
/// serves the connection. A broker name for a node the cluster does not have is logged and closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_serves_broker_names_it_never_advertised() {
    let pki = Pki::new("sni-fresh").unwrap();
    let cert = wildcard_certificate(&pki);
    let tansu = Tansu::start().await.expect("tansu");
    let kapsule = RawKapsule::start(&sni_yaml("{listen}", &tansu.bootstrap(), &cert))
        .await
        .expect("kapsule");
    let got = handshake_and_ask(&kapsule.listen, &pki.ca_cert(), &broker_host())
        .await
        .unwrap();
    assert!(got > 0, "broker 111 answered through a fresh instance");
    let got = handshake_and_ask(&kapsule.listen, &pki.ca_cert(), "broker-5.kafka.example")
        .await
        .unwrap();
    assert_eq!(got, 0, "no broker 5 in this cluster");
    kapsule
        .wait_log("names no broker 5", Duration::from_secs(10))
        .await
        .unwrap();
}

/// SNI mode as a fleet: two instances behind haproxy, which passes TLS through and routes on
/// `req.ssl_sni` (PROXY v2 to Kapsule, `/readyz` checks); clients in the namespace know only
/// `kafka.example:LB_PORT`. Records produced through k0 only are read back decrypted through k1
/// only (its DEK cache empty; the shared OpenBao unwraps k0's DEKs).
#[tokio::test(flavor = "multi_thread")]
async fn sni_fleet_behind_haproxy_routes_on_server_name() {
    use kapsule_integration::encryption::vault_kms_yaml;
    use kapsule_integration::fleet::{Frontend, LoadBalancer};
    use kapsule_integration::openbao::OpenBao;

    let ns = Netns::create(&[BOOTSTRAP_HOST, &broker_host()]).expect("network namespace");
    let pki = Pki::new("sni-fleet").unwrap();
    let cert = wildcard_certificate(&pki);
    let ca = pki.ca_cert().display().to_string();
    let bao = OpenBao::start().expect("openbao");
    bao.create_key("kek-sni").unwrap();
    let (kms, _token) = vault_kms_yaml(&bao, 2000, 3).unwrap();
    let tansu = Tansu::start().await.expect("tansu");
    let lb_port = free_port();
    let mut members = Vec::new();
    for i in 0..2 {
        let yaml = format!(
            "{}{kms}policy:\n  rules:\n    - topics: {{prefix: \"sni-\"}}\n      key_id: kek-sni\n      value: whole\n",
            sni_yaml("{listen}", &tansu.bootstrap(), &cert).replace(
                "  sni:\n",
                &format!("  proxy_protocol: v2\n  sni:\n    advertised_port: {lb_port}\n")
            ),
        );
        let m = Member::start(&format!("k{i}"), &yaml, "info,kapsule::proxy=debug")
            .await
            .expect("kapsule");
        assert!(!m.logs().contains("behind a load balancer"), "{}", m.logs());
        members.push(m);
    }
    let lb = LoadBalancer::start(
        &[Frontend {
            name: "kafka".into(),
            bind: format!("{}:{lb_port}", ns.host_ip),
            servers: members
                .iter()
                .map(|m| (m.name.clone(), m.listen.clone(), m.admin.clone()))
                .collect(),
            sni_suffix: Some("kafka.example".into()),
        }],
        "127.0.0.5",
    )
    .await
    .expect("haproxy");
    let bootstrap = format!("{BOOTSTRAP_HOST}:{lb_port}");
    let ssl = [
        "--config",
        "security.protocol=SSL",
        "--config",
        &format!("ssl.ca.location={ca}"),
    ];
    let topic = unique_name("sni-fleet");
    tansu.create_topic(&topic, 1).await.unwrap();
    let records = TestRecord::varied("sni-fleet", 10);

    lb.set_server("kafka", "k1", false).await.unwrap();
    let file = write_records_file(&records).unwrap();
    let mut a = args(&["--bootstrap", &bootstrap, "--topic", &topic, "--input"]);
    a.push(file.path().display().to_string());
    a.extend(args(&ssl));
    let out = run_python_in_netns(&ns.name, "ck_produce.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("produce through haproxy and k0")
        .json;
    assert_eq!(out["produced"], records.len(), "{out}");
    assert!(!members[1].logs().contains("connection opened"));

    lb.set_server("kafka", "k1", true).await.unwrap();
    lb.set_server("kafka", "k0", false).await.unwrap();
    let mut a = args(&[
        "--bootstrap",
        &bootstrap,
        "--topic",
        &topic,
        "--count",
        &records.len().to_string(),
        "--group",
        &unique_name("sni-fleet-group"),
    ]);
    a.extend(args(&ssl));
    let out = run_python_in_netns(&ns.name, "ck_consume.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("consume through haproxy and k1")
        .json;
    assert_records_match(&records, &ConsumedRecord::list_from_output(&out).unwrap());
    let k1 = members[1].logs();
    assert!(k1.contains("connection opened"), "{k1}");
    assert!(
        k1.contains(&format!("peer={}:", ns.ns_ip)),
        "k1 logs the client's own address (from the PROXY header):\n{k1}"
    );
}
