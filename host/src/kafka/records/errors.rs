//! [`CodecError`]: every way splitting, decoding or encoding a record set can fail.

use crate::kafka::reader::ReadError;

/// Why a record set or batch could not be split, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a field or batch: more bytes were needed than were present.
    #[error("truncated input: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field or structure being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A batch-length (or v0/v1 message-size) field is below the minimum for its format.
    #[error("invalid batch length {length} (minimum {minimum}); the record set is corrupt")]
    InvalidBatchLength {
        /// The length field as read.
        length: i32,
        /// The minimum for this magic.
        minimum: i32,
    },
    /// The magic byte is not one this operation handles (decode/encode only handle v2).
    #[error("unsupported record batch magic {0}: only v2 is decoded; forward v0/v1 untouched")]
    UnsupportedMagic(i8),
    /// The CRC-32C stored in the batch does not match its contents.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}; the batch is corrupt")]
    CrcMismatch {
        /// CRC stored in the batch header.
        stored: u32,
        /// CRC computed over attributes..end.
        computed: u32,
    },
    /// A varint/varlong ran past its maximum width or its value overflows the target type.
    #[error("malformed varint in {what}: too long or overflows")]
    VarintOverflow {
        /// The field being read.
        what: &'static str,
    },
    /// A length is negative where not allowed (below -1, or -1 for a non-nullable field).
    #[error("invalid length {length} for {what}")]
    InvalidLength {
        /// The field whose length was read.
        what: &'static str,
        /// The length as read.
        length: i64,
    },
    /// A count is negative, or larger than the remaining bytes could possibly hold.
    #[error("{what} count {count} is impossible with {remaining} bytes remaining")]
    InvalidCount {
        /// What is being counted (records, headers).
        what: &'static str,
        /// The count as read.
        count: i64,
        /// Bytes left to hold the counted items.
        remaining: usize,
    },
    /// A record's declared length differs from the bytes its fields occupy.
    #[error("record declares {declared} bytes but its fields occupy {consumed}")]
    RecordSizeMismatch {
        /// Length from the record's length varint.
        declared: usize,
        /// Bytes actually used by the record's fields.
        consumed: usize,
    },
    /// Bytes are left over after the last record or after the batch.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// What was fully read before the extra bytes.
        what: &'static str,
        /// Number of extra bytes.
        count: usize,
    },
    /// Attribute bits 0-2 name a compression codec Kafka does not define (5-7).
    #[error("unknown compression codec id {0} in batch attributes")]
    UnknownCompression(u8),
    /// The compressed records section could not be decompressed.
    #[error("{codec} decompression failed: {source}")]
    Decompress {
        /// Codec name.
        codec: &'static str,
        /// Decoder error.
        #[source]
        source: std::io::Error,
    },
    /// Decompressed records would exceed the configured cap (zip-bomb protection).
    #[error(
        "decompressed records exceed the limit of {limit} bytes; raise the limit if legitimate"
    )]
    DecompressedTooLarge {
        /// The cap that was hit, in bytes.
        limit: usize,
    },
    /// Compressing the records section failed.
    #[error("{codec} compression failed: {source}")]
    Compress {
        /// Codec name.
        codec: &'static str,
        /// Encoder error.
        #[source]
        source: std::io::Error,
    },
    /// On encode, a field or the whole batch is too large for its i32 wire length.
    #[error("{what} of {size} bytes/items exceeds the Kafka wire limit (i32)")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
    },
}

impl From<ReadError> for CodecError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Truncated {
                what,
                needed,
                available,
            } => CodecError::Truncated {
                what,
                needed,
                available,
            },
            ReadError::VarintOverflow { what } => CodecError::VarintOverflow { what },
        }
    }
}
