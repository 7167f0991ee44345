//! kafkajs: produce and consume through Kapsule, bytes exact, and readable by librdkafka too.

use rstest::rstest;

use kapsule_integration::records::{assert_records_match, write_records_file, ConsumedRecord};
use kapsule_integration::{run_node, unique_name, RecordsMode, TestRecord};

use crate::common::{args, ck_consume, Rig, CLIENT_TIMEOUT};

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn kafkajs_produce_and_consume(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
    #[values("none", "gzip")] compression: &str,
) {
    let rig = Rig::start(mode).await;
    let topic = rig.topic("kafkajs", 1).await;
    // kafkajs takes headers as an object: repeated keys must be adjacent (they are in `varied`).
    // Known kafkajs 2.2.4 limit: it cannot encode a null header value (TypeError in
    // sizeOfHeaders), so null header values are left out here (librdkafka covers them).
    let mut records = TestRecord::varied(&format!("js-{compression}"), 25);
    for r in &mut records {
        r.headers.retain(|(_, v)| v.is_some());
    }
    let file = write_records_file(&records).unwrap();
    let mut a = args(&[
        "--bootstrap",
        &rig.bootstrap(),
        "--topic",
        &topic,
        "--compression",
        compression,
        "--input",
    ]);
    a.push(file.path().display().to_string());
    let out = run_node("kafkajs_produce.js", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafkajs produce");
    assert_eq!(out.json["produced"], records.len());

    let group = unique_name("js-group");
    let a = args(&[
        "--bootstrap",
        &rig.bootstrap(),
        "--topic",
        &topic,
        "--group",
        &group,
        "--count",
        &records.len().to_string(),
        "--timeout",
        "60",
    ]);
    let out = run_node("kafkajs_consume.js", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafkajs consume");
    let consumed = ConsumedRecord::list_from_output(&out.json).unwrap();
    assert_records_match(&records, &consumed);

    // The same bytes through a different client implementation.
    let consumed = ck_consume(&rig.bootstrap(), &topic, records.len(), &[]).await;
    assert_records_match(&records, &consumed);
}
