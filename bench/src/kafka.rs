//! A single combined (broker + controller) Apache Kafka KRaft node for the benchmark, from the
//! jars `scripts/install-kafka.sh` installs, and Kafka's own perf tools as load generators.
//!
//! The node runs from a temporary directory (config, log dir) on two free loopback ports, with the
//! heap and GC options of Kafka's `kafka-server-start.sh` and Kafka's defaults except
//! [`MESSAGE_MAX_BYTES`]; it is killed (with its process group)
//! and its directory removed when [`KafkaBroker`] is dropped, also when the benchmark fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use kapsule_integration::process::ProcessGuard;
use kapsule_integration::{free_port, probe, wait};

/// The broker's largest record batch: 2 MiB instead of Kafka's default 1 MiB + 12 B, because
/// librdkafka's default `batch.size` (1 000 000 B, which bench/load.py uses) plus an encrypting
/// proxy's per-record overhead (Kapsule and Kroxylicious alike) exceeds the default and every
/// produce is refused with MESSAGE_TOO_LARGE. The same broker serves every path.
const MESSAGE_MAX_BYTES: u32 = 2 * 1024 * 1024;

/// How long the node may take to answer Metadata after it starts (JVM start, KRaft election).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The libs directory of Apache Kafka: `KAPSULE_KAFKA_LIBS`, else what `scripts/install-kafka.sh`
/// prints (it installs on first use, idempotently).
pub fn kafka_libs() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAPSULE_KAFKA_LIBS") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-kafka.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        dir.is_dir(),
        "{} printed {}, which is not a directory",
        script.display(),
        dir.display()
    );
    Ok(dir)
}

/// `java` for Kafka (17+): `KAPSULE_KAFKA_JAVA`, else `java` on PATH.
fn java() -> String {
    std::env::var("KAPSULE_KAFKA_JAVA").unwrap_or_else(|_| "java".into())
}

fn classpath(libs: &Path) -> String {
    format!("{}/*", libs.display())
}

/// A running single-node Apache Kafka cluster (KRaft, PLAINTEXT on loopback).
pub struct KafkaBroker {
    process: ProcessGuard,
    port: u16,
    libs: PathBuf,
    /// Config and log dir; removed on drop (after the process is killed: field order).
    _dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// Formats a fresh log directory and starts the node; returns once Metadata lists the broker.
    pub async fn start(libs: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kapsule-bench-kafka-")
            .tempdir()
            .context("creating the Kafka directory")?;
        let port = free_port();
        let controller = free_port();
        let props = dir.path().join("server.properties");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 log.dirs={}\n\
                 offsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 message.max.bytes={MESSAGE_MAX_BYTES}\n",
                dir.path().join("data").display()
            ),
        )?;
        let cp = classpath(libs);
        let format = Command::new(java())
            .args(["-cp", &cp, "kafka.tools.StorageTool", "format"])
            .args(["-t", &cluster_id()])
            .arg("-c")
            .arg(&props)
            .output()
            .context("running Kafka's StorageTool (is Java 17+ installed?)")?;
        ensure!(
            format.status.success(),
            "formatting the Kafka log dir failed: {}{}",
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );
        let mut cmd = Command::new(java());
        // kafka-server-start.sh's defaults (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS).
        cmd.args(["-Xmx1G", "-Xms1G", "-server", "-XX:+UseG1GC"])
            .args([
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
            ])
            .args([
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
            ])
            .args(["-cp", &cp, "kafka.Kafka"])
            .arg(&props);
        let mut process = ProcessGuard::spawn("kafka", cmd)?;
        let addr = format!("127.0.0.1:{port}");
        let ready = wait::until("Apache Kafka to answer Metadata", READY_TIMEOUT, || {
            let running = process.ensure_running();
            let addr = addr.clone();
            async move {
                running?;
                probe::api_versions(&addr, Duration::from_secs(2)).await?;
                let md = probe::metadata(&addr, Duration::from_secs(2)).await?;
                ensure!(!md.brokers.is_empty(), "metadata lists no brokers");
                Ok(Some(()))
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("Kafka log:\n{}", process.logs())));
        }
        Ok(Self {
            process,
            port,
            libs: libs.to_owned(),
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Fails with the log tail if the broker died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// The jars the broker runs from (also the perf tools').
    pub fn libs(&self) -> &Path {
        &self.libs
    }
}

/// A random KRaft cluster id (16 random bytes, base64url without padding, as `random-uuid` prints).
fn cluster_id() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut bits = 0u32;
    let mut nbits = 0;
    for byte in b {
        bits = (bits << 8) | u32::from(byte);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

/// Runs one of Kafka's perf tools (`kafka-producer-perf-test` / `kafka-consumer-perf-test`) and
/// returns its stdout; fails with its output if it fails or runs over 600 s.
async fn perf_tool(libs: &Path, class: &str, args: &[String]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(java());
    cmd.args(["-Xmx512M", "-cp", &classpath(libs), class])
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .with_context(|| format!("{class} took over 600 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{class} failed with {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `kafka-producer-perf-test`: `count` records of `size` random bytes (no key), unthrottled, with
/// the tool's producer defaults except `acks=all`. Returns `{bytes, mb_s, rec_s}` (MB = 10^6 B of
/// values) from its summary line.
pub async fn java_produce(
    libs: &Path,
    bootstrap: &str,
    topic: &str,
    count: usize,
    size: usize,
) -> Result<Value> {
    let args: Vec<String> = [
        "--topic",
        topic,
        "--num-records",
        &count.to_string(),
        "--record-size",
        &size.to_string(),
        "--throughput",
        "-1",
        "--producer-props",
        &format!("bootstrap.servers={bootstrap}"),
        "acks=all",
    ]
    .map(String::from)
    .to_vec();
    let out = perf_tool(libs, "org.apache.kafka.tools.ProducerPerformance", &args).await?;
    parse_producer_summary(&out, size)
}

/// Parses ProducerPerformance's last line, `N records sent, X records/sec (Y MB/sec), ...`.
fn parse_producer_summary(out: &str, size: usize) -> Result<Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("records sent") && l.contains("50th"))
        .with_context(|| format!("no summary line in ProducerPerformance's output: {out}"))?;
    let mut parts = line.split(',');
    let sent: f64 = parts
        .next()
        .and_then(|s| s.split_whitespace().next())
        .context("records sent")?
        .parse()?;
    let rec_s: f64 = parts
        .next()
        .and_then(|s| s.split_whitespace().next())
        .context("records/sec")?
        .parse()?;
    let bytes = sent * size as f64;
    Ok(json!({"bytes": bytes, "rec_s": rec_s, "mb_s": rec_s * size as f64 / 1e6}))
}

/// `kafka-consumer-perf-test`: reads `count` records of `topic` in a fresh consumer group (the
/// tool's defaults). Returns `{bytes, mb_s, rec_s}` over the tool's fetch time (its elapsed time
/// minus the group join), MB = 10^6 B.
pub async fn java_consume(
    libs: &Path,
    bootstrap: &str,
    topic: &str,
    count: usize,
) -> Result<Value> {
    let args: Vec<String> = [
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--num-records",
        &count.to_string(),
        "--timeout",
        "120000",
    ]
    .map(String::from)
    .to_vec();
    let out = perf_tool(libs, "org.apache.kafka.tools.ConsumerPerformance", &args).await?;
    parse_consumer_summary(&out, count)
}

/// Parses ConsumerPerformance's CSV line: start, end, MB, MB/s, nMsg, nMsg/s, rebalance ms,
/// fetch ms, fetch MB/s, fetch nMsg/s (its MB are MiB: bytes are recomputed from them).
fn parse_consumer_summary(out: &str, count: usize) -> Result<Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.split(',').count() == 10 && !l.starts_with("start.time"))
        .with_context(|| format!("no result line in ConsumerPerformance's output: {out}"))?;
    let f: Vec<f64> = line
        .split(',')
        .skip(2)
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {line}"))?;
    let (mib, n, fetch_ms) = (f[0], f[2], f[5]);
    ensure!(
        n as usize >= count,
        "ConsumerPerformance read {n} of {count} records"
    );
    ensure!(fetch_ms > 0.0, "ConsumerPerformance fetch time 0: {line}");
    let bytes = mib * 1024.0 * 1024.0;
    let secs = fetch_ms / 1000.0;
    Ok(json!({"bytes": bytes, "rec_s": n / secs, "mb_s": bytes / 1e6 / secs}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_perf_tools_summaries() {
        let p = "1 records sent, 2.0 records/sec (0.00 MB/sec), 1.0 ms avg latency, 2.0 ms max latency.\n\
                 50000 records sent, 1760.997429 records/sec (1.72 MB/sec), 12757.04 ms avg latency, 19270.00 ms max latency, 12290 ms 50th, 18700 ms 95th, 19119 ms 99th, 19247 ms 99.9th.\n";
        let v = parse_producer_summary(p, 1024).unwrap();
        assert_eq!(v["bytes"].as_f64().unwrap(), 50000.0 * 1024.0);
        assert!((v["mb_s"].as_f64().unwrap() - 1760.997429 * 1024.0 / 1e6).abs() < 1e-9);
        let c = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n\
                 2026-12-06 05:12:13:938, 2026-12-06 05:12:23:582, 48.8281, 5.0631, 50000, 5184.5707, 3113, 6531, 7.4764, 7655.7954\n";
        let v = parse_consumer_summary(c, 50000).unwrap();
        assert!((v["rec_s"].as_f64().unwrap() - 50000.0 / 6.531).abs() < 1e-6);
        assert!(parse_consumer_summary(c, 60000).is_err());
        assert_eq!(cluster_id().len(), 22);
    }
}
