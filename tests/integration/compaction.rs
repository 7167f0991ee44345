//! Log compaction by Apache Kafka of a topic whose record keys Kapsule encrypts
//! deterministically: equal keys give equal ciphertext, so the broker's cleaner keeps only the
//! latest record per key, and consumers reading through Kapsule get the latest value per key,
//! decrypted. (tansu's memory storage never compacts, so this had never been seen before.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kapsule_integration::encryption::LocalKms;
use kapsule_integration::probe::kafka_protocol::messages::{
    ApiKey, FetchResponse, ProduceResponse,
};
use kapsule_integration::probe::{fetch_request, produce_request, record_batch_at, RawConnection};
use kapsule_integration::{
    unique_name, KafkaCluster, KafkaOptions, Kapsule, KapsuleConfig, RecordsMode,
};

const WAIT: Duration = Duration::from_secs(30);

/// (offset, key, value) of every record of partition 0 in a Fetch response.
fn records(resp: &FetchResponse) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    use kapsule_integration::probe::kafka_protocol::records::RecordBatchDecoder;
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "{resp:?}");
    let mut out = Vec::new();
    if let Some(records) = &p.records {
        let mut buf = records.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched records") {
            for r in set.records {
                out.push((
                    r.offset,
                    r.key.unwrap_or_default().to_vec(),
                    r.value.unwrap_or_default().to_vec(),
                ));
            }
        }
    }
    out
}

/// Every record of partition 0 of `topic` at `addr`, from offset 0 to the high watermark (a
/// broker answers one log segment per fetch, so this fetches until it is caught up).
async fn fetch_all(addr: &str, topic: &str) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut c = RawConnection::connect(addr).await.unwrap();
    let mut all: Vec<(i64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut next = 0;
    for correlation in 1..100 {
        let mut req = fetch_request(topic, None);
        req.topics[0].partitions[0].fetch_offset = next;
        c.send(ApiKey::Fetch, 12, correlation, &req).await.unwrap();
        let (_, f) = c
            .recv_as::<FetchResponse>(ApiKey::Fetch, 12, WAIT)
            .await
            .unwrap();
        let high_watermark = f.responses[0].partitions[0].high_watermark;
        let got = records(&f);
        let Some(last) = got.last().map(|r| r.0) else {
            break;
        };
        all.extend(got.into_iter().filter(|r| r.0 >= next));
        next = last + 1;
        if next >= high_watermark {
            break;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_compacts_encrypted_keys_and_consumers_read_the_latest_value_per_key() {
    // A node of its own: the cleaner's back-off is a broker setting.
    let kafka = KafkaCluster::start(
        KafkaOptions::single()
            .with_property("log.cleaner.backoff.ms", "200")
            .with_property("log.cleaner.min.compaction.lag.ms", "0"),
    )
    .await
    .expect("start Kafka");
    let kms = LocalKms::new().unwrap();
    let policy = "policy:\n  rules:\n    - topics: {prefix: \"compact-\"}\n      key_id: kek-compact\n      value: whole\n      record_key: true\n";
    let config = KapsuleConfig::new(RecordsMode::Passthrough)
        .with_yaml(&kms.yaml())
        .with_yaml(policy);
    let kapsule = Kapsule::start(&kafka.bootstrap(), config)
        .await
        .expect("start kapsule");
    let topic = unique_name("compact-");
    kafka
        .create_topic_with(
            &topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", "100"),
                ("min.cleanable.dirty.ratio", "0.001"),
                ("delete.retention.ms", "0"),
                ("min.compaction.lag.ms", "0"),
            ],
        )
        .await
        .expect("create compacted topic");

    // Three generations of the same five keys, each in its own segment (segment.ms rolls the
    // segment on the first append after 100 ms), then one record that leaves the third
    // generation in a closed segment the cleaner may compact.
    let mut c = RawConnection::connect(&kapsule.bootstrap()).await.unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("customer-{i}")).collect();
    let mut produced = 0;
    for (correlation, generation) in (1..).zip(1..=4) {
        let values: Vec<(Vec<u8>, Vec<u8>)> = if generation < 4 {
            keys.iter()
                .map(|k| {
                    (
                        k.clone().into_bytes(),
                        format!("{k}-v{generation}").into_bytes(),
                    )
                })
                .collect()
        } else {
            vec![(b"roll".to_vec(), b"roll".to_vec())]
        };
        let pairs: Vec<(&[u8], &[u8])> = values
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        // Record time drives segment.ms: stamp each generation with the time it is sent.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let req = produce_request(&topic, None, 5000, record_batch_at(&pairs, now_ms));
        c.send(ApiKey::Produce, 9, correlation, &req).await.unwrap();
        let (_, r) = c
            .recv_as::<ProduceResponse>(ApiKey::Produce, 9, WAIT)
            .await
            .unwrap();
        let code = r.responses[0].partition_responses[0].error_code;
        assert_eq!(code, 0, "{r:?}");
        produced += pairs.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The broker stores ciphertext keys; wait until its cleaner has removed older generations.
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let stored = fetch_all(&kafka.bootstrap(), &topic).await;
        if stored.len() <= keys.len() + 1 || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let distinct: std::collections::BTreeSet<_> = stored.iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        distinct.len(),
        keys.len() + 1,
        "equal keys must encrypt to equal bytes for the broker to compact them"
    );
    assert!(
        stored.len() < produced,
        "the broker never compacted: {} of {produced} records still stored",
        stored.len()
    );
    for (_, key, value) in &stored {
        assert!(
            !key.windows(8).any(|w| w == b"customer")
                && !value.windows(8).any(|w| w == b"customer"),
            "plaintext at rest: {:?}",
            String::from_utf8_lossy(key)
        );
    }

    // Through Kapsule: the latest value of every key, decrypted.
    let latest: BTreeMap<Vec<u8>, Vec<u8>> = fetch_all(&kapsule.bootstrap(), &topic)
        .await
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    for k in &keys {
        assert_eq!(
            latest
                .get(k.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            Some(format!("{k}-v3")),
            "latest value of {k}"
        );
    }
}
