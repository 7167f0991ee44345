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

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse,
    ResponseHeader,
};
use kafka_protocol::protocol::Message;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

mod error;
mod fetch_sessions;
mod path;
mod produce;
mod read_ahead;
mod responses;
mod state;

use self::error::ConnectionError;
use self::fetch_sessions::{FetchSessions, Served};
use self::path::{
    Expect, Forward, Pending, Prepared, RelayRequest, RelayResponse, ResponseStage, ToClient,
};
use self::produce::{answer_late, prepare_produce, prepare_untransformed_produce};
use self::read_ahead::{
    Candidate, ClientFetch, FetchDecision, PredictionSink, ReadAhead, ReadAheadRequest,
};
use self::responses::{fetch_needs_decode, fetch_response, rewrite_response, share_fetch_response};
use self::state::Connection;
use super::budget::ResponseCharge;
use super::records::StagedFetch;
use super::rewrite::{self, UnsupportedRequest};
use super::sasl::{RequestAction, SaslTracker};
use super::session::ClientSession;
use super::tls::BoxStream;
use super::{ProxyShared, Route};
use crate::error::Reason;
use crate::kafka::frame::{
    decode_request, encode_request, encode_response, response_correlation_id, FrameReader,
    FrameWriter, RequestMeta,
};
use crate::metrics::api_name;
use crate::proxy::metrics::Direction;
use kafka_protocol::error::ResponseError;

type OwnedReadHalf = FrameReader<ReadHalf<BoxStream>>;
type OwnedWriteHalf = WriteHalf<BoxStream>;

/// Work that is done, or running on its own task (aborted when the connection closes).
enum Step<T> {
    Ready(Result<T, ConnectionError>),
    Running(AbortOnDropHandle<Result<T, ConnectionError>>),
}

impl<T: Send + 'static> Step<T> {
    fn spawn(f: impl Future<Output = Result<T, ConnectionError>> + Send + 'static) -> Self {
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

    async fn get(self) -> Result<T, ConnectionError> {
        match self {
            Step::Ready(r) => r,
            Step::Running(h) => h
                .await
                .map_err(|e| ConnectionError::internal(anyhow!("request task failed: {e}")))?,
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
    _permit: Option<OwnedSemaphorePermit>,
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

    let conn = Arc::new(Connection {
        sasl: SaslTracker::for_config(&shared.config),
        gate: shared.records.memory().response_gate(),
        shared: shared.clone(),
        session,
    });
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let (queued_tx, queued_rx) = mpsc::unbounded_channel();
    let (pending_tx, pending_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));

    let requests = read_requests(&conn, FrameReader::new(client_read), queued_tx, in_flight);
    let forward = async {
        if let Err(e) = forward_requests(&conn, queued_rx, upstream_write, pending_tx).await {
            e.log(conn.metrics(), peer);
        }
    };
    let respond = async {
        let r = tokio::try_join!(
            read_responses(&conn, FrameReader::new(upstream_read), pending_rx, out_tx),
            write_responses(&conn, client_write, out_rx),
        );
        if let Err(e) = r {
            e.log(conn.metrics(), peer);
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
                e.log(conn.metrics(), peer);
            }
            let drain = Duration::from_secs(shared.config.shutdown_timeout_secs);
            if tokio::time::timeout(drain, &mut rest).await.is_err() {
                warn!(%peer, "in-flight responses not delivered before timeout");
            }
        }
        _ = &mut rest => {}
    }
    match conn.session.principal() {
        Some(p) => debug!(%peer, principal = %p.to_string().escape_debug(), "connection closed"),
        None => debug!(%peer, "connection closed"),
    }
    Ok(())
}

/// Stage 1: reads requests and starts preparing each (see the module docs).
async fn read_requests(
    conn: &Arc<Connection>,
    mut client: OwnedReadHalf,
    queue: mpsc::UnboundedSender<Queued>,
    in_flight: Arc<Semaphore>,
) -> Result<(), ConnectionError> {
    let shared = &conn.shared;
    let mut shutdown = shared.shutdown_signal();
    let max = shared.config.max_frame_bytes;
    // Per-principal counters, looked up once the connection has a principal.
    let mut by_principal = None;
    // The client's fetch sessions, kept here where read-ahead needs them (see fetch_sessions).
    let mut fetch_sessions = conn.read_ahead_enabled().then(FetchSessions::new);
    loop {
        let frame = tokio::select! {
            // While the client leaves its responses unread, its requests are not read either.
            f = async { conn.gate.room().await; client.read_frame(max).await } => {
                f.map_err(ConnectionError::client_frame)?
            }
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let received = Instant::now();
        // Wait for a free in-flight slot: a client that does not read its responses stops being
        // read from once `max_in_flight` requests are outstanding.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(ConnectionError::internal)?;
        let meta = RequestMeta::parse(&frame).map_err(ConnectionError::client)?;
        conn.metrics()
            .frame(Direction::Request, meta.api_key, frame.len());
        if by_principal.is_none() {
            by_principal = conn.principal_counters();
        }
        if let Some(c) = &by_principal {
            c.request(meta.api_key, frame.len());
        }
        let mode = super::admission::mode_for(shared, &conn.session);
        let step = match conn.sasl.on_request(&conn.session, mode, meta, &frame) {
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
                conn.log_sasl_refusal(meta, &refusal);
                // Queued behind what came before (delivered), ends forwarding; stop reading.
                let step = Step::Ready(Err(ConnectionError::refused()));
                let _ = queue.send(Queued { meta, step, permit });
                return Ok(());
            }
            Err(e) => Some(Step::Ready(Err(ConnectionError::client(e)))),
        };
        let step = if let Err(refused) = rewrite::check_request(meta.api_key, meta.api_version) {
            Step::Ready(refuse_request(conn, meta, frame, refused))
        } else if let Some(step) = step {
            step
        } else if meta.known_api() == Some(ApiKey::Produce) {
            if shared.records.transforms_produce() {
                Step::spawn(prepare_produce(conn.clone(), meta, frame, received))
            } else {
                Step::Ready(prepare_untransformed_produce(conn, frame, received))
            }
        } else {
            Step::Ready(prepare_relay(
                meta,
                frame,
                &conn.session,
                fetch_sessions.as_mut(),
            ))
        };
        if queue.send(Queued { meta, step, permit }).is_err() {
            return Ok(());
        }
    }
}

/// Stage 2: forwards prepared requests in the client's order (see the module docs).
async fn forward_requests(
    conn: &Connection,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    upstream: OwnedWriteHalf,
    pending: mpsc::UnboundedSender<(Pending, Option<OwnedSemaphorePermit>)>,
) -> Result<(), ConnectionError> {
    let mut upstream = FrameWriter::new(upstream);
    let (candidates_tx, mut candidates) = mpsc::unbounded_channel::<Box<Candidate>>();
    let mut read_ahead = ReadAhead::new(conn.read_ahead_enabled(), candidates_tx);
    loop {
        let queued = tokio::select! {
            biased;
            queued = queue.recv() => queued,
            Some(candidate) = candidates.recv() => {
                if let Some(request) = read_ahead.on_candidate(*candidate) {
                    if !send_read_ahead(conn, &mut upstream, &pending, request).await? {
                        return Ok(());
                    }
                }
                continue;
            }
        };
        let Some(Queued { meta, step, permit }) = queued else {
            break;
        };
        if !step.is_ready() {
            // Do not hold written requests back while waiting for a slow one.
            upstream
                .flush()
                .await
                .map_err(ConnectionError::broker_frame)?;
        }
        let prepared = step.get().await.map_err(|e| {
            e.context(|| {
                format!(
                    "request {} v{} (correlation id {})",
                    api_name(meta.api_key),
                    meta.api_version,
                    meta.correlation_id
                )
            })
        })?;
        let Prepared {
            mut forward,
            mut expect,
            deadline,
        } = prepared;
        if let (Some(Forward::Produce(staged)), Some(d)) = (&forward, deadline) {
            if Instant::now() >= d {
                expect = answer_late(conn, meta, &staged.frame().to_bytes(), expect)?;
                forward = None;
            }
        }
        let seq = read_ahead.on_request();
        let mut prediction = None;
        if let Expect::Upstream(ResponseStage::Fetch(session, fetch)) = &expect {
            match read_ahead.on_fetch(seq, fetch.as_ref(), session) {
                FetchDecision::Forward(sink) => prediction = sink,
                FetchDecision::Answer(id) => {
                    conn.metrics().read_ahead_served();
                    let entry = Pending::FromReadAhead { meta, id };
                    if pending.send((entry, Some(permit))).is_err() {
                        return Ok(());
                    }
                    if let Some(request) = read_ahead.after_claim() {
                        if !send_read_ahead(conn, &mut upstream, &pending, request).await? {
                            return Ok(());
                        }
                    }
                    continue;
                }
            }
        }
        if let Some(forward) = forward {
            upstream
                .write_parts(forward.parts())
                .await
                .map_err(ConnectionError::broker_frame)?;
            if queue.is_empty() {
                upstream
                    .flush()
                    .await
                    .map_err(ConnectionError::broker_frame)?;
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
                read_ahead: prediction,
            },
        };
        if pending.send((entry, Some(permit))).is_err() {
            return Ok(());
        }
    }
    upstream
        .flush()
        .await
        .map_err(ConnectionError::broker_frame)?;
    Ok(())
}

/// Writes a read-ahead Fetch to the broker and queues its response to be held; false when the
/// response stage has ended.
async fn send_read_ahead(
    conn: &Connection,
    upstream: &mut FrameWriter<OwnedWriteHalf>,
    pending: &mpsc::UnboundedSender<(Pending, Option<OwnedSemaphorePermit>)>,
    request: ReadAheadRequest,
) -> Result<bool, ConnectionError> {
    upstream
        .write_frame(&request.frame)
        .await
        .map_err(ConnectionError::broker_frame)?;
    upstream
        .flush()
        .await
        .map_err(ConnectionError::broker_frame)?;
    conn.metrics().read_ahead_sent();
    Ok(pending.send((Pending::ReadAhead(request), None)).is_ok())
}

/// The broker closed its connection where a response was due.
fn broker_eof() -> ConnectionError {
    ConnectionError::broker_frame(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
}

/// Reads the size prefix of the broker's next response.
async fn read_response_len(
    conn: &Connection,
    upstream: &mut OwnedReadHalf,
) -> Result<usize, ConnectionError> {
    upstream
        .read_len(conn.shared.config.max_frame_bytes)
        .await
        .map_err(ConnectionError::broker_frame)?
        .ok_or_else(broker_eof)
}

/// Reads the broker's response to `meta`, charged to the connection's memory before it is
/// read, and checks its correlation id.
async fn read_response(
    conn: &Connection,
    upstream: &mut OwnedReadHalf,
    meta: RequestMeta,
) -> Result<(Bytes, ResponseCharge), ConnectionError> {
    let size = read_response_len(conn, upstream).await?;
    // Not read from the broker until the connection and the process may hold it.
    let memory = conn.gate.admit(size).await.map_err(|e| {
        conn.metrics().error(Reason::MemoryBusy);
        ConnectionError::broker(e)
    })?;
    let frame = upstream
        .read_body(size)
        .await
        .map_err(ConnectionError::broker_frame)?;
    check_correlation_id(&frame, meta)?;
    Ok((frame, memory))
}

/// Reads the broker's response to a read-ahead: held (charged to the global memory budget only)
/// when the budget has room now, otherwise read past and dropped (`None`), so a read-ahead never
/// waits for memory or takes the connection's allowance.
async fn read_held_response(
    conn: &Connection,
    upstream: &mut OwnedReadHalf,
    meta: RequestMeta,
) -> Result<Option<(Bytes, ResponseCharge)>, ConnectionError> {
    let size = read_response_len(conn, upstream).await?;
    let Some(memory) = conn.gate.try_admit_held(size) else {
        upstream
            .skip_body(size)
            .await
            .map_err(ConnectionError::broker_frame)?;
        return Ok(None);
    };
    let frame = upstream
        .read_body(size)
        .await
        .map_err(ConnectionError::broker_frame)?;
    check_correlation_id(&frame, meta)?;
    Ok(Some((frame, memory)))
}

fn check_correlation_id(frame: &[u8], meta: RequestMeta) -> Result<(), ConnectionError> {
    let got = response_correlation_id(frame).map_err(ConnectionError::broker)?;
    if got != meta.correlation_id {
        return Err(ConnectionError::broker(anyhow!(
            "broker answered correlation id {got} where {} was expected: responses out of order",
            meta.correlation_id
        )));
    }
    Ok(())
}

/// What an error in the response to `meta` is reported as coming from.
fn response_context(meta: RequestMeta) -> impl FnOnce() -> String + Send + 'static {
    move || {
        format!(
            "response to {} v{}",
            api_name(meta.api_key),
            meta.api_version
        )
    }
}

/// Decodes and decrypts a Fetch response on its own task; the prediction made from it (if any)
/// goes to `read_ahead` as soon as it is decoded. With `reply_session`, the response carries that
/// fetch-session id (Kapsule's, for a request it served from the client's session).
fn spawn_fetch_stage(
    shared: &Arc<ProxyShared>,
    meta: RequestMeta,
    frame: Bytes,
    session: Arc<ClientSession>,
    reply_session: Option<i32>,
    read_ahead: Option<PredictionSink>,
) -> Step<ToClient> {
    let shared = shared.clone();
    let context = response_context(meta);
    Step::spawn(async move {
        fetch_response(&shared, meta, frame, &session, reply_session, read_ahead)
            .await
            .map(ToClient::Fetch)
            .map_err(|e| ConnectionError::broker(e).context(context))
    })
}

/// Takes read-ahead `id`'s response from the front of `held`, dropping any older one (read-aheads
/// are claimed in the order they were sent); `None` when it was read past for lack of memory.
fn take_held(held: &mut VecDeque<HeldResponse>, id: u64) -> Option<HeldResponse> {
    while held.front().is_some_and(|h| h.id < id) {
        held.pop_front();
    }
    held.pop_front_if(|h| h.id == id)
}

/// A read-ahead's response, decrypting or decrypted, held until the client's Fetch claims it.
struct HeldResponse {
    id: u64,
    step: Step<ToClient>,
    memory: ResponseCharge,
}

/// Stage 3: reads broker responses in order and starts their stages (see the module docs).
async fn read_responses(
    conn: &Arc<Connection>,
    mut upstream: OwnedReadHalf,
    mut pending: mpsc::UnboundedReceiver<(Pending, Option<OwnedSemaphorePermit>)>,
    out: mpsc::UnboundedSender<Outgoing>,
) -> Result<(), ConnectionError> {
    let shared = &conn.shared;
    // Read-aheads' responses, oldest first (the order the forward stage sent them).
    let mut held: VecDeque<HeldResponse> = VecDeque::new();
    while let Some((entry, permit)) = pending.recv().await {
        let mut memory = None;
        let (api_key, step) = match entry {
            Pending::Local { api_key, response } => (api_key, Step::Ready(Ok(response))),
            Pending::ReadAhead(request) => {
                // Not counted in the upstream latency: it waits 0 ms where clients wait up to
                // their max_wait_ms.
                let Some((frame, charge)) =
                    read_held_response(conn, &mut upstream, request.meta).await?
                else {
                    continue;
                };
                let reply_session = Some(request.sink.session_id());
                let step = spawn_fetch_stage(
                    shared,
                    request.meta,
                    frame,
                    request.session,
                    reply_session,
                    Some(request.sink),
                );
                held.push_back(HeldResponse {
                    id: request.id,
                    step,
                    memory: charge,
                });
                continue;
            }
            Pending::FromReadAhead { meta, id } => match take_held(&mut held, id) {
                Some(answer) => {
                    memory = Some(answer.memory);
                    let correlation_id = meta.correlation_id;
                    let step = match answer.step {
                        Step::Ready(r) => Step::Ready(r.map(|a| a.answering(correlation_id))),
                        running => Step::spawn(async move {
                            running.get().await.map(|a| a.answering(correlation_id))
                        }),
                    };
                    (meta.api_key, step)
                }
                None => {
                    // Its response was read past (the memory budget was busy): an answer with
                    // no partitions, so the client asks again and that Fetch is forwarded.
                    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
                    let empty =
                        StagedFetch::refusal(meta.api_version, &header, FetchResponse::default())
                            .map(ToClient::Fetch)
                            .map_err(ConnectionError::internal);
                    (meta.api_key, Step::Ready(empty))
                }
            },
            Pending::Upstream {
                meta,
                sent_at,
                stage,
                read_ahead,
            } => {
                if let ResponseStage::Fetch(..) = stage {
                    // The client's Fetch was forwarded: no held read-ahead was what it asked
                    // for; dropping them ends their tasks and gives their memory back before
                    // this response is read.
                    held.clear();
                }
                let (frame, charge) = read_response(conn, &mut upstream, meta).await?;
                memory = Some(charge);
                conn.metrics()
                    .upstream_latency(meta.api_key, sent_at.elapsed());
                let context = response_context(meta);
                let step = match stage {
                    ResponseStage::Fetch(session, fetch) if fetch_needs_decode(shared, meta) => {
                        let reply_session = fetch.map(|f| f.session_id());
                        spawn_fetch_stage(shared, meta, frame, session, reply_session, read_ahead)
                    }
                    ResponseStage::ShareFetch(session) => {
                        let shared = shared.clone();
                        Step::spawn(async move {
                            share_fetch_response(&shared, meta, frame, &session)
                                .await
                                .map(ToClient::Fetch)
                                .map_err(|e| ConnectionError::broker(e).context(context))
                        })
                    }
                    ResponseStage::Fetch(..) => Step::Ready(
                        shared
                            .records
                            .pass_fetch(frame)
                            .map(ToClient::Fetch)
                            .map_err(ConnectionError::broker),
                    ),
                    ResponseStage::Sasl(expect) => {
                        // Inline, so the principal is set before the client sees the answer.
                        conn.follow_sasl_response(meta, expect, &frame)?;
                        Step::Ready(relay_response(meta.api_key, frame))
                    }
                    stage => Step::Ready(
                        rewrite_response(shared, meta, stage, frame)
                            .map_err(|e| ConnectionError::broker(e).context(context))
                            .and_then(|f| relay_response(meta.api_key, f)),
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
    conn: &Connection,
    client: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), ConnectionError> {
    let mut client = FrameWriter::new(client);
    let mut by_principal = None;
    while let Some(Outgoing { api_key, step, .. }) = queue.recv().await {
        if !step.is_ready() {
            client
                .flush()
                .await
                .map_err(ConnectionError::client_frame)?;
        }
        let frame = step.get().await?.into_frame();
        conn.metrics()
            .frame(Direction::Response, api_key, frame.len());
        if by_principal.is_none() {
            by_principal = conn.principal_counters();
        }
        if let Some(c) = &by_principal {
            c.response(frame.len());
        }
        client
            .write_body(&frame)
            .await
            .map_err(ConnectionError::client_frame)?;
        if queue.is_empty() {
            client
                .flush()
                .await
                .map_err(ConnectionError::client_frame)?;
        }
    }
    client
        .flush()
        .await
        .map_err(ConnectionError::client_frame)?;
    Ok(())
}

/// Answers a request Kapsule does not offer: an error response where the API has one the client
/// can read at its version, otherwise an error that closes the connection. Never forwards.
fn refuse_request(
    conn: &Connection,
    meta: RequestMeta,
    frame: Bytes,
    refused: UnsupportedRequest,
) -> Result<Prepared, ConnectionError> {
    let v = meta.api_version;
    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
    let expect = match meta.known_api() {
        Some(api @ ApiKey::Produce) if in_range(ProduceResponse::VERSIONS, v) => {
            let (_, request) =
                decode_request::<ProduceRequest>(api, frame).map_err(ConnectionError::client)?;
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
                let frame = encode_response(api, v, &header, &response)
                    .map_err(ConnectionError::internal)?;
                Some(Expect::local(meta.api_key, frame)?)
            }
        }
        // Fetch has a top-level error code from v7.
        Some(ApiKey::Fetch) if v >= 7 && in_range(FetchResponse::VERSIONS, v) => {
            let response = rewrite::fetch_unsupported_response();
            let refusal = StagedFetch::refusal(v, &header, response);
            Some(Expect::Local(ToClient::Fetch(
                refusal.map_err(ConnectionError::internal)?,
            )))
        }
        _ => None,
    };
    let api = api_name(meta.api_key);
    let peer = conn.peer();
    let line = conn.refusal_line(Reason::UnsupportedVersion);
    match expect {
        Some(expect) => {
            if let Some(suppressed) = line {
                warn!(%peer, api, version = v, reason = %refused, suppressed, "refused a request version Kapsule does not offer; answered UNSUPPORTED_VERSION, nothing forwarded");
            }
            Ok(Prepared {
                forward: None,
                expect,
                deadline: None,
            })
        }
        None => {
            if let Some(suppressed) = line {
                warn!(%peer, api, version = v, reason = %refused, suppressed, "refused a request Kapsule does not offer; closing the connection, nothing forwarded");
            }
            Err(ConnectionError::refused())
        }
    }
}

fn in_range(range: kafka_protocol::protocol::VersionRange, v: i16) -> bool {
    (range.min..=range.max).contains(&v)
}

/// Prepares a request of an API that carries no records, relayed as bytes (a Produce is
/// refused here: it goes through the record stage, see [`RelayRequest`]). A Fetch keeps a
/// snapshot of `session`: its response is decrypted for the principal the connection had when
/// the request was read. With `fetch_sessions` (read-ahead is on), a Fetch is served against the
/// client's fetch sessions ([`fetch_sessions`]) and keeps its decoded (sessionless) request.
fn prepare_relay(
    meta: RequestMeta,
    frame: Bytes,
    session: &ClientSession,
    fetch_sessions: Option<&mut FetchSessions>,
) -> Result<Prepared, ConnectionError> {
    let relay = |frame, stage| -> Result<Prepared, ConnectionError> {
        Ok(Prepared {
            forward: Some(Forward::Relay(RelayRequest::new(meta, frame)?)),
            expect: Expect::Upstream(stage),
            deadline: None,
        })
    };
    if meta.known_api() == Some(ApiKey::Fetch) {
        let snapshot = Arc::new(session.snapshot());
        let Some(sessions) = fetch_sessions else {
            return relay(frame, ResponseStage::Fetch(snapshot, None));
        };
        return match serve_fetch(meta, frame, sessions)? {
            ServedFetch::Forward(frame, fetch) => {
                relay(frame, ResponseStage::Fetch(snapshot, fetch))
            }
            ServedFetch::Answer(staged) => Ok(Prepared {
                forward: None,
                expect: Expect::Local(ToClient::Fetch(staged)),
                deadline: None,
            }),
        };
    }
    let stage = match meta.known_api() {
        Some(api @ ApiKey::ApiVersions) if meta.api_version > ApiVersionsResponse::VERSIONS.max => {
            let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
            let body = rewrite::unsupported_api_versions_response();
            let frame =
                encode_response(api, 0, &header, &body).map_err(ConnectionError::internal)?;
            return Ok(Prepared {
                forward: None,
                expect: Expect::local(meta.api_key, frame)?,
                deadline: None,
            });
        }
        Some(ApiKey::ApiVersions) => ResponseStage::ApiVersions,
        Some(ApiKey::Metadata) => ResponseStage::Metadata,
        Some(ApiKey::FindCoordinator) => ResponseStage::FindCoordinator,
        Some(ApiKey::DescribeCluster) => ResponseStage::DescribeCluster,
        Some(ApiKey::ShareFetch) => ResponseStage::ShareFetch(Arc::new(session.snapshot())),
        Some(ApiKey::ShareAcknowledge) => ResponseStage::ShareAcknowledge,
        // Unknown APIs are unreachable after check_request; relayed like any API Kapsule does
        // not decode.
        _ => ResponseStage::Relay,
    };
    relay(frame, stage)
}

/// A client's Fetch, served against its fetch sessions.
enum ServedFetch {
    /// Forward this frame; keep the request when it can be read ahead.
    Forward(Bytes, Option<Arc<ClientFetch>>),
    /// Answer the client with this (a session error), forward nothing.
    Answer(StagedFetch),
}

/// Serves a client's Fetch `frame` against `sessions`: a request in a fetch session becomes the
/// sessionless request Kapsule sends for it, or a session error answered here; any other is
/// forwarded as it came. A frame that does not decode is forwarded as it came (the broker
/// answers it as it sees fit; Kapsule's session ids mean nothing to the broker).
fn serve_fetch(
    meta: RequestMeta,
    frame: Bytes,
    sessions: &mut FetchSessions,
) -> Result<ServedFetch, ConnectionError> {
    let Ok((header, body)) = decode_request::<FetchRequest>(ApiKey::Fetch, frame.clone()) else {
        return Ok(ServedFetch::Forward(frame, None));
    };
    match sessions.serve(meta.api_version, &body) {
        Served::Unchanged => Ok(ServedFetch::Forward(
            frame,
            ClientFetch::new(header, body, 0).map(Arc::new),
        )),
        Served::Sessionless {
            request,
            session_id,
        } => {
            let sent = encode_request(ApiKey::Fetch, &header, &*request)
                .map_err(ConnectionError::internal)?;
            Ok(ServedFetch::Forward(
                sent,
                ClientFetch::new(header, *request, session_id).map(Arc::new),
            ))
        }
        Served::Refused(error) => {
            let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
            let response = FetchResponse::default().with_error_code(error.code());
            StagedFetch::refusal(meta.api_version, &header, response)
                .map(ServedFetch::Answer)
                .map_err(ConnectionError::internal)
        }
    }
}

/// A response of an API that carries no records, on its way to the client.
fn relay_response(api_key: i16, frame: Bytes) -> Result<ToClient, ConnectionError> {
    Ok(ToClient::Relay(RelayResponse::new(api_key, frame)?))
}

#[cfg(test)]
mod tests;
