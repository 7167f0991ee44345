//! How `kapsule policy check` writes plans, reveals, decisions and sample records.

use bytes::Bytes;

use crate::kafka::records::Record;
use crate::plan::TopicPlan;
use crate::plan::{EncryptionPlan, RecordDecision, Reveal, ValuePart};

pub(super) fn summarize(r: &Record) -> String {
    let text = |b: &Option<Bytes>, max: usize| match b {
        None => "null".to_string(),
        Some(b) => {
            let s = String::from_utf8_lossy(b);
            if s.chars().count() > max {
                format!("{:?}…", s.chars().take(max).collect::<String>())
            } else {
                format!("{s:?}")
            }
        }
    };
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|h| format!("{}={}", String::from_utf8_lossy(&h.key), text(&h.value, 16)))
        .collect();
    format!(
        "(key {}, value {}{})",
        text(&r.key, 16),
        text(&r.value, 24),
        if headers.is_empty() {
            String::new()
        } else {
            format!(", headers {}", headers.join(" "))
        }
    )
}

pub(super) fn describe_encrypt(e: &EncryptionPlan) -> String {
    let value = match &e.value {
        ValuePart::None => "no value".to_string(),
        ValuePart::Whole => "whole value".to_string(),
        ValuePart::JsonFields(f) => format!("JSON fields {}", f.join(", ")),
        ValuePart::SchemaFields(s) => format!(
            "schema fields [{}] and fields tagged [{}]",
            s.fields.join(", "),
            s.tags.join(", ")
        ),
    };
    format!(
        "key `{}`: {value}{}{}",
        e.key_id,
        if e.record_key { ", record key" } else { "" },
        if e.headers.is_empty() {
            String::new()
        } else {
            format!(", headers {}", e.headers.join(", "))
        }
    )
}

pub(super) fn describe_decision(d: &RecordDecision) -> String {
    match d {
        RecordDecision::Pass => "pass".into(),
        RecordDecision::Reject(m) => format!("reject: {m}"),
        RecordDecision::Encrypt(e) => format!("encrypt with {}", describe_encrypt(e)),
    }
}

pub(super) fn describe_reveal(r: &Reveal) -> String {
    match r {
        Reveal::All => "everything in clear".into(),
        Reveal::Ciphertext => "ciphertext as stored".into(),
        Reveal::Deny(m) => format!("nothing, the fetch is denied: {m}"),
        Reveal::Parts(p) => {
            let mut parts = Vec::new();
            if p.value {
                parts.push("the value".to_string());
            } else if !p.json_fields.is_empty() {
                parts.push(format!("JSON fields {}", p.json_fields.join(", ")));
            }
            if p.record_key {
                parts.push("the record key".into());
            }
            if !p.headers.is_empty() {
                parts.push(format!("headers {}", p.headers.join(", ")));
            }
            if parts.is_empty() {
                "no encrypted part in clear".into()
            } else {
                format!("only {} in clear", parts.join("; "))
            }
        }
    }
}

pub(super) fn describe(p: &TopicPlan) -> String {
    match p {
        TopicPlan::PassAll => "pass all records".into(),
        TopicPlan::RejectAll(m) => format!("reject all records: {m}"),
        TopicPlan::PerRecord(n) => {
            let mut parts = Vec::new();
            if n.key {
                parts.push("key");
            }
            if n.value {
                parts.push("value");
            }
            if n.headers {
                parts.push("headers");
            }
            format!(
                "decide per record batch, seeing [{}] (+ timestamp)",
                parts.join(", ")
            )
        }
        TopicPlan::EncryptAll(e) => format!("encrypt all records with {}", describe_encrypt(e)),
    }
}
