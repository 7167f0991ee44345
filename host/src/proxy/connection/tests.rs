//! A Fetch is answered for the client as it was when the request was read.

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
