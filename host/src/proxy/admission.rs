//! No work for clients the broker has not accepted.
//!
//! Encrypting a Produce costs the proxy work the client chooses: policy calls per topic name,
//! KMS data-key calls, and with the local KMS's `auto_create_keys` a permanent KEK per new key
//! id. Kapsule does that work before it forwards the request (it must encrypt first), so a
//! client the broker would refuse could otherwise drive it all before the broker closes the
//! connection. The rule:
//!
//! - A connection with a principal (SASL the broker accepted, or a verified TLS client
//!   certificate) is accepted.
//! - With `proxy.authentication: required`, a connection without one never gets past
//!   [`super::sasl::SaslTracker`].
//! - With `optional` (the default), Kapsule learns per upstream broker address whether the
//!   broker serves unauthenticated clients: a probe connection ([`probe`]) sends one
//!   `Metadata` request for no topics without authenticating. A broker that answers accepts
//!   anonymous clients; one that closes the connection instead requires authentication (Apache
//!   Kafka and tansu close an unauthenticated connection on its first request other than
//!   ApiVersions and SaslHandshake). The verdict is kept for [`VERDICT_TTL`] and shared by every
//!   connection to that address; concurrent connections wait for one probe.
//! - An unauthenticated Produce is prepared (policy, KMS) only once its broker is known to
//!   accept anonymous clients. Against a broker that requires authentication the Produce is
//!   answered SASL_AUTHENTICATION_FAILED, nothing is forwarded and no KMS is called, and every
//!   later unauthenticated connection to that broker is treated as `required` (its first request
//!   other than ApiVersions/SASL closes it, as the broker would). When the probe cannot tell (the
//!   broker unreachable or slow), the Produce is answered NETWORK_EXCEPTION (retriable) and no
//!   work is done: fail closed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::sasl::AuthenticationMode;
use super::session::ClientSession;
use super::ProxyShared;
use crate::kafka::frame::{encode_request, read_frame, write_frame, FrameError};

/// How long a probe's verdict about one broker address is trusted.
pub const VERDICT_TTL: Duration = Duration::from_secs(60);

/// What a broker address does with clients that have not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered an unauthenticated request.
    AcceptsAnonymous,
    /// It closed the connection instead of answering.
    RequiresAuthentication,
}

/// Why an unauthenticated connection may not have work done for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// The broker requires authentication and the connection has none.
    #[error("the broker at {upstream} requires SASL authentication and this connection has not authenticated; authenticate (SASL) before producing")]
    RequiresAuthentication {
        /// The broker address.
        upstream: String,
    },
    /// Kapsule could not learn whether the broker accepts unauthenticated clients.
    #[error("cannot tell whether the broker accepts unauthenticated clients ({reason}); retry, or authenticate")]
    Unknown {
        /// What went wrong with the probe.
        reason: String,
    },
}

/// Verdicts per upstream address, shared by every connection of one proxy.
#[derive(Debug, Default)]
pub struct Admission {
    verdicts: Mutex<HashMap<String, (Verdict, Instant)>>,
    /// One probe at a time (they are rare: one per address and [`VERDICT_TTL`]).
    probing: tokio::sync::Mutex<()>,
}

impl Admission {
    /// The fresh verdict about `upstream`, if any.
    pub fn known(&self, upstream: &str) -> Option<Verdict> {
        match self.verdicts.lock().get(upstream) {
            Some((v, at)) if at.elapsed() < VERDICT_TTL => Some(*v),
            _ => None,
        }
    }

    fn remember(&self, upstream: &str, v: Verdict) {
        self.verdicts
            .lock()
            .insert(upstream.to_owned(), (v, Instant::now()));
    }
}

/// The authentication mode that applies to `session`: `required` when configured, or when its
/// broker is known to require authentication; `optional` otherwise.
pub fn mode_for(shared: &ProxyShared, session: &ClientSession) -> AuthenticationMode {
    let configured = shared.config.authentication;
    if configured == AuthenticationMode::Required {
        return configured;
    }
    match session.upstream().and_then(|u| shared.admission.known(u)) {
        Some(Verdict::RequiresAuthentication) => AuthenticationMode::Required,
        _ => configured,
    }
}

/// Whether Kapsule may do work (policy calls, KMS calls, key creation) for a request of
/// `session`: at once for an authenticated connection; otherwise once its broker is known
/// (probed if need be) to accept unauthenticated clients.
pub async fn admit_work(shared: &ProxyShared, session: &ClientSession) -> Result<(), NotAdmitted> {
    if session.principal().is_some() {
        return Ok(());
    }
    let Some(upstream) = session.upstream() else {
        return Err(NotAdmitted::Unknown {
            reason: "the connection has no broker yet".into(),
        });
    };
    let verdict = match shared.admission.known(upstream) {
        Some(v) => v,
        None => {
            let _one = shared.admission.probing.lock().await;
            match shared.admission.known(upstream) {
                Some(v) => v,
                None => {
                    let v = probe(shared, upstream)
                        .await
                        .map_err(|e| NotAdmitted::Unknown {
                            reason: format!("{e:#}"),
                        })?;
                    shared.admission.remember(upstream, v);
                    match v {
                        Verdict::AcceptsAnonymous => {
                            info!(upstream, "the broker serves unauthenticated clients")
                        }
                        Verdict::RequiresAuthentication => info!(
                            upstream,
                            "the broker requires authentication: unauthenticated connections to it \
                             are treated as proxy.authentication: required"
                        ),
                    }
                    v
                }
            }
        }
    };
    match verdict {
        Verdict::AcceptsAnonymous => Ok(()),
        Verdict::RequiresAuthentication => Err(NotAdmitted::RequiresAuthentication {
            upstream: upstream.to_owned(),
        }),
    }
}

/// Asks `upstream`, on a connection of its own and without authenticating, for the metadata of
/// no topics: an answer means the broker serves unauthenticated clients; a closed connection
/// means it requires authentication. Errors: the broker cannot be reached or does not answer
/// within `proxy.upstream_connect_timeout_ms` (twice: once to connect, once to answer).
pub async fn probe(shared: &ProxyShared, upstream: &str) -> anyhow::Result<Verdict> {
    const VERSION: i16 = 4;
    let timeout = Duration::from_millis(shared.config.upstream_connect_timeout_ms);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("kapsule-admission-probe")));
    let body = MetadataRequest::default()
        .with_topics(Some(Vec::new()))
        .with_allow_auto_topic_creation(false);
    let frame = encode_request(ApiKey::Metadata, &header, &body)?;
    let mut stream = tokio::time::timeout(timeout, shared.upstream.connect(upstream))
        .await
        .map_err(|_| anyhow::anyhow!("no connection to {upstream} within {timeout:?}"))?
        .with_context(|| format!("connecting to {upstream}"))?;
    let answer = tokio::time::timeout(timeout, async {
        write_frame(&mut stream, &frame).await?;
        stream.flush().await?;
        Ok::<_, anyhow::Error>(read_frame(&mut stream, shared.config.max_frame_bytes).await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("{upstream} did not answer within {timeout:?}"))?;
    Ok(match answer {
        Ok(Some(_)) => Verdict::AcceptsAnonymous,
        // Closed (or reset) instead of answering: the broker wants authentication first.
        Ok(None) => Verdict::RequiresAuthentication,
        Err(e) if is_closed(&e) => Verdict::RequiresAuthentication,
        Err(e) => {
            warn!(upstream, error = %format!("{e:#}"), "admission probe failed");
            return Err(e.context(format!("reading {upstream}'s answer")));
        }
    })
}

/// Whether `e` says the peer closed or reset the connection.
fn is_closed(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind as K;
    e.chain().any(|c| {
        let io_closed = |io: &std::io::Error| {
            matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            )
        };
        c.downcast_ref::<std::io::Error>().is_some_and(io_closed)
            || c.downcast_ref::<FrameError>().is_some_and(|f| match f {
                FrameError::Truncated { .. } => true,
                FrameError::Io(io) => io_closed(io),
                _ => false,
            })
    })
}
