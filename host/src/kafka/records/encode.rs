//! Encoding one magic v2 batch: header, records (compressed per the attributes), length and
//! CRC-32C; and the varint writers the records section uses.

use bytes::{BufMut, Bytes, BytesMut};

use super::checksum::{crc32c, Crc32cStream};
use super::types::{ATTRIBUTES_OFFSET, CRC_OFFSET, LOG_OVERHEAD, V2_HEADER_LEN};
use super::{CodecError, Compression, Record, RecordBatch};

impl RecordBatch {
    /// Appends this batch, complete, to `out`: header, batch length, records compressed with the
    /// codec in the attributes' bits 0-2, and the CRC-32C.
    ///
    /// Field values are written as they are (no recomputation of `last_offset_delta` or
    /// timestamps), so a decoded batch re-encodes to the same batch. Errors if the attributes
    /// name an unknown codec or a length exceeds Kafka's i32 limits; on error `out` may hold a
    /// partial batch past its original length (truncate it if reusing the buffer).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        let compression = self.compression()?;
        let count = i32::try_from(self.records.len()).map_err(|_| CodecError::TooLarge {
            what: "record count",
            size: self.records.len(),
        })?;
        let mut records_len = 0usize;
        // Each record's body length, found once (each fits an i32 once checked).
        let mut body_lens = Vec::with_capacity(self.records.len());
        for r in &self.records {
            let body = checked_record_body_len(r)?;
            body_lens.push(body as u32);
            records_len = records_len
                .checked_add(varint_len(body as i32) + body)
                .ok_or(CodecError::TooLarge {
                    what: "records",
                    size: usize::MAX,
                })?;
        }
        let start = out.len();
        // Compressed output is reserved by the codec; only the uncompressed size is exact.
        out.reserve(
            V2_HEADER_LEN
                + if compression == Compression::None {
                    records_len
                } else {
                    0
                },
        );
        out.put_i64(self.base_offset);
        out.put_i32(0); // batch length, patched below
        out.put_i32(self.partition_leader_epoch);
        out.put_i8(2);
        out.put_u32(0); // CRC, patched below
        out.put_i16(self.attributes);
        out.put_i32(self.last_offset_delta);
        out.put_i64(self.base_timestamp);
        out.put_i64(self.max_timestamp);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.base_sequence);
        out.put_i32(count);
        let crc = match compression {
            Compression::None => {
                let mut direct = Direct {
                    crc: Crc32cStream::new(),
                    crc_from: start + ATTRIBUTES_OFFSET,
                    out,
                };
                self.write_records(&body_lens, &mut direct)
                    .expect("writing to a buffer cannot fail");
                Some(direct.finish_crc())
            }
            c => {
                // Records go into the compressor as they are written (small fields through a
                // staging buffer), never collected uncompressed: no third copy of the batch.
                let mut sink = Staged {
                    stage: BytesMut::with_capacity(records_len.min(Staged::STAGE_BYTES)),
                    compressor: c.compressor(out, records_len)?,
                };
                self.write_records(&body_lens, &mut sink)
                    .map_err(|e| sink.compressor.error(e))?;
                sink.flush()?;
                sink.compressor.finish()?;
                // Compressed bytes are found only as the codec flushes them: checked below.
                None
            }
        };
        let crc = crc.unwrap_or_else(|| crc32c(&out[start + ATTRIBUTES_OFFSET..]));
        let length = out.len() - start - LOG_OVERHEAD;
        let length = i32::try_from(length).map_err(|_| CodecError::TooLarge {
            what: "batch",
            size: length,
        })?;
        out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
        out[start + CRC_OFFSET..start + ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// Encodes into a fresh buffer; see [`RecordBatch::encode`].
    pub fn to_bytes(&self) -> Result<Bytes, CodecError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    /// Writes all records, whose body lengths `checked_record_body_len` gave as `body_lens`.
    fn write_records(&self, body_lens: &[u32], out: &mut impl RecordsOut) -> std::io::Result<()> {
        for (r, &body_len) in self.records.iter().zip(body_lens) {
            let small = out.small();
            put_varint(small, body_len as i32);
            small.put_i8(r.attributes);
            put_varlong(small, r.timestamp_delta);
            put_varint(small, r.offset_delta);
            put_nullable(out, r.key.as_deref())?;
            put_nullable(out, r.value.as_deref())?;
            put_varint(out.small(), r.headers.len() as i32);
            for h in &r.headers {
                put_varint(out.small(), h.key.len() as i32);
                out.bytes(&h.key)?;
                put_nullable(out, h.value.as_deref())?;
            }
            out.record_done()?;
        }
        Ok(())
    }
}

/// Where [`RecordBatch::write_records`] writes: varints and fixed fields into
/// [`RecordsOut::small`], keys, values and headers through [`RecordsOut::bytes`].
trait RecordsOut {
    /// The buffer small fields are put into.
    fn small(&mut self) -> &mut BytesMut;
    /// Writes a key, value or header.
    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()>;
    /// Called after each record.
    fn record_done(&mut self) -> std::io::Result<()>;
}

/// Records written straight into the batch (uncompressed), the batch's CRC-32C computed as
/// they are: each stretch of [`Direct::CRC_STRETCH`] bytes goes through the CRC while it is
/// still in the cache it was just written through, instead of the whole batch (up to a MiB or
/// more) being read back from memory once it is complete.
struct Direct<'a> {
    out: &'a mut BytesMut,
    /// CRC of `out[batch's attributes..crc_from]`.
    crc: Crc32cStream,
    crc_from: usize,
}

impl Direct<'_> {
    /// Bytes written before they are passed to the CRC: well inside a core's L1 data cache,
    /// and long enough for the CRC's 64-byte folding loop to dominate its setup.
    const CRC_STRETCH: usize = 8 * 1024;

    fn update_crc(&mut self) {
        self.crc.update(&self.out[self.crc_from..]);
        self.crc_from = self.out.len();
    }

    /// The CRC-32C of the batch from its attributes to its end.
    fn finish_crc(mut self) -> u32 {
        self.update_crc();
        self.crc.finish()
    }
}

impl RecordsOut for Direct<'_> {
    #[inline]
    fn small(&mut self) -> &mut BytesMut {
        self.out
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.extend_from_slice(b);
        Ok(())
    }
    #[inline]
    fn record_done(&mut self) -> std::io::Result<()> {
        if self.out.len() - self.crc_from >= Self::CRC_STRETCH {
            self.update_crc();
        }
        Ok(())
    }
}

/// Records written into a compressor: small fields collect in a staging buffer passed on
/// once it holds [`Staged::STAGE_BYTES`]; large keys, values and headers go straight through.
struct Staged<'a> {
    stage: BytesMut,
    compressor: crate::kafka::compression::Compressor<'a>,
}

impl Staged<'_> {
    /// Staging buffer size; a field at least this large bypasses it.
    const STAGE_BYTES: usize = 64 * 1024;

    fn flush(&mut self) -> Result<(), CodecError> {
        use std::io::Write;
        if !self.stage.is_empty() {
            self.compressor
                .write_all(&self.stage)
                .map_err(|e| self.compressor.error(e))?;
            self.stage.clear();
        }
        Ok(())
    }
}

impl RecordsOut for Staged<'_> {
    #[inline]
    fn small(&mut self) -> &mut BytesMut {
        &mut self.stage
    }

    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        if !self.stage.is_empty() && self.stage.len() + b.len() > Self::STAGE_BYTES {
            self.compressor.write_all(&self.stage)?;
            self.stage.clear();
        }
        if b.len() < Self::STAGE_BYTES {
            self.stage.extend_from_slice(b);
            Ok(())
        } else {
            self.compressor.write_all(b)
        }
    }

    #[inline]
    fn record_done(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if self.stage.len() >= Self::STAGE_BYTES {
            self.compressor.write_all(&self.stage)?;
            self.stage.clear();
        }
        Ok(())
    }
}

fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn uvarint_len(mut u: u64) -> usize {
    let mut n = 1;
    while u >= 0x80 {
        u >>= 7;
        n += 1;
    }
    n
}

pub(super) fn varint_len(v: i32) -> usize {
    uvarint_len(zigzag32(v))
}

pub(super) fn varlong_len(v: i64) -> usize {
    uvarint_len(zigzag64(v))
}

/// Byte by byte: a record's multi-byte varints (lengths of 128 B to 2 MiB) are 2–4 bytes, and
/// `extend_from_slice` of a stack buffer that short costs a `memmove` call each (2 % of a
/// decrypting consume's CPU in a profile).
#[inline]
fn put_uvarint(out: &mut BytesMut, mut u: u64) {
    while u >= 0x80 {
        out.put_u8((u as u8) | 0x80);
        u >>= 7;
    }
    out.put_u8(u as u8);
}

pub(super) fn put_varint(out: &mut BytesMut, v: i32) {
    put_uvarint(out, zigzag32(v));
}

pub(super) fn put_varlong(out: &mut BytesMut, v: i64) {
    put_uvarint(out, zigzag64(v));
}

#[inline]
fn put_nullable(out: &mut impl RecordsOut, b: Option<&[u8]>) -> std::io::Result<()> {
    match b {
        None => {
            put_varint(out.small(), -1);
            Ok(())
        }
        Some(b) => {
            put_varint(out.small(), b.len() as i32);
            out.bytes(b)
        }
    }
}

fn nullable_len(b: Option<&[u8]>) -> usize {
    b.map_or(1, |b| varint_len(b.len() as i32) + b.len())
}

/// Encoded size of a record after its length varint (lengths assumed to fit i32).
fn record_body_len(r: &Record) -> usize {
    let mut n = 1
        + varlong_len(r.timestamp_delta)
        + varint_len(r.offset_delta)
        + nullable_len(r.key.as_deref())
        + nullable_len(r.value.as_deref())
        + varint_len(r.headers.len() as i32);
    for h in &r.headers {
        n += varint_len(h.key.len() as i32) + h.key.len() + nullable_len(h.value.as_deref());
    }
    n
}

/// [`record_body_len`] after checking every length fits Kafka's i32 fields.
fn checked_record_body_len(r: &Record) -> Result<usize, CodecError> {
    let check = |what: &'static str, size: usize| {
        if size > i32::MAX as usize {
            Err(CodecError::TooLarge { what, size })
        } else {
            Ok(())
        }
    };
    check("record key", r.key.as_ref().map_or(0, Bytes::len))?;
    check("record value", r.value.as_ref().map_or(0, Bytes::len))?;
    check("header count", r.headers.len())?;
    for h in &r.headers {
        check("header key", h.key.len())?;
        check("header value", h.value.as_ref().map_or(0, Bytes::len))?;
    }
    // Sum in u64 terms is safe on 64-bit; the total must fit an i32 record length too.
    let n = record_body_len(r);
    check("record", n)?;
    Ok(n)
}
