//! One client connection: pipelined requests prepared concurrently, forwarded to the matching
//! broker in the client's order, responses relayed back in the same order.
//!
//! Four stages run concurrently, linked by queues that keep request order:
//!
//! 1. **read requests**: read a frame, take one of `max_in_flight` permits, check the API and
//!    version against what Kapsule advertises ([`rewrite::check_request`]) and start preparing
//!    it. Only a Produce that goes through the record stage (policy, KMS, encryption) gets its own
//!    task; everything else is prepared inline, as it costs a header parse.
//! 2. **forward**: take preparations in request order, wait for each, refuse a Produce whose
//!    deadline passed (answered REQUEST_TIMED_OUT, never forwarded), write the rest upstream and
//!    queue what the response needs (a [`Pending`] entry).
//! 3. **read responses**: take entries in order, read the matching broker response and start its
//!    stage (a task for a Fetch whose records are decrypted, inline otherwise).
//! 4. **write responses**: take stages in order, wait for each and write it to the client.
//!
//! So a slow policy or KMS call delays only the requests queued behind it until it finishes,
//! while later requests are prepared in the meantime; Kafka's per-connection ordering (of the
//! requests the broker sees and of the responses the client sees) holds throughout.
//!
//! Each outstanding request holds its permit until its response is written (or, without a
//! response, until it is forwarded), so a client that stops reading responses stops the proxy
//! reading its requests. Broker responses are charged to the connection's allowance and the
//! process-wide memory budget ([`super::budget`]) from before they are read until they are
//! written: a connection whose client does not read holds at most its allowance (or one larger
//! response), and while it does, neither its broker connection nor its requests are read.
//!
//! A response the proxy makes itself (an ApiVersions fallback, a refused version, a Produce
//! refused or timed out before reaching the broker) is queued as [`Pending::Local`] so ordering
//! still holds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceRequest, ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::Message;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

mod produce;

use self::produce::{answer_late, prepare_produce, prepare_untransformed_produce};
use super::budget::{ResponseCharge, ResponseGate};
use super::records::{ProducePatch, StagedFetch, StagedProduce};
use super::rewrite::{self, UnsupportedRequest};
use super::sasl::{self, RequestAction, SaslExpect, SaslRefusal, SaslTracker};
use super::session::ClientSession;
use super::tls::BoxStream;
use super::{ProxyShared, Route};
use crate::error::Reason;
use crate::kafka::frame::{
    decode_fetch_response, decode_request, decode_response, encode_response, read_frame,
    read_frame_body, read_frame_len, response_correlation_id, FrameError, FrameWriter, RequestMeta,
};
use crate::metrics::api_name;
use crate::proxy::metrics::Direction;
use kafka_protocol::error::ResponseError;

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
    /// The proxy answers this request itself with this response.
    Local { api_key: i16, response: ToClient },
}

/// A request frame that leaves for the broker, typed by the path it took: a Produce can only
/// leave as the record stage's [`StagedProduce`], every other API only as a [`RelayRequest`],
/// which cannot hold a Produce.
enum Forward {
    /// A request of an API that carries no records, as the client sent it.
    Relay(RelayRequest),
    /// A Produce request, as the record stage let it go.
    Produce(StagedProduce),
}

impl Forward {
    fn frame(&self) -> &Bytes {
        match self {
            Forward::Relay(r) => &r.0,
            Forward::Produce(p) => p.frame(),
        }
    }
}

/// A request of an API that carries no records through Kapsule. Made only by
/// [`RelayRequest::new`], which refuses Produce and the [`rewrite::UNTRANSFORMED_APIS`].
struct RelayRequest(Bytes);

impl RelayRequest {
    fn new(meta: RequestMeta, frame: Bytes) -> anyhow::Result<Self> {
        match meta.known_api() {
            Some(api) if api == ApiKey::Produce || rewrite::UNTRANSFORMED_APIS.contains(&api) => {
                bail!("internal error: a {api:?} request was about to be relayed without the record stage; refused")
            }
            _ => Ok(Self(frame)),
        }
    }
}

/// A response frame that leaves for the client, typed by the path it took: a Fetch response
/// only as the record stage's [`StagedFetch`], every other API only as a [`RelayResponse`].
enum ToClient {
    /// A response of an API that carries no records (relayed, rewritten or made by Kapsule).
    Relay(RelayResponse),
    /// A Fetch response, as the record stage let it go.
    Fetch(StagedFetch),
}

impl ToClient {
    fn into_frame(self) -> Bytes {
        match self {
            ToClient::Relay(r) => r.0,
            ToClient::Fetch(f) => f.into_frame(),
        }
    }
}

/// A response of an API that carries no records. Made only by [`RelayResponse::new`], which
/// refuses Fetch.
struct RelayResponse(Bytes);

impl RelayResponse {
    fn new(api_key: i16, frame: Bytes) -> anyhow::Result<Self> {
        if api_key == ApiKey::Fetch as i16 {
            bail!("internal error: a Fetch response was about to reach the client without the record stage; refused");
        }
        Ok(Self(frame))
    }
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
    /// Rewrite node endpoints; decrypt / re-encode records for the client as it was when the
    /// request was read (a principal set by a later SASL answer does not apply to it).
    Fetch(Arc<ClientSession>),
    /// Follow the SASL exchange (may set the session's principal); relay the bytes.
    Sasl(SaslExpect),
}

/// What answers a request once it is prepared.
enum Expect {
    /// Nothing (Produce with `acks = 0`).
    Nothing,
    /// The proxy's own response.
    Local(ToClient),
    /// The broker's response, through this stage.
    Upstream(ResponseStage),
}

impl Expect {
    /// The proxy's own response frame for a request of an API that carries no records.
    fn local(api_key: i16, frame: Bytes) -> anyhow::Result<Self> {
        Ok(Expect::Local(ToClient::Relay(RelayResponse::new(
            api_key, frame,
        )?)))
    }
}

/// A request ready to leave for the broker (or to be answered locally).
struct Prepared {
    /// What to forward, if anything.
    forward: Option<Forward>,
    /// What answers it.
    expect: Expect,
    /// Produce only: past this instant the request is answered REQUEST_TIMED_OUT, not forwarded.
    deadline: Option<Instant>,
}

/// Work that is done, or running on its own task (aborted when the connection closes).
enum Step<T> {
    Ready(anyhow::Result<T>),
    Running(AbortOnDropHandle<anyhow::Result<T>>),
}

impl<T: Send + 'static> Step<T> {
    fn spawn(f: impl Future<Output = anyhow::Result<T>> + Send + 'static) -> Self {
        Step::Running(AbortOnDropHandle::new(tokio::spawn(
            tracing::Instrument::in_current_span(f),
        )))
    }

    /// True when [`Step::get`] will not wait.
    fn is_ready(&self) -> bool {
        match self {
            Step::Ready(_) => true,
            Step::Running(h) => h.is_finished(),
        }
    }

    async fn get(self) -> anyhow::Result<T> {
        match self {
            Step::Ready(r) => r,
            Step::Running(h) => h.await.map_err(|e| anyhow!("request task failed: {e}"))?,
        }
    }
}

/// A request between the read and forward stages.
struct Queued {
    meta: RequestMeta,
    step: Step<Prepared>,
    permit: OwnedSemaphorePermit,
}

/// A response between the read-responses and write stages.
struct Outgoing {
    api_key: i16,
    step: Step<ToClient>,
    _permit: OwnedSemaphorePermit,
    /// A broker response's bytes, charged until it is written.
    _memory: Option<ResponseCharge>,
}

/// Serves one accepted client connection until either side closes. `client` is the accepted
/// stream after any PROXY header and TLS handshake; `session` holds the client's (real) address
/// and, once known, its principal.
pub async fn serve(
    shared: Arc<ProxyShared>,
    client: BoxStream,
    session: Arc<ClientSession>,
    route: Route,
) {
    shared.metrics.connection_opened();
    let peer = session.peer();
    if let Err(e) = serve_inner(&shared, client, session, &route).await {
        debug!(%peer, error = %format!("{e:#}"), "connection ended with error");
    }
    shared.metrics.connection_closed();
}

async fn serve_inner(
    shared: &Arc<ProxyShared>,
    client: BoxStream,
    session: Arc<ClientSession>,
    route: &Route,
) -> anyhow::Result<()> {
    let peer = session.peer();
    let upstream_addr = shared.resolve_upstream(route).await?;
    let connect = shared.upstream.connect(upstream_addr.as_str());
    let upstream = match tokio::time::timeout(
        Duration::from_millis(shared.config.upstream_connect_timeout_ms),
        connect,
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.error(Reason::UpstreamConnect);
            warn!(%peer, upstream = %upstream_addr, error = %format!("{e:#}"), "cannot reach broker; closing client connection so it retries");
            return Ok(());
        }
        Err(_) => {
            shared.metrics.error(Reason::UpstreamConnect);
            warn!(%peer, upstream = %upstream_addr, "timed out connecting to broker; closing client connection");
            return Ok(());
        }
    };
    debug!(%peer, upstream = %upstream_addr, "connection opened");
    session.set_upstream(&upstream_addr);

    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let (queued_tx, queued_rx) = mpsc::unbounded_channel();
    let (pending_tx, pending_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let sasl = Arc::new(SaslTracker::for_config(&shared.config));
    let gate = shared.records.memory().response_gate();

    let requests = read_requests(
        shared,
        client_read,
        queued_tx,
        in_flight,
        (session.clone(), gate.clone()),
        sasl.clone(),
    );
    let forward = async {
        if let Err(e) = forward_requests(shared, queued_rx, upstream_write, pending_tx, peer).await
        {
            log_request_error(shared, peer, &e);
        }
    };
    let respond = async {
        let r = tokio::try_join!(
            read_responses(
                shared,
                upstream_read,
                pending_rx,
                out_tx,
                (session.clone(), gate),
                sasl
            ),
            write_responses(shared, client_write, out_rx, &session),
        );
        if let Err(e) = r {
            log_response_error(shared, peer, &e);
        }
    };
    // Once forwarding ends (client EOF, shutdown, a refused or broken request), the responses
    // already queued are still delivered; when the response side ends, everything does.
    let rest = async {
        tokio::pin!(forward, respond);
        tokio::select! {
            _ = &mut forward => respond.await,
            _ = &mut respond => {}
        }
    };
    tokio::pin!(requests, rest);
    tokio::select! {
        r = &mut requests => {
            // The client closed, misbehaved or shutdown began: deliver what is in flight, then close.
            if let Err(e) = r {
                log_request_error(shared, peer, &e);
            }
            let drain = Duration::from_secs(shared.config.shutdown_timeout_secs);
            if tokio::time::timeout(drain, &mut rest).await.is_err() {
                warn!(%peer, "in-flight responses not delivered before timeout");
            }
        }
        _ = &mut rest => {}
    }
    match session.principal() {
        Some(p) => debug!(%peer, principal = %p.to_string().escape_debug(), "connection closed"),
        None => debug!(%peer, "connection closed"),
    }
    Ok(())
}

fn log_request_error(shared: &ProxyShared, peer: SocketAddr, e: &anyhow::Error) {
    if e.downcast_ref::<UnsupportedRequest>().is_some() || e.downcast_ref::<SaslRefusal>().is_some()
    {
        // Already logged where it was refused.
        return;
    }
    match e.downcast_ref::<FrameError>() {
        Some(FrameError::TooLarge { size, max }) => {
            shared.metrics.error(Reason::FrameTooLarge);
            warn!(%peer, size, max, "client sent a frame larger than max_frame_bytes; closing connection");
        }
        Some(FrameError::Io(_)) | Some(FrameError::Truncated { .. }) => {
            debug!(%peer, error = %e, "client connection dropped");
        }
        _ => {
            shared.metrics.error(Reason::ClientProtocol);
            warn!(%peer, error = %format!("{e:#}"), "closing client connection");
        }
    }
}

fn log_response_error(shared: &ProxyShared, peer: SocketAddr, e: &anyhow::Error) {
    if e.downcast_ref::<SaslRefusal>().is_some() {
        // Already logged where it was refused.
        return;
    }
    match e.downcast_ref::<FrameError>() {
        Some(FrameError::TooLarge { size, max }) => {
            shared.metrics.error(Reason::FrameTooLarge);
            warn!(%peer, size, max, "broker sent a frame larger than max_frame_bytes; closing connection");
        }
        Some(FrameError::Io(io)) => match super::tls::describe_broker_alert(io) {
            Some(reason) => {
                shared.metrics.error(Reason::UpstreamTls);
                warn!(%peer, %reason, "broker closed the connection; closing client connection");
            }
            None => {
                shared.metrics.error(Reason::UpstreamClosed);
                info!(%peer, error = %e, "broker connection lost; closing client connection");
            }
        },
        Some(FrameError::Truncated { .. }) => {
            shared.metrics.error(Reason::UpstreamClosed);
            info!(%peer, error = %e, "broker connection lost; closing client connection");
        }
        _ => {
            shared.metrics.error(Reason::UpstreamProtocol);
            warn!(%peer, error = %format!("{e:#}"), "closing connection");
        }
    }
}

/// Stage 1: reads requests and starts preparing each (see the module docs).
async fn read_requests(
    shared: &Arc<ProxyShared>,
    mut client: OwnedReadHalf,
    queue: mpsc::UnboundedSender<Queued>,
    in_flight: Arc<Semaphore>,
    (session, gate): (Arc<ClientSession>, Arc<ResponseGate>),
    sasl: Arc<SaslTracker>,
) -> anyhow::Result<()> {
    let peer = session.peer();
    let mut shutdown = shared.shutdown_signal();
    let max = shared.config.max_frame_bytes;
    // Per-principal counters, looked up once the connection has a principal.
    let mut by_principal = None;
    loop {
        let frame = tokio::select! {
            // While the client leaves its responses unread, its requests are not read either.
            f = async { gate.room().await; read_frame(&mut client, max).await } => f?,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let received = Instant::now();
        // Wait for a free in-flight slot: a client that does not read its responses stops being
        // read from once `max_in_flight` requests are outstanding.
        let permit = in_flight.clone().acquire_owned().await?;
        let meta = RequestMeta::parse(&frame)?;
        shared
            .metrics
            .frame(Direction::Request, meta.api_key, frame.len());
        if by_principal.is_none() {
            by_principal = session
                .principal()
                .and_then(|p| shared.metrics.principal(p.name()));
        }
        if let Some(c) = &by_principal {
            c.request(meta.api_key, frame.len());
        }
        let mode = super::admission::mode_for(shared, &session);
        let step = match sasl.on_request(&session, mode, meta, &frame) {
            Ok(RequestAction::Pass) => None,
            Ok(RequestAction::Relay(expect)) => Some(Step::Ready(
                RelayRequest::new(meta, frame.clone()).map(|relay| Prepared {
                    forward: Some(Forward::Relay(relay)),
                    expect: Expect::Upstream(ResponseStage::Sasl(expect)),
                    deadline: None,
                }),
            )),
            Ok(RequestAction::Answer(answer)) => Some(Step::Ready(
                Expect::local(meta.api_key, answer).map(|expect| Prepared {
                    forward: None,
                    expect,
                    deadline: None,
                }),
            )),
            Ok(RequestAction::Refuse(refusal)) => {
                sasl::log_refusal(shared, meta, &refusal, &session);
                // Queued behind what came before (delivered), ends forwarding; stop reading.
                let step = Step::Ready(Err(refusal.into()));
                let _ = queue.send(Queued { meta, step, permit });
                return Ok(());
            }
            Err(e) => Some(Step::Ready(Err(e))),
        };
        let step = if let Some(step) = step {
            if let Err(refused) = rewrite::check_request(meta.api_key, meta.api_version) {
                Step::Ready(refuse_request(shared, meta, frame, refused, peer))
            } else {
                step
            }
        } else if let Err(refused) = rewrite::check_request(meta.api_key, meta.api_version) {
            Step::Ready(refuse_request(shared, meta, frame, refused, peer))
        } else if meta.known_api() == Some(ApiKey::Produce) {
            if shared.records.transforms_produce() {
                Step::spawn(prepare_produce(
                    shared.clone(),
                    meta,
                    frame,
                    session.clone(),
                    received,
                ))
            } else {
                Step::Ready(prepare_untransformed_produce(shared, frame, received))
            }
        } else {
            Step::Ready(prepare_relay(meta, frame, &session))
        };
        if queue.send(Queued { meta, step, permit }).is_err() {
            return Ok(());
        }
    }
}

/// Stage 2: forwards prepared requests in the client's order (see the module docs).
async fn forward_requests(
    shared: &Arc<ProxyShared>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    upstream: OwnedWriteHalf,
    pending: mpsc::UnboundedSender<(Pending, OwnedSemaphorePermit)>,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let mut upstream = FrameWriter::new(upstream);
    while let Some(Queued { meta, step, permit }) = queue.recv().await {
        if !step.is_ready() {
            // Do not hold written requests back while waiting for a slow one.
            upstream.flush().await?;
        }
        let prepared = step.get().await.with_context(|| {
            format!(
                "request {} v{} (correlation id {})",
                api_name(meta.api_key),
                meta.api_version,
                meta.correlation_id
            )
        })?;
        let Prepared {
            mut forward,
            mut expect,
            deadline,
        } = prepared;
        if let (Some(Forward::Produce(staged)), Some(d)) = (&forward, deadline) {
            if Instant::now() >= d {
                expect = answer_late(shared, meta, staged.frame(), expect, peer)?;
                forward = None;
            }
        }
        if let Some(forward) = forward {
            upstream.write_frame(forward.frame()).await?;
            if queue.is_empty() {
                upstream.flush().await?;
            }
        }
        let entry = match expect {
            Expect::Nothing => continue,
            Expect::Local(response) => Pending::Local {
                api_key: meta.api_key,
                response,
            },
            Expect::Upstream(stage) => Pending::Upstream {
                meta,
                sent_at: Instant::now(),
                stage,
            },
        };
        if pending.send((entry, permit)).is_err() {
            return Ok(());
        }
    }
    upstream.flush().await?;
    Ok(())
}

/// Stage 3: reads broker responses in order and starts their stages (see the module docs).
async fn read_responses(
    shared: &Arc<ProxyShared>,
    mut upstream: OwnedReadHalf,
    mut pending: mpsc::UnboundedReceiver<(Pending, OwnedSemaphorePermit)>,
    out: mpsc::UnboundedSender<Outgoing>,
    (session, gate): (Arc<ClientSession>, Arc<ResponseGate>),
    sasl: Arc<SaslTracker>,
) -> anyhow::Result<()> {
    let max = shared.config.max_frame_bytes;
    while let Some((entry, permit)) = pending.recv().await {
        let mut memory = None;
        let (api_key, step) = match entry {
            Pending::Local { api_key, response } => (api_key, Step::Ready(Ok(response))),
            Pending::Upstream {
                meta,
                sent_at,
                stage,
            } => {
                let size = read_frame_len(&mut upstream, max).await?.ok_or_else(|| {
                    anyhow!(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                })?;
                // Not read from the broker until the connection and the process may hold it.
                memory = Some(gate.admit(size).await.inspect_err(|_| {
                    shared.metrics.error(Reason::MemoryBusy);
                })?);
                let frame = read_frame_body(&mut upstream, size).await?;
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
                let context = move || {
                    format!(
                        "response to {} v{}",
                        api_name(meta.api_key),
                        meta.api_version
                    )
                };
                let step = match stage {
                    ResponseStage::Fetch(session) if fetch_needs_decode(shared, meta) => {
                        let shared = shared.clone();
                        Step::spawn(async move {
                            fetch_response(&shared, meta, frame, &session)
                                .await
                                .map(ToClient::Fetch)
                                .with_context(context)
                        })
                    }
                    ResponseStage::Fetch(_) => Step::Ready(
                        shared
                            .records
                            .pass_fetch(frame)
                            .map(ToClient::Fetch)
                            .map_err(anyhow::Error::from),
                    ),
                    ResponseStage::Sasl(expect) => {
                        // Inline, so the principal is set before the client sees the answer.
                        sasl::follow_response(shared, &sasl, &session, meta, expect, &frame)?;
                        Step::Ready(relay_response(meta.api_key, frame))
                    }
                    stage => Step::Ready(
                        rewrite_response(shared, meta, stage, frame)
                            .and_then(|f| relay_response(meta.api_key, f))
                            .with_context(context),
                    ),
                };
                (meta.api_key, step)
            }
        };
        let item = Outgoing {
            api_key,
            step,
            _permit: permit,
            _memory: memory,
        };
        if out.send(item).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Stage 4: writes responses to the client in order (see the module docs).
async fn write_responses(
    shared: &Arc<ProxyShared>,
    client: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    session: &ClientSession,
) -> anyhow::Result<()> {
    let mut client = FrameWriter::new(client);
    let mut by_principal = None;
    while let Some(Outgoing { api_key, step, .. }) = queue.recv().await {
        if !step.is_ready() {
            client.flush().await?;
        }
        let frame = step.get().await?.into_frame();
        shared
            .metrics
            .frame(Direction::Response, api_key, frame.len());
        if by_principal.is_none() {
            by_principal = session
                .principal()
                .and_then(|p| shared.metrics.principal(p.name()));
        }
        if let Some(c) = &by_principal {
            c.response(frame.len());
        }
        client.write_frame(&frame).await?;
        if queue.is_empty() {
            client.flush().await?;
        }
    }
    client.flush().await?;
    Ok(())
}

/// Answers a request Kapsule does not offer: an error response where the API has one the client
/// can read at its version, otherwise an error that closes the connection. Never forwards.
fn refuse_request(
    shared: &ProxyShared,
    meta: RequestMeta,
    frame: Bytes,
    refused: UnsupportedRequest,
    peer: SocketAddr,
) -> anyhow::Result<Prepared> {
    shared.metrics.error(Reason::UnsupportedVersion);
    let v = meta.api_version;
    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
    let expect = match meta.known_api() {
        Some(api @ ApiKey::Produce) if in_range(ProduceResponse::VERSIONS, v) => {
            let (_, request) = decode_request::<ProduceRequest>(api, frame)?;
            let message = format!(
                "kapsule: {refused}; use Produce v{} or lower",
                rewrite::MAX_PRODUCE_VERSION
            );
            let response = rewrite::produce_error_response(
                &request,
                ResponseError::UnsupportedVersion,
                &message,
            );
            if request.acks == 0 {
                Some(Expect::Nothing)
            } else {
                Some(Expect::local(
                    meta.api_key,
                    encode_response(api, v, &header, &response)?,
                )?)
            }
        }
        // Fetch has a top-level error code from v7.
        Some(ApiKey::Fetch) if v >= 7 && in_range(FetchResponse::VERSIONS, v) => {
            let response = rewrite::fetch_unsupported_response();
            Some(Expect::Local(ToClient::Fetch(
                shared.records.fetch_refusal(v, &header, response)?,
            )))
        }
        _ => None,
    };
    let api = api_name(meta.api_key);
    match expect {
        Some(expect) => {
            if let Some(suppressed) = shared
                .records
                .refusal_log()
                .admit_connection_line(Reason::UnsupportedVersion)
            {
                warn!(%peer, api, version = v, reason = %refused, suppressed, "refused a request version Kapsule does not offer; answered UNSUPPORTED_VERSION, nothing forwarded");
            }
            Ok(Prepared {
                forward: None,
                expect,
                deadline: None,
            })
        }
        None => {
            if let Some(suppressed) = shared
                .records
                .refusal_log()
                .admit_connection_line(Reason::UnsupportedVersion)
            {
                warn!(%peer, api, version = v, reason = %refused, suppressed, "refused a request Kapsule does not offer; closing the connection, nothing forwarded");
            }
            Err(refused.into())
        }
    }
}

fn in_range(range: kafka_protocol::protocol::VersionRange, v: i16) -> bool {
    (range.min..=range.max).contains(&v)
}

/// Prepares a request of an API that carries no records, relayed as bytes (a Produce is
/// refused here: it goes through the record stage, see [`RelayRequest`]). A Fetch keeps a
/// snapshot of `session`: its response is decrypted for the principal the connection had when
/// the request was read.
fn prepare_relay(
    meta: RequestMeta,
    frame: Bytes,
    session: &ClientSession,
) -> anyhow::Result<Prepared> {
    let relay = |frame, stage| -> anyhow::Result<Prepared> {
        Ok(Prepared {
            forward: Some(Forward::Relay(RelayRequest::new(meta, frame)?)),
            expect: Expect::Upstream(stage),
            deadline: None,
        })
    };
    let stage = match meta.known_api() {
        Some(api @ ApiKey::ApiVersions) if meta.api_version > ApiVersionsResponse::VERSIONS.max => {
            let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
            let body = rewrite::unsupported_api_versions_response();
            return Ok(Prepared {
                forward: None,
                expect: Expect::local(meta.api_key, encode_response(api, 0, &header, &body)?)?,
                deadline: None,
            });
        }
        Some(ApiKey::ApiVersions) => ResponseStage::ApiVersions,
        Some(ApiKey::Metadata) => ResponseStage::Metadata,
        Some(ApiKey::FindCoordinator) => ResponseStage::FindCoordinator,
        Some(ApiKey::DescribeCluster) => ResponseStage::DescribeCluster,
        Some(ApiKey::Fetch) => ResponseStage::Fetch(Arc::new(session.snapshot())),
        // Unknown APIs are unreachable after check_request; relayed like any API Kapsule does
        // not decode.
        _ => ResponseStage::Relay,
    };
    relay(frame, stage)
}

/// A response of an API that carries no records, on its way to the client.
fn relay_response(api_key: i16, frame: Bytes) -> anyhow::Result<ToClient> {
    Ok(ToClient::Relay(RelayResponse::new(api_key, frame)?))
}

/// Whether a Fetch response must be decoded (records to transform, or endpoints to rewrite).
fn fetch_needs_decode(shared: &ProxyShared, meta: RequestMeta) -> bool {
    meta.api_version >= 16 || shared.records.transforms_fetch()
}

/// Decodes a Fetch response, rewrites its endpoints and runs the record stage over it.
async fn fetch_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    frame: Bytes,
    session: &ClientSession,
) -> anyhow::Result<StagedFetch> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    let (header, mut body) = decode_fetch_response(v, frame)?;
    rewrite::rewrite_fetch_endpoints(&mut body, adv)?;
    shared.records.stage_fetch(v, &header, body, session).await
}

/// Applies a response stage that needs no record work.
fn rewrite_response(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    stage: ResponseStage,
    frame: Bytes,
) -> anyhow::Result<Bytes> {
    let v = meta.api_version;
    let adv: &dyn rewrite::Advertiser = shared;
    Ok(match stage {
        ResponseStage::Relay | ResponseStage::Fetch(_) | ResponseStage::Sasl(_) => frame,
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

#[cfg(test)]
mod tests;
