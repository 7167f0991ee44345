//! DEK lifecycle and log compaction on encrypted topics, checked on what the broker stores: each
//! rotation limit (encryptions, bytes, age) caps what one DEK encrypts, and encrypted record keys
//! are deterministic so compaction keeps the latest value per key.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kapsule::crypto::wire::{split_header, Descriptor};
use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::{Tansu, TestRecord};

use crate::common::{assert_records_match, ck_consume, ck_produce};
use crate::encryption::{read_direct, start_kapsule, topic};

/// Whole value under one KEK; nothing else encrypted, so one record = one GCM encryption.
const VALUE_RULE: &str = "policy:\n  rules:\n    - topics: {prefix: \"dek-\"}\n      key_id: kek-dek\n      value: whole\n";

/// Small batches so DEK limits are crossed between batches many times.
const SMALL_BATCHES: [&str; 2] = ["--config", "batch.num.messages=7"];

/// The wrapped DEK of a stored record, from its `kapsule.enc` header.
fn stored_edek(r: &TestRecord) -> Vec<u8> {
    let value = r
        .header("kapsule.enc")
        .expect("stored record carries a non-null kapsule.enc");
    let (desc, _tag) = split_header(value).expect("descriptor + record tag");
    Descriptor::decode(desc)
        .expect("valid descriptor")
        .edek
        .into_owned()
}

/// Groups stored records by the DEK that encrypted them: EDEK → (records, plaintext bytes).
fn usage_by_dek(stored: &[TestRecord], sent: &[TestRecord]) -> HashMap<Vec<u8>, (u64, u64)> {
    let mut usage: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    for (s, orig) in stored.iter().zip(sent) {
        let e = usage.entry(stored_edek(s)).or_default();
        e.0 += 1;
        e.1 += orig.value.as_ref().map_or(0, |v| v.len() as u64);
    }
    usage
}

fn values(tag: &str, n: usize, len: usize) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let mut v = format!("DEKMARK-{tag}-{i}-").into_bytes();
            v.resize(len, b'.');
            TestRecord::kv(format!("k{i}"), v)
        })
        .collect()
}

async fn start_with_deks(
    tansu: &Tansu,
    kms: &LocalKms,
    deks: &str,
) -> kapsule_integration::Kapsule {
    start_kapsule(tansu, &kms.yaml(), &format!("{VALUE_RULE}deks:\n{deks}")).await
}

/// `max_encryptions`, `max_bytes` and `max_age_secs` each retire a DEK: no DEK in the stored log
/// went past its limit, several were used, and every record still decrypts.
#[tokio::test(flavor = "multi_thread")]
async fn dek_rotates_by_each_limit() {
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();

    // By count: 60 records, at most 10 encryptions per DEK.
    let by_count = start_with_deks(&tansu, &kms, "  max_encryptions: 10\n").await;
    let t = topic(&tansu, "dek-count-").await;
    let sent = values("count", 60, 100);
    ck_produce(&by_count.bootstrap(), &t, &sent, &SMALL_BATCHES).await;
    let stored = read_direct(&tansu, &t, sent.len()).await;
    assert_no_plaintext(&stored, &[b"DEKMARK-".to_vec()]);
    let usage = usage_by_dek(&stored, &sent);
    assert!(
        usage.len() >= 6,
        "60 records need ≥ 6 DEKs of 10: {}",
        usage.len()
    );
    assert!(
        usage.values().all(|(n, _)| *n <= 10),
        "a DEK encrypted more than 10 records: {:?}",
        usage.values().collect::<Vec<_>>()
    );
    assert_records_match(
        &sent,
        &ck_consume(&by_count.bootstrap(), &t, sent.len(), &[]).await,
    );
    drop(by_count);

    // By bytes: 40 records of 1000 bytes, at most 4096 plaintext bytes per DEK.
    let by_bytes = start_with_deks(&tansu, &kms, "  max_bytes: 4096\n").await;
    let t = topic(&tansu, "dek-bytes-").await;
    let sent = values("bytes", 40, 1000);
    ck_produce(&by_bytes.bootstrap(), &t, &sent, &SMALL_BATCHES).await;
    let stored = read_direct(&tansu, &t, sent.len()).await;
    let usage = usage_by_dek(&stored, &sent);
    assert!(
        usage.len() >= 10,
        "40 KB need ≥ 10 DEKs of 4 KiB: {}",
        usage.len()
    );
    assert!(
        usage.values().all(|(_, bytes)| *bytes <= 4096),
        "a DEK encrypted more than 4096 bytes: {:?}",
        usage.values().collect::<Vec<_>>()
    );
    assert_records_match(
        &sent,
        &ck_consume(&by_bytes.bootstrap(), &t, sent.len(), &[]).await,
    );
    drop(by_bytes);

    // By age: three rounds 2.5 s apart with a 1 s lifetime never share a DEK.
    let by_age = start_with_deks(&tansu, &kms, "  max_age_secs: 1\n").await;
    let t = topic(&tansu, "dek-age-").await;
    let mut all = Vec::new();
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        let sent = values(&format!("age{round}"), 5, 100);
        ck_produce(&by_age.bootstrap(), &t, &sent, &[]).await;
        all.extend(sent);
    }
    let stored = read_direct(&tansu, &t, all.len()).await;
    let rounds: Vec<Vec<Vec<u8>>> = stored
        .chunks(5)
        .map(|c| c.iter().map(stored_edek).collect())
        .collect();
    for (a, ra) in rounds.iter().enumerate() {
        for rb in &rounds[a + 1..] {
            assert!(
                ra.iter().all(|e| !rb.contains(e)),
                "a DEK older than max_age_secs was used again in a later round"
            );
        }
    }
    assert_records_match(
        &all,
        &ck_consume(&by_age.bootstrap(), &t, all.len(), &[]).await,
    );
}

/// A compacted, encrypted topic keeps the latest value per key. tansu 0.6 with memory storage
/// does not compact, so the test compacts the stored log itself with Kafka's rule (latest
/// record per stored key, tombstones kept) and replays the survivors, byte for byte, into the
/// same topic name on a second broker — what a compacted log holds. Reading that through
/// Kapsule must give the latest plaintext value of each key, across DEK rotations.
#[tokio::test(flavor = "multi_thread")]
async fn compacted_topic_keeps_the_latest_value_per_encrypted_key() {
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    // Record keys encrypted (deterministically) too; DEKs rotate every 8 records.
    let rule = "policy:\n  rules:\n    - topics: {prefix: \"compact-\"}\n      key_id: kek-compact\n      value: whole\n      record_key: true\ndeks:\n  max_encryptions: 8\n";
    let kapsule = start_kapsule(&tansu, &kms.yaml(), rule).await;
    let t = topic(&tansu, "compact-").await;

    // Three rounds over keys CMPKEY-0..9, each a separate produce; then a tombstone for key 0.
    let mut sent = Vec::new();
    for round in 0..3 {
        let recs: Vec<TestRecord> = (0..10)
            .map(|k| TestRecord::kv(format!("CMPKEY-{k}"), format!("CMPVAL-r{round}-k{k}")))
            .collect();
        ck_produce(&kapsule.bootstrap(), &t, &recs, &[]).await;
        sent.extend(recs);
    }
    let tombstone = TestRecord {
        key: Some(b"CMPKEY-0".to_vec()),
        value: None,
        headers: Vec::new(),
        timestamp: None,
        partition: None,
    };
    ck_produce(
        &kapsule.bootstrap(),
        &t,
        std::slice::from_ref(&tombstone),
        &[],
    )
    .await;
    sent.push(tombstone);

    let stored = read_direct(&tansu, &t, sent.len()).await;
    assert_no_plaintext(&stored, &[b"CMPKEY-".to_vec(), b"CMPVAL-".to_vec()]);
    // Equal plaintext keys are stored as equal bytes (across DEKs), different keys differ.
    let mut by_plain: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (s, orig) in stored.iter().zip(&sent) {
        let stored_key = s.key.clone().expect("encrypted key kept non-null");
        let prev = by_plain
            .entry(orig.key.clone().unwrap())
            .or_insert_with(|| stored_key.clone());
        assert_eq!(*prev, stored_key, "equal keys must encrypt to equal bytes");
    }
    let distinct: std::collections::HashSet<_> = by_plain.values().collect();
    assert_eq!(distinct.len(), 10, "10 plaintext keys → 10 stored keys");
    assert!(
        stored.last().unwrap().value.is_none(),
        "tombstone stays null at rest"
    );

    // Kafka's compaction rule over the stored bytes: the latest record of each stored key.
    let mut latest: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (i, s) in stored.iter().enumerate() {
        latest.insert(s.key.clone().unwrap(), i);
    }
    let mut survivors: Vec<usize> = latest.into_values().collect();
    survivors.sort_unstable();
    assert_eq!(survivors.len(), 10);
    let compacted: Vec<TestRecord> = survivors.iter().map(|&i| stored[i].clone()).collect();

    let compacted_broker = Tansu::start().await.expect("start second tansu");
    compacted_broker
        .create_topic(&t, 1)
        .await
        .expect("create topic");
    ck_produce(&compacted_broker.bootstrap(), &t, &compacted, &[]).await;
    let reader = start_kapsule(&compacted_broker, &kms.yaml(), rule).await;
    let expected: Vec<TestRecord> = survivors.iter().map(|&i| sent[i].clone()).collect();
    let back = ck_consume(&reader.bootstrap(), &t, expected.len(), &[]).await;
    assert_records_match(&expected, &back);
    assert_eq!(back[0].record.key.as_deref(), Some(&b"CMPKEY-1"[..]));
    assert_eq!(
        back.last().unwrap().record.value,
        None,
        "key 0's latest record is its tombstone"
    );
    assert!(
        back.iter().all(|c| c
            .record
            .value
            .as_deref()
            .is_none_or(|v| v.starts_with(b"CMPVAL-r2-"))),
        "every surviving value is from the last round"
    );
}
