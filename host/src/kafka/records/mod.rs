//! The project's own record-batch codec (magic v2), zero-copy over [`bytes::Bytes`].
//!
//! Every field is preserved exactly: header order and duplicate header keys, null keys and values,
//! timestamps and timestamp type, producer id/epoch/base sequence, transactional and control flags.
//!
//! - [`split_record_set`] cuts the `records` field of a Produce or Fetch partition into batches
//!   without decoding them; v0/v1 message sets, control batches and a trailing partial batch come
//!   out as raw bytes for the caller to forward untouched.
//! - [`RecordBatch::decode`] decodes one v2 batch (CRC-32C checked, decompressed under a size cap);
//!   keys, values and header keys/values are [`Bytes`](bytes::Bytes) slices of the input or of
//!   the decompressed buffer, never copies.
//! - [`RecordBatch::encode`] writes one complete batch (length, CRC, compression per attributes).
//!   Re-encoding a decoded uncompressed batch reproduces the input byte for byte.
//!
//! Malformed input is an error, never a panic or an allocation larger than the input justifies:
//! every count is checked against the bytes that remain before anything is reserved.
//!
//! Files, one job each: `types` (the data types and the fixed v2 header layout), `split`
//! (record set → batches), `decode`, `encode`, `checksum` (the batch CRC-32C), `errors`
//! ([`CodecError`]); the tests live in `tests/`. Reads go through the shared [`crate::kafka::reader::ByteReader`]. The fuzz oracle is
//! in [`crate::fuzzing`] (feature `fuzzing`, never in the shipped library).

mod checksum;
mod decode;
mod encode;
pub(in crate::kafka) mod errors;
mod split;
mod types;

pub use super::compression::{Compression, DEFAULT_MAX_DECOMPRESSED_SIZE};
pub use checksum::crc32c;
pub use errors::CodecError;
pub use split::{split_record_set, RawBatch, RecordSetEntry, RecordSetIter};
pub use types::{
    Record, RecordBatch, RecordHeader, ATTR_CONTROL, ATTR_TIMESTAMP_TYPE, ATTR_TRANSACTIONAL,
    LOG_OVERHEAD, V2_HEADER_LEN,
};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use types::{ATTRIBUTES_OFFSET, CRC_OFFSET};

#[cfg(test)]
pub(crate) mod tests;
