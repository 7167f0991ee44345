//! Whole-message decoding and encoding with kafka-protocol, for the stages that must read or
//! change a message (Produce requests, Fetch and Metadata-like responses). Encoded frames go into
//! pooled buffers sized up front.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::body::{encode_spliced, frame_size, FrameBody, SPLICE_MIN};
use super::pool;

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

/// [`encode_request`] for a request carrying `record_sets` (its partitions' records, in order):
/// those of at least [`SPLICE_MIN`] bytes stay where they are, pieces of the returned body, and
/// are not copied into a frame buffer.
pub fn encode_request_spliced<'r, T: Encodable>(
    api: ApiKey,
    header: &RequestHeader,
    body: &T,
    record_sets: impl IntoIterator<Item = &'r Bytes>,
) -> anyhow::Result<FrameBody> {
    let version = header.request_api_version;
    let header_version = api.request_header_version(version);
    encode_spliced(
        header,
        header_version,
        body,
        version,
        large(record_sets),
        || format!("{api:?} v{version} request"),
    )
}

/// [`encode_response`] for a response carrying `record_sets`, as [`encode_request_spliced`].
pub fn encode_response_spliced<'r, T: Encodable>(
    api: ApiKey,
    version: i16,
    header: &ResponseHeader,
    body: &T,
    record_sets: impl IntoIterator<Item = &'r Bytes>,
) -> anyhow::Result<FrameBody> {
    let header_version = api.response_header_version(version);
    encode_spliced(
        header,
        header_version,
        body,
        version,
        large(record_sets),
        || format!("{api:?} v{version} response"),
    )
}

fn large<'r>(record_sets: impl IntoIterator<Item = &'r Bytes>) -> Vec<Bytes> {
    record_sets
        .into_iter()
        .filter(|b| b.len() >= SPLICE_MIN)
        .cloned()
        .collect()
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
    let size = frame_size(header, header_version, body, version, &what)?;
    let mut out = pool::Buffer::for_size(size);
    header
        .encode(out.vec(), header_version)
        .with_context(|| format!("encoding {} header", what()))?;
    body.encode(out.vec(), version)
        .with_context(|| format!("encoding {} body", what()))?;
    Ok(out.freeze())
}
