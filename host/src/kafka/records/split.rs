//! Cutting a record set into its batches without decoding them: [`split_record_set`],
//! [`RecordSetEntry`] and [`RawBatch`].

use bytes::Bytes;

use super::types::{
    be_i16, be_i32, be_i64, declared_size, ATTRIBUTES_OFFSET, ATTR_CONTROL, ATTR_TRANSACTIONAL,
    LEGACY_MIN_MESSAGE_SIZE, LOG_OVERHEAD, MAGIC_OFFSET, RECORD_COUNT_OFFSET, V2_MIN_BATCH_LENGTH,
};
use super::{CodecError, Compression, RecordBatch};

/// One entry of a record set as cut by [`split_record_set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSetEntry {
    /// A complete batch (v2) or v0/v1 message (set wrapper), not yet decoded.
    Batch(RawBatch),
    /// A trailing, truncated batch. Fetch responses may legally end with one (the broker cuts at
    /// `max_bytes`); forward these bytes unchanged and let the client discard them. In a Produce
    /// request it means the request is malformed: reject it.
    Partial(Bytes),
}

impl RecordSetEntry {
    /// The exact input bytes of this entry (forward these to pass it through).
    pub fn bytes(&self) -> &Bytes {
        match self {
            RecordSetEntry::Batch(b) => b.bytes(),
            RecordSetEntry::Partial(b) => b,
        }
    }

    /// True for the trailing truncated entry.
    pub fn is_partial(&self) -> bool {
        matches!(self, RecordSetEntry::Partial(_))
    }

    /// The complete batch, or `None` for a partial entry.
    pub fn as_batch(&self) -> Option<&RawBatch> {
        match self {
            RecordSetEntry::Batch(b) => Some(b),
            RecordSetEntry::Partial(_) => None,
        }
    }
}

/// A complete batch (magic v2) or message (v0/v1) cut from a record set, not yet decoded.
///
/// Holds a zero-copy slice of the record set; the header accessors read fixed offsets and never
/// fail. Use [`RawBatch::decode`] only for v2 non-control batches the caller wants to rewrite; all
/// others are forwarded via [`RawBatch::bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// Complete entry bytes; at least 26 bytes (v0/v1) or [`super::V2_HEADER_LEN`] (v2).
    bytes: Bytes,
}

impl RawBatch {
    /// The exact input slice (base offset through the last byte of the batch).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes self, returning the exact input slice.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Magic byte: 2 for record batches, 0 or 1 for legacy messages.
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_OFFSET] as i8
    }

    /// True for v0/v1 messages (never decoded by this codec; pass through).
    pub fn is_legacy(&self) -> bool {
        self.magic() < 2
    }

    /// Base offset (v2) or the message offset (v0/v1).
    pub fn base_offset(&self) -> i64 {
        be_i64(&self.bytes)
    }

    /// Batch attributes (v2), or the v0/v1 message attributes widened to i16.
    pub fn attributes(&self) -> i16 {
        if self.is_legacy() {
            i16::from(self.bytes[17] as i8)
        } else {
            be_i16(&self.bytes[ATTRIBUTES_OFFSET..])
        }
    }

    /// True for a v2 control batch (transaction markers); always false for v0/v1.
    pub fn is_control(&self) -> bool {
        !self.is_legacy() && self.attributes() & ATTR_CONTROL != 0
    }

    /// True for a v2 transactional batch; always false for v0/v1.
    pub fn is_transactional(&self) -> bool {
        !self.is_legacy() && self.attributes() & ATTR_TRANSACTIONAL != 0
    }

    /// Compression codec from the attributes; errors on codec ids 5-7.
    pub fn compression(&self) -> Result<Compression, CodecError> {
        Compression::from_attributes(self.attributes())
    }

    /// What the records section of this v2 batch says it decompresses to, read from the codec's
    /// headers without decompressing ([`Compression::declared_size`]); `None` for v0/v1, an
    /// unknown codec, or a codec or producer that does not state it.
    pub fn declared_records_size(&self) -> Option<usize> {
        if self.is_legacy() {
            return None;
        }
        let records = self.bytes.get(super::V2_HEADER_LEN..)?;
        self.compression().ok()?.declared_size(records)
    }

    /// Record count from the v2 header (as stored, unvalidated); `None` for v0/v1.
    pub fn record_count(&self) -> Option<i32> {
        (!self.is_legacy()).then(|| be_i32(&self.bytes[RECORD_COUNT_OFFSET..]))
    }

    /// Decodes this batch with the default decompression cap
    /// ([`super::DEFAULT_MAX_DECOMPRESSED_SIZE`]). Errors with [`CodecError::UnsupportedMagic`] for v0/v1.
    pub fn decode(&self) -> Result<RecordBatch, CodecError> {
        RecordBatch::decode(&self.bytes)
    }

    /// Decodes this batch, failing if the decompressed records exceed `max_decompressed` bytes.
    pub fn decode_with_limit(&self, max_decompressed: usize) -> Result<RecordBatch, CodecError> {
        RecordBatch::decode_with_limit(&self.bytes, max_decompressed)
    }
}

/// Iterator returned by [`split_record_set`].
#[derive(Debug, Clone)]
pub struct RecordSetIter {
    records: Bytes,
    pos: usize,
    done: bool,
}

impl Iterator for RecordSetIter {
    type Item = Result<RecordSetEntry, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.records.len() {
            return None;
        }
        let item = self.next_entry();
        if !matches!(item, Ok(RecordSetEntry::Batch(_))) {
            // Errors and the partial tail end the iteration.
            self.done = true;
        }
        Some(item)
    }
}

impl RecordSetIter {
    fn next_entry(&mut self) -> Result<RecordSetEntry, CodecError> {
        let rest = &self.records[self.pos..];
        let start = self.pos;
        if rest.len() < LOG_OVERHEAD {
            self.pos = self.records.len();
            return Ok(RecordSetEntry::Partial(self.records.slice(start..)));
        }
        let total = declared_size(rest, LEGACY_MIN_MESSAGE_SIZE)?;
        if rest.len() < total {
            self.pos = self.records.len();
            return Ok(RecordSetEntry::Partial(self.records.slice(start..)));
        }
        let magic = rest[MAGIC_OFFSET] as i8;
        match magic {
            0 | 1 => {}
            // A v2 batch is at least as long as its header.
            2 => {
                declared_size(rest, V2_MIN_BATCH_LENGTH)?;
            }
            other => return Err(CodecError::UnsupportedMagic(other)),
        }
        self.pos = start + total;
        Ok(RecordSetEntry::Batch(RawBatch {
            bytes: self.records.slice(start..start + total),
        }))
    }
}

/// Cuts a record set (the `records` field of a Produce or Fetch partition) into its batches
/// without decoding them.
///
/// Yields each complete v2 batch or v0/v1 message as [`RecordSetEntry::Batch`] (zero-copy
/// slices; concatenating all entries' bytes reproduces the input). A truncated tail comes out
/// once as [`RecordSetEntry::Partial`]. An error (impossible length, unknown magic) ends the
/// iteration; nothing after it is yielded. An empty record set yields nothing.
pub fn split_record_set(records: &Bytes) -> RecordSetIter {
    RecordSetIter {
        records: records.clone(),
        pos: 0,
        done: false,
    }
}
