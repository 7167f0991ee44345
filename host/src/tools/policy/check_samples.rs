//! Sample records for `kapsule policy check`: the built-in samples, a `--records` JSON-lines
//! file, and the full 1 MiB batch the samples are repeated into.

use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;

use crate::kafka::records::{Record, RecordHeader};

/// Size of the "full batch" `policy check` times against the call deadline: the default
/// `message.max.bytes` of a Kafka broker.
pub const FULL_BATCH_BYTES: usize = 1 << 20;

pub(super) fn record_size(r: &Record) -> usize {
    let h: usize = r
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + h + 8
}

/// The samples repeated (in order) until they hold [`FULL_BATCH_BYTES`].
pub(super) fn full_batch(samples: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut bytes = 0;
    if samples.is_empty() {
        return out;
    }
    while bytes < FULL_BATCH_BYTES {
        let mut r = samples[out.len() % samples.len()].clone();
        r.offset_delta = out.len() as i32;
        r.timestamp_delta = out.len() as i64;
        bytes += record_size(&r);
        out.push(r);
    }
    out
}

/// One line of a `--records` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default)]
    headers: Option<HeadersLine>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum HeadersLine {
    Map(indexmap::IndexMap<String, Option<String>>),
    List(Vec<(String, Option<String>)>),
}

fn record(key: Option<&str>, value: Option<Vec<u8>>, headers: &[(&str, Option<&str>)]) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: 0,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(Bytes::from),
        headers: headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            })
            .collect(),
    }
}

/// Reads sample records from JSON lines: `{"key": .., "value": .., "headers": ..}` per line.
/// A string value is taken as its UTF-8 bytes, `null` (or absent) is a tombstone, any other
/// JSON is serialized. Headers are an object or a list of `[name, value]` pairs. Fails naming
/// the line of the first malformed record.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading records file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: RecordLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"key\": .., \"value\": .., \"headers\": {{..}}}}",
                path.display(),
                i + 1
            )
        })?;
        let value = match l.value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.into_bytes()),
            other => Some(serde_json::to_vec(&other)?),
        };
        let headers: Vec<(String, Option<String>)> = match l.headers {
            None => Vec::new(),
            Some(HeadersLine::Map(m)) => m.into_iter().collect(),
            Some(HeadersLine::List(l)) => l,
        };
        let hs: Vec<(&str, Option<&str>)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        out.push(record(l.key.as_deref(), value, &hs));
    }
    if out.is_empty() {
        anyhow::bail!("{}: no records", path.display());
    }
    Ok(out)
}

/// Built-in sample records: JSON order values of about 1 KiB (some with PII members), `tenant`,
/// `classification` and `pii` headers, one record without headers and one tombstone.
pub fn builtin_samples() -> Vec<Record> {
    let pad = "x".repeat(820);
    let order = |i: usize, email: bool| {
        let mut v = serde_json::json!({
            "order": i, "sku": format!("SKU-{i:04}"), "amount": 10 * i, "notes": pad,
            "customer": {"city": "Lyon"}
        });
        if email {
            v["customer"]["email"] = format!("user{i}@example.com").into();
            v["customer"]["phone"] = "+33 1 23 45 67 89".into();
        }
        Some(serde_json::to_vec(&v).expect("JSON"))
    };
    vec![
        record(
            Some("o-1"),
            order(1, true),
            &[
                ("tenant", Some("acme")),
                ("classification", Some("internal")),
            ],
        ),
        record(
            Some("o-2"),
            order(2, false),
            &[("tenant", Some("acme")), ("classification", Some("public"))],
        ),
        record(
            Some("o-3"),
            order(3, true),
            &[
                ("tenant", Some("globex")),
                ("classification", Some("internal")),
                ("pii", Some("passport 12AB34567")),
            ],
        ),
        record(
            Some("o-4"),
            order(4, false),
            &[
                ("tenant", Some("globex")),
                ("classification", Some("public")),
            ],
        ),
        record(
            Some("o-5"),
            order(5, true),
            &[
                ("tenant", Some("initech")),
                ("classification", Some("internal")),
            ],
        ),
        record(
            Some("o-6"),
            order(6, false),
            &[
                ("tenant", Some("acme")),
                ("classification", Some("internal")),
            ],
        ),
        record(
            Some("o-7"),
            order(7, true),
            &[
                ("tenant", Some("globex")),
                ("classification", Some("public")),
            ],
        ),
        record(
            Some("o-8"),
            order(8, false),
            &[
                ("tenant", Some("acme")),
                ("classification", Some("internal")),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_file_is_parsed_and_bad_lines_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        std::fs::write(
            &p,
            "{\"key\": \"k\", \"value\": {\"email\": \"a@b\"}, \"headers\": {\"tenant\": \"acme\", \"n\": null}}\n\n\
             {\"value\": null, \"headers\": [[\"tenant\", \"x\"]]}\n",
        )
        .unwrap();
        let r = read_records(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].value.as_deref(), Some(&b"{\"email\":\"a@b\"}"[..]));
        assert_eq!(r[0].headers.len(), 2);
        assert_eq!(r[0].headers[1].value, None);
        assert_eq!((r[1].key.clone(), r[1].value.clone()), (None, None));
        std::fs::write(&p, "{\"key\": \"k\"}\n{\"kee\": 1}\n").unwrap();
        let e = format!("{:#}", read_records(&p).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn full_batch_holds_one_mebibyte_of_samples() {
        let s = builtin_samples();
        let full = full_batch(&s);
        let bytes: usize = full.iter().map(record_size).sum();
        assert!((FULL_BATCH_BYTES..FULL_BATCH_BYTES + 2048).contains(&bytes));
        assert!((900..1200).contains(&full.len()), "{}", full.len());
    }
}
