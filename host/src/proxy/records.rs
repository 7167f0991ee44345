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

use std::sync::Arc;

use crate::config::RecordsMode;
use crate::crypto::record::{
    batch_has_encrypted_records, may_contain_encrypted, DecryptOptions, FailureMode,
    RecordEncryptor, POLICY_VIOLATION,
};
use crate::kafka::compression::Compression;
use crate::kafka::records::{split_record_set, CodecError, RecordBatch, RecordSetEntry};
use crate::plan::{RecordDecision, TopicPlan};
use crate::policy::config::DecryptFailure;
use crate::policy::PolicyRegistry;

/// Kafka error code CORRUPT_MESSAGE: a batch failed to decode or its CRC did not match.
pub const CORRUPT_MESSAGE: i16 = 2;
/// Kafka error code UNSUPPORTED_FOR_MESSAGE_FORMAT: magic v0/v1 records on an encrypted topic.
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;

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

/// The encryption stage: where plans come from and who applies them.
#[derive(Clone)]
pub struct Encryption {
    /// Encrypts and decrypts batches (owns the DEK cache and KMS client).
    pub encryptor: Arc<RecordEncryptor>,
    /// Built-in rules and Wasm policy bindings.
    pub policy: PolicyRegistry,
}

/// What the proxy does to record batches.
pub struct RecordStage {
    mode: RecordsMode,
    encryption: Option<Encryption>,
}

impl RecordStage {
    /// A stage for the given records mode, with encryption when configured.
    pub fn new(mode: RecordsMode, encryption: Option<Encryption>) -> Self {
        Self { mode, encryption }
    }

    /// The encryption stage, when configured.
    pub fn encryption(&self) -> Option<&Encryption> {
        self.encryption.as_ref()
    }

    /// Whether Produce requests must be decoded.
    pub fn transforms_produce(&self) -> bool {
        self.mode == RecordsMode::Reencode || self.encryption.is_some()
    }

    /// Whether Fetch responses must be decoded.
    pub fn transforms_fetch(&self) -> bool {
        self.mode == RecordsMode::Reencode || self.encryption.is_some()
    }

    /// Transforms every partition's records; partitions that cannot be processed are removed from
    /// the request and returned in the patch, so they are answered with an error and never
    /// forwarded.
    pub async fn on_produce(&self, request: &mut ProduceRequest, peer: SocketAddr) -> ProducePatch {
        let mut patch = ProducePatch::default();
        for topic in &mut request.topic_data {
            let name = topic.name.clone();
            let plan = match &self.encryption {
                None => TopicPlan::PassAll,
                Some(enc) => match enc.policy.topic_plan_async(name.as_str()).await {
                    Ok(plan) => plan,
                    Err(e) => {
                        warn!(%peer, topic = %name.as_str(), error = %e, "policy failed; refusing the topic's batches");
                        for p in &topic.partition_data {
                            patch.refuse(
                                name.clone(),
                                p.index,
                                e.kafka_error_code(),
                                format!("kapsule: {e}"),
                            );
                        }
                        topic.partition_data.clear();
                        continue;
                    }
                },
            };
            let mut kept = Vec::with_capacity(topic.partition_data.len());
            for mut p in std::mem::take(&mut topic.partition_data) {
                let Some(records) = p.records.take() else {
                    kept.push(p);
                    continue;
                };
                match self.produce_partition(name.as_str(), &plan, &records).await {
                    Ok(out) => {
                        p.records = Some(out);
                        kept.push(p);
                    }
                    Err(refusal) => {
                        warn!(%peer, topic = %name.as_str(), partition = p.index, code = refusal.code, reason = %refusal.message, "refusing produce batch");
                        patch.refuse(
                            name.clone(),
                            p.index,
                            refusal.code,
                            format!("kapsule: {}", refusal.message),
                        );
                    }
                }
            }
            topic.partition_data = kept;
        }
        request.topic_data.retain(|t| !t.partition_data.is_empty());
        patch
    }

    async fn produce_partition(
        &self,
        topic: &str,
        plan: &TopicPlan,
        records: &Bytes,
    ) -> Result<Bytes, Refusal> {
        let encryption = match (plan, &self.encryption) {
            (TopicPlan::RejectAll(message), _) => {
                return Err(Refusal {
                    code: POLICY_VIOLATION,
                    message: message.clone(),
                })
            }
            (TopicPlan::PassAll, _) | (_, None) => {
                return match self.mode {
                    RecordsMode::Passthrough => Ok(records.clone()),
                    RecordsMode::Reencode => reencode_record_set(records, RecordSetOrigin::Produce)
                        .map_err(Refusal::corrupt),
                };
            }
            (TopicPlan::EncryptAll(_) | TopicPlan::PerRecord(_), Some(e)) => e,
        };
        let mut out = BytesMut::with_capacity(records.len() + records.len() / 4 + 256);
        for entry in split_record_set(records) {
            let raw = match entry.map_err(Refusal::corrupt)? {
                RecordSetEntry::Partial(_) => {
                    return Err(Refusal {
                        code: CORRUPT_MESSAGE,
                        message: "truncated record batch".into(),
                    })
                }
                RecordSetEntry::Batch(raw) => raw,
            };
            if raw.is_legacy() {
                return Err(Refusal {
                    code: UNSUPPORTED_FOR_MESSAGE_FORMAT,
                    message: format!("topic `{topic}` is encrypted and needs record batches of magic v2; this producer sent magic {}", raw.magic()),
                });
            }
            if raw.is_control() {
                out.extend_from_slice(raw.bytes());
                continue;
            }
            let mut batch = raw.decode().map_err(Refusal::corrupt)?;
            let decisions = match plan {
                TopicPlan::EncryptAll(p) => {
                    vec![RecordDecision::Encrypt(p.clone()); batch.records.len()]
                }
                _ => encryption
                    .policy
                    .decide_async(topic, batch.base_timestamp, &batch.records)
                    .await
                    .map_err(|e| Refusal {
                        code: e.kafka_error_code(),
                        message: e.to_string(),
                    })?,
            };
            encryption
                .encryptor
                .encrypt_batch(topic, &mut batch, &decisions)
                .await
                .map_err(|e| Refusal {
                    code: e.kafka_error_code(),
                    message: e.to_string(),
                })?;
            batch.encode(&mut out).map_err(Refusal::corrupt)?;
        }
        Ok(out.freeze())
    }

    /// Transforms every partition's records in a Fetch response: decrypts encrypted records and,
    /// with `records: reencode`, re-encodes the rest. Batches with no encrypted record are
    /// forwarded byte for byte.
    pub async fn on_fetch(
        &self,
        response: &mut FetchResponse,
        peer: SocketAddr,
    ) -> anyhow::Result<()> {
        for topic in &mut response.responses {
            let name = topic.topic.clone();
            for p in &mut topic.partitions {
                let Some(records) = &p.records else { continue };
                if records.is_empty() {
                    continue;
                }
                let result = match &self.encryption {
                    Some(enc) => decrypt_record_set(enc, self.mode, name.as_str(), records).await,
                    None => reencode_record_set(records, RecordSetOrigin::Fetch).map_err(|e| {
                        // The broker's own bytes: forward them as stored, the client will judge.
                        warn!(%peer, topic = %name.as_str(), partition = p.partition_index, error = %e, "fetched batch does not decode; forwarding as stored");
                        None
                    }),
                };
                match result {
                    Ok(out) => p.records = Some(out),
                    Err(None) => {}
                    Err(Some((code, message))) => {
                        warn!(%peer, topic = %name.as_str(), partition = p.partition_index, code, reason = %message, "fetch partition failed decryption");
                        p.error_code = code;
                        p.records = Some(Bytes::new());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Why a produce partition was refused: the Kafka error code and a message for the client.
#[derive(Debug)]
struct Refusal {
    code: i16,
    message: String,
}

impl Refusal {
    fn corrupt(e: CodecError) -> Self {
        Self {
            code: CORRUPT_MESSAGE,
            message: e.to_string(),
        }
    }
}

/// Decrypts one partition's record set. `Err(None)`: forward as stored; `Err(Some(..))`: fail the
/// partition with that code.
async fn decrypt_record_set(
    enc: &Encryption,
    mode: RecordsMode,
    topic: &str,
    records: &Bytes,
) -> Result<Bytes, Option<(i16, String)>> {
    let settings = enc.policy.decrypt_settings(topic);
    let options = DecryptOptions {
        on_failure: match settings.on_decrypt_failure {
            DecryptFailure::Error => FailureMode::Error,
            DecryptFailure::Ciphertext => FailureMode::Ciphertext,
            DecryptFailure::Skip => FailureMode::Skip,
        },
        require_encrypted: settings.require_encrypted,
    };
    // First pass: find the batches that need decrypting, without touching the others.
    let mut entries: Vec<(RecordSetEntry, Option<RecordBatch>)> = Vec::new();
    for entry in split_record_set(records) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                return Err(Some((
                    CORRUPT_MESSAGE,
                    format!("stored batch does not decode: {e}"),
                )))
            }
        };
        let decoded = match &entry {
            RecordSetEntry::Batch(raw) if !raw.is_legacy() && !raw.is_control() => {
                let needs_look = options.require_encrypted
                    || mode == RecordsMode::Reencode
                    || !matches!(raw.compression(), Ok(Compression::None))
                    || may_contain_encrypted(raw.bytes());
                if needs_look {
                    let batch = raw.decode().map_err(|e| {
                        Some((
                            CORRUPT_MESSAGE,
                            format!("stored batch does not decode: {e}"),
                        ))
                    })?;
                    (options.require_encrypted
                        || mode == RecordsMode::Reencode
                        || batch_has_encrypted_records(&batch))
                    .then_some(batch)
                } else {
                    None
                }
            }
            _ => None,
        };
        entries.push((entry, decoded));
    }
    if entries.iter().all(|(_, d)| d.is_none()) {
        return Err(None);
    }
    // Resolve every EDEK this partition needs at once.
    let batches: Vec<&RecordBatch> = entries.iter().filter_map(|(_, d)| d.as_ref()).collect();
    enc.encryptor.prefetch(topic, &batches).await;
    let mut out = BytesMut::with_capacity(records.len());
    for (entry, decoded) in entries {
        match decoded {
            None => out.extend_from_slice(entry.bytes()),
            Some(mut batch) => {
                enc.encryptor
                    .decrypt_batch(topic, &mut batch, &options)
                    .await
                    .map_err(|e| Some((e.kafka_error_code(), e.to_string())))?;
                batch.encode(&mut out).map_err(|e| {
                    Some((CORRUPT_MESSAGE, format!("re-encoding decrypted batch: {e}")))
                })?;
            }
        }
    }
    Ok(out.freeze())
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
