//! Decoding one magic v2 batch: header checks, CRC-32C, bounded decompression, then the records.
//!
//! Every count is checked against the bytes that remain before a `Vec` is reserved, and every
//! record is read through a reader limited to its declared length.

use bytes::Bytes;

use super::types::{
    be_i16, be_i32, be_i64, declared_size, ATTRIBUTES_OFFSET, CRC_OFFSET, MAGIC_OFFSET,
    MIN_HEADER_LEN, MIN_RECORD_LEN, RECORD_COUNT_OFFSET, V2_HEADER_LEN, V2_MIN_BATCH_LENGTH,
};
use super::{
    CodecError, Compression, Record, RecordBatch, RecordHeader, DEFAULT_MAX_DECOMPRESSED_SIZE,
};
use crate::kafka::reader::ByteReader;

/// Varint length then that many bytes of `src` (which `r` reads); -1 is null.
#[inline]
fn nullable_bytes(
    r: &mut ByteReader<'_>,
    src: &Bytes,
    what: &'static str,
) -> Result<Option<Bytes>, CodecError> {
    let len = r.varint(what)?;
    if len == -1 {
        return Ok(None);
    }
    if len < 0 {
        return Err(CodecError::InvalidLength {
            what,
            length: i64::from(len),
        });
    }
    let range = r.take_range(len as usize, what)?;
    Ok(Some(src.slice(range)))
}

/// Decodes one record; `src` is the buffer `r` reads (for zero-copy slices).
#[inline]
fn decode_record(src: &Bytes, r: &mut ByteReader<'_>) -> Result<Record, CodecError> {
    let len = r.varint("record length")?;
    if len < 0 {
        return Err(CodecError::InvalidLength {
            what: "record",
            length: i64::from(len),
        });
    }
    let body = r.take_range(len as usize, "record")?;
    // A reader limited to this record, so no field can run into the next one.
    let mut rr = r.limited(body.clone());
    let record = Record {
        // Read in wire order: struct fields are evaluated as written.
        attributes: rr.i8("record attributes")?,
        timestamp_delta: rr.varlong("record timestamp delta")?,
        offset_delta: rr.varint("record offset delta")?,
        key: nullable_bytes(&mut rr, src, "record key")?,
        value: nullable_bytes(&mut rr, src, "record value")?,
        headers: decode_headers(src, &mut rr)?,
    };
    if rr.position() != body.end {
        return Err(CodecError::RecordSizeMismatch {
            declared: body.len(),
            consumed: rr.position() - body.start,
        });
    }
    Ok(record)
}

/// Decodes a record's header count and headers; `src` is the buffer `r` reads.
#[inline]
fn decode_headers(src: &Bytes, r: &mut ByteReader<'_>) -> Result<Vec<RecordHeader>, CodecError> {
    let count = r.varint("header count")?;
    if count < 0 || count as usize > r.remaining() / MIN_HEADER_LEN {
        return Err(CodecError::InvalidCount {
            what: "header",
            count: i64::from(count),
            remaining: r.remaining(),
        });
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let klen = r.varint("header key length")?;
        if klen < 0 {
            return Err(CodecError::InvalidLength {
                what: "header key",
                length: i64::from(klen),
            });
        }
        let k = r.take_range(klen as usize, "header key")?;
        let value = nullable_bytes(r, src, "header value")?;
        headers.push(RecordHeader {
            key: src.slice(k),
            value,
        });
    }
    Ok(headers)
}

/// Decodes exactly `count` records filling all of `src`.
fn decode_records(src: &Bytes, count: i32) -> Result<Vec<Record>, CodecError> {
    if count < 0 || count as usize > src.len() / MIN_RECORD_LEN {
        return Err(CodecError::InvalidCount {
            what: "record",
            count: i64::from(count),
            remaining: src.len(),
        });
    }
    let mut r = ByteReader::new(src);
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        records.push(decode_record(src, &mut r)?);
    }
    if r.remaining() != 0 {
        return Err(CodecError::TrailingBytes {
            what: "the last record",
            count: r.remaining(),
        });
    }
    Ok(records)
}

impl RecordBatch {
    /// Decodes exactly one magic v2 batch filling all of `bytes`, with the default
    /// decompression cap ([`DEFAULT_MAX_DECOMPRESSED_SIZE`]).
    ///
    /// Checks the CRC-32C, the batch length, the record count and every record's length.
    /// Uncompressed keys/values/headers are slices of `bytes`; compressed ones are slices of one
    /// decompressed buffer per batch.
    pub fn decode(bytes: &Bytes) -> Result<Self, CodecError> {
        Self::decode_with_limit(bytes, DEFAULT_MAX_DECOMPRESSED_SIZE)
    }

    /// Like [`RecordBatch::decode`], failing with [`CodecError::DecompressedTooLarge`] when the
    /// decompressed records section would exceed `max_decompressed` bytes.
    pub fn decode_with_limit(bytes: &Bytes, max_decompressed: usize) -> Result<Self, CodecError> {
        let b: &[u8] = bytes;
        if let Some(&magic) = b.get(MAGIC_OFFSET) {
            if magic != 2 {
                return Err(CodecError::UnsupportedMagic(magic as i8));
            }
        }
        if b.len() < V2_HEADER_LEN {
            return Err(CodecError::Truncated {
                what: "batch header",
                needed: V2_HEADER_LEN,
                available: b.len(),
            });
        }
        let total = declared_size(b, V2_MIN_BATCH_LENGTH)?;
        if b.len() < total {
            return Err(CodecError::Truncated {
                what: "batch",
                needed: total,
                available: b.len(),
            });
        }
        if b.len() > total {
            return Err(CodecError::TrailingBytes {
                what: "the batch",
                count: b.len() - total,
            });
        }
        let stored = u32::from_be_bytes(b[CRC_OFFSET..ATTRIBUTES_OFFSET].try_into().expect("4"));
        let computed = super::checksum::crc32c(&b[ATTRIBUTES_OFFSET..]);
        if stored != computed {
            return Err(CodecError::CrcMismatch { stored, computed });
        }
        let attributes = be_i16(&b[ATTRIBUTES_OFFSET..]);
        let compression = Compression::from_attributes(attributes)?;
        let count = be_i32(&b[RECORD_COUNT_OFFSET..]);
        let records = match compression {
            Compression::None => decode_records(&bytes.slice(V2_HEADER_LEN..), count)?,
            c => {
                let plain = c.decompress(&b[V2_HEADER_LEN..], max_decompressed)?;
                decode_records(&plain, count)?
            }
        };
        Ok(RecordBatch {
            base_offset: be_i64(&b[0..]),
            partition_leader_epoch: be_i32(&b[12..]),
            attributes,
            last_offset_delta: be_i32(&b[23..]),
            base_timestamp: be_i64(&b[27..]),
            max_timestamp: be_i64(&b[35..]),
            producer_id: be_i64(&b[43..]),
            producer_epoch: be_i16(&b[51..]),
            base_sequence: be_i32(&b[53..]),
            records,
        })
    }
}
