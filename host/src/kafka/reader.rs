//! One bounds-checked reader over a byte slice, shared by the request-header parser
//! ([`super::frame`]), the record-batch codec ([`super::records`]) and the `kapsule.enc`
//! descriptor parser ([`crate::crypto::wire`]).
//!
//! Every read checks the bytes that remain before touching them and fails with a [`ReadError`]
//! naming the field; nothing here panics, allocates or reads past the slice. Callers convert
//! `ReadError` into their own error type (`From` impls live next to those types).

use std::ops::Range;

/// Why a read stopped. Carries the caller's field name so the final error says what was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input ended inside a field: more bytes were needed than were present.
    #[error("truncated input: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A varint ran past its maximum width or its value overflows the target type.
    #[error("malformed varint in {what}: too long or overflows")]
    VarintOverflow {
        /// The field being read.
        what: &'static str,
    },
}

/// Cursor over a byte slice. Positions ([`ByteReader::position`], [`ByteReader::take_range`])
/// index into the slice given to [`ByteReader::new`], so callers holding that slice as
/// [`bytes::Bytes`] can cut zero-copy sub-slices.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// A reader over `range` of the same buffer (positions still index the whole buffer), so a
    /// field inside a length-delimited structure cannot run into the next one. `range` must lie
    /// within the buffer (as any range returned by [`ByteReader::take_range`] does).
    pub fn limited(&self, range: Range<usize>) -> Self {
        Self {
            buf: &self.buf[..range.end],
            pos: range.start,
        }
    }

    /// Current position, as an index into the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Advances over `n` bytes and returns their position range.
    #[inline]
    pub fn take_range(&mut self, n: usize, what: &'static str) -> Result<Range<usize>, ReadError> {
        if n > self.remaining() {
            return Err(ReadError::Truncated {
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    /// Advances over `n` bytes and returns them.
    #[inline]
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        let r = self.take_range(n, what)?;
        Ok(&self.buf[r])
    }

    /// Advances over `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), ReadError> {
        self.take_range(n, what).map(drop)
    }

    /// Reads `N` bytes as an array.
    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ReadError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// One unsigned byte.
    #[inline]
    pub fn u8(&mut self, what: &'static str) -> Result<u8, ReadError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// One signed byte.
    #[inline]
    pub fn i8(&mut self, what: &'static str) -> Result<i8, ReadError> {
        Ok(self.u8(what)? as i8)
    }

    /// Big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ReadError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// Big-endian i16.
    pub fn i16(&mut self, what: &'static str) -> Result<i16, ReadError> {
        self.array(what).map(i16::from_be_bytes)
    }

    /// Big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ReadError> {
        self.array(what).map(u32::from_be_bytes)
    }

    /// Big-endian i32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, ReadError> {
        self.array(what).map(i32::from_be_bytes)
    }

    /// Big-endian i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, ReadError> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// Unsigned LEB128 of at most `max_bytes`; the last byte may only use `last_bits` bits.
    #[inline]
    fn uvarint(
        &mut self,
        max_bytes: usize,
        last_bits: u32,
        what: &'static str,
    ) -> Result<u64, ReadError> {
        // Fast path: one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b & 0x80 == 0 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        let mut value = 0u64;
        for i in 0..max_bytes {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ReadError::Truncated {
                    what,
                    needed: 1,
                    available: 0,
                });
            };
            self.pos += 1;
            let shift = 7 * i as u32;
            if i == max_bytes - 1 && u32::from(b) >> last_bits != 0 {
                // Continuation bit or value bits beyond the type's width.
                return Err(ReadError::VarintOverflow { what });
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ReadError::VarintOverflow { what })
    }

    /// Unsigned varint (u32, Kafka's `UNSIGNED_VARINT`): at most 5 bytes, the 5th carrying 4 bits.
    #[inline]
    pub fn unsigned_varint(&mut self, what: &'static str) -> Result<u32, ReadError> {
        Ok(self.uvarint(5, 4, what)? as u32)
    }

    /// Zigzag varint (i32): at most 5 bytes, the 5th carrying 4 bits.
    #[inline]
    pub fn varint(&mut self, what: &'static str) -> Result<i32, ReadError> {
        let u = self.unsigned_varint(what)?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// Zigzag varlong (i64): at most 10 bytes, the 10th carrying 1 bit.
    #[inline]
    pub fn varlong(&mut self, what: &'static str) -> Result<i64, ReadError> {
        let u = self.uvarint(10, 1, what)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_reads_are_big_endian_and_bounds_checked() {
        let data = [0x01, 0x02, 0xff, 0xfe, 0, 0, 0, 7, 9];
        let mut r = ByteReader::new(&data);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert_eq!(r.i16("b").unwrap(), -2);
        assert_eq!(r.i32("c").unwrap(), 7);
        assert_eq!(r.position(), 8);
        assert_eq!(
            r.u32("d"),
            Err(ReadError::Truncated {
                what: "d",
                needed: 4,
                available: 1
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.u8("e").unwrap(), 9);
        assert!(r.is_empty());
        assert!(r.i8("f").is_err());
    }

    #[test]
    fn take_range_and_limited_index_the_whole_buffer() {
        let data = b"xxhello world";
        let mut r = ByteReader::new(data);
        r.skip(2, "pad").unwrap();
        let word = r.take_range(5, "word").unwrap();
        assert_eq!(word, 2..7);
        let mut inner = r.limited(word.clone());
        assert_eq!(inner.take(5, "w").unwrap(), b"hello");
        assert!(inner.u8("past the limit").is_err());
        assert_eq!(r.take(6, "rest").unwrap(), b" world");
        assert!(r.take(usize::MAX, "huge").is_err());
    }

    #[test]
    fn unsigned_varint_rejects_overflow_and_truncation() {
        let read = |b: &[u8]| ByteReader::new(b).unsigned_varint("u");
        assert_eq!(read(&[0x7f]).unwrap(), 127);
        assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap(), u32::MAX);
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(ReadError::VarintOverflow { what: "u" })
        );
        assert!(matches!(read(&[0x80]), Err(ReadError::Truncated { .. })));
    }
}
