//! Record-batch compression codecs: gzip, snappy (raw and xerial framing), lz4 (frame), zstd.
//!
//! Decompression is always bounded: every decoder stops and reports
//! [`CodecError::DecompressedTooLarge`] once the output would exceed the caller's limit, so a
//! small "zip bomb" batch cannot make the proxy allocate without bound.
//!
//! Snappy: we *decode* both raw snappy blocks (librdkafka, Sarama, kafkajs) and the xerial
//! framing the Java client writes. We *write* the xerial framing because it is what the reference
//! Java producer writes, so every consumer and broker that interoperates with Java producers reads
//! it (Java itself reads raw blocks only through xerial's fallback path), and the 32 KiB chunks
//! bound the memory a reader needs per chunk.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use super::records::CodecError;

/// Default cap on the decompressed size of one batch's records section (100 MiB).
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 100 * 1024 * 1024;

/// The xerial snappy stream header: magic (8 bytes), then version and compatible version (i32 BE).
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Length of the full xerial header (magic + version + compatible version).
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed chunk size we use when writing xerial snappy (xerial's default block size).
const XERIAL_CHUNK: usize = 32 * 1024;
/// zstd level used on encode (Kafka's default level).
const ZSTD_LEVEL: i32 = 3;

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

impl Compression {
    /// Bit mask of the codec in batch attributes.
    pub const ATTRIBUTE_MASK: i16 = 0x07;

    /// All codecs, in codec-id order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Codec from a Kafka codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn from_id(id: u8) -> Result<Self, CodecError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(CodecError::UnknownCompression(other)),
        })
    }

    /// Codec named by bits 0-2 of batch attributes.
    pub fn from_attributes(attributes: i16) -> Result<Self, CodecError> {
        Self::from_id((attributes & Self::ATTRIBUTE_MASK) as u8)
    }

    /// Kafka codec id (the value of attributes bits 0-2).
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// `attributes` with the codec bits replaced by this codec.
    pub fn apply_to_attributes(self, attributes: i16) -> i16 {
        (attributes & !Self::ATTRIBUTE_MASK) | i16::from(self.id())
    }

    /// Lower-case codec name as Kafka configs spell it (`none`, `gzip`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Appends `src` compressed with this codec to `out` (for [`Compression::None`], a copy).
    ///
    /// Writes gzip at the default level, snappy in xerial framing (32 KiB chunks), lz4 as an LZ4
    /// frame with independent 64 KiB blocks (what Kafka's Java LZ4 stream reads), zstd at level 3.
    pub fn compress(self, src: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
        let err = |e: std::io::Error| CodecError::Compress {
            codec: self.name(),
            source: e,
        };
        match self {
            Compression::None => out.extend_from_slice(src),
            Compression::Gzip => {
                out.reserve(src.len() / 2 + 64);
                let mut enc =
                    flate2::write::GzEncoder::new(out.writer(), flate2::Compression::default());
                enc.write_all(src).map_err(err)?;
                enc.finish().map_err(err)?;
            }
            Compression::Snappy => snappy_xerial_compress(src, out).map_err(err)?,
            Compression::Lz4 => {
                out.reserve(src.len() / 2 + 64);
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out.writer());
                enc.write_all(src).map_err(err)?;
                enc.finish().map_err(|e| err(std::io::Error::other(e)))?;
            }
            Compression::Zstd => {
                out.reserve(src.len() / 2 + 64);
                let mut enc =
                    zstd::stream::write::Encoder::new(out.writer(), ZSTD_LEVEL).map_err(err)?;
                enc.include_contentsize(true).map_err(err)?;
                enc.set_pledged_src_size(Some(src.len() as u64))
                    .map_err(err)?;
                enc.write_all(src).map_err(err)?;
                enc.finish().map_err(err)?;
            }
        }
        Ok(())
    }

    /// Decompresses `src`, failing with [`CodecError::DecompressedTooLarge`] if the output
    /// would exceed `limit` bytes. For [`Compression::None`] returns a copy of `src` (still
    /// subject to `limit`).
    ///
    /// Snappy input is auto-detected: the xerial framing if it starts with the xerial magic,
    /// otherwise one raw snappy block.
    pub fn decompress(self, src: &[u8], limit: usize) -> Result<Bytes, CodecError> {
        let err = |e: std::io::Error| CodecError::Decompress {
            codec: self.name(),
            source: e,
        };
        // Output size hint: a few times the input, never above the limit.
        let hint = src.len().saturating_mul(4).min(limit);
        let out = match self {
            Compression::None => {
                if src.len() > limit {
                    return Err(CodecError::DecompressedTooLarge { limit });
                }
                src.to_vec()
            }
            Compression::Gzip => {
                read_bounded(flate2::bufread::MultiGzDecoder::new(src), limit, hint).map_err(
                    |e| match e {
                        Bounded::TooLarge => CodecError::DecompressedTooLarge { limit },
                        Bounded::Io(e) => err(e),
                    },
                )?
            }
            Compression::Snappy => snappy_decompress(src, limit)?,
            Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(src), limit, hint)
                .map_err(|e| match e {
                    Bounded::TooLarge => CodecError::DecompressedTooLarge { limit },
                    Bounded::Io(e) => err(e),
                })?,
            Compression::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(src).map_err(err)?;
                // The decoder's window is memory too (a frame may declare one as large as its
                // content): at most the power of two above `limit`, so decompressing never
                // holds more than about three times `limit`. A frame needing more is too large.
                let window_log = usize::BITS - limit.max(1).leading_zeros();
                dec.window_log_max(window_log.clamp(10, 31)).map_err(err)?;
                read_bounded(dec, limit, hint).map_err(|e| match e {
                    Bounded::TooLarge => CodecError::DecompressedTooLarge { limit },
                    Bounded::Io(e) if e.to_string().contains("too much memory") => {
                        CodecError::DecompressedTooLarge { limit }
                    }
                    Bounded::Io(e) => err(e),
                })?
            }
        };
        Ok(Bytes::from(out))
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Failure of [`read_bounded`].
enum Bounded {
    /// The stream produced more than the limit.
    TooLarge,
    /// The decoder failed.
    Io(std::io::Error),
}

/// Reads `reader` to the end into a Vec, failing once more than `limit` bytes come out.
///
/// The Vec starts at `hint` bytes and doubles, but its capacity never passes `limit + 1`, so
/// the memory a caller charged for `limit` bytes (`proxy::budget`) bounds what this allocates,
/// reallocation included.
fn read_bounded(mut reader: impl Read, limit: usize, hint: usize) -> Result<Vec<u8>, Bounded> {
    let end = limit.saturating_add(1);
    let mut target = hint.max(64).min(end);
    let mut out = Vec::new();
    loop {
        out.reserve_exact(target - out.len());
        let want = (target - out.len()) as u64;
        // Exactly the spare capacity: read_to_end fills it and stops without growing the Vec.
        let n = (&mut reader)
            .take(want)
            .read_to_end(&mut out)
            .map_err(Bounded::Io)?;
        if (n as u64) < want {
            return Ok(out);
        }
        if out.len() >= end {
            return Err(Bounded::TooLarge);
        }
        target = target.saturating_mul(2).min(end);
    }
}

/// Writes `src` as a xerial snappy stream: header, then `[i32 BE length][raw snappy block]`
/// chunks of at most [`XERIAL_CHUNK`] uncompressed bytes.
fn snappy_xerial_compress(src: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
    let mut enc = snap::raw::Encoder::new();
    out.reserve(XERIAL_HEADER_LEN + src.len() / 2 + 64);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.put_i32(1); // version
    out.put_i32(1); // minimum compatible version
    for chunk in src.chunks(XERIAL_CHUNK) {
        let max = snap::raw::max_compress_len(chunk.len());
        let len_pos = out.len();
        out.put_i32(0);
        let start = out.len();
        out.resize(start + max, 0);
        let n = enc
            .compress(chunk, &mut out[start..])
            .map_err(std::io::Error::other)?;
        out.truncate(start + n);
        let n = i32::try_from(n).map_err(std::io::Error::other)?;
        out[len_pos..start].copy_from_slice(&n.to_be_bytes());
    }
    Ok(())
}

/// Decodes snappy: xerial framing if `src` starts with the xerial magic, else one raw block.
fn snappy_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let err = |what: &str, e: snap::Error| CodecError::Decompress {
        codec: "snappy",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}")),
    };
    let mut dec = snap::raw::Decoder::new();
    if src.len() >= XERIAL_HEADER_LEN && src[..XERIAL_MAGIC.len()] == XERIAL_MAGIC {
        let mut rest = &src[XERIAL_HEADER_LEN..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(CodecError::Decompress {
                    codec: "snappy",
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "xerial chunk length truncated",
                    ),
                });
            };
            let len = i32::from_be_bytes(*len);
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= tail.len())
                .ok_or_else(|| CodecError::Decompress {
                    codec: "snappy",
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "xerial chunk length {len} invalid ({} bytes left)",
                            tail.len()
                        ),
                    ),
                })?;
            let (chunk, after) = tail.split_at(len);
            let n = snap::raw::decompress_len(chunk).map_err(|e| err("xerial chunk", e))?;
            let total = out.len().saturating_add(n);
            if total > limit {
                return Err(CodecError::DecompressedTooLarge { limit });
            }
            let start = out.len();
            out.resize(total, 0);
            let written = dec
                .decompress(chunk, &mut out[start..])
                .map_err(|e| err("xerial chunk", e))?;
            out.truncate(start + written);
            rest = after;
        }
        Ok(out)
    } else {
        let n = snap::raw::decompress_len(src).map_err(|e| err("raw block", e))?;
        if n > limit {
            return Err(CodecError::DecompressedTooLarge { limit });
        }
        let mut out = vec![0; n];
        let written = dec
            .decompress(src, &mut out)
            .map_err(|e| err("raw block", e))?;
        out.truncate(written);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..20_000u32 {
            v.extend_from_slice(format!("record-{i}-payload;").as_bytes());
        }
        v
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for c in Compression::ALL {
            let mut out = BytesMut::new();
            c.compress(&data, &mut out).unwrap();
            if c != Compression::None {
                assert!(out.len() < data.len(), "{c} did not compress");
            }
            let back = c.decompress(&out, DEFAULT_MAX_DECOMPRESSED_SIZE).unwrap();
            assert_eq!(back.as_ref(), data.as_slice(), "{c}");
        }
    }

    #[test]
    fn every_codec_round_trips_empty_input() {
        for c in Compression::ALL {
            let mut out = BytesMut::new();
            c.compress(&[], &mut out).unwrap();
            let back = c.decompress(&out, 10).unwrap();
            assert!(back.is_empty(), "{c}");
        }
    }

    #[test]
    fn snappy_writes_xerial_framing() {
        let data = sample();
        let mut out = BytesMut::new();
        Compression::Snappy.compress(&data, &mut out).unwrap();
        assert_eq!(&out[..8], &XERIAL_MAGIC);
        assert_eq!(&out[8..16], &[0, 0, 0, 1, 0, 0, 0, 1]);
        // More than one chunk for > 32 KiB input.
        let first = i32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        assert!(20 + first < out.len());
    }

    #[test]
    fn snappy_decodes_raw_block() {
        let data = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let back = Compression::Snappy
            .decompress(&raw, DEFAULT_MAX_DECOMPRESSED_SIZE)
            .unwrap();
        assert_eq!(back.as_ref(), data.as_slice());
    }

    #[test]
    fn snappy_decodes_hand_built_xerial_stream() {
        // Built independently of our encoder: header + two chunks of different sizes.
        let a = b"hello, kafka ".repeat(100);
        let b = b"second chunk".to_vec();
        let mut s = XERIAL_MAGIC.to_vec();
        s.extend_from_slice(&1i32.to_be_bytes());
        s.extend_from_slice(&1i32.to_be_bytes());
        for part in [&a, &b] {
            let c = snap::raw::Encoder::new().compress_vec(part).unwrap();
            s.extend_from_slice(&(c.len() as i32).to_be_bytes());
            s.extend_from_slice(&c);
        }
        let back = Compression::Snappy.decompress(&s, 1 << 20).unwrap();
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(back.as_ref(), want.as_slice());
    }

    #[test]
    fn snappy_xerial_truncated_chunk_is_error() {
        let mut out = BytesMut::new();
        Compression::Snappy.compress(&sample(), &mut out).unwrap();
        let cut = &out[..out.len() - 3];
        assert!(matches!(
            Compression::Snappy.decompress(cut, DEFAULT_MAX_DECOMPRESSED_SIZE),
            Err(CodecError::Decompress { .. })
        ));
        let cut = &out[..XERIAL_HEADER_LEN + 2];
        assert!(matches!(
            Compression::Snappy.decompress(cut, DEFAULT_MAX_DECOMPRESSED_SIZE),
            Err(CodecError::Decompress { .. })
        ));
    }

    #[test]
    fn zip_bombs_hit_the_limit() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        for c in Compression::ALL {
            let mut out = BytesMut::new();
            c.compress(&zeros, &mut out).unwrap();
            let r = c.decompress(&out, 1024 * 1024);
            assert!(
                matches!(r, Err(CodecError::DecompressedTooLarge { limit }) if limit == 1024 * 1024),
                "{c}: {r:?}"
            );
            // Exactly at the limit is fine.
            assert_eq!(c.decompress(&out, zeros.len()).unwrap().len(), zeros.len());
        }
        // Raw snappy announces its length up front: rejected before allocating.
        let raw = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
        assert!(matches!(
            Compression::Snappy.decompress(&raw, 1000),
            Err(CodecError::DecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_a_decompress_error() {
        // Starts with a small length varint so raw snappy fails on content, not on size.
        let junk = [0x0a, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8];
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                matches!(
                    c.decompress(&junk, 1 << 20),
                    Err(CodecError::Decompress { .. })
                ),
                "{c}"
            );
        }
    }

    #[test]
    fn codec_ids_and_attributes() {
        for c in Compression::ALL {
            assert_eq!(Compression::from_id(c.id()).unwrap(), c);
            let attrs = c.apply_to_attributes(0x7ff8);
            assert_eq!(attrs & 0x7ff8, 0x7ff8);
            assert_eq!(Compression::from_attributes(attrs).unwrap(), c);
        }
        for bad in 5..8u8 {
            assert!(matches!(
                Compression::from_id(bad),
                Err(CodecError::UnknownCompression(b)) if b == bad
            ));
        }
    }
}
