//! `kapsule-bench`: one run, same machine, same load, several paths to the same kind of broker:
//! direct to tansu, through `tansu proxy` (the peer), and through Kapsule with each config.
//!
//! For every run and path it starts a fresh in-memory tansu broker (so memory use and offsets are
//! identical), the path's proxy if any, then runs `bench/load.py` (confluent-kafka):
//! produce N records of S bytes, consume them back, and a sequential produce-latency probe. The
//! proxy's CPU time (utime+stime from /proc/<pid>/stat) is sampled around produce+consume. Runs are
//! interleaved across paths and medians are reported as a markdown table.
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

use kapsule_integration::kapsule::kapsule_bin;
use kapsule_integration::process::{find_executable, ProcessGuard};
use kapsule_integration::tls::{self, Issued, KeyKind, Pki, RawKapsule, Stunnel};
use kapsule_integration::{free_port, probe, wait, Kapsule, KapsuleConfig, RecordsMode, Tansu};

#[derive(Debug, Parser)]
#[command(about = "Benchmark Kapsule against direct tansu and tansu proxy")]
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
}

impl Path {
    fn label(&self) -> String {
        match self {
            Path::Direct => "direct (tansu)".into(),
            Path::TansuProxy => "tansu proxy".into(),
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
#[derive(Debug, Clone, Default)]
struct LoadOpts {
    compression: String,
    json: bool,
    ssl_ca: Option<PathBuf>,
}

/// One run's measurements for one path.
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
    /// Proxy resident set (VmRSS) after the run, MiB.
    rss_mib: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
}

/// A proxy process in front of the broker, if the path has one.
enum Front {
    None,
    TansuProxy(ProcessGuard, String),
    Kapsule(Kapsule),
    /// Kapsule started from a full config (the TLS paths).
    Raw(RawKapsule),
}

impl Front {
    /// Kapsule's log so far (None for the other fronts).
    fn kapsule_log(&self) -> Option<String> {
        match self {
            Front::Kapsule(k) => Some(kapsule_integration::tls::strip_ansi(&k.logs())),
            Front::Raw(k) => Some(k.logs()),
            _ => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Front::None => None,
            Front::TansuProxy(p, _) => p.pid(),
            Front::Kapsule(k) => k.pid(),
            Front::Raw(k) => k.process.pid(),
        }
    }
}

/// The broker of one run: the rig's tansu, or tansu behind stunnel4 (TLS) for `+tls both`.
enum Broker {
    Plain(Tansu),
    Tls {
        _tansu: ProcessGuard,
        plain: String,
        stunnel: Stunnel,
    },
}

impl Broker {
    async fn start(tls: Tls, fixture: Option<&TlsFixture>) -> Result<Self> {
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
        }
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        match self {
            Broker::Plain(t) => t.create_topic(topic, partitions).await,
            Broker::Tls { plain, .. } => tls::create_topic(plain, topic, partitions).await,
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

/// The produce, consume and latency loads of one run through `bootstrap`, and the front's CPU
/// marks; fails if a load fails or the proxy died.
async fn measure(
    front: &Front,
    broker: &Broker,
    bootstrap: &str,
    topic: &str,
    args: &Args,
    fixture: Option<&TlsFixture>,
) -> Result<(Value, Value, Value, CpuMarks)> {
    let opts = LoadOpts {
        compression: args.compression.clone(),
        json: args.json,
        ssl_ca: matches!(front, Front::Raw(_))
            .then(|| fixture.map(|f| f.pki.ca_cert()))
            .flatten(),
    };
    // Warm up connections, metadata and allocator on a separate topic.
    let warm = format!("{topic}-warm");
    broker.create_topic(&warm, 1).await?;
    load("produce", bootstrap, &warm, 2000, args.size, &opts).await?;

    let cpu0 = front.pid().map(cpu_seconds).transpose()?;
    let p = load("produce", bootstrap, topic, args.records, args.size, &opts).await?;
    let cpu1 = front.pid().map(cpu_seconds).transpose()?;
    let c = load("consume", bootstrap, topic, args.records, args.size, &opts).await?;
    let cpu2 = front.pid().map(cpu_seconds).transpose()?;
    let l = load(
        "latency",
        bootstrap,
        topic,
        args.latency_records,
        args.size,
        &opts,
    )
    .await?;
    // A dead proxy must not produce numbers.
    let live = match &front {
        Front::Kapsule(k) => Some(k.admin_get("/livez").await?),
        Front::Raw(k) => Some(probe::http_get(&k.admin, "/livez", Duration::from_secs(5)).await?),
        _ => None,
    };
    if let Some((status, body)) = live {
        anyhow::ensure!(status == 200, "kapsule /livez {status}: {body}");
    }
    Ok((p, c, l, (cpu0, cpu1, cpu2)))
}

/// `e` with the warnings and errors of Kapsule's log appended (the reason a produce was refused,
/// for example), and the whole log kept in a file named in the message.
fn with_kapsule_log(e: anyhow::Error, front: &Front) -> anyhow::Error {
    let Some(log) = front.kapsule_log() else {
        return e;
    };
    let kept = std::env::temp_dir().join(format!("kapsule-bench-{}.log", free_port()));
    let saved = std::fs::write(&kept, &log).is_ok();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let tail = problems[problems.len().saturating_sub(5)..].join("\n");
    e.context(format!(
        "Kapsule's last warnings: {}{}",
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

async fn run_once(path: &Path, args: &Args, fixture: Option<&TlsFixture>) -> Result<Sample> {
    let tls = match path {
        Path::Kapsule { tls, .. } => *tls,
        _ => Tls::Off,
    };
    let broker = Broker::start(tls, fixture).await?;
    let topic = format!("bench-{}", free_port());
    broker.create_topic(&topic, args.partitions).await?;
    let front = match path {
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
    };
    let bootstrap = match &front {
        Front::None => broker.bootstrap(),
        Front::TansuProxy(_, a) => a.clone(),
        Front::Kapsule(k) => k.bootstrap(),
        Front::Raw(k) => k.listen.clone(),
    };
    let measured = measure(&front, &broker, &bootstrap, &topic, args, fixture).await;
    let (p, c, l, cpu) = match measured {
        Ok(m) => m,
        Err(e) => return Err(with_kapsule_log(e, &front)),
    };
    let (cpu0, cpu1, cpu2) = cpu;
    let rss = front.pid().map(rss_mib).transpose()?;
    let f = |v: &Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("load.py output lacks {k}: {v}"))
    };
    let gb = (p["bytes"].as_f64().unwrap_or(0.0) + c["bytes"].as_f64().unwrap_or(0.0)) / 1e9;
    Ok(Sample {
        produce_mb_s: f(&p, "mb_s")?,
        produce_rec_s: f(&p, "rec_s")?,
        consume_mb_s: f(&c, "mb_s")?,
        consume_rec_s: f(&c, "rec_s")?,
        proxy_cpu_s_per_gb: cpu0.zip(cpu2).map(|(a, b)| (b - a) / gb),
        produce_cpu_us: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b - a) * 1e6 / args.records as f64),
        consume_cpu_us: cpu1
            .zip(cpu2)
            .map(|(a, b)| (b - a) * 1e6 / args.records as f64),
        rss_mib: rss,
        p50_ms: f(&l, "p50_ms")?,
        p99_ms: f(&l, "p99_ms")?,
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

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut paths = vec![Path::Direct];
    if !args.no_tansu_proxy {
        paths.push(Path::TansuProxy);
    }
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
            paths.push(Path::Kapsule {
                name: name.into(),
                // The file adds top-level sections (kms, policy, deks); proxy/admin are the rig's.
                config: KapsuleConfig::new(RecordsMode::Passthrough).with_yaml(&yaml),
                tls: Tls::Off,
            });
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
    let fixture = if !args.tls.is_empty() {
        Some(TlsFixture::new().context("creating the benchmark PKI (openssl)")?)
    } else {
        None
    };

    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let mut failures: BTreeMap<usize, String> = BTreeMap::new();
    for run in 1..=args.runs {
        for (i, path) in paths.iter().enumerate() {
            if failures.contains_key(&i) {
                continue;
            }
            eprintln!("run {run}/{}: {}", args.runs, path.label());
            match run_once(path, &args, fixture.as_ref()).await {
                Ok(s) => {
                    eprintln!("  {s:?}");
                    samples.entry(i).or_default().push(s);
                }
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    failures.insert(i, format!("{e:#}"));
                }
            }
        }
    }

    let report = render(&args, &paths, &samples, &failures);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(
    args: &Args,
    paths: &[Path],
    samples: &BTreeMap<usize, Vec<Sample>>,
    failures: &BTreeMap<usize, String>,
) -> String {
    let med = |i: usize, f: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = samples.get(&i)?.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let direct = (
        med(0, &|s| Some(s.produce_mb_s)),
        med(0, &|s| Some(s.consume_mb_s)),
        med(0, &|s| Some(s.p50_ms)),
        med(0, &|s| Some(s.p99_ms)),
    );
    let fmt = |v: Option<f64>, prec: usize| v.map_or("n/a".to_string(), |v| format!("{v:.prec$}"));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Benchmark: {} runs (medians), {} records of {} B ({}), compression {}, {} partition(s), latency probe {} sequential produces.",
        args.runs,
        args.records,
        args.size,
        if args.json { "JSON with PII fields" } else { "random bytes" },
        args.compression,
        args.partitions,
        args.latency_records
    );
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {}; {}; load generator confluent-kafka {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        tool_version("uname", &["-sr"]),
        tool_version("tansu", &["--version"]),
        tool_version(
            "python3",
            &["-c", "import confluent_kafka as c; print(c.version()[0], 'librdkafka', c.libversion()[0])"]
        ),
    );
    md.push_str("| path | produce MB/s | produce rec/s | consume MB/s | consume rec/s | produce vs direct | consume vs direct | proxy CPU s/GB (= millicores per MB/s) | proxy CPU µs/rec produce | proxy CPU µs/rec consume | p50 produce ms | p99 produce ms | p50 added ms | p99 added ms | proxy RSS MiB |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, path) in paths.iter().enumerate() {
        if let Some(err) = failures.get(&i) {
            let short: String = err.lines().next().unwrap_or("").chars().take(160).collect();
            let _ = writeln!(
                md,
                "| {} | failed: {short} | | | | | | | | | | | | | |",
                path.label()
            );
            continue;
        }
        let pm = med(i, &|s| Some(s.produce_mb_s));
        let cm = med(i, &|s| Some(s.consume_mb_s));
        let p50 = med(i, &|s| Some(s.p50_ms));
        let p99 = med(i, &|s| Some(s.p99_ms));
        let ratio = |a: Option<f64>, d: Option<f64>| a.zip(d).map(|(a, d)| a / d);
        let added = |a: Option<f64>, d: Option<f64>| a.zip(d).map(|(a, d)| a - d);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            path.label(),
            fmt(pm, 1),
            fmt(med(i, &|s| Some(s.produce_rec_s)), 0),
            fmt(cm, 1),
            fmt(med(i, &|s| Some(s.consume_rec_s)), 0),
            fmt(ratio(pm, direct.0), 2),
            fmt(ratio(cm, direct.1), 2),
            fmt(med(i, &|s| s.proxy_cpu_s_per_gb), 2),
            fmt(med(i, &|s| s.produce_cpu_us), 2),
            fmt(med(i, &|s| s.consume_cpu_us), 2),
            fmt(p50, 2),
            fmt(p99, 2),
            fmt(if i == 0 { None } else { added(p50, direct.2) }, 2),
            fmt(if i == 0 { None } else { added(p99, direct.3) }, 2),
            fmt(med(i, &|s| s.rss_mib), 0),
        );
    }
    md
}
