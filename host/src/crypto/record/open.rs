//! The decrypt side of one record: find its descriptor ([`find_descriptor`]), verify and open
//! the parts a [`RevealScope`] reveals ([`open_record`], or [`withhold_all`] when it reveals
//! none); pure given the keys.

use aes_siv::siv::Aes256Siv;
use bytes::Bytes;

use crate::crypto::primitives::{nonce_at, siv_open, Dek};
use crate::crypto::wire::{
    key_aad, split_header, AadScheme, Descriptor, FieldEncoding, PartKind, RecordContext,
    ValueEncryption, WireError, HEADER_KEY,
};
use crate::json::{find_spans, parse_pointer};
use crate::kafka::records::{Record, RecordHeader};

use super::fields;
use super::stream::{self, OpenedFields, PendingRecord, StreamField, ValueArena};

use super::*;

/// A failure to open one record, before it is given its index.
pub(super) enum OpenFail {
    Integrity(String),
    Malformed(String),
}

impl RevealScope<'_> {
    /// Whether an encrypted record key is decrypted.
    pub(super) fn reveals_key(&self) -> bool {
        match self {
            RevealScope::All => true,
            RevealScope::Parts(p) => p.record_key,
            RevealScope::Ciphertext => false,
        }
    }

    /// Whether a wholly encrypted value is decrypted.
    pub(super) fn reveals_value(&self) -> bool {
        match self {
            RevealScope::All => true,
            RevealScope::Parts(p) => p.value,
            RevealScope::Ciphertext => false,
        }
    }

    /// Whether the encrypted JSON field at `pointer` (as written in the descriptor) is decrypted.
    pub(super) fn reveals_json_field(&self, pointer: &str) -> bool {
        match self {
            RevealScope::All => true,
            RevealScope::Parts(p) => p.value || p.json_fields.iter().any(|f| f == pointer),
            RevealScope::Ciphertext => false,
        }
    }

    /// Whether the encrypted schema field at `path` (as written in the descriptor) is decrypted.
    pub(super) fn reveals_schema_field(&self, path: &str) -> bool {
        match self {
            RevealScope::All => true,
            RevealScope::Parts(p) => p.value || p.schema_fields.iter().any(|f| f == path),
            RevealScope::Ciphertext => false,
        }
    }

    /// Whether the encrypted headers called `name` are decrypted.
    pub(super) fn reveals_header(&self, name: &[u8]) -> bool {
        match self {
            RevealScope::All => true,
            RevealScope::Parts(p) => p.headers.iter().any(|h| h.as_bytes() == name),
            RevealScope::Ciphertext => false,
        }
    }

    /// Whether any encrypted part `desc` lists is decrypted (else the record needs no key).
    pub(super) fn reveals_any(&self, desc: &Descriptor) -> bool {
        (desc.key_encrypted && self.reveals_key())
            || match &desc.value {
                ValueEncryption::None => false,
                ValueEncryption::Whole => self.reveals_value(),
                ValueEncryption::Json(ptrs) => ptrs.iter().any(|p| self.reveals_json_field(p)),
                ValueEncryption::Schema(f) => f.iter().any(|f| self.reveals_schema_field(&f.path)),
            }
            || desc.headers.iter().any(|h| self.reveals_header(h))
    }
}

/// The encrypted parts of one record delivered still as ciphertext.
#[derive(Default)]
struct Withheld {
    key: bool,
    value: bool,
    json_fields: Vec<String>,
    schema_fields: Vec<String>,
    headers: Vec<String>,
}

impl Withheld {
    /// Names the encrypted header `name` as withheld (once per name).
    fn add_header(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(name);
        if !self.headers.iter().any(|h| *h == name) {
            self.headers.push(name.into_owned());
        }
    }

    fn is_empty(&self) -> bool {
        !self.key
            && !self.value
            && self.json_fields.is_empty()
            && self.schema_fields.is_empty()
            && self.headers.is_empty()
    }

    /// Names the encrypted schema field `path` as withheld (once per path: arrays repeat it).
    fn add_schema_field(&mut self, path: &str) {
        if !self.schema_fields.iter().any(|f| f == path) {
            self.schema_fields.push(path.to_owned());
        }
    }

    /// The [`WITHHELD_HEADER`] value: a JSON object with only the kinds that are withheld.
    fn header_value(&self) -> Bytes {
        let mut m = serde_json::Map::new();
        if self.key {
            m.insert("key".into(), true.into());
        }
        if self.value {
            m.insert("value".into(), true.into());
        }
        if !self.json_fields.is_empty() {
            m.insert("json_fields".into(), self.json_fields.clone().into());
        }
        if !self.schema_fields.is_empty() {
            m.insert("schema_fields".into(), self.schema_fields.clone().into());
        }
        if !self.headers.is_empty() {
            m.insert("headers".into(), self.headers.clone().into());
        }
        Bytes::from(serde_json::Value::Object(m).to_string())
    }
}

/// Delivers `rec` with every encrypted part withheld, for a scope that reveals none of them:
/// no key is needed and nothing is opened. The descriptor is replaced by [`WITHHELD_HEADER`].
pub(super) fn withhold_all(rec: &Record, desc_idx: usize, desc: &Descriptor) -> Record {
    let mut withheld = Withheld {
        key: desc.key_encrypted,
        value: desc.value == ValueEncryption::Whole,
        json_fields: match &desc.value {
            ValueEncryption::Json(p) => p.clone(),
            _ => Vec::new(),
        },
        schema_fields: Vec::new(),
        headers: Vec::new(),
    };
    if let ValueEncryption::Schema(f) = &desc.value {
        for f in f {
            withheld.add_schema_field(&f.path);
        }
    }
    for h in &desc.headers {
        withheld.add_header(h);
    }
    let mut headers: Vec<_> = rec
        .headers
        .iter()
        .enumerate()
        .filter(|(i, h)| *i != desc_idx && h.key != WITHHELD_HEADER.as_bytes())
        .map(|(_, h)| h.clone())
        .collect();
    push_withheld(&mut headers, &withheld);
    Record {
        headers,
        ..rec.clone()
    }
}

fn push_withheld(headers: &mut Vec<RecordHeader>, withheld: &Withheld) {
    if !withheld.is_empty() {
        headers.push(RecordHeader {
            key: Bytes::from_static(WITHHELD_HEADER.as_bytes()),
            value: Some(withheld.header_value()),
        });
    }
}

/// Decrypts the parts of `rec` that `scope` reveals; `rec`'s descriptor (header at `desc_idx`)
/// is `desc`. Pure given the keys.
///
/// The record tag is verified first, whatever the scope: it authenticates the descriptor, the
/// record key and a value that is not wholly encrypted (JSON ciphertext fields included). Every
/// revealed part is then authenticated as it is opened; withheld parts are left as stored. The
/// descriptor header and any stored [`WITHHELD_HEADER`] are dropped; a record with parts
/// withheld gets a fresh [`WITHHELD_HEADER`].
///
/// A whole value under revision 3 is opened in `arena` (the record is complete once the arena is
/// frozen). On error nothing of the record is left in `arena`.
#[allow(clippy::too_many_arguments)] // the record, its keys, what to reveal, where to open
pub(super) fn open_record(
    topic: &str,
    rec: &Record,
    desc_idx: usize,
    desc: &Descriptor,
    dek: &Dek,
    key_cipher: Option<&mut Aes256Siv>,
    scope: RevealScope<'_>,
    arena: &mut ValueArena,
) -> Result<(PendingRecord, u64), OpenFail> {
    let mark = arena.mark();
    let opened = open_in_arena(topic, rec, desc_idx, desc, dek, key_cipher, scope, arena);
    if opened.is_err() {
        // A value opened before a later part failed: the record is not delivered.
        arena.discard_from(mark);
    }
    opened
}

/// [`open_record`], which undoes what this leaves in `arena` when it fails.
#[allow(clippy::too_many_arguments)]
fn open_in_arena(
    topic: &str,
    rec: &Record,
    desc_idx: usize,
    desc: &Descriptor,
    dek: &Dek,
    key_cipher: Option<&mut Aes256Siv>,
    scope: RevealScope<'_>,
    arena: &mut ValueArena,
) -> Result<(PendingRecord, u64), OpenFail> {
    let header_value = rec.headers[desc_idx]
        .value
        .as_deref()
        .ok_or_else(|| OpenFail::Malformed("null kapsule.enc header".into()))?;
    let (desc_bytes, tag) =
        split_header(header_value).map_err(|e| OpenFail::Malformed(e.to_string()))?;
    let ctx = RecordContext {
        scheme: desc.aad,
        topic,
        wire_key: rec.key.as_deref(),
        descriptor: desc_bytes,
        record_id: &desc.record_id,
    };
    // The record tag first: it covers the whole record body and the descriptor.
    let tag_index = desc
        .value_parts()
        .checked_add(desc.headers.len() as u32)
        .ok_or_else(|| OpenFail::Malformed("too many parts".into()))?;
    let tag_nonce = nonce_at(&desc.nonce_base, tag_index)
        .ok_or_else(|| OpenFail::Malformed("nonce counter overflow".into()))?;
    // One AAD buffer for the record tag and every part of the record, allocated when first
    // needed.
    let mut aad = Vec::new();
    // Revision 3: the whole value's or the fields' plaintexts come with the tag's verification
    // (one stream).
    let mut stream_whole = None;
    let stream_fields = if desc.aad == AadScheme::V3 && desc.value == ValueEncryption::Whole {
        let stored = rec
            .value
            .as_deref()
            .ok_or_else(|| OpenFail::Integrity("encrypted value was replaced by null".into()))?;
        let opened = stream::open_whole(dek, &tag_nonce, &ctx, stored, tag, arena)
            .map_err(|e| OpenFail::Integrity(e.to_string()))?;
        stream_whole = Some(opened);
        None
    } else if desc.aad == AadScheme::V3 {
        Some(open_stream_fields(
            desc,
            &ctx,
            rec.value.as_deref(),
            dek,
            &tag_nonce,
            tag,
        )?)
    } else {
        let expected_tag = record_tag(
            dek,
            &tag_nonce,
            &ctx,
            tag_value(&desc.value, rec.value.as_deref()),
            &mut aad,
        );
        if !crate::constant_time::eq(&expected_tag, tag) {
            return Err(OpenFail::Integrity(
                "record tag does not authenticate (record body or descriptor altered, moved or \
                 forged)"
                    .into(),
            ));
        }
        None
    };
    let mut bytes = 0u64;
    let mut withheld = Withheld::default();
    let mut open = |kind: PartKind,
                    index: u32,
                    name: &[u8],
                    ct: &[u8]|
     -> Result<Vec<u8>, OpenFail> {
        let nonce = nonce_at(&desc.nonce_base, index)
            .ok_or_else(|| OpenFail::Malformed("nonce counter overflow".into()))?;
        reserve_aad(&mut aad, &ctx);
        ctx.part_aad(kind, index, name, &mut aad);
        dek.open(&nonce, &aad, ct).ok_or_else(|| {
            let what = match kind {
                PartKind::Value => "value".to_owned(),
                PartKind::JsonField => {
                    format!("JSON field {}", String::from_utf8_lossy(name))
                }
                PartKind::Header => format!("header {}", String::from_utf8_lossy(name)),
                PartKind::SchemaField => {
                    format!("schema field {}", String::from_utf8_lossy(name))
                }
            };
            OpenFail::Integrity(format!(
                "{what} does not authenticate (moved from another topic, record or part, or altered)"
            ))
        })
    };
    let new_key = if desc.key_encrypted && scope.reveals_key() {
        let (Some(k), Some(siv)) = (&rec.key, key_cipher) else {
            return Err(OpenFail::Malformed(
                "descriptor says the key is encrypted but it is null".into(),
            ));
        };
        let pt = siv_open(siv, &key_aad(topic, &desc.kek_id, desc.key_kek_version), k)
            .ok_or_else(|| OpenFail::Integrity("record key does not authenticate".into()))?;
        bytes += pt.len() as u64;
        Some(Bytes::from(pt))
    } else {
        withheld.key = desc.key_encrypted;
        rec.key.clone()
    };
    // Where a whole value opened in the arena lies there (`new_value` is then `None`).
    let mut value_slot = None;
    let new_value = match (&desc.value, &rec.value) {
        (ValueEncryption::None, v) => v.clone(),
        (_, None) => {
            return Err(OpenFail::Integrity(
                "encrypted value was replaced by null".into(),
            ));
        }
        (ValueEncryption::Whole, Some(v)) if scope.reveals_value() => {
            match stream_whole.take() {
                Some(opened) => {
                    // Revision 3: the plaintext is as long as the stored value (no tag of its own).
                    bytes += v.len() as u64;
                    value_slot = Some(opened);
                    None
                }
                None => {
                    let pt = Bytes::from(open(PartKind::Value, 0, b"", v)?);
                    bytes += pt.len() as u64;
                    Some(pt)
                }
            }
        }
        (ValueEncryption::Whole, Some(v)) => {
            // A revision 3 plaintext opened only to verify the tag: wiped, never delivered.
            if let Some(opened) = stream_whole.take() {
                arena.discard(opened);
            }
            withheld.value = true;
            Some(v.clone())
        }
        (ValueEncryption::Json(_) | ValueEncryption::Schema(_), Some(v)) => {
            let located = match &stream_fields {
                Some((located, _)) => located,
                None => &locate_fields(desc, v).map_err(OpenFail::Malformed)?,
            };
            let mut repl = Vec::with_capacity(located.len());
            for (i, f) in located.iter().enumerate() {
                let json = f.kind == PartKind::JsonField;
                if json && !scope.reveals_json_field(f.name) {
                    // Left as its stored `"kapsule:v1:..."` string (authenticated by the tag).
                    withheld.json_fields.push(f.name.to_owned());
                    continue;
                }
                if !json && !scope.reveals_schema_field(f.name) {
                    // Left as stored (authenticated by the record tag).
                    withheld.add_schema_field(f.name);
                    continue;
                }
                let pt = match &stream_fields {
                    Some((_, opened)) => opened.field(i).to_vec(),
                    None => {
                        let ct = fields::decode(f.stream.encoding, &v[f.stream.span.clone()])
                            .map_err(|e| OpenFail::Malformed(format!("{}: {e}", f.what())))?;
                        open(f.kind, i as u32, f.name.as_bytes(), &ct)?
                    }
                };
                bytes += pt.len() as u64;
                repl.push((f.stream.span.clone(), pt));
            }
            if repl.is_empty() {
                Some(v.clone())
            } else {
                Some(Bytes::from(splice(v, repl)))
            }
        }
    };
    let base = desc.value_parts();
    // Every header but the descriptor (a withheld-parts header, when one is added, grows it).
    let mut headers = Vec::with_capacity(rec.headers.len() - 1);
    let mut j = 0usize;
    for (i, h) in rec.headers.iter().enumerate() {
        if i == desc_idx || h.key == WITHHELD_HEADER.as_bytes() {
            continue;
        }
        let mut h = h.clone();
        if let Some(v) = &h.value {
            // Encrypted header names are few (usually none): a scan beats hashing.
            if desc.headers.iter().any(|n| n.as_slice() == h.key.as_ref()) {
                if desc.headers.get(j).map(Vec::as_slice) != Some(h.key.as_ref()) {
                    return Err(OpenFail::Integrity(
                        "encrypted headers were added, removed or reordered".into(),
                    ));
                }
                if scope.reveals_header(&h.key) {
                    let pt = open(PartKind::Header, base + j as u32, &h.key, v)?;
                    bytes += pt.len() as u64;
                    h.value = Some(Bytes::from(pt));
                } else {
                    withheld.add_header(&h.key);
                }
                j += 1;
            }
        }
        headers.push(h);
    }
    if j != desc.headers.len() {
        return Err(OpenFail::Integrity(
            "encrypted headers were removed or nulled".into(),
        ));
    }
    push_withheld(&mut headers, &withheld);
    let opened = Record {
        attributes: rec.attributes,
        timestamp_delta: rec.timestamp_delta,
        offset_delta: rec.offset_delta,
        key: new_key,
        value: new_value,
        headers,
    };
    Ok((PendingRecord::new(opened, value_slot), bytes))
}

/// One encrypted field of a stored value, in descriptor order.
struct LocatedPart<'d> {
    /// The JSON pointer or schema field path.
    name: &'d str,
    kind: PartKind,
    /// Where it lies in the stored value, and in which form.
    stream: StreamField,
}

impl AsRef<StreamField> for LocatedPart<'_> {
    fn as_ref(&self) -> &StreamField {
        &self.stream
    }
}

impl LocatedPart<'_> {
    /// The field as error messages name it.
    fn what(&self) -> String {
        match self.kind {
            PartKind::JsonField => format!("JSON field {}", self.name),
            _ => format!("schema field {}", self.name),
        }
    }
}

/// The encrypted fields of the stored `value` a JSON or schema descriptor lists: at the
/// descriptor's spans (schema) or where its pointers point (JSON). `Err` says what is missing.
fn locate_fields<'d>(desc: &'d Descriptor, value: &[u8]) -> Result<Vec<LocatedPart<'d>>, String> {
    match &desc.value {
        ValueEncryption::Schema(parts) => parts
            .iter()
            .map(|f| {
                let span = f.start as usize..f.start as usize + f.len as usize;
                if span.end > value.len() {
                    return Err(format!("schema field {} lies outside the value", f.path));
                }
                Ok(LocatedPart {
                    name: &f.path,
                    kind: PartKind::SchemaField,
                    stream: StreamField {
                        span,
                        encoding: f.encoding,
                    },
                })
            })
            .collect(),
        ValueEncryption::Json(ptrs) => {
            let targets = ptrs
                .iter()
                .map(|p| parse_pointer(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            find_spans(value, &targets, ptrs)
                .map_err(|e| e.to_string())?
                .into_iter()
                .zip(ptrs)
                .map(|(span, name)| {
                    let span =
                        span.ok_or_else(|| format!("encrypted JSON field {name} was removed"))?;
                    Ok(LocatedPart {
                        name,
                        kind: PartKind::JsonField,
                        stream: StreamField {
                            span,
                            encoding: FieldEncoding::JsonText,
                        },
                    })
                })
                .collect()
        }
        ValueEncryption::None | ValueEncryption::Whole => Ok(Vec::new()),
    }
}

/// Verifies a revision 3 record's tag and returns its fields, located, with their plaintexts.
/// Every failure is an integrity failure: the writer stored each field in its form at its place
/// in valid JSON or at the descriptor's spans, so anything else was altered.
fn open_stream_fields<'d>(
    desc: &'d Descriptor,
    ctx: &RecordContext<'_>,
    value: Option<&[u8]>,
    dek: &Dek,
    nonce: &[u8; crate::crypto::primitives::NONCE_LEN],
    tag: &[u8; crate::crypto::primitives::TAG_LEN],
) -> Result<(Vec<LocatedPart<'d>>, OpenedFields), OpenFail> {
    let value =
        value.ok_or_else(|| OpenFail::Integrity("encrypted value was replaced by null".into()))?;
    let located = locate_fields(desc, value)
        .map_err(|e| OpenFail::Integrity(format!("value altered: {e}")))?;
    let opened = stream::open_fields(dek, nonce, ctx, value, &located, tag)
        .map_err(|e| OpenFail::Integrity(e.to_string()))?;
    Ok((located, opened))
}

/// Why a record's `kapsule.enc` header cannot be read (the record is malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DescriptorProblem {
    /// The record carries the header more than once.
    #[error("more than one '{HEADER_KEY}' header")]
    Duplicate,
    /// The header has a null value.
    #[error("null {HEADER_KEY} header")]
    Null,
    /// The header's bytes are not a descriptor this build reads.
    #[error(transparent)]
    Undecodable(#[from] WireError),
}

/// Finds the one descriptor header of `rec`: `Ok(None)` when absent.
pub(super) fn find_descriptor(
    rec: &Record,
) -> Result<Option<(usize, Descriptor<'_>)>, DescriptorProblem> {
    let mut found = None;
    for (i, h) in rec.headers.iter().enumerate() {
        if h.key == HEADER_KEY.as_bytes() {
            if found.is_some() {
                return Err(DescriptorProblem::Duplicate);
            }
            let v = h.value.as_deref().ok_or(DescriptorProblem::Null)?;
            let (d, _) = split_header(v)?;
            found = Some((i, Descriptor::decode(d)?));
        }
    }
    Ok(found)
}
