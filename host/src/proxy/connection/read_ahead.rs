//! Fetch read-ahead: while a consumer works through one decrypted Fetch response, Kapsule already
//! fetches and decrypts the next one, so decryption is no longer added to every round trip.
//!
//! Consumers keep one Fetch in flight per broker. Relayed store-and-forward, every response's
//! decryption (about 2.7 ms per MiB) adds to the consumer's wait for the next batch, and the two
//! cores sit partly idle (see BENCHMARKS.md, "where consume throughput goes"). With read-ahead,
//! once a Fetch response arrives Kapsule predicts the consumer's next request — the same request
//! with each partition's `fetch_offset` moved past the last complete batch it was sent (and its
//! `last_fetched_epoch` to that batch's leader epoch when the client sends one) — and sends that
//! request to the broker itself with `max_wait_ms = 0`, so it never parks in the broker's
//! purgatory ahead of the client's next request. The response is decrypted at once and held.
//!
//! When the client's next Fetch is exactly the predicted request (same client id, same fields;
//! the order of partitions may differ), it is answered from the held response with the client's
//! correlation id and not forwarded; anything else is forwarded as usual and the held responses
//! dropped. Either way the client reads what the broker answered to exactly its request: served
//! early, as if the client had asked a few milliseconds sooner (`max_wait_ms = 0` only lets the
//! broker answer below `min_bytes`, which a broker also does when the wait runs out).
//!
//! Only sessionless fetches are read ahead (`session_id = 0`, `session_epoch = -1`): a request in
//! a broker's fetch session cannot be answered here, as that would leave the broker's session
//! epoch behind the client's. Clients that use KIP-227 sessions (the Java client, franz-go) get
//! their sessions from Kapsule instead ([`super::fetch_sessions`]), which asks the broker
//! sessionlessly, so their fetches are read ahead too. Read-aheads
//! form a chain, each predicted from the response to the one before, with at most [`DEPTH`]
//! outstanding per connection; one is sent only while the client's last request was a Fetch (so
//! it never lands inside a SASL re-authentication); after a miss, read-ahead pauses for a
//! growing number of fetches. Held responses are charged to the global memory budget, only while
//! it has room, and never to the connection's allowance.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader};
use tokio::sync::mpsc;

use crate::kafka::frame::{encode_request, RequestMeta};
use crate::proxy::session::ClientSession;

/// A client's Fetch request, decoded: what a read-ahead must match. Sessionless: a request in
/// a fetch session is served by [`super::fetch_sessions`] and stands here as the sessionless
/// request Kapsule sends for it, with the id of the client's session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientFetch {
    header: RequestHeader,
    body: FetchRequest,
    /// The id of the client's fetch session, which the response carries (0: none).
    session_id: i32,
}

impl ClientFetch {
    /// A sessionless consumer's request that can be read ahead, answered with `session_id`;
    /// `None` for a follower's or one in a fetch session at the broker.
    pub(crate) fn new(header: RequestHeader, body: FetchRequest, session_id: i32) -> Option<Self> {
        let sessionless = body.session_id == 0 && body.session_epoch == -1;
        (sessionless && body.replica_id.0 < 0).then_some(Self {
            header,
            body,
            session_id,
        })
    }

    /// The id of the client's fetch session its response carries (0: none).
    pub(crate) fn session_id(&self) -> i32 {
        self.session_id
    }

    /// True when `other` asks for exactly what this request asks for: same client id and
    /// version, same fields, and the same partitions in the same state, in any order.
    fn same_as(&self, other: &ClientFetch) -> bool {
        let header_matches = self.header.client_id == other.header.client_id
            && self.header.request_api_version == other.header.request_api_version
            && self.session_id == other.session_id;
        if !header_matches {
            return false;
        }
        let without_topics = |r: &FetchRequest| r.clone().with_topics(Vec::new());
        if without_topics(&self.body) != without_topics(&other.body) {
            return false;
        }
        let (mut mine, mut theirs) = (partitions(&self.body), partitions(&other.body));
        if mine.len() != theirs.len() {
            return false;
        }
        mine.sort_by(by_topic_and_partition);
        theirs.sort_by(by_topic_and_partition);
        mine.iter()
            .zip(&theirs)
            .all(|((t, p), (u, q))| same_topic(t, u) && p == q)
    }
}

fn partitions(request: &FetchRequest) -> Vec<(&FetchTopic, &FetchPartition)> {
    request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .collect()
}

fn by_topic_and_partition(
    a: &(&FetchTopic, &FetchPartition),
    b: &(&FetchTopic, &FetchPartition),
) -> Ordering {
    (&a.0.topic, a.0.topic_id, a.1.partition).cmp(&(&b.0.topic, b.0.topic_id, b.1.partition))
}

fn same_topic(a: &FetchTopic, b: &FetchTopic) -> bool {
    a.topic == b.topic
        && a.topic_id == b.topic_id
        && a.unknown_tagged_fields == b.unknown_tagged_fields
}

/// The request a client sends after reading `response` to `request`, as far as it can be
/// predicted: each partition's `fetch_offset` moved past the last complete batch the response
/// carried for it (and `last_fetched_epoch`, when the client sends one, to that batch's leader
/// epoch). The partitions that advanced move behind the others, as a broker rotates a session's
/// partitions and librdkafka its own, so that under `max_bytes` a read-ahead chain cannot starve
/// the partitions at the end of the list (a client's request matches in any order). `None` when
/// nothing can be predicted: a fetch session, an error anywhere (the client reacts to it), a
/// legacy (magic 0/1) or malformed record set, or no partition that advanced.
pub(crate) fn predict_next(
    request: &FetchRequest,
    response: &FetchResponse,
) -> Option<FetchRequest> {
    let sessionless = request.session_id == 0 && request.session_epoch == -1;
    if !sessionless || response.error_code != 0 || !request.forgotten_topics_data.is_empty() {
        return None;
    }
    let mut next = request.clone();
    let mut advanced = false;
    for topic in &mut next.topics {
        for partition in &mut topic.partitions {
            let answered = response
                .responses
                .iter()
                .filter(|t| t.topic == topic.topic && t.topic_id == topic.topic_id)
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == partition.partition);
            let Some(answered) = answered else { continue };
            if answered.error_code != 0
                || answered.preferred_read_replica.0 >= 0
                || answered.diverging_epoch.epoch >= 0
            {
                return None;
            }
            let Some(records) = &answered.records else {
                continue;
            };
            let Some(end) = last_complete_batch(records)? else {
                continue;
            };
            if end.next_offset <= partition.fetch_offset {
                return None;
            }
            partition.fetch_offset = end.next_offset;
            if partition.last_fetched_epoch != -1 {
                partition.last_fetched_epoch = end.leader_epoch;
            }
            advanced = true;
        }
    }
    advanced.then(|| rotated(next, request))
}

/// `next` with the partitions whose fetch offset moved since `previous` behind the others (each
/// topic listed once, where its first partition now comes). `next` is `previous` with offsets
/// moved: the same topics and partitions in the same places. Linear in the partitions.
fn rotated(next: FetchRequest, previous: &FetchRequest) -> FetchRequest {
    let mut order: Vec<(bool, usize, &FetchPartition)> = Vec::new();
    for (ti, (topic, before)) in next.topics.iter().zip(&previous.topics).enumerate() {
        for (p, q) in topic.partitions.iter().zip(&before.partitions) {
            order.push((p.fetch_offset != q.fetch_offset, ti, p));
        }
    }
    order.sort_by_key(|(moved, ..)| *moved);
    let mut slot_of_topic: Vec<Option<usize>> = vec![None; next.topics.len()];
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (_, ti, p) in order {
        let slot = *slot_of_topic[ti].get_or_insert_with(|| {
            topics.push(next.topics[ti].clone().with_partitions(Vec::new()));
            topics.len() - 1
        });
        topics[slot].partitions.push(p.clone());
    }
    next.with_topics(topics)
}

/// Where the last complete batch of a record set ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEnd {
    /// The offset after the batch's last offset.
    next_offset: i64,
    /// The batch's partition leader epoch.
    leader_epoch: i32,
}

/// Walks a record set's batch headers: `Some(None)` when it holds no complete batch (a trailing
/// partial batch, which clients skip, is ignored), `None` when it is not all magic 2 batches.
fn last_complete_batch(records: &[u8]) -> Option<Option<BatchEnd>> {
    // baseOffset(8) batchLength(4) partitionLeaderEpoch(4) magic(1) crc(4) attributes(2)
    // lastOffsetDelta(4): a v2 batch header is 61 bytes, 49 of them counted by batchLength.
    const LOG_OVERHEAD: usize = 12;
    const MIN_BATCH_LENGTH: usize = 49;
    let mut rest = records;
    let mut last = None;
    while rest.len() >= LOG_OVERHEAD {
        let base_offset = i64::from_be_bytes(rest[0..8].try_into().ok()?);
        let length = usize::try_from(i32::from_be_bytes(rest[8..12].try_into().ok()?)).ok()?;
        if rest.len() < LOG_OVERHEAD + length {
            break;
        }
        if length < MIN_BATCH_LENGTH || rest[16] != 2 {
            return None;
        }
        let leader_epoch = i32::from_be_bytes(rest[12..16].try_into().ok()?);
        let last_offset_delta = i32::from_be_bytes(rest[23..27].try_into().ok()?);
        last = Some(BatchEnd {
            next_offset: base_offset.checked_add(i64::from(last_offset_delta))? + 1,
            leader_epoch,
        });
        rest = &rest[LOG_OVERHEAD + length..];
    }
    Some(last)
}

/// Which response a prediction was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The broker's answer to the client's request with this sequence number.
    Client(u64),
    /// The broker's answer to read-ahead number `n`.
    ReadAhead(u64),
}

/// A predicted next request, on its way from a response's decode task to the forward stage.
/// Sent boxed ([`CandidateSender`]): a tokio channel allocates its first block of 32 slots when
/// it is made, and every connection makes one, so an unboxed `Candidate` (304 bytes) cost each
/// connection, idle or not, about 10 KiB.
pub(super) struct Candidate {
    origin: Origin,
    predicted: ClientFetch,
    session: Arc<ClientSession>,
}

/// Where predictions go: to the connection's forward stage.
pub(super) type CandidateSender = mpsc::UnboundedSender<Box<Candidate>>;

/// Handed to the task decoding a Fetch response: sends the prediction made from it.
pub(super) struct PredictionSink {
    origin: Origin,
    request: Arc<ClientFetch>,
    session: Arc<ClientSession>,
    to_forward: CandidateSender,
}

impl PredictionSink {
    /// The fetch-session id the response to the request predicted from carries.
    pub(super) fn session_id(&self) -> i32 {
        self.request.session_id
    }

    /// Predicts the client's next request from the response to this one and hands it on.
    pub(super) fn offer(self, response: &FetchResponse) {
        if let Some(body) = predict_next(&self.request.body, response) {
            let predicted = ClientFetch {
                header: self.request.header.clone(),
                body,
                session_id: self.request.session_id,
            };
            let _ = self.to_forward.send(Box::new(Candidate {
                origin: self.origin,
                predicted,
                session: self.session,
            }));
        }
    }
}

/// A read-ahead request ready to be written to the broker.
pub(super) struct ReadAheadRequest {
    /// Its number on this connection.
    pub(super) id: u64,
    /// Header fields of the request as sent (Kapsule's own correlation id).
    pub(super) meta: RequestMeta,
    /// The frame body.
    pub(super) frame: Bytes,
    /// The session its response is decrypted for (the client's, from the request predicted).
    pub(super) session: Arc<ClientSession>,
    /// Where the prediction made from its response goes.
    pub(super) sink: PredictionSink,
}

/// What the forward stage does with a client's Fetch.
pub(super) enum FetchDecision {
    /// Answer it with read-ahead `id`, which it matches; do not forward it.
    Answer(u64),
    /// Forward it; make a prediction from its response if a sink is given.
    Forward(Option<PredictionSink>),
}

/// The longest pause after misses, in fetches.
const MAX_PAUSE: u32 = 64;

/// Read-aheads one connection may have outstanding (sent, not yet claimed): two keep a response
/// decrypting while the client reads the one before, and let two decrypt at once.
pub(super) const DEPTH: usize = 2;

/// The forward stage's read-ahead state for one connection.
pub(super) struct ReadAhead {
    enabled: bool,
    to_forward: CandidateSender,
    /// Sequence number of the last client request the forward stage handled.
    last_request: u64,
    /// Whether that request was a Fetch: read-aheads are sent only right after a Fetch, never
    /// while the client is in another exchange (a SASL re-authentication).
    last_was_fetch: bool,
    /// Read-aheads sent and not yet claimed, oldest first, and the requests they answer.
    outstanding: VecDeque<(u64, ClientFetch)>,
    /// The newest read-ahead of the current chain (sent from a prediction made from the one
    /// before, or from the client's forwarded Fetch); `None` once the chain is broken.
    newest: Option<u64>,
    /// A prediction made from the newest read-ahead while `DEPTH` were outstanding, kept until
    /// the client claims one.
    deferred: Option<Candidate>,
    next_id: u64,
    next_correlation_id: i32,
    misses_in_a_row: u32,
    paused_for: u32,
    /// Read-aheads sent, answered from, and dropped unused.
    pub(super) counts: ReadAheadCounts,
}

/// What read-ahead did on one connection. The proxy-wide counters
/// (`kapsule_fetch_read_ahead_total`) are counted by the forward stage when it sends and answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadAheadCounts {
    pub(super) sent: u64,
    pub(super) served: u64,
    pub(super) dropped: u64,
}

impl ReadAhead {
    /// Read-ahead state for a connection; `enabled` is false when the proxy does not decrypt
    /// fetched records or `proxy.fetch_read_ahead` is off. Predictions arrive on the receiver
    /// paired with `to_forward`.
    pub(super) fn new(enabled: bool, to_forward: CandidateSender) -> Self {
        Self {
            enabled,
            to_forward,
            last_request: 0,
            last_was_fetch: false,
            outstanding: VecDeque::new(),
            newest: None,
            deferred: None,
            next_id: 0,
            // Kapsule's own correlation ids count down from -1, away from the ones clients use.
            next_correlation_id: -1,
            misses_in_a_row: 0,
            paused_for: 0,
            counts: ReadAheadCounts::default(),
        }
    }

    /// Numbers the next client request the forward stage handles (any API).
    pub(super) fn on_request(&mut self) -> u64 {
        self.last_request += 1;
        self.last_was_fetch = false;
        self.last_request
    }

    /// Decides what happens to the client's Fetch `seq` (`fetch` is `None` when it cannot be
    /// read ahead): answered with the oldest outstanding read-ahead when it matches it;
    /// otherwise forwarded, and every outstanding read-ahead dropped.
    pub(super) fn on_fetch(
        &mut self,
        seq: u64,
        fetch: Option<&Arc<ClientFetch>>,
        session: &Arc<ClientSession>,
    ) -> FetchDecision {
        self.last_was_fetch = true;
        if let Some((id, predicted)) = self.outstanding.front() {
            if fetch.is_some_and(|f| predicted.same_as(f)) {
                let id = *id;
                self.outstanding.pop_front();
                self.counts.served += 1;
                self.misses_in_a_row = 0;
                return FetchDecision::Answer(id);
            }
            self.counts.dropped += self.outstanding.len() as u64;
            self.outstanding.clear();
            self.misses_in_a_row = (self.misses_in_a_row + 1).min(6);
            self.paused_for = (1 << self.misses_in_a_row).min(MAX_PAUSE);
        }
        // Forwarded: whatever chain there was ends here.
        self.newest = None;
        self.deferred = None;
        let Some(fetch) = fetch.filter(|_| self.enabled) else {
            return FetchDecision::Forward(None);
        };
        if self.paused_for > 0 {
            self.paused_for -= 1;
            return FetchDecision::Forward(None);
        }
        FetchDecision::Forward(Some(PredictionSink {
            origin: Origin::Client(seq),
            request: fetch.clone(),
            session: session.clone(),
            to_forward: self.to_forward.clone(),
        }))
    }

    /// A prediction arrived: the read-ahead to send now, if it continues the current chain,
    /// the client's last request was a Fetch and fewer than [`DEPTH`] are outstanding.
    pub(super) fn on_candidate(&mut self, candidate: Candidate) -> Option<ReadAheadRequest> {
        match candidate.origin {
            Origin::Client(seq) => (seq == self.last_request
                && self.last_was_fetch
                && self.outstanding.is_empty()
                && self.newest.is_none())
            .then(|| self.send(candidate))
            .flatten(),
            Origin::ReadAhead(id) if self.newest == Some(id) => {
                if self.last_was_fetch && self.outstanding.len() < DEPTH {
                    self.send(candidate)
                } else {
                    self.deferred = Some(candidate);
                    None
                }
            }
            Origin::ReadAhead(_) => None,
        }
    }

    /// After the client's Fetch claimed a read-ahead: the next read-ahead, when a prediction
    /// was kept waiting for room.
    pub(super) fn after_claim(&mut self) -> Option<ReadAheadRequest> {
        let candidate = self.deferred.take()?;
        self.on_candidate(candidate)
    }

    fn send(&mut self, candidate: Candidate) -> Option<ReadAheadRequest> {
        let Candidate {
            predicted, session, ..
        } = candidate;
        let id = self.next_id;
        let correlation_id = self.next_correlation_id;
        let header = predicted.header.clone().with_correlation_id(correlation_id);
        let body = predicted.body.clone().with_max_wait_ms(0);
        let frame = encode_request(ApiKey::Fetch, &header, &body).ok()?;
        self.next_id += 1;
        self.next_correlation_id = correlation_id.checked_sub(1).unwrap_or(-1);
        let meta = RequestMeta {
            api_key: ApiKey::Fetch as i16,
            api_version: header.request_api_version,
            correlation_id,
        };
        let predicted = Arc::new(predicted);
        self.outstanding.push_back((id, (*predicted).clone()));
        self.newest = Some(id);
        self.counts.sent += 1;
        Some(ReadAheadRequest {
            id,
            meta,
            frame,
            session: session.clone(),
            sink: PredictionSink {
                origin: Origin::ReadAhead(id),
                request: predicted,
                session,
                to_forward: self.to_forward.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests;
