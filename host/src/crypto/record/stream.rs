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
use crate::crypto::wire::{value_stream_prefix_len, FieldEncoding, RecordContext};
use crate::kafka::frame::pool::Buffer;
use crate::kafka::records::Record;

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

/// Room for the whole stream of a value of `value_len` bytes with `fields` fields: its prefix,
/// then at most the value's bytes.
fn stream_capacity(ctx: &RecordContext<'_>, fields: usize, value_len: usize) -> usize {
    value_stream_prefix_len(
        ctx.topic.len(),
        ctx.wire_key.map_or(0, <[u8]>::len),
        ctx.descriptor.len(),
        fields,
    ) + value_len
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

/// Where the whole values of one batch are sealed or opened: each value's revision 3 stream is
/// appended to one buffer (pooled, sized for the batch) and sealed or opened there in place, so a
/// record costs no allocation of its own. Once every record is done, [`ValueArena::freeze`] turns
/// the buffer into one [`Bytes`] of which each value is a slice ([`FrozenArena::value`]); the
/// discarded stream prefixes stay in it unseen.
pub(super) struct ValueArena {
    buf: Buffer,
}

/// Where one value lies in a [`ValueArena`]: the record's value once the arena is frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the record's value is in the arena: set it from the frozen arena"]
pub(super) struct ArenaSlot(Range<usize>);

/// The values of a [`ValueArena`], frozen.
pub(super) struct FrozenArena(Bytes);

impl ValueArena {
    /// An arena with room for about `bytes` bytes of streams (it grows past them if it must).
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Buffer::for_size(bytes),
        }
    }

    /// An arena that allocates nothing until a value is sealed or opened in it.
    #[cfg(test)]
    pub(super) fn empty() -> Self {
        Self::with_capacity(0)
    }

    /// Appends the revision 3 stream of a whole value of `len` bytes (its prefix, then `bytes`,
    /// the plaintext when sealing and the stored ciphertext when opening); returns where the
    /// stream starts and where `bytes` start.
    fn push_stream(&mut self, ctx: &RecordContext<'_>, bytes: &[u8]) -> (usize, usize) {
        let buf = self.buf.vec();
        let start = buf.len();
        ctx.append_value_stream_prefix(std::iter::once(bytes.len()), buf);
        let at = buf.len();
        buf.extend_from_slice(bytes);
        (start, at)
    }

    /// Where the next stream will start: give it to [`ValueArena::discard_from`] to undo what
    /// follows.
    pub(super) fn mark(&mut self) -> usize {
        self.buf.vec().len()
    }

    /// Zeroes everything from `start` (a [`ValueArena::mark`]) on and drops it from the arena
    /// (a stream that failed, or plaintext the reader may not see).
    pub(super) fn discard_from(&mut self, start: usize) {
        let buf = self.buf.vec();
        zeroize::Zeroize::zeroize(&mut buf[start..]);
        buf.truncate(start);
    }

    /// Zeroes and drops the value at `slot`, the last thing opened in the arena.
    pub(super) fn discard(&mut self, slot: ArenaSlot) {
        debug_assert_eq!(
            slot.0.end,
            self.buf.vec().len(),
            "only the last value is discarded"
        );
        self.discard_from(slot.0.start);
    }

    /// The arena's bytes, shared by the values sliced from them.
    pub(super) fn freeze(self) -> FrozenArena {
        FrozenArena(self.buf.freeze())
    }
}

impl FrozenArena {
    /// The value at `slot`.
    pub(super) fn value(&self, slot: ArenaSlot) -> Bytes {
        self.0.slice(slot.0)
    }
}

/// A record whose value may lie in a [`ValueArena`] not yet frozen: the record is complete once
/// [`PendingRecord::complete`] sets that value from the frozen arena.
#[must_use = "a record whose value is in the arena is incomplete until completed"]
pub(super) struct PendingRecord {
    record: Record,
    /// Where the value lies in the arena (the record's `value` is `None` until then).
    value: Option<ArenaSlot>,
}

impl PendingRecord {
    /// A record complete as it is.
    pub(super) fn ready(record: Record) -> Self {
        Self {
            record,
            value: None,
        }
    }

    /// `record`, with the value at `slot` of the arena when there is one (its own `value` is
    /// then ignored).
    pub(super) fn new(mut record: Record, slot: Option<ArenaSlot>) -> Self {
        if slot.is_some() {
            record.value = None;
        }
        Self {
            record,
            value: slot,
        }
    }

    /// The record, its value set from `arena` when it lies there.
    pub(super) fn complete(self, arena: &FrozenArena) -> Record {
        let mut record = self.record;
        if let Some(slot) = self.value {
            record.value = Some(arena.value(slot));
        }
        record
    }
}

/// Seals a whole value with the record tag at `nonce` (revision 3: the value is the stream's one
/// field, with nothing outside it) in `arena`; returns where its ciphertext (without a tag of
/// its own) lies there, and the record tag. The stream's prefix is sealed with it and its
/// ciphertext discarded, so the value is copied once.
pub(super) fn seal_whole(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    value: &[u8],
    arena: &mut ValueArena,
) -> (ArenaSlot, [u8; TAG_LEN]) {
    let (start, at) = arena.push_stream(ctx, value);
    let stream = &mut arena.buf.vec()[start..];
    let tag = dek.seal_stream(nonce, stream);
    (ArenaSlot(at..at + value.len()), tag)
}

/// Verifies the record tag of a revision 3 whole value as stored, and opens it in `arena`;
/// returns where its plaintext lies there. One AES-GCM call: the prefix's ciphertext comes from
/// the CTR keystream alone ([`crate::crypto::gcm::GcmKey::open_stored_tail`]). Nothing
/// unverified is left in the arena.
pub(super) fn open_whole(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    stored: &[u8],
    tag: &[u8; TAG_LEN],
    arena: &mut ValueArena,
) -> Result<ArenaSlot, StreamError> {
    let (start, at) = arena.push_stream(ctx, stored);
    let stream = &mut arena.buf.vec()[start..];
    if !dek.open_stored_tail(nonce, stream, at - start, tag) {
        arena.discard_from(start);
        return Err(StreamError::Integrity);
    }
    Ok(ArenaSlot(at..at + stored.len()))
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
