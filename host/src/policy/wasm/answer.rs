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
    EncryptionPlan, MemoKey, Needs, RecordDecision, Reveal, RevealParts, TopicPlan, ValuePart,
};
use crate::policy::{validate_json_pointer, PolicyError};

/// Longest key id a policy may name.
const MAX_KEY_ID_LEN: usize = 256;
/// Longest reject message kept (longer ones are truncated).
const MAX_REJECT_LEN: usize = 1024;

/// A validated plan of one topic under one module version, with the key allowance expanded for
/// the topic (decisions of `decide` are checked against it).
#[derive(Debug)]
pub(super) struct TopicEntry {
    pub(super) plan: TopicPlan,
    /// What `decide` depends on (`none` unless the plan is `per-record`).
    pub(super) memo: MemoKey,
    pub(super) allowed: GlobSet,
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
            };
            TopicPlan::PerRecord(needs(p.needs))
        }
        wit::TopicPlan::EncryptAll(e) => TopicPlan::EncryptAll(
            encrypt(c, e, &allowed, topic, "plan")
                .map(Arc::new)
                .map_err(|e| c.fail(e, false))?,
        ),
    };
    Ok(TopicEntry {
        plan,
        memo,
        allowed,
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
            })
        }
    })
}

/// Lays out the parts `needs` asks for as one flat batch view: the bytes in one buffer, records
/// and headers as spans into it. Errors (a batch over 4 GiB of needed bytes) are not expected
/// from Kafka's frame limits but are reported rather than truncated.
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
    if u32::try_from(size).is_err() || u32::try_from(header_count).is_err() {
        return Err(format!(
            "batch too large to show the policy ({size} bytes, {header_count} headers; limit 4 GiB)"
        ));
    }
    let mut data = Vec::with_capacity(size);
    let mut push = |bytes: &[u8]| -> wit::Span {
        let span = wit::Span {
            offset: data.len() as u32,
            len: bytes.len() as u32,
        };
        data.extend_from_slice(bytes);
        span
    };
    let mut headers = Vec::with_capacity(header_count);
    let mut views = Vec::with_capacity(count);
    for r in records {
        let key = if needs.key {
            r.key.as_deref().map(&mut push)
        } else {
            None
        };
        let value = if needs.value {
            r.value.as_deref().map(&mut push)
        } else {
            None
        };
        let headers_start = headers.len() as u32;
        if needs.headers {
            for h in &r.headers {
                headers.push(wit::HeaderView {
                    key: push(&h.key),
                    value: h.value.as_deref().map(&mut push),
                });
            }
        }
        views.push(wit::RecordView {
            key,
            value,
            headers_start,
            headers_len: headers.len() as u32 - headers_start,
            timestamp: base_timestamp.wrapping_add(r.timestamp_delta),
        });
    }
    Ok(wit::BatchView {
        data,
        records: views,
        headers,
    })
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
