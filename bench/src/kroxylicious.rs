//! Kroxylicious (the incumbent Kafka proxy, Java) in front of the benchmark's broker, installed by
//! `scripts/install-kroxylicious.sh` from Maven Central and started as its distribution starts it.
//!
//! Two configurations, both with documented defaults except where noted:
//! - **passthrough**: one virtual cluster, a port-per-node gateway, no filters;
//! - **record-encryption**: the same plus the RecordEncryption filter with the HashiCorp Vault KMS
//!   (OpenBao here), KEK per topic `KEK_$(topicName)` (the documented template), and
//!   `unresolvedKeyPolicy: REJECT` so that a missing KEK fails the run instead of measuring
//!   plaintext pass-through (the default, PASSTHROUGH_UNENCRYPTED, would forward records as they
//!   are). DEK and cache settings (`experimental`) are left at their defaults.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use kapsule_integration::process::ProcessGuard;
use kapsule_integration::{free_port, probe, wait};

/// How long Kroxylicious may take to answer ApiVersions after it starts (JVM start).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The install directory: `KAPSULE_KROXYLICIOUS_HOME` if it holds `bin/kroxylicious`, else what
/// `scripts/install-kroxylicious.sh` prints (it installs on first use, idempotently).
pub fn kroxylicious_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAPSULE_KROXYLICIOUS_HOME") {
        let dir = PathBuf::from(dir);
        if dir.join("bin/kroxylicious").is_file() {
            return Ok(dir);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-kroxylicious.sh");
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
        dir.join("bin/kroxylicious").is_file(),
        "{} printed {}, which has no bin/kroxylicious",
        script.display(),
        dir.display()
    );
    Ok(dir)
}

/// The Kroxylicious version installed in `home` (its VERSION file).
pub fn version(home: &Path) -> String {
    std::fs::read_to_string(home.join("VERSION"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Vault (OpenBao) access for the RecordEncryption filter.
#[derive(Debug, Clone)]
pub struct VaultAccess {
    /// `http://127.0.0.1:PORT/v1/transit`.
    pub transit_url: String,
    /// A file holding the token.
    pub token_file: PathBuf,
}

/// The config file for a proxy on `bootstrap_port` (nodes on the next three ports, the default
/// node id range 0..2) in front of `upstream`, with RecordEncryption when `vault` is given.
pub fn config_yaml(upstream: &str, bootstrap_port: u16, vault: Option<&VaultAccess>) -> String {
    let mut yaml = format!(
        "virtualClusters:\n\
         \x20 - name: bench\n\
         \x20   targetCluster:\n\
         \x20     bootstrapServers: {upstream}\n\
         \x20   gateways:\n\
         \x20   - name: plain\n\
         \x20     portIdentifiesNode:\n\
         \x20       bootstrapAddress: 127.0.0.1:{bootstrap_port}\n"
    );
    if let Some(v) = vault {
        yaml.push_str(&format!(
            "filterDefinitions:\n\
             - name: encrypt\n\
             \x20 type: RecordEncryption\n\
             \x20 config:\n\
             \x20   kms: VaultKmsService\n\
             \x20   kmsConfig:\n\
             \x20     vaultTransitEngineUrl: {}\n\
             \x20     vaultToken:\n\
             \x20       passwordFile: {}\n\
             \x20   selector: TemplateKekSelector\n\
             \x20   selectorConfig:\n\
             \x20     template: \"KEK_$(topicName)\"\n\
             \x20   unresolvedKeyPolicy: REJECT\n\
             defaultFilters:\n\
             - encrypt\n",
            v.transit_url,
            v.token_file.display()
        ));
    }
    yaml
}

/// A running Kroxylicious, killed (with its process group) when dropped.
pub struct Kroxylicious {
    process: ProcessGuard,
    bootstrap: String,
    _config: tempfile::NamedTempFile,
}

impl Kroxylicious {
    /// Starts Kroxylicious from `home` in front of `upstream` and waits until ApiVersions through
    /// its bootstrap address succeeds.
    pub async fn start(home: &Path, upstream: &str, vault: Option<&VaultAccess>) -> Result<Self> {
        let port = free_port_run(4);
        let mut config = tempfile::Builder::new()
            .prefix("kapsule-bench-kroxylicious-")
            .suffix(".yaml")
            .tempfile()?;
        std::io::Write::write_all(&mut config, config_yaml(upstream, port, vault).as_bytes())?;
        let mut cmd = Command::new(home.join("bin/kroxylicious"));
        cmd.arg("--config").arg(config.path());
        let mut process = ProcessGuard::spawn("kroxylicious", cmd)?;
        let bootstrap = format!("127.0.0.1:{port}");
        let addr = bootstrap.clone();
        let ready = wait::until("Kroxylicious to answer ApiVersions", READY_TIMEOUT, || {
            let running = process.ensure_running();
            let addr = addr.clone();
            async move {
                running?;
                probe::api_versions(&addr, Duration::from_secs(2)).await?;
                Ok(Some(()))
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("Kroxylicious log:\n{}", process.logs())));
        }
        Ok(Self {
            process,
            bootstrap,
            _config: config,
        })
    }

    /// The address clients bootstrap from.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The JVM's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Fails with the log tail if Kroxylicious died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// The last 64 KiB of its log.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// The first of `n` consecutive loopback ports that were all free a moment ago.
fn free_port_run(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let all_free = (1..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_config_names_the_vault_and_rejects_unresolved_keys() {
        let v = VaultAccess {
            transit_url: "http://127.0.0.1:8200/v1/transit".into(),
            token_file: "/tmp/t".into(),
        };
        let plain = config_yaml("127.0.0.1:9092", 9192, None);
        assert!(plain.contains("bootstrapAddress: 127.0.0.1:9192"));
        assert!(!plain.contains("RecordEncryption"));
        let enc = config_yaml("127.0.0.1:9092", 9192, Some(&v));
        assert!(enc.contains("vaultTransitEngineUrl: http://127.0.0.1:8200/v1/transit"));
        assert!(enc.contains("template: \"KEK_$(topicName)\""));
        assert!(enc.contains("unresolvedKeyPolicy: REJECT"));
    }
}
