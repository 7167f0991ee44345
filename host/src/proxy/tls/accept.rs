//! Accepting a client socket: the PROXY protocol header when enabled, then the TLS handshake
//! when enabled. [`accept_client`] returns the connection ready to serve or an [`AcceptRefused`]
//! saying why it must close; the listener counts and logs it ([`AcceptRefusal::reason`],
//! [`AcceptRefusal::warning`]), so nothing here reaches into the proxy's shared state.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{describe_tls_error, principal, BoxStream, Side, TlsAcceptorHandle};
use crate::error::Reason;
use crate::principal::{AuthMechanism, Principal};
use crate::proxy::config::ProxyConfig;
use crate::proxy::proxy_protocol::{self, HeaderError, ProxyProtocol};
use crate::proxy::warn_limit::ConnectionWarning;

/// A client connection ready to be served: what [`accept_client`] returns.
pub struct Accepted {
    /// The byte stream (TLS when `proxy.tls` is set).
    pub stream: BoxStream,
    /// The client's address (from the PROXY header when enabled).
    pub peer: SocketAddr,
    /// The socket's own peer address (the load balancer when a PROXY header was read).
    pub socket_peer: SocketAddr,
    /// The principal of a verified client certificate, if any.
    pub principal: Option<Principal>,
    /// The TLS server name the client sent (SNI); `None` without TLS or when it sent none.
    pub server_name: Option<String>,
}

/// A connection [`accept_client`] closed before serving it.
#[derive(Debug)]
pub struct AcceptRefused {
    /// The address it is logged under: the socket's peer while the PROXY header is read, the
    /// client's address after.
    pub peer: SocketAddr,
    /// Why it was closed.
    pub why: AcceptRefusal,
}

/// Why a connection was closed before it was served. Each message says what happened and what
/// to do; every one is final for that connection only.
#[derive(Debug, thiserror::Error)]
pub enum AcceptRefusal {
    /// A PROXY header is expected, but the socket's peer may not send one.
    #[error("closing connection unread: the peer is not in proxy.proxy_protocol_from (the load balancers allowed to send PROXY headers; loopback only when empty), so it may not claim a client address; connect through the load balancer or add its address")]
    UntrustedProxyPeer,
    /// The PROXY header is malformed or missing.
    #[error("closing connection: no valid PROXY protocol v2 header (proxy.proxy_protocol is v2; connect through the load balancer): {0}")]
    BadProxyHeader(HeaderError),
    /// No PROXY header arrived in time.
    #[error("closing connection: no PROXY protocol v2 header within {0:?}")]
    ProxyHeaderTimeout(Duration),
    /// The client spoke plaintext to a TLS listener.
    #[error("closing connection: the client sent plaintext to a TLS listener (set security.protocol=SSL or SASL_SSL in the client)")]
    PlaintextOnTls,
    /// The client sent nothing before the handshake timeout.
    #[error("closing connection: the client sent nothing within the TLS handshake timeout")]
    SilentClient,
    /// The client closed the socket before sending anything (not logged).
    #[error("the client closed the connection before the TLS handshake")]
    ClosedBeforeHandshake,
    /// The TLS handshake failed (the message names the cause and the side to fix).
    #[error("closing connection: TLS handshake failed: {0}")]
    HandshakeFailed(String),
    /// The TLS handshake did not complete in time.
    #[error("closing connection: TLS handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// The verified client certificate names no principal under `proxy.tls.principal_from`.
    #[error("closing connection: the verified client certificate names no principal: {error} (proxy.tls.principal_from is {from}; issue certificates with it or change the setting)")]
    NoPrincipal {
        /// What the certificate lacks.
        error: String,
        /// The `principal_from` setting's label.
        from: &'static str,
    },
}

impl AcceptRefusal {
    /// The `kapsule_errors_total` reason it counts under; `None` when it is not counted.
    pub fn reason(&self) -> Option<Reason> {
        Some(match self {
            Self::UntrustedProxyPeer => Reason::ProxyProtocolUntrustedPeer,
            Self::BadProxyHeader(_) | Self::ProxyHeaderTimeout(_) => Reason::ProxyProtocol,
            Self::PlaintextOnTls
            | Self::SilentClient
            | Self::HandshakeFailed(_)
            | Self::HandshakeTimeout(_) => Reason::TlsHandshake,
            Self::NoPrincipal { .. } => Reason::TlsPrincipal,
            Self::ClosedBeforeHandshake => return None,
        })
    }

    /// Whether it is logged, and under which rate limit: `Some(Some(kind))` rate-limited per
    /// kind, `Some(None)` every time, `None` never.
    pub fn warning(&self) -> Option<Option<ConnectionWarning>> {
        match self {
            Self::UntrustedProxyPeer | Self::BadProxyHeader(_) | Self::ProxyHeaderTimeout(_) => {
                Some(Some(ConnectionWarning::ProxyHeader))
            }
            Self::PlaintextOnTls
            | Self::SilentClient
            | Self::HandshakeFailed(_)
            | Self::HandshakeTimeout(_) => Some(Some(ConnectionWarning::TlsHandshake)),
            Self::NoPrincipal { .. } => Some(None),
            Self::ClosedBeforeHandshake => None,
        }
    }
}

/// Prepares an accepted socket for [`crate::proxy::connection::serve`]: reads the PROXY
/// protocol header when `proxy.proxy_protocol` is set (the returned address is then the
/// client's, not the load balancer's), then completes the TLS handshake when `tls` (the
/// `proxy.tls` acceptor) is set.
///
/// Returns the stream, the client's address and, when the client presented a certificate that
/// chains to `client_ca_file`, its principal (mechanism `mTLS`, name per
/// `proxy.tls.principal_from`; logged once per connection), plus the TLS server name (SNI) the
/// client sent, which [`crate::proxy::sni`] routing uses (see [`Accepted`]).
///
/// Errors when the connection must be closed (no or bad PROXY header, plaintext on a TLS port,
/// certificate rejected or naming no principal, timeout); the caller logs and counts it.
pub async fn accept_client(
    config: &ProxyConfig,
    tls: Option<&TlsAcceptorHandle>,
    mut tcp: TcpStream,
    socket_peer: SocketAddr,
) -> Result<Accepted, AcceptRefused> {
    let _ = tcp.set_nodelay(true);
    let refused = |peer, why| AcceptRefused { peer, why };
    let peer = match config.proxy_protocol {
        ProxyProtocol::None => socket_peer,
        ProxyProtocol::V2 => {
            if !proxy_protocol::is_trusted_peer(&config.proxy_protocol_from, socket_peer.ip()) {
                return Err(refused(socket_peer, AcceptRefusal::UntrustedProxyPeer));
            }
            let read = proxy_protocol::read_v2(&mut tcp);
            match tokio::time::timeout(proxy_protocol::HEADER_TIMEOUT, read).await {
                Ok(Ok(Some(real))) => {
                    debug!(peer = %real, via = %socket_peer, "PROXY header accepted");
                    real
                }
                Ok(Ok(None)) => socket_peer,
                Ok(Err(e)) => return Err(refused(socket_peer, AcceptRefusal::BadProxyHeader(e))),
                Err(_) => {
                    let why = AcceptRefusal::ProxyHeaderTimeout(proxy_protocol::HEADER_TIMEOUT);
                    return Err(refused(socket_peer, why));
                }
            }
        }
    };
    let Some(tls) = tls else {
        return Ok(Accepted {
            stream: Box::new(tcp),
            peer,
            socket_peer,
            principal: None,
            server_name: None,
        });
    };
    let timeout = Duration::from_millis(tls.config.handshake_timeout_ms);
    // A TLS connection starts with a handshake record (0x16); a Kafka request starts with the
    // high byte of its length, almost always 0x00.
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => return Err(refused(peer, AcceptRefusal::PlaintextOnTls)),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(refused(peer, AcceptRefusal::ClosedBeforeHandshake)),
        Err(_) => return Err(refused(peer, AcceptRefusal::SilentClient)),
        Ok(Ok(_)) => {}
    }
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let why = AcceptRefusal::HandshakeFailed(describe_tls_error(&e, Side::Client));
            return Err(refused(peer, why));
        }
        Err(_) => return Err(refused(peer, AcceptRefusal::HandshakeTimeout(timeout))),
    };
    // rustls only hands out peer certificates it verified against client_ca_file.
    let principal = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => None,
        Some(leaf) => {
            let from = tls.config.principal_from;
            match principal::principal_name(leaf.as_ref(), from) {
                Ok(name) => {
                    let p = Principal::new(name, AuthMechanism::TlsClientCertificate);
                    info!(%peer, principal = %p, "client authenticated by its TLS certificate");
                    Some(p)
                }
                Err(e) => {
                    let why = AcceptRefusal::NoPrincipal {
                        error: e.to_string(),
                        from: from.label(),
                    };
                    return Err(refused(peer, why));
                }
            }
        }
    };
    let server_name = stream.get_ref().1.server_name().map(str::to_owned);
    Ok(Accepted {
        stream: Box::new(stream),
        peer,
        socket_peer,
        principal,
        server_name,
    })
}
