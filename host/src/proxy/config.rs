//! The `proxy:` and `records:` sections of the configuration: listeners, upstream broker,
//! connection and memory limits, and what the record stage does with batches it need not
//! transform. Validated by [`ProxyConfig::validate`], which the aggregate
//! [`crate::config::Config`] calls.

use serde::Deserialize;

use crate::kafka::frame::DEFAULT_MAX_FRAME_BYTES;
use crate::proxy::proxy_protocol::ProxyProtocol;
use crate::proxy::sasl::AuthenticationMode;
use crate::proxy::sni::SniConfig;
use crate::proxy::tls::{ServerTlsConfig, UpstreamTlsConfig};

/// Default cap on the bytes one record batch decompresses to: 16 MiB, sixteen times Kafka's
/// default `message.max.bytes` (1 MiB + 12 bytes, which a broker applies to the batch as sent,
/// compressed). A producer's batch of up to 1 MiB compressed at a text-like 5-10x ratio fits;
/// a batch that decompresses to more is what a compression bomb looks like. Raise it with
/// `proxy.max_decompressed_bytes_per_batch` for topics whose `max.message.bytes` is raised.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES_PER_BATCH: usize = 16 * 1024 * 1024;

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
    /// Read Fetch responses ahead (default true): when Kapsule decrypts fetched records, it
    /// sends a consumer's predicted next Fetch as soon as a response arrives and decrypts the
    /// answer while the consumer works, answering the consumer's Fetch with it when it matches
    /// exactly (sessionless fetches only). See docs/architecture.md, "Fetch read-ahead".
    #[serde(default = "default_fetch_read_ahead")]
    pub fetch_read_ahead: bool,
    /// Threads that run connections, TLS and record work (default: one per CPU the process may
    /// use). Where Kapsule shares its cores with clients or brokers, fewer threads cost less CPU
    /// per MB (less waking of parked threads); on a host of its own, keep the default so
    /// connections spread over every core. See docs/deployment.md, "Worker threads".
    #[serde(default)]
    pub worker_threads: Option<usize>,
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

impl ProxyConfig {
    /// A proxy section with `listen` and `upstream` and every other setting at its default.
    pub fn from_flags(listen: String, upstream: String) -> Self {
        Self {
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
            fetch_read_ahead: default_fetch_read_ahead(),
            worker_threads: None,
            upstream_connect_timeout_ms: default_connect_timeout_ms(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            tls: None,
            upstream_tls: None,
            proxy_protocol: ProxyProtocol::None,
            proxy_protocol_from: Vec::new(),
            sni: None,
            authentication: AuthenticationMode::Optional,
            oauthbearer_sub_claim_name: default_oauthbearer_sub_claim_name(),
        }
    }

    /// Pushes every problem of the `proxy:` section into `problems`, each prefixed with its
    /// YAML path.
    pub fn validate(&self, problems: &mut Vec<String>) {
        use std::net::SocketAddr;
        let p = self;
        if p.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "proxy.listen: `{}` is not an IP:port socket address (e.g. 0.0.0.0:9192)",
                p.listen
            ));
        }
        if crate::kafka::split_host_port(&p.upstream).is_none() {
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
        if let Some(n) = p.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                problems.push(format!(
                    "proxy.worker_threads: {n} is outside 1..={MAX_WORKER_THREADS} (leave it out \
                     for one thread per CPU)"
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
        self.validate_memory(problems);
        if let Some(tls) = &p.tls {
            tls.validate("proxy.tls", problems);
        }
        if let Some(tls) = &p.upstream_tls {
            tls.validate("proxy.upstream_tls", problems);
        }
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

fn default_max_node_id() -> i32 {
    999
}
fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_max_decompressed_bytes_per_batch() -> usize {
    DEFAULT_MAX_DECOMPRESSED_BYTES_PER_BATCH
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
/// The most worker threads `proxy.worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

fn default_fetch_read_ahead() -> bool {
    true
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}
