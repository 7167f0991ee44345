//! Kafka framing: size-prefixed frames, the request/response header fields the proxy needs, and
//! helpers to decode/encode whole messages with kafka-protocol when a stage must change them.
//!
//! The relay path only reads the first 8 bytes of a request (api key, version, correlation id) and
//! the first 4 bytes of a response (correlation id); everything else stays untouched bytes.

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reader::{ByteReader, ReadError};

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
/// ([`read_frame_body`]).
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
pub async fn read_frame_len<R: AsyncRead + Unpin>(
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
    let size = i32::from_be_bytes(len_buf);
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
    Ok(Some(size))
}

/// Reads a frame body of `size` bytes (after [`read_frame_len`]).
///
/// Bodies of up to [`pool::MAX_POOLED`] bytes go into a buffer from the process-wide frame
/// pool, given back to it when the last [`Bytes`] pointing into it is dropped: steady traffic
/// reuses the same warm pages instead of faulting in (and the kernel zeroing) fresh ones for
/// every request. When the pool has no buffer of the size, a fresh one of the class's capacity
/// joins the pool afterwards; its pages become resident only as bytes arrive, so a lying prefix
/// costs address space, not memory. Buffers are filled through `read_buf` (no zeroing). Larger bodies are not pooled (see [`read_frame`]).
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Result<Bytes, FrameError> {
    if size < pool::MIN_POOLED {
        let mut body = vec![0u8; size];
        read_exact_or_truncated(reader, &mut body, size).await?;
        return Ok(Bytes::from(body));
    }
    if let Some(class) = pool::class_of(size) {
        // Capacity is reserved, not touched: resident memory grows only with what arrives.
        let mut body = pool::take(class).unwrap_or_else(|| Vec::with_capacity(class));
        while body.len() < size {
            if body.capacity() == body.len() {
                let doubled = body.capacity().saturating_mul(2);
                let target = if doubled >= size { class } else { doubled };
                body.reserve_exact(target - body.len());
            }
            let want = size - body.len();
            let n = (&mut *reader).take(want as u64).read_buf(&mut body).await?;
            if n == 0 {
                return Err(FrameError::Truncated {
                    read: body.len(),
                    size,
                });
            }
        }
        return Ok(pool::frame(body, class));
    }
    // Start with up to 1 MiB and at least double after that, so a large frame is copied O(1)
    // times while a lying prefix still cannot reserve more than 1 MiB beyond what arrived.
    const FIRST: usize = 1024 * 1024;
    let mut body = BytesMut::with_capacity(size.min(FIRST));
    while body.len() < size {
        if body.capacity() == body.len() {
            body.reserve((size - body.len()).min(body.len().max(FIRST)));
        }
        let want = size - body.len();
        let n = (&mut *reader).take(want as u64).read_buf(&mut body).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                read: body.len(),
                size,
            });
        }
    }
    Ok(body.freeze())
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    size: usize,
) -> Result<(), FrameError> {
    let mut read = 0;
    while read < buf.len() {
        let n = reader.read(&mut buf[read..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { read, size });
        }
        read += n;
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
    inner: W,
    buf: Vec<u8>,
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
            return write_two(&mut self.inner, &prefix, body).await;
        }
        // One write for the prefix and the body's start: no 4-byte packet on its own.
        let head = body.len().min(Self::COALESCE);
        self.buf.extend_from_slice(&prefix);
        self.buf.extend_from_slice(&body[..head]);
        self.write_buffered().await?;
        self.inner.write_all(&body[head..]).await
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

/// Writes `a` then `b` with vectored writes until both are out.
async fn write_two<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() {
        let n = w
            .write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    w.write_all(b).await
}

/// The process-wide pool of frame buffers ([`read_frame_body`]).
///
/// Buffers come in power-of-two classes from [`MIN_POOLED`] to [`MAX_POOLED`]; each class keeps
/// at most [`CLASS_BYTES`] bytes of idle buffers and the pool at most [`POOL_BYTES`] in all. A
/// frame's [`Bytes`] owns its buffer and puts it back when the last clone or slice is dropped.
/// [`trim`] (called every few seconds by the proxy) frees the buffers no frame needed since the
/// previous call, so memory goes back to the allocator once a burst is over while steady traffic
/// keeps reusing what it needs.
pub mod pool {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use std::sync::{Mutex, MutexGuard};

    use bytes::{Bytes, BytesMut};

    /// Smallest pooled body (smaller ones are cheap small allocations).
    pub const MIN_POOLED: usize = 4 * 1024;
    /// Largest pooled body: Fetch responses of a few partitions (brokers may return more than
    /// `max.partition.fetch.bytes` for the first batch) fit.
    pub const MAX_POOLED: usize = 16 * 1024 * 1024;
    /// Idle bytes kept per class (at least one buffer).
    pub const CLASS_BYTES: usize = 16 * 1024 * 1024;
    /// Idle bytes kept in all.
    pub const POOL_BYTES: usize = 48 * 1024 * 1024;

    const MIN_SHIFT: u32 = MIN_POOLED.trailing_zeros();
    const CLASSES: usize = (MAX_POOLED.trailing_zeros() - MIN_SHIFT + 1) as usize;

    /// One class's idle buffers and the fewest it held since the last [`trim`] (buffers below that
    /// mark were never taken in the interval: nobody needs them).
    struct Idle {
        buffers: Vec<Vec<u8>>,
        low_water: usize,
    }

    static IDLE: [Mutex<Idle>; CLASSES] = [const {
        Mutex::new(Idle {
            buffers: Vec::new(),
            low_water: 0,
        })
    }; CLASSES];
    static IDLE_BYTES: AtomicUsize = AtomicUsize::new(0);

    fn idle(class: usize) -> MutexGuard<'static, Idle> {
        // A panic while holding the lock leaves a valid Vec: keep using it.
        IDLE[index(class)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The class (buffer size) for a body of `size` bytes, when pooled.
    pub fn class_of(size: usize) -> Option<usize> {
        (MIN_POOLED..=MAX_POOLED)
            .contains(&size)
            .then(|| size.next_power_of_two())
    }

    fn index(class: usize) -> usize {
        (class.trailing_zeros() - MIN_SHIFT) as usize
    }

    /// An idle, empty buffer of capacity `class`, if the pool has one.
    pub(super) fn take(class: usize) -> Option<Vec<u8>> {
        let mut idle = idle(class);
        let buf = idle.buffers.pop()?;
        idle.low_water = idle.low_water.min(idle.buffers.len());
        IDLE_BYTES.fetch_sub(class, Relaxed);
        Some(buf)
    }

    /// Frees the idle buffers of every class that no frame took since the previous call and
    /// returns the bytes freed. Call it periodically: a buffer idle for a whole period goes back
    /// to the allocator, one in use within the period stays pooled.
    pub fn trim() -> usize {
        (0..CLASSES).map(|i| trim_class(MIN_POOLED << i)).sum()
    }

    /// [`trim`] for one class.
    pub(super) fn trim_class(class: usize) -> usize {
        let released: Vec<Vec<u8>> = {
            let mut idle = idle(class);
            let unused = idle.low_water.min(idle.buffers.len());
            let keep = idle.buffers.len() - unused;
            let released = idle.buffers.split_off(keep);
            idle.low_water = idle.buffers.len();
            released
        };
        let freed = released.len() * class;
        IDLE_BYTES.fetch_sub(freed, Relaxed);
        // Dropped outside the lock.
        drop(released);
        freed
    }

    /// Gives `buf` back if its capacity is still `class`, unless its class or the pool is full.
    fn give_back(mut buf: Vec<u8>, class: usize) {
        if buf.capacity() != class {
            return;
        }
        let mut idle = idle(class);
        if (idle.buffers.len() + 1) * class > CLASS_BYTES.max(class)
            || IDLE_BYTES.load(Relaxed) + class > POOL_BYTES
        {
            return;
        }
        buf.clear();
        IDLE_BYTES.fetch_add(class, Relaxed);
        idle.buffers.push(buf);
    }

    /// Idle bytes held by the pool now.
    pub fn idle_bytes() -> usize {
        IDLE_BYTES.load(Relaxed)
    }

    struct Pooled {
        buf: Vec<u8>,
        class: usize,
    }

    impl AsRef<[u8]> for Pooled {
        fn as_ref(&self) -> &[u8] {
            &self.buf
        }
    }

    impl Drop for Pooled {
        fn drop(&mut self) {
            give_back(std::mem::take(&mut self.buf), self.class);
        }
    }

    /// `buf` (of capacity `class`) as [`Bytes`] that return it to the pool when dropped.
    pub(super) fn frame(buf: Vec<u8>, class: usize) -> Bytes {
        Bytes::from_owner(Pooled { buf, class })
    }

    /// An empty [`BytesMut`] with room for at least `size` bytes, to encode record batches into:
    /// an idle pooled buffer when `size` has a class (already resident: no page faults, no
    /// zeroing), else a fresh allocation. Freeze it with [`freeze_bytes_mut`] so the buffer comes
    /// back to the pool.
    pub fn bytes_mut_for(size: usize) -> BytesMut {
        // An empty Vec with spare capacity becomes a unique shared `Bytes`, which turns into a
        // `BytesMut` over the same allocation (bytes has no direct conversion).
        BytesMut::from(Bytes::from(Buffer::for_size(size).vec))
    }

    /// `buf`'s bytes as [`Bytes`]. A buffer whose capacity is a pool class (one from
    /// [`bytes_mut_for`] that did not have to grow) goes back to the pool when the last clone or
    /// slice is dropped; any other is freed as usual.
    pub fn freeze_bytes_mut(buf: BytesMut) -> Bytes {
        match class_of(buf.capacity()) {
            Some(class) if class == buf.capacity() => Bytes::from_owner(PooledMut { buf, class }),
            _ => buf.freeze(),
        }
    }

    struct PooledMut {
        buf: BytesMut,
        class: usize,
    }

    impl AsRef<[u8]> for PooledMut {
        fn as_ref(&self) -> &[u8] {
            &self.buf
        }
    }

    impl Drop for PooledMut {
        fn drop(&mut self) {
            let mut buf = std::mem::take(&mut self.buf);
            // Emptied first: turning it back into a Vec then moves no bytes.
            buf.clear();
            give_back(Vec::from(buf), self.class);
        }
    }

    /// A buffer to encode a frame of known size into: pooled when the size has a class.
    pub(crate) struct Buffer {
        vec: Vec<u8>,
        class: Option<usize>,
    }

    impl Buffer {
        /// An empty buffer with room for `size` bytes.
        pub(crate) fn for_size(size: usize) -> Self {
            let class = class_of(size);
            let vec = class
                .and_then(take)
                .unwrap_or_else(|| Vec::with_capacity(class.unwrap_or(size)));
            Self { vec, class }
        }

        /// The buffer to append to.
        pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
            &mut self.vec
        }

        /// The bytes written, returning the buffer to the pool once they are dropped.
        pub(crate) fn freeze(self) -> Bytes {
            match self.class {
                Some(class) if self.vec.capacity() == class => frame(self.vec, class),
                _ => Bytes::from(self.vec),
            }
        }
    }
}

/// The fixed prefix of every request header: enough to route and correlate without decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    /// Raw API key (may be unknown to kafka-protocol; such requests are relayed untouched).
    pub api_key: i16,
    /// API version the client chose.
    pub api_version: i16,
    /// Correlation id echoed by the response.
    pub correlation_id: i32,
}

impl RequestMeta {
    /// Parses the first 8 bytes of a request frame body.
    pub fn parse(frame: &[u8]) -> anyhow::Result<Self> {
        if frame.len() < 8 {
            bail!(
                "request frame of {} bytes is shorter than a request header (8 bytes)",
                frame.len()
            );
        }
        let mut b = frame;
        Ok(Self {
            api_key: b.get_i16(),
            api_version: b.get_i16(),
            correlation_id: b.get_i32(),
        })
    }

    /// The API key, if kafka-protocol knows it.
    pub fn known_api(&self) -> Option<ApiKey> {
        ApiKey::try_from(self.api_key).ok()
    }
}

/// Correlation id of a response frame (its first 4 bytes).
pub fn response_correlation_id(frame: &[u8]) -> anyhow::Result<i32> {
    if frame.len() < 4 {
        bail!(
            "response frame of {} bytes is shorter than a response header",
            frame.len()
        );
    }
    Ok(i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
}

/// Decodes a request whose API kafka-protocol knows: header and body.
pub fn decode_request<T: Decodable>(
    api: ApiKey,
    frame: Bytes,
) -> anyhow::Result<(RequestHeader, T)> {
    let mut buf = frame;
    let version = i16::from_be_bytes([buf[2], buf[3]]);
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .with_context(|| format!("decoding {api:?} v{version} request header"))?;
    let body = T::decode(&mut buf, version)
        .with_context(|| format!("decoding {api:?} v{version} request body"))?;
    Ok((header, body))
}

/// Encodes a request (header + body) into a frame body.
pub fn encode_request<T: Encodable>(
    api: ApiKey,
    header: &RequestHeader,
    body: &T,
) -> anyhow::Result<Bytes> {
    let version = header.request_api_version;
    let header_version = api.request_header_version(version);
    encode_frame(header, header_version, body, version, || {
        format!("{api:?} v{version} request")
    })
}

/// Decodes a response body of a known API at the version of its request.
pub fn decode_response<T: Decodable>(
    api: ApiKey,
    version: i16,
    frame: Bytes,
) -> anyhow::Result<(ResponseHeader, T)> {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))
        .with_context(|| format!("decoding {api:?} v{version} response header"))?;
    let body = T::decode(&mut buf, version)
        .with_context(|| format!("decoding {api:?} v{version} response body"))?;
    Ok((header, body))
}

/// Decodes a Fetch response body at the version of its request.
///
/// Some brokers put tagged fields into the top level of flexible Fetch responses whose schema
/// does not define them (tansu 0.6 sends `node_endpoints`, tag 0, in v12, which only v16 has);
/// kafka-protocol refuses those. For v12-v15 such a response is decoded again with every
/// top-level tagged field dropped (none is defined before v16, so nothing a client at that
/// version reads is lost). Real brokers are never affected: their responses decode the first
/// time.
pub fn decode_fetch_response(
    version: i16,
    frame: Bytes,
) -> anyhow::Result<(ResponseHeader, FetchResponse)> {
    match decode_response::<FetchResponse>(ApiKey::Fetch, version, frame.clone()) {
        Ok(decoded) => Ok(decoded),
        Err(strict) if (12..16).contains(&version) => {
            decode_fetch_response_dropping_top_level_tags(version, frame).map_err(|_| strict)
        }
        Err(strict) => Err(strict),
    }
}

fn decode_fetch_response_dropping_top_level_tags(
    version: i16,
    frame: Bytes,
) -> anyhow::Result<(ResponseHeader, FetchResponse)> {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, ApiKey::Fetch.response_header_version(version))?;
    if buf.remaining() < 10 {
        bail!("Fetch response shorter than its fixed fields");
    }
    let throttle_time_ms = buf.get_i32();
    let error_code = buf.get_i16();
    let session_id = buf.get_i32();
    let topics = read_unsigned_varint(&mut buf)?
        .checked_sub(1)
        .context("Fetch response without a topic array")?;
    let mut responses = Vec::with_capacity((topics as usize).min(1024));
    for _ in 0..topics {
        responses.push(FetchableTopicResponse::decode(&mut buf, version)?);
    }
    for _ in 0..read_unsigned_varint(&mut buf)? {
        read_unsigned_varint(&mut buf)?;
        let size = read_unsigned_varint(&mut buf)? as usize;
        if buf.remaining() < size {
            bail!("truncated tagged field in Fetch response");
        }
        buf.advance(size);
    }
    if buf.has_remaining() {
        bail!(
            "{} unexpected bytes after a Fetch response",
            buf.remaining()
        );
    }
    let body = FetchResponse::default()
        .with_throttle_time_ms(throttle_time_ms)
        .with_error_code(error_code)
        .with_session_id(session_id)
        .with_responses(responses);
    Ok((header, body))
}

fn read_unsigned_varint(buf: &mut Bytes) -> anyhow::Result<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        if !buf.has_remaining() {
            bail!("truncated varint");
        }
        let b = buf.get_u8();
        value |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint longer than 5 bytes")
}

/// Encodes a response (header + body) into a frame body.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    header: &ResponseHeader,
    body: &T,
) -> anyhow::Result<Bytes> {
    let header_version = api.response_header_version(version);
    encode_frame(header, header_version, body, version, || {
        format!("{api:?} v{version} response")
    })
}

/// Encodes `header` and `body` into one pooled buffer sized up front (doubling would copy a
/// multi-megabyte frame repeatedly); `what` names the frame in errors.
fn encode_frame<H: Encodable, T: Encodable>(
    header: &H,
    header_version: i16,
    body: &T,
    version: i16,
    what: impl Fn() -> String,
) -> anyhow::Result<Bytes> {
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + body.compute_size(version)?))
        .with_context(|| format!("sizing {}", what()))?;
    let mut out = pool::Buffer::for_size(size);
    header
        .encode(out.vec(), header_version)
        .with_context(|| format!("encoding {} header", what()))?;
    body.encode(out.vec(), version)
        .with_context(|| format!("encoding {} body", what()))?;
    Ok(out.freeze())
}

/// The two Produce request fields the relay needs without decoding the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceHeader {
    /// `acks`: 0 means the broker sends no response.
    pub acks: i16,
    /// `timeout_ms`: how long the client waits for the answer (≤ 0: no bound given).
    pub timeout_ms: i32,
}

/// Reads `acks` and `timeout_ms` from a Produce request (v3+) without decoding the records, so
/// the relay knows whether a response will come and by when it is due.
pub fn produce_header(frame: &[u8]) -> anyhow::Result<ProduceHeader> {
    let meta = RequestMeta::parse(frame)?;
    read_produce_header(&frame[8..], meta.api_version)
        .context("reading acks and timeout_ms from a Produce request header")
}

/// `acks` and `timeout_ms` of a Produce request of `version`, from the header bytes after the
/// fixed prefix.
fn read_produce_header(header: &[u8], version: i16) -> Result<ProduceHeader, ReadError> {
    let flexible = version >= 9;
    let mut r = ByteReader::new(header);
    // client_id: nullable string with an i16 length, in both header v1 and v2.
    let client_id_len = r.i16("client id length")?;
    r.skip(client_id_len.max(0) as usize, "client id")?;
    if flexible {
        skip_tagged_fields(&mut r)?;
    }
    if version >= 3 {
        // transactional_id: compact (length + 1, 0 is null) or i16-prefixed nullable string.
        let len = if flexible {
            r.unsigned_varint("transactional id length")?
                .saturating_sub(1) as usize
        } else {
            r.i16("transactional id length")?.max(0) as usize
        };
        r.skip(len, "transactional id")?;
    }
    Ok(ProduceHeader {
        acks: r.i16("acks")?,
        timeout_ms: r.i32("timeout_ms")?,
    })
}

/// Reads `acks` from a Produce request without decoding the records (see [`produce_header`]).
pub fn produce_acks(frame: &[u8]) -> anyhow::Result<i16> {
    Ok(produce_header(frame)?.acks)
}

fn skip_tagged_fields(r: &mut ByteReader<'_>) -> Result<(), ReadError> {
    let count = r.unsigned_varint("tagged field count")?;
    for _ in 0..count {
        r.unsigned_varint("tag")?;
        let len = r.unsigned_varint("tagged field length")?;
        r.skip(len as usize, "tagged field")?;
    }
    Ok(())
}

/// Appends a big-endian i32 size prefix and body to `out` (for building frames in memory).
pub fn put_frame(out: &mut BytesMut, body: &[u8]) {
    out.put_i32(body.len() as i32);
    out.put_slice(body);
}

#[cfg(test)]
mod tests;
