//! The proxy: a bootstrap listener plus one listener per upstream broker (port-per-broker), each
//! client connection relayed to the matching broker by [`connection`].
//!
//! Per-broker listeners are bound lazily, the first time a broker appears in a response, so
//! clients never learn an address that does not point at Kapsule. With `proxy.sni` there is only
//! the one TLS listener and the handshake's server name picks the broker ([`sni`]).

pub mod admission;
pub mod budget;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod proxy_protocol;
pub mod records;
pub mod rewrite;
pub mod sasl;
pub mod session;
pub mod sni;
pub mod tls;
pub mod topic_ids;
pub mod warn_limit;

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

use crate::error::Reason;
use config::ProxyConfig;
use metrics::Metrics;
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
    /// With `proxy.sni`: the routing config and the port advertised for every broker.
    sni: Option<(sni::SniConfig, u16)>,
    nodes: Mutex<HashMap<i32, NodeEntry>>,
    /// Held while asking the bootstrap broker for the cluster's brokers; holds when the last
    /// look-up finished, so concurrent and repeated look-ups share one (see
    /// [`ProxyShared::resolve_upstream`]).
    discovery: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Rate limits for per-connection WARN lines (TLS, PROXY header, SNI).
    pub warnings: warn_limit::ConnectionWarnings,
    shutdown: watch::Receiver<bool>,
    tasks: TaskTracker,
    /// Which brokers serve unauthenticated clients (see [`admission`]).
    pub(crate) admission: admission::Admission,
}

/// Shortest time between two Metadata look-ups for brokers this instance has not seen: a client
/// naming unknown node ids (SNI names are client-chosen) costs the broker at most one look-up per
/// interval, however many connections it opens.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

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

    /// Address of the broker behind `route`, asking the bootstrap broker for the cluster's
    /// brokers first when this instance has not seen `route`'s node yet.
    ///
    /// That happens in a fleet: with `proxy.sni` (or a load balancer in front of per-broker
    /// ports) a client may reach an instance that never relayed the metadata naming the broker,
    /// e.g. one that just restarted. One Metadata request (no topics) to `proxy.upstream` fills
    /// the table through the same [`Advertiser`] path as relayed responses.
    pub async fn resolve_upstream(self: &Arc<Self>, route: &Route) -> anyhow::Result<String> {
        if let Ok(addr) = self.upstream_for(route) {
            return Ok(addr);
        }
        let Route::Node(id) = route else {
            return self.upstream_for(route);
        };
        // One look-up at a time; whoever waited re-checks what it found, and within
        // DISCOVERY_INTERVAL of the last look-up an unknown id is refused without a new one.
        let mut last = self.discovery.lock().await;
        if let Ok(addr) = self.upstream_for(route) {
            return Ok(addr);
        }
        if last.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL) {
            info!(node_id = id, upstream = %self.config.upstream, "broker not seen yet on this instance; asking the bootstrap broker for the cluster's brokers");
            let timeout = Duration::from_millis(self.config.upstream_connect_timeout_ms);
            let found = tokio::time::timeout(timeout, self.discover_brokers()).await;
            *last = Some(std::time::Instant::now());
            found
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no Metadata answer from {} within {timeout:?}",
                        self.config.upstream
                    )
                })?
                .with_context(|| {
                    format!(
                        "learning broker {id}'s address from {}",
                        self.config.upstream
                    )
                })?;
        }
        drop(last);
        self.upstream_for(route).inspect_err(|_| {
            let warning = warn_limit::ConnectionWarning::SniUnknownName;
            if let Some(suppressed) = self.warnings.admit(warning) {
                warn!(
                    node_id = id,
                    suppressed, "closing connection: the cluster's metadata names no broker {id}"
                );
            }
        })
    }

    /// Sends one Metadata request for no topics to the bootstrap broker and records every broker
    /// it names.
    async fn discover_brokers(self: &Arc<Self>) -> anyhow::Result<()> {
        use crate::kafka::frame::{decode_response, encode_request, read_frame, write_frame};
        use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, RequestHeader};
        use tokio::io::AsyncWriteExt;
        const VERSION: i16 = 4;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str("kapsule-discovery")));
        let body = MetadataRequest::default().with_topics(Some(Vec::new()));
        let frame = encode_request(ApiKey::Metadata, &header, &body)?;
        let mut stream = self.upstream.connect(&self.config.upstream).await?;
        write_frame(&mut stream, &frame).await?;
        stream.flush().await?;
        let resp = read_frame(&mut stream, self.config.max_frame_bytes)
            .await?
            .context("the broker closed the connection before answering Metadata")?;
        let (_, resp) = decode_response::<MetadataResponse>(ApiKey::Metadata, VERSION, resp)?;
        for b in &resp.brokers {
            self.advertise(b.node_id.0, b.host.as_str(), b.port)?;
        }
        Ok(())
    }

    /// Counts and logs (rate-limited per kind) a connection [`tls::accept::accept_client`] closed.
    fn log_refused_accept(&self, refused: &tls::accept::AcceptRefused) {
        let (peer, why) = (refused.peer, &refused.why);
        if let Some(reason) = why.reason() {
            self.metrics.error(reason);
        }
        match why.warning() {
            None => {}
            Some(None) => warn!(%peer, "{why}"),
            Some(Some(kind)) => {
                if let Some(suppressed) = self.warnings.admit(kind) {
                    warn!(%peer, suppressed, "{why}");
                }
            }
        }
    }

    /// A receiver that flips to `true` when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The port clients are told for `node_id` served on `listening`: `advertised_port_base + n`
    /// when set (a load balancer's port), else the port Kapsule listens on.
    fn advertised_port(&self, node_id: i32, listening: u16) -> u16 {
        match self.config.advertised_port_base {
            // Validation keeps base + max_node_id within u16 and node_port checked the id.
            Some(base) => base + node_id as u16,
            None => listening,
        }
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
        if let Some((sni, port)) = &self.sni {
            // One shared listener: remember where the broker is, advertise its name.
            match nodes.get_mut(&node_id) {
                Some(entry) if entry.upstream != upstream => {
                    info!(node_id, old = %entry.upstream, new = %upstream, "broker address changed");
                    entry.upstream = upstream;
                }
                Some(_) => {}
                None => {
                    info!(node_id, upstream = %upstream, name = %sni.broker_name(node_id), port, "serving broker by TLS server name");
                    nodes.insert(
                        node_id,
                        NodeEntry {
                            upstream,
                            advertised_port: *port,
                        },
                    );
                }
            }
            return Ok((
                StrBytes::from_string(sni.broker_name(node_id)),
                i32::from(*port),
            ));
        }
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
        let port = listener.local_addr()?.port();
        let advertised_port = self.advertised_port(node_id, port);
        info!(node_id, upstream = %upstream, port, advertised_port, "serving broker on its own port");
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
                        // Behind a load balancer every line of the connection names the socket
                        // peer (`via`, the load balancer) beside the client address it claimed (`peer`).
                        let span = match shared.config.proxy_protocol {
                            proxy_protocol::ProxyProtocol::V2 => tracing::info_span!("proxied", via = %peer),
                            proxy_protocol::ProxyProtocol::None => tracing::Span::none(),
                        };
                        shared.tasks.clone().spawn(tracing::Instrument::instrument(async move {
                            let tls = shared.tls.as_deref();
                            let accepted = match tls::accept::accept_client(&shared.config, tls, stream, peer).await {
                                Ok(accepted) => accepted,
                                Err(refused) => return shared.log_refused_accept(&refused),
                            };
                            let peer = accepted.peer;
                            let route = match &shared.sni {
                                Some((sni, _)) => match sni.route_for(accepted.server_name.as_deref()) {
                                    Ok(r) => r,
                                    Err(e) => {
                                        shared.metrics.error(Reason::SniUnknownName);
                                        if let Some(suppressed) = shared.warnings.admit(warn_limit::ConnectionWarning::SniUnknownName) {
                                            warn!(%peer, suppressed, "closing connection: {e}; connect to a name Kapsule advertises");
                                        }
                                        return;
                                    }
                                },
                                None => route,
                            };
                            let session = Arc::new(match accepted.principal {
                                Some(p) => session::ClientSession::authenticated(peer, p),
                                None => session::ClientSession::new(peer),
                            });
                            connection::serve(shared, accepted.stream, session, route).await;
                        }, span));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        shared.metrics.error(Reason::Accept);
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
        config: &ProxyConfig,
        metrics: Arc<Metrics>,
        records: RecordStage,
    ) -> anyhow::Result<Self> {
        let listen: SocketAddr = config
            .listen
            .parse()
            .with_context(|| format!("proxy.listen `{}`", config.listen))?;
        let bootstrap = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding bootstrap listener on {listen}"))?;
        let advertised_host = match &config.advertised_host {
            Some(h) => h.clone(),
            None if listen.ip().is_unspecified() => "127.0.0.1".to_string(),
            None => listen.ip().to_string(),
        };
        // Certificate and key problems stop start-up here, with the file named.
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(tls::TlsAcceptorHandle::new(t)?)),
            None => None,
        };
        let upstream = tls::UpstreamConnector::new(config.upstream_tls.as_ref())?;
        let sni = match (&config.sni, &config.tls) {
            (Some(sni), Some(tls)) => {
                for warning in sni.certificate_warnings(&tls.cert_file) {
                    warn!("{warning}");
                }
                let port = sni
                    .advertised_port
                    .unwrap_or(bootstrap.local_addr()?.port());
                info!(bootstrap = %sni.bootstrap_host, brokers = %sni.broker_host, port, "SNI routing: every broker on the one TLS listener");
                Some((sni.clone(), port))
            }
            _ => None,
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if let Some(t) = &tls {
            t.spawn_reloader(shutdown_rx.clone());
        }
        let shared = Arc::new(ProxyShared {
            config: config.clone(),
            metrics,
            records,
            tls,
            upstream,
            advertised_host: StrBytes::from_string(advertised_host),
            listen_ip: listen.ip(),
            sni,
            nodes: Mutex::new(HashMap::new()),
            discovery: tokio::sync::Mutex::new(None),
            warnings: warn_limit::ConnectionWarnings::default(),
            shutdown: shutdown_rx,
            tasks: TaskTracker::new(),
            admission: admission::Admission::default(),
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
        let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
        info!(listen = %self.local_addr()?, upstream = %self.shared.config.upstream, worker_threads, "kapsule proxy listening");
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
