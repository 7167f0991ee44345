//! [`Tansu`]: a real tansu 0.6.0 Kafka broker with in-memory storage, on a free port.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::ports::free_port;
use crate::probe;
use crate::process::{find_executable, ProcessGuard};
use crate::wait;

/// How long a broker may take to accept Kafka requests after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A tansu broker started by a test, stopped when dropped.
///
/// Started as `tansu broker --listener-url tcp://127.0.0.1:PORT --advertised-listener-url
/// tcp://127.0.0.1:PORT --storage-engine memory://tansu/ --cluster-id <unique>`. tansu 0.6.0 has no
/// node-id flag: the node id is fixed at 111. Storage is in memory, so [`Tansu::restart`] comes back
/// empty: topics must be created again and offsets start at 0.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    cluster_id: String,
    process: Option<ProcessGuard>,
}

impl std::fmt::Debug for Tansu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tansu")
            .field("port", &self.port)
            .field("cluster_id", &self.cluster_id)
            .field("process", &self.process)
            .finish()
    }
}

impl Tansu {
    /// Starts a broker on a free port and waits until it answers ApiVersions and Metadata.
    pub async fn start() -> Result<Self> {
        let bin = find_executable("TANSU_BIN", "tansu")?;
        let port = free_port();
        let mut tansu = Self {
            bin,
            port,
            cluster_id: format!("kapsule-rig-{port}"),
            process: None,
        };
        tansu.launch().await?;
        Ok(tansu)
    }

    async fn launch(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args([
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            &self.cluster_id,
        ])
        .env(
            "RUST_LOG",
            std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut process = ProcessGuard::spawn("tansu", cmd)?;
        let addr = self.bootstrap();
        let ready = wait::until("tansu to answer Kafka requests", READY_TIMEOUT, || {
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
            return Err(e.context(format!("tansu log:\n{}", process.logs())));
        }
        self.process = Some(process);
        Ok(())
    }

    /// `127.0.0.1:PORT`, the address clients (or Kapsule's upstream) connect to.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port; stays the same across [`Tansu::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of the running broker, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ProcessGuard::pid)
    }

    /// Tail of the broker's log (empty while stopped).
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(ProcessGuard::logs)
            .unwrap_or_default()
    }

    /// Creates `name` with `partitions` partitions via `tansu topic create` and waits until
    /// Metadata lists it with that many partitions.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&self.bin)
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &format!("tcp://{}", self.bootstrap())])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("`tansu topic create` did not finish in 30 s")?
        .context("running `tansu topic create`")?;
        ensure!(
            out.status.success(),
            "`tansu topic create {name}` failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = self.bootstrap();
        wait::until(
            &format!("topic {name} in metadata"),
            Duration::from_secs(20),
            || {
                let addr = addr.clone();
                async move {
                    let md = probe::metadata(&addr, Duration::from_secs(2)).await?;
                    Ok(md
                        .topics
                        .iter()
                        .find(|t| {
                            t.name == name
                                && t.error_code == 0
                                && t.partitions == partitions as usize
                        })
                        .map(|_| ()))
                }
            },
        )
        .await
    }

    /// Kills the broker (SIGKILL, like a crash). Clients see their connections reset.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the broker again on the same port (after [`Tansu::stop`], or kills it first) and
    /// waits until it is ready. Storage is in memory, so the broker comes back empty.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        // The port was just released; a few quick retries cover a slow socket teardown.
        let mut last = None;
        for _ in 0..5 {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .expect("at least one attempt")
            .context(format!("restarting tansu on port {}", self.port)))
    }
}
