//! The codec's data types and the fixed layout of a magic v2 batch header.
//!
//! Offsets are from the start of the batch (its base offset field). The header is read at these
//! fixed offsets by [`super::RawBatch`] and by decode; everything after [`V2_HEADER_LEN`] is the
//! records section (compressed as the attributes say).

use bytes::Bytes;

use super::{CodecError, Compression};

/// Bytes before the batch-length field ends: base offset (8) + batch length (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed magic v2 batch header, up to and including the record count.
pub const V2_HEADER_LEN: usize = 61;
/// Smallest legal value of the batch-length field of a v2 batch.
pub(super) const V2_MIN_BATCH_LENGTH: i32 = (V2_HEADER_LEN - LOG_OVERHEAD) as i32;
/// Smallest legal message-size field of a v0 message (crc, magic, attributes, key and value
/// lengths), the bound Kafka itself applies before looking at the magic.
pub(super) const LEGACY_MIN_MESSAGE_SIZE: i32 = 14;
/// Offset of the magic byte (same position in v0, v1 and v2).
pub(super) const MAGIC_OFFSET: usize = 16;
/// Offset of the CRC in a v2 batch.
pub(crate) const CRC_OFFSET: usize = 17;
/// Offset of the attributes in a v2 batch; the CRC covers everything from here to the end.
pub(crate) const ATTRIBUTES_OFFSET: usize = 21;
/// Offset of the record count in a v2 batch.
pub(super) const RECORD_COUNT_OFFSET: usize = 57;
/// Smallest possible encoded record: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
pub(super) const MIN_RECORD_LEN: usize = 7;
/// Smallest possible encoded header: key length and value length, one byte each.
pub(super) const MIN_HEADER_LEN: usize = 2;

/// Batch attribute bit: timestamp type is LogAppendTime (else CreateTime).
pub const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
/// Batch attribute bit: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Batch attribute bit: the batch is a control batch (transaction markers).
pub const ATTR_CONTROL: i16 = 0x20;

/// One record header. Kafka allows duplicate keys; order is preserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header key (a UTF-8 string on the wire, kept as raw bytes for exactness).
    pub key: Bytes,
    /// Header value; `None` is a null value (length -1).
    pub value: Option<Bytes>,
}

/// One record of a magic v2 batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Record attributes (unused by Kafka today, preserved).
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Record key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Record value; `None` is a null value (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in wire order.
    pub headers: Vec<RecordHeader>,
}

/// A decoded magic v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    /// Offset of the first record (0 in Produce requests).
    pub base_offset: i64,
    /// Partition leader epoch.
    pub partition_leader_epoch: i32,
    /// Batch attributes: compression (bits 0-2), timestamp type (3), transactional (4), control (5).
    pub attributes: i16,
    /// Offset delta of the last record.
    pub last_offset_delta: i32,
    /// Base timestamp.
    pub base_timestamp: i64,
    /// Max timestamp.
    pub max_timestamp: i64,
    /// Producer id (-1 when not idempotent).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Base sequence.
    pub base_sequence: i32,
    /// The records, in order.
    pub records: Vec<Record>,
}

impl RecordBatch {
    /// Compression codec named by the attributes.
    pub fn compression(&self) -> Result<Compression, CodecError> {
        Compression::from_attributes(self.attributes)
    }

    /// True if the transactional attribute bit is set.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// True if the control attribute bit is set.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Big-endian i16 at the start of `b` (a fixed header offset the caller has bounds-checked).
pub(super) fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

/// Big-endian i32 at the start of `b` (a fixed header offset the caller has bounds-checked).
pub(super) fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Big-endian i64 at the start of `b` (a fixed header offset the caller has bounds-checked).
pub(super) fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The total size (log overhead included) that the batch or legacy message at the start of `b`
/// declares in its length field; [`CodecError::InvalidBatchLength`] when that length is below
/// `minimum`. `b` holds at least [`LOG_OVERHEAD`] bytes.
pub(super) fn declared_size(b: &[u8], minimum: i32) -> Result<usize, CodecError> {
    let length = be_i32(&b[8..]);
    if length < minimum {
        return Err(CodecError::InvalidBatchLength { length, minimum });
    }
    Ok(LOG_OVERHEAD + length as usize)
}
