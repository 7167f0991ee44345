//! `kapsule-bench`: one run, same machine, same load, several paths to the same kind of broker:
//! direct, through `tansu proxy` (the peer), through Kapsule with each config, and (with
//! `--kroxylicious`) through Kroxylicious, the incumbent.
//!
//! The broker is tansu (`--broker tansu`, the default: a fresh in-memory broker for every run and
//! path, so memory use and offsets are identical) or Apache Kafka (`--broker kafka`: one
//! single-node KRaft broker for the whole invocation, a fresh topic per run and load). For every run
//! and path it starts the path's proxy if any, then runs each load generator (`--load`):
//! `python` is `bench/load.py` (confluent-kafka): produce N records of S bytes, consume them back,
//! and a sequential produce-latency probe; `java` is Kafka's own `kafka-producer-perf-test` and
//! `kafka-consumer-perf-test`. The proxy's CPU time (utime+stime from /proc/<pid>/stat) is sampled
//! around produce+consume. Runs are interleaved across paths and medians are reported as one
//! markdown table per load generator.
//!
//! With `--vault`, an OpenBao dev server (transit) is started for the invocation and Kapsule runs
//! a whole-value encryption path with its Vault KMS (`vault-whole`); Kroxylicious's
//! RecordEncryption path uses the same OpenBao. On the encrypting paths a run fails unless the
//! record the broker stores differs in size from what was produced (it is ciphertext).
//!
//! With `--tls NAME,...` those Kapsule paths also run with TLS from the clients to Kapsule (`+tls`) and with
//! TLS on both sides (`+tls both`: clients → TLS → Kapsule → TLS → stunnel4 → tansu), certificates
//! from a throw-away PKI (EC P-256).
//!
//! `cargo run -p kapsule-bench --release -- --runs 5` (see `--help`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

use kapsule_integration::encryption::vault_kms_yaml;
use kapsule_integration::kapsule::kapsule_bin;
use kapsule_integration::openbao::{OpenBao, ROOT_TOKEN};
use kapsule_integration::process::{find_executable, ProcessGuard};
use kapsule_integration::tls::{self, Issued, KeyKind, Pki, RawKapsule, Stunnel};
use kapsule_integration::{free_port, probe, wait, Kapsule, KapsuleConfig, RecordsMode, Tansu};

mod kafka;
mod kroxylicious;

use kafka::KafkaBroker;
use kroxylicious::{Kroxylicious, VaultAccess};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark Kapsule against direct, tansu proxy and Kroxylicious, on tansu or Apache Kafka"
)]
struct Args {
    /// Runs per path; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Records produced and consumed per run.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sequential round trips in the latency probe.
    #[arg(long, default_value_t = 500)]
    latency_records: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Extra Kapsule configs as NAME=FILE.yaml (repeatable). `passthrough` and `reencode` are
    /// always included unless --no-kapsule.
    #[arg(long = "kapsule-config")]
    kapsule_configs: Vec<String>,
    /// Skip the Kapsule paths (e.g. before the proxy exists).
    #[arg(long)]
    no_kapsule: bool,
    /// Skip the `tansu proxy` path.
    #[arg(long)]
    no_tansu_proxy: bool,
    /// Built-in Kapsule record modes to run (comma-separated: passthrough,reencode; `none` for
    /// only the --kapsule-config paths).
    #[arg(long, value_delimiter = ',', default_value = "passthrough,reencode")]
    builtin: Vec<String>,
    /// Producer compression (none, gzip, snappy, lz4, zstd) on every path.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Produce JSON objects with PII fields (about --size bytes) instead of random bytes.
    #[arg(long)]
    json: bool,
    /// Also run these Kapsule paths (comma-separated names, e.g. passthrough,aes-gcm; `all`)
    /// with TLS to the clients (`+tls`) and on both sides (`+tls both`, upstream through
    /// stunnel4).
    #[arg(long, value_delimiter = ',')]
    tls: Vec<String>,
    /// Also write the markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The broker: `tansu` (fresh in-memory broker per run) or `kafka` (one Apache Kafka KRaft
    /// node for the invocation, from scripts/install-kafka.sh).
    #[arg(long, value_enum, default_value_t = BrokerKind::Tansu)]
    broker: BrokerKind,
    /// Load generators, comma-separated: `python` (bench/load.py, confluent-kafka) and `java`
    /// (Kafka's kafka-producer-perf-test / kafka-consumer-perf-test; needs the Kafka jars).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "python")]
    load: Vec<LoadKind>,
    /// Kroxylicious paths, comma-separated: `passthrough` (no filters) and `record-encryption`
    /// (RecordEncryption with the Vault KMS; implies --vault's OpenBao). Installed by
    /// scripts/install-kroxylicious.sh; needs Java 21+.
    #[arg(long, value_delimiter = ',')]
    kroxylicious: Vec<KroxyMode>,
    /// Start an OpenBao dev server (transit) and add Kapsule's whole-value encryption path with
    /// the Vault KMS (`kapsule vault-whole`).
    #[arg(long)]
    vault: bool,
    /// A `key: value` line added under `proxy:` of every Kapsule path (repeatable), e.g.
    /// `--proxy-setting "worker_threads: 1"`; the report's header lists them.
    #[arg(long = "proxy-setting")]
    proxy_settings: Vec<String>,
    /// Records produced on a separate topic before each run's measured loads (connections,
    /// metadata, allocator, and a JIT for the JVM proxies).
    #[arg(long, default_value_t = 2000)]
    warmup_records: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BrokerKind {
    Tansu,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum LoadKind {
    Python,
    Java,
}

impl LoadKind {
    fn describe(self) -> &'static str {
        match self {
            LoadKind::Python => "bench/load.py (confluent-kafka)",
            LoadKind::Java => "Kafka's kafka-producer-perf-test / kafka-consumer-perf-test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KroxyMode {
    Passthrough,
    RecordEncryption,
}

/// Services shared by every run of one invocation.
struct Shared {
    /// The Apache Kafka broker (`--broker kafka`).
    kafka: Option<KafkaBroker>,
    /// OpenBao for the Vault KMS paths, with its root token in a file.
    vault: Option<(OpenBao, tempfile::NamedTempFile)>,
    /// Kroxylicious's install directory (`--kroxylicious`).
    kroxylicious_home: Option<PathBuf>,
}

impl Shared {
    fn vault_access(&self) -> Option<VaultAccess> {
        self.vault.as_ref().map(|(bao, token)| VaultAccess {
            transit_url: format!("{}/v1/transit", bao.address()),
            token_file: token.path().to_owned(),
        })
    }
}

/// Where TLS is used on a Kapsule path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Plaintext on both sides.
    Off,
    /// Clients speak TLS to Kapsule; Kapsule speaks plaintext to the broker.
    Client,
    /// TLS on both sides: Kapsule reaches the broker through stunnel4.
    Both,
}

#[derive(Debug, Clone)]
enum Path {
    Direct,
    TansuProxy,
    Kapsule {
        name: String,
        config: KapsuleConfig,
        tls: Tls,
    },
    Kroxylicious(KroxyMode),
}

impl Path {
    /// True when the path encrypts record values (the run checks the broker stores ciphertext).
    fn encrypts(&self) -> bool {
        match self {
            Path::Kapsule { config, .. } => config.extra_yaml.contains("value: whole"),
            Path::Kroxylicious(m) => *m == KroxyMode::RecordEncryption,
            _ => false,
        }
    }

    fn label(&self, broker: BrokerKind) -> String {
        match self {
            Path::Direct => match broker {
                BrokerKind::Tansu => "direct (tansu)".into(),
                BrokerKind::Kafka => "direct (Apache Kafka)".into(),
            },
            Path::TansuProxy => "tansu proxy".into(),
            Path::Kroxylicious(KroxyMode::Passthrough) => "kroxylicious passthrough".into(),
            Path::Kroxylicious(KroxyMode::RecordEncryption) => {
                "kroxylicious record-encryption (Vault)".into()
            }
            Path::Kapsule { name, tls, .. } => match tls {
                Tls::Off => format!("kapsule {name}"),
                Tls::Client => format!("kapsule {name} +tls"),
                Tls::Both => format!("kapsule {name} +tls both"),
            },
        }
    }
}

/// Certificates for the TLS paths: one CA; Kapsule's server certificate and stunnel's.
struct TlsFixture {
    pki: Pki,
    kapsule: Issued,
    broker: Issued,
}

impl TlsFixture {
    fn new() -> Result<Self> {
        let pki = Pki::new("bench")?;
        let kapsule = pki.issue("kapsule", KeyKind::EcPkcs8, false, false)?;
        let broker = pki.issue("broker", KeyKind::EcPkcs8, false, false)?;
        Ok(Self {
            pki,
            kapsule,
            broker,
        })
    }
}

/// What a run's load generator needs besides the mode: compression, value kind, TLS trust.
#[derive(Debug, Clone)]
struct LoadOpts {
    compression: String,
    json: bool,
    ssl_ca: Option<PathBuf>,
}

impl LoadOpts {
    /// Plaintext, uncompressed random bytes (topic creation and checks on the broker itself).
    fn plain() -> Self {
        Self {
            compression: "none".into(),
            json: false,
            ssl_ca: None,
        }
    }
}

/// One run's measurements for one path and load generator.
#[derive(Debug, Clone, Default)]
struct Sample {
    produce_mb_s: f64,
    produce_rec_s: f64,
    consume_mb_s: f64,
    consume_rec_s: f64,
    /// Proxy CPU seconds per GB moved (produce + consume bytes); `None` for direct.
    proxy_cpu_s_per_gb: Option<f64>,
    /// Proxy CPU microseconds per record while producing / consuming.
    produce_cpu_us: Option<f64>,
    consume_cpu_us: Option<f64>,
    /// Proxy resident set (VmRSS) after the load, MiB.
    rss_mib: Option<f64>,
    /// Sequential produce latency (the python load's probe; `None` for the java load).
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// A proxy process in front of the broker, if the path has one.
enum Front {
    None,
    TansuProxy(ProcessGuard, String),
    Kapsule(Kapsule),
    /// Kapsule started from a full config (the TLS paths).
    Raw(RawKapsule),
    Kroxylicious(Kroxylicious),
}

impl Front {
    /// The proxy's log so far, for Kapsule and Kroxylicious (None for the other fronts).
    fn proxy_log(&self) -> Option<(&'static str, String)> {
        match self {
            Front::Kapsule(k) => Some(("Kapsule", kapsule_integration::tls::strip_ansi(&k.logs()))),
            Front::Raw(k) => Some(("Kapsule", k.logs())),
            Front::Kroxylicious(k) => Some(("Kroxylicious", k.logs())),
            _ => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Front::None => None,
            Front::TansuProxy(p, _) => p.pid(),
            Front::Kapsule(k) => k.pid(),
            Front::Raw(k) => k.process.pid(),
            Front::Kroxylicious(k) => k.pid(),
        }
    }

    /// Fails if the proxy died or (Kapsule) no longer reports itself live: a dead proxy must not
    /// produce numbers.
    async fn ensure_live(&mut self) -> Result<()> {
        let live = match self {
            Front::Kapsule(k) => Some(k.admin_get("/livez").await?),
            Front::Raw(k) => {
                Some(probe::http_get(&k.admin, "/livez", Duration::from_secs(5)).await?)
            }
            Front::Kroxylicious(k) => {
                k.ensure_running()?;
                None
            }
            Front::TansuProxy(p, _) => {
                p.ensure_running()?;
                None
            }
            Front::None => None,
        };
        if let Some((status, body)) = live {
            anyhow::ensure!(status == 200, "kapsule /livez {status}: {body}");
        }
        Ok(())
    }
}

/// The broker of one run: the rig's tansu, tansu behind stunnel4 (TLS) for `+tls both`, or the
/// invocation's Apache Kafka broker.
enum Broker {
    Plain(Tansu),
    Tls {
        _tansu: ProcessGuard,
        plain: String,
        stunnel: Stunnel,
    },
    Kafka(String),
}

impl Broker {
    async fn start(tls: Tls, fixture: Option<&TlsFixture>, shared: &Shared) -> Result<Self> {
        if let Some(kafka) = &shared.kafka {
            anyhow::ensure!(
                tls == Tls::Off,
                "TLS paths run on tansu only (--broker tansu)"
            );
            return Ok(Broker::Kafka(kafka.bootstrap()));
        }
        if tls != Tls::Both {
            return Ok(Broker::Plain(Tansu::start().await?));
        }
        let fx = fixture.context("TLS paths need the TLS fixture")?;
        let port = free_port();
        let (tansu, plain) = tls::tansu_advertising(&format!("127.0.0.1:{port}")).await?;
        let stunnel = Stunnel::start(port, &plain, &fx.broker, None).await?;
        Ok(Broker::Tls {
            _tansu: tansu,
            plain,
            stunnel,
        })
    }

    /// The address the proxy (or a direct client) connects to.
    fn bootstrap(&self) -> String {
        match self {
            Broker::Plain(t) => t.bootstrap(),
            Broker::Tls { stunnel, .. } => stunnel.addr.clone(),
            Broker::Kafka(addr) => addr.clone(),
        }
    }

    /// A plaintext address of the broker itself (for checks that bypass every proxy).
    fn plain_bootstrap(&self) -> String {
        match self {
            Broker::Tls { plain, .. } => plain.clone(),
            _ => self.bootstrap(),
        }
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        match self {
            Broker::Plain(t) => t.create_topic(topic, partitions).await,
            Broker::Tls { plain, .. } => tls::create_topic(plain, topic, partitions).await,
            Broker::Kafka(addr) => {
                let opts = LoadOpts::plain();
                load("create", addr, topic, partitions as usize, 0, &opts)
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Kapsule's full config for a TLS path: the rig's layout plus `tls` (and `upstream_tls`).
fn tls_config(config: &KapsuleConfig, upstream: &str, tls: Tls, fx: &TlsFixture) -> String {
    let mut yaml = format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{upstream}\"\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
        fx.kapsule.cert.display(),
        fx.kapsule.key.display()
    );
    if tls == Tls::Both {
        yaml.push_str(&format!(
            "  upstream_tls:\n    ca_file: \"{}\"\n",
            fx.pki.ca_cert().display()
        ));
    }
    yaml.push_str(&format!(
        "admin:\n  listen: \"{{admin}}\"\nrecords: {}\n{}",
        config.records, config.extra_yaml
    ));
    yaml
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

fn load_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("load.py")
}

async fn load(
    mode: &str,
    bootstrap: &str,
    topic: &str,
    count: usize,
    size: usize,
    opts: &LoadOpts,
) -> Result<Value> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(load_script())
        .args([mode, "--bootstrap", bootstrap, "--topic", topic])
        .args(["--count", &count.to_string(), "--size", &size.to_string()])
        .args(["--compression", &opts.compression])
        .kill_on_drop(true);
    if opts.json {
        cmd.arg("--json");
    }
    if let Some(ca) = &opts.ssl_ca {
        cmd.arg("--ssl-ca").arg(ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .with_context(|| format!("load.py {mode} took over 600 s"))??;
    if !out.status.success() {
        bail!(
            "load.py {mode} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    kapsule_integration::clients::parse_last_json_line(&stdout)
}

/// The local KMS key file bench/configs/*.yaml name; kapsule-bench gives each invocation its own.
const SHARED_BENCH_KEY_FILE: &str = "/tmp/kapsule-bench-keks.json";

/// CPU seconds of the front before produce, after produce and after consume.
type CpuMarks = (Option<f64>, Option<f64>, Option<f64>);

/// What one load generator measured on one topic: produce and consume results (`bytes`, `mb_s`,
/// `rec_s`), the latency probe (`p50_ms`, `p99_ms`) if the generator has one, and the front's
/// CPU marks.
struct Measured {
    produce: Value,
    consume: Value,
    latency: Option<Value>,
    cpu: CpuMarks,
}

/// Runs `kind`'s produce and consume of `args.records` records on `topic` through `bootstrap`
/// (and the python latency probe), sampling the front's CPU around produce and consume.
async fn measure(
    kind: LoadKind,
    front: &Front,
    bootstrap: &str,
    topic: &str,
    args: &Args,
    opts: &LoadOpts,
    shared: &Shared,
) -> Result<Measured> {
    let cpu = || front.pid().map(cpu_seconds).transpose();
    match kind {
        LoadKind::Python => {
            let cpu0 = cpu()?;
            let p = load("produce", bootstrap, topic, args.records, args.size, opts).await?;
            let cpu1 = cpu()?;
            let c = load("consume", bootstrap, topic, args.records, args.size, opts).await?;
            let cpu2 = cpu()?;
            let l = load(
                "latency",
                bootstrap,
                topic,
                args.latency_records,
                args.size,
                opts,
            )
            .await?;
            Ok(Measured {
                produce: p,
                consume: c,
                latency: Some(l),
                cpu: (cpu0, cpu1, cpu2),
            })
        }
        LoadKind::Java => {
            anyhow::ensure!(
                args.compression == "none" && !args.json && opts.ssl_ca.is_none(),
                "the java load runs without compression, --json or TLS"
            );
            let libs = match &shared.kafka {
                Some(k) => k.libs().to_owned(),
                None => kafka::kafka_libs()?,
            };
            let cpu0 = cpu()?;
            let p = kafka::java_produce(&libs, bootstrap, topic, args.records, args.size).await?;
            let cpu1 = cpu()?;
            let c = kafka::java_consume(&libs, bootstrap, topic, args.records).await?;
            let cpu2 = cpu()?;
            Ok(Measured {
                produce: p,
                consume: c,
                latency: None,
                cpu: (cpu0, cpu1, cpu2),
            })
        }
    }
}

/// `e` with the warnings and errors of the proxy's log appended (the reason a produce was
/// refused, for example), and the whole log kept in a file named in the message.
fn with_proxy_log(e: anyhow::Error, front: &Front) -> anyhow::Error {
    let Some((name, log)) = front.proxy_log() else {
        return e;
    };
    let kept = std::env::temp_dir().join(format!(
        "kapsule-bench-{}-{}.log",
        name.to_lowercase(),
        free_port()
    ));
    let saved = std::fs::write(&kept, &log).is_ok();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") && !l.starts_with("WARNING: ")) || l.contains("ERROR"))
        .collect();
    let tail = problems[problems.len().saturating_sub(5)..].join("\n");
    e.context(format!(
        "{name}'s last warnings: {}{}",
        if tail.is_empty() { "none" } else { &tail },
        if saved {
            format!(" (full log: {})", kept.display())
        } else {
            String::new()
        }
    ))
}

/// utime + stime of `pid` in seconds, from /proc/<pid>/stat (fields 14 and 15).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after the closing paren are clean.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Ok((utime + stime) as f64 / ticks)
}

async fn start_tansu_proxy(origin: &str) -> Result<(ProcessGuard, String)> {
    let bin = find_executable("TANSU_BIN", "tansu")?;
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("tcp://{addr}");
    let mut cmd = Command::new(bin);
    cmd.args([
        "proxy",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--origin-url", &format!("tcp://{origin}")])
    .env("RUST_LOG", "warn");
    let mut guard = ProcessGuard::spawn("tansu-proxy", cmd)?;
    let probe_addr = addr.clone();
    wait::until(
        "tansu proxy to answer ApiVersions",
        Duration::from_secs(30),
        || {
            let running = guard.ensure_running();
            let a = probe_addr.clone();
            async move {
                running?;
                probe::api_versions(&a, Duration::from_secs(2)).await?;
                Ok(Some(()))
            }
        },
    )
    .await?;
    Ok((guard, addr))
}

/// Creates `topic` on the broker and, on the Kroxylicious encryption path, its KEK
/// (`KEK_<topic>`, the documented template) in OpenBao.
async fn prepare_topic(
    path: &Path,
    broker: &Broker,
    topic: &str,
    args: &Args,
    shared: &Shared,
) -> Result<()> {
    broker.create_topic(topic, args.partitions).await?;
    if matches!(path, Path::Kroxylicious(KroxyMode::RecordEncryption)) {
        let (bao, _) = shared
            .vault
            .as_ref()
            .context("the Kroxylicious record-encryption path needs OpenBao")?;
        bao.create_key(&format!("KEK_{topic}"))?;
    }
    Ok(())
}

/// Fails unless the first record the broker stores for `topic` is encrypted: it carries
/// Kapsule's `kapsule.enc` descriptor (a revision 3 whole value keeps its plaintext's size), or
/// its value differs in size from the `size`-byte values produced (Kroxylicious, and Kapsule's
/// revision 1). An encrypting path must store ciphertext, never the plaintext.
async fn ensure_stored_encrypted(broker: &Broker, topic: &str, size: usize) -> Result<()> {
    let peek = load(
        "peek",
        &broker.plain_bootstrap(),
        topic,
        1,
        size,
        &LoadOpts::plain(),
    )
    .await?;
    let stored = peek["value_len"].as_u64().context("peek lacks value_len")?;
    let descriptor = peek["headers"]
        .as_array()
        .is_some_and(|h| h.iter().any(|name| name == "kapsule.enc"));
    anyhow::ensure!(
        descriptor || stored != size as u64,
        "the broker stores {size}-byte values on {topic}: the path did not encrypt ({peek})"
    );
    Ok(())
}

/// One run of `path`: its broker and proxy, a warm-up, then each load generator on its own topic.
/// Returns one sample per `args.load` entry, in order.
async fn run_once(
    path: &Path,
    args: &Args,
    fixture: Option<&TlsFixture>,
    shared: &Shared,
) -> Result<Vec<Sample>> {
    let tls = match path {
        Path::Kapsule { tls, .. } => *tls,
        _ => Tls::Off,
    };
    let broker = Broker::start(tls, fixture, shared).await?;
    let run_id = free_port();
    let warm = format!("bench-{run_id}-warm");
    prepare_topic(path, &broker, &warm, args, shared).await?;
    let mut front = match path {
        Path::Direct => Front::None,
        Path::TansuProxy => {
            let (g, a) = start_tansu_proxy(&broker.bootstrap()).await?;
            Front::TansuProxy(g, a)
        }
        Path::Kapsule {
            config,
            tls: Tls::Off,
            ..
        } => {
            let k = Kapsule::start(&broker.bootstrap(), config.clone()).await?;
            if k.is_direct() {
                bail!("KAPSULE_RIG_DIRECT=1 is set: unset it to benchmark Kapsule");
            }
            Front::Kapsule(k)
        }
        Path::Kapsule { config, tls, .. } => {
            let fx = fixture.context("TLS paths need the TLS fixture")?;
            let yaml = tls_config(config, &broker.bootstrap(), *tls, fx);
            Front::Raw(RawKapsule::start(&yaml).await?)
        }
        Path::Kroxylicious(mode) => {
            let home = shared
                .kroxylicious_home
                .as_deref()
                .context("Kroxylicious is not installed")?;
            let vault = match mode {
                KroxyMode::Passthrough => None,
                KroxyMode::RecordEncryption => Some(
                    shared
                        .vault_access()
                        .context("the Kroxylicious record-encryption path needs OpenBao")?,
                ),
            };
            Front::Kroxylicious(
                Kroxylicious::start(home, &broker.bootstrap(), vault.as_ref()).await?,
            )
        }
    };
    let bootstrap = match &front {
        Front::None => broker.bootstrap(),
        Front::TansuProxy(_, a) => a.clone(),
        Front::Kapsule(k) => k.bootstrap(),
        Front::Raw(k) => k.listen.clone(),
        Front::Kroxylicious(k) => k.bootstrap(),
    };
    let opts = LoadOpts {
        compression: args.compression.clone(),
        json: args.json,
        ssl_ca: matches!(front, Front::Raw(_))
            .then(|| fixture.map(|f| f.pki.ca_cert()))
            .flatten(),
    };
    let mut samples = Vec::new();
    let result: Result<()> = async {
        // Warm up connections, metadata, allocator (and a JVM proxy's JIT) on a separate topic.
        load(
            "produce",
            &bootstrap,
            &warm,
            args.warmup_records,
            args.size,
            &opts,
        )
        .await?;
        for (i, kind) in args.load.iter().enumerate() {
            let topic = format!("bench-{run_id}-{i}");
            prepare_topic(path, &broker, &topic, args, shared).await?;
            let m = measure(*kind, &front, &bootstrap, &topic, args, &opts, shared).await?;
            front.ensure_live().await?;
            if path.encrypts() {
                ensure_stored_encrypted(&broker, &topic, args.size).await?;
            }
            let rss = front.pid().map(rss_mib).transpose()?;
            samples.push(sample(&m, rss, args.records)?);
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(samples),
        Err(e) => Err(with_proxy_log(e, &front)),
    }
}

/// The sample of one load from its results.
fn sample(m: &Measured, rss: Option<f64>, records: usize) -> Result<Sample> {
    let f = |v: &Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("load output lacks {k}: {v}"))
    };
    let (p, c) = (&m.produce, &m.consume);
    let (cpu0, cpu1, cpu2) = m.cpu;
    let gb = (p["bytes"].as_f64().unwrap_or(0.0) + c["bytes"].as_f64().unwrap_or(0.0)) / 1e9;
    Ok(Sample {
        produce_mb_s: f(p, "mb_s")?,
        produce_rec_s: f(p, "rec_s")?,
        consume_mb_s: f(c, "mb_s")?,
        consume_rec_s: f(c, "rec_s")?,
        proxy_cpu_s_per_gb: cpu0.zip(cpu2).map(|(a, b)| (b - a) / gb),
        produce_cpu_us: cpu0.zip(cpu1).map(|(a, b)| (b - a) * 1e6 / records as f64),
        consume_cpu_us: cpu1.zip(cpu2).map(|(a, b)| (b - a) * 1e6 / records as f64),
        rss_mib: rss,
        p50_ms: m.latency.as_ref().map(|l| f(l, "p50_ms")).transpose()?,
        p99_ms: m.latency.as_ref().map(|l| f(l, "p99_ms")).transpose()?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn tool_version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Kapsule's whole-value encryption with the Vault KMS: every topic, one KEK, as
/// bench/configs/encrypt.yaml does with the local KMS.
const KAPSULE_VAULT_RULES: &str =
    "policy:\n  unmatched_topics: pass\n  rules:\n    - topics: \"*\"\n      key_id: bench-kek\n      value: whole\n";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Every service the benchmark starts is owned by a guard that kills it when dropped: on
    // success, on error, and (here) on Ctrl-C or SIGTERM, which drop the benchmark future.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = bench(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT): every started process was stopped"),
        _ = term.recv() => bail!("terminated (SIGTERM): every started process was stopped"),
    }
}

async fn bench(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.broker == BrokerKind::Tansu || args.tls.is_empty(),
        "--tls runs on tansu only (drop --broker kafka)"
    );
    let needs_vault = args.vault || args.kroxylicious.contains(&KroxyMode::RecordEncryption);
    let mut shared = Shared {
        kafka: None,
        vault: None,
        kroxylicious_home: None,
    };
    if !args.kroxylicious.is_empty() {
        let home = kroxylicious::kroxylicious_home()?;
        eprintln!(
            "kroxylicious {} from {}",
            kroxylicious::version(&home),
            home.display()
        );
        shared.kroxylicious_home = Some(home);
    }
    if args.broker == BrokerKind::Kafka {
        let libs = kafka::kafka_libs()?;
        let broker = KafkaBroker::start(&libs).await?;
        eprintln!("Apache Kafka broker on {}", broker.bootstrap());
        shared.kafka = Some(broker);
    }
    if needs_vault {
        let bao = OpenBao::start().context("starting OpenBao for the Vault KMS paths")?;
        let token = tempfile::Builder::new()
            .prefix("kapsule-bench-vault-token-")
            .tempfile()?;
        std::fs::write(token.path(), ROOT_TOKEN)?;
        eprintln!("OpenBao on {}", bao.address());
        shared.vault = Some((bao, token));
    }

    let mut paths = vec![Path::Direct];
    // tansu proxy 0.6.0 cannot relay Apache Kafka 4.x: it fails to decode the broker's responses
    // ("maximum tagged fields exceeded") and closes every client connection during ApiVersions.
    if !args.no_tansu_proxy && args.broker == BrokerKind::Tansu {
        paths.push(Path::TansuProxy);
    }
    // Kapsule's Vault token file lives as long as the paths.
    let mut _kapsule_vault_token = None;
    if !args.no_kapsule {
        let bin = kapsule_bin().context("locating or building kapsule (or pass --no-kapsule)")?;
        eprintln!("kapsule binary: {}", bin.display());
        for name in &args.builtin {
            if name == "none" {
                continue;
            }
            let mode = RecordsMode::ALL
                .into_iter()
                .find(|m| m.as_str() == name)
                .with_context(|| format!("--builtin {name}: not a records mode"))?;
            paths.push(Path::Kapsule {
                name: mode.as_str().into(),
                config: KapsuleConfig::new(mode),
                tls: Tls::Off,
            });
        }
        if args.vault {
            let (bao, _) = shared.vault.as_ref().context("OpenBao is not running")?;
            bao.create_key("bench-kek")?;
            let (kms, token) = vault_kms_yaml(bao, 5000, 2)?;
            _kapsule_vault_token = Some(token);
            paths.push(Path::Kapsule {
                name: "vault-whole".into(),
                config: KapsuleConfig::new(RecordsMode::Passthrough)
                    .with_yaml(&format!("{kms}{KAPSULE_VAULT_RULES}")),
                tls: Tls::Off,
            });
        }
        let bench_key_file =
            std::env::temp_dir().join(format!("kapsule-bench-keks-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&bench_key_file);
        for spec in &args.kapsule_configs {
            let (name, file) = spec
                .split_once('=')
                .with_context(|| format!("--kapsule-config expects NAME=FILE, got {spec}"))?;
            let yaml = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            // The configs' local KMS key file is scratch: one per invocation, so a file left by
            // an earlier run under another master key cannot stop Kapsule from starting.
            let yaml = yaml.replace(SHARED_BENCH_KEY_FILE, &bench_key_file.to_string_lossy());
            // The file adds top-level sections (kms, policy, deks); proxy/admin are the rig's,
            // plus the file's `# proxy-setting: key: value` lines (as bench/common.sh reads them).
            let config = yaml
                .lines()
                .filter_map(|l| l.strip_prefix("# proxy-setting: "))
                .fold(
                    KapsuleConfig::new(RecordsMode::Passthrough).with_yaml(&yaml),
                    KapsuleConfig::with_proxy_setting,
                );
            paths.push(Path::Kapsule {
                name: name.into(),
                config,
                tls: Tls::Off,
            });
        }
        for path in &mut paths {
            if let Path::Kapsule { config, .. } = path {
                for setting in &args.proxy_settings {
                    *config = config.clone().with_proxy_setting(setting);
                }
            }
        }
        if !args.tls.is_empty() {
            let plain = std::mem::take(&mut paths);
            for p in plain {
                let variants = match &p {
                    Path::Kapsule { name, config, .. }
                        if args.tls.iter().any(|t| t == name || t == "all") =>
                    {
                        [Tls::Client, Tls::Both]
                            .map(|tls| Path::Kapsule {
                                name: name.clone(),
                                config: config.clone(),
                                tls,
                            })
                            .to_vec()
                    }
                    _ => Vec::new(),
                };
                paths.push(p);
                paths.extend(variants);
            }
        }
    }
    paths.extend(args.kroxylicious.iter().map(|m| Path::Kroxylicious(*m)));
    let fixture = if !args.tls.is_empty() {
        Some(TlsFixture::new().context("creating the benchmark PKI (openssl)")?)
    } else {
        None
    };

    // Samples per (path, load generator).
    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    let mut failures: BTreeMap<usize, String> = BTreeMap::new();
    for run in 1..=args.runs {
        for (i, path) in paths.iter().enumerate() {
            if failures.contains_key(&i) {
                continue;
            }
            eprintln!("run {run}/{}: {}", args.runs, path.label(args.broker));
            match run_once(path, &args, fixture.as_ref(), &shared).await {
                Ok(per_load) => {
                    for (l, s) in per_load.into_iter().enumerate() {
                        eprintln!("  {:?}: {s:?}", args.load[l]);
                        samples.entry((i, l)).or_default().push(s);
                    }
                }
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    failures.insert(i, format!("{e:#}"));
                }
            }
            if let Some(kafka) = shared.kafka.as_mut() {
                kafka
                    .ensure_running()
                    .context("the Apache Kafka broker died")?;
            }
        }
        // The report so far, so that an interrupted long benchmark still leaves its medians.
        if let Some(out) = &args.out {
            let partial = format!(
                "(after run {run} of {})\n\n{}",
                args.runs,
                render(&args, &shared, &paths, &samples, &failures)
            );
            std::fs::write(out, partial).with_context(|| format!("writing {}", out.display()))?;
        }
    }

    let report = render(&args, &shared, &paths, &samples, &failures);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(
    args: &Args,
    shared: &Shared,
    paths: &[Path],
    samples: &BTreeMap<(usize, usize), Vec<Sample>>,
    failures: &BTreeMap<usize, String>,
) -> String {
    let fmt = |v: Option<f64>, prec: usize| v.map_or("n/a".to_string(), |v| format!("{v:.prec$}"));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Benchmark: {} runs (medians), {} records of {} B ({}), compression {}, {} partition(s), warm-up {} records, latency probe {} sequential produces (python load).",
        args.runs,
        args.records,
        args.size,
        if args.json { "JSON with PII fields" } else { "random bytes" },
        args.compression,
        args.partitions,
        args.warmup_records,
        args.latency_records
    );
    if !args.proxy_settings.is_empty() {
        let _ = writeln!(
            md,
            "Every Kapsule path runs with `proxy: {{ {} }}`.",
            args.proxy_settings.join(", ")
        );
    }
    let broker = match (&shared.kafka, args.broker) {
        (Some(k), _) => format!(
            "Apache Kafka ({}, one KRaft broker+controller node)",
            kafka_version(k.libs())
        ),
        _ => tool_version("tansu", &["--version"]),
    };
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {}; broker {}; load generators confluent-kafka {}{}{}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tool_version("uname", &["-sr"]),
        broker,
        tool_version(
            "python3",
            &["-c", "import confluent_kafka as c; print(c.version()[0], 'librdkafka', c.libversion()[0])"]
        ),
        if args.load.contains(&LoadKind::Java) {
            ", Kafka's perf tools (same Kafka jars)"
        } else {
            ""
        },
        shared
            .kroxylicious_home
            .as_deref()
            .map(|h| format!("; Kroxylicious {}", kroxylicious::version(h)))
            .unwrap_or_default(),
    );
    if args.broker == BrokerKind::Kafka && !args.no_tansu_proxy {
        md.push_str("`tansu proxy` (0.6.0) is not run on Apache Kafka: it cannot decode the broker's responses (\"maximum tagged fields exceeded\") and closes every client connection during ApiVersions.\n\n");
    }
    for (l, kind) in args.load.iter().enumerate() {
        let med = |i: usize, f: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = samples.get(&(i, l))?.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let direct = (
            med(0, &|s| Some(s.produce_mb_s)),
            med(0, &|s| Some(s.consume_mb_s)),
            med(0, &|s| s.p50_ms),
            med(0, &|s| s.p99_ms),
        );
        let _ = writeln!(md, "Load: {}.\n", kind.describe());
        md.push_str("| path | produce MB/s | produce rec/s | consume MB/s | consume rec/s | produce vs direct | consume vs direct | proxy CPU s/GB (= millicores per MB/s) | proxy CPU µs/rec produce | proxy CPU µs/rec consume | p50 produce ms | p99 produce ms | p50 added ms | p99 added ms | proxy RSS MiB |\n");
        md.push_str(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut cpu_of = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            if let Some(err) = failures.get(&i) {
                let short: String = err.lines().next().unwrap_or("").chars().take(160).collect();
                let _ = writeln!(
                    md,
                    "| {} | failed: {short} | | | | | | | | | | | | | |",
                    path.label(args.broker)
                );
                continue;
            }
            let pm = med(i, &|s| Some(s.produce_mb_s));
            let cm = med(i, &|s| Some(s.consume_mb_s));
            let p50 = med(i, &|s| s.p50_ms);
            let p99 = med(i, &|s| s.p99_ms);
            let cpu = med(i, &|s| s.proxy_cpu_s_per_gb);
            cpu_of.insert(
                path.label(args.broker),
                (cpu, cm.zip(direct.1).map(|(a, d)| a / d)),
            );
            let ratio = |a: Option<f64>, d: Option<f64>| a.zip(d).map(|(a, d)| a / d);
            let added = |a: Option<f64>, d: Option<f64>| a.zip(d).map(|(a, d)| a - d);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                path.label(args.broker),
                fmt(pm, 1),
                fmt(med(i, &|s| Some(s.produce_rec_s)), 0),
                fmt(cm, 1),
                fmt(med(i, &|s| Some(s.consume_rec_s)), 0),
                fmt(ratio(pm, direct.0), 2),
                fmt(ratio(cm, direct.1), 2),
                fmt(cpu, 2),
                fmt(med(i, &|s| s.produce_cpu_us), 2),
                fmt(med(i, &|s| s.consume_cpu_us), 2),
                fmt(p50, 2),
                fmt(p99, 2),
                fmt(if i == 0 { None } else { added(p50, direct.2) }, 2),
                fmt(if i == 0 { None } else { added(p99, direct.3) }, 2),
                fmt(med(i, &|s| s.rss_mib), 0),
            );
        }
        md.push('\n');
        if args.broker == BrokerKind::Kafka {
            md.push_str(&goals(&cpu_of));
            md.push('\n');
        }
    }
    md
}

/// Issue 16's goals for this harness, judged from one table: `by_label` maps a path label to its
/// median proxy CPU (millicores per MB/s) and its consume throughput as a ratio to direct.
fn goals(by_label: &BTreeMap<String, (Option<f64>, Option<f64>)>) -> String {
    let get = |label: &str| by_label.get(label).copied().unwrap_or((None, None));
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    let (pass_cpu, _) = get("kapsule passthrough");
    let (enc_cpu, enc_consume) = get("kapsule vault-whole");
    let (kpass_cpu, _) = get("kroxylicious passthrough");
    let (kenc_cpu, _) = get("kroxylicious record-encryption (Vault)");
    let times = |k: Option<f64>, c: Option<f64>| k.zip(c).map(|(k, c)| k / c);
    let mut out = String::from("Goals (issue 16):\n\n");
    let _ = writeln!(
        out,
        "- Kapsule whole-value encryption (Vault) ≤ 1.5 millicores per MB/s: {} → {}",
        fmt(enc_cpu),
        verdict(enc_cpu.map(|c| c <= 1.5))
    );
    let _ = writeln!(
        out,
        "- Kapsule passthrough ≤ 0.5 millicores per MB/s: {} → {}",
        fmt(pass_cpu),
        verdict(pass_cpu.map(|c| c <= 0.5))
    );
    let _ = writeln!(
        out,
        "- Kapsule whole-value consume (decrypt) ≥ 0.9 of direct: {} → {}",
        fmt(enc_consume),
        verdict(enc_consume.map(|r| r >= 0.9))
    );
    let pass_x = times(kpass_cpu, pass_cpu);
    let enc_x = times(kenc_cpu, enc_cpu);
    let _ = writeln!(
        out,
        "- Kapsule ≥ 5× cheaper than Kroxylicious per MB/s: passthrough {}× → {}; encryption {}× → {}",
        fmt(pass_x),
        verdict(pass_x.map(|x| x >= 5.0)),
        fmt(enc_x),
        verdict(enc_x.map(|x| x >= 5.0))
    );
    out
}

/// The Kafka version of the jars in `libs` (from the kafka-clients jar's name).
fn kafka_version(libs: &std::path::Path) -> String {
    std::fs::read_dir(libs)
        .ok()
        .and_then(|d| {
            d.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("kafka-clients-")
                    .and_then(|v| v.strip_suffix(".jar"))
                    .map(String::from)
            })
        })
        .unwrap_or_else(|| "unknown version".into())
}
