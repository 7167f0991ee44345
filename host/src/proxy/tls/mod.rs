//! TLS on both sides of the proxy (rustls with the ring provider, TLS 1.2 and 1.3), and the
//! stream type every connection is relayed over.
//!
//! * **Clients** ([`ServerTlsConfig`], `proxy.tls`): a certificate chain and key in PEM (PKCS#8,
//!   PKCS#1 RSA or SEC1 EC keys), optionally a CA that client certificates must chain to
//!   (`client_ca_file`; `require_client_cert` makes them mandatory). [`TlsAcceptorHandle`] holds
//!   the current rustls config; it is rebuilt when any of the files changes (checked every
//!   `reload_interval_secs`) and on SIGHUP. A reload that fails (half-written file, key that does
//!   not match) is logged and the previous config stays in use; open connections keep the session
//!   they negotiated, new handshakes use the new certificate.
//! * **Brokers** ([`UpstreamTlsConfig`], `proxy.upstream_tls`): the broker certificate is verified
//!   against `ca_file` (or the Mozilla roots when unset) and the host name Kapsule dials, or
//!   `server_name` when set. `cert_file`/`key_file` present a client certificate (mTLS).
//!   `insecure_skip_verify` turns verification off and is logged as an error at start-up and on
//!   every connection.
//!
//! [`accept::accept_client`] is what a listener runs for each accepted socket: the PROXY protocol header
//! when enabled, then the TLS handshake when enabled. Every failure there is one log line and a
//! closed connection; nothing else is affected. A client certificate verified against
//! `client_ca_file` makes the connection's principal (`proxy.tls.principal_from`, see
//! [`principal`]), mechanism `mTLS`.

pub mod accept;
pub mod principal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{error, info, warn};

/// A byte stream a connection is relayed over: plain TCP or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`], so connection code is the same for TCP and TLS.
pub type BoxStream = Box<dyn Stream>;

fn default_reload_interval_secs() -> u64 {
    10
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}

/// `proxy.tls`: TLS for client connections on every listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) matching the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients that present no certificate (needs `client_ca_file`). Default false: a
    /// certificate is then optional but verified when presented.
    #[serde(default)]
    pub require_client_cert: bool,
    /// How often the files are checked for changes, in seconds (default 10). SIGHUP reloads at once.
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Time a client has to complete the handshake, in milliseconds (default 10000).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Which part of a verified client certificate names the connection's principal: `subject`
    /// (default; RFC 4514 DN such as `CN=app,O=Example`, Kafka's form), `cn` or `san_dns`. A
    /// verified certificate without that part is refused (connection closed, logged).
    #[serde(default)]
    pub principal_from: principal::PrincipalFrom,
}

impl ServerTlsConfig {
    /// Appends one message per problem to `problems` (file contents are checked at start-up).
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.require_client_cert && self.client_ca_file.is_none() {
            problems.push(format!(
                "{path}.require_client_cert: needs {path}.client_ca_file (the CA client certificates must chain to)"
            ));
        }
        if !(1..=86_400).contains(&self.reload_interval_secs) {
            problems.push(format!(
                "{path}.reload_interval_secs: {} is outside 1..=86400",
                self.reload_interval_secs
            ));
        }
        if !(100..=300_000).contains(&self.handshake_timeout_ms) {
            problems.push(format!(
                "{path}.handshake_timeout_ms: {} is outside 100..=300000",
                self.handshake_timeout_ms
            ));
        }
    }

    fn files(&self) -> Vec<&Path> {
        let mut v = vec![self.cert_file.as_path(), self.key_file.as_path()];
        if let Some(ca) = &self.client_ca_file {
            v.push(ca);
        }
        v
    }
}

/// `proxy.upstream_tls`: TLS from Kapsule to the brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificate(s) the brokers' certificates must chain to (default: Mozilla's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain presented to brokers (mTLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name checked against every broker certificate instead of the host Kapsule dials (use when
    /// brokers are reached by IP address or share one certificate).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any broker certificate. For labs only: anyone on the path can read and change all
    /// traffic. Logged as an error.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl UpstreamTlsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(format!(
                "{path}: cert_file and key_file go together (both for mTLS to brokers, or neither)"
            ));
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                problems.push(format!(
                    "{path}.server_name: `{name}` is not a DNS name or IP address"
                ));
            }
        }
    }
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn parse_certs(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        anyhow::anyhow!(
            "key file {} holds no usable PEM private key (PKCS#8, RSA or EC): {e}",
            path.display()
        )
    })
}

fn root_store(certs: Vec<CertificateDer<'static>>, path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("CA file {} holds an unusable certificate", path.display()))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Builds a rustls server config from the files named in `config`.
///
/// Errors name the file and what is wrong with it (unreadable, not PEM, key does not match).
pub fn build_server_config(config: &ServerTlsConfig) -> anyhow::Result<ServerConfig> {
    let cert_pem = read_file(&config.cert_file, "certificate file")?;
    let key_pem = zeroize::Zeroizing::new(read_file(&config.key_file, "key file")?);
    let certs = parse_certs(&cert_pem, &config.cert_file, "certificate file")?;
    let key = parse_key(&key_pem, &config.key_file)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .context("TLS 1.2/1.3 with the ring provider")?;
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let pem = read_file(ca, "client CA file")?;
            let roots = root_store(parse_certs(&pem, ca, "client CA file")?, ca)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !config.require_client_cert {
                v = v.allow_unauthenticated();
            }
            let verifier = v
                .build()
                .with_context(|| format!("client CA file {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "certificate {} and key {} do not form a usable pair (does the key match the first certificate?)",
            config.cert_file.display(),
            config.key_file.display()
        )
    })?;
    server.alpn_protocols.clear();
    Ok(server)
}

/// The current client-side TLS config, swapped atomically on reload.
pub struct TlsAcceptorHandle {
    config: ServerTlsConfig,
    current: ArcSwap<ServerConfig>,
    /// Contents of the files the current config was built from (compared on each check).
    loaded_from: Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for TlsAcceptorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptorHandle")
            .field("cert_file", &self.config.cert_file)
            .finish_non_exhaustive()
    }
}

fn snapshot(config: &ServerTlsConfig) -> Vec<Vec<u8>> {
    config
        .files()
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

impl TlsAcceptorHandle {
    /// Loads the files; fails with a message naming the bad file (used at start-up).
    pub fn new(config: &ServerTlsConfig) -> anyhow::Result<Self> {
        let before = snapshot(config);
        let server = build_server_config(config).context("proxy.tls")?;
        Ok(Self {
            config: config.clone(),
            current: ArcSwap::from_pointee(server),
            loaded_from: Mutex::new(before),
        })
    }

    /// An acceptor using the certificate in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Rebuilds the config when the files changed since the last load (or always with `force`).
    /// Returns whether a new config is in force; on error the old one stays.
    pub fn reload(&self, force: bool) -> anyhow::Result<bool> {
        let now = snapshot(&self.config);
        if !force && *self.loaded_from.lock() == now {
            return Ok(false);
        }
        let server = build_server_config(&self.config)?;
        self.current.store(Arc::new(server));
        *self.loaded_from.lock() = now;
        Ok(true)
    }

    /// Checks the files every `reload_interval_secs` and on SIGHUP until `shutdown` flips.
    pub fn spawn_reloader(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let this = self.clone();
        let mut hup = signal(SignalKind::hangup()).ok();
        let every = Duration::from_secs(self.config.reload_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    _ = shutdown.changed() => return,
                };
                let h = this.clone();
                match tokio::task::spawn_blocking(move || h.reload(force)).await {
                    Ok(Ok(true)) => info!(
                        cert_file = %this.config.cert_file.display(),
                        "TLS certificate reloaded; new connections use it, open ones keep theirs"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => error!(
                        error = %format!("{e:#}"),
                        "TLS certificate reload failed; still serving the previous certificate"
                    ),
                    Err(e) => error!(error = %e, "TLS certificate reload task failed"),
                }
            }
        });
    }
}

/// Opens connections to brokers: TCP, then TLS when `proxy.upstream_tls` is set.
pub struct UpstreamConnector {
    tls: Option<(TlsConnector, Option<ServerName<'static>>, bool)>,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

mod insecure {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts every broker certificate (`insecure_skip_verify`); signatures are still checked
    /// so the handshake itself stays well-formed.
    #[derive(Debug)]
    pub struct SkipVerify(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for SkipVerify {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

impl UpstreamConnector {
    /// Plain TCP (no `proxy.upstream_tls`).
    pub fn plain() -> Self {
        Self { tls: None }
    }

    /// Builds the connector; errors name the bad file.
    pub fn new(config: Option<&UpstreamTlsConfig>) -> anyhow::Result<Self> {
        let Some(config) = config else {
            return Ok(Self::plain());
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .context("TLS 1.2/1.3 with the ring provider")?;
        let builder = if config.insecure_skip_verify {
            error!("proxy.upstream_tls.insecure_skip_verify is set: broker certificates are NOT verified; anyone on the network path can read and alter all traffic. Never use this outside a lab.");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(insecure::SkipVerify(provider)))
        } else {
            let roots = match &config.ca_file {
                Some(ca) => {
                    let pem = read_file(ca, "proxy.upstream_tls.ca_file")?;
                    root_store(parse_certs(&pem, ca, "proxy.upstream_tls.ca_file")?, ca)?
                }
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots)
        };
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let certs = parse_certs(
                    &read_file(cert, "proxy.upstream_tls.cert_file")?,
                    cert,
                    "proxy.upstream_tls.cert_file",
                )?;
                let key_pem =
                    zeroize::Zeroizing::new(read_file(key, "proxy.upstream_tls.key_file")?);
                let key = parse_key(&key_pem, key)?;
                builder.with_client_auth_cert(certs, key).with_context(|| {
                    format!(
                        "proxy.upstream_tls: certificate {} and its key do not form a usable pair",
                        cert.display()
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let server_name = match &config.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .with_context(|| format!("proxy.upstream_tls.server_name `{n}`"))?,
            ),
            None => None,
        };
        Ok(Self {
            tls: Some((
                TlsConnector::from(Arc::new(client)),
                server_name,
                config.insecure_skip_verify,
            )),
        })
    }

    /// Connects to `addr` (`host:port`) and completes the TLS handshake when configured. The
    /// caller bounds the time this takes.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<BoxStream> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("TCP connect to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, fixed_name, insecure)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = match fixed_name {
            Some(n) => n.clone(),
            None => {
                let (host, _) = crate::kafka::split_host_port(addr)
                    .with_context(|| format!("broker address `{addr}` is not host:port"))?;
                ServerName::try_from(host.clone()).with_context(|| {
                    format!("broker host `{host}` is not a valid TLS server name; set proxy.upstream_tls.server_name")
                })?
            }
        };
        if *insecure {
            warn!(broker = %addr, "TLS to broker without certificate verification (insecure_skip_verify)");
        }
        let tls = connector.connect(name, tcp).await.map_err(|e| {
            anyhow::anyhow!(
                "TLS handshake with broker {addr} failed: {}",
                describe_tls_error(&e, Side::Broker)
            )
        })?;
        Ok(Box::new(tls))
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Broker,
}

/// One operator-facing sentence for a failed handshake.
fn describe_tls_error(e: &std::io::Error, side: Side) -> String {
    use rustls::{CertificateError, Error as E};
    let peer = match side {
        Side::Client => "client",
        Side::Broker => "broker",
    };
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return format!("{e}");
    };
    match inner {
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!("the {peer}'s certificate has expired ({inner})")
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the {peer}'s certificate is not issued by a trusted CA ({inner}); check {}",
            match side {
                Side::Client => "proxy.tls.client_ca_file",
                Side::Broker => "proxy.upstream_tls.ca_file",
            }
        ),
        E::InvalidCertificate(_) => format!("the {peer}'s certificate was rejected ({inner})"),
        E::NoCertificatesPresented => format!(
            "the {peer} presented no certificate but one is required ({inner})"
        ),
        E::AlertReceived(alert) => format!(
            "the {peer} aborted the handshake with alert {alert:?} (it probably does not trust Kapsule's certificate)"
        ),
        E::InvalidMessage(_) => format!(
            "the {peer} did not speak TLS ({inner}); is it configured for plaintext?"
        ),
        other => format!("{other}"),
    }
}

/// One operator-facing sentence when a broker connection ended because the broker sent a TLS
/// alert after Kapsule considered the handshake done; `None` for any other I/O error.
///
/// With TLS 1.3 the client finishes its handshake before the server has checked the client's
/// certificate, so a broker that requires mTLS and refuses Kapsule's certificate (or gets none)
/// says so with an alert on the first read, not during [`UpstreamConnector::connect`].
pub fn describe_broker_alert(e: &std::io::Error) -> Option<String> {
    use rustls::{AlertDescription as A, Error as E};
    let Some(E::AlertReceived(alert)) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return None;
    };
    Some(match alert {
        A::BadCertificate
        | A::CertificateRequired
        | A::UnknownCA
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate => format!(
            "the broker refused Kapsule's TLS client certificate (alert {alert:?}); set \
             proxy.upstream_tls.cert_file and key_file to a certificate the broker's truststore \
             accepts"
        ),
        other => format!("the broker ended the TLS session with alert {other:?}"),
    })
}

#[cfg(test)]
mod tests;
