//! Associated data revision 3: the encrypted fields of a value, or a whole encrypted value, and
//! its record tag as one AES-GCM stream (docs/wire-format.md, "Revision 3").
//!
//! The stream is `value prefix | field plaintexts in descriptor order | the stored value without
//! its field spans`, sealed with no AAD at the nonce after the record's header parts. The
//! fields' ciphertexts are written in place of the fields; the rest of that ciphertext is
//! discarded and its tag is the record tag. One AES-GCM call per record, whatever the number of
//! fields: per call, `ring` pays a fixed cost and runs AAD through GHASH a block at a time, which
//! made a 1 KiB record with three fields cost 2.7 times its whole-value encryption when every
//! field and the tag were calls of their own (revision 2).

use std::ops::Range;

use bytes::Bytes;

use crate::crypto::primitives::{Dek, NONCE_LEN, TAG_LEN};
use crate::crypto::wire::{FieldEncoding, RecordContext};

use super::fields;

/// One encrypted field of a value, in descriptor order: where it lies in the value at hand (the
/// plaintext value when sealing, the stored value when opening) and how its ciphertext is
/// written.
#[derive(Debug, Clone)]
pub(super) struct StreamField {
    pub(super) span: Range<usize>,
    pub(super) encoding: FieldEncoding,
}

/// The stream functions take the callers' own per-field records, which carry a [`StreamField`].
impl AsRef<StreamField> for StreamField {
    fn as_ref(&self) -> &StreamField {
        self
    }
}

/// Why a value's fields cannot be sealed or opened as a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StreamError {
    /// Two field spans overlap, or one lies outside the value.
    #[error("encrypted field spans overlap or lie outside the value (record altered)")]
    BadSpans,
    /// A stored field is not in its encoding's form.
    #[error("encrypted field {index} is not in its stored form ({reason}): record altered")]
    BadField { index: usize, reason: &'static str },
    /// The record tag does not authenticate the stream.
    #[error(
        "record tag does not authenticate (record body, a field's ciphertext or the descriptor \
         altered, moved or forged)"
    )]
    Integrity,
}

/// The fields' spans in ascending order, as (descriptor index, span); `Err` when two overlap or
/// one lies outside a value of `len` bytes.
fn ascending<F: AsRef<StreamField>>(
    fields: &[F],
    len: usize,
) -> Result<Vec<(usize, Range<usize>)>, StreamError> {
    let mut order: Vec<(usize, Range<usize>)> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (i, f.as_ref().span.clone()))
        .collect();
    // Schema fields come ascending already; JSON fields in the rule's order.
    if !order.is_sorted_by_key(|(_, span)| span.start) {
        order.sort_unstable_by_key(|(_, span)| span.start);
    }
    let mut end = 0;
    for (_, span) in &order {
        if span.start < end || span.end < span.start || span.end > len {
            return Err(StreamError::BadSpans);
        }
        end = span.end;
    }
    Ok(order)
}

/// Room for the whole stream of a value of `value_len` bytes with `fields` fields.
fn stream_capacity(ctx: &RecordContext<'_>, fields: usize, value_len: usize) -> usize {
    128 + ctx.topic.len()
        + ctx.wire_key.map_or(0, <[u8]>::len)
        + ctx.descriptor.len()
        + 4 * fields
        + value_len
}

/// Appends `value` without the bytes at `ascending` spans to `out`.
fn push_outside(value: &[u8], ascending: &[(usize, Range<usize>)], out: &mut Vec<u8>) {
    let mut pos = 0;
    for (_, span) in ascending {
        out.extend_from_slice(&value[pos..span.start]);
        pos = span.end;
    }
    out.extend_from_slice(&value[pos..]);
}

/// Seals the `fields` of the plaintext `value` with the record tag at `nonce`; returns the
/// stored value (each field replaced by its ciphertext in its encoding) and the record tag.
/// `stored_len` is the stored value's length (for its allocation).
pub(super) fn seal_fields<F: AsRef<StreamField>>(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    value: &[u8],
    fields: &[F],
    stored_len: usize,
) -> Result<(Vec<u8>, [u8; TAG_LEN]), StreamError> {
    let ascending = ascending(fields, value.len())?;
    let mut stream = Vec::with_capacity(stream_capacity(ctx, fields.len(), value.len()));
    ctx.value_stream_prefix(fields.iter().map(|f| f.as_ref().span.len()), &mut stream);
    // Where each field's bytes start in the stream, by descriptor index.
    let mut at = Vec::with_capacity(fields.len());
    for f in fields {
        at.push(stream.len());
        stream.extend_from_slice(&value[f.as_ref().span.clone()]);
    }
    push_outside(value, &ascending, &mut stream);
    let tag = dek.seal_stream(nonce, &mut stream);
    let mut out = Vec::with_capacity(stored_len);
    let mut pos = 0;
    for (index, span) in &ascending {
        out.extend_from_slice(&value[pos..span.start]);
        let ciphertext = &stream[at[*index]..at[*index] + span.len()];
        fields::encode_into(fields[*index].as_ref().encoding, ciphertext, &mut out);
        pos = span.end;
    }
    out.extend_from_slice(&value[pos..]);
    Ok((out, tag))
}

/// Seals a whole value with the record tag at `nonce` (revision 3: the value is the stream's one
/// field, with nothing outside it); returns the stored value, its ciphertext without a tag of
/// its own, and the record tag. The stored value shares the stream's allocation (its prefix's
/// ciphertext is discarded unseen), so the value is copied once.
pub(super) fn seal_whole(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    value: &[u8],
) -> (Bytes, [u8; TAG_LEN]) {
    let (mut stream, at) = whole_value_stream(ctx, value);
    let tag = dek.seal_stream(nonce, &mut stream);
    (Bytes::from(stream).slice(at..), tag)
}

/// The revision 3 stream of a whole value, `bytes` in the value's place (its plaintext when
/// sealing, its stored ciphertext when opening), and where they start in it.
fn whole_value_stream(ctx: &RecordContext<'_>, bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut stream = Vec::with_capacity(stream_capacity(ctx, 1, bytes.len()));
    ctx.value_stream_prefix(std::iter::once(bytes.len()), &mut stream);
    let at = stream.len();
    stream.extend_from_slice(bytes);
    (stream, at)
}

/// Verifies the record tag of a revision 3 whole value as stored, and returns its plaintext
/// (sharing the stream's allocation). One AES-GCM call: the prefix's ciphertext comes from the
/// CTR keystream alone ([`crate::crypto::gcm::GcmKey::open_stored_tail`]). Nothing unverified
/// is returned.
pub(super) fn open_whole(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    stored: &[u8],
    tag: &[u8; TAG_LEN],
) -> Result<Bytes, StreamError> {
    let (mut stream, at) = whole_value_stream(ctx, stored);
    if !dek.open_stored_tail(nonce, &mut stream, at, tag) {
        return Err(StreamError::Integrity);
    }
    Ok(Bytes::from(stream).slice(at..))
}

/// The plaintexts of a revision 3 value's fields, verified.
pub(super) struct OpenedFields {
    plaintext: Vec<u8>,
    /// Each field's range in `plaintext`, in descriptor order.
    ranges: Vec<Range<usize>>,
}

impl OpenedFields {
    /// The plaintext of field `index` (descriptor order).
    pub(super) fn field(&self, index: usize) -> &[u8] {
        &self.plaintext[self.ranges[index].clone()]
    }
}

impl Drop for OpenedFields {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plaintext);
    }
}

/// Verifies the record tag of the stored `value` whose encrypted `fields` lie at their stored
/// spans, and returns the fields' plaintexts. Nothing unverified is returned.
pub(super) fn open_fields<F: AsRef<StreamField>>(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    value: &[u8],
    fields: &[F],
    tag: &[u8; TAG_LEN],
) -> Result<OpenedFields, StreamError> {
    let ascending = ascending(fields, value.len())?;
    let mut ciphertexts = Vec::with_capacity(value.len());
    let mut lens = Vec::with_capacity(fields.len());
    for (index, f) in fields.iter().enumerate() {
        let f = f.as_ref();
        let before = ciphertexts.len();
        fields::decode_into(f.encoding, &value[f.span.clone()], &mut ciphertexts)
            .map_err(|reason| StreamError::BadField { index, reason })?;
        lens.push(ciphertexts.len() - before);
    }
    let mut stream = Vec::with_capacity(stream_capacity(ctx, fields.len(), value.len()));
    ctx.value_stream_prefix(lens.iter().copied(), &mut stream);
    // The fields' range holds their ciphertext once opened: reserve it here.
    let fields_at = stream.len();
    stream.resize(fields_at + ciphertexts.len(), 0);
    push_outside(value, &ascending, &mut stream);
    if !dek.open_partly_stored(nonce, &mut stream, fields_at, &ciphertexts, tag) {
        return Err(StreamError::Integrity);
    }
    let mut ranges = Vec::with_capacity(lens.len());
    let mut pos = fields_at;
    for len in lens {
        ranges.push(pos..pos + len);
        pos += len;
    }
    Ok(OpenedFields {
        plaintext: stream,
        ranges,
    })
}
