//! The frames a connection passes on, typed by the path they took: a Produce request leaves for
//! the broker only as the record stage's [`StagedProduce`], a Fetch or ShareFetch response
//! reaches the client only as its [`StagedFetch`]; every other API as a relay type that refuses
//! those.

use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::time::Instant;

use super::error::ConnectionError;
use super::read_ahead::{ClientFetch, PredictionSink, ReadAheadRequest};
use crate::kafka::frame::{FrameBody, RequestMeta};
use crate::metrics::api_name;
use crate::proxy::records::{ProducePatch, StagedFetch, StagedProduce};
use crate::proxy::rewrite;
use crate::proxy::sasl::SaslExpect;
use crate::proxy::session::ClientSession;

/// What the response half must do for one request.
pub(super) enum Pending {
    /// A response will come from the broker.
    Upstream {
        meta: RequestMeta,
        sent_at: Instant,
        stage: ResponseStage,
        /// A Fetch's: where the prediction made from its response goes.
        read_ahead: Option<PredictionSink>,
    },
    /// The proxy answers this request itself with this response.
    Local { api_key: i16, response: ToClient },
    /// A Fetch Kapsule sent ahead of the client ([`super::read_ahead`]): its response is
    /// decrypted and held, not written to the client.
    ReadAhead(ReadAheadRequest),
    /// The client's Fetch `meta`, answered with read-ahead `id`'s held response.
    FromReadAhead { meta: RequestMeta, id: u64 },
}

/// A request frame that leaves for the broker, typed by the path it took: a Produce can only
/// leave as the record stage's [`StagedProduce`], every other API only as a [`RelayRequest`],
/// which cannot hold a Produce.
pub(super) enum Forward {
    /// A request of an API that carries no records, as the client sent it.
    Relay(RelayRequest),
    /// A Produce request, as the record stage let it go.
    Produce(StagedProduce),
}

impl Forward {
    /// The frame body's pieces, written in order.
    pub(super) fn parts(&self) -> &[Bytes] {
        match self {
            Forward::Relay(r) => std::slice::from_ref(&r.0),
            Forward::Produce(p) => p.frame().parts(),
        }
    }
}

/// A request of an API that carries no records through Kapsule. Made only by
/// [`RelayRequest::new`], which refuses Produce and the [`rewrite::UNTRANSFORMED_APIS`].
pub(super) struct RelayRequest(Bytes);

impl RelayRequest {
    pub(super) fn new(meta: RequestMeta, frame: Bytes) -> Result<Self, ConnectionError> {
        match meta.known_api() {
            Some(api) if api == ApiKey::Produce || rewrite::UNTRANSFORMED_APIS.contains(&api) => {
                Err(ConnectionError::internal(anyhow!(
                    "a {api:?} request was about to be relayed without the record stage; refused"
                )))
            }
            _ => Ok(Self(frame)),
        }
    }
}

/// A response frame that leaves for the client, typed by the path it took: a Fetch or
/// ShareFetch response only as the record stage's [`StagedFetch`], every other API only as a
/// [`RelayResponse`].
pub(super) enum ToClient {
    /// A response of an API that carries no records (relayed, rewritten or made by Kapsule).
    Relay(RelayResponse),
    /// A Fetch or ShareFetch response, as the record stage let it go.
    Fetch(StagedFetch),
}

impl ToClient {
    /// This response as the answer to the request with `correlation_id` (a read-ahead's
    /// response given to the client's Fetch it matched).
    pub(super) fn answering(self, correlation_id: i32) -> Self {
        match self {
            ToClient::Relay(r) => ToClient::Relay(RelayResponse(answering(r.0, correlation_id))),
            ToClient::Fetch(f) => ToClient::Fetch(f.answering(correlation_id)),
        }
    }

    pub(super) fn into_frame(self) -> FrameBody {
        match self {
            ToClient::Relay(r) => r.0.into(),
            ToClient::Fetch(f) => f.into_frame(),
        }
    }
}

fn answering(frame: Bytes, correlation_id: i32) -> Bytes {
    let mut copy = bytes::BytesMut::from(&frame[..]);
    if copy.len() >= 4 {
        copy[..4].copy_from_slice(&correlation_id.to_be_bytes());
    }
    copy.freeze()
}

/// A response of an API that carries no records. Made only by [`RelayResponse::new`], which
/// refuses Fetch and ShareFetch.
pub(super) struct RelayResponse(Bytes);

impl RelayResponse {
    pub(super) fn new(api_key: i16, frame: Bytes) -> Result<Self, ConnectionError> {
        if api_key == ApiKey::Fetch as i16 || api_key == ApiKey::ShareFetch as i16 {
            let api = api_name(api_key);
            return Err(ConnectionError::internal(anyhow!(
                "a {api} response was about to reach the client without the record stage; refused"
            )));
        }
        Ok(Self(frame))
    }
}

/// How a broker response is handled.
pub(super) enum ResponseStage {
    /// Relay the bytes untouched.
    Relay,
    /// Intersect API versions.
    ApiVersions,
    /// Rewrite broker addresses.
    Metadata,
    /// Rewrite coordinator addresses.
    FindCoordinator,
    /// Rewrite broker addresses.
    DescribeCluster,
    /// Rewrite node endpoints; merge partitions the proxy refused.
    Produce(ProducePatch),
    /// Rewrite node endpoints; decrypt / re-encode records for the client as it was when the
    /// request was read (a principal set by a later SASL answer does not apply to it). Holds
    /// the decoded request when it may be read ahead.
    Fetch(Arc<ClientSession>, Option<Arc<ClientFetch>>),
    /// Rewrite node endpoints; decrypt / re-encode a share consumer's acquired records for the
    /// client as it was when the request was read.
    ShareFetch(Arc<ClientSession>),
    /// Rewrite node endpoints.
    ShareAcknowledge,
    /// Follow the SASL exchange (may set the session's principal); relay the bytes.
    Sasl(SaslExpect),
}

/// What answers a request once it is prepared.
pub(super) enum Expect {
    /// Nothing (Produce with `acks = 0`).
    Nothing,
    /// The proxy's own response.
    Local(ToClient),
    /// The broker's response, through this stage.
    Upstream(ResponseStage),
}

impl Expect {
    /// The proxy's own response frame for a request of an API that carries no records.
    pub(super) fn local(api_key: i16, frame: Bytes) -> Result<Self, ConnectionError> {
        Ok(Expect::Local(ToClient::Relay(RelayResponse::new(
            api_key, frame,
        )?)))
    }
}

/// A request ready to leave for the broker (or to be answered locally).
pub(super) struct Prepared {
    /// What to forward, if anything.
    pub(super) forward: Option<Forward>,
    /// What answers it.
    pub(super) expect: Expect,
    /// Produce only: past this instant the request is answered REQUEST_TIMED_OUT, not forwarded.
    pub(super) deadline: Option<Instant>,
}
