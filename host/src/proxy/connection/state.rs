//! [`Connection`]: the state one client connection's stages share, and what they report
//! through it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tracing::{info, warn};

use super::error::ConnectionError;
use crate::error::Reason;
use crate::kafka::frame::RequestMeta;
use crate::metrics::api_name;
use crate::proxy::budget::ResponseGate;
use crate::proxy::metrics::{Metrics, PrincipalCounters};
use crate::proxy::records::RefusalLog;
use crate::proxy::sasl::{SaslAnswerError, SaslExpect, SaslOutcome, SaslRefusal, SaslTracker};
use crate::proxy::session::ClientSession;
use crate::proxy::ProxyShared;

/// One client connection's state, shared by its stages: the client's session (address and, once
/// known, principal), its SASL exchange, the memory gate its broker responses pass, and the
/// proxy-wide handles every stage reports to (metrics, refusal log, records stage).
pub(super) struct Connection {
    pub(super) shared: Arc<ProxyShared>,
    pub(super) session: Arc<ClientSession>,
    pub(super) sasl: SaslTracker,
    pub(super) gate: Arc<ResponseGate>,
}

impl Connection {
    /// The client's address (from the PROXY header when enabled).
    pub(super) fn peer(&self) -> SocketAddr {
        self.session.peer()
    }

    /// True when this connection reads Fetch responses ahead ([`super::read_ahead`]): the
    /// proxy decrypts fetched records and `proxy.fetch_read_ahead` is on.
    pub(super) fn read_ahead_enabled(&self) -> bool {
        self.shared.config.fetch_read_ahead && self.shared.records.transforms_fetch()
    }

    /// The proxy's counters.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The rate limit of per-connection refusal lines.
    pub(super) fn refusals(&self) -> &RefusalLog {
        self.shared.records.refusal_log()
    }

    /// Counts `reason` and says whether to log its line now: `Some(lines suppressed since the
    /// last one)`, or `None` while the refusal log holds lines of that reason back.
    pub(super) fn refusal_line(&self, reason: Reason) -> Option<u64> {
        self.metrics().error(reason);
        self.refusals().admit_connection_line(reason)
    }

    /// Logs a request refused over authentication (never forwarded; the connection closes).
    pub(super) fn log_sasl_refusal(&self, meta: RequestMeta, refusal: &SaslRefusal) {
        let peer = self.peer();
        if let Some(suppressed) = self.refusal_line(Reason::Unauthenticated) {
            let api = api_name(meta.api_key);
            warn!(%peer, api, version = meta.api_version, reason = %refusal, suppressed, "refused a request over authentication; closing the connection, nothing forwarded");
        }
    }

    /// Follows the broker's answer to a SASL request: logs success (with the principal) and
    /// failure; a re-authentication under another name closes the connection.
    pub(super) fn follow_sasl_response(
        &self,
        meta: RequestMeta,
        expect: SaslExpect,
        frame: &Bytes,
    ) -> Result<(), ConnectionError> {
        let peer = self.peer();
        let outcome = self
            .sasl
            .on_response(&self.session, expect, meta.api_version, frame);
        match outcome {
            Ok(SaslOutcome::Continue) => {}
            Ok(SaslOutcome::Authenticated(p)) => {
                info!(%peer, principal = %p.name().escape_debug(), mechanism = p.mechanism().label(), "client authenticated");
            }
            Ok(SaslOutcome::Failed { name, error_code }) => {
                self.metrics().error(Reason::SaslFailed);
                // Clients retry in a loop: rate-limited like refusals.
                let Some(suppressed) = self
                    .refusals()
                    .admit_connection_line(Reason::Unauthenticated)
                else {
                    return Ok(());
                };
                let error = ResponseError::try_from_code(error_code)
                    .map(|e| format!("{e:?}"))
                    .unwrap_or_else(|| error_code.to_string());
                let api = api_name(meta.api_key);
                match name {
                    Some(name) => {
                        info!(%peer, user = %name.escape_debug(), api, error, suppressed, "broker refused SASL authentication")
                    }
                    None => {
                        info!(%peer, api, error, suppressed, "broker refused the SASL handshake")
                    }
                }
            }
            Err(SaslAnswerError::Refused(refusal)) => {
                self.metrics().error(Reason::SaslPrincipalChanged);
                let refusal = refusal.to_string();
                warn!(%peer, reason = %refusal.escape_debug(), "closing connection, answer not relayed");
                return Err(ConnectionError::refused());
            }
            Err(e @ SaslAnswerError::Undecodable(_)) => return Err(ConnectionError::broker(e)),
        }
        Ok(())
    }

    /// Per-principal counters, once the connection has a principal.
    pub(super) fn principal_counters(&self) -> Option<Arc<PrincipalCounters>> {
        self.session
            .principal()
            .and_then(|p| self.shared.metrics.principal(p.name()))
    }
}
