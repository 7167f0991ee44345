//! Fail closed (issue 8): what clients see when records on the wire are not what Kapsule wrote.
//!
//! - `on_decrypt_failure: skip` dropping a whole compressed batch keeps every client reading.
//! - Client-supplied `kapsule.enc` headers are refused on Produce, on every topic.
//! - Descriptors stored on a topic no rule covers are delivered as stored, not failed.

use rstest::rstest;

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::records::ConsumedRecord;
use kapsule_integration::{run_node, run_python, unique_name, Broker, TestRecord};

use crate::common::{args, ck_produce, CLIENT_TIMEOUT};
use crate::encryption::{consume_report, produce_report, start_kapsule, topic};

const RULES: &str = r#"policy:
  rules:
    - topics: {prefix: "skip-"}
      key_id: kek-skip
      require_encrypted: true
      on_decrypt_failure: skip
    - topics: {prefix: "enc-"}
      key_id: kek-enc
"#;

/// The values a consumer got, as strings.
fn values(records: &[ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|c| String::from_utf8_lossy(c.record.value.as_deref().unwrap_or_default()).into())
        .collect()
}

async fn kafka_python_consume(bootstrap: &str, topic: &str, count: usize) -> Vec<ConsumedRecord> {
    let group = unique_name("kp-group");
    let a = args(&[
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        &group,
        "--max",
        &count.to_string(),
        "--timeout",
        "30",
    ]);
    let out = run_python("kp_group.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafka-python consume");
    ConsumedRecord::list_from_output(&out.json).expect("parse records")
}

async fn kafkajs_consume(bootstrap: &str, topic: &str, count: usize) -> Vec<ConsumedRecord> {
    let group = unique_name("kjs-group");
    let a = args(&[
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        &group,
        "--count",
        &count.to_string(),
        "--timeout",
        "30",
    ]);
    let out = run_node("kafkajs_consume.js", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafkajs consume");
    ConsumedRecord::list_from_output(&out.json).expect("parse records")
}

/// Plaintext injected behind Kapsule's back, compressed with `codec`, between genuine records on a
/// `require_encrypted` + `skip` topic: every record of the injected batch is dropped, and
/// confluent-kafka (librdkafka), kafka-python and kafkajs all read the genuine records before and
/// after it (librdkafka used to abort on the empty compressed batch Kapsule sent).
#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn skip_mode_drops_a_whole_compressed_batch_and_every_client_reads_on(
    #[values("none", "gzip", "snappy", "lz4", "zstd")] codec: &str,
) {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let t = topic(&broker, "skip-").await;
    let before = [
        TestRecord::kv("k", "genuine-1"),
        TestRecord::kv("k", "genuine-2"),
    ];
    let forged: Vec<TestRecord> = (0..5)
        .map(|i| TestRecord::kv("k", format!("FORGED-{i}-").repeat(40)))
        .collect();
    let after = [TestRecord::kv("k", "genuine-3")];
    ck_produce(&kapsule.bootstrap(), &t, &before, &[]).await;
    ck_produce(&broker.bootstrap(), &t, &forged, &["--compression", codec]).await;
    ck_produce(&kapsule.bootstrap(), &t, &after, &[]).await;
    let want = ["genuine-1", "genuine-2", "genuine-3"];

    let (ck, errors) = consume_report(
        &kapsule.bootstrap(),
        &t,
        &["--count", "3", "--timeout", "30"],
    )
    .await;
    assert_eq!(values(&ck), want, "confluent-kafka, {codec}: {errors:?}");
    assert!(errors.is_empty(), "confluent-kafka, {codec}: {errors:?}");
    let kp = kafka_python_consume(&kapsule.bootstrap(), &t, 3).await;
    assert_eq!(values(&kp), want, "kafka-python, {codec}");
    let kjs = kafkajs_consume(&kapsule.bootstrap(), &t, 3).await;
    assert_eq!(values(&kjs), want, "kafkajs, {codec}");
    // Offsets are those of the genuine records: the skipped offsets were stepped over.
    assert_eq!(ck[2].offset, 7, "{ck:?}");
    assert!(!kapsule.logs().contains("panicked"), "{}", kapsule.logs());
}

/// A producer attaching its own `kapsule.enc` header is refused with INVALID_RECORD on an
/// encrypted topic and on a topic no rule covers; nothing reaches the broker. A descriptor that
/// got onto an uncovered topic behind Kapsule's back is delivered as stored, not failed.
#[tokio::test(flavor = "multi_thread")]
async fn client_supplied_descriptors_are_refused_and_uncovered_topics_stay_readable() {
    let broker = Broker::start_default().await.expect("start the broker");
    let kms = LocalKms::new().unwrap();
    let kapsule = start_kapsule(&broker, &kms.yaml(), RULES).await;
    let mut forged = TestRecord::kv("k", "forged");
    forged.headers.push((
        "kapsule.enc".into(),
        Some(b"\x01\x01forged-descriptor".to_vec()),
    ));
    for prefix in ["enc-", "plain-"] {
        let t = topic(&broker, prefix).await;
        let out = produce_report(&kapsule.bootstrap(), &t, &[forged.clone()], &[]).await;
        assert_eq!(out["delivered"], 0, "{prefix}: {out}");
        let r = &out["results"][0];
        assert_eq!(r["name"], "INVALID_RECORD", "{prefix}: {out}");
    }
    // Stored on an uncovered topic directly: consumers through Kapsule get it as stored.
    let plain = topic(&broker, "plain-").await;
    ck_produce(&broker.bootstrap(), &plain, &[forged.clone()], &[]).await;
    let (got, errors) = consume_report(
        &kapsule.bootstrap(),
        &plain,
        &["--count", "1", "--timeout", "20"],
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.value, forged.value);
    assert_eq!(
        got[0].record.header("kapsule.enc"),
        forged.header("kapsule.enc")
    );
    assert_eq!(
        kapsule.logs().matches("refusing produce partition").count(),
        2,
        "{}",
        kapsule.logs()
    );
}
