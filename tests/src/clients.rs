//! Runs the real Kafka clients in `tests/clients/` (Python, Node, the Apache Kafka Java client,
//! franz-go) and parses their JSON output.
//!
//! Every script prints exactly one JSON object as its last stdout line; diagnostics go to stderr.
//! A non-zero exit, a timeout, or output that is not JSON is an error that includes stderr.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Directory holding `python/` and `node/` client scripts.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Result of one client script run.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    /// The JSON object printed on the last stdout line.
    pub json: Value,
    /// Everything the script wrote to stderr.
    pub stderr: String,
    /// Wall-clock run time.
    pub elapsed: Duration,
}

/// Runs `python3 tests/clients/python/<script> <args>` with a timeout (the process group is killed
/// when it expires).
pub async fn run_python(script: &str, args: &[String], timeout: Duration) -> Result<ClientOutput> {
    let path = clients_dir().join("python").join(script);
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(&path).args(args);
    run(cmd, &format!("python {script}"), timeout).await
}

/// Runs `python3 bench/load.py <args>` (the benchmark's confluent-kafka load generator) with a
/// timeout, like [`run_python`].
pub async fn run_bench_load(args: &[String], timeout: Duration) -> Result<ClientOutput> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/load.py");
    let mut cmd = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(&path).args(args);
    run(cmd, "python bench/load.py", timeout).await
}

/// [`run_python`] inside the network namespace `netns` (`ip netns exec NETNS python3 ...`), so
/// the script sees `/etc/netns/NETNS/hosts` as its `/etc/hosts`.
pub async fn run_python_in_netns(
    netns: &str,
    script: &str,
    args: &[String],
    timeout: Duration,
) -> Result<ClientOutput> {
    let path = clients_dir().join("python").join(script);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&path)
        .args(args);
    run(cmd, &format!("python {script} in netns {netns}"), timeout).await
}

/// Runs `node tests/clients/node/<script> <args>` with a timeout.
pub async fn run_node(script: &str, args: &[String], timeout: Duration) -> Result<ClientOutput> {
    let path = clients_dir().join("node").join(script);
    let mut cmd = Command::new("node");
    cmd.arg(&path)
        .args(args)
        .current_dir(clients_dir().join("node"));
    run(cmd, &format!("node {script}"), timeout).await
}

/// JVM options for the Java client unless `KAPSULE_JAVA_CLIENT_OPTS` is set: quick start-up over
/// peak speed (the client runs for seconds), one GC thread.
const JAVA_CLIENT_OPTS: &str = "-Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m";

/// Runs `tests/clients/<dir>/build.sh` once per test process (it is idempotent and prints what
/// it built) and returns the printed path.
fn built_once(
    cell: &'static std::sync::OnceLock<Result<PathBuf, String>>,
    dir: &str,
    args: &[&std::ffi::OsStr],
) -> Result<PathBuf> {
    run_script_once(cell, clients_dir().join(dir).join("build.sh"), args)
}

/// Runs an idempotent `script` that prints a path once per test process and returns the path.
fn run_script_once(
    cell: &'static std::sync::OnceLock<Result<PathBuf, String>>,
    script: PathBuf,
    args: &[&std::ffi::OsStr],
) -> Result<PathBuf> {
    cell.get_or_init(|| {
        let out = std::process::Command::new(&script)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed with {}: {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the Apache Kafka Java client (`tests/clients/java`, `KapsuleClient <args>`: `produce`,
/// `consume` or `admin`, see its source) with a timeout. The client is compiled on first use by
/// its `build.sh` against the jars of [`crate::kafka::kafka_libs`].
pub async fn run_java(args: &[String], timeout: Duration) -> Result<ClientOutput> {
    static CLASSES: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let libs = crate::kafka::kafka_libs()?;
    let classes = built_once(&CLASSES, "java", &[libs.as_os_str()])?;
    let classpath = format!(
        "{}:{}",
        classes.display(),
        crate::kafka::kafka_classpath(&libs)
    );
    run_java_main(&classpath, "KapsuleClient", args, timeout).await
}

/// Runs the Java schema client (`tests/clients/java-serde`, `SchemaAvroClient <args>`: Apicurio
/// Registry's Avro serde with the Apache Kafka client, `produce` or `consume`, see its source)
/// with a timeout. The serde's jars come from `scripts/install-registry-serde.sh`; the client is
/// compiled on first use by its `build.sh`.
pub async fn run_java_serde(args: &[String], timeout: Duration) -> Result<ClientOutput> {
    static SERDE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    static CLASSES: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let libs = crate::kafka::kafka_libs()?;
    let serde = run_script_once(
        &SERDE,
        crate::kafka::workspace_root().join("scripts/install-registry-serde.sh"),
        &[],
    )?;
    let classes = built_once(
        &CLASSES,
        "java-serde",
        &[serde.as_os_str(), libs.as_os_str()],
    )?;
    let classpath = format!(
        "{}:{}/*:{}",
        classes.display(),
        serde.display(),
        crate::kafka::kafka_classpath(&libs)
    );
    run_java_main(&classpath, "SchemaAvroClient", args, timeout).await
}

/// Runs `main_class` of `classpath` on the rig's JVM with the client JVM options
/// (`KAPSULE_JAVA_CLIENT_OPTS`) and the clients' log4j2 configuration.
async fn run_java_main(
    classpath: &str,
    main_class: &str,
    args: &[String],
    timeout: Duration,
) -> Result<ClientOutput> {
    let opts =
        std::env::var("KAPSULE_JAVA_CLIENT_OPTS").unwrap_or_else(|_| JAVA_CLIENT_OPTS.to_owned());
    let mut cmd = Command::new(crate::kafka::java());
    cmd.args(opts.split_whitespace())
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            clients_dir().join("java/log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(classpath)
        .arg(main_class)
        .args(args);
    let what = format!(
        "java {main_class} {}",
        args.first().map_or("", String::as_str)
    );
    run(cmd, &what, timeout).await
}

/// Runs the franz-go client (`tests/clients/go`, `kapsule-franz <args>`: `produce` or `consume`,
/// see its source) with a timeout. Built on first use by its `build.sh` (`go build`).
pub async fn run_franz(args: &[String], timeout: Duration) -> Result<ClientOutput> {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let bin = built_once(&BIN, "go", &[])?;
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let what = format!("franz-go {}", args.first().map_or("", String::as_str));
    run(cmd, &what, timeout).await
}

async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<ClientOutput> {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    // Read as the client writes, so a client that hangs still shows what it said before.
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for {what}"))?,
        Err(_) => {
            kill_group(pid);
            let said = stderr.finish().await;
            bail!(
                "{what} did not finish within {timeout:?} (killed)\nstderr (tail): {}",
                tail(&said, 8000)
            );
        }
    };
    kill_group(pid);
    let stdout = stdout.finish().await;
    let stderr = stderr.finish().await;
    if !status.success() {
        bail!(
            "{what} failed with {status}\nstdout (tail): {}\nstderr (tail): {}",
            tail(&stdout, 4000),
            tail(&stderr, 8000)
        );
    }
    let json = parse_last_json_line(&stdout).with_context(|| {
        format!(
            "{what} printed no JSON result\nstderr (tail): {}",
            tail(&stderr, 8000)
        )
    })?;
    Ok(ClientOutput {
        json,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// What a child wrote to one of its pipes, read on a task of its own.
struct Collected {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

fn collect(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> Collected {
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = pipe.map(|mut pipe| {
        let bytes = bytes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    });
    Collected { bytes, reader }
}

impl Collected {
    /// Everything read once the pipe closes, or what was read 5 s after the child ended (a
    /// process outside its group may still hold the pipe open).
    async fn finish(self) -> String {
        if let Some(reader) = self.reader {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let bytes = self.bytes.lock().unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn kill_group(pid: Option<u32>) {
    let pgid = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pgid) = pgid {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// The last `n` bytes of `s` (fewer, to start on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Parses the last non-empty line of `stdout` as JSON.
pub fn parse_last_json_line(stdout: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("empty stdout")?;
    serde_json::from_str(line)
        .with_context(|| format!("last line is not JSON: {}", tail(line, 500)))
}

/// A client script that runs in phases: it prints one JSON line per phase and waits for a line on
/// stdin before the next. Killed (with its process group) when dropped.
pub struct InteractiveClient {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr_file: tempfile::NamedTempFile,
}

impl std::fmt::Debug for InteractiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InteractiveClient({}, pid {:?})",
            self.what,
            self.child.id()
        )
    }
}

impl InteractiveClient {
    /// Starts `python3 tests/clients/python/<script> <args>`.
    pub fn python(script: &str, args: &[String]) -> Result<Self> {
        let what = format!("python {script}");
        let stderr_file = tempfile::NamedTempFile::new()?;
        let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(clients_dir().join("python").join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file.reopen()?))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("piped stdout")?).lines();
        Ok(Self {
            what,
            child,
            stdin,
            stdout,
            stderr_file,
        })
    }

    /// The script's stderr so far.
    pub fn stderr(&self) -> String {
        crate::process::read_tail(self.stderr_file.path(), 16 * 1024)
    }

    /// Waits up to `timeout` for the next JSON line on stdout (non-JSON lines are skipped).
    pub async fn next_json(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .with_context(|| {
                    format!(
                        "{} printed no result within {timeout:?}; stderr:\n{}",
                        self.what,
                        self.stderr()
                    )
                })?
                .context("reading stdout")?;
            match line {
                None => bail!("{} exited early; stderr:\n{}", self.what, self.stderr()),
                Some(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// Sends one line to the script's stdin (the "go on" signal between phases).
    pub async fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits up to `timeout` for the script to exit successfully.
    pub async fn finish(mut self, timeout: Duration) -> Result<()> {
        self.stdin.take();
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {timeout:?}", self.what))??;
        if !status.success() {
            bail!(
                "{} failed with {status}; stderr:\n{}",
                self.what,
                self.stderr()
            );
        }
        Ok(())
    }
}

impl Drop for InteractiveClient {
    fn drop(&mut self) {
        kill_group(self.child.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    /// A client that hangs is killed at its deadline, and the error shows what it had said.
    #[tokio::test]
    async fn a_hung_client_is_killed_and_its_stderr_reported() {
        let started = Instant::now();
        let err = run(
            sh("echo 'assigned t[0]' >&2; sleep 30"),
            "hanging client",
            Duration::from_millis(500),
        )
        .await
        .expect_err("the client outlives its deadline");
        let message = format!("{err:#}");
        assert!(message.contains("did not finish within"), "{message}");
        assert!(message.contains("assigned t[0]"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed at the deadline"
        );
    }

    /// A client that finishes gives its last JSON line and all of its stderr.
    #[tokio::test]
    async fn a_finished_client_gives_its_json_and_stderr() {
        let out = run(
            sh("echo progress >&2; echo '{\"records\": 3}'"),
            "client",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out.json["records"], 3);
        assert_eq!(out.stderr, "progress\n");
    }

    /// A client that fails shows its exit status and stderr.
    #[tokio::test]
    async fn a_failed_client_reports_status_and_stderr() {
        let err = run(
            sh("echo broken >&2; exit 3"),
            "client",
            Duration::from_secs(10),
        )
        .await
        .expect_err("exit 3 fails");
        let message = format!("{err:#}");
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("broken"), "{message}");
    }
}
