//! A `kapsule:policy@0.3.0` policy choosing schema fields: the `schema-pii` example
//! (`policies/schema-pii/rust`) behind Kapsule, with the real registry (Apicurio) and Apache
//! Kafka, records produced by confluent-kafka's Avro serializer. The policy encrypts every field
//! tagged `PII`, the whole value of tenant `x`'s records, and passes `class: public` ones, from
//! a memo on those two headers.

use kapsule_integration::tls::ck_ssl;
use kapsule_integration::unique_name;
use kapsule_test_fixtures::policy_artifacts;
use serde_json::{json, Value};

use crate::policies::binding;
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
    let module = art.path("schema-pii");
    let rig = SchemaRig::start(|url| {
        format!(
            "policy:\n  watch: false\n  bindings:\n{}schema_registry:\n  url: \"{url}\"\n",
            binding(
                "orders-pol-",
                &module,
                r#"{"whole_value_tenants": ["x"]}"#,
                &["kek-*"]
            )
        )
    })
    .await;
    let SchemaRig {
        registry,
        kafka,
        who,
        ca,
        kapsule,
        ..
    } = &rig;
    let topic = unique_name("orders-pol");
    kafka.create_topic(&topic, 1).await.unwrap();
    let url = registry.url();
    let app = ck_ssl(ca, Some(&who.app));

    let objects = orders(9, false);
    let dir = tempfile::tempdir().unwrap();
    let header_lists: Vec<Value> = (0..objects.len()).map(|i| json!(headers(i))).collect();
    let mut args = vec![
        "--schema".to_string(),
        write_json(&dir, "schema.json", ORDER_AVRO),
        "--input".to_string(),
        write_json(
            &dir,
            "input.json",
            &json!({"objects": objects, "headers": header_lists}).to_string(),
        ),
    ];
    args.extend(app.iter().cloned());
    let out = ck_schema("produce", &kapsule.listen, &url, &topic, "avro", &args).await;
    let sent = delivered(&out);
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
