//! The record stage: what happens to record batches in Produce requests and Fetch responses.
//!
//! Every partition of both directions gets exactly one [`Outcome`]: [`Outcome::Unchanged`] (the
//! bytes go on as they came), [`Outcome::Rewritten`] (encrypted, decrypted or re-encoded bytes
//! replace them) or [`Outcome::Refused`] (a [`ProxyError`] with its Kafka error code and message).
//! Each direction applies outcomes in one function — `apply_produce_outcome` (produce.rs) is the
//! only place a produce partition is put back into the request for the broker,
//! `apply_fetch_outcome` (fetch.rs) the only place a fetch partition is put back for the client —
//! so "no path forwards plaintext that was meant to be encrypted" is checked by reading how
//! outcomes are made in `produce_records`.
//!
//! - With `records: passthrough` and no encryption, batches are never decoded.
//! - With `records: reencode` every magic v2 batch goes through decode → encode.
//! - With encryption, produce batches of encrypted topics are encrypted, every produced record
//!   carrying a client-supplied `kapsule.enc` header is refused unless its topic accepts
//!   pre-encrypted records, and fetched batches of topics a rule or binding covers are decrypted.
//!
//! Work is batch by batch (decode, transform, encode, drop) and the bytes decompressed for one
//! Produce request or Fetch response are capped by a [`Budget`].

mod fetch;
mod log;
mod produce;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    ShareFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::crypto::record::RecordEncryptor;
use crate::error::{ErrorSource, ProxyError, Reason};
use crate::kafka::compression::Compression;
use crate::kafka::frame::{
    encode_request_spliced, encode_response, encode_response_spliced, FrameBody,
    DEFAULT_MAX_FRAME_BYTES,
};
use crate::kafka::records::{split_record_set, CodecError, RawBatch, RecordBatch, RecordSetEntry};
use crate::policy::PolicyRegistry;
use crate::proxy::budget::{
    BudgetRefusal, Charge, MemoryBudget, Use, OUTPUT_COPIES, WORKING_COPIES,
};
use crate::proxy::config::RecordsMode;
pub use crate::proxy::config::DEFAULT_MAX_DECOMPRESSED_BYTES_PER_BATCH;
use crate::proxy::session::ClientSession;
use crate::proxy::topic_ids::TopicIds;

pub use log::RefusalLog;

/// Default cap on the bytes decompressed for one Produce request or Fetch response: twice the
/// default largest frame.
pub const DEFAULT_DECOMPRESSION_BUDGET: usize = 2 * DEFAULT_MAX_FRAME_BYTES;

/// What the stage decided for one partition's record set, in either direction.
#[derive(Debug)]
pub enum Outcome {
    /// Forward the record set exactly as it came.
    Unchanged,
    /// Forward these bytes instead (encrypted, decrypted or re-encoded).
    Rewritten(Bytes),
    /// Forward nothing of this partition; answer it with this error.
    Refused(ProxyError),
}

/// Partitions of a Produce request the proxy refused, answered with these errors.
#[derive(Debug, Default)]
pub struct ProducePatch {
    refused: Vec<RefusedPartition>,
}

#[derive(Debug)]
struct RefusedPartition {
    topic: TopicRef,
    partition: i32,
    error: ProxyError,
}

/// A topic as a Produce request names it: by name before v13, by id from v13 (the other field
/// is empty). Responses must name it the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRef {
    /// The topic's name (empty from Produce v13).
    pub name: TopicName,
    /// The topic's id (nil before Produce v13).
    pub id: Uuid,
}

impl ProducePatch {
    /// Records that `topic`/`partition` was refused with `error`.
    pub fn refuse(&mut self, topic: TopicRef, partition: i32, error: ProxyError) {
        self.refused.push(RefusedPartition {
            topic,
            partition,
            error,
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
                .with_error_code(r.error.code())
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1)
                .with_error_message(Some(StrBytes::from_string(format!(
                    "kapsule: {}",
                    r.error.message()
                ))))
                .with_record_errors(
                    r.error
                        .records()
                        .iter()
                        .map(|e| {
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(i32::try_from(e.index).unwrap_or(i32::MAX))
                                .with_batch_index_error_message(Some(StrBytes::from_string(
                                    format!("kapsule: record {}: {}", e.index, e.message),
                                )))
                        })
                        .collect(),
                );
            match response
                .responses
                .iter_mut()
                .find(|t| t.name == r.topic.name && t.topic_id == r.topic.id)
            {
                Some(t) => t.partition_responses.push(partition),
                None => response.responses.push(
                    TopicProduceResponse::default()
                        .with_name(r.topic.name)
                        .with_topic_id(r.topic.id)
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

/// A Produce request on its way to the broker. Only the record stage makes one
/// ([`RecordStage::stage_produce`], or [`RecordStage::pass_produce`] when it has nothing to do
/// with produced records), so no Produce can leave Kapsule without having passed it.
#[derive(Debug)]
pub struct StagedProduce {
    frame: FrameBody,
    /// The memory budget's bytes for the frame's re-encoded records, held until it is written.
    _memory: Charge,
}

impl StagedProduce {
    /// The request frame body to write to the broker (its large record sets are pieces of their
    /// own, not copied into one buffer).
    pub fn frame(&self) -> &FrameBody {
        &self.frame
    }
}

/// A Produce request after the record stage: what goes to the broker (nothing when every
/// partition was refused) and the partitions answered by Kapsule.
#[derive(Debug)]
pub struct ProduceStaged {
    /// The request for the broker, if any partition is left.
    pub forward: Option<StagedProduce>,
    /// Partitions refused by the stage.
    pub patch: ProducePatch,
}

/// A Fetch response on its way to the client. Only the record stage makes one
/// ([`RecordStage::stage_fetch`], or [`RecordStage::pass_fetch`] when it has nothing to do with
/// fetched records), so no fetched record reaches a client without having passed it.
#[derive(Debug)]
pub struct StagedFetch {
    frame: FrameBody,
}

impl StagedFetch {
    /// The response frame body to write to the client (its large record sets are pieces of
    /// their own, not copied into one buffer).
    pub fn into_frame(self) -> FrameBody {
        self.frame
    }

    /// A Fetch response Kapsule makes itself to refuse a request (a version, a fetch-session
    /// error): no partition, so no records, and no stage to pass.
    pub fn refusal(
        version: i16,
        header: &ResponseHeader,
        response: FetchResponse,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            response.responses.is_empty(),
            "internal error: a refusal must not carry partitions"
        );
        Ok(Self {
            frame: encode_response(ApiKey::Fetch, version, header, &response)?.into(),
        })
    }

    /// The same response answering the request with `correlation_id` (its header's first
    /// field), the records untouched.
    pub fn answering(self, correlation_id: i32) -> Self {
        Self {
            frame: self.frame.with_correlation_id(correlation_id),
        }
    }
}

/// The record stage was asked to pass records untouched while it is configured to transform
/// them: a bug in the caller, refused rather than forwarding untransformed records.
#[derive(Debug, thiserror::Error)]
#[error("internal error: {0} records were about to bypass the record stage; refused")]
pub struct BypassRefused(&'static str);

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
    budget: usize,
    per_batch: usize,
    memory: Arc<MemoryBudget>,
    log: RefusalLog,
    topic_ids: Arc<TopicIds>,
}

impl RecordStage {
    /// A stage for the given records mode, with encryption when configured, and the default
    /// decompression budget ([`DEFAULT_DECOMPRESSION_BUDGET`]).
    pub fn new(mode: RecordsMode, encryption: Option<Encryption>) -> Self {
        Self {
            mode,
            encryption,
            budget: DEFAULT_DECOMPRESSION_BUDGET,
            per_batch: DEFAULT_MAX_DECOMPRESSED_BYTES_PER_BATCH,
            memory: Arc::new(MemoryBudget::default()),
            log: RefusalLog::default(),
            topic_ids: Arc::default(),
        }
    }

    /// The topic id → name table learned from the broker's Metadata responses, which resolves
    /// topic-id versions of Produce and Fetch.
    pub fn topic_ids(&self) -> &TopicIds {
        &self.topic_ids
    }

    /// Caps the bytes one record batch decompresses to at `bytes`.
    pub fn with_batch_decompression_limit(mut self, bytes: usize) -> Self {
        self.per_batch = bytes;
        self
    }

    /// Charges decompression (and, through [`RecordStage::memory`], unwritten responses) to
    /// this process-wide budget instead of a default one of its own.
    pub fn with_memory_budget(mut self, memory: Arc<MemoryBudget>) -> Self {
        self.memory = memory;
        self
    }

    /// The process-wide memory budget.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    /// A fresh decompression budget for one Produce request or Fetch response.
    fn request_budget(&self, what: Use) -> Budget {
        Budget::new(self.budget, self.per_batch, self.memory.clone(), what)
    }

    /// Caps the bytes decompressed for one Produce request or one Fetch response (summed over
    /// all its batches) at `bytes`.
    pub fn with_decompression_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// The rate-limited refusal log, shared with connection-level refusals.
    pub fn refusal_log(&self) -> &RefusalLog {
        &self.log
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

    /// The name of a topic as a Produce request or Fetch response names it: its own name before
    /// v13, the name the broker gave its id in Metadata from v13. An id no Metadata response
    /// named is UNKNOWN_TOPIC_ID (retriable: the client refreshes its metadata and retries).
    pub fn topic_name(&self, name: &TopicName, id: Uuid) -> Result<TopicName, ProxyError> {
        if !name.is_empty() || id.is_nil() {
            return Ok(name.clone());
        }
        self.topic_ids
            .name(id)
            .ok_or_else(|| self.unknown_topic_id(id))
    }

    /// The error for a topic id Kapsule cannot name (UNKNOWN_TOPIC_ID, retriable).
    fn unknown_topic_id(&self, id: Uuid) -> ProxyError {
        ProxyError::new(
            ErrorSource::Client,
            ResponseError::UnknownTopicId,
            Reason::UnknownTopicId,
            format!(
                "topic id {id} is not known to Kapsule yet; refresh metadata (through Kapsule) \
                 and retry"
            ),
        )
    }

    /// Runs a decoded Produce request through the stage ([`RecordStage::on_produce`]) and
    /// encodes what is left of it for the broker.
    pub async fn stage_produce(
        &self,
        header: &RequestHeader,
        mut request: ProduceRequest,
        session: &ClientSession,
    ) -> anyhow::Result<ProduceStaged> {
        let (patch, mut output) = self.on_produce_charged(&mut request, session).await;
        let forward = if request.topic_data.is_empty() {
            None
        } else {
            let records = request
                .topic_data
                .iter()
                .flat_map(|t| &t.partition_data)
                .filter_map(|p| p.records.as_ref());
            let frame = encode_request_spliced(ApiKey::Produce, header, &request, records)?;
            // The records are in the frame now: only the frame's share stays charged.
            drop(request);
            let memory = output.split_off(frame.len());
            Some(StagedProduce {
                frame,
                _memory: memory,
            })
        };
        Ok(ProduceStaged { forward, patch })
    }

    /// A Produce request forwarded as it came: allowed only when the stage has nothing to do
    /// with produced records (passthrough mode without encryption).
    pub fn pass_produce(&self, frame: Bytes) -> Result<StagedProduce, BypassRefused> {
        if self.transforms_produce() {
            return Err(BypassRefused("produced"));
        }
        Ok(StagedProduce {
            frame: frame.into(),
            _memory: Charge::default(),
        })
    }

    /// Runs a decoded Fetch response through the stage ([`RecordStage::on_fetch`]) and encodes
    /// it for the client.
    pub async fn stage_fetch(
        &self,
        version: i16,
        header: &ResponseHeader,
        mut response: FetchResponse,
        session: &ClientSession,
    ) -> anyhow::Result<StagedFetch> {
        // The decrypted records' charge is given back once they are copied into the frame (which
        // the connection's response charge covers, as it covered the broker's frame).
        let _output = if self.transforms_fetch() {
            self.on_fetch_charged(&mut response, session).await?
        } else {
            Charge::default()
        };
        let records = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.records.as_ref());
        Ok(StagedFetch {
            frame: encode_response_spliced(ApiKey::Fetch, version, header, &response, records)?,
        })
    }

    /// Runs a decoded ShareFetch response (KIP-932 share groups) through the stage
    /// ([`RecordStage::on_share_fetch_charged`]) when it transforms fetched records, and encodes
    /// it for the client.
    pub async fn stage_share_fetch(
        &self,
        version: i16,
        header: &ResponseHeader,
        mut response: ShareFetchResponse,
        session: &ClientSession,
    ) -> anyhow::Result<StagedFetch> {
        let _output = if self.transforms_fetch() {
            self.on_share_fetch_charged(&mut response, session).await?
        } else {
            Charge::default()
        };
        let records = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .filter_map(|p| p.records.as_ref());
        Ok(StagedFetch {
            frame: encode_response_spliced(
                ApiKey::ShareFetch,
                version,
                header,
                &response,
                records,
            )?,
        })
    }

    /// A Fetch response relayed as the broker sent it: allowed only when the stage has nothing
    /// to do with fetched records (passthrough mode without encryption).
    pub fn pass_fetch(&self, frame: Bytes) -> Result<StagedFetch, BypassRefused> {
        if self.transforms_fetch() {
            return Err(BypassRefused("fetched"));
        }
        Ok(StagedFetch {
            frame: frame.into(),
        })
    }
}

/// The bytes one Produce request or Fetch response may still decompress, and its share of the
/// process-wide memory budget.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    per_batch: usize,
    memory: Arc<MemoryBudget>,
    what: Use,
    /// The request's re-encoded records, charged [`OUTPUT_COPIES`] times their size: held
    /// until the frame carrying them is written (produce) or built (fetch).
    output: Charge,
}

/// A decoded batch and the memory-budget bytes charged for it: given back when it is dropped,
/// except what [`Budget::keep_output`] keeps for its re-encoded bytes.
#[derive(Debug)]
pub struct Decoded {
    batch: RecordBatch,
    charge: Charge,
}

impl std::ops::Deref for Decoded {
    type Target = RecordBatch;
    fn deref(&self) -> &RecordBatch {
        &self.batch
    }
}

impl std::ops::DerefMut for Decoded {
    fn deref_mut(&mut self) -> &mut RecordBatch {
        &mut self.batch
    }
}

/// First guess of a compressed batch's decompressed size: this many times its compressed size
/// (at least [`MIN_ATTEMPT`]); a batch that decompresses to more is tried again with this
/// factor more, so a bomb costs a few attempts and never more than its charge.
const ATTEMPT_GROWTH: usize = 4;
const MIN_ATTEMPT: usize = 64 * 1024;

impl Budget {
    /// A fresh budget of `limit` bytes for one request, each batch decompressing to at most
    /// `per_batch` bytes, charged to `memory` as `what`.
    pub fn new(limit: usize, per_batch: usize, memory: Arc<MemoryBudget>, what: Use) -> Self {
        Self {
            limit,
            used: 0,
            per_batch,
            memory,
            what,
            output: Charge::default(),
        }
    }

    /// Bytes decompressed so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Decodes `raw`, charging its decompressed records section to the request's budget and,
    /// while the batch is alive, [`WORKING_COPIES`] times its bytes to the process-wide memory
    /// budget (an uncompressed batch: its size on the wire, for its transformed and re-encoded
    /// copies). Fails with RECORD_LIST_TOO_LARGE (from the client) once the request as a whole
    /// would pass its limit or the batch its per-batch limit, or when the batch and what the
    /// request already holds could never fit the memory budget together; with
    /// REQUEST_TIMED_OUT (retriable, [`Reason::MemoryBusy`]) when other requests held the memory
    /// budget for the whole wait.
    ///
    /// A batch whose codec states its decompressed size (zstd with content sizes, snappy) is
    /// charged exactly that and refused unopened when it is over a limit; others are tried with
    /// growing limits, each charged before it is tried. The decompressor stops at the bytes
    /// charged, so memory never grows past the charge.
    pub async fn decode(&mut self, raw: &RawBatch) -> Result<Decoded, ProxyError> {
        if matches!(raw.compression(), Ok(Compression::None) | Err(_)) {
            // Nothing to decompress: records are slices of the frame; their transformed and
            // re-encoded copies are charged.
            let charge = self
                .charge(raw.bytes().len().saturating_mul(WORKING_COPIES))
                .await?;
            return Ok(Decoded {
                batch: raw.decode_with_limit(0)?,
                charge,
            });
        }
        let remaining = self.limit.saturating_sub(self.used);
        let cap = remaining.min(self.per_batch);
        let declared = raw.declared_records_size();
        let mut attempt = match declared {
            Some(size) if size > cap => return Err(self.too_large(cap, remaining)),
            Some(size) => size,
            None => raw
                .bytes()
                .len()
                .saturating_mul(ATTEMPT_GROWTH)
                .max(MIN_ATTEMPT)
                .min(cap),
        };
        loop {
            let charge = self.charge(attempt.saturating_mul(WORKING_COPIES)).await?;
            match raw.decode_with_limit(attempt) {
                Ok(batch) => {
                    self.used += decoded_size(&batch);
                    return Ok(Decoded { batch, charge });
                }
                Err(CodecError::DecompressedTooLarge { .. }) if attempt < cap => {
                    // Give the charge back before asking for more: no request holds bytes
                    // while it waits for others.
                    drop(charge);
                    attempt = attempt.saturating_mul(ATTEMPT_GROWTH).min(cap);
                }
                Err(CodecError::DecompressedTooLarge { .. }) => {
                    return Err(self.too_large(cap, remaining))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Keeps, once `batch` has been re-encoded into `encoded` bytes of the request's records,
    /// [`OUTPUT_COPIES`] times those bytes charged until the frame carrying them is done
    /// (charging more when the batch's own charge is smaller); the rest of the batch's charge is
    /// given back with it. Fails as [`Budget::decode`] does when the memory budget refuses.
    pub async fn keep_output(&mut self, batch: Decoded, encoded: usize) -> Result<(), ProxyError> {
        let Decoded { batch, mut charge } = batch;
        drop(batch);
        let want = encoded.saturating_mul(OUTPUT_COPIES);
        let kept = charge.split_off(want);
        drop(charge);
        let short = want.saturating_sub(kept.bytes());
        self.output.merge(kept);
        if short > 0 {
            let more = self.charge(short).await?;
            self.output.merge(more);
        }
        Ok(())
    }

    /// Charges `bytes` copied as they are (a legacy, control or untouched batch) into the
    /// request's re-encoded records, [`OUTPUT_COPIES`] times, like [`Budget::keep_output`].
    pub async fn hold_copy(&mut self, bytes: usize) -> Result<(), ProxyError> {
        let more = self.charge(bytes.saturating_mul(OUTPUT_COPIES)).await?;
        self.output.merge(more);
        Ok(())
    }

    /// The charge for the request's re-encoded records ([`Budget::keep_output`]).
    pub fn into_output(self) -> Charge {
        self.output
    }

    /// Takes `bytes` from the memory budget. What the request already holds counts: when the
    /// two together exceed the whole budget, waiting cannot help and the charge is refused at
    /// once as too large.
    async fn charge(&self, bytes: usize) -> Result<Charge, ProxyError> {
        let held = self.output.bytes();
        if held.saturating_add(bytes) > self.memory.limit() {
            return Err(self.refused(BudgetRefusal::NeverFits {
                wanted: held.saturating_add(bytes),
                limit: self.memory.limit(),
            }));
        }
        self.memory
            .charge(bytes, self.what)
            .await
            .map_err(|e| self.refused(e))
    }

    /// RECORD_LIST_TOO_LARGE for a batch over `cap`, the smaller of the per-batch limit and
    /// the `remaining` per-request budget.
    fn too_large(&mut self, cap: usize, remaining: usize) -> ProxyError {
        if cap == remaining {
            self.used = self.limit;
            ProxyError::client(
                ResponseError::RecordListTooLarge,
                Reason::TooLarge,
                format!(
                    "the batches of this request decompress to more than {} bytes in total (the \
                     per-request decompression budget, proxy.max_decompressed_bytes_per_request); \
                     send smaller requests",
                    self.limit
                ),
            )
        } else {
            ProxyError::client(
                ResponseError::RecordListTooLarge,
                Reason::TooLarge,
                format!(
                    "a record batch decompresses to more than {} bytes \
                     (proxy.max_decompressed_bytes_per_batch); send smaller batches",
                    self.per_batch
                ),
            )
        }
    }

    fn refused(&self, e: BudgetRefusal) -> ProxyError {
        match e {
            BudgetRefusal::NeverFits { .. } => ProxyError::client(
                ResponseError::RecordListTooLarge,
                Reason::TooLarge,
                format!(
                    "a record batch is too large to transform: {e}; send smaller batches or \
                     requests"
                ),
            ),
            BudgetRefusal::Busy { .. } => ProxyError::new(
                ErrorSource::Internal,
                ResponseError::RequestTimedOut,
                Reason::MemoryBusy,
                format!("not processed: {e}; safe to retry"),
            ),
        }
    }
}

/// Size of a decoded batch's records section as it was on the wire (a close lower bound: record
/// fields plus the smallest per-record and per-header overhead).
fn decoded_size(batch: &RecordBatch) -> usize {
    batch
        .records
        .iter()
        .map(|r| {
            7 + r.key.as_ref().map_or(0, Bytes::len)
                + r.value.as_ref().map_or(0, Bytes::len)
                + r.headers
                    .iter()
                    .map(|h| 2 + h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                    .sum::<usize>()
        })
        .sum()
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
