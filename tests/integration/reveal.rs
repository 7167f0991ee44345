//! Who may read: one topic, four readers over TLS to Kapsule, each seeing what its rule's
//! `reveal_to` grants. Client certificates (CN=app, CN=analytics, CN=mallory) come from a test CA;
//! the principal is the certificate's CN (`proxy.tls.principal_from: cn`). Real clients:
//! confluent-kafka and kafka-python.

use std::path::Path;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::records::ConsumedRecord;
use kapsule_integration::tls::{ck_ssl, kp_consume_tls, Issued, KeyKind, Pki, RawKapsule};
use kapsule_integration::{run_python, unique_name, Broker, TestRecord};
use serde_json::Value;

use crate::common::{assert_records_match, ck_consume, ck_produce, CLIENT_TIMEOUT};

fn rules() -> &'static str {
    r#"policy:
  rules:
    - topics: {prefix: "customers-"}
      key_id: kek-reveal
      value: {json_fields: [/email, /ssn, /plan]}
      headers: [pii]
      reveal_to:
        - {principal: app, mechanism: mTLS, reveal: all}
        - {principal: analytics, reveal: {json_fields: [/plan]}}
        - {principal: mallory, reveal: deny}
      reveal_default: ciphertext
"#
}

/// A Kapsule serving TLS with optional client certificates from `ca`, the principal being the
/// certificate's CN, with `kms` and the `policy` section.
pub(crate) fn mtls_principal_config(
    upstream: &str,
    server: &Issued,
    ca: &Path,
    kms: &LocalKms,
    policy: &str,
) -> String {
    format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{upstream}\"\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    client_ca_file: \"{}\"\n    require_client_cert: false\n    principal_from: cn\nadmin:\n  listen: \"{{admin}}\"\n{}{policy}",
        server.cert.display(),
        server.key.display(),
        ca.display(),
        kms.yaml(),
    )
}

pub(crate) fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Customer records: JSON values with PII fields, a `pii` header (encrypted) and a clear `trace`.
fn customers(n: usize) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let value = serde_json::json!({
                "id": i,
                "email": format!("EMAILMARK-{i}@example.com"),
                "ssn": format!("SSNMARK-{i:04}"),
                "plan": if i % 2 == 0 { "gold" } else { "basic" },
            });
            let mut r = TestRecord::kv(format!("cust-{i}"), value.to_string());
            r.headers = vec![
                ("pii".into(), Some(format!("HDRMARK-{i}").into_bytes())),
                ("trace".into(), Some(format!("trace-{i}").into_bytes())),
            ];
            r
        })
        .collect()
}

/// Reads with kafka-python over TLS: records and errors.
async fn kp_consume(
    bootstrap: &str,
    topic: &str,
    count: usize,
    ca: &Path,
    client: Option<&Issued>,
) -> (Vec<ConsumedRecord>, Vec<Value>) {
    kp_consume_tls(bootstrap, topic, count, ca, client)
        .await
        .expect("kp_consume_tls.py")
}

/// Reads with confluent-kafka (`ck_consume_report.py`): records and errors.
async fn ck_report(
    bootstrap: &str,
    topic: &str,
    ssl: &[String],
) -> (Vec<ConsumedRecord>, Vec<Value>) {
    let mut a: Vec<String> = [
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--max-errors".to_string(), "1".to_string()])
    .collect();
    a.extend(ssl.iter().cloned());
    let out = run_python("ck_consume_report.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("ck_consume_report.py")
        .json;
    let records = ConsumedRecord::list_from_output(&out).expect("records");
    (
        records,
        out["errors"].as_array().cloned().unwrap_or_default(),
    )
}

/// What analytics must see: `plan` and `trace` in clear, email/ssn/pii still ciphertext, and a
/// `kapsule.withheld` header naming exactly those (no `kapsule.enc`).
fn assert_analytics_view(produced: &[TestRecord], seen: &[ConsumedRecord], client: &str) {
    assert_eq!(seen.len(), produced.len(), "{client}: record count");
    for (p, s) in produced.iter().zip(seen) {
        let s = &s.record;
        let want: Value = serde_json::from_slice(p.value.as_deref().unwrap()).unwrap();
        let got: Value = serde_json::from_slice(s.value.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("{client}: value is not JSON: {e}"));
        assert_eq!(got["plan"], want["plan"], "{client}");
        assert_eq!(got["id"], want["id"], "{client}");
        for f in ["email", "ssn"] {
            let v = got[f].as_str().unwrap_or_default();
            assert!(v.starts_with("kapsule:v1:"), "{client}: {f} = {v:?}");
        }
        assert_eq!(
            s.key, p.key,
            "{client}: record keys are not encrypted by this rule"
        );
        assert_eq!(s.header("trace"), p.header("trace"), "{client}");
        assert!(s
            .header("pii")
            .is_some_and(|h| h != p.header("pii").unwrap()));
        assert_eq!(
            s.header("kapsule.enc"),
            None,
            "{client}: no stale descriptor"
        );
        let withheld: Value =
            serde_json::from_slice(s.header("kapsule.withheld").expect("withheld header")).unwrap();
        assert_eq!(
            withheld,
            serde_json::json!({"json_fields": ["/email", "/ssn"], "headers": ["pii"]}),
            "{client}"
        );
        let all = [s.value.as_deref().unwrap(), s.header("pii").unwrap()].concat();
        let text = String::from_utf8_lossy(&all);
        assert!(
            !text.contains("EMAILMARK") && !text.contains("SSNMARK") && !text.contains("HDRMARK"),
            "{client}: PII in clear: {text}"
        );
    }
}

fn is_authorization_failure(e: &Value) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("topic_authorization_failed")
        || s.contains("topicauthorizationfailed")
        || s.contains("topic authorization failed")
}

/// app reads everything in clear, analytics reads JSON with PII fields still ciphertext,
/// mallory is denied (TOPIC_AUTHORIZATION_FAILED), an unauthenticated TLS client gets the
/// default (ciphertext, as stored); producing is unaffected by who may read.
#[tokio::test(flavor = "multi_thread")]
async fn each_principal_reads_what_reveal_to_grants() {
    let pki = Pki::new("reveal").unwrap();
    let server = pki
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let app = pki.issue("app", KeyKind::EcPkcs8, false, false).unwrap();
    let analytics = pki
        .issue("analytics", KeyKind::EcSec1, false, false)
        .unwrap();
    let mallory = pki
        .issue("mallory", KeyKind::RsaPkcs1, false, false)
        .unwrap();
    let ca = pki.ca_cert();
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = RawKapsule::start(&mtls_principal_config(
        &broker.bootstrap(),
        &server,
        &ca,
        &kms,
        rules(),
    ))
    .await
    .expect("kapsule");
    let topic = unique_name("customers-reveal");
    broker.create_topic(&topic, 1).await.unwrap();

    // The denied reader may still produce: reveal_to governs reads only.
    let records = customers(12);
    let (first, second) = records.split_at(6);
    ck_produce(
        &kapsule.listen,
        &topic,
        first,
        &refs(&ck_ssl(&ca, Some(&app))),
    )
    .await;
    ck_produce(
        &kapsule.listen,
        &topic,
        second,
        &refs(&ck_ssl(&ca, Some(&mallory))),
    )
    .await;
    let n = records.len();

    // app: everything in clear, exactly as produced (confluent-kafka and kafka-python).
    let seen = ck_consume(&kapsule.listen, &topic, n, &refs(&ck_ssl(&ca, Some(&app)))).await;
    assert_records_match(&records, &seen);
    let (seen, errors) = kp_consume(&kapsule.listen, &topic, n, &ca, Some(&app)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_records_match(&records, &seen);

    // analytics: PII fields and the pii header still ciphertext.
    let seen = ck_consume(
        &kapsule.listen,
        &topic,
        n,
        &refs(&ck_ssl(&ca, Some(&analytics))),
    )
    .await;
    assert_analytics_view(&records, &seen, "confluent-kafka");
    let (seen, errors) = kp_consume(&kapsule.listen, &topic, n, &ca, Some(&analytics)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_analytics_view(&records, &seen, "kafka-python");

    // mallory: denied, and told so.
    let (seen, errors) = ck_report(&kapsule.listen, &topic, &ck_ssl(&ca, Some(&mallory))).await;
    assert!(seen.is_empty(), "mallory read {} records", seen.len());
    assert!(
        errors.iter().any(is_authorization_failure),
        "confluent-kafka errors: {errors:?}"
    );
    let (seen, errors) = kp_consume(&kapsule.listen, &topic, n, &ca, Some(&mallory)).await;
    assert!(seen.is_empty(), "mallory read {} records", seen.len());
    assert!(
        errors.iter().any(is_authorization_failure),
        "kafka-python errors: {errors:?}"
    );

    // No client certificate: the default, ciphertext exactly as stored on the broker.
    let stored = ck_consume(&broker.bootstrap(), &topic, n, &[]).await;
    let seen = ck_consume(&kapsule.listen, &topic, n, &refs(&ck_ssl(&ca, None))).await;
    assert_eq!(seen.len(), n);
    for (s, d) in seen.iter().zip(&stored) {
        assert_eq!(
            s.record, d.record,
            "unauthenticated reader gets stored bytes"
        );
        assert!(s.record.header("kapsule.enc").is_some());
    }
    let (seen, errors) = kp_consume(&kapsule.listen, &topic, n, &ca, None).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        seen.iter().map(|c| &c.record.value).collect::<Vec<_>>(),
        stored.iter().map(|c| &c.record.value).collect::<Vec<_>>()
    );

    // The principal is logged per connection; nothing was logged in clear.
    let logs = kapsule.logs();
    for who in ["app (mTLS)", "analytics (mTLS)", "mallory (mTLS)"] {
        assert!(
            logs.contains(&format!("principal={who}")),
            "no `principal={who}` in:\n{logs}"
        );
    }
    for marker in ["EMAILMARK", "SSNMARK", "HDRMARK"] {
        assert!(!logs.contains(marker), "{marker} in the log");
    }
}
