//! Translation between Kapsule's plan types and the WIT types, and validation of guest answers.
//!
//! Everything a guest answers passes through here before the proxy sees it: key ids are checked
//! against the binding's `allowed_key_ids`, JSON pointers and header names against their syntax,
//! decision tables against the batch they answer. A bad answer becomes a
//! [`PolicyError::Malformed`] or [`PolicyError::KeyNotAllowed`] naming what is wrong; it never
//! reaches the encryption stage.

use std::sync::Arc;

use globset::GlobSet;

use super::bindings::kapsule::policy::types as wit;
use super::Caller;
use crate::kafka::records::Record;
use crate::plan::{
    EncryptionPlan, FieldSelection, MemoKey, Needs, RecordDecision, Reveal, RevealParts, TopicPlan,
    ValuePart,
};
use crate::policy::{validate_json_pointer, PolicyError};

/// Longest key id a policy may name.
const MAX_KEY_ID_LEN: usize = 256;
/// Longest reject message kept (longer ones are truncated).
const MAX_REJECT_LEN: usize = 1024;

/// A validated plan of one topic for one principal under one module version (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Plan(pub(super) Arc<TopicEntry>);

impl Plan {
    /// What the policy decided for the whole topic.
    pub(crate) fn topic_plan(&self) -> &TopicPlan {
        &self.0.plan
    }

    /// What `decide` depends on, as the plan declared.
    pub(crate) fn memo_key(&self) -> &MemoKey {
        &self.0.memo
    }
}

/// A validated plan of one topic under one module version, with the key allowance expanded for
/// the topic (decisions of `decide` are checked against it).
#[derive(Debug)]
pub(super) struct TopicEntry {
    pub(super) plan: TopicPlan,
    /// What `decide` depends on (`none` unless the plan is `per-record`).
    pub(super) memo: MemoKey,
    pub(super) allowed: GlobSet,
    /// Bytes of the expanded `allowed_key_ids` patterns `allowed` was built from (what the
    /// answer cache charges for it).
    pub(super) allowed_pattern_bytes: usize,
}

/// Validates the guest's `plan` answer for `topic`.
pub(super) fn topic_entry(
    c: &Caller<'_>,
    raw: wit::TopicPlan,
    topic: &str,
) -> Result<TopicEntry, PolicyError> {
    let allowed = c.allowance(topic)?;
    let mut memo = MemoKey::None;
    let plan = match raw {
        wit::TopicPlan::PassAll => TopicPlan::PassAll,
        wit::TopicPlan::RejectAll(m) => TopicPlan::RejectAll(truncate_msg(m)),
        wit::TopicPlan::PerRecord(p) => {
            memo = match p.memo {
                wit::MemoKey::None => MemoKey::None,
                wit::MemoKey::Header(h) => MemoKey::Header(h),
                wit::MemoKey::RecordKey => MemoKey::RecordKey,
                wit::MemoKey::KeyPrefix(n) => MemoKey::KeyPrefix(n),
                wit::MemoKey::Headers(names) => memo_headers(c, names)?,
            };
            TopicPlan::PerRecord(needs(p.needs))
        }
        wit::TopicPlan::EncryptAll(e) => TopicPlan::EncryptAll(
            encrypt(c, e, &allowed, topic, "plan")
                .map(Arc::new)
                .map_err(|e| c.fail(e, false))?,
        ),
    };
    let allowed_pattern_bytes = c
        .allowed_key_ids
        .iter()
        .map(|p| p.len() + topic.len())
        .sum();
    Ok(TopicEntry {
        plan,
        memo,
        allowed,
        allowed_pattern_bytes,
    })
}

/// Most header names one `memo-key::headers` may list.
const MAX_MEMO_HEADERS: usize = 16;

/// Validates a `memo-key::headers` list: 1 to [`MAX_MEMO_HEADERS`] distinct, non-empty names.
/// One name is the same memo as `memo-key::header`.
fn memo_headers(c: &Caller<'_>, names: Vec<String>) -> Result<MemoKey, PolicyError> {
    let bad = |reason: String| {
        c.fail(
            c.malformed(format!("plan: memo-key headers: {reason}")),
            false,
        )
    };
    if names.is_empty() || names.len() > MAX_MEMO_HEADERS {
        return Err(bad(format!(
            "list 1..={MAX_MEMO_HEADERS} header names, got {}",
            names.len()
        )));
    }
    if names.iter().any(String::is_empty) {
        return Err(bad("empty header name".into()));
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(bad(format!("header `{n}` listed twice")));
        }
    }
    Ok(match <[String; 1]>::try_from(names) {
        Ok([one]) => MemoKey::Header(one),
        Err(names) => MemoKey::Headers(names),
    })
}

fn needs(n: wit::Needs) -> Needs {
    Needs {
        key: n.contains(wit::Needs::KEY),
        value: n.contains(wit::Needs::VALUE),
        headers: n.contains(wit::Needs::HEADERS),
    }
}

/// Validates one `encrypt` answer (`what` names it in errors).
fn encrypt(
    c: &Caller<'_>,
    e: wit::Encrypt,
    allowed: &GlobSet,
    topic: &str,
    what: &str,
) -> Result<EncryptionPlan, PolicyError> {
    if e.key_id.is_empty() || e.key_id.len() > MAX_KEY_ID_LEN {
        return Err(c.malformed(format!(
            "{what}: key id must be 1..={MAX_KEY_ID_LEN} bytes, got {}",
            e.key_id.len()
        )));
    }
    if !allowed.is_match(&e.key_id) {
        return Err(PolicyError::KeyNotAllowed {
            binding: c.label.to_string(),
            topic: topic.to_string(),
            key_id: e.key_id,
        });
    }
    let value = match e.value {
        wit::ValuePart::None => ValuePart::None,
        wit::ValuePart::Whole => ValuePart::Whole,
        wit::ValuePart::JsonFields(f) if f.is_empty() => ValuePart::None,
        wit::ValuePart::JsonFields(f) => {
            for p in &f {
                validate_json_pointer(p).map_err(|r| c.malformed(format!("{what}: {r}")))?;
            }
            ValuePart::JsonFields(f)
        }
        wit::ValuePart::SchemaFields(sel) => {
            let sel = FieldSelection {
                fields: sel.fields,
                tags: sel.tags,
            };
            let mut problems = Vec::new();
            crate::schema::validate_selection(&sel, "schema-fields", &mut problems);
            if !problems.is_empty() {
                return Err(c.malformed(format!("{what}: {}", problems.join("; "))));
            }
            ValuePart::SchemaFields(sel)
        }
    };
    if let Some(h) = e.headers.iter().find(|h| h.is_empty()) {
        return Err(c.malformed(format!("{what}: empty header name {h:?}")));
    }
    Ok(EncryptionPlan {
        key_id: e.key_id,
        value,
        record_key: e.record_key,
        headers: e.headers,
    })
}

/// Validates the guest's `decide` answer for a batch of `n` records: the decision table
/// (`distinct`, each validated once however many records share it) and one index per record.
pub(super) fn decisions(
    c: &Caller<'_>,
    raw: wit::Decisions,
    n: usize,
    entry: &TopicEntry,
    topic: &str,
) -> Result<(Vec<RecordDecision>, Vec<u32>), PolicyError> {
    if raw.choices.len() != n {
        return Err(c.fail(
            c.malformed(format!(
                "decide returned {} decisions for {} records",
                raw.choices.len(),
                n
            )),
            false,
        ));
    }
    if let Some((i, ch)) = raw
        .choices
        .iter()
        .enumerate()
        .find(|(_, ch)| **ch as usize >= raw.distinct.len())
    {
        return Err(c.fail(
            c.malformed(format!(
                "decision of record {i} points at distinct decision {ch}, but only {} were returned",
                raw.distinct.len()
            )),
            false,
        ));
    }
    let mut distinct = Vec::with_capacity(raw.distinct.len());
    for (i, d) in raw.distinct.into_iter().enumerate() {
        distinct.push(match d {
            wit::Decision::Pass => RecordDecision::Pass,
            wit::Decision::Reject(m) => RecordDecision::Reject(truncate_msg(m)),
            wit::Decision::Encrypt(e) => RecordDecision::Encrypt(
                encrypt(
                    c,
                    e,
                    &entry.allowed,
                    topic,
                    &format!("distinct decision {i}"),
                )
                .map(Arc::new)
                .map_err(|e| c.fail(e, false))?,
            ),
        });
    }
    Ok((distinct, raw.choices))
}

/// Validates the guest's `reveal` answer: JSON pointers as in encrypt plans, header names
/// non-empty, deny messages truncated.
pub(super) fn reveal(c: &Caller<'_>, raw: wit::Reveal) -> Result<Reveal, PolicyError> {
    Ok(match raw {
        wit::Reveal::All => Reveal::All,
        wit::Reveal::Ciphertext => Reveal::Ciphertext,
        wit::Reveal::Deny(m) => Reveal::Deny(truncate_msg(m)),
        wit::Reveal::Parts(p) => {
            for f in &p.json_fields {
                validate_json_pointer(f)
                    .map_err(|r| c.fail(c.malformed(format!("reveal: {r}")), false))?;
            }
            if let Some(h) = p.headers.iter().find(|h| h.is_empty()) {
                return Err(c.fail(
                    c.malformed(format!("reveal: empty header name {h:?}")),
                    false,
                ));
            }
            Reveal::Parts(RevealParts {
                value: p.value,
                json_fields: p.json_fields,
                record_key: p.record_key,
                headers: p.headers,
                schema_fields: Vec::new(),
            })
        }
    })
}

/// Bytes of one record descriptor in `batch-view.records` (see `wit/policy.wit`).
pub(super) const RECORD_DESCRIPTOR_LEN: usize = 32;
/// Bytes of one header descriptor in `batch-view.headers`.
pub(super) const HEADER_DESCRIPTOR_LEN: usize = 16;
/// The length that marks an absent key, value or header value (null, or not asked for).
pub(super) const ABSENT: u32 = u32::MAX;
/// Bytes of one record's entry in `batch-view.schema-ids`: value then key schema id.
pub(super) const SCHEMA_IDS_DESCRIPTOR_LEN: usize = 8;

/// Number of records of a batch view.
pub(super) fn record_count(batch: &wit::BatchView) -> usize {
    batch.records.len() / RECORD_DESCRIPTOR_LEN
}

/// Lays out the parts `needs` asks for as one flat batch view: the bytes in one buffer, records
/// and headers as fixed-size little-endian descriptors pointing into it (`wit/policy.wit`).
/// Errors (a batch over 4 GiB of needed bytes) are not expected from Kafka's frame limits but
/// are reported rather than truncated.
pub(super) fn batch_view<'r>(
    records: impl Iterator<Item = &'r Record> + Clone,
    base_timestamp: i64,
    needs: Needs,
) -> Result<wit::BatchView, String> {
    let mut size = 0usize;
    let mut header_count = 0usize;
    let mut count = 0usize;
    for r in records.clone() {
        count += 1;
        if needs.key {
            size += r.key.as_ref().map_or(0, |k| k.len());
        }
        if needs.value {
            size += r.value.as_ref().map_or(0, |v| v.len());
        }
        if needs.headers {
            header_count += r.headers.len();
            for h in &r.headers {
                size += h.key.len() + h.value.as_ref().map_or(0, |v| v.len());
            }
        }
    }
    // Offsets and lengths are u32 and `ABSENT` is reserved.
    if size >= ABSENT as usize || u32::try_from(header_count).is_err() {
        return Err(format!(
            "batch too large to show the policy ({size} bytes, {header_count} headers; limit 4 GiB)"
        ));
    }
    let mut data = Vec::with_capacity(size);
    let mut descriptors = Vec::with_capacity(count * RECORD_DESCRIPTOR_LEN);
    let mut headers = Vec::with_capacity(header_count * HEADER_DESCRIPTOR_LEN);
    // Appends `bytes` (or nothing for an absent part) and writes its offset and length.
    fn span(data: &mut Vec<u8>, out: &mut Vec<u8>, bytes: Option<&[u8]>) {
        let (offset, len) = match bytes {
            Some(b) => {
                let at = data.len() as u32;
                data.extend_from_slice(b);
                (at, b.len() as u32)
            }
            None => (0, ABSENT),
        };
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    let mut schema_ids = Vec::with_capacity(count * SCHEMA_IDS_DESCRIPTOR_LEN);
    let mut headers_start = 0u32;
    for r in records {
        for part in [&r.value, &r.key] {
            let id = part
                .as_deref()
                .and_then(|b| crate::schema::schema_id(b).ok())
                .unwrap_or(ABSENT);
            schema_ids.extend_from_slice(&id.to_le_bytes());
        }
        span(
            &mut data,
            &mut descriptors,
            r.key.as_deref().filter(|_| needs.key),
        );
        span(
            &mut data,
            &mut descriptors,
            r.value.as_deref().filter(|_| needs.value),
        );
        let mut headers_len = 0u32;
        if needs.headers {
            for h in &r.headers {
                span(&mut data, &mut headers, Some(&h.key));
                span(&mut data, &mut headers, h.value.as_deref());
                headers_len += 1;
            }
        }
        descriptors.extend_from_slice(&headers_start.to_le_bytes());
        descriptors.extend_from_slice(&headers_len.to_le_bytes());
        let timestamp = base_timestamp.wrapping_add(r.timestamp_delta);
        descriptors.extend_from_slice(&timestamp.to_le_bytes());
        headers_start += headers_len;
    }
    Ok(wit::BatchView {
        data,
        records: descriptors,
        headers,
        schema_ids,
    })
}

/// The same batch in the `kapsule:policy@0.2.0` layout (no schema ids), borrowed: a 0.2 module
/// is shown exactly what it was shown before 0.3.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub(super) struct BatchViewV0_2<'a> {
    data: &'a [u8],
    records: &'a [u8],
    headers: &'a [u8],
}

/// Borrows `batch` as a [`BatchViewV0_2`].
pub(super) fn batch_view_v0_2(batch: &wit::BatchView) -> BatchViewV0_2<'_> {
    BatchViewV0_2 {
        data: &batch.data,
        records: &batch.records,
        headers: &batch.headers,
    }
}

/// The same batch in the `kapsule:policy@0.1.0` layout (spans and per-record views), for 0.1
/// modules. `batch` is one [`batch_view`] built, so every descriptor is whole and in range.
pub(super) fn batch_view_v0_1(
    batch: &wit::BatchView,
) -> super::bindings_v0_1::kapsule::policy::types::BatchView {
    use super::bindings_v0_1::kapsule::policy::types as v1;
    let word = |d: &[u8], i: usize| u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
    let span = |d: &[u8], i: usize| {
        let len = word(d, i + 1);
        (len != ABSENT).then(|| v1::Span {
            offset: word(d, i),
            len,
        })
    };
    let headers = batch
        .headers
        .chunks_exact(HEADER_DESCRIPTOR_LEN)
        .map(|h| v1::HeaderView {
            key: span(h, 0).unwrap_or(v1::Span { offset: 0, len: 0 }),
            value: span(h, 2),
        })
        .collect();
    let records = batch
        .records
        .chunks_exact(RECORD_DESCRIPTOR_LEN)
        .map(|r| v1::RecordView {
            key: span(r, 0),
            value: span(r, 2),
            headers_start: word(r, 4),
            headers_len: word(r, 5),
            timestamp: i64::from_le_bytes(r[24..32].try_into().unwrap()),
        })
        .collect();
    v1::BatchView {
        data: batch.data.clone(),
        records,
        headers,
    }
}

/// Cuts an over-long reject message at a character boundary.
pub(super) fn truncate_msg(s: String) -> String {
    if s.len() <= MAX_REJECT_LEN {
        return s;
    }
    let mut cut = MAX_REJECT_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kafka::records::RecordHeader;

    fn record(key: Option<&str>, value: Option<&str>, headers: &[(&str, Option<&str>)]) -> Record {
        Record {
            attributes: 0,
            timestamp_delta: 7,
            offset_delta: 0,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: headers
                .iter()
                .map(|(k, v)| RecordHeader {
                    key: Bytes::from(k.to_string()),
                    value: v.map(|v| Bytes::from(v.to_string())),
                })
                .collect(),
        }
    }

    fn word(d: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap())
    }

    /// The part named by the (offset, length) words `i`, `i + 1` of a descriptor.
    fn part<'a>(data: &'a [u8], d: &[u8], i: usize) -> Option<&'a [u8]> {
        let len = word(d, i + 1);
        (len != ABSENT).then(|| &data[word(d, i) as usize..(word(d, i) + len) as usize])
    }

    #[test]
    fn batch_view_lays_out_descriptors_as_the_wit_documents() {
        let records = [
            record(Some("k1"), Some("v1"), &[("t", Some("acme")), ("n", None)]),
            record(None, None, &[]),
            record(Some(""), Some(""), &[("t", Some(""))]),
        ];
        let all = Needs {
            key: true,
            value: true,
            headers: true,
        };
        let b = batch_view(records.iter(), -10, all).unwrap();
        assert_eq!(record_count(&b), 3);
        assert_eq!(b.records.len(), 3 * RECORD_DESCRIPTOR_LEN);
        assert_eq!(b.headers.len(), 3 * HEADER_DESCRIPTOR_LEN);
        let rec = |i: usize| &b.records[i * RECORD_DESCRIPTOR_LEN..(i + 1) * RECORD_DESCRIPTOR_LEN];
        let hdr = |i: usize| &b.headers[i * HEADER_DESCRIPTOR_LEN..(i + 1) * HEADER_DESCRIPTOR_LEN];
        let d = &b.data[..];
        assert_eq!(
            (part(d, rec(0), 0), part(d, rec(0), 2)),
            (Some(&b"k1"[..]), Some(&b"v1"[..]))
        );
        assert_eq!((word(rec(0), 4), word(rec(0), 5)), (0, 2));
        assert_eq!(i64::from_le_bytes(rec(0)[24..].try_into().unwrap()), -3);
        assert_eq!(
            (part(d, hdr(0), 0), part(d, hdr(0), 2)),
            (Some(&b"t"[..]), Some(&b"acme"[..]))
        );
        assert_eq!(
            (part(d, hdr(1), 0), part(d, hdr(1), 2)),
            (Some(&b"n"[..]), None)
        );
        // Null key and tombstone are absent; empty ones are present and empty.
        assert_eq!((part(d, rec(1), 0), part(d, rec(1), 2)), (None, None));
        assert_eq!((word(rec(1), 4), word(rec(1), 5)), (2, 0));
        assert_eq!(
            (part(d, rec(2), 0), part(d, rec(2), 2)),
            (Some(&b""[..]), Some(&b""[..]))
        );
        assert_eq!((word(rec(2), 4), word(rec(2), 5)), (2, 1));
        assert_eq!(part(d, hdr(2), 2), Some(&b""[..]));

        // Parts not asked for are absent and take no bytes.
        let headers_only = Needs {
            key: false,
            value: false,
            headers: true,
        };
        let h = batch_view(records.iter(), 0, headers_only).unwrap();
        assert_eq!(h.data, b"tacment".to_vec());
        assert_eq!(part(&h.data, &h.records[..32], 0), None);
        assert_eq!(part(&h.data, &h.records[..32], 2), None);
        let none = batch_view(records.iter(), 0, Needs::default()).unwrap();
        assert!(none.data.is_empty() && none.headers.is_empty());
        assert_eq!(record_count(&none), 3);
        assert_eq!(word(&none.records[64..], 5), 0);
    }

    #[test]
    fn schema_ids_are_shown_for_wire_format_values_and_keys_whatever_needs_says() {
        let mut wire = record(None, None, &[]);
        wire.value = Some(Bytes::from_static(&[0, 0, 0, 1, 2, 0x0a]));
        wire.key = Some(Bytes::from_static(&[0, 0, 0, 0, 7]));
        let records = [
            wire,
            record(Some("k"), Some("{\"a\":1}"), &[]),
            // Too short for a schema id: not the wire format.
            record(Some("\0\0"), None, &[]),
        ];
        let b = batch_view(records.iter(), 0, Needs::default()).unwrap();
        assert!(b.data.is_empty(), "nothing asked for, nothing copied");
        assert_eq!(b.schema_ids.len(), 3 * SCHEMA_IDS_DESCRIPTOR_LEN);
        let ids: Vec<u32> = (0..6).map(|i| word(&b.schema_ids, i)).collect();
        assert_eq!(ids, vec![258, 7, ABSENT, ABSENT, ABSENT, ABSENT]);
        // A 0.2 module is shown the same batch without them.
        let v2 = batch_view_v0_2(&b);
        assert_eq!((v2.records, v2.headers), (&b.records[..], &b.headers[..]));
    }

    #[test]
    fn a_v0_1_batch_carries_the_same_parts_as_spans() {
        let records = [
            record(Some("k"), None, &[("t", Some("acme")), ("n", None)]),
            record(None, Some("v"), &[]),
        ];
        let all = Needs {
            key: true,
            value: true,
            headers: true,
        };
        let b = batch_view(records.iter(), 100, all).unwrap();
        let v1 = batch_view_v0_1(&b);
        assert_eq!(v1.data, b.data);
        let text = |s: Option<super::super::bindings_v0_1::kapsule::policy::types::Span>| {
            s.map(|s| &v1.data[s.offset as usize..(s.offset + s.len) as usize])
        };
        assert_eq!(v1.records.len(), 2);
        assert_eq!(text(v1.records[0].key), Some(&b"k"[..]));
        assert_eq!(text(v1.records[0].value), None);
        assert_eq!(text(v1.records[1].key), None);
        assert_eq!(text(v1.records[1].value), Some(&b"v"[..]));
        assert_eq!(
            (v1.records[0].headers_start, v1.records[0].headers_len),
            (0, 2)
        );
        assert_eq!(
            (v1.records[1].headers_start, v1.records[1].headers_len),
            (2, 0)
        );
        assert_eq!(v1.records[1].timestamp, 107);
        assert_eq!(text(Some(v1.headers[0].key)), Some(&b"t"[..]));
        assert_eq!(text(v1.headers[0].value), Some(&b"acme"[..]));
        assert_eq!(text(v1.headers[1].value), None);
    }
}
