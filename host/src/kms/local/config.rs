//! `kms: { type: local, ... }`: the configuration of the local KMS and its master key.

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::kms::secret::SecretSource;
use crate::kms::{SecretKey, DEK_LEN};

/// Default environment variable holding the master key.
pub const DEFAULT_MASTER_KEY_ENV: &str = "KAPSULE_MASTER_KEY";

/// `kms: { type: local, ... }` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKmsConfig {
    /// Path of the KEK file (created when missing).
    pub key_file: PathBuf,
    /// Environment variable holding the master key (base64 or hex of 32 bytes). Default
    /// `KAPSULE_MASTER_KEY` when `master_key_file` is not set either.
    #[serde(default)]
    pub master_key_env: Option<String>,
    /// File holding the master key (base64 or hex of 32 bytes). Exclusive with `master_key_env`.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Create a KEK the first time a DEK is requested for an unknown key id (default false: keys
    /// must be created with `kapsule keys create`).
    #[serde(default)]
    pub auto_create_keys: bool,
    /// With `auto_create_keys`, the most KEKs the file may hold before auto-creation stops and
    /// unknown key ids fail as `unknown_key` (default 1000). Bounds what clients that pick topic
    /// names can make the proxy create; `kapsule keys create` is not limited.
    #[serde(default = "default_max_auto_created_keys")]
    pub max_auto_created_keys: usize,
    /// With `auto_create_keys`, the most KEKs one principal's requests may auto-create while
    /// this process runs (default 10); unauthenticated connections share one budget. Keeps one
    /// principal from using up `max_auto_created_keys` for everyone.
    #[serde(default = "default_max_auto_created_keys_per_principal")]
    pub max_auto_created_keys_per_principal: usize,
}

pub(super) fn default_max_auto_created_keys() -> usize {
    1000
}

pub(super) fn default_max_auto_created_keys_per_principal() -> usize {
    10
}

impl LocalKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.key_file.as_os_str().is_empty() {
            problems.push(format!("{path}.key_file: must not be empty"));
        }
        self.master_key().validate(path, problems);
        if self.max_auto_created_keys == 0 {
            problems.push(format!("{path}.max_auto_created_keys: must be at least 1"));
        }
        if self.max_auto_created_keys_per_principal == 0 {
            problems.push(format!(
                "{path}.max_auto_created_keys_per_principal: must be at least 1"
            ));
        }
    }

    /// Where the master key comes from.
    fn master_key(&self) -> SecretSource<'_> {
        SecretSource {
            what: "master key",
            key: "master_key",
            env: self.master_key_env.as_deref(),
            file: self.master_key_file.as_deref(),
            default_env: Some(DEFAULT_MASTER_KEY_ENV),
            hint: "; set it to 32 random bytes in base64 (e.g. `openssl rand -base64 32`)",
        }
    }

    pub(super) fn load_master_key(&self) -> anyhow::Result<SecretKey> {
        parse_master_key(&self.master_key().read()?)
    }
}

/// Parses a 32-byte key written as base64 (standard alphabet) or 64 hex digits.
pub fn parse_master_key(text: &str) -> anyhow::Result<SecretKey> {
    let bytes = Zeroizing::new(
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).context("master key: invalid hex")?
        } else {
            B64.decode(text)
                .context("master key: neither 64 hex digits nor valid base64")?
        },
    );
    if bytes.len() != DEK_LEN {
        bail!(
            "master key must be 32 bytes, got {} (generate one with `openssl rand -base64 32`)",
            bytes.len()
        );
    }
    let mut key = Zeroizing::new([0u8; DEK_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}
