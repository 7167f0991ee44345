//! kafka-python consumer group over 3 partitions: committed offsets survive a consumer restart,
//! so the second member instance continues exactly where the first stopped.
//!
//! Known limit (tansu 0.6.0, not Kapsule): kafka-python 3.x's default idempotent producer hangs
//! against tansu, so `kp_group.py produce` sets `enable_idempotence=False`.
//!
//! Observed limit (kafka-python 3.0.12 against tansu 0.6.0 directly, no proxy): a consumer resuming
//! from a committed offset that lies inside a multi-record batch received nothing more from that
//! partition. The producer therefore flushes after each record (`--flush-each`), so every committed
//! offset falls on a batch boundary.

use std::collections::BTreeMap;

use rstest::rstest;

use kapsule_integration::records::{check_records_match, write_records_file, ConsumedRecord};
use kapsule_integration::{run_python, unique_name, RecordsMode, TestRecord};

use crate::common::{args, Rig, CLIENT_TIMEOUT};

async fn kp_consume(
    bootstrap: &str,
    topic: &str,
    group: &str,
    max: usize,
    timeout: &str,
) -> serde_json::Value {
    let mut a = args(&[
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--timeout",
        timeout,
    ]);
    a.extend(["--max".to_string(), max.to_string()]);
    run_python("kp_group.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafka-python consume")
        .json
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn committed_offsets_survive_consumer_restart(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let rig = Rig::start(mode).await;
    let topic = rig.topic("kp-group", 3).await;
    let records: Vec<TestRecord> = (0..30)
        .map(|i| {
            let mut r = TestRecord::kv(format!("kp-{i}"), vec![i as u8, 0, 255, b'v']);
            r.partition = Some(i % 3);
            r.headers = vec![("n".into(), Some(i.to_string().into_bytes()))];
            r.timestamp = Some(1_690_000_000_000 + i as i64);
            r
        })
        .collect();
    let file = write_records_file(&records).unwrap();
    let mut a = args(&[
        "produce",
        "--flush-each",
        "--bootstrap",
        &rig.bootstrap(),
        "--topic",
        &topic,
        "--input",
    ]);
    a.push(file.path().display().to_string());
    let produced = run_python("kp_group.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("kafka-python produce");
    assert_eq!(produced.json["produced"], 30);

    let group = unique_name("kp-group");
    let first = kp_consume(&rig.bootstrap(), &topic, &group, 13, "60").await;
    assert_eq!(
        first["assignment"],
        serde_json::json!([0, 1, 2]),
        "one member owns all 3 partitions"
    );
    let first_records = ConsumedRecord::list_from_output(&first).unwrap();
    assert_eq!(first_records.len(), 13, "{first}");
    // What was committed is exactly one past the last record returned, per partition.
    let mut expect_committed: BTreeMap<String, i64> = BTreeMap::new();
    for c in &first_records {
        let e = expect_committed
            .entry(c.record.partition.unwrap().to_string())
            .or_insert(0);
        *e = (*e).max(c.offset + 1);
    }
    for (p, off) in &expect_committed {
        assert_eq!(
            first["committed"][p].as_i64(),
            Some(*off),
            "partition {p}: {first}"
        );
    }

    // A new consumer process in the same group resumes from the committed offsets.
    let second = kp_consume(&rig.bootstrap(), &topic, &group, 17, "60").await;
    let second_records = ConsumedRecord::list_from_output(&second).unwrap();
    let all: Vec<ConsumedRecord> = first_records.into_iter().chain(second_records).collect();
    // Every produced record exactly once across both runs, bytes intact, nothing re-delivered.
    check_records_match(&records, &all).unwrap();
    for p in ["0", "1", "2"] {
        assert_eq!(
            second["committed"][p].as_i64(),
            Some(10),
            "partition {p}: {second}"
        );
    }

    // A third instance finds nothing left.
    let third = kp_consume(&rig.bootstrap(), &topic, &group, 1, "6").await;
    assert_eq!(
        third["records"].as_array().unwrap().len(),
        0,
        "re-delivered after commit: {third}"
    );
}
