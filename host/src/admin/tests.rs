//! The admin endpoint served for real on a loopback port, spoken to with raw HTTP/1.1.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;

use super::*;

struct CountingPolicies(AtomicUsize);

impl PolicyAdmin for CountingPolicies {
    fn status_json(&self) -> String {
        "[{\"binding\":\"b\"}]\n".into()
    }
    fn reload(&self) -> Result<String, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok("reloaded\n".into())
    }
}

const TOKEN: &str = "admin-token-0123456789abcdef";

/// Serves the admin endpoint for `config` (its `listen` replaced by a free loopback port);
/// returns the address and the reload counter.
async fn start(mut config: AdminConfig) -> (String, Arc<CountingPolicies>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    if config.token_file.is_some() {
        config.token_file = Some(token_file);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    config.listen = addr.clone();
    let policies = Arc::new(CountingPolicies(AtomicUsize::new(0)));
    let state = AdminState::new(
        Arc::default(),
        Arc::new(Metrics::default()),
        "127.0.0.1:9".into(),
        Some(policies.clone()),
        &config,
    )
    .unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve(listener, state, rx));
    // Keep the sender alive for the test's duration.
    std::mem::forget(tx);
    (addr, policies, dir)
}

/// One request; `head` is the header block after the request line (each line ending `\r\n`).
async fn request(addr: &str, method: &str, path: &str, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\n{head}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn with_token() -> AdminConfig {
    AdminConfig {
        token_file: Some("set-by-start".into()),
        ..AdminConfig::default()
    }
}

#[tokio::test]
async fn browser_origins_are_refused_so_a_page_cannot_reload_policies() {
    let (addr, policies, _dir) = start(AdminConfig::default()).await;
    let host = format!("Host: {addr}\r\n");
    // Loopback without a token: a plain client may reload...
    assert_eq!(
        request(&addr, "POST", "/policies/reload", &host).await.0,
        200
    );
    assert_eq!(policies.0.load(Ordering::SeqCst), 1);
    // ...a web page (cross-site form or fetch, Origin set by the browser) may not.
    for origin in ["http://evil.example", "null", &format!("http://{addr}")] {
        let head = format!("{host}Origin: {origin}\r\n");
        let (status, body) = request(&addr, "POST", "/policies/reload", &head).await;
        assert_eq!(status, 403, "Origin {origin}: {body}");
        assert_eq!(request(&addr, "GET", "/metrics", &head).await.0, 403);
    }
    assert_eq!(
        policies.0.load(Ordering::SeqCst),
        1,
        "no reload from a page"
    );
}

#[tokio::test]
async fn rebound_host_names_are_refused() {
    let config = AdminConfig {
        allowed_hosts: vec!["kapsule-admin.monitoring.svc".into()],
        ..AdminConfig::default()
    };
    let (addr, _, _dir) = start(config).await;
    let port = addr.rsplit_once(':').unwrap().1;
    for ok in [
        addr.clone(),
        "127.0.0.1".into(),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
        format!("kapsule-admin.monitoring.svc:{port}"),
        "Kapsule-Admin.Monitoring.Svc.".into(),
    ] {
        let (status, body) = request(&addr, "GET", "/metrics", &format!("Host: {ok}\r\n")).await;
        assert_eq!(status, 200, "Host {ok}: {body}");
    }
    for bad in [
        format!("attacker.example:{port}"),
        "127.0.0.2".into(),
        format!("[::1]:{port}"),
        "localhost.attacker.example".into(),
        format!("127.0.0.1:{port}x"),
        "".into(),
    ] {
        for (method, path) in [
            ("GET", "/metrics"),
            ("GET", "/policies"),
            ("POST", "/policies/reload"),
        ] {
            let (status, body) = request(&addr, method, path, &format!("Host: {bad}\r\n")).await;
            assert_eq!(status, 403, "Host {bad:?} {method} {path}: {body}");
        }
    }
    // Not a browser: no Host at all (HTTP/1.0 style tools) is served.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn reads_need_the_token_when_configured() {
    let config = AdminConfig {
        require_token_for_reads: true,
        ..with_token()
    };
    let (addr, _, _dir) = start(config).await;
    let host = format!("Host: {addr}\r\n");
    let bearer = format!("{host}Authorization: Bearer {TOKEN}\r\n");
    let wrong = format!("{host}Authorization: Bearer not-the-token-0123456789\r\n");
    for path in ["/metrics", "/policies"] {
        assert_eq!(request(&addr, "GET", path, &host).await.0, 401, "{path}");
        assert_eq!(request(&addr, "GET", path, &wrong).await.0, 401, "{path}");
        let (status, body) = request(&addr, "GET", path, &bearer).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Probes stay open.
    assert_eq!(request(&addr, "GET", "/livez", &host).await.0, 200);
    // Off by default: reads open, reload still needs the token.
    let (addr, _, _dir) = start(with_token()).await;
    let host = format!("Host: {addr}\r\n");
    assert_eq!(request(&addr, "GET", "/metrics", &host).await.0, 200);
    assert_eq!(
        request(&addr, "POST", "/policies/reload", &host).await.0,
        401
    );
}

#[test]
fn require_token_for_reads_without_a_token_is_a_config_error() {
    let base =
        "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\nadmin:\n  listen: 127.0.0.1:9190\n";
    let err = crate::config::Config::parse(&format!("{base}  require_token_for_reads: true\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.require_token_for_reads"), "{err}");
    let err = crate::config::Config::parse(&format!(
        "{base}  allowed_hosts: [\"kapsule:9190\", \"ok.example\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("admin.allowed_hosts") && err.contains("kapsule:9190"),
        "{err}"
    );
    assert!(!err.contains("ok.example"), "{err}");
}

#[test]
fn host_matching_follows_the_listen_address() {
    let any = AllowedHosts::new(Some("0.0.0.0:9190".parse().unwrap()), &[]);
    assert!(
        any.allows("10.1.2.3:9190"),
        "pod IP when listening on a wildcard"
    );
    assert!(any.allows("[fd00::1]:9190"));
    assert!(!any.allows("kapsule.example:9190"));
    assert!(
        !any.allows("fd00::1"),
        "a bare IPv6 address is not a valid Host"
    );
    let one = AllowedHosts::new(
        Some("10.0.0.5:9190".parse().unwrap()),
        &["k.example".into()],
    );
    assert!(one.allows("10.0.0.5:9190"));
    assert!(!one.allows("10.0.0.6:9190"));
    assert!(one.allows("k.example"));
    assert!(!one.allows("k.example.evil"));
}
