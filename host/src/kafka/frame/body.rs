//! Frame bodies in pieces: a re-encoded Produce request or Fetch response whose record sets stay
//! in the buffers the record stage wrote them into, written to the socket in one vectored write
//! instead of being copied into one contiguous frame first.
//!
//! [`encode_spliced`] runs kafka-protocol's own encoder (so the bytes are exactly the ones
//! [`super::encode_request`] / [`super::encode_response`] would give) into a [`Splicer`], a
//! buffer that copies every field except the record sets it was handed: when the encoder writes
//! one of those (the same bytes at the same address), the splicer keeps a reference to it as a
//! piece of its own instead.

use std::ops::Range;

use anyhow::Context;
use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;

/// Record sets smaller than this are copied into the frame like any other field: a piece of its
/// own costs an iovec and a reference count, more than copying a few KiB.
pub const SPLICE_MIN: usize = 16 * 1024;

/// A frame body (without its size prefix) as one or more byte pieces, in order.
#[derive(Debug, Clone)]
pub struct FrameBody(Pieces);

#[derive(Debug, Clone)]
enum Pieces {
    /// The common case, without a `Vec`.
    One(Bytes),
    /// Several pieces and their total length.
    Many(Vec<Bytes>, usize),
}

impl FrameBody {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            Pieces::One(b) => b.len(),
            Pieces::Many(_, len) => *len,
        }
    }

    /// True when the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, to write one after the other.
    pub fn parts(&self) -> &[Bytes] {
        match &self.0 {
            Pieces::One(b) => std::slice::from_ref(b),
            Pieces::Many(parts, _) => parts,
        }
    }

    /// The body with its first four bytes (a response's correlation id) replaced by
    /// `correlation_id`; the rest is shared, not copied. A body shorter than four bytes is
    /// returned as it is.
    pub fn with_correlation_id(self, correlation_id: i32) -> FrameBody {
        let id = Bytes::copy_from_slice(&correlation_id.to_be_bytes());
        let (first, rest, len) = match self.0 {
            Pieces::One(b) => (b, Vec::new(), None),
            Pieces::Many(parts, len) => {
                let mut parts = parts.into_iter();
                let Some(first) = parts.next() else {
                    return FrameBody(Pieces::Many(Vec::new(), len));
                };
                (first, parts.collect(), Some(len))
            }
        };
        if first.len() < 4 {
            let mut parts = vec![first];
            parts.extend(rest);
            let len = parts.iter().map(Bytes::len).sum();
            return FrameBody(Pieces::Many(parts, len));
        }
        let total = len.unwrap_or(first.len());
        let mut parts = Vec::with_capacity(rest.len() + 2);
        parts.push(id);
        if first.len() > 4 {
            parts.push(first.slice(4..));
        }
        parts.extend(rest);
        FrameBody(Pieces::Many(parts, total))
    }

    /// The body as one contiguous buffer: the piece itself when there is one, else a copy (for
    /// the rare paths that decode a frame again).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Pieces::One(b) => b.clone(),
            Pieces::Many(parts, len) => {
                let mut out = BytesMut::with_capacity(*len);
                for p in parts {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for FrameBody {
    fn from(b: Bytes) -> Self {
        Self(Pieces::One(b))
    }
}

/// The encoded length of `header` and `body` (a frame body without its size prefix); `what`
/// names the frame in errors.
pub(super) fn frame_size<H: Encodable, T: Encodable>(
    header: &H,
    header_version: i16,
    body: &T,
    version: i16,
    what: impl Fn() -> String,
) -> anyhow::Result<usize> {
    header
        .compute_size(header_version)
        .and_then(|h| Ok(h + body.compute_size(version)?))
        .with_context(|| format!("sizing {}", what()))
}

/// Encodes `header` and `body` with kafka-protocol, passing each of `spliced` (record sets the
/// body holds, at least [`SPLICE_MIN`] bytes each, in encoding order) by reference instead of
/// copying it. `what` names the frame in errors.
pub(super) fn encode_spliced<H: Encodable, T: Encodable>(
    header: &H,
    header_version: i16,
    body: &T,
    version: i16,
    spliced: Vec<Bytes>,
    what: impl Fn() -> String,
) -> anyhow::Result<FrameBody> {
    let size = frame_size(header, header_version, body, version, &what)?;
    let spliced_len: usize = spliced.iter().map(Bytes::len).sum();
    let mut out = Splicer {
        copied: BytesMut::with_capacity(size.saturating_sub(spliced_len)),
        cuts: Vec::with_capacity(spliced.len()),
        spliced,
        next: 0,
        spliced_len: 0,
    };
    header
        .encode(&mut out, header_version)
        .with_context(|| format!("encoding {} header", what()))?;
    body.encode(&mut out, version)
        .with_context(|| format!("encoding {} body", what()))?;
    let frame = out.finish();
    anyhow::ensure!(
        frame.len() == size,
        "internal error: {} encoded to {} bytes, sized {size}",
        what(),
        frame.len()
    );
    Ok(frame)
}

/// The buffer [`encode_spliced`] encodes into: fields are copied into `copied`; a slice that is
/// one of `spliced` is recorded as a cut (where in `copied` it goes) instead.
struct Splicer {
    copied: BytesMut,
    /// (length of `copied` when the piece was met, index into `spliced`), in order.
    cuts: Vec<(usize, usize)>,
    spliced: Vec<Bytes>,
    /// The piece expected next (the encoder writes them in order).
    next: usize,
    /// Bytes passed by reference so far.
    spliced_len: usize,
}

impl Splicer {
    /// Which of `spliced` `src` is: the same address and length.
    fn piece(&self, src: &[u8]) -> Option<usize> {
        if src.len() < SPLICE_MIN {
            return None;
        }
        let same = |b: &Bytes| b.as_ptr() == src.as_ptr() && b.len() == src.len();
        if self.spliced.get(self.next).is_some_and(same) {
            return Some(self.next);
        }
        self.spliced.iter().position(same)
    }

    fn finish(self) -> FrameBody {
        let Self {
            mut copied,
            cuts,
            spliced,
            spliced_len,
            ..
        } = self;
        let len = copied.len() + spliced_len;
        let mut parts = Vec::with_capacity(2 * cuts.len() + 1);
        let mut taken = 0;
        for (at, piece) in cuts {
            if at > taken {
                parts.push(copied.split_to(at - taken).freeze());
                taken = at;
            }
            parts.push(spliced[piece].clone());
        }
        if !copied.is_empty() || parts.is_empty() {
            parts.push(copied.freeze());
        }
        if parts.len() == 1 {
            return FrameBody::from(parts.pop().expect("one piece"));
        }
        FrameBody(Pieces::Many(parts, len))
    }

    /// `offset` (counted over the whole frame) as an offset into `copied`, when it lies after
    /// the last piece passed by reference (message encoders never look further back).
    fn copied_offset(&self, offset: usize) -> usize {
        let before_last_cut = self.cuts.last().map_or(0, |&(at, _)| at);
        let copied = offset
            .checked_sub(self.spliced_len)
            .filter(|&o| o >= before_last_cut);
        copied.expect("kafka-protocol message encoders never seek back over a record set")
    }
}

// SAFETY: every method delegates to `copied`, a `BytesMut`, whose implementation upholds the
// trait's contract; `put_slice` either does the same or writes nothing.
#[allow(unsafe_code)]
unsafe impl BufMut for Splicer {
    fn remaining_mut(&self) -> usize {
        self.copied.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which is `copied`'s.
        unsafe { self.copied.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.copied.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.piece(src) {
            Some(i) => {
                self.cuts.push((self.copied.len(), i));
                self.spliced_len += src.len();
                self.next = i + 1;
            }
            None => self.copied.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for Splicer {
    fn offset(&self) -> usize {
        self.spliced_len + self.copied.len()
    }

    fn seek(&mut self, offset: usize) {
        let at = self.copied_offset(offset);
        self.copied.resize(at, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = self.copied_offset(r.start);
        &mut self.copied[start..start + r.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::frame::{encode_request, encode_response};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, FetchResponse, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    fn records(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| seed.wrapping_add(i as u8))
                .collect::<Vec<u8>>(),
        )
    }

    /// Every Produce version: the spliced body is byte for byte what the plain encoder gives,
    /// and the large record sets are passed by reference (their own pieces).
    #[test]
    fn a_spliced_produce_request_is_the_plain_encoding() {
        let big = [records(SPLICE_MIN, 1), records(3 * SPLICE_MIN + 7, 2)];
        let small = records(100, 3);
        for version in 3..=13i16 {
            let mut tagged = std::collections::BTreeMap::new();
            tagged.insert(7, Bytes::from_static(b"x"));
            let topic = TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(big[0].clone())),
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(small.clone()))
                        .with_unknown_tagged_fields(if version >= 9 {
                            tagged.clone()
                        } else {
                            Default::default()
                        }),
                    PartitionProduceData::default().with_index(2),
                    PartitionProduceData::default()
                        .with_index(3)
                        .with_records(Some(big[1].clone())),
                ]);
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![topic]);
            let header = RequestHeader::default()
                .with_request_api_key(ApiKey::Produce as i16)
                .with_request_api_version(version)
                .with_correlation_id(42);
            let plain = encode_request(ApiKey::Produce, &header, &request).unwrap();
            let spliced = encode_spliced(
                &header,
                ApiKey::Produce.request_header_version(version),
                &request,
                version,
                big.to_vec(),
                || "test".into(),
            )
            .unwrap();
            assert_eq!(spliced.to_bytes(), plain, "v{version}");
            assert_eq!(spliced.len(), plain.len());
            for b in &big {
                assert!(
                    spliced.parts().iter().any(|p| p.as_ptr() == b.as_ptr()),
                    "v{version}: a record set was copied"
                );
            }
        }
    }

    /// Fetch responses too, including a record set named twice and one not in the body.
    #[test]
    fn a_spliced_fetch_response_is_the_plain_encoding() {
        let set = records(2 * SPLICE_MIN, 9);
        let absent = records(SPLICE_MIN, 4);
        for version in [4i16, 11, 12, 16, 17] {
            let response =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(0)
                            .with_records(Some(set.clone())),
                        PartitionData::default()
                            .with_partition_index(1)
                            .with_records(Some(set.clone())),
                    ])]);
            let header = ResponseHeader::default().with_correlation_id(5);
            let plain = encode_response(ApiKey::Fetch, version, &header, &response).unwrap();
            let spliced = encode_spliced(
                &header,
                ApiKey::Fetch.response_header_version(version),
                &response,
                version,
                vec![absent.clone(), set.clone(), set.clone()],
                || "test".into(),
            )
            .unwrap();
            assert_eq!(spliced.to_bytes(), plain, "v{version}");
        }
    }

    #[test]
    fn a_body_of_one_piece_is_not_copied() {
        let b = records(10, 0);
        let body = FrameBody::from(b.clone());
        assert_eq!(body.to_bytes().as_ptr(), b.as_ptr());
        assert_eq!(body.parts().len(), 1);
    }
}
