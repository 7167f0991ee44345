//! Fetch sessions (KIP-227) served by Kapsule itself, so that read-ahead also applies to clients
//! that use them (the Java client and franz-go).
//!
//! A client in a fetch session sends, after its first (full) Fetch, only the partitions whose
//! fetch state changed; the broker remembers the rest. Read-ahead cannot answer such a request
//! for the broker: every Fetch the broker sees moves its session epoch on, so a request Kapsule
//! sent ahead of the client would leave the client's next epoch behind the broker's.
//!
//! So where Kapsule decrypts fetched records and read-ahead is on, it keeps each client session
//! itself, per connection, and asks the broker sessionlessly (`session_id = 0`,
//! `session_epoch = -1`, every partition of the session listed, as librdkafka always asks):
//! - a full request (`session_epoch = 0`) opens a session with the partitions it lists (closing
//!   the session it names, if any); its response carries the new session's id;
//! - an incremental request (`session_epoch > 0`) must name an open session at the epoch it
//!   expects, else it is answered FETCH_SESSION_ID_NOT_FOUND or INVALID_FETCH_SESSION_EPOCH, as
//!   a broker answers, and the client opens a new one; its partitions are added or updated, its
//!   forgotten topics removed, and the updated partitions move to the end of the session's order
//!   (as a broker rotates them, so that one partition cannot starve the others under
//!   `max_bytes`);
//! - `session_epoch = -1` with a session id closes that session; the request is sessionless.
//!
//! The response to the sessionless request lists every partition of the session. A broker's
//! incremental response may leave out partitions with nothing new; listing them is allowed (a
//! client accepts any partition of its session) and costs only their few bytes. Requests of
//! followers, of versions before 7, and sessionless requests pass unchanged. A session that
//! would grow beyond [`MAX_SESSION_PARTITIONS`] is not kept: the client is answered as a broker
//! without room answers (no session id on a full request; FETCH_SESSION_ID_NOT_FOUND on an
//! incremental one) and carries on sessionless.

use std::collections::{HashMap, HashSet, VecDeque};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use uuid::Uuid;

/// Sessions one connection may keep open; a new one closes the oldest (clients keep one per
/// broker connection).
pub(crate) const MAX_SESSIONS: usize = 4;

/// Partitions one session may hold.
pub(crate) const MAX_SESSION_PARTITIONS: usize = 10_000;

/// What becomes of a client's Fetch request.
#[derive(Debug, PartialEq)]
pub(crate) enum Served {
    /// Forward it as the client sent it (sessionless, a follower's, or a version without
    /// sessions).
    Unchanged,
    /// Forward this sessionless request instead; answer the client with `session_id` in the
    /// response (0: no session).
    Sessionless {
        request: Box<FetchRequest>,
        session_id: i32,
    },
    /// Answer the client with this top-level error, forward nothing.
    Refused(ResponseError),
}

/// A partition of a session: its topic (name before v13, id from v13) and fetch state.
#[derive(Debug, Clone, PartialEq)]
struct SessionPartition {
    topic: TopicName,
    topic_id: Uuid,
    state: FetchPartition,
}

impl SessionPartition {
    fn key(&self) -> (&str, Uuid, i32) {
        (self.topic.0.as_str(), self.topic_id, self.state.partition)
    }
}

#[derive(Debug)]
struct Session {
    id: i32,
    next_epoch: i32,
    /// In fetch order: the ones updated last are asked for last.
    partitions: Vec<SessionPartition>,
}

/// The fetch sessions of one client connection.
#[derive(Debug)]
pub(crate) struct FetchSessions {
    sessions: VecDeque<Session>,
    next_id: i32,
}

impl FetchSessions {
    /// No sessions yet; ids start at a random positive number, so a client's id from an earlier
    /// connection (or from the broker) is unlikely to name one of this connection's sessions.
    pub(crate) fn new() -> Self {
        Self {
            sessions: VecDeque::new(),
            next_id: rand::Rng::gen_range(&mut rand::thread_rng(), 1..i32::MAX / 2),
        }
    }

    /// Serves `request` (of Fetch `version`) against this connection's sessions.
    pub(crate) fn serve(&mut self, version: i16, request: &FetchRequest) -> Served {
        let follower = request.replica_id.0 >= 0 || request.replica_state.replica_id.0 >= 0;
        let sessionless = request.session_id == 0 && request.session_epoch == -1;
        if version < 7 || follower || sessionless {
            return Served::Unchanged;
        }
        match request.session_epoch {
            -1 => {
                self.close(request.session_id);
                Served::Sessionless {
                    request: Box::new(sessionless_request(request, request.topics.clone())),
                    session_id: 0,
                }
            }
            0 => {
                self.close(request.session_id);
                let partitions = merged(Vec::new(), &request.topics, &[]);
                let session_id = if partitions.len() <= MAX_SESSION_PARTITIONS {
                    self.open(partitions)
                } else {
                    0
                };
                Served::Sessionless {
                    request: Box::new(sessionless_request(request, request.topics.clone())),
                    session_id,
                }
            }
            epoch => {
                let Some(at) = self.position(request.session_id) else {
                    return Served::Refused(ResponseError::FetchSessionIdNotFound);
                };
                let session = &mut self.sessions[at];
                if epoch != session.next_epoch {
                    return Served::Refused(ResponseError::InvalidFetchSessionEpoch);
                }
                let partitions = merged(
                    std::mem::take(&mut session.partitions),
                    &request.topics,
                    &request.forgotten_topics_data,
                );
                if partitions.len() > MAX_SESSION_PARTITIONS {
                    self.sessions.remove(at);
                    return Served::Refused(ResponseError::FetchSessionIdNotFound);
                }
                session.next_epoch = epoch.checked_add(1).unwrap_or(1);
                let topics = grouped(&partitions);
                session.partitions = partitions;
                Served::Sessionless {
                    request: Box::new(sessionless_request(request, topics)),
                    session_id: session.id,
                }
            }
        }
    }

    fn position(&self, id: i32) -> Option<usize> {
        (id != 0)
            .then(|| self.sessions.iter().position(|s| s.id == id))
            .flatten()
    }

    fn close(&mut self, id: i32) {
        if let Some(at) = self.position(id) {
            self.sessions.remove(at);
        }
    }

    fn open(&mut self, partitions: Vec<SessionPartition>) -> i32 {
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.pop_front();
        }
        let id = self.next_id;
        self.next_id = if id == i32::MAX { 1 } else { id + 1 };
        self.sessions.push_back(Session {
            id,
            next_epoch: 1,
            partitions,
        });
        id
    }
}

/// `request` without a session, asking for `topics`.
fn sessionless_request(request: &FetchRequest, topics: Vec<FetchTopic>) -> FetchRequest {
    request
        .clone()
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_forgotten_topics_data(Vec::new())
        .with_topics(topics)
}

/// `partitions` with `forgotten` removed, then every partition of `topics` added or updated;
/// updated ones move to the end, in the order `topics` lists them.
fn merged(
    mut partitions: Vec<SessionPartition>,
    topics: &[FetchTopic],
    forgotten: &[ForgottenTopic],
) -> Vec<SessionPartition> {
    let mut dropped: HashSet<(&str, Uuid, i32)> = HashSet::new();
    for f in forgotten {
        for p in &f.partitions {
            dropped.insert((f.topic.0.as_str(), f.topic_id, *p));
        }
    }
    for t in topics {
        for p in &t.partitions {
            dropped.insert((t.topic.0.as_str(), t.topic_id, p.partition));
        }
    }
    partitions.retain(|p| !dropped.contains(&p.key()));
    for t in topics {
        for p in &t.partitions {
            partitions.push(SessionPartition {
                topic: t.topic.clone(),
                topic_id: t.topic_id,
                state: p.clone(),
            });
        }
    }
    partitions
}

/// The session's partitions as request topics: one entry per topic, topics in the order their
/// first partition comes, partitions in session order.
fn grouped(partitions: &[SessionPartition]) -> Vec<FetchTopic> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    let mut index: HashMap<(&str, Uuid), usize> = HashMap::new();
    for p in partitions {
        let at = *index
            .entry((p.topic.0.as_str(), p.topic_id))
            .or_insert_with(|| {
                topics.push(
                    FetchTopic::default()
                        .with_topic(p.topic.clone())
                        .with_topic_id(p.topic_id),
                );
                topics.len() - 1
            });
        topics[at].partitions.push(p.state.clone());
    }
    topics
}

#[cfg(test)]
mod tests;
