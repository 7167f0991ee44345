//! Schema-field refusals with a real registry (Apicurio) and Apache Kafka: what Kapsule does
//! with records it cannot field-encrypt. Nothing reaches the broker in any case.

use std::time::Duration;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::tls::{ck_ssl, RawKapsule};
use kapsule_integration::{free_port, run_python, unique_name, KafkaCluster, SchemaRegistry};
use serde_json::{json, Value};

use crate::common::CLIENT_TIMEOUT;
use crate::reveal::mtls_principal_config;
use crate::schema_fields::{ck_schema, orders, principals, produce, write_json, ORDER_AVRO};

/// Refusals: a value not in the wire format and a selected field of the wrong type are
/// INVALID_RECORD (not retriable) with a message naming the problem in Kapsule's log; a
/// registry that does not answer fails the produce closed and retriable. Nothing reaches the
/// broker in any case.
#[tokio::test(flavor = "multi_thread")]
async fn schema_field_failures_refuse_records_and_store_nothing() {
    let registry = SchemaRegistry::shared().await.expect("registry");
    let kafka = KafkaCluster::shared().await.expect("kafka");
    let who = principals();
    let ca = who.pki.ca_cert();
    let kms = LocalKms::new().unwrap();
    let dead = format!("http://127.0.0.1:{}/apis/ccompat/v7", free_port());
    let rules = format!(
        r#"policy:
  rules:
    - topics: {{prefix: "typed-"}}
      key_id: kek-schema
      value: {{schema: {{fields: [id]}}}}
    - topics: {{prefix: "plain-"}}
      key_id: kek-schema
      value: {{schema: {{tags: [PII]}}}}
schema_registry:
  url: "{}"
  timeout_ms: 500
"#,
        registry.url()
    );
    let kapsule = RawKapsule::start(&mtls_principal_config(
        &kafka.bootstrap(),
        &who.server,
        &ca,
        &kms,
        &rules,
    ))
    .await
    .expect("kapsule");
    let down_rules = rules
        .replace(&registry.url(), &dead)
        .replace("typed-", "down-");
    let kapsule_down = RawKapsule::start(&mtls_principal_config(
        &kafka.bootstrap(),
        &who.server,
        &ca,
        &kms,
        &down_rules,
    ))
    .await
    .expect("kapsule (registry down)");
    let url = registry.url();
    let mut app = ck_ssl(&ca, Some(&who.app));
    app.extend([
        "--config".to_string(),
        "message.timeout.ms=8000".to_string(),
    ]);

    // Not in the wire format: plain JSON bytes on a schema-fields topic.
    let files = tempfile::tempdir().unwrap();
    let plain = unique_name("plain-values");
    kafka.create_topic(&plain, 1).await.unwrap();
    let out = run_python(
        "ck_produce_report.py",
        &[
            vec![
                "--bootstrap".into(),
                kapsule.listen.clone(),
                "--topic".into(),
                plain.clone(),
                "--input".into(),
            ],
            vec![write_records(&files, &[r#"{"ssn":"SSNMARK"}"#])],
            app.clone(),
        ]
        .concat(),
        CLIENT_TIMEOUT,
    )
    .await
    .unwrap()
    .json;
    assert_eq!(out["results"][0]["name"], "INVALID_RECORD", "{out}");
    assert_eq!(out["results"][0]["retriable"], false, "{out}");
    kapsule
        .wait_log(
            "not in the Confluent Schema Registry wire format",
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // A selected field that cannot hold ciphertext: `id` is an Avro long.
    let typed = unique_name("typed-orders");
    kafka.create_topic(&typed, 1).await.unwrap();
    let out = produce(
        &kapsule.listen,
        &url,
        &typed,
        "avro",
        ORDER_AVRO,
        &orders(1, false),
        &app,
    )
    .await;
    assert_eq!(out["results"][0]["name"], "INVALID_RECORD", "{out}");
    kapsule
        .wait_log("field `id` is an Avro long", Duration::from_secs(10))
        .await
        .unwrap();

    // Registry down: retried by the client until its timeout, never stored.
    let down = unique_name("down-orders");
    kafka.create_topic(&down, 1).await.unwrap();
    let out = produce(
        &kapsule_down.listen,
        &url,
        &down,
        "avro",
        ORDER_AVRO,
        &orders(1, false),
        &app,
    )
    .await;
    assert!(out["results"][0].get("offset").is_none(), "{out}");
    kapsule_down
        .wait_log("schema registry unavailable", Duration::from_secs(10))
        .await
        .unwrap();

    for t in [&plain, &typed, &down] {
        let out = ck_schema(
            "consume",
            &kafka.bootstrap(),
            &url,
            t,
            "avro",
            &["--count".into(), "1".into(), "--timeout".into(), "4".into()],
        )
        .await;
        assert_eq!(out["records"], json!([]), "{t} holds records");
    }
}

/// Writes `values` as a `ck_produce_report.py` input file in `dir`.
fn write_records(dir: &tempfile::TempDir, values: &[&str]) -> String {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"key": null, "value": hex::encode(v), "headers": []}))
        .collect();
    write_json(
        dir,
        "records.json",
        &json!({"records": records}).to_string(),
    )
}
