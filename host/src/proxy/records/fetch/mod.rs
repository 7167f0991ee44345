//! Fetch: one [`Outcome`] per partition, applied in `apply_fetch_outcome`, the only
//! place a partition's records are put back into the response that goes to the client.
//!
//! How outcomes are made (`fetch_records`):
//! - Topics no rule or binding covers: forwarded as stored (re-encoded in reencode mode), even
//!   when records carry `kapsule.enc` headers: no decryption and no KMS call, so a forged
//!   descriptor can never make such a partition unreadable.
//! - Covered topics: batch by batch, batches that may hold encrypted records (or all, with
//!   `require_encrypted` or in reencode mode) are decoded, decrypted per `on_decrypt_failure`,
//!   and re-encoded; the others are copied byte for byte. With `require_encrypted` a descriptor
//!   naming a KEK other than the rule's key / the binding's `allowed_key_ids` is a decrypt
//!   failure and never reaches the KMS.
//! - A batch whose records were all dropped (`skip`) is sent as an uncompressed zero-record batch
//!   with the same base offset and offset span: every client accepts it and moves past it,
//!   whereas an empty *compressed* batch aborts librdkafka.
//! - Who may read (per topic, once per response): the connection's principal gets the topic's
//!   [`Reveal`] (rule `reveal_to` or module `reveal`). `Deny` fails every partition of the topic
//!   with TOPIC_AUTHORIZATION_FAILED, records or not; `Ciphertext` forwards stored batches as
//!   they are (decoded only to enforce `require_encrypted` or to re-encode); `Parts` decrypts
//!   only the revealed parts (see [`RevealScope`]); `All` decrypts everything. docs/reveal.md.
//! - The decompression budget: once exhausted, the partition's record set ends at the last batch
//!   processed (the client fetches the rest next time); a partition whose first batch alone does
//!   not fit a fresh budget is failed with CORRUPT_MESSAGE and a message saying so.
//! - The process-wide memory budget (`proxy::budget`): when it stays busy for the whole wait, the
//!   record set ends at the last batch processed, possibly empty, with no error: the client
//!   fetches from there again, as after a broker's empty answer.
//! - ShareFetch (KIP-932 share groups, [`RecordStage::on_share_fetch_charged`]): the same per
//!   partition, the topic named by its id, except that a record set is never cut short. The
//!   broker acquired every record in it for this consumer; a record that does not arrive is
//!   redelivered only once its acquisition lock expires, and a client may take its offset for a
//!   gap (compacted away) and acknowledge it as one. So where a Fetch's set would end early the
//!   partition fails with no records (REQUEST_TIMED_OUT while memory stays busy, CORRUPT_MESSAGE
//!   with a message when the set exceeds the decompression budget), and the broker hands the
//!   records out again.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::share_fetch_response::PartitionData as SharePartitionData;
use kafka_protocol::messages::{FetchResponse, ShareFetchResponse};
use kafka_protocol::protocol::StrBytes;

use super::log::{escape, Direction};
use super::{Budget, Encryption, Outcome, RecordStage};
use crate::crypto::record::{
    batch_has_encrypted_records, may_contain_encrypted, DecryptOptions, RevealScope,
};
use crate::error::{ErrorSource, ProxyError, Reason};
use crate::kafka::compression::Compression;
use crate::kafka::frame::pool;
use crate::kafka::records::{split_record_set, RecordSetEntry};
use crate::plan::Reveal;
use crate::policy::config::DecryptSettings;
use crate::proxy::budget::{Charge, Use};
use crate::proxy::config::RecordsMode;
use crate::proxy::session::ClientSession;

/// A partition of a Fetch or ShareFetch response, as the record stage changes it.
trait FetchedPartition {
    fn index(&self) -> i32;
    /// Replaces the partition's records with the stage's bytes.
    fn deliver(&mut self, records: Bytes);
    /// Fails the partition: the error's code, no records.
    fn refuse(&mut self, error: &ProxyError);
}

impl FetchedPartition for PartitionData {
    fn index(&self) -> i32 {
        self.partition_index
    }

    fn deliver(&mut self, records: Bytes) {
        self.records = Some(records);
    }

    fn refuse(&mut self, error: &ProxyError) {
        self.error_code = error.code();
        self.records = Some(Bytes::new());
    }
}

/// A share partition also carries the error's message, and loses its acquired-records list: the
/// client gets none of them, and the broker redelivers them when their lock expires.
impl FetchedPartition for SharePartitionData {
    fn index(&self) -> i32 {
        self.partition_index
    }

    fn deliver(&mut self, records: Bytes) {
        self.records = Some(records);
    }

    fn refuse(&mut self, error: &ProxyError) {
        self.error_code = error.code();
        self.error_message = Some(StrBytes::from_string(error.message().to_owned()));
        self.records = Some(Bytes::new());
        self.acquired_records.clear();
    }
}

impl RecordStage {
    /// Transforms every partition's records in a Fetch response: decrypts encrypted records and,
    /// with `records: reencode`, re-encodes the rest. Batches with no encrypted record are
    /// forwarded byte for byte. A partition that cannot be delivered gets an error code and no
    /// records; the others are unaffected.
    pub async fn on_fetch(
        &self,
        response: &mut FetchResponse,
        session: &ClientSession,
    ) -> anyhow::Result<()> {
        self.on_fetch_charged(response, session).await.map(drop)
    }

    /// [`RecordStage::on_fetch`], also returning the memory-budget charge for the re-encoded
    /// records now in `response` (to hold until they are copied into the response frame).
    pub(super) async fn on_fetch_charged(
        &self,
        response: &mut FetchResponse,
        session: &ClientSession,
    ) -> anyhow::Result<Charge> {
        let peer = session.peer();
        let mut budget = self.request_budget(Use::FetchDecompression);
        for topic in &mut response.responses {
            let resolved = self.topic_name(&topic.topic, topic.topic_id);
            let name = resolved.clone().unwrap_or_else(|_| topic.topic.clone());
            let reveal = match resolved {
                // Without a name nothing can be decrypted or checked: never deliver the records.
                Err(unknown) if self.encryption.is_some() => Err(unknown),
                _ => self.reveal_for(name.as_str(), session).await,
            };
            for p in &mut topic.partitions {
                let (records, cut) = (&p.records, CutShort::Deliver);
                let outcome = self
                    .partition_outcome(name.as_str(), &reveal, records, &mut budget, peer, cut)
                    .await;
                self.apply_fetch_outcome(outcome, p, name.as_str(), peer);
            }
        }
        Ok(budget.into_output())
    }

    /// [`RecordStage::on_fetch_charged`] for a ShareFetch response: each topic named by its id
    /// (from Metadata Kapsule has seen; an unknown id fails its partitions with
    /// UNKNOWN_TOPIC_ID), the same reveal and decryption per partition, and no record set cut
    /// short (see the module docs). A failed partition also loses its acquired-records list: the
    /// client gets none of them, and the broker redelivers them when their lock expires.
    pub(super) async fn on_share_fetch_charged(
        &self,
        response: &mut ShareFetchResponse,
        session: &ClientSession,
    ) -> anyhow::Result<Charge> {
        let peer = session.peer();
        let mut budget = self.request_budget(Use::FetchDecompression);
        for topic in &mut response.responses {
            // ShareFetch names topics by id only; a nil id is never learned, so it is unknown too.
            let id = topic.topic_id;
            let resolved = self
                .topic_ids
                .name(id)
                .ok_or_else(|| self.unknown_topic_id(id));
            let reveal = match &resolved {
                Ok(name) => self.reveal_for(name.as_str(), session).await,
                // Without a name nothing can be decrypted or checked: never deliver the records.
                Err(unknown) if self.encryption.is_some() => Err(unknown.clone()),
                Err(_) => Ok(Reveal::All),
            };
            let name = resolved.map_or_else(|_| topic.topic_id.to_string(), |n| n.to_string());
            for p in &mut topic.partitions {
                let (records, cut) = (&p.records, CutShort::Fail);
                let outcome = self
                    .partition_outcome(&name, &reveal, records, &mut budget, peer, cut)
                    .await;
                self.apply_fetch_outcome(outcome, p, &name, peer);
            }
        }
        Ok(budget.into_output())
    }

    /// What one partition's `records` become under the topic's `reveal` (or the error that
    /// named no topic or reveal): refused, as stored, or the stage's bytes.
    async fn partition_outcome(
        &self,
        topic: &str,
        reveal: &Result<Reveal, ProxyError>,
        records: &Option<Bytes>,
        budget: &mut Budget,
        peer: SocketAddr,
        cut: CutShort,
    ) -> Outcome {
        match (reveal, records) {
            (Err(e), _) => Outcome::Refused(e.clone()),
            (Ok(Reveal::Deny(message)), _) => Outcome::Refused(ProxyError::new(
                ErrorSource::Policy,
                ResponseError::TopicAuthorizationFailed,
                Reason::PolicyRejected,
                message.clone(),
            )),
            (Ok(reveal), Some(records)) if !records.is_empty() => {
                self.fetch_records(topic, records, budget, peer, reveal, cut)
                    .await
            }
            _ => Outcome::Unchanged,
        }
    }

    /// What the connection's principal may read of `topic`: [`Reveal::All`] without encryption
    /// or for topics no rule or binding covers, else the rule's `reveal_to` or the module's
    /// `reveal` answer (cached per topic and principal by the policy layer; a guest call runs
    /// off the async runtime). A policy that fails to answer fails the topic's partitions
    /// (nothing is revealed).
    async fn reveal_for(&self, topic: &str, session: &ClientSession) -> Result<Reveal, ProxyError> {
        match &self.encryption {
            Some(enc) if enc.policy.decrypt_settings(topic).covered => enc
                .policy
                .reveal_async(topic, session.principal())
                .await
                .map_err(ProxyError::from),
            _ => Ok(Reveal::All),
        }
    }

    /// The one exit of a Fetch or ShareFetch partition: delivered as stored, delivered with the
    /// stage's bytes, or failed with an error code and no records.
    fn apply_fetch_outcome(
        &self,
        outcome: Outcome,
        p: &mut impl FetchedPartition,
        topic: &str,
        peer: SocketAddr,
    ) {
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Rewritten(records) => p.deliver(records),
            Outcome::Refused(error) => {
                self.log
                    .refused(Direction::Fetch, peer, topic, p.index(), &error);
                p.refuse(&error);
            }
        }
    }

    async fn fetch_records(
        &self,
        topic: &str,
        records: &Bytes,
        budget: &mut Budget,
        peer: SocketAddr,
        reveal: &Reveal,
        cut: CutShort,
    ) -> Outcome {
        let covered = self
            .encryption
            .as_ref()
            .map(|enc| (enc, enc.policy.decrypt_settings(topic)))
            .filter(|(_, s)| s.covered);
        let scope = match reveal {
            Reveal::Parts(parts) => RevealScope::Parts(parts),
            Reveal::Ciphertext => RevealScope::Ciphertext,
            Reveal::All | Reveal::Deny(_) => RevealScope::All,
        };
        let result = match covered {
            // Stored bytes as they are: nothing to check without `require_encrypted`.
            Some((_, settings))
                if matches!(reveal, Reveal::Ciphertext)
                    && !settings.require_encrypted
                    && self.mode != RecordsMode::Reencode =>
            {
                Ok(None)
            }
            Some((enc, settings)) => {
                let mode = self.mode;
                decrypt_record_set(enc, settings, mode, topic, records, budget, scope, cut).await
            }
            None if self.mode == RecordsMode::Reencode => {
                match reencode_fetched(records, budget, cut).await {
                    Ok(out) => Ok(Some(out)),
                    Err(e) if e.reason() == Reason::TooLarge => Err(e),
                    Err(e) => {
                        // The broker's own bytes on a topic Kapsule does not protect: forward
                        // them as stored, the client will judge.
                        let (topic, e) = (escape(topic), escape(e.message()));
                        tracing::debug!(%peer, %topic, error = %e, "fetched batch does not decode; forwarding as stored");
                        Ok(None)
                    }
                }
            }
            None => Ok(None),
        };
        match result {
            Ok(Some(out)) => Outcome::Rewritten(out),
            Ok(None) => Outcome::Unchanged,
            Err(e) => Outcome::Refused(e),
        }
    }
}

/// Re-encodes a record set of an uncovered topic, batch by batch under the budget.
async fn reencode_fetched(
    records: &Bytes,
    budget: &mut Budget,
    cut: CutShort,
) -> Result<Bytes, ProxyError> {
    let mut out = pool::bytes_mut_for(records.len() + 64);
    let fresh = budget.used() == 0;
    let mut first = true;
    for entry in split_record_set(records) {
        let entry = entry.map_err(ProxyError::from_broker)?;
        match &entry {
            RecordSetEntry::Batch(raw) if !raw.is_legacy() && !raw.is_control() => {
                let start = out.len();
                let kept = match budget.decode(raw).await {
                    Ok(batch) => {
                        batch.encode(&mut out)?;
                        budget.keep_output(batch, out.len() - start).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = kept {
                    out.truncate(start);
                    return cut_short(out, first && fresh, e, cut);
                }
            }
            other => {
                if let Err(e) = budget.hold_copy(other.bytes().len()).await {
                    return cut_short(out, first && fresh, e, cut);
                }
                out.extend_from_slice(other.bytes());
            }
        }
        first = false;
    }
    Ok(pool::freeze_bytes_mut(out))
}

/// The budget ran out: deliver the batches done so far (the client fetches the rest next time);
/// fail the partition only when not even its first batch fits a fresh budget.
fn truncate_or_fail(out: BytesMut, alone: bool, e: ProxyError) -> Result<Bytes, ProxyError> {
    if alone {
        Err(ProxyError::new(
            ErrorSource::Broker,
            kafka_protocol::error::ResponseError::CorruptMessage,
            Reason::TooLarge,
            format!(
                "{} (a single stored batch exceeds the proxy's per-response decompression \
                 budget; raise it or lower the consumer's fetch size)",
                e.message()
            ),
        ))
    } else {
        Ok(pool::freeze_bytes_mut(out))
    }
}

/// Whether a partition's record set may end early when the budget refuses its next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutShort {
    /// Fetch: deliver the batches done so far; the client fetches the rest from there.
    Deliver,
    /// ShareFetch: fail the partition (see the module docs).
    Fail,
}

/// What a record set delivers when the budget refuses its next batch: the batches done so far
/// when memory stays busy (the client fetches the rest once memory is free) or the batch is too
/// large ([`truncate_or_fail`]); any other error, or any error at all with [`CutShort::Fail`],
/// fails the partition.
fn cut_short(
    out: BytesMut,
    alone: bool,
    e: ProxyError,
    cut: CutShort,
) -> Result<Bytes, ProxyError> {
    if cut == CutShort::Fail {
        return match e.reason() {
            Reason::MemoryBusy => Err(e),
            Reason::TooLarge => truncate_or_fail(out, true, e),
            _ => Err(retag_broker(e)),
        };
    }
    match e.reason() {
        Reason::MemoryBusy => Ok(pool::freeze_bytes_mut(out)),
        Reason::TooLarge => truncate_or_fail(out, alone, e),
        _ => Err(retag_broker(e)),
    }
}

fn retag_broker(e: ProxyError) -> ProxyError {
    ProxyError::new(
        ErrorSource::Broker,
        e.kafka_error(),
        e.reason(),
        format!("stored batch does not decode: {}", e.message()),
    )
}

/// Decrypts one partition's record set of a covered topic. `Ok(None)`: forward as stored.
#[allow(clippy::too_many_arguments)] // the stage's settings, the set, and how it may end
async fn decrypt_record_set(
    enc: &Encryption,
    settings: DecryptSettings,
    mode: RecordsMode,
    topic: &str,
    records: &Bytes,
    budget: &mut Budget,
    scope: RevealScope<'_>,
    cut: CutShort,
) -> Result<Option<Bytes>, ProxyError> {
    let allowance = settings
        .require_encrypted
        .then(|| enc.policy.allowed_keks(topic))
        .flatten();
    let filter = allowance.as_ref().map(|a| move |id: &str| a.allows(id));
    let options = DecryptOptions {
        on_failure: settings.on_decrypt_failure,
        require_encrypted: settings.require_encrypted,
        allowed_kek: filter
            .as_ref()
            .map(|f| f as &(dyn Fn(&str) -> bool + Send + Sync)),
    };
    let fresh = budget.used() == 0;
    let mut out = pool::bytes_mut_for(records.len());
    let mut changed = false;
    let mut first = true;
    for entry in split_record_set(records) {
        let entry = entry.map_err(ProxyError::from_broker)?;
        let raw = match &entry {
            RecordSetEntry::Batch(raw) if !raw.is_legacy() && !raw.is_control() => raw,
            other => {
                if let Err(e) = budget.hold_copy(other.bytes().len()).await {
                    return cut_short(out, first && fresh, e, cut).map(Some);
                }
                out.extend_from_slice(other.bytes());
                first = false;
                continue;
            }
        };
        let compressed = !matches!(raw.compression(), Ok(Compression::None));
        let needs_look = options.require_encrypted
            || mode == RecordsMode::Reencode
            || compressed
            || may_contain_encrypted(raw.bytes());
        if !needs_look {
            if let Err(e) = budget.hold_copy(raw.bytes().len()).await {
                return cut_short(out, first && fresh, e, cut).map(Some);
            }
            out.extend_from_slice(raw.bytes());
            first = false;
            continue;
        }
        let mut batch = match budget.decode(raw).await {
            Ok(b) => b,
            // The client fetches the rest (from where this set ends) once memory is free.
            Err(e) => return cut_short(out, first && fresh, e, cut).map(Some),
        };
        let alone = first && fresh;
        first = false;
        if !(options.require_encrypted
            || mode == RecordsMode::Reencode
            || batch_has_encrypted_records(&batch))
        {
            drop(batch);
            if let Err(e) = budget.hold_copy(raw.bytes().len()).await {
                return cut_short(out, alone, e, cut).map(Some);
            }
            out.extend_from_slice(raw.bytes());
            continue;
        }
        enc.encryptor
            .decrypt_batch_revealing(topic, &mut batch, &options, scope)
            .await?;
        if batch.records.is_empty() && compressed {
            // An empty compressed batch aborts librdkafka: send it uncompressed, keeping the base
            // offset and last_offset_delta so consumers move past the skipped offsets.
            batch.attributes = Compression::None.apply_to_attributes(batch.attributes);
        }
        let start = out.len();
        batch.encode(&mut out).map_err(|e| {
            ProxyError::internal(format!("re-encoding a decrypted batch failed: {e}"))
        })?;
        if let Err(e) = budget.keep_output(batch, out.len() - start).await {
            out.truncate(start);
            return cut_short(out, alone, e, cut).map(Some);
        }
        changed = true;
    }
    Ok(changed.then(|| pool::freeze_bytes_mut(out)))
}

#[cfg(test)]
mod tests;
