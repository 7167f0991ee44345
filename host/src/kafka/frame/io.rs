//! Size-prefixed frames on a socket: reading one frame with memory bounded by what arrived,
//! and writing frames with small ones coalesced.
//!
//! Every frame is a big-endian `i32` size followed by that many bytes; a negative size or one
//! over the configured maximum ends the connection ([`FrameError`]).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::FrameBody;
use super::pool;

/// Default maximum frame size, as Kafka's `socket.request.max.bytes` (100 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the configured maximum; the connection must close.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes (raise max_frame_bytes if this is legitimate)")]
    TooLarge {
        /// Announced size.
        size: i64,
        /// Configured maximum.
        max: usize,
    },
    /// The peer announced a negative frame size: the stream is not Kafka protocol.
    #[error("negative frame size {0}: peer is not speaking the Kafka protocol")]
    Negative(i32),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame after {read} of {size} bytes")]
    Truncated {
        /// Bytes received.
        read: usize,
        /// Bytes announced.
        size: usize,
    },
    /// I/O error on the socket.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one size-prefixed frame. Returns `Ok(None)` on a clean end of stream between frames.
///
/// Memory grows with the bytes actually received (at most 1 MiB, or as much again as has
/// arrived, beyond it), never with the announced size alone, so a lying length prefix cannot
/// make the proxy allocate `max` bytes up front. The body is read into a pooled buffer
/// (`read_frame_body`, below).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let Some(size) = read_frame_len(reader, max).await? else {
        return Ok(None);
    };
    read_frame_body(reader, size).await.map(Some)
}

/// Reads the 4-byte size prefix of the next frame and checks it against `max`. Returns
/// `Ok(None)` on a clean end of stream between frames. Cancel-safe only before the first byte
/// arrives.
async fn read_frame_len<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut len_buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { read: got, size: 4 });
        }
        got += n;
    }
    checked_size(len_buf, max).map(Some)
}

/// The frame size a size prefix announces, refused when negative or over `max`.
fn checked_size(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let size = i32::from_be_bytes(prefix);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max,
        });
    }
    Ok(size)
}

/// Reads a frame body of `size` bytes (after [`read_frame_len`]).
///
/// Bodies of up to [`pool::MAX_POOLED`] bytes go into a buffer from the process-wide frame
/// pool, given back to it when the last [`Bytes`] pointing into it is dropped: steady traffic
/// reuses the same warm pages instead of faulting in (and the kernel zeroing) fresh ones for
/// every request. When the pool has no buffer of the size, a fresh one of the class's capacity
/// joins the pool afterwards; its pages become resident only as bytes arrive, so a lying prefix
/// costs address space, not memory. Buffers are filled through `read_buf` (no zeroing). Larger
/// bodies are not pooled (see [`read_frame`]).
async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Result<Bytes, FrameError> {
    read_body(reader, size, None).await
}

/// Reads frames from one stream with fewer system calls than [`read_frame`]: each read may take
/// up to [`FrameReader::READ_PAST`] bytes beyond the frame it is for, kept for the next frame.
///
/// So a small frame (a Produce acknowledgement, most requests but Produce) usually arrives, size
/// prefix and body, in one read, and pipelined small frames share one. A read that returns less
/// than it asked for also tells the runtime that the socket is drained, so waiting for the next
/// frame costs no extra read that would only find nothing there. Memory per reader is the
/// fixed carry buffer; bodies are allocated (and pooled) as by [`read_frame`].
///
/// One reader must own the stream for the rest of its life: the bytes it carries belong to the
/// next frame.
pub struct FrameReader<R> {
    pub(super) inner: R,
    carry: Carry,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Bytes a read may take past the end of the frame it is for.
    pub const READ_PAST: usize = Carry::CAPACITY;

    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            carry: Carry::default(),
        }
    }

    /// Reads one frame, as [`read_frame`] does.
    pub async fn read_frame(&mut self, max: usize) -> Result<Option<Bytes>, FrameError> {
        let Some(size) = self.read_len(max).await? else {
            return Ok(None);
        };
        self.read_body(size).await.map(Some)
    }

    /// Reads the size prefix of the next frame and checks it against `max`. Returns `Ok(None)`
    /// on a clean end of stream between frames.
    pub async fn read_len(&mut self, max: usize) -> Result<Option<usize>, FrameError> {
        while self.carry.len() < 4 {
            let got = self.carry.len();
            if self.carry.read_more(&mut self.inner).await? == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated { read: got, size: 4 });
            }
        }
        let prefix: [u8; 4] = self.carry.take(4).try_into().expect("4 bytes");
        checked_size(prefix, max).map(Some)
    }

    /// Reads the body of the frame whose size [`FrameReader::read_len`] returned.
    pub async fn read_body(&mut self, size: usize) -> Result<Bytes, FrameError> {
        read_body(&mut self.inner, size, Some(&mut self.carry)).await
    }

    /// Reads past the body of the frame whose size [`FrameReader::read_len`] returned, keeping
    /// none of it.
    pub async fn skip_body(&mut self, size: usize) -> Result<(), FrameError> {
        let carried = self.carry.len().min(size);
        self.carry.take(carried);
        let rest = (size - carried) as u64;
        let skipped =
            tokio::io::copy(&mut (&mut self.inner).take(rest), &mut tokio::io::sink()).await?;
        if skipped != rest {
            return Err(FrameError::Truncated {
                read: carried + skipped as usize,
                size,
            });
        }
        Ok(())
    }
}

/// Bytes read from a stream beyond the frame they were read for: `buf[start..end]`.
struct Carry {
    // Boxed: a reader lives inside a connection's futures, which would otherwise lay it out
    // more than once.
    buf: Box<[u8; Carry::CAPACITY]>,
    start: usize,
    end: usize,
}

impl Default for Carry {
    fn default() -> Self {
        Self {
            buf: Box::new([0; Carry::CAPACITY]),
            start: 0,
            end: 0,
        }
    }
}

impl Carry {
    /// Bytes carried at most (per connection and direction: kept small for idle connections).
    const CAPACITY: usize = 512;

    fn len(&self) -> usize {
        self.end - self.start
    }

    /// The next `n` carried bytes (`n` at most [`Carry::len`]), no longer carried.
    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.start;
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        &self.buf[start..start + n]
    }

    /// One read from `reader` into the free space after what is carried; 0 at end of stream.
    async fn read_more<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = reader.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Carries `bytes` (at most [`Carry::CAPACITY`]); nothing may be carried already.
    fn put(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.len(), 0, "carried bytes would be overwritten");
        self.buf[..bytes.len()].copy_from_slice(bytes);
        (self.start, self.end) = (0, bytes.len());
    }
}

/// Reads a frame body of `size` bytes: first what `carry` holds of it, then from `reader`, up to
/// [`Carry::CAPACITY`] bytes past the body when there is a carry to keep them in.
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    mut carry: Option<&mut Carry>,
) -> Result<Bytes, FrameError> {
    let carried = carry.as_deref().map_or(0, |c| c.len().min(size));
    let read_past = match carry {
        Some(_) if carried < size => Carry::CAPACITY,
        _ => 0,
    };
    // Start with up to 1 MiB and at least double after that, so a large frame is copied O(1)
    // times while a lying prefix still cannot reserve more than 1 MiB beyond what arrived.
    const FIRST: usize = 1024 * 1024;
    let class = pool::class_of(size);
    let mut body = match class {
        // Capacity is reserved, not touched: resident memory grows only with what arrives.
        Some(class) => pool::take(class).unwrap_or_else(|| Vec::with_capacity(class)),
        None if size < pool::MIN_POOLED => Vec::with_capacity(size + read_past),
        None => Vec::with_capacity(size.min(FIRST)),
    };
    if let Some(carry) = carry.as_deref_mut() {
        body.extend_from_slice(carry.take(carried));
    }
    fill(reader, &mut body, size, read_past, |body| match class {
        Some(class) => {
            let doubled = body.capacity().saturating_mul(2);
            let target = if doubled >= size { class } else { doubled };
            body.reserve_exact(target - body.len());
        }
        None if size < pool::MIN_POOLED => body.reserve_exact(size - body.len()),
        None => body.reserve((size - body.len()).min(body.len().max(FIRST))),
    })
    .await?;
    if body.len() > size {
        let carry = carry.expect("only read past the body into a carry");
        carry.put(&body[size..]);
        body.truncate(size);
    }
    Ok(match class {
        Some(class) => pool::frame(body, class),
        None => Bytes::from(body),
    })
}

/// Reads from `reader` into `body` until it holds `size` bytes, without zeroing, each read
/// taking up to `read_past` bytes beyond them where `body` has the room. Whenever `body` is full
/// before `size`, `grow` reserves more capacity: how much is the caller's bound on what a lying
/// size prefix can make the proxy reserve. Fails with [`FrameError::Truncated`] when the stream
/// ends first.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    body: &mut Vec<u8>,
    size: usize,
    read_past: usize,
    grow: impl Fn(&mut Vec<u8>),
) -> Result<(), FrameError> {
    while body.len() < size {
        if body.capacity() == body.len() {
            grow(body);
        }
        let want = size - body.len() + read_past;
        let n = (&mut *reader).take(want as u64).read_buf(body).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                read: body.len(),
                size,
            });
        }
    }
    Ok(())
}

/// Writes one frame (size prefix + body). The caller flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    writer.write_all(&(body.len() as i32).to_be_bytes()).await?;
    writer.write_all(body).await
}

/// Writes frames to one socket, coalescing small ones, without a large per-connection buffer.
///
/// A frame of up to [`FrameWriter::COALESCE`] bytes is copied into a small buffer written on
/// [`FrameWriter::flush`] (or when it fills); a larger one is written straight from its own
/// bytes together with its size prefix (one vectored write where the stream supports it), so
/// big Fetch and Produce frames are not copied at all. After a flush the buffer keeps at most
/// [`FrameWriter::RETAIN`] bytes of capacity: an idle connection holds almost nothing.
pub struct FrameWriter<W> {
    // Visible to the frame tests, which check what was written and what stays allocated.
    pub(super) inner: W,
    pub(super) buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Frames up to this size are coalesced.
    pub const COALESCE: usize = 16 * 1024;
    /// Capacity the coalescing buffer keeps across flushes.
    pub const RETAIN: usize = 4 * 1024;

    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// Queues or writes one frame (size prefix + body). Call [`FrameWriter::flush`] when no
    /// more frames follow right away.
    pub async fn write_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        let prefix = (body.len() as i32).to_be_bytes();
        if body.len() <= Self::COALESCE {
            if self.buf.len() + 4 + body.len() > 2 * Self::COALESCE {
                self.write_buffered().await?;
            }
            self.buf.extend_from_slice(&prefix);
            self.buf.extend_from_slice(body);
            return Ok(());
        }
        if self.inner.is_write_vectored() {
            self.write_buffered().await?;
            return write_all_vectored(&mut self.inner, vec![&prefix, body]).await;
        }
        // One write for the prefix and the body's start: no 4-byte packet on its own.
        let head = body.len().min(Self::COALESCE);
        self.buf.extend_from_slice(&prefix);
        self.buf.extend_from_slice(&body[..head]);
        self.write_buffered().await?;
        self.inner.write_all(&body[head..]).await
    }

    /// [`FrameWriter::write_frame`] for a body in pieces ([`FrameBody`]): the pieces are
    /// written in order, in vectored writes where the stream supports them, never joined.
    pub async fn write_body(&mut self, body: &FrameBody) -> std::io::Result<()> {
        self.write_parts(body.parts()).await
    }

    /// [`FrameWriter::write_body`] for a body given as its pieces.
    pub async fn write_parts(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
        if let [one] = parts {
            return self.write_frame(one).await;
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        let prefix = (len as i32).to_be_bytes();
        if len <= Self::COALESCE || !self.inner.is_write_vectored() {
            if self.buf.len() + 4 + len > 2 * Self::COALESCE {
                self.write_buffered().await?;
            }
            self.buf.extend_from_slice(&prefix);
            for p in parts {
                if self.buf.len() + p.len() > 2 * Self::COALESCE {
                    self.write_buffered().await?;
                    self.inner.write_all(p).await?;
                } else {
                    self.buf.extend_from_slice(p);
                }
            }
            return Ok(());
        }
        self.write_buffered().await?;
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        pieces.push(&prefix);
        pieces.extend(parts.iter().map(|p| &p[..]));
        write_all_vectored(&mut self.inner, pieces).await
    }

    /// Writes what is buffered and flushes the stream.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.write_buffered().await?;
        self.inner.flush().await
    }

    async fn write_buffered(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        if self.buf.capacity() > Self::RETAIN {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

/// Writes every piece of `pieces`, in order, in vectored writes until all are out.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut pieces: Vec<&[u8]>,
) -> std::io::Result<()> {
    /// Pieces passed to one write (Linux takes up to 1024; a frame has a few).
    const MAX_SLICES: usize = 64;
    pieces.retain(|p| !p.is_empty());
    let mut first = 0;
    while first < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = pieces[first..]
            .iter()
            .take(MAX_SLICES)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let p = pieces[first];
            if n >= p.len() {
                n -= p.len();
                first += 1;
            } else {
                pieces[first] = &p[n..];
                n = 0;
            }
        }
    }
    Ok(())
}

/// Appends a big-endian i32 size prefix and body to `out` (for building frames in memory).
pub fn put_frame(out: &mut BytesMut, body: &[u8]) {
    out.put_i32(body.len() as i32);
    out.put_slice(body);
}
