//! Broker responses that need work before they reach the client: address rewriting (Metadata,
//! FindCoordinator, DescribeCluster, and the node endpoints of Produce, Fetch, ShareFetch and
//! ShareAcknowledge), API version intersection, and the record stage of Fetch and ShareFetch.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceResponse, ShareAcknowledgeResponse, ShareFetchResponse,
};

use super::path::ResponseStage;
use super::read_ahead::PredictionSink;
use crate::kafka::frame::{decode_fetch_response, decode_response, encode_response, RequestMeta};
use crate::proxy::records::StagedFetch;
use crate::proxy::rewrite;
use crate::proxy::session::ClientSession;
use crate::proxy::ProxyShared;

/// Whether a Fetch response must be decoded (records to transform, or endpoints to rewrite).
pub(super) fn fetch_needs_decode(shared: &ProxyShared, meta: RequestMeta) -> bool {
    meta.api_version >= 16 || shared.records.transforms_fetch()
}

/// Decodes a Fetch response, rewrites its endpoints and runs the record stage over it. Once it
/// is decoded, and before its records are decrypted, the client's next request is predicted
/// from it for `read_ahead`.
pub(super) async fn fetch_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    frame: Bytes,
    session: &ClientSession,
    reply_session: Option<i32>,
    read_ahead: Option<PredictionSink>,
) -> anyhow::Result<StagedFetch> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    let (header, mut body) = decode_fetch_response(v, frame)?;
    if let Some(id) = reply_session {
        body.session_id = id;
    }
    if let Some(sink) = read_ahead {
        sink.offer(&body);
    }
    rewrite::rewrite_fetch_endpoints(&mut body, adv)?;
    shared.records.stage_fetch(v, &header, body, session).await
}

/// Decodes a ShareFetch response (KIP-932 share groups), rewrites its endpoints and runs the
/// record stage over the acquired records.
pub(super) async fn share_fetch_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    frame: Bytes,
    session: &ClientSession,
) -> anyhow::Result<StagedFetch> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    let (header, mut body) = decode_response::<ShareFetchResponse>(ApiKey::ShareFetch, v, frame)?;
    rewrite::rewrite_share_fetch_endpoints(&mut body, adv)?;
    shared
        .records
        .stage_share_fetch(v, &header, body, session)
        .await
}

/// Applies a response stage that needs no record work.
pub(super) fn rewrite_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    stage: ResponseStage,
    frame: Bytes,
) -> anyhow::Result<Bytes> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    Ok(match stage {
        // Fetch and ShareFetch never come here: `RelayResponse::new` refuses their frames.
        ResponseStage::Relay
        | ResponseStage::Fetch(..)
        | ResponseStage::ShareFetch(_)
        | ResponseStage::Sasl(_) => frame,
        ResponseStage::ShareAcknowledge => {
            let api = ApiKey::ShareAcknowledge;
            let (header, mut body) = decode_response::<ShareAcknowledgeResponse>(api, v, frame)?;
            rewrite::rewrite_share_acknowledge_endpoints(&mut body, adv)?;
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::ApiVersions => {
            let api = ApiKey::ApiVersions;
            let (header, mut body) = decode_response::<ApiVersionsResponse>(api, v, frame)?;
            rewrite::rewrite_api_versions(&mut body);
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::Metadata => {
            let api = ApiKey::Metadata;
            let (header, mut body) = decode_response::<MetadataResponse>(api, v, frame)?;
            shared.records.topic_ids().learn_metadata(&body);
            rewrite::rewrite_metadata(&mut body, adv)?;
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::FindCoordinator => {
            let api = ApiKey::FindCoordinator;
            let (header, mut body) = decode_response::<FindCoordinatorResponse>(api, v, frame)?;
            rewrite::rewrite_find_coordinator(&mut body, adv)?;
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::DescribeCluster => {
            let api = ApiKey::DescribeCluster;
            let (header, mut body) = decode_response::<DescribeClusterResponse>(api, v, frame)?;
            rewrite::rewrite_describe_cluster(&mut body, adv)?;
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::Produce(patch) => {
            // node_endpoints exist from v10; before that only a refusal patch needs a decode.
            if v < 10 && patch.is_empty() {
                return Ok(frame);
            }
            let api = ApiKey::Produce;
            let (header, mut body) = decode_response::<ProduceResponse>(api, v, frame)?;
            rewrite::rewrite_produce_endpoints(&mut body, adv)?;
            patch.merge_into(&mut body);
            encode_response(api, v, &header, &body)?
        }
    })
}
