//! The Produce side of a connection: preparing a Produce through the record stage within the
//! request's own `timeout_ms`, and answering locally (never forwarding) a Produce that is
//! refused in full or whose deadline passed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader};
use tokio::time::Instant;
use tracing::warn;

use super::error::ConnectionError;
use super::path::{Expect, Forward, Prepared, ResponseStage};
use super::Connection;
use crate::error::Reason;
use crate::kafka::frame::{decode_request, encode_response, produce_header, RequestMeta};
use crate::kms::{deadline, requester};
use crate::proxy::admission::{self, NotAdmitted};
use crate::proxy::records::{ProducePatch, ProduceStaged};
use crate::proxy::rewrite;

/// Share of a Produce request's `timeout_ms` kept back for the trip to the broker and back: the
/// proxy stops working on (and never forwards) a request after the rest has passed.
const DEADLINE_HEADROOM_PERCENT: u32 = 10;
/// Upper bound of that headroom.
const DEADLINE_HEADROOM_MAX: Duration = Duration::from_millis(500);

/// The instant after which a Produce with this `timeout_ms` is answered REQUEST_TIMED_OUT instead
/// of forwarded; `None` when the client gave no positive timeout.
pub(super) fn produce_deadline(received: Instant, timeout_ms: i32) -> Option<Instant> {
    let timeout = Duration::from_millis(u64::try_from(timeout_ms).ok().filter(|t| *t > 0)?);
    let headroom = (timeout * DEADLINE_HEADROOM_PERCENT / 100).min(DEADLINE_HEADROOM_MAX);
    Some(received + (timeout - headroom))
}

/// A Produce that Kapsule answers itself and never forwards: no answer for `acks = 0`,
/// otherwise the response `response` builds.
fn answer_produce_locally(
    meta: RequestMeta,
    acks: i16,
    response: impl FnOnce() -> ProduceResponse,
) -> Result<Prepared, ConnectionError> {
    let expect = if acks == 0 {
        Expect::Nothing
    } else {
        let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
        let frame = encode_response(ApiKey::Produce, meta.api_version, &header, &response())
            .map_err(ConnectionError::internal)?;
        Expect::local(meta.api_key, frame)?
    };
    Ok(Prepared {
        forward: None,
        expect,
        deadline: None,
    })
}

/// Prepares a Produce through the record stage, bounded by the request's deadline: KMS calls
/// made for it see the deadline ([`deadline`]) and, when it passes first, every partition is
/// answered REQUEST_TIMED_OUT and nothing is forwarded.
pub(super) async fn prepare_produce(
    conn: Arc<Connection>,
    meta: RequestMeta,
    frame: Bytes,
    received: Instant,
) -> Result<Prepared, ConnectionError> {
    let (shared, session) = (&conn.shared, &conn.session);
    let peer = conn.peer();
    let api = ApiKey::Produce;
    let (header, request) =
        decode_request::<ProduceRequest>(api, frame).map_err(ConnectionError::client)?;
    let acks = request.acks;
    // No policy or KMS work for a client the broker has not accepted (see `admission`).
    if let Err(refused) = admission::admit_work(shared, session).await {
        conn.metrics().error(Reason::ProduceNotAdmitted);
        let code = match refused {
            NotAdmitted::RequiresAuthentication { .. } => ResponseError::SaslAuthenticationFailed,
            NotAdmitted::Unknown { .. } => ResponseError::NetworkException,
        };
        warn!(%peer, correlation_id = meta.correlation_id, error = %refused, "produce from an unauthenticated connection refused before any policy or KMS work");
        return answer_produce_locally(meta, acks, || {
            rewrite::produce_error_response(&request, code, &refused.to_string())
        });
    }
    let due = produce_deadline(received, request.timeout_ms);
    // KMS calls made for this request count against its principal's budgets.
    let who = requester::label(session.principal());
    let staged = match due {
        None => requester::scope(who, shared.records.stage_produce(&header, request, session))
            .await
            .map_err(ConnectionError::client)?,
        Some(d) => {
            // Cheap: records are reference-counted bytes. Kept to answer every partition if the
            // stage is cut short.
            let original = request.clone();
            let stage = deadline::scope(
                due,
                requester::scope(who, shared.records.stage_produce(&header, request, session)),
            );
            // A stage that ends at the deadline (a KMS wait cut by it) counts as timed out too.
            match tokio::time::timeout_at(d, stage).await {
                Ok(staged) if Instant::now() < d => staged.map_err(ConnectionError::client)?,
                _ => {
                    if let Some(suppressed) = conn.refusal_line(Reason::TimedOut) {
                        warn!(%peer, correlation_id = meta.correlation_id, timeout_ms = original.timeout_ms, suppressed, "produce request not ready before its timeout (slow policy or KMS); answered REQUEST_TIMED_OUT, nothing forwarded");
                    }
                    return answer_produce_locally(meta, acks, || {
                        rewrite::produce_error_response(
                            &original,
                            ResponseError::RequestTimedOut,
                            &late_message(&original),
                        )
                    });
                }
            }
        }
    };
    let ProduceStaged { forward, patch } = staged;
    let Some(forward) = forward else {
        // Every partition was refused: answer without involving the broker.
        return answer_produce_locally(meta, acks, || patch.into_response());
    };
    Ok(Prepared {
        forward: Some(Forward::Produce(forward)),
        expect: if acks == 0 {
            Expect::Nothing
        } else {
            Expect::Upstream(ResponseStage::Produce(patch))
        },
        deadline: due,
    })
}

/// Prepares a Produce the record stage has nothing to do with (passthrough mode without
/// encryption): forwarded as it came, still bounded by its deadline.
pub(super) fn prepare_untransformed_produce(
    conn: &Connection,
    frame: Bytes,
    received: Instant,
) -> Result<Prepared, ConnectionError> {
    let h = produce_header(&frame).map_err(ConnectionError::client)?;
    let staged = conn.shared.records.pass_produce(frame);
    Ok(Prepared {
        forward: Some(Forward::Produce(staged.map_err(ConnectionError::internal)?)),
        expect: if h.acks == 0 {
            Expect::Nothing
        } else {
            Expect::Upstream(ResponseStage::Produce(ProducePatch::default()))
        },
        deadline: produce_deadline(received, h.timeout_ms),
    })
}

fn late_message(request: &ProduceRequest) -> String {
    format!(
        "kapsule: not written: the request was not ready within its timeout of {} ms (slow policy or KMS); safe to retry",
        request.timeout_ms
    )
}

/// A Produce whose deadline passed while it waited for the requests before it: answered
/// REQUEST_TIMED_OUT for every partition (keeping the proxy's own refusals), never forwarded.
pub(super) fn answer_late(
    conn: &Connection,
    meta: RequestMeta,
    body: &Bytes,
    expect: Expect,
) -> Result<Expect, ConnectionError> {
    let peer = conn.peer();
    let api = ApiKey::Produce;
    let (_, request) =
        decode_request::<ProduceRequest>(api, body.clone()).map_err(ConnectionError::client)?;
    if let Some(suppressed) = conn.refusal_line(Reason::TimedOut) {
        warn!(%peer, correlation_id = meta.correlation_id, timeout_ms = request.timeout_ms, suppressed, "produce request reached its timeout before it could be forwarded; answered REQUEST_TIMED_OUT, nothing forwarded");
    }
    let patch = match expect {
        Expect::Upstream(ResponseStage::Produce(patch)) => patch,
        Expect::Nothing => return Ok(Expect::Nothing),
        other => return Ok(other),
    };
    let mut response = rewrite::produce_error_response(
        &request,
        ResponseError::RequestTimedOut,
        &late_message(&request),
    );
    patch.merge_into(&mut response);
    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
    let frame = encode_response(api, meta.api_version, &header, &response)
        .map_err(ConnectionError::internal)?;
    Expect::local(meta.api_key, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_deadline_keeps_headroom_and_ignores_non_positive_timeouts() {
        let t0 = Instant::now();
        assert_eq!(produce_deadline(t0, 0), None);
        assert_eq!(produce_deadline(t0, -1), None);
        assert_eq!(
            produce_deadline(t0, 1_000),
            Some(t0 + Duration::from_millis(900))
        );
        assert_eq!(
            produce_deadline(t0, 30_000),
            Some(t0 + Duration::from_millis(29_500))
        );
    }
}
