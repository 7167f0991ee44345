//! Starts drongo (PyPI `drongo`, installed by scripts/install-deps.sh), whose `drongo server`
//! speaks the Cloud KMS REST API (`cloudkms.googleapis.com/v1`: key rings, crypto keys,
//! `encrypt`/`decrypt` with additional authenticated data, `GET` of a key), on a free loopback
//! port, and stops it on drop (also when a test panics).
//!
//! What drongo does not do, and so what these tests cannot cover: it checks no credentials
//! (Kapsule sends a token from an `access_token_file`), it has one version per key (no rotation),
//! no `macSign` (no record-key encryption), its keys live in memory (an outage is
//! [`GcpKmsEmulator::pause`], not a restart), and its "ciphertext" is a reversible encoding that
//! embeds the plaintext (the real API contract, not real cryptography): the tests check that the
//! *records* stored in Kafka hold no plaintext, never the EDEK.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{find_executable, ProcessGuard};
use crate::{free_port, probe, wait};

/// Key ring holding the rig's keys: `projects/kapsule-rig/locations/global/keyRings/kapsule`.
pub const KEY_RING: &str = "projects/kapsule-rig/locations/global/keyRings/kapsule";

/// A running drongo server.
#[derive(Debug)]
pub struct GcpKmsEmulator {
    process: ProcessGuard,
    port: u16,
    token: tempfile::NamedTempFile,
}

/// The `drongo` executable: `DRONGO_BIN`, then PATH (pip puts it there).
pub fn drongo_binary() -> Result<PathBuf> {
    find_executable("DRONGO_BIN", "drongo")
        .context("drongo not found: run scripts/install-deps.sh (pip install drongo)")
}

impl GcpKmsEmulator {
    /// Starts drongo, waits until it answers, and creates [`KEY_RING`].
    pub async fn start() -> Result<Self> {
        let port = free_port();
        let mut cmd = Command::new(drongo_binary()?);
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string()]);
        let mut process = ProcessGuard::spawn("drongo", cmd)?;
        let addr = format!("127.0.0.1:{port}");
        let ready = wait::until("drongo health", Duration::from_secs(30), || {
            let running = process.ensure_running();
            let addr = addr.clone();
            async move {
                running?;
                Ok(
                    probe::http_get(&addr, "/drongo/health", Duration::from_secs(2))
                        .await
                        .ok()
                        .filter(|(status, _)| *status == 200)
                        .map(|_| ()),
                )
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("drongo log:\n{}", process.logs())));
        }
        let token = tempfile::Builder::new()
            .prefix("kapsule-rig-gcp-token-")
            .tempfile()?;
        std::fs::write(token.path(), "kapsule-rig-access-token")?;
        let emulator = Self {
            process,
            port,
            token,
        };
        let (parent, ring) = KEY_RING.rsplit_once("/keyRings/").unwrap();
        emulator
            .post(&format!("/v1/{parent}/keyRings?keyRingId={ring}"))
            .await?;
        Ok(emulator)
    }

    async fn post(&self, path: &str) -> Result<String> {
        self.post_json(path, "").await
    }

    async fn post_json(&self, path: &str, json: &str) -> Result<String> {
        let (status, body) =
            probe::http_post_json(&self.addr(), path, json, Duration::from_secs(10)).await?;
        anyhow::ensure!(status == 200, "POST {path}: {status} {body}");
        Ok(body)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Creates the `ENCRYPT_DECRYPT` key `name` in [`KEY_RING`] (what
    /// [`GcpKmsEmulator::kapsule_yaml`] maps key id `name` to).
    pub async fn create_key(&self, name: &str) -> Result<()> {
        self.post(&format!("/v1/{KEY_RING}/cryptoKeys?cryptoKeyId={name}"))
            .await
            .map(|_| ())
    }

    /// Creates key `name` of `purpose` (`MAC`, `ASYMMETRIC_SIGN`, ...) in [`KEY_RING`]: a key
    /// Kapsule cannot wrap DEKs with.
    pub async fn create_key_with_purpose(&self, name: &str, purpose: &str) -> Result<()> {
        let body = serde_json::json!({ "purpose": purpose }).to_string();
        self.post_json(
            &format!("/v1/{KEY_RING}/cryptoKeys?cryptoKeyId={name}"),
            &body,
        )
        .await
        .map(|_| ())
    }

    /// The `kms:` section of a Kapsule config using this server: key id `X` is
    /// `KEY_RING/cryptoKeys/X`; the token comes from a file (drongo checks none).
    pub fn kapsule_yaml(&self, timeout_ms: u64, retries: u32) -> String {
        format!(
            "kms:\n  type: gcp\n  endpoint: \"{}\"\n  key_template: \"{KEY_RING}/cryptoKeys/{{key_id}}\"\n  credential: {{ type: access_token_file, file: \"{}\" }}\n  timeout_ms: {timeout_ms}\n  retries: {retries}\n",
            self.endpoint(),
            self.token_file().display()
        )
    }

    /// The file holding the access token Kapsule sends (drongo accepts any).
    pub fn token_file(&self) -> &std::path::Path {
        self.token.path()
    }

    fn pid(&self) -> Result<u32> {
        self.process.pid().context("drongo is not running")
    }

    /// Freezes the server (connections accepted, never answered).
    pub fn pause(&self) -> Result<()> {
        crate::process::freeze(self.pid()?)
    }

    /// Lets a paused server answer again.
    pub fn resume(&self) -> Result<()> {
        crate::process::thaw(self.pid()?)
    }
}
