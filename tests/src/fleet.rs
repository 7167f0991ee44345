//! Several Kapsule instances behind one haproxy: [`Member`] (an instance at fixed addresses that
//! can be killed with SIGKILL and started again with the same config) and [`LoadBalancer`]
//! (haproxy in TCP mode with `/readyz` health checks, PROXY protocol v2 and a runtime API to take
//! servers in and out).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kapsule::kapsule_bin;
use crate::process::{find_executable, ProcessGuard};
use crate::tls::{strip_ansi, wait_port};
use crate::{probe, wait};

/// One Kapsule instance of a fleet, always at the same listen and admin addresses.
#[derive(Debug)]
pub struct Member {
    /// Name used in messages and in haproxy (`k0`, `k1`, ...).
    pub name: String,
    /// Bootstrap listener, `127.0.0.1:port`.
    pub listen: String,
    /// Admin endpoint, `127.0.0.1:port`.
    pub admin: String,
    log_filter: String,
    config: tempfile::NamedTempFile,
    process: Option<ProcessGuard>,
    /// Logs of earlier runs (before a kill), so assertions see the whole history.
    old_logs: String,
}

impl Member {
    /// Writes `yaml` (with `{listen}` and `{admin}` replaced by free addresses) and starts Kapsule
    /// with it and the `--log` filter `log`; returns once `/readyz` answers 200.
    pub async fn start(name: &str, yaml: &str, log: &str) -> Result<Self> {
        let listen = format!("127.0.0.1:{}", crate::free_port());
        let admin = format!("127.0.0.1:{}", crate::free_port());
        let yaml = yaml.replace("{listen}", &listen).replace("{admin}", &admin);
        let mut config = tempfile::Builder::new()
            .prefix("kapsule-rig-fleet-")
            .suffix(".yaml")
            .tempfile()?;
        config.write_all(yaml.as_bytes())?;
        let mut m = Self {
            name: name.to_owned(),
            listen,
            admin,
            log_filter: log.to_owned(),
            config,
            process: None,
            old_logs: String::new(),
        };
        m.restart().await?;
        Ok(m)
    }

    /// Starts the instance again with the same config and addresses (after [`Member::kill9`]) and
    /// waits until `/readyz` answers 200.
    pub async fn restart(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "{} is still running", self.name);
        let mut cmd = Command::new(kapsule_bin()?);
        cmd.arg("run")
            .arg("--config")
            .arg(self.config.path())
            .args(["--log", &self.log_filter]);
        let mut process = ProcessGuard::spawn(&format!("kapsule-{}", self.name), cmd)?;
        let admin = self.admin.clone();
        let r = wait::until(
            &format!("{} /readyz", self.name),
            Duration::from_secs(30),
            || {
                let running = process.ensure_running();
                let admin = admin.clone();
                async move {
                    running?;
                    let ok = probe::http_get(&admin, "/readyz", Duration::from_secs(2))
                        .await
                        .is_ok_and(|(status, _)| status == 200);
                    Ok(ok.then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = r {
            let logs = process.logs();
            return Err(e.context(format!("{} log:\n{logs}", self.name)));
        }
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILL (no drain, no goodbye): what a crashed node or an OOM kill looks like.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            self.old_logs.push_str(&strip_ansi(&p.logs()));
            p.kill();
        }
    }

    /// Everything this instance logged over all its runs (the last 64 KiB of each), without
    /// colour codes.
    pub fn logs(&self) -> String {
        format!("{}{}", self.old_logs, self.current_logs())
    }

    /// What the running process logged (empty while killed).
    pub fn current_logs(&self) -> String {
        self.process
            .as_ref()
            .map(|p| strip_ansi(&p.logs()))
            .unwrap_or_default()
    }
}

/// One haproxy frontend: clients connect to `bind`, haproxy forwards to one of `servers`
/// (`(name, address, admin address for the /readyz check)`).
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Name of the frontend and its backend (used by [`LoadBalancer::set_server`]).
    pub name: String,
    /// Address clients connect to.
    pub bind: String,
    /// Servers: name, address Kapsule listens on, Kapsule's admin address.
    pub servers: Vec<(String, String, String)>,
    /// TLS passthrough routed on the ClientHello's server name: only connections whose SNI ends
    /// with this suffix reach the backend (`req.ssl_sni -m end`); others are closed by haproxy.
    pub sni_suffix: Option<String>,
}

/// haproxy in TCP mode in front of a fleet.
///
/// Every server is checked with `GET /readyz` on its admin port every 300 ms (down after 2
/// failures, up after 2 successes), so a killed instance leaves the rotation within about a
/// second; a connection that fails anyway is redispatched to another server. Connections to
/// Kapsule start with a PROXY protocol v2 header and come from `source` (an address no client
/// uses, so a test can tell haproxy's address from the client's in Kapsule's logs).
#[derive(Debug)]
pub struct LoadBalancer {
    process: ProcessGuard,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoadBalancer {
    /// Starts haproxy with `frontends`, connecting to servers from `source`, and waits until every
    /// bind accepts and every server is up.
    pub async fn start(frontends: &[Frontend], source: &str) -> Result<Self> {
        let bin = find_executable("HAPROXY_BIN", "haproxy")
            .context("haproxy is not installed (scripts/install-deps.sh installs it)")?;
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-lb-")
            .tempdir()?;
        let socket = dir.path().join("admin.sock");
        let mut text = format!(
            "global\n  maxconn 1024\n  stats socket {} mode 600 level admin\n\
defaults\n  mode tcp\n  retries 3\n  option redispatch 1\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  timeout check 1s\n",
            socket.display()
        );
        for f in frontends {
            let route = match &f.sni_suffix {
                None => format!("  default_backend {}\n", f.name),
                Some(suffix) => format!(
                    "  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  use_backend {} if {{ req.ssl_sni -i -m end {suffix} }}\n",
                    f.name
                ),
            };
            text.push_str(&format!(
                "frontend {0}\n  bind {1}\n{route}backend {0}\n  balance roundrobin\n  option httpchk GET /readyz\n  default-server send-proxy-v2 source {source} check inter 300ms fall 2 rise 2\n",
                f.name, f.bind
            ));
            for (name, addr, admin) in &f.servers {
                let (admin_ip, admin_port) = admin.rsplit_once(':').context("admin address")?;
                text.push_str(&format!(
                    "  server {name} {addr} addr {admin_ip} port {admin_port}\n"
                ));
            }
        }
        let conf = dir.path().join("haproxy.cfg");
        std::fs::write(&conf, &text)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&conf);
        let mut process = ProcessGuard::spawn("haproxy", cmd)?;
        for f in frontends {
            wait_port(&f.bind, "haproxy to listen", &mut process).await?;
        }
        if let Some(status) = process.exit_status() {
            bail!("haproxy exited with {status}: {}", process.logs());
        }
        let lb = Self {
            process,
            socket,
            _dir: dir,
        };
        for f in frontends {
            for (name, _, _) in &f.servers {
                lb.wait_server(&f.name, name, true).await?;
            }
        }
        Ok(lb)
    }

    /// One command on haproxy's runtime API; returns its answer.
    pub async fn command(&self, cmd: &str) -> Result<String> {
        let mut s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .context("haproxy runtime API answer")??;
        Ok(out)
    }

    /// Puts `server` of `backend` into maintenance (`enabled == false`) or back into rotation.
    pub async fn set_server(&self, backend: &str, server: &str, enabled: bool) -> Result<()> {
        let verb = if enabled { "enable" } else { "disable" };
        let out = self
            .command(&format!("{verb} server {backend}/{server}"))
            .await?;
        ensure!(
            out.trim().is_empty(),
            "haproxy: {verb} server {backend}/{server}: {out}"
        );
        Ok(())
    }

    /// haproxy's view of `backend/server`: `UP`, `DOWN`, `MAINT`, ... (the `status` column of
    /// `show stat`, e.g. `DOWN 1/2` while changing).
    pub async fn server_status(&self, backend: &str, server: &str) -> Result<String> {
        let csv = self.command("show stat").await?;
        let header = csv.lines().next().context("show stat header")?;
        let col = header
            .trim_start_matches("# ")
            .split(',')
            .position(|c| c == "status")
            .context("status column")?;
        for line in csv.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() > col && cells[0] == backend && cells[1] == server {
                return Ok(cells[col].to_owned());
            }
        }
        bail!("haproxy has no server {backend}/{server}:\n{csv}")
    }

    /// Waits up to 20 s until haproxy's health checks see `backend/server` up (or down).
    pub async fn wait_server(&self, backend: &str, server: &str, up: bool) -> Result<()> {
        let want = if up { "UP" } else { "DOWN" };
        wait::until(
            &format!("haproxy to see {backend}/{server} {want}"),
            Duration::from_secs(20),
            || async move {
                let status = self.server_status(backend, server).await?;
                Ok((status == want).then_some(()))
            },
        )
        .await
    }

    /// haproxy's log.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}
