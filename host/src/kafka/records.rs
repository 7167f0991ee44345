//! The project's own record-batch codec (magic v2), zero-copy over [`bytes::Bytes`].
//!
//! Every field is preserved exactly: header order and duplicate header keys, null keys and values,
//! timestamps and timestamp type, producer id/epoch/base sequence, transactional and control flags.

use bytes::Bytes;

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
