//! The record stage: what happens to record batches in Produce requests and Fetch responses.
//!
//! With `records: passthrough` and no encryption, batches are never decoded. With
//! `records: reencode` every magic v2 batch goes through decode → encode (exercising the codec end
//! to end). The encryption stage plugs in here too.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::warn;

use crate::config::RecordsMode;
use crate::kafka::records::{split_record_set, CodecError, RecordSetEntry};

/// Kafka error code CORRUPT_MESSAGE: a batch failed to decode or its CRC did not match.
pub const CORRUPT_MESSAGE: i16 = 2;

/// Partitions of a Produce request the proxy refused, answered with these errors.
#[derive(Debug, Default)]
pub struct ProducePatch {
    refused: Vec<RefusedPartition>,
}

#[derive(Debug)]
struct RefusedPartition {
    topic: TopicName,
    partition: i32,
    error_code: i16,
    message: String,
}

impl ProducePatch {
    /// Records that `topic`/`partition` was refused with `error_code` and a message for the client.
    pub fn refuse(&mut self, topic: TopicName, partition: i32, error_code: i16, message: String) {
        self.refused.push(RefusedPartition {
            topic,
            partition,
            error_code,
            message,
        });
    }

    /// True when nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
    }

    /// Adds the refused partitions to a broker response.
    pub fn merge_into(self, response: &mut ProduceResponse) {
        for r in self.refused {
            let partition = PartitionProduceResponse::default()
                .with_index(r.partition)
                .with_error_code(r.error_code)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1)
                .with_error_message(Some(StrBytes::from_string(r.message)));
            match response.responses.iter_mut().find(|t| t.name == r.topic) {
                Some(t) => t.partition_responses.push(partition),
                None => response.responses.push(
                    TopicProduceResponse::default()
                        .with_name(r.topic)
                        .with_partition_responses(vec![partition]),
                ),
            }
        }
    }

    /// A complete response made of the refused partitions only.
    pub fn into_response(self) -> ProduceResponse {
        let mut response = ProduceResponse::default();
        self.merge_into(&mut response);
        response
    }
}

/// What the proxy does to record batches.
pub struct RecordStage {
    mode: RecordsMode,
}

impl RecordStage {
    /// A stage for the given records mode (no encryption).
    pub fn new(mode: RecordsMode) -> Self {
        Self { mode }
    }

    /// Whether Produce requests must be decoded.
    pub fn transforms_produce(&self) -> bool {
        self.mode == RecordsMode::Reencode
    }

    /// Whether Fetch responses must be decoded.
    pub fn transforms_fetch(&self) -> bool {
        self.mode == RecordsMode::Reencode
    }

    /// Transforms every partition's records; partitions that cannot be processed are removed from
    /// the request and returned in the patch, so they are answered with an error and never
    /// forwarded.
    pub async fn on_produce(&self, request: &mut ProduceRequest, peer: SocketAddr) -> ProducePatch {
        let mut patch = ProducePatch::default();
        for topic in &mut request.topic_data {
            let name = topic.name.clone();
            topic.partition_data.retain_mut(|p| {
                let Some(records) = &p.records else { return true };
                match reencode_record_set(records, RecordSetOrigin::Produce) {
                    Ok(out) => {
                        p.records = Some(out);
                        true
                    }
                    Err(e) => {
                        warn!(%peer, topic = %name.as_str(), partition = p.index, error = %e, "refusing malformed record batch");
                        patch.refuse(name.clone(), p.index, CORRUPT_MESSAGE, format!("kapsule: {e}"));
                        false
                    }
                }
            });
        }
        request.topic_data.retain(|t| !t.partition_data.is_empty());
        patch
    }

    /// Transforms every partition's records in a Fetch response.
    pub async fn on_fetch(
        &self,
        response: &mut FetchResponse,
        peer: SocketAddr,
    ) -> anyhow::Result<()> {
        if self.mode != RecordsMode::Reencode {
            return Ok(());
        }
        for topic in &mut response.responses {
            for p in &mut topic.partitions {
                let Some(records) = &p.records else { continue };
                match reencode_record_set(records, RecordSetOrigin::Fetch) {
                    Ok(out) => p.records = Some(out),
                    Err(e) => {
                        // The broker's own bytes: forward them as stored, the client will judge.
                        warn!(%peer, topic = %topic.topic.as_str(), partition = p.partition_index, error = %e, "fetched batch does not decode; forwarding as stored");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where a record set comes from: a partial trailing batch is legal only in a Fetch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSetOrigin {
    /// A Produce request from a client.
    Produce,
    /// A Fetch response from a broker.
    Fetch,
}

/// Decodes and re-encodes every magic v2 data batch; other entries (v0/v1 messages, control
/// batches, and in Fetch responses a trailing partial batch) are copied byte-for-byte.
pub fn reencode_record_set(records: &Bytes, origin: RecordSetOrigin) -> Result<Bytes, CodecError> {
    let mut out = BytesMut::with_capacity(records.len() + 64);
    for entry in split_record_set(records) {
        match entry? {
            RecordSetEntry::Partial(bytes) => {
                if origin == RecordSetOrigin::Produce {
                    return Err(CodecError::Truncated {
                        what: "record batch in Produce request",
                        needed: 0,
                        available: bytes.len(),
                    });
                }
                out.extend_from_slice(&bytes);
            }
            RecordSetEntry::Batch(raw) => {
                if raw.is_legacy() || raw.is_control() {
                    out.extend_from_slice(raw.bytes());
                } else {
                    raw.decode()?.encode(&mut out)?;
                }
            }
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::records::{Record, RecordBatch, RecordHeader};

    fn batch() -> RecordBatch {
        RecordBatch {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            last_offset_delta: 1,
            base_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_005,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: (0..2)
                .map(|i| Record {
                    attributes: 0,
                    timestamp_delta: i * 5,
                    offset_delta: i as i32,
                    key: None,
                    value: Some(Bytes::from(format!("value-{i}"))),
                    headers: vec![
                        RecordHeader {
                            key: Bytes::from_static(b"h"),
                            value: None,
                        },
                        RecordHeader {
                            key: Bytes::from_static(b"h"),
                            value: Some(Bytes::from_static(b"2")),
                        },
                    ],
                })
                .collect(),
        }
    }

    #[test]
    fn reencode_is_byte_identical_for_uncompressed_batches() {
        let mut set = BytesMut::new();
        batch().encode(&mut set).unwrap();
        batch().encode(&mut set).unwrap();
        let set = set.freeze();
        assert_eq!(
            reencode_record_set(&set, RecordSetOrigin::Produce).unwrap(),
            set
        );
    }

    #[test]
    fn trailing_partial_batch_is_kept_in_fetch_and_refused_in_produce() {
        let mut set = BytesMut::new();
        batch().encode(&mut set).unwrap();
        let full = set.len();
        batch().encode(&mut set).unwrap();
        let truncated = set.freeze().slice(..full + 20);
        assert_eq!(
            reencode_record_set(&truncated, RecordSetOrigin::Fetch).unwrap(),
            truncated
        );
        assert!(reencode_record_set(&truncated, RecordSetOrigin::Produce).is_err());
    }

    #[test]
    fn corrupted_batch_is_refused() {
        let mut set = BytesMut::new();
        batch().encode(&mut set).unwrap();
        let mut bytes = set.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(reencode_record_set(&Bytes::from(bytes), RecordSetOrigin::Produce).is_err());
    }
}
