//! Admin HTTP endpoint: `/livez`, `/readyz`, `/metrics`, and policy status/reload.
//!
//! A deliberately small HTTP/1.1 server (one request per connection, `Connection: close`): the
//! admin port serves probes and scrapes, not browsers, and a tiny parser keeps its attack
//! surface and dependencies small. Requests larger than 16 KiB are refused.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use metrics::Metrics;

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
    /// Proxy metrics.
    pub metrics: Arc<Metrics>,
    /// Bootstrap broker (`host:port`) probed by `/readyz`.
    pub upstream: String,
    /// Policy runtime, when policies are configured.
    pub policies: Option<Arc<dyn PolicyAdmin>>,
}

/// Serves the admin endpoint on `listener` until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin endpoint listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &state).await {
                            debug!(error = %e, "admin request failed");
                        }
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

async fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("admin request timed out"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 16 * 1024 {
            return respond(&mut stream, 431, "text/plain", "request header too large\n").await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/livez") => respond(&mut stream, 200, "text/plain", "ok\n").await,
        ("GET", "/readyz") => {
            let reachable = tokio::time::timeout(
                Duration::from_secs(2),
                TcpStream::connect(state.upstream.as_str()),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            let policies = state.policies.as_ref().map_or(Ok(()), |p| p.ready());
            if let Err(why) = policies {
                respond(&mut stream, 503, "text/plain", &format!("{why}\n")).await
            } else if reachable {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                let body = format!("upstream {} unreachable\n", state.upstream);
                respond(&mut stream, 503, "text/plain", &body).await
            }
        }
        ("GET", "/metrics") => {
            let body = state.metrics.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/policies") => match &state.policies {
            Some(p) => respond(&mut stream, 200, "application/json", &p.status_json()).await,
            None => respond(&mut stream, 200, "application/json", "[]\n").await,
        },
        ("POST", "/policies/reload") => match &state.policies {
            Some(p) => {
                let policies = p.clone();
                let result = tokio::task::spawn_blocking(move || policies.reload())
                    .await
                    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
                match result {
                    Ok(msg) => respond(&mut stream, 200, "text/plain", &msg).await,
                    Err(msg) => respond(&mut stream, 409, "text/plain", &msg).await,
                }
            }
            None => respond(&mut stream, 404, "text/plain", "no policies configured\n").await,
        },
        (_, "/livez" | "/readyz" | "/metrics" | "/policies" | "/policies/reload") => {
            respond(&mut stream, 405, "text/plain", "method not allowed\n").await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
