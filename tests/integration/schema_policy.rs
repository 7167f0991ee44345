//! A `kapsule:policy@0.3.0` policy choosing schema fields: the `schema-pii` example in Rust
//! (`policies/schema-pii/rust`), Python and JavaScript (`policies/schema-pii/{python,js}`, on
//! their SDKs' 0.3.0 helpers) behind Kapsule, with the real registry (Apicurio) and Apache Kafka, records
//! produced by confluent-kafka's Avro serializer. The policy encrypts every field tagged `PII`,
//! the whole value of tenant `x`'s records, and passes `class: public` ones, from a memo on
//! those two headers. One case per language, the same assertions.
//!
//! And the `schema-by-name` fixture (`policies/schema-by-name/rust`), which chooses fields
//! itself from the schema Kapsule describes (`describe-schema`): every string or bytes field
//! whose path contains `email`.

use std::path::Path;

use kapsule_integration::tls::ck_ssl;
use kapsule_integration::unique_name;
use kapsule_test_fixtures::policy_artifacts;
use serde_json::{json, Value};

use crate::policies::binding;
use crate::polyglot::{built, policy_check, Lang, LIMITS};
use crate::schema_fields::{
    assert_protected, ck_schema, consume, delivered, orders, write_json, SchemaRig, ORDER_AVRO,
    PROTECTED,
};

/// Headers of record `i`: tenant `x` (whole value), tenant `y` (PII fields), tenant `y` with
/// `class: public` (clear).
fn headers(i: usize) -> Vec<(&'static str, &'static str)> {
    match i % 3 {
        0 => vec![("tenant", "x")],
        1 => vec![("tenant", "y")],
        _ => vec![("tenant", "y"), ("class", "public")],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_encrypts_pii_tagged_fields_and_whole_values_of_one_tenant() {
    let art = policy_artifacts().expect("the guest components kapsule-test-fixtures built");
    schema_pii_through_kapsule(&art.path("schema-pii"), "").await;
}

/// The same with the Python twin, built by componentize-py through the Python SDK.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_policy_encrypts_pii_tagged_fields_and_whole_values_of_one_tenant() {
    interpreted_schema_pii(Lang::Python).await;
}

/// The same with the JavaScript twin, built by componentize-js through the JS SDK.
#[tokio::test(flavor = "multi_thread")]
async fn a_js_policy_encrypts_pii_tagged_fields_and_whole_values_of_one_tenant() {
    interpreted_schema_pii(Lang::Js).await;
}

/// The schema-pii example of `lang` built, shown by `kapsule policy check` to make the three
/// decisions from the two-header memo (which also compiles it into the cache Kapsule loads from,
/// as an operator's check would), then run through Kapsule under the limits of the other
/// interpreted-language tests (calls share two cores with the whole suite).
async fn interpreted_schema_pii(lang: Lang) {
    let module = built(lang, "schema-pii").await;
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            let hs: serde_json::Map<String, Value> = headers(i)
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({"key": format!("k{i}"), "value": "v", "headers": hs}).to_string()
        })
        .collect();
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let (ok, out) = policy_check(
        &module,
        &[
            "--config",
            r#"{"whole_value_tenants": ["x"]}"#,
            "--allowed-key-id",
            "kek-*",
            "--call-timeout-ms",
            "5000",
            "--topic",
            "orders-pol-1",
            "--records",
            samples.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("memo key: headers `tenant`, `class`"), "{out}");
    for (i, decided) in [
        "encrypt with key `kek-orders-pol-1`: whole value",
        "encrypt with key `kek-orders-pol-1`: schema fields [] and fields tagged [PII]",
        "pass",
    ]
    .iter()
    .enumerate()
    {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("record {i} (key \"k{i}\"")))
            .unwrap_or_else(|| panic!("no line for record {i} in:\n{out}"));
        assert!(
            line.ends_with(&format!("): {decided}")),
            "record {i}: {line}"
        );
    }
    schema_pii_through_kapsule(&module, LIMITS).await;
}

/// `module` (a build of the schema-pii example, `limits` its `policy:` limits section) bound to
/// `orders-pol-*` with `whole_value_tenants: [x]`: nine Avro records of three kinds produced
/// through Kapsule, checked at rest on the broker and read back byte-exact by the producer.
async fn schema_pii_through_kapsule(module: &Path, limits: &str) {
    let rig = SchemaRig::start(|url| {
        format!(
            "policy:\n  watch: false\n{limits}  bindings:\n{}schema_registry:\n  url: \"{url}\"\n",
            binding(
                "orders-pol-",
                module,
                r#"{"whole_value_tenants": ["x"]}"#,
                &["kek-*"]
            )
        )
    })
    .await;
    let objects = orders(9, false);
    let header_lists: Vec<Value> = (0..objects.len()).map(|i| json!(headers(i))).collect();
    let input = json!({"objects": objects, "headers": header_lists});
    let Produced {
        topic,
        url,
        app,
        sent,
    } = produce_orders(&rig, "orders-pol", &input).await;
    let (kafka, kapsule) = (rig.kafka, &rig.kapsule);
    let n = sent.len();

    // At rest, straight from the broker.
    let stored = consume(&kafka.bootstrap(), &url, &topic, "avro", n, &[]).await;
    for (i, (s, o)) in stored.iter().zip(&objects).enumerate() {
        let value = s["value"].as_str().unwrap();
        let raw = String::from_utf8_lossy(&hex::decode(value).unwrap()).into_owned();
        match i % 3 {
            0 => {
                assert_ne!(value, sent[i], "tenant x: whole value encrypted");
                assert!(
                    !raw.contains("MARK") && !raw.contains("Name "),
                    "tenant x record {i} readable at rest: {raw}"
                );
                assert!(s["object"].is_null(), "not a registry record any more: {s}");
            }
            1 => {
                assert_eq!(value[..10], sent[i][..10], "wire prefix kept");
                assert_protected(s, o, &PROTECTED);
                assert!(!raw.contains("MARK"), "PII in clear at rest: {raw}");
                assert!(raw.contains("Name "), "untagged fields stay readable");
            }
            _ => assert_eq!(value, sent[i], "class public passes in clear"),
        }
    }

    // The producer's principal reads every record back byte-exact.
    let seen = consume(&kapsule.listen, &url, &topic, "avro", n, &app).await;
    for ((s, want), o) in seen.iter().zip(&sent).zip(&objects) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(s["object"], o.clone());
    }
}

/// A policy that reads the writer schema through `describe-schema` and encrypts the fields
/// whose path contains `email` (here only `customer.email`, a nullable string), refusing
/// records whose schema the registry does not name under `<topic>-value` (so the subject Kapsule
/// reports is checked against Apicurio's answer): at rest exactly
/// that field is ciphertext, the rest (tagged `PII` or not) stays in clear, and the producer's
/// principal reads every record back byte-exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_chooses_schema_fields_by_name_from_the_described_schema() {
    let art = policy_artifacts().expect("the guest components kapsule-test-fixtures built");
    let module = art.path("schema-by-name");
    let rig = SchemaRig::start(|url| {
        format!(
            "policy:\n  watch: false\n  bindings:\n{}schema_registry:\n  url: \"{url}\"\n",
            binding(
                "orders-byname-",
                &module,
                r#"{"subject": "${topic}-value"}"#,
                &["kek-*"]
            )
        )
    })
    .await;
    let objects = orders(6, false);
    let Produced {
        topic,
        url,
        app,
        sent,
    } = produce_orders(&rig, "orders-byname", &json!({ "objects": objects })).await;
    let (kafka, kapsule) = (rig.kafka, &rig.kapsule);
    let n = sent.len();
    assert_eq!(n, objects.len(), "every record delivered");

    // At rest, straight from the broker: a valid record under the same schema id whose only
    // ciphertext is `customer.email`.
    let stored = consume(&kafka.bootstrap(), &url, &topic, "avro", n, &[]).await;
    for (i, (s, o)) in stored.iter().zip(&objects).enumerate() {
        let value = s["value"].as_str().unwrap();
        assert_eq!(value[..10], sent[i][..10], "wire prefix kept");
        assert_protected(s, o, &["customer.email"]);
        let raw = String::from_utf8_lossy(&hex::decode(value).unwrap()).into_owned();
        assert!(!raw.contains("EMAILMARK"), "email in clear at rest: {raw}");
        assert!(
            raw.contains("SSNMARK") && raw.contains("CARDMARK"),
            "fields without `email` in their path stay in clear: {raw}"
        );
    }

    // The producer's principal reads every record back byte-exact.
    let seen = consume(&kapsule.listen, &url, &topic, "avro", n, &app).await;
    for ((s, want), o) in seen.iter().zip(&sent).zip(&objects) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(s["object"], o.clone());
    }
}

/// What [`produce_orders`] produced: the topic, the registry URL, the producer's client
/// settings and the delivered values (hex).
struct Produced {
    topic: String,
    url: String,
    app: Vec<String>,
    sent: Vec<String>,
}

/// Creates a topic named after `prefix` and produces `input` (`{"objects": [..], "headers":
/// [..]}`, Avro under [`ORDER_AVRO`]) to it through the rig's Kapsule as principal `app`.
async fn produce_orders(rig: &SchemaRig, prefix: &str, input: &Value) -> Produced {
    let topic = unique_name(prefix);
    rig.kafka.create_topic(&topic, 1).await.unwrap();
    let url = rig.registry.url();
    let app = ck_ssl(&rig.ca, Some(&rig.who.app));
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--schema".to_string(),
        write_json(&dir, "schema.json", ORDER_AVRO),
        "--input".to_string(),
        write_json(&dir, "input.json", &input.to_string()),
    ];
    args.extend(app.iter().cloned());
    let out = ck_schema("produce", &rig.kapsule.listen, &url, &topic, "avro", &args).await;
    Produced {
        topic,
        url,
        app,
        sent: delivered(&out),
    }
}
