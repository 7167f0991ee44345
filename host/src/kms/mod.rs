//! Key management: the [`Kms`] trait and its back ends.
//!
//! Envelope encryption: records are encrypted under data encryption keys (DEKs, AES-256), each DEK
//! is wrapped ("encrypted DEK", EDEK) by a key encryption key (KEK) that never leaves the KMS.
//!
//! - [`vault::VaultKms`]: HashiCorp Vault / OpenBao transit engine (production).
//! - [`aws::AwsKms`]: AWS KMS (production; `GenerateDataKey`/`Decrypt` with an encryption context).
//! - [`azure::AzureKms`]: Azure Key Vault / Managed HSM (`wrapkey`/`unwrapkey` over REST).
//! - [`gcp::GcpKms`]: Google Cloud KMS (`encrypt`/`decrypt` with AAD over REST).
//! - [`local::LocalKms`]: KEKs in a local file, each encrypted by a master key (demo, no Vault).
//! - [`memory::MemoryKms`]: in-process fake with failure injection, for tests.
//! - `KmsGate`: the one door of every KMS call (bounded concurrency, negative cache, a
//!   [`KmsCallObserver`] for metrics, the log line of a failure).
//!
//! The DEK lifecycle built on top (rotation, refresh-ahead, caches) lives with crypto, in
//! `crypto::keys`; this module never depends on crypto.
//!
//! Errors are classified by [`KmsErrorKind`] so callers can tell "retry later" from "fix the
//! configuration". See docs/kms.md.

pub mod aws;
pub mod azure;
mod cloud;
pub mod deadline;
mod gate;
pub mod gcp;
mod jwt;
pub mod key_id;
mod keyfile;
pub mod listing;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod requester;
mod retry;
pub mod secret;
#[cfg(test)]
mod test_server;
pub mod vault;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use zeroize::Zeroizing;

pub use gate::KmsCallObserver;
pub(crate) use gate::KmsGate;

/// Length in bytes of a data encryption key (AES-256).
pub const DEK_LEN: usize = 32;

/// Plaintext key material, wiped from memory on drop.
pub type SecretKey = Zeroizing<[u8; DEK_LEN]>;

/// Copies `raw` (a DEK or derived key a KMS returned) into a [`SecretKey`]; anything but
/// [`DEK_LEN`] bytes is an `other` error naming `what`.
pub(crate) fn secret_key(key_id: &str, raw: &[u8], what: &str) -> Result<SecretKey, KmsError> {
    let key: [u8; DEK_LEN] = raw.try_into().map_err(|_| {
        KmsError::new(
            KmsErrorKind::Other,
            key_id,
            format!("{what} has {} bytes, expected {DEK_LEN}", raw.len()),
        )
    })?;
    Ok(Zeroizing::new(key))
}

/// A fresh random DEK from the operating system's generator (the back ends that wrap a DEK they
/// make themselves: Azure, Google, local).
pub(crate) fn random_dek() -> SecretKey {
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, dek.as_mut());
    dek
}

/// A freshly generated data key: the plaintext DEK and its wrapped form.
pub struct DataKey {
    /// The plaintext DEK; use it, never log or persist it.
    pub plaintext: SecretKey,
    /// The wrapped DEK, opaque to Kapsule; stored with every record it encrypts.
    pub edek: Vec<u8>,
    /// KEK version that wrapped this DEK (informational, for metrics and logs).
    pub kek_version: u32,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("edek_len", &self.edek.len())
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

/// A key derived deterministically from a KEK version and a context (same inputs, same key).
pub struct DerivedKey {
    /// 32 bytes of pseudo-random key material (a PRF of the KEK version over the context).
    pub material: SecretKey,
    /// KEK version used; pass it back to [`Kms::derive_key`] to get the same material again.
    pub kek_version: u32,
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedKey")
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

/// What [`Kms::derive_key`] is asked for: 32 bytes derived from KEK `key_id` at `version`
/// (latest when `None`) over `context`.
#[derive(Clone, Copy)]
pub struct DeriveRequest<'a> {
    /// KEK id as given.
    pub key_id: &'a str,
    /// The input the derived key is bound to (same context, same key).
    pub context: &'a [u8],
    /// KEK version to derive with (a [`DerivedKey::kek_version`] from before); `None`: latest.
    pub version: Option<u32>,
}

impl<'a> DeriveRequest<'a> {
    /// A request for KEK `key_id` at `version` (latest when `None`) over `context`.
    pub fn new(key_id: &'a str, context: &'a [u8], version: Option<u32>) -> Self {
        Self {
            key_id,
            context,
            version,
        }
    }

    /// For back ends whose derive key has the one version `pinned`: an
    /// [`KmsErrorKind::InvalidCiphertext`] error when another version is asked for, its message
    /// `derived-key version <asked> <why>`.
    pub(crate) fn require_version(&self, pinned: u32, why: &str) -> Result<(), KmsError> {
        match self.version {
            Some(v) if v != pinned => Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                self.key_id,
                format!("derived-key version {:?} {why}", self.version),
            )),
            _ => Ok(()),
        }
    }
}

/// What the KMS knows about a KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// KEK id as given.
    pub key_id: String,
    /// Latest version (new DEKs are wrapped with it).
    pub latest_version: u32,
}

impl KeyInfo {
    /// KEK `key_id` at `latest_version`.
    pub fn new(key_id: &str, latest_version: u32) -> Self {
        Self {
            key_id: key_id.to_owned(),
            latest_version,
        }
    }
}

/// How a KMS failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KmsErrorKind {
    /// The KMS is unreachable, slow, sealed or overloaded: retry later (clients get a retriable
    /// Kafka error).
    Transient,
    /// The KEK does not exist (never created, or deleted): not retried.
    UnknownKey,
    /// The credentials may not use this KEK: not retried.
    PermissionDenied,
    /// The EDEK is malformed, was wrapped by another key, or its KEK version was trimmed.
    InvalidCiphertext,
    /// Configuration or unexpected KMS behaviour (bad response, bad master key...).
    Other,
}

impl KmsErrorKind {
    /// Stable lower-case label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::UnknownKey => "unknown_key",
            Self::PermissionDenied => "permission_denied",
            Self::InvalidCiphertext => "invalid_ciphertext",
            Self::Other => "other",
        }
    }

    /// What a Kafka client is told for this class (no back-end detail).
    pub fn client_hint(self) -> &'static str {
        match self {
            Self::Transient => "the key management service is unavailable; retry later",
            Self::UnknownKey => "the key does not exist in the key management service",
            Self::PermissionDenied => "the proxy may not use this key",
            Self::InvalidCiphertext => "the wrapped data key does not decrypt under this key",
            Self::Other => "the key management service failed; see the proxy log",
        }
    }
}

/// A KMS failure: its class plus a message that says what failed and what to do.
///
/// `Clone` so one failed call can be handed to every caller that waited on it (coalescing).
///
/// Display is the **client-safe** form — class, key id (escaped) and a generic hint, never
/// `message` — because it ends up in Kafka error messages sent to clients: back-end detail such
/// as a Vault address, HTTP bodies or file paths stays in `message`, which the KMS gate logs for
/// operators ([`KmsError::detail`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("KMS {kind_label} error for key {key_id:?}: {hint}", kind_label = kind.label(), hint = kind.client_hint())]
pub struct KmsError {
    /// Failure class.
    pub kind: KmsErrorKind,
    /// KEK id involved (may be empty when not key-specific).
    pub key_id: String,
    /// Human-readable detail (never key material).
    pub message: String,
}

impl KmsError {
    /// Operator-facing text with the back end's detail (for logs and the CLI, not for clients).
    pub fn detail(&self) -> String {
        format!("{self} ({})", self.message.escape_debug())
    }

    /// Builds an error of `kind` for `key_id`.
    pub fn new(kind: KmsErrorKind, key_id: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            key_id: key_id.to_owned(),
            message: message.into(),
        }
    }

    /// True when retrying later may succeed (only [`KmsErrorKind::Transient`]).
    pub fn is_retriable(&self) -> bool {
        self.kind == KmsErrorKind::Transient
    }
}

/// A key management service holding KEKs. Usable as `Arc<dyn Kms>`; all methods are safe to call
/// concurrently. Implementations do their own retries of transient failures (the returned error
/// is final for this call) and never log key material.
#[async_trait]
pub trait Kms: Send + Sync + fmt::Debug {
    /// Short back-end name for metrics and logs ("vault", "local", "memory").
    fn backend(&self) -> &'static str;

    /// Generates a fresh random DEK wrapped by the latest version of KEK `key_id`.
    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError>;

    /// Unwraps an EDEK produced by [`Kms::generate_data_key`] for the same `key_id` (any version
    /// still available).
    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError>;

    /// Looks up a KEK: [`KmsErrorKind::UnknownKey`] if it does not exist.
    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError>;

    /// Derives 32 bytes deterministically from KEK `request.key_id` at `request.version`
    /// (latest when `None`) and `request.context`. Used for the deterministic record-key
    /// encryption key.
    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError>;
}

/// The `kms:` section of the configuration.
///
/// ```yaml
/// kms: { type: local, key_file: /var/lib/kapsule/keys.json, master_key_env: KAPSULE_MASTER_KEY, auto_create_keys: true }
/// kms: { type: vault, address: "https://vault:8200", token_env: VAULT_TOKEN, mount: transit, timeout_ms: 5000, retries: 3 }
/// kms: { type: aws, region: eu-west-1, key_template: "alias/kapsule-{key_id}" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KmsConfig {
    /// File-based KMS ([`local::LocalKms`]).
    Local(local::LocalKmsConfig),
    /// Vault / OpenBao transit ([`vault::VaultKms`]).
    Vault(vault::VaultKmsConfig),
    /// AWS KMS ([`aws::AwsKms`]).
    Aws(aws::AwsKmsConfig),
    /// Azure Key Vault / Managed HSM ([`azure::AzureKms`]).
    Azure(azure::AzureKmsConfig),
    /// Google Cloud KMS ([`gcp::GcpKms`]).
    Gcp(gcp::GcpKmsConfig),
}

impl KmsConfig {
    /// Appends one message per problem to `problems`; `path` prefixes each (e.g. `"kms"`).
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match self {
            Self::Local(c) => c.validate(path, problems),
            Self::Vault(c) => c.validate(path, problems),
            Self::Aws(c) => c.validate(path, problems),
            Self::Azure(c) => c.validate(path, problems),
            Self::Gcp(c) => c.validate(path, problems),
        }
    }

    /// Builds the configured KMS (reads tokens, master keys, CA files and profiles; makes no
    /// network call). Warns when the KMS address is plain `http://` (credentials and data keys in
    /// clear on the wire).
    pub fn build(&self) -> anyhow::Result<Arc<dyn Kms>> {
        if let Some(warning) = self.insecure_transport_warning() {
            tracing::warn!("{warning}");
        }
        Ok(match self {
            Self::Local(c) => Arc::new(local::LocalKms::open(c)?),
            Self::Vault(c) => Arc::new(vault::VaultKms::new(c)?),
            Self::Aws(c) => Arc::new(aws::AwsKms::new(c)?),
            Self::Azure(c) => Arc::new(azure::AzureKms::new(c)?),
            Self::Gcp(c) => Arc::new(gcp::GcpKms::new(c)?),
        })
    }
}

impl KmsConfig {
    /// The start-up warning for a Vault address without TLS, if any.
    pub fn insecure_transport_warning(&self) -> Option<String> {
        match self {
            Self::Vault(c) if c.address.trim().to_ascii_lowercase().starts_with("http://") => Some(
                "kms.address uses http://: the Vault token and every plaintext data key cross the \
                 network unencrypted; use https:// outside a test setup"
                    .to_owned(),
            ),
            Self::Aws(c) => c.insecure_transport_warning(),
            _ => None,
        }
    }
}

/// Jittered exponential backoff delay for retry `attempt` (0-based): `base * 2^attempt`, capped,
/// then a uniformly random fraction in [50%, 100%] of it.
pub(crate) fn backoff_delay(
    attempt: u32,
    base: std::time::Duration,
    cap: std::time::Duration,
) -> std::time::Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(cap);
    let frac: f64 = rand::thread_rng().gen_range(0.5..=1.0);
    d.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_both_types_and_rejects_unknown_fields() {
        let c: KmsConfig = serde_norway::from_str(
            "type: local\nkey_file: /tmp/k.json\nmaster_key_env: MK\nauto_create_keys: true\n",
        )
        .unwrap();
        assert!(matches!(c, KmsConfig::Local(_)));
        let c: KmsConfig = serde_norway::from_str(
            "type: vault\naddress: http://127.0.0.1:8200\ntoken_env: VAULT_TOKEN\n",
        )
        .unwrap();
        match &c {
            KmsConfig::Vault(v) => {
                assert_eq!(v.mount, "transit");
                assert_eq!(v.retries, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = serde_norway::from_str::<KmsConfig>(
            "type: vault\naddress: http://x:1\ntoken_env: T\nmount_point: x\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mount_point"), "{err}");
        let c: KmsConfig = serde_norway::from_str("type: aws\nregion: eu-west-1\n").unwrap();
        assert!(matches!(c, KmsConfig::Aws(_)));
        let err = serde_norway::from_str::<KmsConfig>("type: aws\n").unwrap_err();
        assert!(err.to_string().contains("region"), "{err}");
        let err = serde_norway::from_str::<KmsConfig>("type: gcs\n").unwrap_err();
        assert!(err.to_string().contains("gcs"), "{err}");
    }

    #[test]
    fn client_facing_errors_carry_no_backend_detail() {
        let e = KmsError::new(
            KmsErrorKind::Transient,
            "k\u{1b}[2J\n",
            "encrypt: cannot reach Vault: error sending request for url (http://10.0.0.7:8200/v1/transit/datakey)",
        );
        let shown = e.to_string();
        assert!(
            !shown.contains("10.0.0.7") && !shown.contains("8200"),
            "{shown}"
        );
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\n'),
            "{shown}"
        );
        assert!(
            shown.contains("transient") && shown.contains("retry later"),
            "{shown}"
        );
        assert!(e.detail().contains("10.0.0.7"), "{}", e.detail());
    }

    #[test]
    fn plain_http_vault_addresses_are_warned_about() {
        let c: KmsConfig =
            serde_norway::from_str("type: vault\naddress: http://vault:8200\ntoken_env: T\n")
                .unwrap();
        assert!(c.insecure_transport_warning().unwrap().contains("http://"));
        let c: KmsConfig =
            serde_norway::from_str("type: vault\naddress: https://vault:8200\ntoken_env: T\n")
                .unwrap();
        assert!(c.insecure_transport_warning().is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = std::time::Duration::from_millis(100);
        let cap = std::time::Duration::from_secs(2);
        for attempt in 0..20 {
            let d = backoff_delay(attempt, base, cap);
            assert!(d <= cap);
            let full = base.saturating_mul(1 << attempt.min(16)).min(cap);
            assert!(d >= full / 2, "attempt {attempt}: {d:?} < half of {full:?}");
        }
    }
}
