//! [`TestRecord`]: the records tests produce and expect back, exchanged with client scripts as JSON
//! with bytes in hex so every byte is compared exactly.

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tempfile::NamedTempFile;

/// One Kafka record as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// Key bytes; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a null value (tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers in order; keys may repeat; `None` is a null header value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Explicit CreateTime in ms; `None` lets the client choose (and is not compared).
    pub timestamp: Option<i64>,
    /// Partition to produce to; `None` lets the client's partitioner choose. Filled in on consume.
    pub partition: Option<i32>,
}

/// A record read back by a consumer script, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The record (its `partition` is the partition it was read from).
    pub record: TestRecord,
    /// Offset within the partition.
    pub offset: i64,
}

fn hex_opt(b: &Option<Vec<u8>>) -> Value {
    b.as_ref()
        .map_or(Value::Null, |b| Value::String(hex::encode(b)))
}

fn unhex_opt(v: &Value, what: &str) -> Result<Option<Vec<u8>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(
            hex::decode(s).with_context(|| format!("{what} is not hex"))?,
        )),
        other => bail!("{what} must be a hex string or null, got {other}"),
    }
}

impl TestRecord {
    /// Value of the first header named `name`, when present and not null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// A record with a key and value and nothing else.
    pub fn kv(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
            partition: None,
        }
    }

    /// JSON form read by the client scripts.
    pub fn to_json(&self) -> Value {
        json!({
            "key": hex_opt(&self.key),
            "value": hex_opt(&self.value),
            "headers": self.headers.iter().map(|(k, v)| json!([k, hex_opt(v)])).collect::<Vec<_>>(),
            "timestamp": self.timestamp,
            "partition": self.partition,
        })
    }

    /// Parses the JSON form written by the client scripts.
    pub fn from_json(v: &Value) -> Result<Self> {
        let headers = match &v["headers"] {
            Value::Null => Vec::new(),
            Value::Array(hs) => hs
                .iter()
                .map(|h| {
                    let k = h[0]
                        .as_str()
                        .context("header key must be a string")?
                        .to_owned();
                    Ok((k, unhex_opt(&h[1], "header value")?))
                })
                .collect::<Result<_>>()?,
            other => bail!("headers must be an array, got {other}"),
        };
        Ok(Self {
            key: unhex_opt(&v["key"], "key")?,
            value: unhex_opt(&v["value"], "value")?,
            headers,
            timestamp: v["timestamp"].as_i64(),
            partition: v["partition"].as_i64().map(|p| p as i32),
        })
    }

    /// A varied set of `n` records tagged with `tag` (so concurrent tests can tell theirs apart):
    /// binary keys covering every byte value, null keys, null and empty values, duplicate header
    /// keys, null header values, and explicit timestamps.
    pub fn varied(tag: &str, n: usize) -> Vec<TestRecord> {
        let base_ts = 1_700_000_000_000i64;
        (0..n)
            .map(|i| {
                let mut key: Vec<u8> = format!("{tag}-{i}-").into_bytes();
                key.extend((0..=255u8).map(|b| b.wrapping_add(i as u8)));
                let value: Option<Vec<u8>> = match i % 5 {
                    0 => None,
                    1 => Some(Vec::new()),
                    _ => Some(
                        (0..(i * 37 % 2000 + 1))
                            .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8))
                            .collect(),
                    ),
                };
                TestRecord {
                    key: (i % 7 != 3).then_some(key),
                    value,
                    headers: vec![
                        ("dup".into(), Some(vec![1, 0, 255])),
                        ("dup".into(), Some(format!("second-{i}").into_bytes())),
                        ("null-header".into(), None),
                        ("empty".into(), Some(Vec::new())),
                    ],
                    timestamp: Some(base_ts + i as i64 * 1000),
                    partition: None,
                }
            })
            .collect()
    }
}

impl ConsumedRecord {
    /// Parses one element of a consumer script's `records` array.
    pub fn from_json(v: &Value) -> Result<Self> {
        Ok(Self {
            record: TestRecord::from_json(v)?,
            offset: v["offset"]
                .as_i64()
                .context("consumed record without offset")?,
        })
    }

    /// Parses a consumer script's output `{"records": [...]}`.
    pub fn list_from_output(out: &Value) -> Result<Vec<ConsumedRecord>> {
        out["records"]
            .as_array()
            .with_context(|| format!("consumer output has no records array: {out}"))?
            .iter()
            .map(ConsumedRecord::from_json)
            .collect()
    }
}

/// Writes `{"records": [...]}` to a temporary file for a producer script's `--input`.
pub fn write_records_file(records: &[TestRecord]) -> Result<NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("kapsule-rig-records-")
        .suffix(".json")
        .tempfile()?;
    let doc = json!({ "records": records.iter().map(TestRecord::to_json).collect::<Vec<_>>() });
    serde_json::to_writer(&mut file, &doc)?;
    file.flush()?;
    Ok(file)
}

/// Short description of a record for assertion messages (sizes and a prefix, not whole payloads).
pub fn describe(r: &TestRecord) -> String {
    let short = |b: &Option<Vec<u8>>| match b {
        None => "null".to_owned(),
        Some(b) => format!("{}B:{}", b.len(), hex::encode(&b[..b.len().min(12)])),
    };
    format!(
        "key={} value={} headers={:?} ts={:?} p={:?}",
        short(&r.key),
        short(&r.value),
        r.headers
            .iter()
            .map(|(k, v)| format!("{k}={}", short(v)))
            .collect::<Vec<_>>(),
        r.timestamp,
        r.partition
    )
}

/// Asserts `consumed` holds exactly `produced`: same count, and each produced record's key, value,
/// headers (order and duplicates included) and explicit timestamp, in produced order within each
/// partition. `partition` of produced records is ignored unless set.
pub fn assert_records_match(produced: &[TestRecord], consumed: &[ConsumedRecord]) {
    if let Err(e) = check_records_match(produced, consumed) {
        panic!("{e:#}");
    }
}

/// Non-panicking form of [`assert_records_match`].
pub fn check_records_match(produced: &[TestRecord], consumed: &[ConsumedRecord]) -> Result<()> {
    if produced.len() != consumed.len() {
        bail!(
            "produced {} records but consumed {}",
            produced.len(),
            consumed.len()
        );
    }
    // Group consumed records by partition in offset order, then match produced records in order:
    // each produced record must be the next unmatched record of some partition.
    let mut by_partition: std::collections::BTreeMap<i32, Vec<&ConsumedRecord>> =
        Default::default();
    for c in consumed {
        by_partition
            .entry(c.record.partition.unwrap_or(-1))
            .or_default()
            .push(c);
    }
    for list in by_partition.values_mut() {
        list.sort_by_key(|c| c.offset);
        for w in list.windows(2) {
            if w[0].offset == w[1].offset {
                bail!("offset {} consumed twice", w[0].offset);
            }
        }
    }
    let mut cursors: std::collections::BTreeMap<i32, usize> = Default::default();
    for (i, p) in produced.iter().enumerate() {
        let found = by_partition.iter().find_map(|(part, list)| {
            if p.partition.is_some_and(|want| want != *part) {
                return None;
            }
            let cur = *cursors.get(part).unwrap_or(&0);
            let c = list.get(cur)?;
            let same = c.record.key == p.key
                && c.record.value == p.value
                && c.record.headers == p.headers
                && p.timestamp.is_none_or(|ts| c.record.timestamp == Some(ts));
            same.then_some(*part)
        });
        match found {
            Some(part) => *cursors.entry(part).or_default() += 1,
            None => {
                let next: Vec<String> = by_partition
                    .iter()
                    .filter_map(|(part, list)| {
                        list.get(*cursors.get(part).unwrap_or(&0))
                            .map(|c| format!("p{part}@{}: {}", c.offset, describe(&c.record)))
                    })
                    .collect();
                bail!(
                    "produced record #{i} ({}) was not consumed as the next record of any partition; next consumed per partition: {next:#?}",
                    describe(p)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed(r: &TestRecord, partition: i32, offset: i64) -> ConsumedRecord {
        let mut record = r.clone();
        record.partition = Some(partition);
        ConsumedRecord { record, offset }
    }

    #[test]
    fn json_round_trip_is_exact() {
        for r in TestRecord::varied("t", 12) {
            assert_eq!(TestRecord::from_json(&r.to_json()).unwrap(), r);
        }
    }

    #[test]
    fn match_accepts_interleaved_partitions_and_rejects_changes() {
        let produced = TestRecord::varied("m", 6);
        let ok: Vec<_> = produced
            .iter()
            .enumerate()
            .map(|(i, r)| consumed(r, (i % 2) as i32, i as i64 / 2))
            .rev()
            .collect();
        check_records_match(&produced, &ok).unwrap();

        let mut changed = ok.clone();
        changed[1].record.headers.swap(0, 1);
        assert!(check_records_match(&produced, &changed).is_err());

        let mut ts = ok.clone();
        ts[0].record.timestamp = Some(1);
        assert!(check_records_match(&produced, &ts).is_err());

        assert!(check_records_match(&produced, &ok[1..]).is_err());
    }
}
