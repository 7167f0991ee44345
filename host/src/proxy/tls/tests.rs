//! TLS settings parsing and how TLS failures are described.

use super::*;
use crate::proxy::proxy_protocol::ProxyProtocol;

#[test]
fn a_broker_alert_after_the_handshake_names_the_client_certificate() {
    let alert = |a| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(a),
        )
    };
    let text = super::describe_broker_alert(&alert(rustls::AlertDescription::BadCertificate))
        .expect("an alert is described");
    assert!(text.contains("proxy.upstream_tls.cert_file"), "{text}");
    let text = super::describe_broker_alert(&alert(rustls::AlertDescription::HandshakeFailure))
        .expect("an alert is described");
    assert!(text.contains("HandshakeFailure"), "{text}");
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(super::describe_broker_alert(&reset), None);
}

#[test]
fn tls_sections_parse_and_every_problem_is_reported() {
    let c = crate::config::Config::parse(
        "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  proxy_protocol: v2\n  tls:\n    cert_file: c.pem\n    key_file: k.pem\n  upstream_tls:\n    ca_file: ca.pem\n",
    )
    .unwrap();
    assert_eq!(c.proxy.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(c.proxy.tls.as_ref().unwrap().reload_interval_secs, 10);
    assert!(!c.proxy.upstream_tls.as_ref().unwrap().insecure_skip_verify);

    let err = crate::config::Config::parse(
        "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  tls:\n    cert_file: c\n    key_file: k\n    require_client_cert: true\n    reload_interval_secs: 0\n  upstream_tls:\n    cert_file: c\n    server_name: \"not a name!\"\n",
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "proxy.tls.require_client_cert",
        "proxy.tls.reload_interval_secs",
        "cert_file and key_file go together",
        "proxy.upstream_tls.server_name",
    ] {
        assert!(err.contains(needle), "missing {needle} in {err}");
    }
    let err = crate::config::Config::parse(
        "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  proxy_protocol: v1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("proxy_protocol"), "{err}");
}

#[test]
fn unreadable_and_non_pem_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let cfg = |cert: &Path| ServerTlsConfig {
        cert_file: cert.to_owned(),
        key_file: junk.clone(),
        client_ca_file: None,
        require_client_cert: false,
        reload_interval_secs: 10,
        handshake_timeout_ms: 10_000,
        principal_from: principal::PrincipalFrom::Subject,
    };
    let e = format!(
        "{:#}",
        TlsAcceptorHandle::new(&cfg(&dir.path().join("missing.pem"))).unwrap_err()
    );
    assert!(e.contains("missing.pem"), "{e}");
    let e = format!("{:#}", TlsAcceptorHandle::new(&cfg(&junk)).unwrap_err());
    assert!(
        e.contains("junk.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    let up = UpstreamTlsConfig {
        ca_file: Some(junk.clone()),
        cert_file: None,
        key_file: None,
        server_name: None,
        insecure_skip_verify: false,
    };
    let e = format!("{:#}", UpstreamConnector::new(Some(&up)).unwrap_err());
    assert!(e.contains("proxy.upstream_tls.ca_file"), "{e}");
}
