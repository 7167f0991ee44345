//! [`ConnectionError`]: why a connection's stages stopped early, whom it is blamed on, and the
//! one log line and error count it gets.

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use crate::error::{ErrorSource, Reason};
use crate::kafka::frame::FrameError;
use crate::proxy::metrics::Metrics;
use crate::proxy::tls::describe_broker_alert;

/// Why a stage of a connection stopped, and whom it is blamed on: the downstream client
/// ([`ErrorSource::Client`]), the upstream broker ([`ErrorSource::Broker`]) or Kapsule itself
/// ([`ErrorSource::Internal`]). Every variant closes the connection; [`ConnectionError::log`]
/// counts and logs it once.
#[derive(Debug)]
pub(super) struct ConnectionError {
    source: ErrorSource,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    /// Refused where it happened (a request Kapsule does not offer, a SASL refusal), and
    /// counted and logged there.
    Refused,
    /// A frame over `max_frame_bytes`, or a socket that closed or broke (also mid-frame).
    Frame(FrameError),
    /// Anything else: a malformed or out-of-order message, or a stage that failed on it.
    Failed(anyhow::Error),
}

impl ConnectionError {
    /// A refusal already counted and logged where it was decided.
    pub(super) fn refused() -> Self {
        Self {
            source: ErrorSource::Client,
            cause: Cause::Refused,
        }
    }

    /// What the client sent cannot be handled (malformed, unexpected) or its stage failed.
    pub(super) fn client(e: impl Into<anyhow::Error>) -> Self {
        Self::failed(ErrorSource::Client, e.into())
    }

    /// What the broker sent cannot be handled (malformed, out of order) or its stage failed.
    pub(super) fn broker(e: impl Into<anyhow::Error>) -> Self {
        Self::failed(ErrorSource::Broker, e.into())
    }

    /// Kapsule failed (a task that panicked or was cancelled).
    pub(super) fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::failed(ErrorSource::Internal, e.into())
    }

    /// Reading or writing the client's socket failed.
    pub(super) fn client_frame(e: impl Into<FrameError>) -> Self {
        Self::frame(ErrorSource::Client, e.into())
    }

    /// Reading or writing the broker's socket failed.
    pub(super) fn broker_frame(e: impl Into<FrameError>) -> Self {
        Self::frame(ErrorSource::Broker, e.into())
    }

    fn failed(source: ErrorSource, e: anyhow::Error) -> Self {
        Self {
            source,
            cause: Cause::Failed(e),
        }
    }

    fn frame(source: ErrorSource, e: FrameError) -> Self {
        let cause = match e {
            // Not a socket problem: the peer does not speak the Kafka protocol.
            FrameError::Negative(_) => Cause::Failed(e.into()),
            e => Cause::Frame(e),
        };
        Self { source, cause }
    }

    /// Adds what was being done to a failure's message.
    pub(super) fn context(self, what: impl FnOnce() -> String) -> Self {
        match self.cause {
            Cause::Failed(e) => Self {
                source: self.source,
                cause: Cause::Failed(e.context(what())),
            },
            cause => Self { cause, ..self },
        }
    }

    /// Counts the error under its [`Reason`] and logs one line naming `peer`: a warning for
    /// what someone must fix, info or debug for a peer that went away.
    pub(super) fn log(&self, metrics: &Metrics, peer: SocketAddr) {
        let broker = self.source == ErrorSource::Broker;
        match (&self.cause, broker) {
            (Cause::Refused, _) => {}
            (Cause::Frame(FrameError::TooLarge { size, max }), false) => {
                metrics.error(Reason::FrameTooLarge);
                warn!(%peer, size, max, "client sent a frame larger than max_frame_bytes; closing connection");
            }
            (Cause::Frame(FrameError::TooLarge { size, max }), true) => {
                metrics.error(Reason::FrameTooLarge);
                warn!(%peer, size, max, "broker sent a frame larger than max_frame_bytes; closing connection");
            }
            (Cause::Frame(e), false) => {
                debug!(%peer, error = %e, "client connection dropped");
            }
            (Cause::Frame(e), true) => {
                let alert = match e {
                    FrameError::Io(io) => describe_broker_alert(io),
                    _ => None,
                };
                match alert {
                    Some(reason) => {
                        metrics.error(Reason::UpstreamTls);
                        warn!(%peer, %reason, "broker closed the connection; closing client connection");
                    }
                    None => {
                        metrics.error(Reason::UpstreamClosed);
                        info!(%peer, error = %e, "broker connection lost; closing client connection");
                    }
                }
            }
            (Cause::Failed(e), _) => {
                let (reason, side) = match self.source {
                    ErrorSource::Broker => (Reason::UpstreamProtocol, "broker"),
                    ErrorSource::Client => (Reason::ClientProtocol, "client"),
                    _ => (Reason::Internal, "internal"),
                };
                metrics.error(reason);
                warn!(%peer, source = side, error = %format!("{e:#}"), "closing client connection");
            }
        }
    }
}
