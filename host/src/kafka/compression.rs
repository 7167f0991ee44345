//! Record-batch compression codecs: gzip, snappy (raw and xerial framing), lz4 (frame), zstd.

/// Compression codec of a record batch (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// snappy; Java clients write the xerial framing, others raw blocks.
    Snappy,
    /// lz4 frame format.
    Lz4,
    /// zstd.
    Zstd,
}
