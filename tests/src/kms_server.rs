//! One handle over the real KMS servers the rig can start, so the shared KMS tests (outage, fail
//! closed) run once per back end: `vault` (an OpenBao dev server), `aws` (local-kms, the AWS
//! KMS API) and `gcp` (drongo, the Cloud KMS REST API). Parameterise a test with
//! `#[values("vault", "aws", "gcp")] backend: &str` and [`KmsServer::start`]. No Azure Key Vault
//! emulator can be installed here (docs/kms.md), so `azure` is not among them. `local` (Kapsule's
//! file-based KMS, no server) is there for measurements that compare every back end; it cannot
//! be paused, so outage tests leave it out.

use anyhow::{bail, Context, Result};

use crate::aws_kms::{LocalAwsKms, TEST_CREDENTIALS};
use crate::encryption::LocalKms;
use crate::gcp_kms::GcpKmsEmulator;
use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::KapsuleConfig;

/// A running KMS server of one back end.
#[derive(Debug)]
pub enum KmsServer {
    /// OpenBao transit, with the root token in a file.
    Vault(OpenBao, tempfile::NamedTempFile),
    /// local-kms (AWS KMS API).
    Aws(LocalAwsKms),
    /// drongo (Cloud KMS REST API).
    Gcp(GcpKmsEmulator),
    /// Kapsule's local KMS (a key file; KEKs created on first use).
    Local(LocalKms),
}

impl KmsServer {
    /// Starts the server of `backend` (`vault`, `aws`, `gcp`, or `local` for a fresh key file).
    pub async fn start(backend: &str) -> Result<Self> {
        match backend {
            "vault" => {
                let bao = OpenBao::start()?;
                let token = tempfile::Builder::new()
                    .prefix("kapsule-rig-token-")
                    .tempfile()
                    .context("creating the token file")?;
                std::fs::write(token.path(), ROOT_TOKEN)?;
                Ok(Self::Vault(bao, token))
            }
            "aws" => Ok(Self::Aws(LocalAwsKms::start().await?)),
            "gcp" => Ok(Self::Gcp(GcpKmsEmulator::start().await?)),
            "local" => Ok(Self::Local(LocalKms::new()?)),
            other => bail!("unknown KMS back end {other:?} (vault, aws, gcp or local)"),
        }
    }

    /// Creates KEK `name` (and, for AWS, its HMAC key); the local KMS creates it on first use.
    pub async fn create_key(&self, name: &str) -> Result<()> {
        match self {
            Self::Vault(bao, _) => bao.create_key(name),
            Self::Aws(kms) => kms.create_key(name).await.map(|_| ()),
            Self::Gcp(kms) => kms.create_key(name).await,
            Self::Local(_) => Ok(()),
        }
    }

    /// Whether Kapsule can derive record-key keys with this server (`record_key: true` rules):
    /// drongo has no `macSign`.
    pub fn derives_keys(&self) -> bool {
        !matches!(self, Self::Gcp(_))
    }

    /// Freezes the server: connections are accepted, nothing is answered.
    pub fn pause(&self) -> Result<()> {
        match self {
            Self::Vault(bao, _) => bao.pause(),
            Self::Aws(kms) => kms.pause(),
            Self::Gcp(kms) => kms.pause(),
            Self::Local(_) => bail!("the local KMS is a file: there is no server to pause"),
        }
    }

    /// Lets a paused server answer again.
    pub fn resume(&self) -> Result<()> {
        match self {
            Self::Vault(bao, _) => bao.resume(),
            Self::Aws(kms) => kms.resume(),
            Self::Gcp(kms) => kms.resume(),
            Self::Local(_) => bail!("the local KMS is a file: there is no server to resume"),
        }
    }

    /// `config` with this server's `kms:` section (per-call `timeout_ms`, `retries`) and the
    /// environment Kapsule needs for it.
    pub fn kapsule_config(
        &self,
        config: KapsuleConfig,
        timeout_ms: u64,
        retries: u32,
    ) -> KapsuleConfig {
        match self {
            Self::Vault(bao, token) => config.with_yaml(&format!(
                "kms:\n  type: vault\n  address: \"{}\"\n  token_file: \"{}\"\n  timeout_ms: {timeout_ms}\n  retries: {retries}\n",
                bao.address(),
                token.path().display()
            )),
            Self::Aws(kms) => TEST_CREDENTIALS.iter().fold(
                config.with_yaml(&kms.kapsule_yaml(timeout_ms, retries)),
                |c, (k, v)| c.with_env(k, v),
            ),
            Self::Gcp(kms) => config.with_yaml(&kms.kapsule_yaml(timeout_ms, retries)),
            // Local calls need neither a timeout nor retries.
            Self::Local(kms) => config.with_yaml(&kms.yaml()),
        }
    }
}
