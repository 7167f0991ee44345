//! Resource bounds and admin access (issue 8, items 7 and 8): client-chosen topic names must not
//! grow the proxy's state without bound, and the admin endpoint's mutating calls need a token.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::kapsule::{direct_mode, kapsule_bin};
use kapsule_integration::{
    free_port, run_python, unique_name, Kapsule, KapsuleConfig, RecordsMode, Tansu,
};

use crate::common::CLIENT_TIMEOUT;

/// One HTTP/1.1 request with optional extra header lines; returns status and body.
pub(crate) async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status line in {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Ok((status, body.to_owned()))
    })
    .await
    .context("admin request timed out")?
}

/// Sum of every sample of `metric` whose labels contain `labels` in a Prometheus text page.
fn sample_sum(page: &str, metric: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Distinct `topic="..."` label values of `metric`.
fn topic_labels(page: &str, metric: &str) -> Vec<String> {
    let mut out: Vec<String> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| Some(l.split("topic=\"").nth(1)?.split('"').next()?.to_owned()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn many_topic_names_do_not_grow_state_or_metric_labels() {
    if direct_mode() {
        return;
    }
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let yaml = format!(
        "{}  max_auto_created_keys: 4\ndeks:\n  max_topics: 4\npolicy:\n  rules:\n    - topics: {{prefix: \"many-\"}}\n      key_id: kek-many\n      value: whole\n    - topics: {{prefix: \"auto-\"}}\n      key_id: \"kek-$${{topic}}\"\n      value: whole\n",
        kms.yaml()
    );
    let kapsule = Kapsule::start(
        &tansu.bootstrap(),
        KapsuleConfig::new(RecordsMode::Passthrough).with_yaml(&yaml),
    )
    .await
    .expect("start kapsule");

    // 12 topics under one KEK: every record is encrypted, but only 4 topics get their own label.
    let mut many = Vec::new();
    for _ in 0..12 {
        let t = unique_name("many-");
        tansu.create_topic(&t, 1).await.unwrap();
        many.push(t);
    }
    let mut a = vec!["--bootstrap".to_string(), kapsule.bootstrap()];
    for t in &many {
        a.extend(["--topic".to_string(), t.clone()]);
    }
    let out = run_python("ck_many_topics.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_many_topics.py");
    assert_eq!(out.json["delivered"], 12, "{}", out.json);

    // 6 topics whose KEK is auto-created per topic: the file may hold 4 KEKs (kek-many and 3
    // more), the other topics are refused, each after at most one KMS call however often the
    // client retries.
    let mut auto = Vec::new();
    for _ in 0..6 {
        let t = unique_name("auto-");
        tansu.create_topic(&t, 1).await.unwrap();
        auto.push(t);
    }
    let mut a = vec![
        "--bootstrap".to_string(),
        kapsule.bootstrap(),
        "--timeout".into(),
        "10".into(),
    ];
    for t in &auto {
        a.extend(["--topic".to_string(), t.clone()]);
    }
    let out = run_python("ck_many_topics.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_many_topics.py");
    assert_eq!(out.json["delivered"], 3, "{}", out.json);

    let (status, page) = kapsule.admin_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    // One registry: proxy, crypto/KMS and policy families in one OpenMetrics page.
    for family in [
        "# TYPE kapsule_frames counter",
        "# TYPE kapsule_records_encrypted counter",
        "# TYPE kapsule_kms_call_duration_seconds histogram",
        "# TYPE kapsule_policy_calls counter",
    ] {
        assert!(page.contains(family), "missing {family}:\n{page}");
    }
    assert!(page.ends_with("# EOF\n"), "{page}");
    let labels = topic_labels(&page, "kapsule_records_encrypted_total");
    assert!(
        labels.len() <= 5 && labels.contains(&"~other".to_string()),
        "topic labels not bounded by deks.max_topics: {labels:?}"
    );
    assert_eq!(
        sample_sum(&page, "kapsule_records_encrypted_total", "topic="),
        15.0,
        "{page}"
    );
    let refused_calls = sample_sum(&page, "kapsule_kms_calls_total", "outcome=\"unknown_key\"");
    assert!(
        (1.0..=3.0).contains(&refused_calls),
        "unknown keys must be answered from the negative cache: {refused_calls} KMS calls\n{page}"
    );
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kms.key_file()).unwrap()).unwrap();
    assert_eq!(
        keys["keys"].as_object().unwrap().len(),
        4,
        "kek-many plus 3 auto-created KEKs: {keys}"
    );
}

/// A config file whose admin section carries `admin_extra` (listen addresses come from flags).
fn admin_config(admin_extra: &str, rest: &str) -> KapsuleConfig {
    KapsuleConfig::from_raw(
        RecordsMode::Passthrough,
        format!(
            "proxy:\n  listen: 127.0.0.1:1\n  upstream: 127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:1\n{admin_extra}records: passthrough\n{rest}"
        ),
    )
}

#[tokio::test]
async fn admin_reload_needs_the_bearer_token_when_one_is_configured() {
    if direct_mode() {
        return;
    }
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let token = "s3cret-admin-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let rest = format!(
        "{}policy:\n  rules:\n    - topics: orders\n      key_id: kek-orders\n      value: whole\n",
        kms.yaml()
    );
    let config = admin_config(
        &format!("  token_file: \"{}\"\n", token_file.display()),
        &rest,
    );
    let kapsule = Kapsule::start(&tansu.bootstrap(), config)
        .await
        .expect("start kapsule");
    let admin = kapsule.admin().unwrap().to_owned();

    let (status, body) = http(&admin, "POST", "/policies/reload", "").await.unwrap();
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = http(
        &admin,
        "POST",
        "/policies/reload",
        "Authorization: Bearer not-the-token-0123456789\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "wrong token");
    let (status, body) = http(
        &admin,
        "POST",
        "/policies/reload",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "right token: {body}");
    // Read-only endpoints stay open.
    assert_eq!(http(&admin, "GET", "/metrics", "").await.unwrap().0, 200);
    assert_eq!(http(&admin, "GET", "/policies", "").await.unwrap().0, 200);
    // A web page cannot use the token-less endpoints or ride on a browser's stored credentials:
    // an Origin header (CSRF) or a rebound DNS name in Host is refused, token or not.
    let (status, body) = http(
        &admin,
        "POST",
        "/policies/reload",
        &format!("Authorization: Bearer {token}\r\nOrigin: http://evil.example\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "Origin: {body}");
    let port = admin.rsplit_once(':').unwrap().1;
    let rebound = rebound_get(&admin, &format!("evil.example:{port}"), "/metrics").await;
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(
        !kapsule.logs().contains(token),
        "the admin token must never be logged"
    );
}

/// A GET whose Host header is `host` (as a browser on a rebound DNS name sends it); returns the
/// raw answer.
async fn rebound_get(addr: &str, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn admin_on_loopback_without_token_allows_reload() {
    if direct_mode() {
        return;
    }
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let rest = format!(
        "{}policy:\n  rules:\n    - topics: orders\n      key_id: kek-orders\n      value: whole\n",
        kms.yaml()
    );
    let kapsule = Kapsule::start(&tansu.bootstrap(), admin_config("", &rest))
        .await
        .expect("start kapsule");
    let admin = kapsule.admin().unwrap().to_owned();
    let (status, body) = http(&admin, "POST", "/policies/reload", "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Endpoints and answers are unchanged.
    assert_eq!(
        http(&admin, "GET", "/livez", "").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(http(&admin, "GET", "/nope", "").await.unwrap().0, 404);
    assert_eq!(http(&admin, "DELETE", "/metrics", "").await.unwrap().0, 405);
}

#[tokio::test]
async fn admin_off_loopback_without_token_refuses_to_start() {
    let bin = kapsule_bin().unwrap();
    let admin = format!("0.0.0.0:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "run",
        "--listen",
        &listen,
        "--upstream",
        "127.0.0.1:9",
        "--admin",
        &admin,
    ])
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("kapsule must exit at once, not serve")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("admin.token_env"),
        "{stderr}"
    );
}

#[tokio::test]
async fn admin_connections_are_capped() {
    if direct_mode() {
        return;
    }
    let tansu = Tansu::start().await.expect("start tansu");
    let kapsule = Kapsule::start(
        &tansu.bootstrap(),
        admin_config("  max_connections: 2\n", ""),
    )
    .await
    .expect("start kapsule");
    let admin = kapsule.admin().unwrap().to_owned();
    // Two idle connections (no request yet) hold both slots.
    let idle = [
        TcpStream::connect(&admin).await.unwrap(),
        TcpStream::connect(&admin).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http(&admin, "GET", "/livez", "").await.unwrap();
    assert_eq!(status, 503, "{body}");
    drop(idle);
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = http(&admin, "GET", "/livez", "").await.unwrap();
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 200, "slots are given back: {last:?}");
}
