//! The request and response header fields the relay reads without decoding a message: the
//! fixed request prefix (api key, version, correlation id), a response's correlation id, and a
//! Produce request's `acks` and `timeout_ms`.

use anyhow::{bail, Context};
use bytes::Buf;
use kafka_protocol::messages::ApiKey;

use crate::kafka::reader::{ByteReader, ReadError};

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
