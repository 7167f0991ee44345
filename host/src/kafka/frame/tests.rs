//! Frame reading, request/response header parsing and encoding round trips.

use super::*;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::messages::{ProduceRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;

fn produce_frame(version: i16, acks: i16, txn: Option<&str>) -> Bytes {
    produce_frame_with_timeout(version, acks, txn, 1500)
}

fn produce_frame_with_timeout(
    version: i16,
    acks: i16,
    txn: Option<&str>,
    timeout_ms: i32,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("client-1")));
    let body = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_string(t.into()))));
    encode_request(ApiKey::Produce, &header, &body).unwrap()
}

#[test]
fn acks_is_read_for_every_produce_version() {
    for version in 3..=12 {
        for acks in [-1, 0, 1] {
            let frame = produce_frame(version, acks, Some("txn-a"));
            assert_eq!(produce_acks(&frame).unwrap(), acks, "v{version}");
            let frame = produce_frame(version, acks, None);
            assert_eq!(produce_acks(&frame).unwrap(), acks, "v{version} no txn");
        }
    }
}

#[test]
fn timeout_is_read_for_every_produce_version() {
    for version in 3..=13 {
        for timeout_ms in [0, 1, 30_000, i32::MAX] {
            let frame = produce_frame_with_timeout(version, -1, Some("txn-a"), timeout_ms);
            let h = produce_header(&frame).unwrap();
            assert_eq!((h.acks, h.timeout_ms), (-1, timeout_ms), "v{version}");
        }
    }
}

#[test]
fn truncated_produce_header_is_an_error() {
    let frame = produce_frame(9, 1, Some("t"));
    assert!(produce_acks(&frame[..12]).is_err());
}

#[tokio::test]
async fn frame_over_max_is_refused_before_allocating() {
    let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
    let err = read_frame(&mut input, 1024).await.unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn frames_round_trip_and_eof_is_clean() {
    let mut wire = Vec::new();
    write_frame(&mut wire, b"hello").await.unwrap();
    write_frame(&mut wire, b"").await.unwrap();
    let mut r = wire.as_slice();
    assert_eq!(
        read_frame(&mut r, 100).await.unwrap().unwrap(),
        Bytes::from_static(b"hello")
    );
    assert_eq!(read_frame(&mut r, 100).await.unwrap().unwrap().len(), 0);
    assert!(read_frame(&mut r, 100).await.unwrap().is_none());
}

#[tokio::test]
async fn truncated_frame_is_reported() {
    let mut input: &[u8] = &[0, 0, 0, 10, 1, 2];
    let err = read_frame(&mut input, 100).await.unwrap_err();
    assert!(
        matches!(err, FrameError::Truncated { read: 2, size: 10 }),
        "{err}"
    );
}

#[tokio::test]
async fn idle_buffers_nobody_took_for_a_whole_period_are_freed() {
    // 9 MiB bodies use the 16 MiB class, which no other test reads.
    const CLASS: usize = 16 << 20;
    let mut wire = Vec::new();
    for _ in 0..3 {
        write_frame(&mut wire, &vec![1u8; 9 << 20]).await.unwrap();
    }
    let mut r = wire.as_slice();
    drop(read_frame(&mut r, 32 << 20).await.unwrap().unwrap());
    pool::trim_class(CLASS); // starts a period with the buffer idle
                             // Taken and given back within the period: in use, kept.
    drop(read_frame(&mut r, 32 << 20).await.unwrap().unwrap());
    assert_eq!(
        pool::trim_class(CLASS),
        0,
        "a buffer used this period stays"
    );
    // Idle for the whole next period: freed.
    assert_eq!(pool::trim_class(CLASS), CLASS, "an unused buffer goes back");
    assert_eq!(pool::trim_class(CLASS), 0);
    drop(read_frame(&mut r, 32 << 20).await.unwrap().unwrap());
}

#[test]
fn batch_buffers_return_to_the_pool_and_are_reused() {
    // 5 MiB batches use the 8 MiB class, which no other test reads.
    const CLASS: usize = 8 << 20;
    let mut out = pool::bytes_mut_for(5 << 20);
    assert_eq!(out.capacity(), CLASS);
    out.extend_from_slice(&vec![3u8; 5 << 20]);
    let ptr = out.as_ptr();
    let frozen = pool::freeze_bytes_mut(out);
    assert_eq!(frozen.len(), 5 << 20);
    assert!(frozen.iter().all(|b| *b == 3));
    let slice = frozen.slice(1..2);
    drop(frozen);
    drop(slice);
    // The same memory comes back, empty, for the next batch.
    let again = pool::bytes_mut_for(5 << 20);
    assert_eq!(again.as_ptr(), ptr);
    assert!(again.is_empty());
    assert_eq!(again.capacity(), CLASS);
    // A buffer that had to grow past its class is freed, not pooled.
    let mut grown = again;
    grown.extend_from_slice(&vec![0u8; CLASS + 1]);
    drop(pool::freeze_bytes_mut(grown));
    let fresh = pool::bytes_mut_for(5 << 20);
    assert_eq!(fresh.capacity(), CLASS);
}

#[tokio::test]
async fn pooled_frame_buffers_are_reused_once_dropped() {
    // 3 MiB bodies use the 4 MiB class, which no other test reads.
    let mut wire = Vec::new();
    write_frame(&mut wire, &vec![7u8; 3 << 20]).await.unwrap();
    write_frame(&mut wire, &vec![9u8; (3 << 20) + 5])
        .await
        .unwrap();
    let mut r = wire.as_slice();
    let first = read_frame(&mut r, 8 << 20).await.unwrap().unwrap();
    assert!(first.iter().all(|b| *b == 7));
    let ptr = first.as_ptr();
    let slice = first.slice(10..20);
    drop(first);
    // A slice keeps the buffer: it is not back in the pool yet.
    assert!(pool::idle_bytes() < pool::POOL_BYTES);
    drop(slice);
    let second = read_frame(&mut r, 8 << 20).await.unwrap().unwrap();
    assert_eq!(second.len(), (3 << 20) + 5);
    assert!(second.iter().all(|b| *b == 9));
    assert_eq!(
        second.as_ptr(),
        ptr,
        "the dropped frame's buffer is read into again"
    );
}

#[tokio::test]
async fn a_lying_prefix_within_the_pooled_sizes_fails_as_truncated() {
    // Announces 12 MiB, sends 10 bytes.
    let mut input = vec![0, 0xc0, 0, 0];
    input.extend_from_slice(&[1; 10]);
    let err = read_frame(&mut input.as_slice(), 16 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FrameError::Truncated { read: 10, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn frame_writer_round_trips_small_and_large_frames() {
    let bodies: Vec<Vec<u8>> = [0usize, 5, 4096, 16 * 1024, 16 * 1024 + 1, 300_000, 12]
        .iter()
        .enumerate()
        .map(|(i, n)| vec![i as u8; *n])
        .collect();
    let mut w = FrameWriter::new(Vec::new());
    for b in &bodies {
        w.write_frame(b).await.unwrap();
    }
    w.flush().await.unwrap();
    assert!(w.buf.capacity() <= FrameWriter::<Vec<u8>>::RETAIN);
    let wire = w.inner;
    let mut r = wire.as_slice();
    for b in &bodies {
        assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap().unwrap(), b[..]);
    }
    assert!(read_frame(&mut r, 1 << 20).await.unwrap().is_none());
}

#[test]
fn encoded_frames_use_pooled_buffers_and_decode_back() {
    let frame = produce_frame(9, -1, Some("txn"));
    let (header, body) = decode_request::<ProduceRequest>(ApiKey::Produce, frame.clone()).unwrap();
    let again = encode_request(ApiKey::Produce, &header, &body).unwrap();
    assert_eq!(again, frame);
}

/// A sink that takes at most `max` bytes per write and has no vectored writes (as a TLS stream).
struct Trickle {
    out: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Bodies in pieces (small, large, with empty pieces) come out as the same frames as their
/// joined bytes, through vectored and non-vectored streams that take a few bytes at a time.
#[tokio::test]
async fn frame_writer_writes_bodies_in_pieces_as_whole_frames() {
    let piece = |n: usize, b: u8| Bytes::from(vec![b; n]);
    let bodies: Vec<Vec<Bytes>> = vec![
        vec![piece(3, 1), piece(0, 0), piece(40, 2)],
        vec![
            piece(10, 3),
            piece(300_000, 4),
            piece(7, 5),
            piece(20_000, 6),
        ],
        vec![piece(5, 7)],
        vec![piece(40_000, 8), piece(1, 9)],
    ];
    let joined: Vec<Vec<u8>> = bodies.iter().map(|b| b.concat()).collect();
    let mut vectored = FrameWriter::new(Vec::new());
    let mut plain = FrameWriter::new(Trickle {
        out: Vec::new(),
        max: 1000,
    });
    for b in &bodies {
        vectored.write_parts(b).await.unwrap();
        plain.write_parts(b).await.unwrap();
    }
    vectored.flush().await.unwrap();
    plain.flush().await.unwrap();
    for wire in [vectored.inner, plain.inner.out] {
        let mut r = wire.as_slice();
        for b in &joined {
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap().unwrap(), b[..]);
        }
        assert!(read_frame(&mut r, 1 << 20).await.unwrap().is_none());
    }
}

/// Hands out `wire` in reads of at most `chunk` bytes, counting the reads.
struct ChunkedReader<'a> {
    wire: &'a [u8],
    chunk: usize,
    reads: usize,
}

impl tokio::io::AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.wire.len());
        buf.put_slice(&self.wire[..n]);
        self.wire = &self.wire[n..];
        self.reads += 1;
        std::task::Poll::Ready(Ok(()))
    }
}

/// A frame reader over `wire`, fed in reads of at most `chunk` bytes.
fn chunked(wire: &[u8], chunk: usize) -> FrameReader<ChunkedReader<'_>> {
    FrameReader::new(ChunkedReader {
        wire,
        chunk,
        reads: 0,
    })
}

/// Frames of `sizes`, each body filled with its index.
async fn wire_of(sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| vec![i as u8; *n])
        .collect();
    let mut wire = Vec::new();
    for b in &bodies {
        write_frame(&mut wire, b).await.unwrap();
    }
    (bodies, wire)
}

#[tokio::test]
async fn a_frame_reader_returns_every_frame_however_the_bytes_arrive() {
    let past = FrameReader::<&[u8]>::READ_PAST;
    let sizes = [
        0,
        1,
        3,
        past - 4,
        past - 3,
        past,
        past + 1,
        4095,
        4096,
        5000,
        70_000,
        2 << 20,
        7,
    ];
    let (bodies, wire) = wire_of(&sizes).await;
    for chunk in [1, 3, 4, 5, 511, 512, 513, 4096, 65_536, usize::MAX] {
        let mut r = chunked(&wire, chunk);
        for b in &bodies {
            let frame = r.read_frame(4 << 20).await.unwrap().unwrap();
            assert!(
                frame == b[..],
                "a {}-byte frame in reads of {chunk}",
                b.len()
            );
        }
        assert!(r.read_frame(4 << 20).await.unwrap().is_none(), "{chunk}");
    }
}

#[tokio::test]
async fn a_frame_reader_reads_small_pipelined_frames_together() {
    // Ten 20-byte requests sent at once: one read for all, one to see the end of the stream.
    let (bodies, wire) = wire_of(&[20; 10]).await;
    let mut r = chunked(&wire, usize::MAX);
    for b in &bodies {
        assert_eq!(r.read_frame(1 << 20).await.unwrap().unwrap(), b[..]);
    }
    assert!(r.read_frame(1 << 20).await.unwrap().is_none());
    assert_eq!(r.inner.reads, 2);

    // A Produce of a 16 KiB batch, then a small request: the big body's read also takes what
    // follows it (up to READ_PAST bytes), so the small frame needs no read of its own.
    let (bodies, wire) = wire_of(&[(16 << 10) + 200, 100]).await;
    let mut r = chunked(&wire, usize::MAX);
    for b in &bodies {
        assert_eq!(r.read_frame(1 << 20).await.unwrap().unwrap(), b[..]);
    }
    assert_eq!(
        r.inner.reads, 2,
        "prefix and head, then the rest and the next frame"
    );
}

#[tokio::test]
async fn a_frame_reader_skips_a_body_and_reads_on() {
    let (bodies, wire) = wire_of(&[10, 100_000, 30]).await;
    let mut r = chunked(&wire, 700);
    // The first read carries the whole 10-byte frame and part of the next.
    let size = r.read_len(1 << 20).await.unwrap().unwrap();
    r.skip_body(size).await.unwrap();
    let size = r.read_len(1 << 20).await.unwrap().unwrap();
    assert_eq!(size, 100_000);
    r.skip_body(size).await.unwrap();
    assert_eq!(r.read_frame(1 << 20).await.unwrap().unwrap(), bodies[2][..]);
    assert!(r.read_frame(1 << 20).await.unwrap().is_none());
}

#[tokio::test]
async fn a_frame_reader_reports_a_stream_cut_mid_frame() {
    let (_, wire) = wire_of(&[10, 2000]).await;
    for (cut, read) in [(16, 2), (14 + 4 + 100, 100)] {
        let mut r = FrameReader::new(&wire[..cut]);
        let first = r.read_frame(1 << 20).await.unwrap().unwrap();
        assert_eq!(first.len(), 10);
        let err = r.read_frame(1 << 20).await.unwrap_err();
        let expected_size = if read == 2 { 4 } else { 2000 };
        assert!(
            matches!(err, FrameError::Truncated { read: r, size } if r == read && size == expected_size),
            "cut at {cut}: {err}"
        );
    }
    let mut r = FrameReader::new(&wire[..14 + 4 + 100]);
    r.read_frame(1 << 20).await.unwrap().unwrap();
    let size = r.read_len(1 << 20).await.unwrap().unwrap();
    let err = r.skip_body(size).await.unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::Truncated {
                read: 100,
                size: 2000
            }
        ),
        "{err}"
    );
}
