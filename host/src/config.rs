//! Configuration: a YAML file (`kapsule.yaml`), overridable by command-line flags.
//!
//! Loading never stops at the first problem: [`Config::load`] expands `${ENV}` references, parses
//! with unknown fields rejected, then validates and returns *every* problem found, each with its
//! YAML path, so an operator fixes a config in one round.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::crypto::keys::DekConfig;
use crate::kafka::frame::DEFAULT_MAX_FRAME_BYTES;
use crate::kms::KmsConfig;
use crate::policy::config::PolicyConfig;
use crate::proxy::proxy_protocol::ProxyProtocol;
use crate::proxy::sasl::AuthenticationMode;
use crate::proxy::sni::SniConfig;
use crate::proxy::tls::{ServerTlsConfig, UpstreamTlsConfig};

/// What the proxy does with record batches it does not need to encrypt or decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordsMode {
    /// Forward record batches byte-for-byte (default).
    #[default]
    Passthrough,
    /// Decode and re-encode every record batch (exercises the codec end to end).
    Reencode,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners and upstream.
    pub proxy: ProxyConfig,
    /// Admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Record handling when no encryption applies.
    #[serde(default)]
    pub records: RecordsMode,
    /// Key management: where KEKs live (`type: local` or `type: vault`). Required when any rule
    /// or policy binding may encrypt.
    #[serde(default)]
    pub kms: Option<KmsConfig>,
    /// Data-key lifecycle: rotation limits and caches.
    #[serde(default)]
    pub deks: DekConfig,
    /// Which topics are encrypted, how, and under which key: built-in rules and Wasm bindings.
    /// Without this section Kapsule encrypts nothing.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Where writer schemas come from, for rules that encrypt fields of schema-encoded values
    /// (`value: {schema: ...}`). See docs/schema-fields.md.
    #[serde(default)]
    pub schema_registry: Option<crate::schema::registry::SchemaRegistryConfig>,
}

/// Listeners, upstream broker and connection limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Bootstrap listener, e.g. `0.0.0.0:9192`.
    pub listen: String,
    /// Bootstrap broker address, `host:port`.
    pub upstream: String,
    /// Host name advertised to clients for every broker (default: the listen host, or 127.0.0.1
    /// when listening on a wildcard address).
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// First port of the per-broker listeners: broker `n` is served on `node_port_base + n`.
    /// When unset, each broker gets a free port chosen by the OS when it first appears.
    #[serde(default)]
    pub node_port_base: Option<u16>,
    /// Port advertised to clients for broker `n` is `advertised_port_base + n` instead of the
    /// port Kapsule listens on (needs `node_port_base`). For a fleet behind a load balancer whose
    /// per-broker ports differ from the instances' own: every instance then advertises the load
    /// balancer's ports (with `advertised_host` naming the load balancer).
    #[serde(default)]
    pub advertised_port_base: Option<u16>,
    /// Highest broker node id served when `node_port_base` is set (default 999).
    #[serde(default = "default_max_node_id")]
    pub max_node_id: i32,
    /// Largest request or response frame accepted, in bytes (default 100 MiB, as Kafka).
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most bytes the record stage decompresses for one Produce request or one Fetch response,
    /// summed over its batches (default twice `max_frame_bytes`). A Produce request over it is
    /// refused with RECORD_LIST_TOO_LARGE; a Fetch response is cut at the last batch that fits.
    #[serde(default)]
    pub max_decompressed_bytes_per_request: Option<usize>,
    /// Most bytes one record batch decompresses to (default 16 MiB, sixteen times Kafka's default
    /// `message.max.bytes`). A produced batch over it is refused with RECORD_LIST_TOO_LARGE; a
    /// fetched one fails its partition with CORRUPT_MESSAGE.
    #[serde(default = "default_max_decompressed_bytes_per_batch")]
    pub max_decompressed_bytes_per_batch: usize,
    /// Process-wide bound on memory held for record data: batches being transformed (charged
    /// three times their decompressed size), re-encoded records until the frame carrying them
    /// is done (twice their size) and broker responses not yet written to their clients, summed
    /// over every connection (default 512 MiB). See docs/deployment.md, "Memory".
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: usize,
    /// Longest wait for the memory budget, in milliseconds (default 5000): a Produce partition
    /// still waiting is refused with REQUEST_TIMED_OUT (retriable, nothing forwarded), a Fetch
    /// partition ends where it got to, and a response still waiting closes its connection.
    #[serde(default = "default_memory_wait_ms")]
    pub memory_wait_ms: u64,
    /// Unwritten response bytes one connection may hold (default 1 MiB; a larger response is
    /// held alone). While a client does not read them, Kapsule reads no more of its requests.
    #[serde(default = "default_max_response_bytes_per_connection")]
    pub max_response_bytes_per_connection: usize,
    /// Requests a client may have in flight on one connection before the proxy stops reading
    /// from it (default 64).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Timeout for connecting to a broker, in milliseconds (default 10000).
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, in seconds (default 30).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// TLS for client connections on every listener (plaintext when unset).
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// TLS to the brokers (plaintext when unset).
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// `v2`: every connection starts with a PROXY protocol v2 header from a load balancer
    /// (default `none`).
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Socket peers (CIDR blocks) allowed to send the PROXY protocol header: the load
    /// balancers. A connection from any other address is closed unread. Empty (the default):
    /// loopback only (`127.0.0.0/8`, `::1`), for a load balancer on the same host; set it to the
    /// load balancers' addresses otherwise. See docs/security.md.
    #[serde(default)]
    pub proxy_protocol_from: Vec<crate::proxy::proxy_protocol::Cidr>,
    /// SNI routing: the whole cluster on the one TLS port `listen`, the TLS server name choosing
    /// the broker (needs `tls`). Port-per-broker when unset (the default).
    #[serde(default)]
    pub sni: Option<SniConfig>,
    /// `required`: a connection with no principal (no SASL exchange the broker accepted, no
    /// verified TLS client certificate) may send only ApiVersions, SaslHandshake and
    /// SaslAuthenticate; anything else closes it, nothing forwarded. `optional` (default):
    /// the broker decides. See docs/deployment.md, "SASL".
    #[serde(default)]
    pub authentication: AuthenticationMode,
    /// The JWT claim an OAUTHBEARER client's principal is read from (default `sub`). Must be the
    /// claim the broker takes it from: `sasl.oauthbearer.sub.claim.name` (or the unsecured
    /// validator's `unsecuredValidatorPrincipalClaimName`). See docs/security.md.
    #[serde(default = "default_oauthbearer_sub_claim_name")]
    pub oauthbearer_sub_claim_name: String,
}

fn default_oauthbearer_sub_claim_name() -> String {
    crate::proxy::sasl::DEFAULT_OAUTH_CLAIM.to_owned()
}

/// Admin endpoint settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint (default `127.0.0.1:9190`).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Environment variable holding the bearer token that mutating endpoints
    /// (`POST /policies/reload`) require. A token (this or `token_file`) is mandatory when
    /// `listen` is not a loopback address; when set, it is required on loopback too.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding that bearer token (read at start-up). Exclusive with `token_env`.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// Admin connections served at once (default 16); more are answered 503 and closed.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Adds per-principal families to `/metrics` (`kapsule_principal_requests`,
    /// `kapsule_principal_bytes`; default off).
    #[serde(default)]
    pub principal_metrics: bool,
    /// Most distinct principal labels (default 100); later principals are counted as `other`.
    #[serde(default = "default_max_principal_labels")]
    pub max_principal_labels: usize,
    /// `GET /metrics` and `GET /policies` require the bearer token too (default off: only
    /// `POST /policies/reload` does). Needs `token_env` or `token_file`. `/livez` and `/readyz`
    /// stay open for probes.
    #[serde(default)]
    pub require_token_for_reads: bool,
    /// Host names (without port) accepted in a request's `Host` header besides IP addresses and
    /// `localhost`, e.g. the Service name a scraper uses. Any other name is refused with 421
    /// (DNS rebinding). See docs/security.md.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: None,
            token_file: None,
            max_connections: default_admin_max_connections(),
            principal_metrics: false,
            max_principal_labels: default_max_principal_labels(),
            require_token_for_reads: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// True when `listen` parses as a loopback socket address (127.0.0.0/8 or ::1).
    pub fn is_loopback(&self) -> bool {
        self.listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// The configured bearer token, trimmed (`None` when neither source is set).
    pub fn read_token(&self) -> Result<Option<zeroize::Zeroizing<String>>, String> {
        let raw = match (&self.token_env, &self.token_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| format!("admin.token_env: environment variable `{var}` is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("admin.token_file: cannot read {}: {e}", file.display()))?,
            (None, None) => return Ok(None),
        };
        let token = zeroize::Zeroizing::new(raw.trim().to_owned());
        drop(zeroize::Zeroizing::new(raw));
        if token.len() < 16 {
            return Err(
                "admin token: must be at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
            );
        }
        Ok(Some(token))
    }

    /// Pushes every problem of the `admin:` section into `problems`.
    fn validate(&self, problems: &mut Vec<String>) {
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "admin.listen: `{}` is not an IP:port socket address (e.g. 127.0.0.1:9190)",
                self.listen
            ));
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            problems.push("admin: set only one of token_env and token_file".into());
        }
        if self.principal_metrics && self.max_principal_labels == 0 {
            problems.push("admin.max_principal_labels: must be at least 1".into());
        }
        if self.max_connections == 0 {
            problems.push("admin.max_connections: must be at least 1".into());
        }
        for host in &self.allowed_hosts {
            let bad = host.is_empty()
                || host.contains(':')
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if bad {
                problems.push(format!(
                    "admin.allowed_hosts: `{}` is not a host name (letters, digits, `-`, `.`; no port)",
                    host.escape_debug()
                ));
            }
        }
        let no_token = self.token_env.is_none() && self.token_file.is_none();
        if self.require_token_for_reads && no_token {
            problems.push(
                "admin.require_token_for_reads: needs a token; set admin.token_env or admin.token_file"
                    .into(),
            );
        }
        match self.read_token() {
            Err(e) => problems.push(e),
            Ok(None) if self.listen.parse::<SocketAddr>().is_ok() && !self.is_loopback() => {
                problems.push(format!(
                    "admin.listen: `{}` is not a loopback address, so POST /policies/reload must be \
                     protected: set admin.token_env or admin.token_file to a bearer token",
                    self.listen
                ))
            }
            Ok(_) => {}
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9190".into()
}
impl Config {
    /// Settings that are valid alone but break, or risk data, when Kapsule runs behind a load
    /// balancer as one of several instances (signalled by `proxy_protocol: v2`,
    /// `advertised_port_base` or `sni`). Logged as warnings at start-up; each says what to do.
    pub fn fleet_warnings(&self) -> Vec<String> {
        let p = &self.proxy;
        let behind_lb = p.proxy_protocol == ProxyProtocol::V2
            || p.advertised_port_base.is_some()
            || p.sni.is_some();
        let mut out = Vec::new();
        if !behind_lb {
            return out;
        }
        if let Some(crate::kms::KmsConfig::Local(local)) = &self.kms {
            out.push(format!(
                "kms.type local behind a load balancer: KEKs live in this instance's file {}; \
                 instances that do not share that exact file hold different KEKs under the same \
                 key id{} and cannot decrypt each other's records. Use kms.type vault (one \
                 transit engine shared by every instance) for more than one instance",
                local.key_file.display(),
                if local.auto_create_keys {
                    " (auto_create_keys makes one per instance)"
                } else {
                    ""
                }
            ));
        }
        if p.sni.is_none() && p.proxy_protocol == ProxyProtocol::V2 {
            if p.node_port_base.is_none() {
                out.push(
                    "proxy.proxy_protocol is v2 but proxy.node_port_base is unset: per-broker \
                     ports are chosen by the OS and differ per instance, so a load balancer \
                     cannot forward to them. Set proxy.node_port_base (and \
                     proxy.advertised_port_base if the load balancer's ports differ)"
                        .into(),
                );
            }
            if p.advertised_host.is_none() {
                out.push(
                    "proxy.proxy_protocol is v2 but proxy.advertised_host is unset: clients are \
                     told this instance's own address, bypass the load balancer and are refused \
                     for sending no PROXY header. Set proxy.advertised_host to the load \
                     balancer's name"
                        .into(),
                );
            }
        }
        out
    }
}

impl ProxyConfig {
    /// The process-wide memory budget these settings describe.
    pub fn memory_budget(&self) -> crate::proxy::budget::MemoryBudget {
        crate::proxy::budget::MemoryBudget::new(
            self.memory_budget_bytes,
            std::time::Duration::from_millis(self.memory_wait_ms),
            self.max_response_bytes_per_connection,
        )
    }

    fn validate_memory(&self, problems: &mut Vec<String>) {
        use crate::proxy::budget::WORKING_COPIES;
        const MIN_BUDGET: usize = 16 * 1024 * 1024;
        if self.memory_budget_bytes < MIN_BUDGET {
            problems.push(format!(
                "proxy.memory_budget_bytes: {} is below the minimum of {MIN_BUDGET} (16 MiB)",
                self.memory_budget_bytes
            ));
        }
        if self.memory_budget_bytes < self.max_frame_bytes {
            problems.push(format!(
                "proxy.memory_budget_bytes: {} is smaller than proxy.max_frame_bytes ({}): a \
                 response of the largest accepted size could never be delivered; raise the \
                 budget or lower max_frame_bytes",
                self.memory_budget_bytes, self.max_frame_bytes
            ));
        }
        if self.max_decompressed_bytes_per_batch == 0 {
            problems.push("proxy.max_decompressed_bytes_per_batch: must be at least 1".into());
        } else if self
            .max_decompressed_bytes_per_batch
            .saturating_mul(WORKING_COPIES)
            > self.memory_budget_bytes
        {
            problems.push(format!(
                "proxy.max_decompressed_bytes_per_batch: {} does not fit proxy.memory_budget_bytes \
                 ({}): a batch is charged {WORKING_COPIES} times its decompressed size while it \
                 is transformed; raise the budget to at least {} or lower the batch limit",
                self.max_decompressed_bytes_per_batch,
                self.memory_budget_bytes,
                self.max_decompressed_bytes_per_batch
                    .saturating_mul(WORKING_COPIES)
            ));
        }
        if self.memory_wait_ms == 0 || self.memory_wait_ms > 600_000 {
            problems.push(format!(
                "proxy.memory_wait_ms: {} is outside 1..=600000",
                self.memory_wait_ms
            ));
        }
        if self.max_response_bytes_per_connection < 4096 {
            problems.push(format!(
                "proxy.max_response_bytes_per_connection: {} is below the minimum of 4096",
                self.max_response_bytes_per_connection
            ));
        }
    }

    /// The per-request decompression budget: the configured value, or twice `max_frame_bytes`.
    pub fn decompression_budget(&self) -> usize {
        self.max_decompressed_bytes_per_request
            .unwrap_or(self.max_frame_bytes.saturating_mul(2))
    }
}

fn default_max_principal_labels() -> usize {
    100
}

fn default_admin_max_connections() -> usize {
    16
}
fn default_max_node_id() -> i32 {
    999
}
fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_max_decompressed_bytes_per_batch() -> usize {
    crate::proxy::records::DEFAULT_MAX_DECOMPRESSED_BYTES_PER_BATCH
}
fn default_memory_budget_bytes() -> usize {
    crate::proxy::budget::DEFAULT_MEMORY_BUDGET_BYTES
}
fn default_memory_wait_ms() -> u64 {
    crate::proxy::budget::DEFAULT_MEMORY_WAIT_MS
}
fn default_max_response_bytes_per_connection() -> usize {
    crate::proxy::budget::DEFAULT_RESPONSE_BYTES_PER_CONNECTION
}
fn default_max_in_flight() -> usize {
    64
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}

/// Every problem found in a configuration, each prefixed with its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// A passthrough configuration from command-line flags alone.
    pub fn from_flags(listen: String, upstream: String) -> Self {
        Self {
            proxy: ProxyConfig {
                listen,
                upstream,
                advertised_host: None,
                node_port_base: None,
                advertised_port_base: None,
                max_node_id: default_max_node_id(),
                max_frame_bytes: default_max_frame_bytes(),
                max_decompressed_bytes_per_request: None,
                max_decompressed_bytes_per_batch: default_max_decompressed_bytes_per_batch(),
                memory_budget_bytes: default_memory_budget_bytes(),
                memory_wait_ms: default_memory_wait_ms(),
                max_response_bytes_per_connection: default_max_response_bytes_per_connection(),
                max_in_flight: default_max_in_flight(),
                upstream_connect_timeout_ms: default_connect_timeout_ms(),
                shutdown_timeout_secs: default_shutdown_timeout_secs(),
                tls: None,
                upstream_tls: None,
                proxy_protocol: ProxyProtocol::None,
                proxy_protocol_from: Vec::new(),
                sni: None,
                authentication: AuthenticationMode::Optional,
                oauthbearer_sub_claim_name: default_oauthbearer_sub_claim_name(),
            },
            admin: AdminConfig::default(),
            records: RecordsMode::default(),
            kms: None,
            deks: DekConfig::default(),
            policy: None,
            schema_registry: None,
        }
    }

    /// Reads, expands, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![format!(
                "cannot read config file {}: {e}",
                path.display()
            )])
        })?;
        Self::parse(&text)
    }

    /// Expands `${ENV}` references, parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let (expanded, mut problems) = expand_env(text, |name| std::env::var(name).ok());
        let parsed: Result<Config, _> =
            serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(&expanded));
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                problems.push(if path == "." || path.is_empty() {
                    format!("{inner}")
                } else {
                    format!("{path}: {inner}")
                });
                return Err(ConfigErrors(problems));
            }
        };
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Applies command-line overrides, then re-validates.
    pub fn apply_overrides(
        &mut self,
        listen: Option<String>,
        upstream: Option<String>,
        admin: Option<String>,
    ) -> Result<(), ConfigErrors> {
        if let Some(l) = listen {
            self.proxy.listen = l;
        }
        if let Some(u) = upstream {
            self.proxy.upstream = u;
        }
        if let Some(a) = admin {
            self.admin.listen = a;
        }
        let mut problems = Vec::new();
        self.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Pushes every semantic problem into `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let p = &self.proxy;
        if p.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "proxy.listen: `{}` is not an IP:port socket address (e.g. 0.0.0.0:9192)",
                p.listen
            ));
        }
        if split_host_port(&p.upstream).is_none() {
            problems.push(format!(
                "proxy.upstream: `{}` is not host:port (e.g. broker-1:9092)",
                p.upstream
            ));
        }
        if let Some(h) = &p.advertised_host {
            if h.is_empty() || h.contains(':') && h.parse::<std::net::Ipv6Addr>().is_err() {
                problems.push(format!(
                    "proxy.advertised_host: `{h}` is not a host name or IP"
                ));
            }
        }
        if let Some(base) = p.node_port_base {
            if p.max_node_id < 0 {
                problems.push("proxy.max_node_id: must be >= 0".into());
            } else if u32::from(base) + p.max_node_id as u32 > 65535 {
                problems.push(format!(
                    "proxy.node_port_base: {base} + max_node_id {} exceeds port 65535",
                    p.max_node_id
                ));
            }
        }
        if let Some(adv) = p.advertised_port_base {
            match p.node_port_base {
                None => problems.push(
                    "proxy.advertised_port_base: needs proxy.node_port_base (the ports a load \
                     balancer forwards to must be fixed)"
                        .into(),
                ),
                Some(_) if p.max_node_id >= 0 && u32::from(adv) + p.max_node_id as u32 > 65535 => {
                    problems.push(format!(
                        "proxy.advertised_port_base: {adv} + max_node_id {} exceeds port 65535",
                        p.max_node_id
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(sni) = &p.sni {
            sni.validate("proxy.sni", problems);
            if p.tls.is_none() {
                problems.push(
                    "proxy.sni: needs proxy.tls (the broker is chosen by the TLS server name)"
                        .into(),
                );
            }
            if p.node_port_base.is_some() || p.advertised_port_base.is_some() {
                problems.push(
                    "proxy.sni: every broker is served on proxy.listen; remove \
                     proxy.node_port_base and proxy.advertised_port_base"
                        .into(),
                );
            }
        }
        if p.max_frame_bytes < 1024 || p.max_frame_bytes > i32::MAX as usize {
            problems.push(format!(
                "proxy.max_frame_bytes: {} is outside 1024..=2147483647",
                p.max_frame_bytes
            ));
        }
        if p.max_decompressed_bytes_per_request == Some(0) {
            problems.push("proxy.max_decompressed_bytes_per_request: must be at least 1".into());
        }
        if p.max_in_flight == 0 {
            problems.push("proxy.max_in_flight: must be at least 1".into());
        }
        crate::proxy::sasl::oauthbearer::validate_claim_name(
            &p.oauthbearer_sub_claim_name,
            "proxy.oauthbearer_sub_claim_name",
            problems,
        );
        if !p.proxy_protocol_from.is_empty() && p.proxy_protocol == ProxyProtocol::None {
            problems.push(
                "proxy.proxy_protocol_from: set, but proxy.proxy_protocol is none; set \
                 proxy.proxy_protocol: v2 or remove the list"
                    .into(),
            );
        }
        p.validate_memory(problems);
        if let Some(tls) = &p.tls {
            tls.validate("proxy.tls", problems);
        }
        if let Some(tls) = &p.upstream_tls {
            tls.validate("proxy.upstream_tls", problems);
        }
        if let Some(kms) = &self.kms {
            kms.validate("kms", problems);
        }
        self.deks.validate("deks", problems);
        if let Some(policy) = &self.policy {
            policy.validate("policy", problems);
            let may_encrypt = !policy.rules.is_empty() || !policy.bindings.is_empty();
            let schema_rules: Vec<usize> = policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(
                        r.value,
                        crate::policy::config::ValuePartConfig::SchemaFields(_)
                    )
                })
                .map(|(i, _)| i)
                .collect();
            if let (Some(i), None) = (schema_rules.first(), &self.schema_registry) {
                problems.push(format!(
                    "schema_registry: missing; policy.rules[{i}] encrypts schema fields, so \
                     Kapsule needs the registry the producers use (e.g. `schema_registry: {{ url: \
                     http://registry:8081 }}`)"
                ));
            }
            if may_encrypt && self.kms.is_none() {
                problems.push(
                    "kms: missing; policy rules or bindings can encrypt, so a KMS is needed (e.g. `kms: { type: local, key_file: keys.json, auto_create_keys: true }`)"
                        .into(),
                );
            }
        }
        if let Some(r) = &self.schema_registry {
            r.validate("schema_registry", problems);
        }
        self.admin.validate(problems);
    }
}

/// Splits `host:port` (IPv6 in brackets allowed). `None` when malformed.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// Template placeholders the config keeps for later expansion (not environment variables).
const TEMPLATE_PLACEHOLDERS: &[&str] = &["topic"];

/// Replaces `${NAME}` with the value of `lookup(NAME)`; `$${` escapes a literal `${`.
/// `${topic}` is a key-id template placeholder and is left as it is.
/// Returns the text and one problem per unset variable.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    let name = &body[..end];
                    if TEMPLATE_PLACEHOLDERS.contains(&name) {
                        out.push_str(&after[..end + 3]);
                        rest = &body[end + 1..];
                        continue;
                    }
                    let line = text[..text.len() - after.len()].lines().count().max(1);
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => problems.push(format!(
                            "line {line}: environment variable `{name}` is referenced but not set"
                        )),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("proxy:\n  listen: 127.0.0.1:9192\n  upstream: localhost:9092\n")
            .unwrap();
        assert_eq!(c.records, RecordsMode::Passthrough);
        assert_eq!(c.proxy.max_frame_bytes, 100 * 1024 * 1024);
        assert_eq!(c.admin.listen, "127.0.0.1:9190");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let err = Config::parse("proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  lisen: x\n")
            .unwrap_err();
        assert!(
            err.0[0].contains("proxy") && err.0[0].contains("lisen"),
            "{err}"
        );
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let err = Config::parse(
            "proxy:\n  listen: nowhere\n  upstream: no-port\n  max_in_flight: 0\nadmin:\n  listen: bad\n",
        )
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 4, "{all}");
        for path in [
            "proxy.listen",
            "proxy.upstream",
            "proxy.max_in_flight",
            "admin.listen",
        ] {
            assert!(all.contains(path), "missing {path} in {all}");
        }
    }

    #[test]
    fn env_references_expand_and_missing_ones_are_reported() {
        let (out, problems) = expand_env("a: ${A}\nb: ${MISSING}\nc: $${LITERAL}\nd: $5", |n| {
            (n == "A").then(|| "one".to_string())
        });
        assert_eq!(out, "a: one\nb: \nc: ${LITERAL}\nd: $5");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("MISSING") && problems[0].contains("line 2"));
    }

    #[test]
    fn encryption_sections_are_validated_together() {
        let err = Config::parse(
            "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\npolicy:\n  rules:\n    - topics: orders\n      key_id: kek-${topic}\n      value: whole\ndeks:\n  refresh_ahead_fraction: 7\n",
        );
        // `${topic}` is not an environment variable: it must survive expansion for the template.
        let all = err.unwrap_err().to_string();
        assert!(all.contains("kms: missing"), "{all}");
        assert!(all.contains("deks.refresh_ahead_fraction"), "{all}");
    }

    #[test]
    fn authentication_mode_and_principal_metrics_are_validated() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.proxy.authentication, AuthenticationMode::Optional);
        assert!(!c.admin.principal_metrics);
        let c = Config::parse(&format!("{base}  authentication: required\n")).unwrap();
        assert_eq!(c.proxy.authentication, AuthenticationMode::Required);
        let err = Config::parse(&format!("{base}  authentication: yes\n")).unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
        let err = Config::parse(&format!(
            "{base}admin:\n  principal_metrics: true\n  max_principal_labels: 0\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("admin.max_principal_labels"),
            "{err}"
        );
    }

    #[test]
    fn admin_off_loopback_needs_a_token_and_every_problem_is_reported() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let err = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  max_connections: 0\n"
        ))
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 2, "{all}");
        assert!(
            all.contains("not a loopback address") && all.contains("token_env"),
            "{all}"
        );
        assert!(all.contains("admin.max_connections"), "{all}");

        let err = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  token_env: KAPSULE_TEST_UNSET_ADMIN_TOKEN\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("KAPSULE_TEST_UNSET_ADMIN_TOKEN"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let c = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  token_file: {}\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(
            c.admin.read_token().unwrap().unwrap().as_str(),
            "0123456789abcdef0123"
        );
        std::fs::write(&file, "short").unwrap();
        assert!(c.admin.read_token().unwrap_err().contains("16 characters"));
        // Loopback without a token is fine.
        let c = Config::parse(base).unwrap();
        assert!(c.admin.is_loopback() && c.admin.read_token().unwrap().is_none());
    }

    #[test]
    fn fleet_settings_are_validated_and_foot_guns_warned() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let err = Config::parse(&format!("{base}  advertised_port_base: 19000\n")).unwrap_err();
        assert!(
            err.to_string().contains("needs proxy.node_port_base"),
            "{err}"
        );
        let err = Config::parse(&format!(
            "{base}  node_port_base: 1000\n  advertised_port_base: 65000\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("exceeds port 65535"), "{err}");

        // Alone, nothing to warn about.
        assert!(Config::parse(base).unwrap().fleet_warnings().is_empty());
        // Behind a load balancer with OS-chosen ports, no advertised host and a local KMS.
        let c = Config::parse(&format!(
            "{base}  proxy_protocol: v2\nkms:\n  type: local\n  key_file: keys.json\n  auto_create_keys: true\n"
        ))
        .unwrap();
        let w = c.fleet_warnings().join("\n");
        for needle in [
            "kms.type local behind a load balancer",
            "auto_create_keys",
            "node_port_base is unset",
            "advertised_host is unset",
        ] {
            assert!(w.contains(needle), "missing {needle} in {w}");
        }
        // A correct fleet member: fixed ports, the load balancer's name, a shared KMS.
        let c = Config::parse(&format!(
            "{base}  proxy_protocol: v2\n  advertised_host: lb.example\n  node_port_base: 9300\n  advertised_port_base: 19300\nkms:\n  type: vault\n  address: https://vault:8200\n  token_env: VAULT_TOKEN\n"
        ))
        .unwrap();
        assert!(c.fleet_warnings().is_empty(), "{:?}", c.fleet_warnings());
        assert_eq!(c.proxy.advertised_port_base, Some(19300));
    }

    #[test]
    fn node_port_range_must_fit() {
        let err = Config::parse(
            "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  node_port_base: 65000\n  max_node_id: 1000\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("node_port_base"));
    }
}
