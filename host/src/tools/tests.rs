//! Unit tests of the tools against an in-process fake cluster.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::crypto::wire::{AadScheme, Descriptor, ValueEncryption, HEADER_KEY};
use crate::kafka::records::{Record, RecordBatch, RecordHeader};
use crate::tools::client::{decode_batches, Cluster, TopicPartition};
use crate::tools::inspect::{self, decode_header_base64, inspect_record, InspectOptions};
use crate::tools::reencrypt::{reencrypt, Checkpoint, OffsetMapping, ReencryptOptions, StartAt};

/// In-memory broker: each partition is a list of batches with assigned offsets.
#[derive(Default)]
struct FakeCluster {
    topics: HashMap<String, Vec<Vec<RecordBatch>>>,
    /// Produce calls left before produces start failing (`None`: never fail).
    produces_left: Option<usize>,
    /// Most batches returned per fetch.
    batches_per_fetch: usize,
}

impl FakeCluster {
    fn new() -> Self {
        Self {
            batches_per_fetch: 2,
            ..Default::default()
        }
    }

    fn create(&mut self, topic: &str, partitions: usize) {
        self.topics
            .insert(topic.into(), vec![Vec::new(); partitions]);
    }

    fn end(&self, topic: &str, p: i32) -> i64 {
        self.topics[topic][p as usize]
            .last()
            .map_or(0, |b| b.base_offset + i64::from(b.last_offset_delta) + 1)
    }

    fn append(&mut self, topic: &str, p: i32, mut batch: RecordBatch) -> i64 {
        let base = self.end(topic, p);
        batch.base_offset = base;
        self.topics.get_mut(topic).unwrap()[p as usize].push(batch);
        base
    }

    /// Every record of a partition as (offset, timestamp, key, value, headers).
    fn records(&self, topic: &str, p: i32) -> Vec<(i64, i64, Record)> {
        let mut out = Vec::new();
        for b in &self.topics[topic][p as usize] {
            if b.is_control() {
                continue;
            }
            for r in &b.records {
                let ts = if b.attributes & 0x08 != 0 {
                    b.max_timestamp
                } else {
                    b.base_timestamp + r.timestamp_delta
                };
                out.push((b.base_offset + i64::from(r.offset_delta), ts, r.clone()));
            }
        }
        out
    }
}

#[async_trait]
impl Cluster for FakeCluster {
    async fn partitions(&mut self, topic: &str) -> anyhow::Result<Vec<i32>> {
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| anyhow::anyhow!("unknown topic {topic}"))?;
        Ok((0..t.len() as i32).collect())
    }

    async fn offsets(&mut self, tp: TopicPartition<'_>) -> anyhow::Result<(i64, i64)> {
        let first = self.topics[tp.topic][tp.partition as usize]
            .first()
            .map_or(0, |b| b.base_offset);
        Ok((first, self.end(tp.topic, tp.partition)))
    }

    async fn fetch(
        &mut self,
        tp: TopicPartition<'_>,
        offset: i64,
        _max_bytes: i32,
    ) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(self.topics[tp.topic][tp.partition as usize]
            .iter()
            .filter(|b| b.base_offset + i64::from(b.last_offset_delta) >= offset)
            .take(self.batches_per_fetch)
            .cloned()
            .collect())
    }

    async fn produce(
        &mut self,
        tp: TopicPartition<'_>,
        batch: &RecordBatch,
    ) -> anyhow::Result<i64> {
        if let Some(n) = &mut self.produces_left {
            if *n == 0 {
                anyhow::bail!("injected produce failure");
            }
            *n -= 1;
        }
        // Round-trip through the codec, as the wire would.
        let decoded = RecordBatch::decode(&batch.to_bytes()?)?;
        Ok(self.append(tp.topic, tp.partition, decoded))
    }
}

fn record(i: usize, delta: i32, ts_delta: i64) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: ts_delta,
        offset_delta: delta,
        key: (!i.is_multiple_of(3)).then(|| Bytes::from(format!("k{i}"))),
        value: (i % 5 != 4).then(|| Bytes::from(format!("v{i}-{}", "x".repeat(i)))),
        headers: vec![
            RecordHeader {
                key: Bytes::from_static(b"h"),
                value: Some(Bytes::from(format!("{i}"))),
            },
            RecordHeader {
                key: Bytes::from_static(b"h"),
                value: None,
            },
        ],
    }
}

fn batch(first: usize, n: usize, base_ts: i64, attributes: i16) -> RecordBatch {
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: 0,
        attributes,
        last_offset_delta: n as i32 - 1,
        base_timestamp: base_ts,
        max_timestamp: base_ts + 7 * n as i64,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: (0..n)
            .map(|j| record(first + j, j as i32, 7 * j as i64))
            .collect(),
    }
}

fn control_batch() -> RecordBatch {
    let mut b = batch(0, 1, 5, 0x20 | 0x10);
    b.records[0].headers.clear();
    b
}

/// Source with 2 partitions: p0 has 3 batches of 4 (one LogAppendTime) and a control batch in
/// the middle; p1 has one batch of 5.
fn source() -> FakeCluster {
    let mut c = FakeCluster::new();
    c.create("src", 2);
    c.create("dst", 3);
    c.append("src", 0, batch(0, 4, 1_000, 0));
    c.append("src", 0, batch(4, 4, 2_000, 0x08));
    c.append("src", 0, control_batch());
    c.append("src", 0, batch(8, 4, 3_000, 0));
    c.append("src", 1, batch(100, 5, 9_000, 0));
    c
}

fn parse_mapping(text: &[u8]) -> Vec<OffsetMapping> {
    std::str::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every source record appears in dst at the mapped offset with equal key, value, headers and
/// timestamp, and exactly once.
fn assert_copied(c: &FakeCluster, mapping: &[OffsetMapping], from: i64) {
    for p in 0..2 {
        let src: Vec<_> = c
            .records("src", p)
            .into_iter()
            .filter(|r| r.0 >= from)
            .collect();
        let dst = c.records("dst", p);
        assert_eq!(src.len(), dst.len(), "partition {p} count");
        let by_to: HashMap<i64, &(i64, i64, Record)> = dst.iter().map(|r| (r.0, r)).collect();
        for s in &src {
            let maps: Vec<_> = mapping
                .iter()
                .filter(|m| m.partition == p && m.from_offset == s.0)
                .collect();
            assert_eq!(maps.len(), 1, "p{p}@{} mapped {} times", s.0, maps.len());
            let d = by_to[&maps[0].to_offset];
            assert_eq!(d.1, s.1, "timestamp of p{p}@{}", s.0);
            assert_eq!(d.2.key, s.2.key);
            assert_eq!(d.2.value, s.2.value);
            assert_eq!(d.2.headers, s.2.headers);
        }
    }
}

#[tokio::test]
async fn copies_every_record_with_exact_mapping() {
    let mut c = source();
    let mut out = Vec::new();
    let mut opts = ReencryptOptions::new("src", "dst");
    opts.batch_records = 3;
    let report = reencrypt(&mut c, &opts, &mut out).await.unwrap();
    let mapping = parse_mapping(&out);
    assert_eq!(report.copied, 17);
    assert_eq!(mapping.len(), 17);
    assert_eq!(report.partitions[0].end_offset, 13);
    assert_eq!(report.partitions[0].skipped_offsets, 1, "the control batch");
    assert_copied(&c, &mapping, 0);
    // The control record's offset (8) is not mapped; offsets after it are.
    assert!(!mapping
        .iter()
        .any(|m| m.partition == 0 && m.from_offset == 8));
    assert!(mapping
        .iter()
        .any(|m| m.partition == 0 && m.from_offset == 12));
    // LogAppendTime batch: records take the batch's max timestamp.
    let ts4 = c.records("dst", 0)[4].1;
    assert_eq!(ts4, 2_000 + 28);
}

#[tokio::test]
async fn start_offset_mid_batch_skips_earlier_records() {
    let mut c = source();
    let mut out = Vec::new();
    let mut opts = ReencryptOptions::new("src", "dst");
    opts.start = StartAt::Offset(2);
    let report = reencrypt(&mut c, &opts, &mut out).await.unwrap();
    let mapping = parse_mapping(&out);
    assert_eq!(mapping.iter().filter(|m| m.partition == 0).count(), 10);
    assert_eq!(mapping[0].from_offset, 2);
    // Partition 1 has offsets 0..5, from 2: three records.
    assert_eq!(report.partitions[1].copied, 3);
}

#[tokio::test]
async fn resumes_from_checkpoint_after_a_failure_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cp_path = dir.path().join("cp.json");
    let mut c = source();
    c.produces_left = Some(2);
    let mut opts = ReencryptOptions::new("src", "dst");
    opts.batch_records = 3;
    opts.checkpoint = Some(cp_path.clone());
    let mut out = Vec::new();
    let err = reencrypt(&mut c, &opts, &mut out).await.unwrap_err();
    assert!(format!("{err:#}").contains("injected"), "{err:#}");
    let cp = Checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!(cp.next.get(&0), Some(&6), "two batches of 3 acknowledged");
    assert_eq!(parse_mapping(&out).len(), 6);

    c.produces_left = None;
    let report = reencrypt(&mut c, &opts, &mut out).await.unwrap();
    assert!(report.resumed);
    assert_eq!(report.partitions[0].start_offset, 6);
    assert_eq!(report.copied, 11);
    assert_copied(&c, &parse_mapping(&out), 0);
    let cp = Checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!(cp.next, [(0, 13), (1, 5)].into_iter().collect());

    // A third run has nothing left to do.
    let report = reencrypt(&mut c, &opts, &mut out).await.unwrap();
    assert_eq!(report.copied, 0);
}

#[tokio::test]
async fn refuses_bad_setups() {
    let mut c = source();
    c.create("small", 1);
    let mut out = Vec::new();
    let e = reencrypt(&mut c, &ReencryptOptions::new("src", "small"), &mut out)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("at least as many partitions"),
        "{e:#}"
    );
    let e = reencrypt(&mut c, &ReencryptOptions::new("src", "src"), &mut out)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("different topic"), "{e:#}");

    let dir = tempfile::tempdir().unwrap();
    let cp_path = dir.path().join("cp.json");
    Checkpoint {
        from: "other".into(),
        to: "dst".into(),
        next: Default::default(),
    }
    .save(&cp_path)
    .unwrap();
    let mut opts = ReencryptOptions::new("src", "dst");
    opts.checkpoint = Some(cp_path.clone());
    let e = reencrypt(&mut c, &opts, &mut out).await.unwrap_err();
    assert!(format!("{e:#}").contains("belongs to a copy"), "{e:#}");
    std::fs::write(&cp_path, "garbage").unwrap();
    assert!(reencrypt(&mut c, &opts, &mut out).await.is_err());
    assert!(
        c.records("dst", 0).is_empty(),
        "nothing produced on refusal"
    );
}

#[tokio::test]
async fn refuses_records_still_encrypted() {
    let mut c = FakeCluster::new();
    c.create("src", 1);
    c.create("dst", 1);
    let mut b = batch(0, 2, 0, 0);
    b.records[1].headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from_static(b"x")),
    });
    c.append("src", 0, b);
    let mut out = Vec::new();
    let e = reencrypt(&mut c, &ReencryptOptions::new("src", "dst"), &mut out)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("must be Kapsule"), "{e:#}");
    assert!(c.records("dst", 0).is_empty());
}

fn sample_descriptor() -> Descriptor<'static> {
    Descriptor {
        value: ValueEncryption::Json(vec!["/card".into(), "/ssn".into()]),
        key_encrypted: true,
        record_id: [9; 16],
        nonce_base: [8; 12],
        key_kek_version: 4,
        kek_id: "payments-kek".into(),
        edek: vec![0xAB; 61].into(),
        headers: vec![b"x-secret".to_vec()],
        aad: AadScheme::V2,
    }
}

#[test]
fn descriptor_summary_shows_parts_never_key_material() {
    use base64::Engine;
    let mut value = sample_descriptor().encode().unwrap();
    value.extend_from_slice(&[7; 16]); // record tag
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    let s = decode_header_base64(&b64).unwrap();
    assert_eq!(s.kek_id, "payments-kek");
    assert_eq!(s.key_kek_version, Some(4));
    assert_eq!(s.value, "json");
    assert_eq!(s.json_pointers, vec!["/card", "/ssn"]);
    assert!(s.key_encrypted);
    assert_eq!(s.encrypted_headers, vec!["x-secret"]);
    assert_eq!(s.edek_len, 61);
    assert!(s.has_record_tag);
    assert_eq!(s.aad_revision, 2);
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.to_lowercase().contains("abab"), "{json}");
    assert!(!json.contains("171"), "EDEK bytes leaked: {json}");

    // A bare descriptor (no tag) decodes too; whole-value, clear key.
    let d = Descriptor {
        value: ValueEncryption::Whole,
        key_encrypted: false,
        key_kek_version: 0,
        headers: vec![],
        aad: AadScheme::V1,
        ..sample_descriptor()
    };
    let bare = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.encode().unwrap());
    let s = decode_header_base64(&bare).unwrap();
    assert_eq!(
        (s.value, s.key_kek_version, s.has_record_tag, s.aad_revision),
        ("whole", None, false, 1)
    );
    assert!(decode_header_base64("%%%").is_err());
    let junk = base64::engine::general_purpose::STANDARD.encode([2u8; 40]);
    assert!(decode_header_base64(&junk).is_err());
}

#[test]
fn record_status_clear_encrypted_invalid() {
    let mut r = record(1, 0, 0);
    assert_eq!(inspect_record(0, 5, &r).status, "clear");
    let mut v = sample_descriptor().encode().unwrap();
    v.extend_from_slice(&[0; 16]);
    r.headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from(v.clone())),
    });
    let rep = inspect_record(0, 5, &r);
    assert_eq!(rep.status, "encrypted");
    assert_eq!(rep.descriptor.unwrap().kek_id, "payments-kek");
    r.headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from(v)),
    });
    assert_eq!(inspect_record(0, 5, &r).status, "invalid");
    r.headers.pop();
    r.headers.last_mut().unwrap().value = Some(Bytes::from_static(b"\x01\x00short"));
    let rep = inspect_record(0, 5, &r);
    assert_eq!(rep.status, "invalid");
    assert!(rep.error.is_some());
}

#[tokio::test]
async fn inspect_reads_from_offset_with_limit() {
    let mut c = source();
    let mut seen = Vec::new();
    let opts = InspectOptions {
        topic: "src".into(),
        partition: Some(0),
        offset: Some(3),
        limit: 6,
    };
    let n = inspect::inspect(&mut c, &opts, &mut |r| {
        seen.push(r.offset);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(n, 6);
    assert_eq!(seen, vec![3, 4, 5, 6, 7, 9]);
    let bad = InspectOptions {
        partition: Some(7),
        ..opts
    };
    assert!(inspect::inspect(&mut c, &bad, &mut |_| Ok(()))
        .await
        .is_err());
}

#[test]
fn decode_batches_drops_the_truncated_tail() {
    let a = batch(0, 3, 0, 0).to_bytes().unwrap();
    let b = batch(3, 2, 0, 0).to_bytes().unwrap();
    let mut set = a.to_vec();
    set.extend_from_slice(&b[..b.len() - 5]);
    let got = decode_batches(Bytes::from(set)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].records.len(), 3);
    // A 12-byte entry announcing length 0 is impossible: an error, not an empty list.
    assert!(decode_batches(Bytes::from_static(&[0; 12])).is_err());
}
