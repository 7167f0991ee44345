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

use super::records::errors::CodecError;

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

    /// Most bytes [`Compression::compress`] writes for `len` bytes of input (the codecs' worst
    /// case, incompressible input, with some slack).
    pub fn max_compressed_len(self, len: usize) -> usize {
        match self {
            Compression::None => len,
            // snappy: a chunk's output may pass its input by a sixth before it is truncated.
            Compression::Snappy => len + len / 5 + XERIAL_HEADER_LEN + 1024,
            Compression::Gzip | Compression::Lz4 | Compression::Zstd => len + len / 128 + 1024,
        }
    }

    /// Appends `src` compressed with this codec to `out` (for [`Compression::None`], a copy).
    ///
    /// Writes gzip at the default level, snappy in xerial framing (32 KiB chunks), lz4 as an LZ4
    /// frame with independent 64 KiB blocks (what Kafka's Java LZ4 stream reads), zstd at level 3.
    pub fn compress(self, src: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
        let mut c = self.compressor(out, src.len())?;
        c.write_all(src).map_err(|e| c.error(e))?;
        c.finish()
    }

    /// A writer that appends the bytes written to it, `len` in all, compressed as
    /// [`Compression::compress`] does, to `out`; call [`Compressor::finish`] after the last.
    /// Lets a caller compress what it produces piece by piece without first collecting it
    /// uncompressed.
    pub fn compressor(self, out: &mut BytesMut, len: usize) -> Result<Compressor<'_>, CodecError> {
        let err = |e: std::io::Error| CodecError::Compress {
            codec: self.name(),
            source: e,
        };
        // Room for incompressible input up front (record data encrypted before it is compressed
        // is): growing `out` while writing would copy it, holding two buffers at once.
        out.reserve(self.max_compressed_len(len));
        let sink = match self {
            Compression::None => Sink::Plain(out.writer()),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                out.writer(),
                flate2::Compression::default(),
            )),
            Compression::Snappy => Sink::Snappy(Box::new(SnappyXerialWriter::new(out))),
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                Sink::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(
                    info,
                    out.writer(),
                ))
            }
            Compression::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(out.writer(), ZSTD_LEVEL).map_err(err)?;
                enc.include_contentsize(true).map_err(err)?;
                enc.set_pledged_src_size(Some(len as u64)).map_err(err)?;
                Sink::Zstd(enc)
            }
        };
        Ok(Compressor { codec: self, sink })
    }

    /// The size `src` says it decompresses to, read from its headers without decompressing:
    /// zstd frames that all carry their content size, snappy (a raw block's length prefix, or
    /// the sum of a xerial stream's chunk lengths). `None` when the codec or the producer does
    /// not state it (gzip, lz4, zstd frames without a content size, as the Java client writes)
    /// or the headers are malformed (decompressing then reports the error).
    ///
    /// [`Compression::decompress`] never produces more than this, so a caller can size (and
    /// charge memory for) the output before decompressing, and refuse a bomb unopened.
    pub fn declared_size(self, src: &[u8]) -> Option<usize> {
        match self {
            Compression::None => Some(src.len()),
            Compression::Zstd => zstd_declared_size(src),
            Compression::Snappy => snappy_declared_size(src),
            Compression::Gzip | Compression::Lz4 => None,
        }
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
                if let Some(declared) = zstd_declared_size(src) {
                    // Every frame states its size: refused before anything is allocated when
                    // over the limit, else decoded straight into a buffer of exactly that size
                    // (no window buffer besides it). A frame whose content differs from what it
                    // declared fails as corrupt.
                    if declared > limit {
                        return Err(CodecError::DecompressedTooLarge { limit });
                    }
                    let out = zstd::bulk::decompress(src, declared).map_err(err)?;
                    if out.len() != declared {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "zstd frames declared {declared} bytes and decompressed to {}",
                                out.len()
                            ),
                        )));
                    }
                    return Ok(Bytes::from(out));
                }
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

/// Sum of the content sizes of the zstd frames that make up `src`; `None` unless every frame
/// is complete and states its size (skippable frames count zero).
fn zstd_declared_size(src: &[u8]) -> Option<usize> {
    use zstd::zstd_safe;
    if src.is_empty() {
        return None;
    }
    let mut rest = src;
    let mut total = 0usize;
    while !rest.is_empty() {
        let frame = zstd_safe::find_frame_compressed_size(rest).ok()?;
        if frame == 0 || frame > rest.len() {
            return None;
        }
        // A skippable frame reports 0.
        let size = zstd_safe::get_frame_content_size(&rest[..frame]).ok()??;
        total = total.checked_add(usize::try_from(size).ok()?)?;
        rest = &rest[frame..];
    }
    Some(total)
}

/// What a snappy stream (xerial or one raw block) says it decompresses to; `None` when its
/// framing is malformed.
fn snappy_declared_size(src: &[u8]) -> Option<usize> {
    if src.len() >= XERIAL_HEADER_LEN && src[..XERIAL_MAGIC.len()] == XERIAL_MAGIC {
        let mut rest = &src[XERIAL_HEADER_LEN..];
        let mut total = 0usize;
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
            let chunk = tail.get(..len)?;
            total = total.checked_add(snap::raw::decompress_len(chunk).ok()?)?;
            rest = &tail[len..];
        }
        Some(total)
    } else {
        snap::raw::decompress_len(src).ok()
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

/// Where a [`Compressor`] writes: `out` itself, or a codec's encoder in front of it.
enum Sink<'a> {
    Plain(bytes::buf::Writer<&'a mut BytesMut>),
    Gzip(flate2::write::GzEncoder<bytes::buf::Writer<&'a mut BytesMut>>),
    Snappy(Box<SnappyXerialWriter<'a>>),
    Lz4(lz4_flex::frame::FrameEncoder<bytes::buf::Writer<&'a mut BytesMut>>),
    Zstd(zstd::stream::write::Encoder<'static, bytes::buf::Writer<&'a mut BytesMut>>),
}

/// Compresses what is written to it into a buffer ([`Compression::compressor`]).
pub struct Compressor<'a> {
    codec: Compression,
    sink: Sink<'a>,
}

impl Compressor<'_> {
    /// Ends the compressed stream (trailers, the last chunk or block).
    pub fn finish(self) -> Result<(), CodecError> {
        let codec = self.codec;
        let r = match self.sink {
            Sink::Plain(_) => Ok(()),
            Sink::Gzip(enc) => enc.finish().map(drop),
            Sink::Snappy(enc) => (*enc).finish(),
            Sink::Lz4(enc) => enc.finish().map(drop).map_err(std::io::Error::other),
            Sink::Zstd(enc) => enc.finish().map(drop),
        };
        r.map_err(|source| CodecError::Compress {
            codec: codec.name(),
            source,
        })
    }

    /// `e` as the [`CodecError`] of this compressor's codec.
    pub fn error(&self, source: std::io::Error) -> CodecError {
        CodecError::Compress {
            codec: self.codec.name(),
            source,
        }
    }
}

impl Write for Compressor<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.sink {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Snappy(w) => w.write(buf),
            Sink::Lz4(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w) => w.write_all(buf),
            Sink::Gzip(w) => w.write_all(buf),
            Sink::Snappy(w) => w.write_all(buf),
            Sink::Lz4(w) => w.write_all(buf),
            Sink::Zstd(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a xerial snappy stream: header, then `[i32 BE length][raw snappy block]` chunks of
/// [`XERIAL_CHUNK`] uncompressed bytes (the last one shorter).
struct SnappyXerialWriter<'a> {
    out: &'a mut BytesMut,
    enc: snap::raw::Encoder,
    chunk: Vec<u8>,
}

impl<'a> SnappyXerialWriter<'a> {
    fn new(out: &'a mut BytesMut) -> Self {
        out.extend_from_slice(&XERIAL_MAGIC);
        out.put_i32(1); // version
        out.put_i32(1); // minimum compatible version
        Self {
            out,
            enc: snap::raw::Encoder::new(),
            chunk: Vec::new(),
        }
    }

    /// Appends one chunk.
    fn put_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let out = &mut *self.out;
        let max = snap::raw::max_compress_len(chunk.len());
        let len_pos = out.len();
        out.put_i32(0);
        let start = out.len();
        out.resize(start + max, 0);
        let n = self
            .enc
            .compress(chunk, &mut out[start..])
            .map_err(std::io::Error::other)?;
        out.truncate(start + n);
        let n = i32::try_from(n).map_err(std::io::Error::other)?;
        out[len_pos..start].copy_from_slice(&n.to_be_bytes());
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let chunk = std::mem::take(&mut self.chunk);
        if !chunk.is_empty() {
            self.put_chunk(&chunk)?;
        }
        Ok(())
    }
}

impl Write for SnappyXerialWriter<'_> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        if !self.chunk.is_empty() {
            let take = (XERIAL_CHUNK - self.chunk.len()).min(buf.len());
            self.chunk.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.chunk.len() < XERIAL_CHUNK {
                return Ok(n);
            }
            let chunk = std::mem::take(&mut self.chunk);
            self.put_chunk(&chunk)?;
            self.chunk = chunk;
            self.chunk.clear();
        }
        let mut whole = buf.chunks_exact(XERIAL_CHUNK);
        for chunk in &mut whole {
            self.put_chunk(chunk)?;
        }
        self.chunk.extend_from_slice(whole.remainder());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
mod tests;
