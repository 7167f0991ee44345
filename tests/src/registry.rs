//! [`SchemaRegistry`]: a real Apicurio Registry (Confluent-compatible API at `/apis/ccompat/v7`,
//! in-memory storage) on a free port.
//!
//! The application comes from `scripts/install-registry.sh` (idempotent; it prints the directory
//! holding `quarkus-run.jar`), or from `KAPSULE_APICURIO_HOME`. It needs Java 21+: the JVM is
//! `KAPSULE_REGISTRY_JAVA`, else the newest `/usr/lib/jvm/*/bin/java` of version 21 or later,
//! else `java` on PATH. Like the Kafka nodes, the JVM runs under the watchdog that kills it once
//! the test process is gone, so a shared registry never outlives its tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::kafka::{workspace_root, WATCHDOG};
use crate::ports::free_port;
use crate::probe;
use crate::process::ProcessGuard;
use crate::wait;

/// How long the registry may take from JVM start to answering (about 20 s on two busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of the Confluent-compatible API under the registry's base URL.
pub const CCOMPAT_PATH: &str = "/apis/ccompat/v7";

/// A running Apicurio Registry, stopped when dropped.
pub struct SchemaRegistry {
    process: ProcessGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("port", &self.port)
            .field("process", &self.process)
            .finish()
    }
}

/// The registry application directory: `KAPSULE_APICURIO_HOME`, else what
/// `scripts/install-registry.sh` prints.
fn app_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("KAPSULE_APICURIO_HOME") {
        let d = PathBuf::from(d);
        if d.join("quarkus-run.jar").is_file() {
            return Ok(d);
        }
    }
    let script = workspace_root().join("scripts/install-registry.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed with {}: {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        dir.join("quarkus-run.jar").is_file(),
        "{} printed {}, which holds no quarkus-run.jar",
        script.display(),
        dir.display()
    );
    Ok(dir)
}

/// Major version of a `java` binary (`java -version` on stderr), if it runs.
fn java_major(java: &std::path::Path) -> Option<u32> {
    let out = Command::new(java).arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let quoted = text.split('"').nth(1)?;
    let first = quoted.split(['.', '-', '+']).next()?;
    first.parse().ok()
}

/// A Java 21+ runtime (see the module docs).
pub fn java21() -> Result<PathBuf> {
    if let Some(j) = std::env::var_os("KAPSULE_REGISTRY_JAVA") {
        return Ok(PathBuf::from(j));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/jvm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/java"))
        .filter(|p| p.is_file())
        .filter_map(|p| java_major(&p).map(|v| (v, p)))
        .filter(|(v, _)| *v >= 21)
        .collect();
    found.sort();
    if let Some((_, p)) = found.pop() {
        return Ok(p);
    }
    let java = PathBuf::from("java");
    match java_major(&java) {
        Some(v) if v >= 21 => Ok(java),
        other => anyhow::bail!(
            "Apicurio Registry needs Java 21+, found {other:?}; install one (e.g. Temurin 25) or \
             set KAPSULE_REGISTRY_JAVA"
        ),
    }
}

impl SchemaRegistry {
    /// The registry shared by every test of this process (tests isolate by subject names, which
    /// follow their unique topic names). Started on first use; lives until the process exits.
    pub async fn shared() -> Result<&'static SchemaRegistry> {
        static SHARED: tokio::sync::OnceCell<SchemaRegistry> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(SchemaRegistry::start)
            .await
            .context("starting the shared Apicurio Registry")
    }

    /// Starts a registry with in-memory storage on a free port and waits until its
    /// Confluent-compatible API answers.
    pub async fn start() -> Result<Self> {
        let app = app_dir()?;
        let java = java21()?;
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-registry-")
            .tempdir()
            .context("creating the registry directory")?;
        let mut cmd = Command::new("sh");
        cmd.current_dir(dir.path())
            .arg("-c")
            .arg(WATCHDOG)
            .arg("registry-watchdog")
            .arg(std::process::id().to_string())
            .arg(dir.path())
            .arg(&java)
            .args([
                "-Xms64m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg(format!("-Dquarkus.http.port={port}"))
            .arg("-Dquarkus.http.host=127.0.0.1")
            // Only warnings: the access log would print every request.
            .arg("-Dquarkus.log.level=WARN")
            .arg("-Dquarkus.log.category.\"io.quarkus\".level=INFO")
            .arg("-jar")
            .arg(app.join("quarkus-run.jar"));
        let mut process = ProcessGuard::spawn("apicurio-registry", cmd)?;
        let started = Instant::now();
        let ready = wait::until(
            "Apicurio Registry to answer GET /apis/ccompat/v7/subjects",
            READY_TIMEOUT,
            || {
                let running = process.ensure_running();
                async move {
                    running?;
                    let (status, _) = http_get(port, &format!("{CCOMPAT_PATH}/subjects")).await?;
                    Ok((status == 200).then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("Apicurio Registry log:\n{}", process.logs())));
        }
        if std::env::var_os("KAPSULE_RIG_TIMINGS").is_some() {
            eprintln!("apicurio registry ready after {:?}", started.elapsed());
        }
        Ok(Self {
            process,
            port,
            _dir: dir,
        })
    }

    /// Base URL of the Confluent-compatible API, for Kapsule's `schema_registry.url` and the
    /// clients' `schema.registry.url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{CCOMPAT_PATH}", self.port)
    }

    /// Base URL of Apicurio's own v3 API (`/apis/registry/v3`), for Apicurio's serdes.
    pub fn native_url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/registry/v3", self.port)
    }

    /// The registry's log tail.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `GET {url}{path}`: status and body (for assertions on what the registry holds).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.port, &format!("{CCOMPAT_PATH}{path}")).await
    }
}

/// `GET 127.0.0.1:{port}{path}` with a 5 s timeout: status and body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    probe::http_get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5)).await
}
