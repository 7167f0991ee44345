//! Admin HTTP endpoint: `/livez`, `/readyz`, `/metrics`, and policy status/reload.
//!
//! Served with hyper (HTTP/1.1, no keep-alive: probes and scrapes open one connection per
//! request). Bounds: at most `admin.max_connections` connections are served at once (more are
//! answered `503` and closed), request heads must arrive within 5 s, and a connection lives at most
//! 120 s (a policy reload may compile modules).
//!
//! Access: read-only endpoints are open to whoever can reach the listener, unless
//! `admin.require_token_for_reads` puts `GET /metrics` and `GET /policies` behind the token too
//! (`/livez` and `/readyz` stay open for probes). Mutating endpoints (`POST /policies/reload`)
//! require `Authorization: Bearer <admin token>` whenever a token is configured; configuration
//! validation refuses a non-loopback listener without one (see [`config::AdminConfig`]).
//! A missing or wrong token gets `401`.
//!
//! Browsers: a request carrying an `Origin` header (every cross-site `fetch`/form POST and every
//! non-GET a browser sends) gets `403`, so a web page cannot trigger a reload (CSRF). A `Host`
//! header that is not an IP address (the listen address, or any address when listening on a
//! wildcard), `localhost` or a name in `admin.allowed_hosts` gets `403` too, so a page on a
//! rebound DNS name cannot read `/metrics` or `/policies` (DNS rebinding). Requests without
//! `Host` (not a browser) are served. Both checks come before anything else, on every path.

pub mod config;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use config::AdminConfig;

use crate::error::Reason;
use crate::metrics::MetricsRegistry;
use crate::proxy::metrics::Metrics;

/// Time a client has to send a complete request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an admin connection may live (covers a policy reload).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Policy operations the admin endpoint exposes (implemented by the policy runtime).
pub trait PolicyAdmin: Send + Sync {
    /// JSON status of every policy binding (`GET /policies`).
    fn status_json(&self) -> String;
    /// Reloads every policy module now (`POST /policies/reload`); `Err` carries the refusals.
    fn reload(&self) -> Result<String, String>;
    /// `Err(why)` while policy modules are still compiling at start-up (`/readyz` answers 503).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    /// Every room's families, rendered by `GET /metrics`.
    pub registry: Arc<MetricsRegistry>,
    /// Where the endpoint counts its own refusals (`kapsule_errors_total`).
    pub metrics: Arc<Metrics>,
    /// Bootstrap broker (`host:port`) probed by `/readyz`.
    pub upstream: String,
    /// Policy runtime, when policies are configured.
    pub policies: Option<Arc<dyn PolicyAdmin>>,
    /// Bearer token required by mutating endpoints (`None`: only allowed on loopback, which
    /// config validation enforces).
    pub token: Option<Arc<Zeroizing<String>>>,
    /// Connections served at once.
    pub max_connections: usize,
    /// `GET /metrics` and `GET /policies` need the token too (`admin.require_token_for_reads`).
    pub require_token_for_reads: bool,
    /// Which `Host` headers are served (DNS-rebinding defence).
    pub hosts: AllowedHosts,
}

/// The `Host` header values the admin endpoint serves: IP addresses (the listen address, or any
/// when listening on a wildcard address: an address is never a rebound name), `localhost` and the
/// configured names, compared without port and case-insensitively.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    listen_ip: Option<std::net::IpAddr>,
    names: Vec<String>,
}

impl AllowedHosts {
    /// For a listener on `listen` (`None`: unparsable, no address accepted but `localhost` and
    /// `names`) and the extra names of `admin.allowed_hosts`.
    pub fn new(listen: Option<std::net::SocketAddr>, names: &[String]) -> Self {
        Self {
            listen_ip: listen.map(|a| a.ip()),
            names: names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a request with `Host: host` is served.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_without_port(host) else {
            return false;
        };
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            return match self.listen_ip {
                Some(l) if l.is_unspecified() => true,
                Some(l) => l.to_canonical() == ip.to_canonical(),
                None => false,
            };
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.names.contains(&name)
    }
}

/// `host` of `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when malformed.
fn host_without_port(host: &str) -> Option<&str> {
    let valid_port = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    };
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return ok.then_some(ip);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') => valid_port(port).then_some(h),
        // A bare IPv6 address is not a valid Host.
        Some(_) => None,
        None => Some(host),
    }
}

impl AdminState {
    /// State for `config` (reads the admin token from its environment variable or file).
    pub fn new(
        registry: Arc<MetricsRegistry>,
        metrics: Arc<Metrics>,
        upstream: String,
        policies: Option<Arc<dyn PolicyAdmin>>,
        config: &AdminConfig,
    ) -> anyhow::Result<Self> {
        let token = config.read_token().map_err(anyhow::Error::msg)?;
        if token.is_none() && !config.is_loopback() {
            anyhow::bail!(
                "admin.listen {} is not loopback: set admin.token_env or admin.token_file",
                config.listen
            );
        }
        if token.is_none() && config.require_token_for_reads {
            anyhow::bail!(
                "admin.require_token_for_reads needs a token: set admin.token_env or admin.token_file"
            );
        }
        Ok(Self {
            registry,
            metrics,
            upstream,
            policies,
            token: token.map(Arc::new),
            max_connections: config.max_connections.max(1),
            require_token_for_reads: config.require_token_for_reads,
            hosts: AllowedHosts::new(config.listen.parse().ok(), &config.allowed_hosts),
        })
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoint listening");
    let permits = Arc::new(Semaphore::new(state.max_connections.max(1)));
    let state = Arc::new(state);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        state.metrics.error(Reason::AdminConnectionsExhausted);
                        debug!(%peer, "admin connection refused: too many connections");
                        tokio::spawn(refuse_busy(stream));
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        serve_connection(stream, state).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Answers `503` to a connection over the limit, without reading its request.
async fn refuse_busy(mut stream: TcpStream) {
    const BODY: &str = "too many admin connections, retry later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(stream: TcpStream, state: Arc<AdminState>) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, &state).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "admin connection failed"),
        Err(_) => debug!("admin connection timed out"),
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Constant-time comparison of the request's bearer token with `expected`.
fn authorized(req: &Request<hyper::body::Incoming>, expected: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    crate::constant_time::eq(given.trim().as_bytes(), expected.as_bytes())
}

/// `401` asking for the bearer token.
fn unauthorized(state: &AdminState) -> Response<Full<Bytes>> {
    state.metrics.error(Reason::AdminUnauthorized);
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "missing or wrong bearer token (send `Authorization: Bearer <admin token>`)\n",
    );
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `Some(403)` for a request a browser page may have made: one with an `Origin` header, or
/// whose `Host` is not allowed ([`AllowedHosts`]).
fn refuse_browser(
    req: &Request<hyper::body::Incoming>,
    state: &AdminState,
) -> Option<Response<Full<Bytes>>> {
    const PLAIN: &str = "text/plain";
    if req.headers().contains_key(ORIGIN) {
        state.metrics.error(Reason::AdminBrowserOrigin);
        return Some(text(
            StatusCode::FORBIDDEN,
            PLAIN,
            "requests carrying an Origin header (made by a web page) are refused; use curl or a scraper\n",
        ));
    }
    let hosts = req.headers().get_all(HOST);
    let mut n = 0;
    for host in hosts.iter() {
        n += 1;
        let allowed = host.to_str().is_ok_and(|h| state.hosts.allows(h.trim()));
        if !allowed || n > 1 {
            state.metrics.error(Reason::AdminHostRefused);
            return Some(text(
                StatusCode::FORBIDDEN,
                PLAIN,
                "the Host header names neither this listener's address, localhost nor a name in admin.allowed_hosts (DNS rebinding defence); add the name to admin.allowed_hosts\n",
            ));
        }
    }
    None
}

async fn route(req: Request<hyper::body::Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain";
    const JSON: &str = "application/json";
    if let Some(refused) = refuse_browser(&req, state) {
        return refused;
    }
    let method = req.method().clone();
    let read_needs_token = state.require_token_for_reads
        && method == Method::GET
        && matches!(req.uri().path(), "/metrics" | "/policies");
    if read_needs_token {
        // require_token_for_reads without a token is refused at start-up.
        let ok = state.token.as_ref().is_some_and(|t| authorized(&req, t));
        if !ok {
            return unauthorized(state);
        }
    }
    match (&method, req.uri().path()) {
        (&Method::GET, "/livez") => text(StatusCode::OK, PLAIN, "ok\n"),
        (&Method::GET, "/readyz") => {
            let reachable = tokio::time::timeout(
                Duration::from_secs(2),
                TcpStream::connect(state.upstream.as_str()),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            let policies = state.policies.as_ref().map_or(Ok(()), |p| p.ready());
            if let Err(why) = policies {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n"))
            } else if reachable {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                let body = format!("upstream {} unreachable\n", state.upstream);
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.registry.render(),
        ),
        (&Method::GET, "/policies") => match &state.policies {
            Some(p) => text(StatusCode::OK, JSON, p.status_json()),
            None => text(StatusCode::OK, JSON, "[]\n"),
        },
        (&Method::POST, "/policies/reload") => {
            if let Some(token) = &state.token {
                if !authorized(&req, token) {
                    return unauthorized(state);
                }
            }
            match &state.policies {
                Some(p) => {
                    let policies = p.clone();
                    let result = tokio::task::spawn_blocking(move || policies.reload())
                        .await
                        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                    match result {
                        Ok(msg) => text(StatusCode::OK, PLAIN, msg),
                        Err(msg) => text(StatusCode::CONFLICT, PLAIN, msg),
                    }
                }
                None => text(StatusCode::NOT_FOUND, PLAIN, "no policies configured\n"),
            }
        }
        (_, "/livez" | "/readyz" | "/metrics" | "/policies" | "/policies/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

#[cfg(test)]
mod tests;
