//! The encrypt side of one record: what to encrypt ([`prepare`]), then the sealed record
//! ([`seal_record`]); pure given the keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use aes_siv::siv::Aes256Siv;
use bytes::Bytes;

use crate::crypto::primitives::{nonce_at, siv_seal, Dek, NONCE_LEN, TAG_LEN};
use crate::crypto::wire::{
    key_aad, value_stream_prefix_len, AadScheme, Descriptor, FieldEncoding, PartKind,
    RecordContext, SchemaFieldPart, ValueEncryption, WireError, HEADER_KEY,
};
use crate::json::{find_spans, parse_pointer, JsonError};
use crate::kafka::records::{Record, RecordHeader};
use crate::plan::{EncryptionPlan, ValuePart};
use crate::schema::LocatedField;

use super::fields;
use super::stream::{self, PendingRecord, StreamField, ValueArena};

use super::*;

/// What of one record will be encrypted, found before any key is fetched.
pub(super) struct Prepared {
    pub(super) key: bool,
    value_whole: bool,
    /// (pointer, span in the value), in plan order.
    fields: Vec<(String, Range<usize>)>,
    /// Selected fields of a schema-encoded value, in ascending span order.
    schema_fields: Vec<LocatedField>,
    /// Indices of headers whose values are encrypted.
    headers: Vec<usize>,
    pub(super) bytes: u64,
}

impl Prepared {
    /// AES-GCM invocations (and nonces) sealing the record takes when a whole value is written
    /// under `whole_scheme`: the whole value under revision 1, header parts, and the record tag
    /// (encrypted fields, and a whole value under revision 3, are sealed in the record tag's
    /// stream).
    pub(super) fn parts(&self, whole_scheme: AadScheme) -> u64 {
        u64::from(self.value_whole && whole_scheme != AadScheme::V3) + self.headers.len() as u64 + 1
    }

    /// About how many bytes sealing `rec` takes in a batch's [`ValueArena`]: its whole value's
    /// revision 3 stream (prefix and value), or nothing. `edek_len` is the length of the
    /// encrypted DEK its descriptor carries. An estimate for the arena's first allocation,
    /// generous rather than short (the arena grows if it must).
    pub(super) fn stream_bytes_estimate(
        &self,
        rec: &Record,
        plan: &EncryptionPlan,
        topic: &str,
        edek_len: usize,
        whole_scheme: AadScheme,
    ) -> usize {
        if !self.value_whole || whole_scheme != AadScheme::V3 {
            return 0;
        }
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        // The descriptor, generously: fixed fields, KEK id, EDEK, the encrypted headers' names.
        let descriptor = 96
            + plan.key_id.len()
            + edek_len
            + self
                .headers
                .iter()
                .map(|&i| rec.headers[i].key.len() + 4)
                .sum::<usize>();
        // The key as sent (AES-SIV adds its tag when the key is encrypted).
        let key = len(&rec.key) + TAG_LEN;
        value_stream_prefix_len(topic.len(), key, descriptor, 1) + len(&rec.value)
    }
}

/// Why one record cannot be sealed as planned.
#[derive(Debug, thiserror::Error)]
pub(super) enum SealFail {
    /// The record already carries a descriptor.
    #[error("it already carries a '{HEADER_KEY}' header (already encrypted, or forged)")]
    PreEncrypted,
    /// The value is not JSON, or a pointer is invalid.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The descriptor cannot be encoded (a field too long).
    #[error(transparent)]
    Descriptor(#[from] WireError),
    /// More parts than the nonce counter allows.
    #[error("nonce counter overflow")]
    NonceOverflow,
    /// The plan encrypts the key but no record-key cipher was given (a bug in the caller).
    #[error("record-key cipher missing")]
    KeyCipherMissing,
    /// The fields' spans cannot form a revision 3 stream (overlapping spans: a bug in the caller).
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The plan encrypts schema fields but they were not located (a bug in the caller).
    #[error("internal error: schema fields were not located before sealing")]
    SchemaFieldsMissing,
    /// A schema field's span does not fit the descriptor's 32-bit offsets.
    #[error("value too large for schema field encryption")]
    ValueTooLarge,
}

/// What of `rec` will be encrypted. `located` holds the selected fields of a schema-encoded value
/// (found with the registry beforehand) when the plan encrypts schema fields.
pub(super) fn prepare(
    rec: &Record,
    plan: &EncryptionPlan,
    located: Option<Vec<LocatedField>>,
) -> Result<Prepared, SealFail> {
    if rec.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes()) {
        return Err(SealFail::PreEncrypted);
    }
    let mut bytes = 0u64;
    let key = plan.record_key && rec.key.is_some();
    if key {
        bytes += rec.key.as_ref().map_or(0, |k| k.len() as u64);
    }
    let mut value_whole = false;
    let mut fields = Vec::new();
    let mut schema_fields = Vec::new();
    match (&plan.value, &rec.value) {
        (_, None) | (ValuePart::None, _) => {}
        (ValuePart::SchemaFields(_), Some(_)) => {
            schema_fields = located.ok_or(SealFail::SchemaFieldsMissing)?;
            bytes += schema_fields
                .iter()
                .map(|f| f.range.len() as u64)
                .sum::<u64>();
        }
        (ValuePart::Whole, Some(v)) => {
            value_whole = true;
            bytes += v.len() as u64;
        }
        (ValuePart::JsonFields(ptrs), Some(v)) => {
            let mut seen = HashSet::new();
            let names: Vec<String> = ptrs.iter().filter(|p| seen.insert(*p)).cloned().collect();
            let targets = names
                .iter()
                .map(|p| parse_pointer(p))
                .collect::<Result<Vec<_>, JsonError>>()?;
            let spans = find_spans(v, &targets, &names)?;
            for (name, span) in names.into_iter().zip(spans) {
                if let Some(s) = span {
                    bytes += s.len() as u64;
                    fields.push((name, s));
                }
            }
        }
    }
    let mut headers = Vec::new();
    for (i, h) in rec.headers.iter().enumerate() {
        if let Some(v) = &h.value {
            if plan.headers.iter().any(|n| n.as_bytes() == h.key.as_ref()) {
                bytes += v.len() as u64;
                headers.push(i);
            }
        }
    }
    Ok(Prepared {
        key,
        value_whole,
        fields,
        schema_fields,
        headers,
        bytes,
    })
}

/// Everything that makes encryption of one record deterministic (fixed in golden tests).
pub(super) struct SealParams<'a> {
    pub topic: &'a str,
    pub dek: &'a Dek,
    pub nonce_base: [u8; NONCE_LEN],
    pub record_id: [u8; 16],
    /// AES-SIV cipher and KEK version for the record key, when the plan encrypts it.
    pub key_cipher: Option<(&'a mut Aes256Siv, u32)>,
    /// The associated data revision written for a value with encrypted fields:
    /// [`AadScheme::V3`] ([`AadScheme::V2`] only to reproduce older test vectors).
    pub fields_scheme: AadScheme,
    /// The associated data revision written for a wholly encrypted value: [`AadScheme::V3`]
    /// (one AES-GCM call for value and record tag) or [`AadScheme::V1`] (readable by releases
    /// that predate revision 3 for whole values; `record_format.whole_value_revision: 1`).
    pub whole_scheme: AadScheme,
}

/// Encrypts `rec` as `prep` says (its field names move into the descriptor); pure given `p`. A
/// whole value under revision 3 is sealed in `arena` (the record is complete once the arena is
/// frozen); on error `arena` may hold a sealed value no record refers to.
pub(super) fn seal_record(
    rec: &Record,
    mut prep: Prepared,
    p: SealParams<'_>,
    arena: &mut ValueArena,
) -> Result<PendingRecord, SealFail> {
    let kek_id: &str = &p.dek.kek_id;
    let (new_key, key_version) = match (prep.key, p.key_cipher, &rec.key) {
        (true, Some((siv, ver)), Some(k)) => (
            Some(Bytes::from(siv_seal(
                siv,
                &key_aad(p.topic, kek_id, ver),
                k,
            ))),
            ver,
        ),
        (true, _, _) => return Err(SealFail::KeyCipherMissing),
        (false, _, k) => (k.clone(), 0),
    };
    let has_fields = !prep.fields.is_empty() || !prep.schema_fields.is_empty();
    // Revision 3 for a value with encrypted fields, and (as configured) for a whole value;
    // revision 2 for a value wholly in clear (the tag seals it in bulk); revision 1 for
    // tombstones, so readers that predate revision 2 read them (no value: nothing to save).
    let scheme = match &rec.value {
        Some(_) if has_fields => p.fields_scheme,
        Some(_) if prep.value_whole => p.whole_scheme,
        Some(_) => AadScheme::V2,
        None => AadScheme::V1,
    };
    let field_tag_len = if scheme == AadScheme::V3 { 0 } else { TAG_LEN };
    let desc = Descriptor {
        value: if prep.value_whole {
            ValueEncryption::Whole
        } else if !prep.schema_fields.is_empty() {
            ValueEncryption::Schema(stored_spans(&mut prep.schema_fields, field_tag_len)?)
        } else if !prep.fields.is_empty() {
            ValueEncryption::Json(
                prep.fields
                    .iter_mut()
                    .map(|(n, _)| std::mem::take(n))
                    .collect(),
            )
        } else {
            ValueEncryption::None
        },
        key_encrypted: prep.key,
        record_id: p.record_id,
        nonce_base: p.nonce_base,
        key_kek_version: key_version,
        kek_id: Cow::Borrowed(kek_id),
        edek: Cow::Borrowed(&p.dek.edek),
        headers: prep
            .headers
            .iter()
            .map(|&i| rec.headers[i].key.to_vec())
            .collect(),
        aad: scheme,
    };
    let desc_bytes = desc.encode()?;
    // Header parts follow the value parts; the record tag (revision 3: the fields' stream)
    // follows them.
    let base = desc.value_parts();
    let tag_index = base + prep.headers.len() as u32;
    let ctx = RecordContext {
        scheme: desc.aad,
        topic: p.topic,
        wire_key: new_key.as_deref(),
        descriptor: &desc_bytes,
        record_id: &p.record_id,
    };
    // One AAD buffer for every part of the record and its tag, allocated when first needed.
    let mut aad = Vec::new();
    // The record tag, when a revision 3 stream gave it with the fields.
    let mut stream_tag = None;
    let mut seal_into = |kind: PartKind,
                         index: u32,
                         name: &[u8],
                         pt: &[u8],
                         out: &mut Vec<u8>|
     -> Result<(), SealFail> {
        let nonce = nonce_at(&p.nonce_base, index).ok_or(SealFail::NonceOverflow)?;
        reserve_aad(&mut aad, &ctx);
        ctx.part_aad(kind, index, name, &mut aad);
        p.dek.seal_into(&nonce, &aad, pt, out);
        Ok(())
    };
    // Where a whole value sealed in the arena lies there (`new_value` is then `None`).
    let mut value_slot = None;
    let new_value = match &rec.value {
        Some(v) if prep.value_whole && scheme == AadScheme::V3 => {
            // Value and record tag in one stream, at the record tag's nonce.
            let nonce = nonce_at(&p.nonce_base, tag_index).ok_or(SealFail::NonceOverflow)?;
            let (slot, tag) = stream::seal_whole(p.dek, &nonce, &ctx, v, arena);
            stream_tag = Some(tag);
            value_slot = Some(slot);
            None
        }
        Some(v) if prep.value_whole => {
            let mut out = Vec::with_capacity(v.len() + TAG_LEN);
            seal_into(PartKind::Value, 0, b"", v, &mut out)?;
            Some(Bytes::from(out))
        }
        Some(v) if has_fields => {
            // Names as the descriptor holds them (moved there from `prep`), in descriptor order.
            let parts: Vec<SealPart<'_>> = match &desc.value {
                ValueEncryption::Json(names) => prep
                    .fields
                    .iter()
                    .zip(names)
                    .map(|((_, span), name)| SealPart {
                        name: name.as_bytes(),
                        field: StreamField {
                            span: span.clone(),
                            encoding: FieldEncoding::JsonText,
                        },
                    })
                    .collect(),
                ValueEncryption::Schema(stored) => prep
                    .schema_fields
                    .iter()
                    .zip(stored)
                    .map(|(f, part)| SealPart {
                        name: part.path.as_bytes(),
                        field: StreamField {
                            span: f.range.clone(),
                            encoding: f.encoding,
                        },
                    })
                    .collect(),
                ValueEncryption::None | ValueEncryption::Whole => Vec::new(),
            };
            let stored_len = parts.iter().fold(v.len(), |len, part| {
                let f = &part.field;
                len - f.span.len() + fields::stored_len(f.encoding, f.span.len() + field_tag_len)
            });
            if scheme == AadScheme::V3 {
                // Fields and record tag in one stream, at the record tag's nonce.
                let nonce = nonce_at(&p.nonce_base, tag_index).ok_or(SealFail::NonceOverflow)?;
                let (stored, tag) =
                    stream::seal_fields(p.dek, &nonce, &ctx, v, &parts, stored_len)?;
                stream_tag = Some(tag);
                Some(Bytes::from(stored))
            } else {
                // One part per field (part index = descriptor index), sealed in span order
                // straight into the new value.
                let mut order: Vec<usize> = (0..parts.len()).collect();
                order.sort_unstable_by_key(|&i| parts[i].field.span.start);
                let mut out = Vec::with_capacity(stored_len);
                let mut ct = Vec::with_capacity(
                    parts.iter().map(|p| p.field.span.len()).max().unwrap_or(0) + TAG_LEN,
                );
                let kind = if prep.schema_fields.is_empty() {
                    PartKind::JsonField
                } else {
                    PartKind::SchemaField
                };
                let mut pos = 0;
                for index in order {
                    let part = &parts[index];
                    let span = part.field.span.clone();
                    out.extend_from_slice(&v[pos..span.start]);
                    ct.clear();
                    seal_into(kind, index as u32, part.name, &v[span.clone()], &mut ct)?;
                    fields::encode_into(part.field.encoding, &ct, &mut out);
                    pos = span.end;
                }
                out.extend_from_slice(&v[pos..]);
                Some(Bytes::from(out))
            }
        }
        other => other.clone(),
    };
    // Room for the descriptor header pushed below.
    let mut headers = Vec::with_capacity(rec.headers.len() + 1);
    headers.extend(rec.headers.iter().cloned());
    for (j, &i) in prep.headers.iter().enumerate() {
        let h = &mut headers[i];
        let pt = h.value.as_ref().expect("prepared headers are non-null");
        let mut ct = Vec::with_capacity(pt.len() + TAG_LEN);
        seal_into(PartKind::Header, base + j as u32, &h.key, pt, &mut ct)?;
        h.value = Some(Bytes::from(ct));
    }
    let tag = match stream_tag {
        Some(tag) => tag,
        None => {
            let tag_nonce = nonce_at(&p.nonce_base, tag_index).ok_or(SealFail::NonceOverflow)?;
            record_tag(
                p.dek,
                &tag_nonce,
                &ctx,
                tag_value(&desc.value, new_value.as_deref()),
                &mut aad,
            )
        }
    };
    let mut header_value = desc_bytes;
    header_value.extend_from_slice(&tag);
    headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from(header_value)),
    });
    let sealed = Record {
        attributes: rec.attributes,
        timestamp_delta: rec.timestamp_delta,
        offset_delta: rec.offset_delta,
        key: new_key,
        value: new_value,
        headers,
    };
    Ok(PendingRecord::new(sealed, value_slot))
}

/// One encrypted field of the value being sealed, in descriptor order.
struct SealPart<'n> {
    /// The JSON pointer or schema field path (bound in the part's AAD before revision 3).
    name: &'n [u8],
    field: StreamField,
}

impl AsRef<StreamField> for SealPart<'_> {
    fn as_ref(&self) -> &StreamField {
        &self.field
    }
}

/// Where each located field will sit in the stored value once its ciphertext replaces it
/// (ciphertext lengths are known from plaintext lengths, so the descriptor can carry them).
/// `tag_len` is the length of a field's own tag (none in revision 3). The paths move out of
/// `located`.
fn stored_spans(
    located: &mut [LocatedField],
    tag_len: usize,
) -> Result<Vec<SchemaFieldPart>, SealFail> {
    let mut shift: i64 = 0;
    located
        .iter_mut()
        .map(|f| {
            let len = fields::stored_len(f.encoding, f.range.len() + tag_len);
            let start = f.range.start as i64 + shift;
            shift += len as i64 - f.range.len() as i64;
            Ok(SchemaFieldPart {
                path: std::mem::take(&mut f.path),
                encoding: f.encoding,
                start: u32::try_from(start).map_err(|_| SealFail::ValueTooLarge)?,
                len: u32::try_from(len).map_err(|_| SealFail::ValueTooLarge)?,
            })
        })
        .collect()
}

pub(super) fn seal_error(index: usize, f: SealFail) -> EncryptError {
    match f {
        SealFail::PreEncrypted => EncryptError::PreEncrypted { index },
        other => EncryptError::InvalidRecord {
            index,
            message: other.to_string(),
        },
    }
}
