//! Read-ahead: what is predicted, what matches, and when a read-ahead is sent, served or dropped.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;

use super::*;
use crate::kafka::frame::{decode_request, encode_request};

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The header fields a v2 batch header holds that prediction reads, and `body` bytes of
/// records after the 61-byte header (their content is not read).
fn batch(base_offset: i64, last_offset_delta: i32, leader_epoch: i32, body: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i64(base_offset);
    b.put_i32((49 + body) as i32);
    b.put_i32(leader_epoch);
    b.put_i8(2);
    b.put_u32(0); // crc, not checked here
    b.put_i16(0); // attributes
    b.put_i32(last_offset_delta);
    b.put_bytes(0, 61 - b.len() + body);
    b.to_vec()
}

fn records(batches: &[Vec<u8>]) -> Bytes {
    Bytes::from(batches.concat())
}

fn request(partitions: &[(&str, i32, i64)]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (name, partition, offset) in partitions {
        let p = FetchPartition::default()
            .with_partition(*partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(1 << 20);
        match topics.iter_mut().find(|t| t.topic == topic(name)) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(topic(name))
                    .with_partitions(vec![p]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

fn response(partitions: Vec<(&str, i32, Option<Bytes>)>) -> FetchResponse {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (name, partition, records) in partitions {
        let p = PartitionData::default()
            .with_partition_index(partition)
            .with_records(records);
        match topics.iter_mut().find(|t| t.topic == topic(name)) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic(name))
                    .with_partitions(vec![p]),
            ),
        }
    }
    FetchResponse::default().with_responses(topics)
}

fn offsets(request: &FetchRequest) -> Vec<(String, i32, i64, i32)> {
    request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.topic.0.to_string(),
                    p.partition,
                    p.fetch_offset,
                    p.last_fetched_epoch,
                )
            })
        })
        .collect()
}

#[test]
fn the_next_fetch_starts_after_the_last_complete_batch_of_each_partition() {
    let req = request(&[("orders", 0, 100), ("orders", 1, 7), ("audit", 0, 0)]);
    let resp = response(vec![
        // Two batches (100..=109, 110..=114) and a partial third one, which clients skip.
        (
            "orders",
            0,
            Some(records(&[
                batch(100, 9, 3, 10),
                batch(110, 4, 3, 10),
                batch(115, 4, 3, 10)[..40].to_vec(),
            ])),
        ),
        // Nothing new: the client asks for the same offset again.
        ("orders", 1, Some(Bytes::new())),
        // A compacted gap: the batch ends at 20 although it starts at 0.
        ("audit", 0, Some(records(&[batch(0, 20, 1, 0)]))),
    ]);
    let next = predict_next(&req, &resp).expect("two partitions advanced");
    // The partitions that advanced move behind the one that did not, so under max_bytes the
    // next read-ahead serves orders-1 first (a broker rotates a session's partitions alike).
    assert_eq!(
        offsets(&next),
        vec![
            ("orders".into(), 1, 7, -1),
            ("orders".into(), 0, 115, -1),
            ("audit".into(), 0, 21, -1),
        ]
    );
    assert_eq!(next.topics.len(), 2, "each topic listed once");
    // Every other field is the client's.
    assert_eq!(next.max_wait_ms, 500);
    assert_eq!(next.max_bytes, 50 << 20);
}

#[test]
fn the_last_fetched_epoch_follows_the_batch_only_when_the_client_sends_one() {
    let mut req = request(&[("orders", 0, 0)]);
    req.topics[0].partitions[0].last_fetched_epoch = 2;
    let resp = response(vec![(
        "orders",
        0,
        Some(records(&[batch(0, 4, 2, 0), batch(5, 4, 5, 0)])),
    )]);
    let next = predict_next(&req, &resp).unwrap();
    assert_eq!(offsets(&next), vec![("orders".into(), 0, 10, 5)]);
}

#[test]
fn nothing_is_predicted_where_the_client_would_do_something_else() {
    let req = request(&[("orders", 0, 0)]);
    let full = || Some(records(&[batch(0, 4, 1, 0)]));
    assert!(predict_next(&req, &response(vec![("orders", 0, full())])).is_some());

    let mut session = req.clone();
    session.session_id = 12;
    session.session_epoch = 3;
    assert!(
        predict_next(&session, &response(vec![("orders", 0, full())])).is_none(),
        "fetch sessions are not read ahead"
    );

    let mut top_level_error = response(vec![("orders", 0, full())]);
    top_level_error.error_code = 3;
    assert!(predict_next(&req, &top_level_error).is_none());

    let mut partition_error = response(vec![("orders", 0, full())]);
    partition_error.responses[0].partitions[0].error_code = 6; // NOT_LEADER_OR_FOLLOWER
    assert!(predict_next(&req, &partition_error).is_none());

    let mut diverging = response(vec![("orders", 0, full())]);
    diverging.responses[0].partitions[0].diverging_epoch.epoch = 1;
    assert!(predict_next(&req, &diverging).is_none());

    let mut legacy = batch(0, 4, 1, 0);
    legacy[16] = 1;
    assert!(
        predict_next(&req, &response(vec![("orders", 0, Some(legacy.into()))])).is_none(),
        "magic 1 message sets are not walked"
    );

    let mut short = batch(0, 4, 1, 0);
    short[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert!(predict_next(&req, &response(vec![("orders", 0, Some(short.into()))])).is_none());

    assert!(
        predict_next(&req, &response(vec![("orders", 0, Some(Bytes::new()))])).is_none(),
        "no partition advanced"
    );
    assert!(
        predict_next(
            &request(&[("orders", 0, 9)]),
            &response(vec![("orders", 0, full())])
        )
        .is_none(),
        "a batch ending before the fetch offset is not an advance"
    );
}

fn client_fetch(body: FetchRequest, client_id: &str) -> ClientFetch {
    ClientFetch {
        header: RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(12)
            .with_client_id(Some(StrBytes::from_string(client_id.to_owned()))),
        body,
        session_id: 0,
    }
}

#[test]
fn a_request_matches_in_any_partition_order_and_in_nothing_else() {
    let a = client_fetch(
        request(&[("orders", 0, 5), ("orders", 1, 9), ("audit", 0, 1)]),
        "c",
    );
    let reordered = client_fetch(
        request(&[("audit", 0, 1), ("orders", 1, 9), ("orders", 0, 5)]),
        "c",
    );
    assert!(a.same_as(&reordered));

    let other_offset = client_fetch(
        request(&[("orders", 0, 6), ("orders", 1, 9), ("audit", 0, 1)]),
        "c",
    );
    assert!(!a.same_as(&other_offset));
    let fewer = client_fetch(request(&[("orders", 0, 5), ("orders", 1, 9)]), "c");
    assert!(!a.same_as(&fewer));
    let other_client = client_fetch(
        request(&[("orders", 0, 5), ("orders", 1, 9), ("audit", 0, 1)]),
        "d",
    );
    assert!(!a.same_as(&other_client));
    let mut other_isolation = a.clone();
    other_isolation.body.isolation_level = 1;
    assert!(!a.same_as(&other_isolation));
    let mut other_wait = a.clone();
    other_wait.body.max_wait_ms = 100;
    assert!(!a.same_as(&other_wait));
    let mut other_version = a.clone();
    other_version.header.request_api_version = 11;
    assert!(!a.same_as(&other_version));
    // The same partitions asked for in another of the client's fetch sessions (one it opened
    // since): the held response names the old session, so it is not the answer.
    let mut other_session = a.clone();
    other_session.session_id = 7;
    assert!(!a.same_as(&other_session));
}

#[test]
fn only_sessionless_consumer_fetches_are_decoded_for_read_ahead() {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(12)
        .with_correlation_id(4);
    // What the forward stage keeps of a decoded request (a frame that does not decode is kept
    // as nothing: connection::tests::a_fetch_that_does_not_decode_is_forwarded_as_it_came).
    let kept = |body: &FetchRequest| {
        let frame = encode_request(ApiKey::Fetch, &header, body).unwrap();
        let (header, body) = decode_request::<FetchRequest>(ApiKey::Fetch, frame).unwrap();
        ClientFetch::new(header, body, 0)
    };
    let sessionless = request(&[("orders", 0, 0)]);
    assert!(kept(&sessionless).is_some());
    let mut in_session = sessionless.clone();
    in_session.session_id = 7;
    in_session.session_epoch = 1;
    assert!(kept(&in_session).is_none());
}

fn session() -> Arc<ClientSession> {
    Arc::new(ClientSession::new("127.0.0.1:40000".parse().unwrap()))
}

/// One read-ahead cycle's prediction, as the decode task of the response would make it.
fn predicted_by(sink: PredictionSink, last_offset: i64) -> Candidate {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = PredictionSink {
        to_forward: tx,
        ..sink
    };
    let from = sink.request.body.topics[0].partitions[0].fetch_offset;
    let resp = response(vec![(
        "orders",
        0,
        Some(records(&[batch(from, (last_offset - from) as i32, 1, 0)])),
    )]);
    sink.offer(&resp);
    *rx.try_recv().expect("a prediction")
}

fn read_ahead(enabled: bool) -> ReadAhead {
    ReadAhead::new(enabled, mpsc::unbounded_channel().0)
}

/// The client's next request is a Fetch (`None`: one that cannot be read ahead): numbered and
/// decided as the forward stage does.
fn client_fetches(
    ra: &mut ReadAhead,
    fetch: Option<&Arc<ClientFetch>>,
    session: &Arc<ClientSession>,
) -> FetchDecision {
    let seq = ra.on_request();
    ra.on_fetch(seq, fetch, session)
}

fn forwarded(decision: FetchDecision) -> Option<PredictionSink> {
    match decision {
        FetchDecision::Forward(sink) => sink,
        FetchDecision::Answer(id) => panic!("answered with read-ahead {id}, expected a forward"),
    }
}

fn fetched_offsets(request: &ReadAheadRequest) -> Vec<(String, i32, i64, i32)> {
    let (_, body) = decode_request::<FetchRequest>(ApiKey::Fetch, request.frame.clone()).unwrap();
    offsets(&body)
}

#[test]
fn matching_fetches_are_answered_ahead_with_two_read_aheads_in_flight() {
    let mut ra = read_ahead(true);
    let s = session();
    let first = Arc::new(client_fetch(request(&[("orders", 0, 0)]), "c"));

    // The client's first Fetch is forwarded; its response predicts offset 10.
    let sink = forwarded(client_fetches(&mut ra, Some(&first), &s)).expect("read ahead");
    let ra0 = ra
        .on_candidate(predicted_by(sink, 9))
        .expect("sent at once");
    assert_eq!(ra0.id, 0);
    assert!(ra0.meta.correlation_id < 0, "Kapsule's own correlation id");
    let (header, body) = decode_request::<FetchRequest>(ApiKey::Fetch, ra0.frame.clone()).unwrap();
    assert_eq!(header.correlation_id, ra0.meta.correlation_id);
    assert_eq!(header.client_id, first.header.client_id);
    assert_eq!(body.max_wait_ms, 0, "never parks in the broker's purgatory");
    assert_eq!(offsets(&body), vec![("orders".into(), 0, 10, -1)]);

    // Read-ahead 0's response predicts offset 20: a second read-ahead goes out at once; the
    // prediction from that one's response waits, as two are outstanding.
    let ra1 = ra
        .on_candidate(predicted_by(ra0.sink, 19))
        .expect("depth 2");
    assert_eq!(fetched_offsets(&ra1), vec![("orders".into(), 0, 20, -1)]);
    assert!(ra.on_candidate(predicted_by(ra1.sink, 29)).is_none());

    // The client asks for offset 10: answered with read-ahead 0; the kept prediction goes out.
    let second = Arc::new(client_fetch(request(&[("orders", 0, 10)]), "c"));
    assert!(matches!(
        client_fetches(&mut ra, Some(&second), &s),
        FetchDecision::Answer(0)
    ));
    let ra2 = ra.after_claim().expect("the kept prediction is sent");
    assert_eq!(ra2.id, 2);
    assert_eq!(fetched_offsets(&ra2), vec![("orders".into(), 0, 30, -1)]);

    // Offset 20: read-ahead 1. Read-ahead 2's prediction, arriving after, is sent on arrival.
    let third = Arc::new(client_fetch(request(&[("orders", 0, 20)]), "c"));
    assert!(matches!(
        client_fetches(&mut ra, Some(&third), &s),
        FetchDecision::Answer(1)
    ));
    assert!(ra.after_claim().is_none());
    let ra3 = ra
        .on_candidate(predicted_by(ra2.sink, 39))
        .expect("sent on arrival");
    assert_eq!(ra3.id, 3);

    // A prediction from a read-ahead that is not the newest is stale.
    let stale = Arc::new(client_fetch(request(&[("orders", 0, 20)]), "c"));
    let stale_sink = PredictionSink {
        origin: Origin::ReadAhead(1),
        request: stale,
        session: s.clone(),
        to_forward: mpsc::unbounded_channel().0,
    };
    assert!(ra.on_candidate(predicted_by(stale_sink, 25)).is_none());
    assert_eq!(
        ra.counts,
        ReadAheadCounts {
            sent: 4,
            served: 2,
            dropped: 0
        }
    );

    // A seek drops both outstanding read-aheads and is forwarded.
    let seek = Arc::new(client_fetch(request(&[("orders", 0, 5)]), "c"));
    assert!(
        forwarded(client_fetches(&mut ra, Some(&seek), &s)).is_none(),
        "paused after a miss"
    );
    assert_eq!(ra.counts.dropped, 2);
    assert!(
        ra.on_candidate(predicted_by(ra3.sink, 49)).is_none(),
        "the broken chain's predictions are not sent"
    );
}

#[test]
fn a_fetch_that_does_not_match_is_forwarded_and_read_ahead_pauses() {
    let mut ra = read_ahead(true);
    let s = session();
    let first = Arc::new(client_fetch(request(&[("orders", 0, 0)]), "c"));
    let sink = forwarded(client_fetches(&mut ra, Some(&first), &s)).unwrap();
    ra.on_candidate(predicted_by(sink, 9)).unwrap();

    // The client seeks back instead.
    let seek = Arc::new(client_fetch(request(&[("orders", 0, 3)]), "c"));
    assert!(
        forwarded(client_fetches(&mut ra, Some(&seek), &s)).is_none(),
        "paused after a miss"
    );
    assert_eq!(ra.counts.dropped, 1);
    assert!(
        forwarded(client_fetches(&mut ra, Some(&seek), &s)).is_none(),
        "still paused"
    );
    assert!(
        forwarded(client_fetches(&mut ra, Some(&seek), &s)).is_some(),
        "resumed"
    );
}

#[test]
fn a_prediction_is_not_sent_after_another_request_or_beside_an_outstanding_one() {
    let mut ra = read_ahead(true);
    let s = session();
    let first = Arc::new(client_fetch(request(&[("orders", 0, 0)]), "c"));
    let sink = forwarded(client_fetches(&mut ra, Some(&first), &s)).unwrap();
    // A SaslHandshake (re-authentication) or any other request came in between.
    ra.on_request();
    assert!(ra.on_candidate(predicted_by(sink, 9)).is_none());
    assert_eq!(ra.counts.sent, 0);

    // Nor is a chain continued while the client's last request was not a Fetch.
    let sink = forwarded(client_fetches(&mut ra, Some(&first), &s)).unwrap();
    let ra0 = ra.on_candidate(predicted_by(sink, 9)).unwrap();
    ra.on_request();
    assert!(ra.on_candidate(predicted_by(ra0.sink, 19)).is_none());
    assert_eq!(ra.counts.sent, 1);

    // Disabled: nothing is read ahead.
    let mut off = read_ahead(false);
    assert!(forwarded(client_fetches(&mut off, Some(&first), &s)).is_none());

    // A fetch that cannot be read ahead (a session) drops the outstanding read-ahead.
    let mut ra = read_ahead(true);
    let sink = forwarded(client_fetches(&mut ra, Some(&first), &s)).unwrap();
    ra.on_candidate(predicted_by(sink, 9)).unwrap();
    assert!(forwarded(client_fetches(&mut ra, None, &s)).is_none());
    assert_eq!(ra.counts.dropped, 1);
}
