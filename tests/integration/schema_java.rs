//! Schema-field encryption with the Java client and Apicurio Registry's own Avro serde (Maven
//! Central): the serializer registers the schema through Apicurio's v3 API, splitting the nested
//! record into its own artifact that the value schema references, and writes the Confluent wire
//! format; Kapsule reads the schema and its reference through the Confluent-compatible API.

use std::time::Duration;

use kapsule_integration::tls::Issued;
use kapsule_integration::{run_java_serde, unique_name, SchemaRegistry};
use serde_json::{json, Value};

use crate::schema_fields::SchemaRig;

/// How long one Java client run may take (JVM start-up and the serde's registry calls included).
const JAVA_TIMEOUT: Duration = Duration::from_secs(120);

/// `--config` arguments for the Java client: TLS to Kapsule trusting `ca`, presenting `client`'s
/// certificate (a PEM keystore of its key and certificate, written into `dir` as
/// `<name>-keystore.pem`: one file per principal, so a later call never replaces an earlier one's).
fn java_mtls(
    dir: &tempfile::TempDir,
    name: &str,
    ca: &std::path::Path,
    client: &Issued,
) -> Vec<String> {
    let keystore = dir.path().join(format!("{name}-keystore.pem"));
    let mut pem = std::fs::read(&client.key).unwrap();
    pem.extend(std::fs::read(&client.cert).unwrap());
    std::fs::write(&keystore, pem).unwrap();
    [
        "security.protocol=SSL".to_string(),
        "ssl.truststore.type=PEM".to_string(),
        format!("ssl.truststore.location={}", ca.display()),
        "ssl.keystore.type=PEM".to_string(),
        format!("ssl.keystore.location={}", keystore.display()),
    ]
    .into_iter()
    .flat_map(|c| ["--config".to_string(), c])
    .collect()
}

async fn java(mode: &str, bootstrap: &str, registry: &str, topic: &str, extra: &[String]) -> Value {
    let mut args: Vec<String> = [
        mode,
        "--bootstrap",
        bootstrap,
        "--registry",
        registry,
        "--topic",
        topic,
        "--count",
        "5",
        "--timeout",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    run_java_serde(&args, JAVA_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("SchemaAvroClient {mode}: {e:#}"))
        .json
}

/// The records as the Java client builds them (see SchemaAvroClient.java).
fn order(i: usize) -> Value {
    json!({"id": i, "ssn": format!("SSNMARK-{i}"),
           "customer": {"name": format!("Name {i}"), "email": format!("EMAILMARK-{i}@example.com")},
           "note": format!("note {i}")})
}

fn records(out: &Value) -> Vec<Value> {
    assert_eq!(out["timed_out"], json!(false), "{out}");
    out["records"].as_array().unwrap().clone()
}

/// Asserts a record deserialized by the Apicurio deserializer holds ciphertext in `ssn` and
/// `customer.email` and the producer's values elsewhere.
fn assert_ciphertext_fields(r: &Value, i: usize) {
    assert_eq!(r["deserialize_error"], Value::Null, "{r}");
    let o = &r["object"];
    for v in [&o["ssn"], &o["customer"]["email"]] {
        assert!(
            v.as_str().is_some_and(|s| s.starts_with("kapsule:v1:")),
            "not ciphertext: {o}"
        );
    }
    let want = order(i);
    assert_eq!(o["id"], want["id"]);
    assert_eq!(o["note"], want["note"]);
    assert_eq!(o["customer"]["name"], want["customer"]["name"]);
}

/// The Java client with Apicurio's Avro serde through Kapsule: fields tagged PII (one in the
/// value schema, one in the referenced `shop.Customer` schema) are ciphertext at rest and for a
/// withheld principal, in records Apicurio's deserializer still reads; the permitted principal
/// reads the producer's bytes exactly and the original records.
#[tokio::test(flavor = "multi_thread")]
async fn java_apicurio_avro_serde_records_are_field_encrypted_through_kapsule() {
    let shared_registry = SchemaRegistry::shared().await.expect("registry");
    let policy = format!(
        r#"policy:
  rules:
    - topics: {{prefix: "orders-java-"}}
      key_id: kek-schema
      value: {{schema: {{tags: [PII]}}}}
      reveal_to:
        - {{principal: app, reveal: all}}
      reveal_default: ciphertext
schema_registry:
  url: "{}"
"#,
        shared_registry.url()
    );
    let rig = SchemaRig::start(|_| policy).await;
    let SchemaRig {
        registry,
        kafka,
        who,
        ca,
        kapsule,
        ..
    } = &rig;
    let topic = unique_name("orders-java");
    kafka.create_topic(&topic, 1).await.unwrap();
    let native = registry.native_url();
    let dir = tempfile::tempdir().unwrap();
    let app = java_mtls(&dir, "app", ca, &who.app);
    let analytics = java_mtls(&dir, "analytics", ca, &who.analytics);

    let out = java("produce", &kapsule.listen, &native, &topic, &app).await;
    for d in out["deliveries"].as_array().unwrap() {
        assert!(d.get("offset").is_some(), "not delivered: {out}");
    }
    let sent: Vec<&str> = out["serialized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 5);
    // The serde split the schema: the value subject references shop.Customer.
    let (status, body) = registry
        .get(&format!("/subjects/{topic}-value/versions/latest"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"references\""), "{body}");

    // At rest, read with Apicurio's deserializer straight from the broker.
    let stored = records(&java("consume", &kafka.bootstrap(), &native, &topic, &[]).await);
    assert_eq!(stored.len(), 5);
    for (i, r) in stored.iter().enumerate() {
        assert_ciphertext_fields(r, i);
        assert_eq!(
            r["value"].as_str().unwrap()[..10],
            sent[i][..10],
            "wire prefix kept"
        );
        let raw = hex::decode(r["value"].as_str().unwrap()).unwrap();
        assert!(
            !String::from_utf8_lossy(&raw).contains("MARK"),
            "plaintext at rest"
        );
    }

    // app: the producer's bytes and records.
    let seen = records(&java("consume", &kapsule.listen, &native, &topic, &app).await);
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r["value"].as_str().unwrap(), sent[i], "byte-exact for app");
        assert_eq!(r["object"], order(i));
    }

    // analytics: withheld, still a valid record.
    let seen = records(&java("consume", &kapsule.listen, &native, &topic, &analytics).await);
    for (i, r) in seen.iter().enumerate() {
        assert_ciphertext_fields(r, i);
    }
}
