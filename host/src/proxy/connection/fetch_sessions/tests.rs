use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;

use super::*;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn partition(index: i32, offset: i64) -> FetchPartition {
    FetchPartition::default()
        .with_partition(index)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(1 << 20)
}

fn topic(t: &str, partitions: Vec<FetchPartition>) -> FetchTopic {
    FetchTopic::default()
        .with_topic(name(t))
        .with_partitions(partitions)
}

fn request(session_id: i32, epoch: i32, topics: Vec<FetchTopic>) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_max_bytes(50 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(topics)
}

/// (topic, partition, fetch offset) of each partition a request asks for, in request order.
fn asked(r: &FetchRequest) -> Vec<(String, i32, i64)> {
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.topic.0.to_string(), p.partition, p.fetch_offset))
        })
        .collect()
}

fn forwarded(served: Served) -> (Box<FetchRequest>, i32) {
    match served {
        Served::Sessionless {
            request,
            session_id,
        } => {
            assert_eq!((request.session_id, request.session_epoch), (0, -1));
            assert!(request.forgotten_topics_data.is_empty());
            (request, session_id)
        }
        other => panic!("expected a sessionless request, got {other:?}"),
    }
}

#[test]
fn a_session_is_opened_by_a_full_fetch_and_followed_by_incremental_ones() {
    let mut sessions = FetchSessions::new();
    let full = request(
        0,
        0,
        vec![
            topic("a", vec![partition(0, 10), partition(1, 20)]),
            topic("b", vec![partition(0, 5)]),
        ],
    );
    let (sent, id) = forwarded(sessions.serve(12, &full));
    assert_ne!(id, 0, "a full fetch opens a session");
    assert_eq!(
        asked(&sent),
        [("a".into(), 0, 10), ("a".into(), 1, 20), ("b".into(), 0, 5)]
    );
    assert_eq!(sent.max_wait_ms, 500, "the client's other fields are kept");

    // a-0 advanced: only it is sent; the broker is asked for all three, a-0 after a-1 (each
    // topic listed once, where its first partition comes in the session's order).
    let inc = request(id, 1, vec![topic("a", vec![partition(0, 15)])]);
    let (sent, same) = forwarded(sessions.serve(12, &inc));
    assert_eq!(same, id);
    assert_eq!(
        asked(&sent),
        [("a".into(), 1, 20), ("a".into(), 0, 15), ("b".into(), 0, 5)]
    );
    assert_eq!(sent.topics.len(), 2);
    // b-0 advanced: b moves behind a.
    let inc = request(id, 2, vec![topic("b", vec![partition(0, 8)])]);
    let (sent, _) = forwarded(sessions.serve(12, &inc));
    assert_eq!(
        asked(&sent),
        [("a".into(), 1, 20), ("a".into(), 0, 15), ("b".into(), 0, 8)]
    );

    // b-0 forgotten, a-1 advanced.
    let inc =
        request(id, 3, vec![topic("a", vec![partition(1, 30)])]).with_forgotten_topics_data(vec![
            ForgottenTopic::default()
                .with_topic(name("b"))
                .with_partitions(vec![0]),
        ]);
    let (sent, _) = forwarded(sessions.serve(12, &inc));
    assert_eq!(asked(&sent), [("a".into(), 0, 15), ("a".into(), 1, 30)]);
    assert_eq!(sent.topics.len(), 1);

    // Nothing changed: every partition is asked for again.
    let (sent, _) = forwarded(sessions.serve(12, &request(id, 4, vec![])));
    assert_eq!(asked(&sent), [("a".into(), 0, 15), ("a".into(), 1, 30)]);
}

#[test]
fn unknown_sessions_and_wrong_epochs_are_refused_as_a_broker_refuses_them() {
    let mut sessions = FetchSessions::new();
    let (_, id) =
        forwarded(sessions.serve(12, &request(0, 0, vec![topic("a", vec![partition(0, 0)])])));
    assert_eq!(
        sessions.serve(12, &request(id.wrapping_add(7), 1, vec![])),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
    assert_eq!(
        sessions.serve(12, &request(id, 2, vec![])),
        Served::Refused(ResponseError::InvalidFetchSessionEpoch)
    );
    // The session is still there at its epoch.
    assert_eq!(forwarded(sessions.serve(12, &request(id, 1, vec![]))).1, id);
    // A retry of an epoch already used is refused too.
    assert_eq!(
        sessions.serve(12, &request(id, 1, vec![])),
        Served::Refused(ResponseError::InvalidFetchSessionEpoch)
    );

    // A full fetch naming the session closes it and opens another.
    let (_, new_id) =
        forwarded(sessions.serve(12, &request(id, 0, vec![topic("a", vec![partition(0, 3)])])));
    assert_ne!(new_id, id);
    assert_eq!(
        sessions.serve(12, &request(id, 2, vec![])),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
    // Epoch -1 with an id closes it; that request itself goes sessionless, without a session.
    let (sent, none) = forwarded(sessions.serve(
        12,
        &request(new_id, -1, vec![topic("a", vec![partition(0, 3)])]),
    ));
    assert_eq!((none, asked(&sent)), (0, vec![("a".into(), 0, 3)]));
    assert_eq!(
        sessions.serve(12, &request(new_id, 1, vec![])),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
}

#[test]
fn sessionless_follower_and_old_requests_pass_unchanged() {
    let mut sessions = FetchSessions::new();
    let one = vec![topic("a", vec![partition(0, 0)])];
    assert_eq!(
        sessions.serve(12, &request(0, -1, one.clone())),
        Served::Unchanged
    );
    assert_eq!(
        sessions.serve(6, &request(0, 0, one.clone())),
        Served::Unchanged
    );
    let follower = request(0, 0, one).with_replica_id(BrokerId(2));
    assert_eq!(sessions.serve(12, &follower), Served::Unchanged);
}

#[test]
fn sessions_are_bounded_in_number_and_size() {
    let mut sessions = FetchSessions::new();
    let one = || vec![topic("a", vec![partition(0, 0)])];
    let ids: Vec<i32> = (0..=MAX_SESSIONS)
        .map(|_| forwarded(sessions.serve(12, &request(0, 0, one()))).1)
        .collect();
    // The oldest was closed to make room for the newest.
    assert_eq!(
        sessions.serve(12, &request(ids[0], 1, vec![])),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
    assert_eq!(
        forwarded(sessions.serve(12, &request(ids[MAX_SESSIONS], 1, vec![]))).1,
        ids[MAX_SESSIONS]
    );

    // Too many partitions for a session: served without one.
    let many = |from: i32, n: i32| {
        vec![topic(
            "a",
            (from..from + n).map(|p| partition(p, 0)).collect(),
        )]
    };
    let limit = MAX_SESSION_PARTITIONS as i32;
    let (sent, id) = forwarded(sessions.serve(12, &request(0, 0, many(0, limit + 1))));
    assert_eq!((id, asked(&sent).len()), (0, MAX_SESSION_PARTITIONS + 1));
    // A session that would outgrow the limit is closed.
    let (_, id) = forwarded(sessions.serve(12, &request(0, 0, many(0, limit))));
    assert_ne!(id, 0);
    assert_eq!(
        sessions.serve(12, &request(id, 1, many(limit, 1))),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
    assert_eq!(
        sessions.serve(12, &request(id, 1, vec![])),
        Served::Refused(ResponseError::FetchSessionIdNotFound)
    );
}

#[test]
fn topic_ids_key_the_session_from_version_13() {
    let mut sessions = FetchSessions::new();
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let by_id = |id: Uuid, p: i32, offset: i64| {
        FetchTopic::default()
            .with_topic_id(id)
            .with_partitions(vec![partition(p, offset)])
    };
    let (_, session) =
        forwarded(sessions.serve(13, &request(0, 0, vec![by_id(a, 0, 1), by_id(b, 0, 2)])));
    let inc = request(session, 1, vec![by_id(b, 0, 9)]).with_forgotten_topics_data(vec![
        ForgottenTopic::default()
            .with_topic_id(a)
            .with_partitions(vec![0]),
    ]);
    let (sent, _) = forwarded(sessions.serve(13, &inc));
    assert_eq!(sent.topics.len(), 1);
    assert_eq!(sent.topics[0].topic_id, b);
    assert_eq!(sent.topics[0].partitions[0].fetch_offset, 9);
}
