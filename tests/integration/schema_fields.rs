//! Schema-aware field encryption with a real Schema Registry (Apicurio, Confluent-compatible API)
//! and confluent-kafka's own serializers: Avro and JSON Schema records produced through Kapsule
//! to Apache Kafka, their selected fields encrypted at rest while the records stay valid under
//! their schema id; read back byte-exact by a principal `reveal_to` allows and as valid records
//! with ciphertext fields by one it withholds from, or straight from the broker.

use std::path::PathBuf;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::tls::{ck_ssl, Issued, KeyKind, Pki, RawKapsule};
use kapsule_integration::{run_python, unique_name, KafkaCluster, SchemaRegistry};
use serde_json::{json, Value};

use crate::common::CLIENT_TIMEOUT;
use crate::reveal::mtls_principal_config;

pub(crate) const ORDER_AVRO: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "ssn", "type": "string", "confluent:tags": ["PII"]},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
      {"name": "name", "type": "string"},
      {"name": "email", "type": ["null", "string"], "default": null, "confluent:tags": ["PII"]},
      {"name": "photo", "type": "bytes", "confluent:tags": ["PII"]}
    ]}},
    {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
      "fields": [{"name": "card", "type": "string", "confluent:tags": ["PII"]},
                 {"name": "qty", "type": "int"}]}}},
    {"name": "note", "type": "string"}
  ]
}"#;

/// Version 2 of the same subject: one field added (tagged), so a new schema id.
fn order_avro_v2() -> String {
    ORDER_AVRO.replace(
        r#"{"name": "note", "type": "string"}"#,
        r#"{"name": "note", "type": "string"},
    {"name": "loyalty", "type": "string", "default": "", "confluent:tags": ["PII"]}"#,
    )
}

/// The protected fields, as `kapsule.withheld` names them (first occurrence order).
pub(crate) const PROTECTED: [&str; 4] = ["ssn", "customer.email", "customer.photo", "lines.card"];

pub(crate) fn orders(n: usize, v2: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut o = json!({
                "id": i,
                "ssn": format!("SSNMARK-{i:04}"),
                "customer": {
                    "name": format!("Name {i}"),
                    "email": if i % 3 == 0 { Value::Null } else { json!(format!("EMAILMARK-{i}@example.com")) },
                    "photo": {"hex": hex::encode(format!("PHOTOMARK-{i}"))},
                },
                "lines": [
                    {"card": format!("CARDMARK-{i}-a"), "qty": 1},
                    {"card": format!("CARDMARK-{i}-b"), "qty": 2}
                ],
                "note": format!("note {i}"),
            });
            if v2 {
                o["loyalty"] = json!(format!("LOYALTYMARK-{i}"));
            }
            o
        })
        .collect()
}

fn policy(prefix: &str, registry_url: &str, extra: &str) -> String {
    policy_selecting(prefix, "{fields: [note], tags: [PII]}", registry_url, extra)
}

fn policy_selecting(prefix: &str, selection: &str, registry_url: &str, extra: &str) -> String {
    format!(
        r#"policy:
  rules:
    - topics: {{prefix: "{prefix}"}}
      key_id: kek-schema
      value: {{schema: {selection}}}
      reveal_to:
        - {{principal: app, reveal: all}}
        - {{principal: analytics, reveal: {{schema_fields: [lines.card]}}}}
      reveal_default: ciphertext
schema_registry:
  url: "{registry_url}"
{extra}"#
    )
}

pub(crate) struct Principals {
    pub(crate) pki: Pki,
    pub(crate) server: Issued,
    pub(crate) app: Issued,
    pub(crate) analytics: Issued,
}

pub(crate) fn principals() -> Principals {
    let pki = Pki::new("schema").unwrap();
    let server = pki
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let app = pki.issue("app", KeyKind::EcPkcs8, false, false).unwrap();
    let analytics = pki
        .issue("analytics", KeyKind::EcPkcs8, false, false)
        .unwrap();
    Principals {
        pki,
        server,
        app,
        analytics,
    }
}

/// What every schema test starts from: the shared registry and Kafka broker, the mTLS principals
/// (`kapsule`, `app`, `analytics`), a local KMS and Kapsule with the config `policy_for` writes
/// for the registry's URL.
pub(crate) struct SchemaRig {
    pub(crate) registry: &'static SchemaRegistry,
    pub(crate) kafka: &'static KafkaCluster,
    pub(crate) who: Principals,
    pub(crate) ca: PathBuf,
    pub(crate) kapsule: RawKapsule,
    /// Kept alive for Kapsule's key file.
    _kms: LocalKms,
}

impl SchemaRig {
    pub(crate) async fn start(policy_for: impl FnOnce(&str) -> String) -> SchemaRig {
        let registry = SchemaRegistry::shared().await.expect("registry");
        let kafka = KafkaCluster::shared().await.expect("kafka");
        let who = principals();
        let ca = who.pki.ca_cert();
        let kms = LocalKms::new().unwrap();
        let kapsule = RawKapsule::start(&mtls_principal_config(
            &kafka.bootstrap(),
            &who.server,
            &ca,
            &kms,
            &policy_for(&registry.url()),
        ))
        .await
        .expect("kapsule");
        SchemaRig {
            registry,
            kafka,
            who,
            ca,
            kapsule,
            _kms: kms,
        }
    }
}

/// Runs `ck_schema.py` and returns its JSON report.
pub(crate) async fn ck_schema(
    mode: &str,
    bootstrap: &str,
    registry: &str,
    topic: &str,
    format: &str,
    extra: &[String],
) -> Value {
    let mut args: Vec<String> = [
        mode,
        "--bootstrap",
        bootstrap,
        "--registry",
        registry,
        "--topic",
        topic,
        "--format",
        format,
        // The client's own deadline (delivery and consume), inside CLIENT_TIMEOUT: generous,
        // because a run that succeeds returns as soon as its records arrive, and a loaded
        // machine (JVM tests starting beside it) once took more than 30 s.
        "--timeout",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    run_python("ck_schema.py", &args, CLIENT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("ck_schema.py {mode}: {e:#}"))
        .json
}

pub(crate) fn write_json(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub(crate) async fn produce(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    format: &str,
    schema: &str,
    objects: &[Value],
    ssl: &[String],
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = vec![
        "--schema".to_string(),
        write_json(&dir, "schema.json", schema),
        "--input".to_string(),
        write_json(&dir, "input.json", &json!({"objects": objects}).to_string()),
    ];
    extra.extend(ssl.iter().cloned());
    ck_schema("produce", bootstrap, registry, topic, format, &extra).await
}

pub(crate) async fn consume(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    format: &str,
    count: usize,
    ssl: &[String],
) -> Vec<Value> {
    let mut extra = vec!["--count".to_string(), count.to_string()];
    extra.extend(ssl.iter().cloned());
    let out = ck_schema("consume", bootstrap, registry, topic, format, &extra).await;
    assert_eq!(out["errors"], json!([]), "consume errors");
    let records = out["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), count, "records read: {out}");
    records
}

pub(crate) fn delivered(out: &Value) -> Vec<String> {
    let results = out["results"].as_array().expect("results");
    for r in results {
        assert!(r.get("offset").is_some(), "not delivered: {r}");
    }
    out["serialized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn at<'a>(o: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![o];
    for seg in path.split('.') {
        cur = cur
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().map(|x| &x[seg]).collect::<Vec<_>>(),
                other => vec![&other[seg]],
            })
            .collect();
    }
    cur
}

fn is_ciphertext(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("kapsule:v1:"),
        // bytes fields: raw ciphertext, never the plaintext marker
        Value::Object(o) => o
            .get("hex")
            .and_then(Value::as_str)
            .is_some_and(|h| !String::from_utf8_lossy(&hex::decode(h).unwrap()).contains("MARK")),
        Value::Null => true, // a null optional field stays null
        _ => false,
    }
}

/// Asserts `seen` deserialized into a valid record whose `protected` fields are ciphertext and
/// whose other fields equal `want`'s.
pub(crate) fn assert_protected(seen: &Value, want: &Value, protected: &[&str]) {
    assert_eq!(seen["deserialize_error"], Value::Null, "{seen}");
    let obj = &seen["object"];
    let want = want.clone();
    for p in protected {
        for v in at(obj, p) {
            assert!(is_ciphertext(v), "{p} is not ciphertext: {v}");
        }
    }
    let mut masked_seen = obj.clone();
    let mut masked_want = want.clone();
    for p in protected {
        let (parent, leaf) = p.rsplit_once('.').map_or(("", *p), |(a, b)| (a, b));
        for o in [&mut masked_seen, &mut masked_want] {
            mask(o, parent, leaf);
        }
    }
    assert_eq!(masked_seen, masked_want, "clear fields differ");
}

fn mask(o: &mut Value, parent: &str, leaf: &str) {
    if parent.is_empty() {
        match o {
            Value::Array(a) => a.iter_mut().for_each(|x| mask(x, "", leaf)),
            Value::Object(m) if m.contains_key(leaf) => {
                m.insert(leaf.into(), json!("<protected>"));
            }
            _ => {}
        }
        return;
    }
    let (head, rest) = parent.split_once('.').unwrap_or((parent, ""));
    match o {
        Value::Array(a) => a.iter_mut().for_each(|x| mask(x, parent, leaf)),
        Value::Object(m) => {
            if let Some(x) = m.get_mut(head) {
                mask(x, rest, leaf);
            }
        }
        _ => {}
    }
}

fn withheld(seen: &Value) -> Option<Value> {
    seen["headers"].as_array()?.iter().find_map(|h| {
        (h[0] == "kapsule.withheld")
            .then(|| serde_json::from_slice(&hex::decode(h[1].as_str().unwrap()).unwrap()).unwrap())
    })
}

/// Avro through Kapsule: tagged and named fields encrypted at rest (strings as `kapsule:v1:`
/// text, bytes raw, nulls left null, every array element), the record still decodes with the
/// registry; `app` gets the producer's bytes back exactly; `analytics` sees `lines.card` only;
/// a second schema version is picked up without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn avro_fields_are_encrypted_at_rest_and_revealed_per_principal() {
    let rig = SchemaRig::start(|url| policy("orders-avro-", url, "")).await;
    let SchemaRig {
        registry,
        kafka,
        who,
        ca,
        kapsule,
        ..
    } = &rig;
    let topic = unique_name("orders-avro");
    kafka.create_topic(&topic, 1).await.unwrap();
    let url = registry.url();
    let app = ck_ssl(ca, Some(&who.app));

    let v1 = orders(6, false);
    let sent_v1 =
        delivered(&produce(&kapsule.listen, &url, &topic, "avro", ORDER_AVRO, &v1, &app).await);
    // Evolution: a new version of the subject, so a new schema id, no restart.
    let v2 = orders(3, true);
    let out = produce(
        &kapsule.listen,
        &url,
        &topic,
        "avro",
        &order_avro_v2(),
        &v2,
        &app,
    )
    .await;
    let sent_v2 = delivered(&out);
    assert_ne!(
        sent_v1[0][2..10],
        sent_v2[0][2..10],
        "v2 must have a new schema id"
    );
    let sent: Vec<String> = sent_v1.into_iter().chain(sent_v2).collect();
    let objects: Vec<Value> = v1.iter().chain(&v2).cloned().collect();
    let n = sent.len();
    let mut protected = PROTECTED.to_vec();
    protected.push("note");

    // At rest: valid records under their schema ids, protected fields ciphertext.
    let stored = consume(&kafka.bootstrap(), &url, &topic, "avro", n, &[]).await;
    for (i, (s, o)) in stored.iter().zip(&objects).enumerate() {
        assert_eq!(
            s["value"].as_str().unwrap()[..10],
            sent[i][..10],
            "wire prefix kept"
        );
        let mut p = protected.clone();
        if i >= 6 {
            p.push("loyalty");
        }
        assert_protected(s, o, &p);
        let raw = String::from_utf8_lossy(&hex::decode(s["value"].as_str().unwrap()).unwrap())
            .into_owned();
        assert!(!raw.contains("MARK"), "plaintext at rest: {raw}");
        assert!(raw.contains("Name "), "clear fields stay readable at rest");
    }

    // app: the producer's bytes, exactly, and the original objects.
    let seen = consume(&kapsule.listen, &url, &topic, "avro", n, &app).await;
    for ((s, want), o) in seen.iter().zip(&sent).zip(&objects) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(s["object"], o.clone());
        assert!(withheld(s).is_none());
    }

    // analytics: lines.card in clear, the rest still ciphertext, and told which.
    let seen = consume(
        &kapsule.listen,
        &url,
        &topic,
        "avro",
        n,
        &ck_ssl(ca, Some(&who.analytics)),
    )
    .await;
    for (i, (s, o)) in seen.iter().zip(&objects).enumerate() {
        let mut p: Vec<&str> = protected
            .iter()
            .copied()
            .filter(|p| *p != "lines.card")
            .collect();
        if i >= 6 {
            p.push("loyalty");
        }
        assert_protected(s, o, &p);
        assert_eq!(at(&s["object"], "lines.card"), at(o, "lines.card"));
        let w = withheld(s).expect("kapsule.withheld header");
        let listed: Vec<&str> = w["schema_fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for f in &p {
            if *f == "customer.email" && i % 3 == 0 {
                continue; // null: nothing encrypted
            }
            assert!(listed.contains(f), "{f} not in {w}");
        }
        assert!(!listed.contains(&"lines.card"), "{w}");
    }
}

const ORDER_JSON_SCHEMA: &str = r#"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "Order", "type": "object",
  "properties": {
    "id": {"type": "integer"},
    "ssn": {"type": "string", "confluent:tags": ["PII"]},
    "customer": {"type": "object", "properties": {
      "name": {"type": "string"},
      "email": {"type": ["string", "null"], "confluent:tags": ["PII"]}
    }},
    "note": {"type": "string"}
  }
}"#;

/// JSON Schema through Kapsule: the body after the wire prefix is JSON; tagged properties are
/// ciphertext strings at rest (the JSON deserializer still validates them against the schema),
/// and `app` gets the exact bytes back.
#[tokio::test(flavor = "multi_thread")]
async fn json_schema_fields_are_encrypted_at_rest_and_restored_byte_exact() {
    let rig = SchemaRig::start(|url| policy("orders-json-", url, "")).await;
    let SchemaRig {
        registry,
        kafka,
        who,
        ca,
        kapsule,
        ..
    } = &rig;
    let topic = unique_name("orders-json");
    kafka.create_topic(&topic, 1).await.unwrap();
    let url = registry.url();
    let app = ck_ssl(ca, Some(&who.app));
    let objects: Vec<Value> = (0..5)
        .map(|i| json!({"id": i, "ssn": format!("SSNMARK-{i}"), "customer": {"name": format!("Name {i}"), "email": format!("EMAILMARK-{i}")}, "note": format!("note {i}")}))
        .collect();
    let sent = delivered(
        &produce(
            &kapsule.listen,
            &url,
            &topic,
            "json",
            ORDER_JSON_SCHEMA,
            &objects,
            &app,
        )
        .await,
    );

    let stored = consume(&kafka.bootstrap(), &url, &topic, "json", objects.len(), &[]).await;
    for (s, o) in stored.iter().zip(&objects) {
        assert_eq!(s["deserialize_error"], Value::Null, "{s}");
        let obj = &s["object"];
        for p in ["ssn", "customer.email", "note"] {
            for v in at(obj, p) {
                assert!(is_ciphertext(v), "{p}: {v}");
            }
        }
        assert_eq!(obj["id"], o["id"]);
        assert_eq!(obj["customer"]["name"], o["customer"]["name"]);
        let raw = hex::decode(s["value"].as_str().unwrap()).unwrap();
        assert_eq!(raw[0], 0, "magic byte kept");
        assert!(!String::from_utf8_lossy(&raw).contains("MARK"));
    }
    let seen = consume(&kapsule.listen, &url, &topic, "json", objects.len(), &app).await;
    for ((s, want), o) in seen.iter().zip(&sent).zip(&objects) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(&s["object"], o);
    }
}

/// A Protobuf message for `ck_schema.py` (built from this spec without protoc; the Python
/// serializer registers it as a base64 `FileDescriptorProto`, message index `[0]`). `ssn` and
/// `cards` carry `(confluent.field_meta) = { tags: ["PII"] }`.
const ORDER_PROTO_SPEC: &str = r#"{"package": "shop", "message": "Order", "fields": [
  ["id", "int64", 1], ["ssn", "string", 2, ["PII"]], ["cards", "string", 3, "repeated", ["PII"]],
  ["photo", "bytes", 4], ["note", "string", 5]]}"#;

/// Protobuf through Kapsule: string fields selected by their `(confluent.field_meta).tags`
/// (repeated ones every occurrence) and a bytes field selected by path are ciphertext at rest
/// while the message still parses; `app` gets the exact bytes back.
#[tokio::test(flavor = "multi_thread")]
async fn protobuf_fields_are_encrypted_at_rest_and_restored_byte_exact() {
    let rig = SchemaRig::start(|url| {
        policy_selecting("orders-proto-", "{fields: [photo], tags: [PII]}", url, "")
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
    let topic = unique_name("orders-proto");
    kafka.create_topic(&topic, 1).await.unwrap();
    let url = registry.url();
    let app = ck_ssl(ca, Some(&who.app));
    let objects: Vec<Value> = (0..4)
        .map(|i| {
            json!({"id": i + 1, "ssn": format!("SSNMARK-{i}"), "cards": [format!("CARDMARK-{i}a"), format!("CARDMARK-{i}b")],
                   "photo": {"hex": hex::encode(format!("PHOTOMARK-{i}"))}, "note": format!("note {i}")})
        })
        .collect();
    let sent = delivered(
        &produce(
            &kapsule.listen,
            &url,
            &topic,
            "protobuf",
            ORDER_PROTO_SPEC,
            &objects,
            &app,
        )
        .await,
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = vec![
        "--schema".to_string(),
        write_json(&dir, "spec.json", ORDER_PROTO_SPEC),
    ];

    let stored = consume(
        &kafka.bootstrap(),
        &url,
        &topic,
        "protobuf",
        objects.len(),
        &spec,
    )
    .await;
    for (s, o) in stored.iter().zip(&objects) {
        assert_eq!(s["deserialize_error"], Value::Null, "{s}");
        let obj = &s["object"];
        assert!(
            obj["ssn"].as_str().unwrap().starts_with("kapsule:v1:"),
            "{obj}"
        );
        for c in obj["cards"].as_array().unwrap() {
            assert!(c.as_str().unwrap().starts_with("kapsule:v1:"), "{obj}");
        }
        assert_eq!(obj["note"], o["note"]);
        assert_eq!(
            obj["id"],
            o["id"].to_string(),
            "int64 as MessageToDict writes it"
        );
        let raw = hex::decode(s["value"].as_str().unwrap()).unwrap();
        // SSNMARK, CARDMARK (by tag) and PHOTOMARK (by path) all gone.
        assert!(!String::from_utf8_lossy(&raw).contains("MARK"));
    }
    let mut app_spec = app.clone();
    app_spec.extend(spec.iter().cloned());
    let seen = consume(
        &kapsule.listen,
        &url,
        &topic,
        "protobuf",
        objects.len(),
        &app_spec,
    )
    .await;
    for (s, want) in seen.iter().zip(&sent) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(s["deserialize_error"], Value::Null);
    }
}

/// A record type registered under its own subject, which [`ORDER_WITH_REFERENCE_AVRO`]
/// references by its full name.
const CUSTOMER_AVRO: &str = r#"{
  "type": "record", "name": "Customer", "namespace": "shop.party",
  "fields": [
    {"name": "name", "type": "string"},
    {"name": "email", "type": "string", "confluent:tags": ["PII"]}
  ]
}"#;

const ORDER_WITH_REFERENCE_AVRO: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "customer", "type": "shop.party.Customer"},
    {"name": "ssn", "type": "string", "confluent:tags": ["PII"]}
  ]
}"#;

/// Avro schema references: the writer schema names a record type of another subject (registered
/// by confluent-kafka's serializer with `references`). Kapsule fetches the referenced subject
/// version, finds the tagged field inside the referenced type, and the record stays valid at
/// rest; `app` gets the exact bytes back.
#[tokio::test(flavor = "multi_thread")]
async fn avro_schema_references_to_other_subjects_are_resolved() {
    references_to_other_subjects_are_resolved(
        "avro",
        "orders-ref",
        "shop.party.Customer",
        CUSTOMER_AVRO,
        ORDER_WITH_REFERENCE_AVRO,
    )
    .await;
}

/// Produces four orders in `format` whose writer schema `order` references `customer` (registered
/// under `<topic>-customer` by the serializer, named `reference`) through Kapsule with a `PII`
/// tag rule: the registry holds the reference, the tagged fields of both schemas are ciphertext
/// at rest while the clear ones stay readable, and `app` reads the exact bytes back.
async fn references_to_other_subjects_are_resolved(
    format: &str,
    prefix: &str,
    reference: &str,
    customer: &str,
    order: &str,
) {
    let rig =
        SchemaRig::start(|url| policy_selecting(&format!("{prefix}-"), "{tags: [PII]}", url, ""))
            .await;
    let SchemaRig {
        registry,
        kafka,
        who,
        ca,
        kapsule,
        ..
    } = &rig;
    let topic = unique_name(prefix);
    kafka.create_topic(&topic, 1).await.unwrap();
    let url = registry.url();
    let app = ck_ssl(ca, Some(&who.app));
    let objects: Vec<Value> = (0..4)
        .map(|i| {
            json!({"id": i, "customer": {"name": format!("Name {i}"), "email": format!("EMAILMARK-{i}@example.com")},
                   "ssn": format!("SSNMARK-{i}")})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut extra = vec![
        "--reference".to_string(),
        format!(
            "{reference}={topic}-customer={}",
            write_json(&dir, "customer.json", customer)
        ),
    ];
    extra.extend(app.iter().cloned());
    let sent = delivered(
        &produce(
            &kapsule.listen,
            &url,
            &topic,
            format,
            order,
            &objects,
            &extra,
        )
        .await,
    );
    // The registry holds the schema with its reference, as the serializer registered it.
    let (status, body) = registry
        .get(&format!("/subjects/{topic}-value/versions/latest"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("{topic}-customer")), "{body}");

    let stored = consume(&kafka.bootstrap(), &url, &topic, format, objects.len(), &[]).await;
    for (s, o) in stored.iter().zip(&objects) {
        assert_protected(s, o, &["ssn", "customer.email"]);
        let raw = String::from_utf8_lossy(&hex::decode(s["value"].as_str().unwrap()).unwrap())
            .into_owned();
        assert!(!raw.contains("MARK"), "plaintext at rest: {raw}");
        assert!(raw.contains("Name "), "clear fields stay readable at rest");
    }
    let seen = consume(&kapsule.listen, &url, &topic, format, objects.len(), &app).await;
    for ((s, want), o) in seen.iter().zip(&sent).zip(&objects) {
        assert_eq!(s["value"].as_str().unwrap(), want, "byte-exact for app");
        assert_eq!(&s["object"], o);
    }
}

/// A JSON Schema registered under its own subject, which [`ORDER_WITH_REFERENCE_JSON`]
/// references by the name `customer.schema.json`.
const CUSTOMER_JSON: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "email": {"type": "string", "confluent:tags": ["PII"]}
  },
  "required": ["name", "email"]
}"#;

const ORDER_WITH_REFERENCE_JSON: &str = r##"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "type": "object",
  "properties": {
    "id": {"type": "integer"},
    "customer": {"$ref": "customer.schema.json"},
    "ssn": {"type": "string", "confluent:tags": ["PII"]}
  },
  "required": ["id", "customer", "ssn"]
}"##;

/// JSON Schema references (Confluent's semantics): the writer schema's `$ref` names a schema of
/// another subject by its reference name, as confluent-kafka's JSONSerializer registers it.
/// Kapsule fetches the referenced subject version, encrypts the tagged property inside it, and
/// the record stays valid at rest for JSONDeserializer; `app` gets the exact bytes back.
#[tokio::test(flavor = "multi_thread")]
async fn json_schema_references_to_other_subjects_are_resolved() {
    references_to_other_subjects_are_resolved(
        "json",
        "orders-jref",
        "customer.schema.json",
        CUSTOMER_JSON,
        ORDER_WITH_REFERENCE_JSON,
    )
    .await;
}
