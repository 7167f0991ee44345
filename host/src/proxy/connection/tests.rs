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
    let prepared = prepare_relay(meta, frame, &session, false).unwrap();
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
    let prepared = prepare_relay(meta, frame, &session, false).unwrap();
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
    let prepared = prepare_relay(meta, frame.clone(), &session, false).unwrap();
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
