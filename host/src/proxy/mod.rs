//! The proxy: a bootstrap listener plus one listener per upstream broker (port-per-broker), each
//! client connection relayed to the matching broker by [`connection`].
//!
//! Per-broker listeners are bound lazily, the first time a broker appears in a response, so
//! clients never learn an address that does not point at Kapsule.

pub mod connection;
pub mod proxy_protocol;
pub mod records;
pub mod rewrite;
pub mod sasl;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Metrics;
use crate::config::{Config, ProxyConfig};
use records::RecordStage;
use rewrite::Advertiser;

/// Which broker a listener leads to.
#[derive(Debug, Clone)]
pub enum Route {
    /// The configured bootstrap broker.
    Bootstrap,
    /// The broker with this node id, at the address its metadata last gave.
    Node(i32),
}

#[derive(Debug, Clone)]
struct NodeEntry {
    upstream: String,
    advertised_port: u16,
}

/// State shared by every listener and connection of one proxy instance.
pub struct ProxyShared {
    /// Proxy settings.
    pub config: ProxyConfig,
    /// Metrics for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What happens to record batches (passthrough, re-encode, encrypt/decrypt).
    pub records: RecordStage,
    /// Client-side TLS (`proxy.tls`), reloaded in place.
    pub tls: Option<Arc<tls::TlsAcceptorHandle>>,
    /// Opens broker connections (TLS when `proxy.upstream_tls` is set).
    pub upstream: tls::UpstreamConnector,
    advertised_host: StrBytes,
    listen_ip: IpAddr,
    nodes: Mutex<HashMap<i32, NodeEntry>>,
    shutdown: watch::Receiver<bool>,
    tasks: TaskTracker,
}

impl ProxyShared {
    /// Address of the broker behind `route`.
    pub fn upstream_for(&self, route: &Route) -> anyhow::Result<String> {
        match route {
            Route::Bootstrap => Ok(self.config.upstream.clone()),
            Route::Node(id) => match self.nodes.lock().get(id) {
                Some(n) => Ok(n.upstream.clone()),
                None => bail!("no known address for broker node {id}"),
            },
        }
    }

    /// A receiver that flips to `true` when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn node_port(&self, node_id: i32) -> anyhow::Result<u16> {
        match self.config.node_port_base {
            Some(base) => {
                if node_id < 0 || node_id > self.config.max_node_id {
                    bail!(
                        "broker node id {node_id} is outside 0..={} served with node_port_base {base}; raise proxy.max_node_id",
                        self.config.max_node_id
                    );
                }
                Ok(base + node_id as u16)
            }
            None => Ok(0),
        }
    }
}

impl Advertiser for Arc<ProxyShared> {
    fn advertise(&self, node_id: i32, host: &str, port: i32) -> anyhow::Result<(StrBytes, i32)> {
        let upstream = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut nodes = self.nodes.lock();
        if let Some(entry) = nodes.get_mut(&node_id) {
            if entry.upstream != upstream {
                info!(node_id, old = %entry.upstream, new = %upstream, "broker address changed");
                entry.upstream = upstream;
            }
            return Ok((
                self.advertised_host.clone(),
                i32::from(entry.advertised_port),
            ));
        }
        let addr = SocketAddr::new(self.listen_ip, self.node_port(node_id)?);
        let std_listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding listener for broker node {node_id} on {addr}"))?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let advertised_port = listener.local_addr()?.port();
        info!(node_id, upstream = %upstream, port = advertised_port, "serving broker on its own port");
        nodes.insert(
            node_id,
            NodeEntry {
                upstream,
                advertised_port,
            },
        );
        drop(nodes);
        spawn_accept_loop(self.clone(), listener, Route::Node(node_id));
        Ok((self.advertised_host.clone(), i32::from(advertised_port)))
    }
}

fn spawn_accept_loop(shared: Arc<ProxyShared>, listener: TcpListener, route: Route) {
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let mut shutdown = shared.shutdown_signal();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        let route = route.clone();
                        shared.tasks.clone().spawn(async move {
                            if let Some((stream, peer)) = tls::accept_client(&shared, stream, peer).await {
                                let session = Arc::new(session::ClientSession::new(peer));
                                connection::serve(shared, stream, session, route).await;
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        shared.metrics.error("accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
    });
}

/// A bound, not yet running proxy.
pub struct Proxy {
    shared: Arc<ProxyShared>,
    bootstrap: TcpListener,
    shutdown_tx: watch::Sender<bool>,
}

impl Proxy {
    /// Binds the bootstrap listener. Per-broker listeners are bound later, on first sight.
    pub async fn bind(
        config: &Config,
        metrics: Arc<Metrics>,
        records: RecordStage,
    ) -> anyhow::Result<Self> {
        let listen: SocketAddr = config
            .proxy
            .listen
            .parse()
            .with_context(|| format!("proxy.listen `{}`", config.proxy.listen))?;
        let bootstrap = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding bootstrap listener on {listen}"))?;
        let advertised_host = match &config.proxy.advertised_host {
            Some(h) => h.clone(),
            None if listen.ip().is_unspecified() => "127.0.0.1".to_string(),
            None => listen.ip().to_string(),
        };
        // Certificate and key problems stop start-up here, with the file named.
        let tls = match &config.proxy.tls {
            Some(t) => Some(Arc::new(tls::TlsAcceptorHandle::new(t)?)),
            None => None,
        };
        let upstream = tls::UpstreamConnector::new(config.proxy.upstream_tls.as_ref())?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if let Some(t) = &tls {
            t.spawn_reloader(shutdown_rx.clone());
        }
        let shared = Arc::new(ProxyShared {
            config: config.proxy.clone(),
            metrics,
            records,
            tls,
            upstream,
            advertised_host: StrBytes::from_string(advertised_host),
            listen_ip: listen.ip(),
            nodes: Mutex::new(HashMap::new()),
            shutdown: shutdown_rx,
            tasks: TaskTracker::new(),
        });
        Ok(Self {
            shared,
            bootstrap,
            shutdown_tx,
        })
    }

    /// Address of the bootstrap listener (useful when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.bootstrap.local_addr()
    }

    /// Shared state (metrics, node map) for the admin endpoint and tests.
    pub fn shared(&self) -> Arc<ProxyShared> {
        self.shared.clone()
    }

    /// Serves until `stop` resolves, then stops accepting and waits for in-flight requests up to
    /// `shutdown_timeout_secs`.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        info!(listen = %self.local_addr()?, upstream = %self.shared.config.upstream, "kapsule proxy listening");
        spawn_accept_loop(self.shared.clone(), self.bootstrap, Route::Bootstrap);
        stop.await;
        info!("shutting down: no new connections, waiting for in-flight requests");
        let _ = self.shutdown_tx.send(true);
        let tasks = self.shared.tasks.clone();
        tasks.close();
        let timeout = Duration::from_secs(self.shared.config.shutdown_timeout_secs);
        if tokio::time::timeout(timeout, tasks.wait()).await.is_err() {
            warn!(
                remaining = tasks.len(),
                "shutdown timeout reached with connections still open; closing them"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
