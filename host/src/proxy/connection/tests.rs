//! A Fetch (or ShareFetch) is answered for the client as it was when the request was read.

use kafka_protocol::messages::{FetchRequest, RequestHeader};

use super::*;
use crate::kafka::frame::encode_request;
use crate::principal::{AuthMechanism, Principal};

fn fetch_frame() -> (RequestMeta, Bytes) {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(12)
        .with_correlation_id(3);
    let frame = encode_request(ApiKey::Fetch, &header, &FetchRequest::default()).unwrap();
    (RequestMeta::parse(&frame).unwrap(), frame)
}

/// Issue 17, item 9: under `authentication: optional` a client may send a Fetch anonymously and
/// then authenticate on the same connection. The broker served the Fetch to an anonymous
/// client; its records must not be revealed under the principal that a later SASL answer sets
/// while the response is still being processed.
#[test]
fn a_fetch_keeps_the_principal_it_was_read_under() {
    let session = ClientSession::new("127.0.0.1:40000".parse().unwrap());
    let (meta, frame) = fetch_frame();
    let prepared = prepare_relay(meta, frame, &session, None).unwrap();
    session
        .set_principal(Principal::new("analytics", AuthMechanism::SaslPlain))
        .unwrap();
    let Expect::Upstream(ResponseStage::Fetch(snapshot, _)) = prepared.expect else {
        panic!("a Fetch is relayed through the Fetch stage");
    };
    assert!(
        snapshot.principal().is_none(),
        "the Fetch was read before authentication"
    );
    assert_eq!(snapshot.peer(), session.peer());

    // Read after authentication: the principal is carried.
    let (meta, frame) = fetch_frame();
    let prepared = prepare_relay(meta, frame, &session, None).unwrap();
    let Expect::Upstream(ResponseStage::Fetch(snapshot, _)) = prepared.expect else {
        panic!("a Fetch is relayed through the Fetch stage");
    };
    assert_eq!(snapshot.principal().unwrap().name(), "analytics");
}

/// A ShareFetch goes through the record stage like a Fetch, under the principal it was read
/// under, and its response can never leave as a relayed frame.
#[test]
fn a_share_fetch_takes_the_record_stage_and_never_the_relay() {
    let session = ClientSession::new("127.0.0.1:40000".parse().unwrap());
    session
        .set_principal(Principal::new("analytics", AuthMechanism::SaslPlain))
        .unwrap();
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ShareFetch as i16)
        .with_request_api_version(1)
        .with_correlation_id(4);
    let frame = encode_request(
        ApiKey::ShareFetch,
        &header,
        &kafka_protocol::messages::ShareFetchRequest::default(),
    )
    .unwrap();
    let meta = RequestMeta::parse(&frame).unwrap();
    let prepared = prepare_relay(meta, frame.clone(), &session, None).unwrap();
    let Expect::Upstream(ResponseStage::ShareFetch(snapshot)) = prepared.expect else {
        panic!("a ShareFetch is relayed through the ShareFetch stage");
    };
    assert_eq!(snapshot.principal().unwrap().name(), "analytics");
    for api in [ApiKey::Fetch, ApiKey::ShareFetch] {
        assert!(
            RelayResponse::new(api as i16, frame.clone()).is_err(),
            "a {api:?} response was accepted as a relayed frame"
        );
    }
}

fn fetch_in_session(correlation_id: i32, session_id: i32, epoch: i32) -> (RequestMeta, Bytes) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(12)
        .with_correlation_id(correlation_id);
    let body = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(vec![FetchTopic::default()
            .with_topic(kafka_protocol::messages::TopicName(
                kafka_protocol::protocol::StrBytes::from_static_str("t"),
            ))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(7)])]);
    let frame = encode_request(ApiKey::Fetch, &header, &body).unwrap();
    (RequestMeta::parse(&frame).unwrap(), frame)
}

/// With read-ahead on, a Fetch in a KIP-227 session reaches the broker sessionless, keeping the
/// client's correlation id, and its response will carry Kapsule's session id; a request naming
/// a session this connection does not hold is answered here with FETCH_SESSION_ID_NOT_FOUND and
/// no partitions, and nothing is forwarded.
#[test]
fn a_session_fetch_goes_to_the_broker_sessionless_and_an_unknown_session_is_answered_here() {
    let session = ClientSession::new("127.0.0.1:40000".parse().unwrap());
    let mut sessions = FetchSessions::new();
    let (meta, frame) = fetch_in_session(5, 0, 0);
    let prepared = prepare_relay(meta, frame, &session, Some(&mut sessions)).unwrap();
    let sent = prepared.forward.expect("a full fetch is forwarded").parts()[0].clone();
    let (header, body) = decode_request::<FetchRequest>(ApiKey::Fetch, sent).unwrap();
    assert_eq!(header.correlation_id, 5);
    assert_eq!((body.session_id, body.session_epoch), (0, -1));
    assert_eq!(body.topics[0].partitions[0].fetch_offset, 7);
    let Expect::Upstream(ResponseStage::Fetch(_, Some(fetch))) = prepared.expect else {
        panic!("a session fetch keeps its request for read-ahead");
    };
    assert_ne!(fetch.session_id(), 0, "the response names the new session");

    let (meta, frame) = fetch_in_session(6, fetch.session_id().wrapping_add(1), 1);
    let prepared = prepare_relay(meta, frame, &session, Some(&mut sessions)).unwrap();
    assert!(
        prepared.forward.is_none(),
        "an unknown session is not forwarded"
    );
    let Expect::Local(ToClient::Fetch(staged)) = prepared.expect else {
        panic!("an unknown session is answered here");
    };
    let (header, body) =
        crate::kafka::frame::decode_fetch_response(12, staged.into_frame().to_bytes()).unwrap();
    assert_eq!(header.correlation_id, 6);
    assert_eq!(
        body.error_code,
        kafka_protocol::error::ResponseError::FetchSessionIdNotFound.code()
    );
    assert!(body.responses.is_empty());
}

/// A Fetch frame that does not decode is forwarded as it came (the broker answers it as it sees
/// fit) and kept as nothing to read ahead from.
#[test]
fn a_fetch_that_does_not_decode_is_forwarded_as_it_came() {
    let session = ClientSession::new("127.0.0.1:40000".parse().unwrap());
    let mut sessions = FetchSessions::new();
    let (_, frame) = fetch_in_session(8, 0, 0);
    let cut = frame.slice(..frame.len() - 3);
    let meta = RequestMeta::parse(&cut).unwrap();
    let prepared = prepare_relay(meta, cut.clone(), &session, Some(&mut sessions)).unwrap();
    let sent = prepared.forward.expect("forwarded").parts()[0].clone();
    assert_eq!(sent, cut);
    assert!(
        matches!(
            prepared.expect,
            Expect::Upstream(ResponseStage::Fetch(_, None))
        ),
        "nothing to read ahead from"
    );
}
