//! `kapsule inspect`: shows what Kapsule encrypted in stored records, without any key.
//!
//! Reads raw records straight from a broker (not through Kapsule) and decodes each record's
//! `kapsule.enc` descriptor: format version, KEK id, record-key KEK version, which parts are
//! encrypted (whole value, JSON pointers, record key, header names) and the EDEK length. It
//! never prints key material (the EDEK bytes, nonces, record ids) nor record contents.

use base64::Engine;
use serde::Serialize;

use crate::crypto::wire::{
    split_header, AadScheme, Descriptor, ValueEncryption, FORMAT_V1, HEADER_KEY,
};
use crate::kafka::records::Record;
use crate::tools::client::{Cluster, TopicPartition};

/// The printable summary of one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DescriptorSummary {
    /// Descriptor format version.
    pub version: u8,
    /// KEK that wrapped the record's DEK.
    pub kek_id: String,
    /// KEK version of the deterministic record-key encryption, when the key is encrypted.
    pub key_kek_version: Option<u32>,
    /// `"none"`, `"whole"` or `"json"`.
    pub value: &'static str,
    /// Encrypted JSON pointers (JSON mode) or schema field paths (schema mode).
    pub json_pointers: Vec<String>,
    /// True if the record key is encrypted.
    pub key_encrypted: bool,
    /// Names of encrypted headers (lossy UTF-8), one per encrypted occurrence.
    pub encrypted_headers: Vec<String>,
    /// Length of the wrapped DEK in bytes.
    pub edek_len: usize,
    /// True if the header value carried a record tag after the descriptor.
    pub has_record_tag: bool,
    /// Associated data revision (1 or 2; docs/wire-format.md, "Associated data").
    pub aad_revision: u8,
}

impl DescriptorSummary {
    fn new(d: &Descriptor, has_record_tag: bool) -> Self {
        let (value, json_pointers) = match &d.value {
            ValueEncryption::None => ("none", Vec::new()),
            ValueEncryption::Whole => ("whole", Vec::new()),
            ValueEncryption::Json(p) => ("json", p.clone()),
            ValueEncryption::Schema(f) => ("schema", f.iter().map(|f| f.path.clone()).collect()),
        };
        Self {
            version: FORMAT_V1,
            kek_id: d.kek_id.to_string(),
            key_kek_version: d.key_encrypted.then_some(d.key_kek_version),
            value,
            json_pointers,
            key_encrypted: d.key_encrypted,
            encrypted_headers: d
                .headers
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect(),
            edek_len: d.edek.len(),
            has_record_tag,
            aad_revision: match d.aad {
                AadScheme::V1 => 1,
                AadScheme::V2 => 2,
                AadScheme::V3 => 3,
            },
        }
    }
}

/// Decodes a `kapsule.enc` header value: descriptor followed by the 16-byte record tag (as
/// stored), or a bare descriptor.
pub fn decode_header_value(value: &[u8]) -> anyhow::Result<DescriptorSummary> {
    if let Ok((desc, _tag)) = split_header(value) {
        if let Ok(d) = Descriptor::decode(desc) {
            return Ok(DescriptorSummary::new(&d, true));
        }
    }
    let d = Descriptor::decode(value).map_err(|e| {
        anyhow::anyhow!("{e} (neither a descriptor plus record tag nor a bare descriptor)")
    })?;
    Ok(DescriptorSummary::new(&d, false))
}

/// Decodes a base64 (standard or URL-safe, padding optional) `kapsule.enc` header value.
pub fn decode_header_base64(text: &str) -> anyhow::Result<DescriptorSummary> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = text.trim();
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(t).ok())
        .ok_or_else(|| anyhow::anyhow!("--header-base64 is not valid base64"))?;
    decode_header_value(&bytes)
}

/// What `inspect` reports for one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordReport {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `"encrypted"`, `"clear"` (no descriptor) or `"invalid"` (undecodable descriptor).
    pub status: &'static str,
    /// The descriptor, when it decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<DescriptorSummary>,
    /// Why the descriptor did not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Number of `kapsule.enc` headers (more than one is invalid).
    #[serde(skip_serializing_if = "is_one")]
    pub descriptor_headers: usize,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Inspects one record's headers.
pub fn inspect_record(partition: i32, offset: i64, r: &Record) -> RecordReport {
    let descs: Vec<_> = r
        .headers
        .iter()
        .filter(|h| h.key.as_ref() == HEADER_KEY.as_bytes())
        .collect();
    let mut rep = RecordReport {
        partition,
        offset,
        status: "clear",
        descriptor: None,
        error: None,
        descriptor_headers: descs.len(),
    };
    match descs.as_slice() {
        [] => {}
        [h] => match h.value.as_deref().map(decode_header_value) {
            Some(Ok(d)) => {
                rep.status = "encrypted";
                rep.descriptor = Some(d);
            }
            Some(Err(e)) => {
                rep.status = "invalid";
                rep.error = Some(format!("{e:#}"));
            }
            None => {
                rep.status = "invalid";
                rep.error = Some(format!("{HEADER_KEY} header has a null value"));
            }
        },
        _ => {
            rep.status = "invalid";
            rep.error = Some(format!("{} {HEADER_KEY} headers", descs.len()));
        }
    }
    rep
}

/// Which records to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Topic.
    pub topic: String,
    /// One partition, or every partition when `None`.
    pub partition: Option<i32>,
    /// First offset; the earliest when `None`.
    pub offset: Option<i64>,
    /// Most records per partition. Default 10.
    pub limit: usize,
}

/// Reads up to `limit` records per partition and reports each one's descriptor, calling `out`
/// per record in offset order. Returns the number of records reported.
pub async fn inspect<C: Cluster>(
    cluster: &mut C,
    opts: &InspectOptions,
    out: &mut dyn FnMut(&RecordReport) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let all = cluster.partitions(&opts.topic).await?;
    let parts = match opts.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => anyhow::bail!(
            "topic {:?} has no partition {p} (it has {})",
            opts.topic,
            all.len()
        ),
        None => all,
    };
    let mut total = 0;
    for p in parts {
        let tp = TopicPartition::new(&opts.topic, p);
        let (earliest, end) = cluster.offsets(tp).await?;
        let mut next = opts.offset.unwrap_or(earliest).max(earliest);
        let mut seen = 0;
        let mut empty = 0;
        while next < end && seen < opts.limit {
            let batches = cluster.fetch(tp, next, 1024 * 1024).await?;
            let mut reached = next;
            for b in batches {
                reached = reached.max(b.base_offset + i64::from(b.last_offset_delta) + 1);
                if b.is_control() {
                    continue;
                }
                for r in &b.records {
                    let o = b.base_offset + i64::from(r.offset_delta);
                    if o < next || seen >= opts.limit {
                        continue;
                    }
                    out(&inspect_record(p, o, r))?;
                    seen += 1;
                }
            }
            if reached == next {
                empty += 1;
                if empty >= 20 {
                    anyhow::bail!(
                        "{}/{p}: no records returned at offset {next} (end {end})",
                        opts.topic
                    );
                }
            } else {
                empty = 0;
            }
            next = reached;
        }
        total += seen;
    }
    Ok(total)
}
