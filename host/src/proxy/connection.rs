//! One client connection: requests relayed to the matching broker in order, responses relayed
//! back in the same order.
//!
//! Two halves run concurrently. The request half reads a frame from the client, decides what the
//! response will need (a [`Pending`] entry), forwards the (possibly rewritten) request upstream and
//! queues the entry; the response half takes entries in order, reads the matching broker response,
//! applies the entry's stage and writes it to the client. Each outstanding request holds one of
//! `max_in_flight` permits until its response is written, so a client that stops reading
//! responses stops the proxy reading its requests: memory per connection is bounded by about
//! `max_in_flight × max_frame_bytes`.
//!
//! A response the proxy makes itself (an ApiVersions fallback, a Produce refused before any
//! partition reached the broker) is queued as [`Pending::Local`] so ordering still holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceRequest, ProduceResponse, ResponseHeader,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::records::ProducePatch;
use super::rewrite;
use super::tls::BoxStream;
use super::{ProxyShared, Route};
use crate::admin::metrics::Direction;
use crate::kafka::frame::{
    decode_request, decode_response, encode_request, encode_response, produce_acks, read_frame,
    response_correlation_id, write_frame, FrameError, RequestMeta,
};

type OwnedReadHalf = ReadHalf<BoxStream>;
type OwnedWriteHalf = WriteHalf<BoxStream>;

/// What the response half must do for one request.
enum Pending {
    /// A response will come from the broker.
    Upstream {
        meta: RequestMeta,
        sent_at: Instant,
        stage: ResponseStage,
    },
    /// The proxy answers this request itself with this frame body.
    Local { api_key: i16, frame: Bytes },
}

/// How a broker response is handled.
enum ResponseStage {
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
    /// Rewrite node endpoints; decrypt / re-encode records.
    Fetch,
}

/// Serves one accepted client connection until either side closes. `client` is the accepted
/// stream after any PROXY header and TLS handshake; `peer` the client's (real) address.
pub async fn serve(shared: Arc<ProxyShared>, client: BoxStream, peer: SocketAddr, route: Route) {
    shared.metrics.connection_opened();
    if let Err(e) = serve_inner(&shared, client, peer, &route).await {
        debug!(%peer, error = %format!("{e:#}"), "connection ended with error");
    }
    shared.metrics.connection_closed();
}

async fn serve_inner(
    shared: &Arc<ProxyShared>,
    client: BoxStream,
    peer: SocketAddr,
    route: &Route,
) -> anyhow::Result<()> {
    let upstream_addr = shared.upstream_for(route)?;
    let connect = shared.upstream.connect(upstream_addr.as_str());
    let upstream = match tokio::time::timeout(
        Duration::from_millis(shared.config.upstream_connect_timeout_ms),
        connect,
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.error("upstream_connect");
            warn!(%peer, upstream = %upstream_addr, error = %format!("{e:#}"), "cannot reach broker; closing client connection so it retries");
            return Ok(());
        }
        Err(_) => {
            shared.metrics.error("upstream_connect");
            warn!(%peer, upstream = %upstream_addr, "timed out connecting to broker; closing client connection");
            return Ok(());
        }
    };
    debug!(%peer, upstream = %upstream_addr, "connection opened");

    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let (tx, rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));

    let requests = request_half(shared, client_read, upstream_write, tx, in_flight, peer);
    let responses = response_half(shared, upstream_read, client_write, rx, peer);
    tokio::pin!(requests, responses);
    tokio::select! {
        r = &mut requests => {
            // The client closed, misbehaved or shutdown began: deliver what is in flight, then close.
            if let Err(e) = r {
                log_request_error(shared, peer, &e);
            }
            let drain = Duration::from_secs(shared.config.shutdown_timeout_secs);
            match tokio::time::timeout(drain, &mut responses).await {
                Ok(Err(e)) => debug!(%peer, error = %format!("{e:#}"), "response half ended with error"),
                Err(_) => warn!(%peer, "in-flight responses not delivered before timeout"),
                Ok(Ok(())) => {}
            }
        }
        r = &mut responses => {
            if let Err(e) = r {
                log_response_error(shared, peer, &e);
            }
        }
    }
    debug!(%peer, "connection closed");
    Ok(())
}

fn log_request_error(shared: &ProxyShared, peer: SocketAddr, e: &anyhow::Error) {
    match e.downcast_ref::<FrameError>() {
        Some(FrameError::TooLarge { size, max }) => {
            shared.metrics.error("frame_too_large");
            warn!(%peer, size, max, "client sent a frame larger than max_frame_bytes; closing connection");
        }
        Some(FrameError::Io(_)) | Some(FrameError::Truncated { .. }) => {
            debug!(%peer, error = %e, "client connection dropped");
        }
        _ => {
            shared.metrics.error("client_protocol");
            warn!(%peer, error = %format!("{e:#}"), "closing client connection");
        }
    }
}

fn log_response_error(shared: &ProxyShared, peer: SocketAddr, e: &anyhow::Error) {
    match e.downcast_ref::<FrameError>() {
        Some(FrameError::TooLarge { size, max }) => {
            shared.metrics.error("frame_too_large");
            warn!(%peer, size, max, "broker sent a frame larger than max_frame_bytes; closing connection");
        }
        Some(FrameError::Io(_)) | Some(FrameError::Truncated { .. }) => {
            shared.metrics.error("upstream_closed");
            info!(%peer, error = %e, "broker connection lost; closing client connection");
        }
        _ => {
            shared.metrics.error("upstream_protocol");
            warn!(%peer, error = %format!("{e:#}"), "closing connection");
        }
    }
}

async fn request_half(
    shared: &Arc<ProxyShared>,
    mut client: OwnedReadHalf,
    upstream: OwnedWriteHalf,
    tx: mpsc::UnboundedSender<(Pending, OwnedSemaphorePermit)>,
    in_flight: Arc<Semaphore>,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let mut upstream = BufWriter::with_capacity(64 * 1024, upstream);
    let mut shutdown = shared.shutdown_signal();
    let max = shared.config.max_frame_bytes;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut client, max) => f?,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        // Wait for a free in-flight slot before forwarding: a client that does not read its
        // responses stops being read from once `max_in_flight` requests are outstanding.
        let permit = in_flight.clone().acquire_owned().await?;
        let meta = RequestMeta::parse(&frame)?;
        shared
            .metrics
            .frame(Direction::Request, meta.api_key, frame.len());
        let (forward, pending) = handle_request(shared, meta, frame, peer)
            .await
            .with_context(|| {
                format!(
                    "request {} v{} (correlation id {})",
                    crate::admin::metrics::api_name(meta.api_key),
                    meta.api_version,
                    meta.correlation_id
                )
            })?;
        if let Some(body) = forward {
            write_frame(&mut upstream, &body).await?;
            upstream.flush().await?;
        }
        if let Some(p) = pending {
            if tx.send((p, permit)).is_err() {
                return Ok(());
            }
        }
    }
}

/// Decides what to forward and what the response needs. Returns (frame to forward, pending entry).
async fn handle_request(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    frame: Bytes,
    peer: SocketAddr,
) -> anyhow::Result<(Option<Bytes>, Option<Pending>)> {
    let upstream = |stage| Pending::Upstream {
        meta,
        sent_at: Instant::now(),
        stage,
    };
    let Some(api) = meta.known_api() else {
        return Ok((Some(frame), Some(upstream(ResponseStage::Relay))));
    };
    match api {
        ApiKey::ApiVersions => {
            if meta.api_version > ApiVersionsResponse::VERSIONS_MAX {
                let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
                let body = rewrite::unsupported_api_versions_response();
                let frame = encode_response(api, 0, &header, &body)?;
                return Ok((
                    None,
                    Some(Pending::Local {
                        api_key: meta.api_key,
                        frame,
                    }),
                ));
            }
            Ok((Some(frame), Some(upstream(ResponseStage::ApiVersions))))
        }
        ApiKey::Metadata => Ok((Some(frame), Some(upstream(ResponseStage::Metadata)))),
        ApiKey::FindCoordinator => {
            Ok((Some(frame), Some(upstream(ResponseStage::FindCoordinator))))
        }
        ApiKey::DescribeCluster => {
            Ok((Some(frame), Some(upstream(ResponseStage::DescribeCluster))))
        }
        ApiKey::Fetch => Ok((Some(frame), Some(upstream(ResponseStage::Fetch)))),
        ApiKey::Produce => {
            if !shared.records.transforms_produce() {
                let acks = produce_acks(&frame)?;
                let pending =
                    (acks != 0).then(|| upstream(ResponseStage::Produce(ProducePatch::default())));
                return Ok((Some(frame), pending));
            }
            let (header, mut request) = decode_request::<ProduceRequest>(api, frame)?;
            let acks = request.acks;
            let patch = shared.records.on_produce(&mut request, peer).await;
            if request.topic_data.is_empty() {
                // Every partition was refused: answer without involving the broker.
                if acks == 0 {
                    return Ok((None, None));
                }
                let response = patch.into_response();
                let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
                let frame = encode_response(api, meta.api_version, &header, &response)?;
                return Ok((
                    None,
                    Some(Pending::Local {
                        api_key: meta.api_key,
                        frame,
                    }),
                ));
            }
            let body = encode_request(api, &header, &request)?;
            let pending = (acks != 0).then(|| upstream(ResponseStage::Produce(patch)));
            Ok((Some(body), pending))
        }
        _ => Ok((Some(frame), Some(upstream(ResponseStage::Relay)))),
    }
}

async fn response_half(
    shared: &Arc<ProxyShared>,
    mut upstream: OwnedReadHalf,
    client: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Pending, OwnedSemaphorePermit)>,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let mut client = BufWriter::with_capacity(64 * 1024, client);
    let max = shared.config.max_frame_bytes;
    while let Some((pending, _permit)) = rx.recv().await {
        let (api_key, out) = match pending {
            Pending::Local { api_key, frame } => (api_key, frame),
            Pending::Upstream {
                meta,
                sent_at,
                stage,
            } => {
                let frame = read_frame(&mut upstream, max).await?.ok_or_else(|| {
                    anyhow!(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                })?;
                shared
                    .metrics
                    .upstream_latency(meta.api_key, sent_at.elapsed());
                let got = response_correlation_id(&frame)?;
                if got != meta.correlation_id {
                    bail!(
                        "broker answered correlation id {got} where {} was expected: responses out of order",
                        meta.correlation_id
                    );
                }
                let out = handle_response(shared, meta, stage, frame, peer)
                    .await
                    .with_context(|| {
                        format!(
                            "response to {} v{}",
                            crate::admin::metrics::api_name(meta.api_key),
                            meta.api_version
                        )
                    })?;
                (meta.api_key, out)
            }
        };
        shared
            .metrics
            .frame(Direction::Response, api_key, out.len());
        write_frame(&mut client, &out).await?;
        if rx.is_empty() {
            client.flush().await?;
        }
    }
    client.flush().await?;
    Ok(())
}

async fn handle_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    stage: ResponseStage,
    frame: Bytes,
    peer: SocketAddr,
) -> anyhow::Result<Bytes> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    Ok(match stage {
        ResponseStage::Relay => frame,
        ResponseStage::ApiVersions => {
            let api = ApiKey::ApiVersions;
            let (header, mut body) = decode_response::<ApiVersionsResponse>(api, v, frame)?;
            rewrite::rewrite_api_versions(&mut body);
            encode_response(api, v, &header, &body)?
        }
        ResponseStage::Metadata => {
            let api = ApiKey::Metadata;
            let (header, mut body) = decode_response::<MetadataResponse>(api, v, frame)?;
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
        ResponseStage::Fetch => {
            if v < 16 && !shared.records.transforms_fetch() {
                return Ok(frame);
            }
            let api = ApiKey::Fetch;
            let (header, mut body) = decode_response::<FetchResponse>(api, v, frame)?;
            rewrite::rewrite_fetch_endpoints(&mut body, adv)?;
            shared.records.on_fetch(&mut body, peer).await?;
            encode_response(api, v, &header, &body)?
        }
    })
}

/// ApiVersions' highest version, as a constant usable in patterns.
trait VersionsMax {
    const VERSIONS_MAX: i16;
}
impl VersionsMax for ApiVersionsResponse {
    const VERSIONS_MAX: i16 =
        <ApiVersionsResponse as kafka_protocol::protocol::Message>::VERSIONS.max;
}
