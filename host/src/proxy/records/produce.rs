//! Produce: one [`Outcome`] per partition, applied in `apply_produce_outcome`, the only place a
//! partition's records are put back into the request that goes to the broker.
//!
//! How outcomes are made (`produce_records`):
//! - `reject` plans and policy failures: refused (POLICY_VIOLATION).
//! - Topics the plan encrypts: every v2 data batch is decoded, decided, encrypted and re-encoded;
//!   any failure refuses the whole partition. v0/v1 batches are refused (they cannot carry the
//!   descriptor header); control batches pass (they carry no user data).
//! - Every topic, when encryption is configured: a record carrying `kapsule.enc` is refused
//!   (INVALID_RECORD) unless the topic's rule or binding sets `accept_pre_encrypted`; such
//!   accepted records are never encrypted a second time.
//! - Topics that pass in clear: `Unchanged` in passthrough mode (uncompressed batches without the
//!   header bytes are not even decoded), re-encoded in reencode mode.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::{ProduceRequest, TopicName};

use super::log::Direction;
use super::{Budget, Outcome, ProducePatch, RecordStage, TopicRef};
use crate::crypto::record::{batch_has_encrypted_records, may_contain_encrypted, EncryptError};
use crate::crypto::HEADER_KEY;
use crate::error::{ErrorSource, ProxyError, Reason, RecordError};
use crate::kafka::compression::Compression;
use crate::kafka::frame::pool;
use crate::kafka::records::{split_record_set, RecordSetEntry};
use crate::plan::{RecordDecision, TopicPlan};
use crate::policy::config::DecryptSettings;
use crate::principal::Principal;
use crate::proxy::budget::{Charge, Use};
use crate::proxy::config::RecordsMode;
use crate::proxy::session::ClientSession;

impl RecordStage {
    /// Transforms every partition's records; partitions that cannot be processed are removed from
    /// the request and returned in the patch, so they are answered with an error and never
    /// forwarded.
    pub async fn on_produce(
        &self,
        request: &mut ProduceRequest,
        session: &ClientSession,
    ) -> ProducePatch {
        self.on_produce_charged(request, session).await.0
    }

    /// [`RecordStage::on_produce`], also returning the memory-budget charge for the re-encoded
    /// records now in `request` (to hold until the frame carrying them is written).
    pub(super) async fn on_produce_charged(
        &self,
        request: &mut ProduceRequest,
        session: &ClientSession,
    ) -> (ProducePatch, Charge) {
        let peer = session.peer();
        let mut patch = ProducePatch::default();
        let mut budget = self.request_budget(Use::ProduceDecompression);
        for topic in &mut request.topic_data {
            let topic_ref = TopicRef {
                name: topic.name.clone(),
                id: topic.topic_id,
            };
            let resolved = self.topic_name(&topic_ref.name, topic_ref.id);
            let name = resolved.clone().unwrap_or_else(|_| topic_ref.name.clone());
            let (plan, settings) = match (&self.encryption, resolved) {
                (None, _) => (Ok(TopicPlan::PassAll), DecryptSettings::default()),
                (Some(_), Err(unknown)) => (Err(unknown), DecryptSettings::default()),
                (Some(enc), Ok(_)) => (
                    enc.policy
                        .topic_plan_async(name.as_str(), session.principal())
                        .await
                        .map_err(ProxyError::from),
                    enc.policy.decrypt_settings(name.as_str()),
                ),
            };
            let mut kept = Vec::with_capacity(topic.partition_data.len());
            for p in std::mem::take(&mut topic.partition_data) {
                let outcome = match (&plan, &p.records) {
                    (_, None) => Outcome::Unchanged,
                    (Err(e), Some(_)) => Outcome::Refused(e.clone()),
                    (Ok(plan), Some(records)) => {
                        let principal = session.principal();
                        self.produce_partition(
                            &name,
                            principal,
                            plan,
                            settings,
                            records,
                            &mut budget,
                        )
                        .await
                    }
                };
                self.apply_produce_outcome(
                    outcome, p, &topic_ref, &name, peer, &mut kept, &mut patch,
                );
            }
            topic.partition_data = kept;
        }
        request.topic_data.retain(|t| !t.partition_data.is_empty());
        (patch, budget.into_output())
    }

    /// The one exit of a produce partition: kept for the broker (as it came, or with the stage's
    /// bytes), or refused into the patch. Nothing else puts records into the request.
    #[allow(clippy::too_many_arguments)]
    fn apply_produce_outcome(
        &self,
        outcome: Outcome,
        mut p: PartitionProduceData,
        topic_ref: &TopicRef,
        topic: &TopicName,
        peer: SocketAddr,
        kept: &mut Vec<PartitionProduceData>,
        patch: &mut ProducePatch,
    ) {
        match outcome {
            Outcome::Unchanged => kept.push(p),
            Outcome::Rewritten(records) => {
                p.records = Some(records);
                kept.push(p);
            }
            Outcome::Refused(error) => {
                self.log
                    .refused(Direction::Produce, peer, topic.as_str(), p.index, &error);
                patch.refuse(topic_ref.clone(), p.index, error);
            }
        }
    }

    async fn produce_partition(
        &self,
        topic: &TopicName,
        principal: Option<&Principal>,
        plan: &TopicPlan,
        settings: DecryptSettings,
        records: &Bytes,
        budget: &mut Budget,
    ) -> Outcome {
        match self
            .produce_records(topic.as_str(), principal, plan, settings, records, budget)
            .await
        {
            Ok(Some(out)) => Outcome::Rewritten(out),
            Ok(None) => Outcome::Unchanged,
            Err(e) => Outcome::Refused(e),
        }
    }

    /// `Ok(None)`: forward as it came; `Ok(Some(bytes))`: forward these instead.
    async fn produce_records(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        plan: &TopicPlan,
        settings: DecryptSettings,
        records: &Bytes,
        budget: &mut Budget,
    ) -> Result<Option<Bytes>, ProxyError> {
        let enc = match (plan, &self.encryption) {
            (TopicPlan::RejectAll(message), _) => {
                return Err(ProxyError::new(
                    ErrorSource::Policy,
                    ResponseError::PolicyViolation,
                    Reason::PolicyRejected,
                    message.clone(),
                ))
            }
            (TopicPlan::EncryptAll(_) | TopicPlan::PerRecord(_), Some(e)) => Some(e),
            _ => None,
        };
        // Records with a descriptor are refused on every topic when encryption is configured.
        let refuse_descriptors = self.encryption.is_some() && !settings.accept_pre_encrypted;
        if enc.is_none() && self.mode == RecordsMode::Passthrough && !refuse_descriptors {
            return Ok(None);
        }
        let rewrite = enc.is_some() || self.mode == RecordsMode::Reencode;
        let mut out = if rewrite {
            pool::bytes_mut_for(records.len() + records.len() / 4 + 256)
        } else {
            BytesMut::new()
        };
        for entry in split_record_set(records) {
            let raw = match entry? {
                RecordSetEntry::Partial(_) => {
                    return Err(ProxyError::client(
                        ResponseError::CorruptMessage,
                        Reason::Corrupt,
                        "truncated record batch",
                    ))
                }
                RecordSetEntry::Batch(raw) => raw,
            };
            if raw.is_legacy() && enc.is_some() {
                return Err(ProxyError::client(
                    ResponseError::UnsupportedForMessageFormat,
                    Reason::LegacyFormat,
                    format!(
                        "topic {topic:?} is encrypted and needs record batches of magic v2; this \
                         producer sent magic {}",
                        raw.magic()
                    ),
                ));
            }
            if raw.is_legacy() || raw.is_control() {
                // v0/v1 messages cannot carry headers; control batches carry no user records.
                if rewrite {
                    budget.hold_copy(raw.bytes().len()).await?;
                    out.extend_from_slice(raw.bytes());
                }
                continue;
            }
            let skip_decode = enc.is_none()
                && self.mode == RecordsMode::Passthrough
                && matches!(raw.compression(), Ok(Compression::None))
                && !may_contain_encrypted(raw.bytes());
            if skip_decode {
                continue;
            }
            let mut batch = budget.decode(&raw).await?;
            let has_descriptors = batch_has_encrypted_records(&batch);
            if has_descriptors && refuse_descriptors {
                let index = batch
                    .records
                    .iter()
                    .position(|r| r.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes()))
                    .unwrap_or(0);
                return Err(ProxyError::client(
                    ResponseError::InvalidRecord,
                    Reason::PreEncrypted,
                    format!(
                        "record {index} already carries a '{HEADER_KEY}' header, which only \
                         Kapsule may write; topic {topic:?} does not accept pre-encrypted records \
                         (set accept_pre_encrypted on its rule or binding if it should)"
                    ),
                )
                .with_records([RecordError {
                    index,
                    message: format!(
                        "already carries a '{HEADER_KEY}' header, which only Kapsule may write"
                    ),
                }]));
            }
            if let Some(enc) = enc {
                let mut decisions = match plan {
                    TopicPlan::EncryptAll(p) => {
                        vec![RecordDecision::Encrypt(p.clone()); batch.records.len()]
                    }
                    _ => {
                        enc.policy
                            .decide_async(topic, principal, batch.base_timestamp, &batch.records)
                            .await?
                    }
                };
                if has_descriptors {
                    // Accepted pre-encrypted records go on as they are, never encrypted twice.
                    for (d, r) in decisions.iter_mut().zip(&batch.records) {
                        if r.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes())
                            && !matches!(d, RecordDecision::Reject(_))
                        {
                            *d = RecordDecision::Pass;
                        }
                    }
                }
                enc.encryptor
                    .encrypt_batch(topic, &mut batch, &decisions)
                    .await
                    .map_err(|e| batch_refusal(e, &decisions))?;
            }
            if rewrite {
                let start = out.len();
                batch.encode(&mut out)?;
                budget.keep_output(batch, out.len() - start).await?;
            }
        }
        Ok(rewrite.then(|| pool::freeze_bytes_mut(out)))
    }
}

/// A refused batch as its producer is told: a policy rejection names every record the policy
/// rejected (the Produce response's `record_errors`), other errors the record that caused them.
fn batch_refusal(e: EncryptError, decisions: &[RecordDecision]) -> ProxyError {
    let rejected = matches!(e, EncryptError::Rejected { .. });
    let err = ProxyError::from(e);
    if !rejected {
        return err;
    }
    err.with_records(
        decisions
            .iter()
            .enumerate()
            .filter_map(|(index, d)| match d {
                RecordDecision::Reject(message) => Some(RecordError {
                    index,
                    message: message.clone(),
                }),
                _ => None,
            }),
    )
}
