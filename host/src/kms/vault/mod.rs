//! HashiCorp Vault / OpenBao transit back end (via `vaultrs`).
//!
//! Operations and the transit endpoints they use (see docs/kms.md for the least-privilege policy):
//! - [`Kms::generate_data_key`]: `POST {mount}/datakey/plaintext/{key}` (EDEK = the
//!   `vault:vN:...` ciphertext string, as UTF-8 bytes).
//! - [`Kms::decrypt_data_key`]: `POST {mount}/decrypt/{key}`.
//! - [`Kms::key_info`]: `GET {mount}/keys/{key}`.
//! - [`Kms::derive_key`]: `POST {mount}/hmac/{key}` (HMAC-SHA256 of the context with the KEK
//!   version's HMAC key).
//!
//! Every call runs in the retry loop shared by all back ends ([`super::retry`]): each attempt has
//! a timeout (`timeout_ms`) and transient failures (connection error, timeout, HTTP 429/5xx,
//! sealed) are retried up to `retries` times with jittered exponential backoff (100 ms doubling,
//! capped at 2 s). Unknown keys, permission errors and bad ciphertexts are not retried. Inside a
//! request deadline ([`super::deadline`]) every wait is cut to the time left and no retry is
//! started that could not finish before it. When the token comes from a
//! file and Vault answers 403, the file is re-read once (a Vault agent may have renewed it). With
//! `auth: { method: approle, ... }` Kapsule logs in itself and keeps its token renewed (see
//! [`auth`]); a 403 then leads to a login only when Vault says the token itself is no longer
//! valid. A 403 with a valid token is a permission error for that key id: remembered for
//! [`PATH_DENIAL_TTL`] (in a bounded LRU) and answered at once, without asking Vault again.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::time::Instant;
use vaultrs::api::transit::responses::{ReadKeyData, ReadKeyResponse};
use vaultrs::api::transit::KeyType;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::listing::{candidates, describe_all, Candidate, Described, ListedKey};
use super::retry::{call_with_retries, ensure_valid, validate_policy, Failure, RetryPolicy};
use super::secret::SecretSource;

mod auth;
pub use auth::{VaultAuthConfig, VaultAuthMethod};

use std::num::NonZeroUsize;

use lru::LruCache;

use super::{
    secret_key, DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey,
};

fn default_mount() -> String {
    "transit".to_owned()
}

/// `kms: { type: vault, ... }` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKmsConfig {
    /// Vault / OpenBao address, e.g. `https://vault.example:8200`.
    pub address: String,
    /// Environment variable holding the token (default `VAULT_TOKEN` when `token_file` is unset).
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token (e.g. a Vault agent sink); re-read after a 403.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Transit mount path (default `transit`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM CA certificate to trust for TLS.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one HTTP call in milliseconds (default 5000).
    #[serde(default = "crate::kms::retry::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of transient failures after the first attempt (default 3).
    #[serde(default = "crate::kms::retry::default_retries")]
    pub retries: u32,
    /// Log in instead of using a static token (AppRole); excludes `token_env`/`token_file`.
    #[serde(default)]
    pub auth: Option<VaultAuthConfig>,
}

impl VaultKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match url::Url::parse(&self.address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => problems.push(format!(
                "{path}.address: scheme '{}' is not http or https",
                u.scheme()
            )),
            Err(e) => problems.push(format!(
                "{path}.address: '{}' is not a valid URL ({e})",
                self.address
            )),
        }
        self.token().validate(path, problems);
        if let Some(auth) = &self.auth {
            if self.token_env.is_some() || self.token_file.is_some() {
                problems.push(format!(
                    "{path}.auth: remove token_env/token_file; the token comes from the AppRole login"
                ));
            }
            auth.validate(&format!("{path}.auth"), problems);
        }
        if self.mount.is_empty() || self.mount.starts_with('/') || self.mount.ends_with('/') {
            problems.push(format!(
                "{path}.mount: '{}' must be a non-empty path without leading or trailing '/'",
                self.mount
            ));
        }
        validate_policy(path, self.timeout_ms, self.retries, problems);
    }

    /// Where the static token comes from (without `auth`).
    fn token(&self) -> SecretSource<'_> {
        SecretSource {
            what: "Vault token",
            key: "token",
            env: self.token_env.as_deref(),
            file: self.token_file.as_deref(),
            default_env: Some("VAULT_TOKEN"),
            hint: "",
        }
    }

    fn read_token(&self) -> anyhow::Result<Zeroizing<String>> {
        self.token().read()
    }
}

/// How long a key id Vault refused to a valid token is refused without asking Vault again.
pub const PATH_DENIAL_TTL: Duration = Duration::from_secs(60);
/// Key ids remembered as refused (LRU).
const PATH_DENIAL_CAP: usize = 4096;

/// Vault / OpenBao transit KMS (see the module docs).
pub struct VaultKms {
    config: VaultKmsConfig,
    client: Arc<RwLock<Arc<VaultClient>>>,
    /// Token keeper when `auth` is configured (AppRole).
    approle: Option<Arc<auth::AppRole>>,
    /// Key ids Vault refused to a token it still honoured, until when (see the module docs).
    denied: parking_lot::Mutex<LruCache<String, (Instant, String)>>,
}

impl std::fmt::Debug for VaultKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKms")
            .field("address", &self.config.address)
            .field("mount", &self.config.mount)
            .finish_non_exhaustive()
    }
}

fn build_client(config: &VaultKmsConfig, token: &str) -> anyhow::Result<VaultClient> {
    ensure_valid("Vault", |p| config.validate("kms", p))?;
    let mut b = VaultClientSettingsBuilder::default();
    b.address(&config.address)
        .token(token)
        .timeout(Some(Duration::from_millis(config.timeout_ms)))
        .verify(true);
    if let Some(ca) = &config.ca_cert {
        b.ca_certs(vec![ca.to_string_lossy().into_owned()]);
    }
    if let Some(ns) = &config.namespace {
        b.set_namespace(ns.clone());
    }
    let settings = b.build().context("building Vault client settings")?;
    VaultClient::new(settings).context("building Vault HTTP client")
}

/// Classifies a `vaultrs` error.
fn classify(e: &ClientError) -> (KmsErrorKind, String) {
    match e {
        ClientError::APIError { code, errors } => {
            let text = errors.join("; ");
            let lower = text.to_lowercase();
            let kind = match code {
                429 | 412 | 500..=599 => KmsErrorKind::Transient,
                403 => KmsErrorKind::PermissionDenied,
                404 => KmsErrorKind::UnknownKey,
                _ if lower.contains("permission denied") => KmsErrorKind::PermissionDenied,
                _ if lower.contains("not found") => KmsErrorKind::UnknownKey,
                _ if lower.contains("authentication failed")
                    || lower.contains("ciphertext")
                    || lower.contains("too old")
                    || lower.contains("decrypt")
                    || lower.contains("version") =>
                {
                    KmsErrorKind::InvalidCiphertext
                }
                _ => KmsErrorKind::Other,
            };
            (kind, format!("HTTP {code}: {text}"))
        }
        ClientError::RestClientError { source } => {
            use rustify::errors::ClientError as R;
            match source {
                R::ServerResponseError { code, .. } => {
                    let kind = match code {
                        429 | 412 | 500..=599 => KmsErrorKind::Transient,
                        403 => KmsErrorKind::PermissionDenied,
                        404 => KmsErrorKind::UnknownKey,
                        _ => KmsErrorKind::Other,
                    };
                    (kind, format!("HTTP {code}"))
                }
                R::RequestError { .. } | R::ResponseError { .. } => (
                    KmsErrorKind::Transient,
                    format!("cannot reach Vault: {}", super::cloud::error_chain(source)),
                ),
                other => (KmsErrorKind::Other, format!("{other}")),
            }
        }
        other => (KmsErrorKind::Other, other.to_string()),
    }
}

/// Parses the version out of a `vault:vN:...` string.
fn vault_version(s: &str) -> Option<u32> {
    s.strip_prefix("vault:v")?.split_once(':')?.0.parse().ok()
}

fn decode_key(key_id: &str, b64: &str, what: &str) -> Result<SecretKey, KmsError> {
    let raw = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| {
        KmsError::new(KmsErrorKind::Other, key_id, format!("{what} is not base64"))
    })?);
    secret_key(key_id, &raw, what).map_err(|mut e| {
        e.message.push_str(" (is the transit key aes256-gcm96?)");
        e
    })
}

impl VaultKms {
    /// Builds the client (reads the token; makes no network call). With `auth`, the first KMS
    /// call logs in and a background task keeps the token renewed (needs a Tokio runtime).
    pub fn new(config: &VaultKmsConfig) -> anyhow::Result<Self> {
        let (client, approle) = match &config.auth {
            Some(auth) => {
                let client = Arc::new(RwLock::new(Arc::new(build_client(config, "")?)));
                let approle = auth::AppRole::new(auth.clone(), config.clone(), client.clone());
                (client, Some(approle))
            }
            None => {
                let token = config.read_token()?;
                let client = build_client(config, &token)?;
                (Arc::new(RwLock::new(Arc::new(client))), None)
            }
        };
        Ok(Self {
            config: config.clone(),
            client,
            approle,
            denied: parking_lot::Mutex::new(LruCache::new(
                NonZeroUsize::new(PATH_DENIAL_CAP).expect("non-zero"),
            )),
        })
    }

    /// The remembered path-level refusal of `key_id`, if still fresh.
    fn denial(&self, op: &str, key_id: &str) -> Option<KmsError> {
        let mut denied = self.denied.lock();
        match denied.get(key_id) {
            Some((until, msg)) if *until > Instant::now() => Some(KmsError::new(
                KmsErrorKind::PermissionDenied,
                key_id,
                format!(
                    "{op}: {msg} (remembered; asked again after {} s)",
                    PATH_DENIAL_TTL.as_secs()
                ),
            )),
            Some(_) => {
                denied.pop(key_id);
                None
            }
            None => None,
        }
    }

    /// With AppRole: a token is in force before the call (logs in when there is none).
    async fn ensure_token(&self, op: &str, key_id: &str) -> Result<(), KmsError> {
        let Some(approle) = &self.approle else {
            return Ok(());
        };
        approle.ensure().await.map_err(|e| {
            KmsError::new(
                KmsErrorKind::PermissionDenied,
                key_id,
                format!("{op}: cannot obtain a Vault token: {e:#}"),
            )
        })
    }

    /// Runs `f` with timeout and retries: the shared loop of [`super::retry`], as for every
    /// back end, around [`VaultKms::attempt`].
    async fn call<T, F, Fut>(&self, op: &str, key_id: &str, f: F) -> Result<T, KmsError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        if let Some(e) = self.denial(op, key_id) {
            return Err(e);
        }
        self.ensure_token(op, key_id).await?;
        // One token reload (file re-read or AppRole re-login) per call, whatever the attempts.
        let reloaded_token = AtomicBool::new(false);
        let policy = RetryPolicy::from_config(self.config.timeout_ms, self.config.retries);
        call_with_retries(
            op,
            key_id,
            policy,
            |kind| self.hint(kind, key_id),
            || self.attempt(op, key_id, &f, &reloaded_token),
        )
        .await
    }

    /// What to do about a final failure of class `kind`.
    fn hint(&self, kind: KmsErrorKind, key_id: &str) -> String {
        match kind {
            KmsErrorKind::Transient => format!(
                "; check that Vault at {} is up and unsealed",
                self.config.address
            ),
            KmsErrorKind::UnknownKey => format!(
                "; create it: `vault write -f {}/keys/{key_id}`",
                self.config.mount
            ),
            // AppRole refusals carry their own advice (see `attempt`).
            KmsErrorKind::PermissionDenied if self.approle.is_none() => {
                "; the token's policy must allow the transit paths in docs/kms.md".to_owned()
            }
            _ => String::new(),
        }
    }

    /// One attempt of `f`. A 403 may first lead to one token reload and a repeat within the
    /// attempt: with AppRole, a re-login when Vault no longer knows the token (or a repeat with
    /// the token a concurrent caller just obtained), and a remembered per-key refusal when it
    /// does; with `token_file`, a re-read of the file.
    async fn attempt<T, F, Fut>(
        &self,
        op: &str,
        key_id: &str,
        f: &F,
        reloaded_token: &AtomicBool,
    ) -> Result<T, Failure>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let final_failure = |kind, message| Failure {
            kind,
            message,
            retry: false,
            status: None,
        };
        loop {
            let generation = self.approle.as_ref().map(|a| a.generation());
            let client = self.client.read().clone();
            let (kind, msg) = match f(client).await {
                Ok(v) => return Ok(v),
                Err(e) => classify(&e),
            };
            if let (KmsErrorKind::PermissionDenied, Some(approle), Some(seen)) =
                (kind, &self.approle, generation)
            {
                match approle.check_token(seen).await {
                    Ok(auth::TokenState::Valid) if approle.generation() != seen => {
                        // A concurrent caller replaced the token meanwhile: repeat with it.
                        if !reloaded_token.swap(true, Ordering::Relaxed) {
                            continue;
                        }
                    }
                    Ok(auth::TokenState::Valid) => {
                        // The token is fine: Vault refuses this key to it.
                        let reason = format!(
                            "Vault refuses this key to Kapsule's (valid) AppRole token: {msg}; \
                             grant the role's policy the transit paths of docs/kms.md for this key, \
                             or fix the policy's key ids"
                        );
                        self.denied.lock().put(
                            key_id.to_owned(),
                            (Instant::now() + PATH_DENIAL_TTL, reason.clone()),
                        );
                        return Err(final_failure(kind, reason));
                    }
                    Ok(auth::TokenState::Invalid)
                        if !reloaded_token.swap(true, Ordering::Relaxed) =>
                    {
                        tracing::warn!(
                            op,
                            key_id,
                            "Vault no longer accepts the AppRole token; logging in again"
                        );
                        match approle.relogin_if_current(seen).await {
                            Ok(()) => continue,
                            Err(e) => {
                                return Err(final_failure(
                                    KmsErrorKind::Transient,
                                    format!("Vault refused the token and no new one could be obtained: {e:#}"),
                                ));
                            }
                        }
                    }
                    Ok(auth::TokenState::Invalid) => {}
                    Err(e) => {
                        return Err(final_failure(
                            KmsErrorKind::Transient,
                            format!("{msg}; and the token could not be checked: {e:#}"),
                        ));
                    }
                }
            }
            if kind == KmsErrorKind::PermissionDenied
                && self.config.token_file.is_some()
                && !reloaded_token.swap(true, Ordering::Relaxed)
            {
                if let Ok(token) = self.config.read_token() {
                    if let Ok(c) = build_client(&self.config, &token) {
                        *self.client.write() = Arc::new(c);
                        continue;
                    }
                }
            }
            return Err(Failure {
                kind,
                message: msg,
                retry: kind == KmsErrorKind::Transient,
                status: None,
            });
        }
    }
}

impl VaultKms {
    /// The transit keys of the mount, for `kapsule keys list` (`LIST {mount}/keys`, then `GET
    /// {mount}/keys/{name}` of each): every key, with its latest version and its type as state,
    /// or what keeps Kapsule from using it (a type other than `aes256-gcm96`, a derived key,
    /// versions trimmed below `min_decryption_version`). The token needs `list` on
    /// `{mount}/keys` besides the paths Kapsule uses (docs/kms.md). Sorted by key id.
    pub async fn list_keys(&self) -> Result<Vec<ListedKey>, KmsError> {
        let mount = &self.config.mount;
        let names = match self
            .call("transit list keys", "*", |c| async move {
                vaultrs::transit::key::list(c.as_ref(), mount).await
            })
            .await
        {
            Ok(list) => list.keys,
            // Vault answers an empty mount with 404.
            Err(e) if e.kind == KmsErrorKind::UnknownKey => Vec::new(),
            Err(e) => return Err(e),
        };
        let found = names
            .into_iter()
            .map(|name| (name.clone(), format!("{mount}/keys/{name}")));
        // Every transit key of the mount is a KEK by its name: list each, usable or not.
        let all = candidates(&Default::default(), found)
            .into_iter()
            .map(|c| Candidate { mapped: true, ..c })
            .collect();
        describe_all(all, |c| async move {
            let name = c.key_id.as_str();
            let key = self
                .call("transit read key", name, |client| async move {
                    vaultrs::transit::key::read(client.as_ref(), mount, name).await
                })
                .await?;
            Ok(describe_transit_key(&key))
        })
        .await
    }
}

/// The highest version of a transit key.
fn latest_version(keys: &ReadKeyData) -> Option<u32> {
    let versions: Vec<&String> = match keys {
        ReadKeyData::Symmetric(m) => m.keys().collect(),
        ReadKeyData::Asymmetric(m) => m.keys().collect(),
    };
    versions.into_iter().filter_map(|k| k.parse().ok()).max()
}

/// How `kapsule keys list` shows a transit key: usable (its type, and the oldest version it
/// still decrypts when versions were trimmed) or why Kapsule cannot use it.
fn describe_transit_key(key: &ReadKeyResponse) -> Described {
    let key_type = serde_json::to_value(key.key_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", key.key_type));
    if !matches!(key.key_type, KeyType::Aes256Gcm96) {
        return Described::Unsuitable(format!("{key_type}: Kapsule needs aes256-gcm96"));
    }
    if key.derived {
        return Described::Unsuitable(format!(
            "{key_type} with derivation: Kapsule needs a key without derived: true"
        ));
    }
    let Some(latest_version) = latest_version(&key.keys) else {
        return Described::Unsuitable(format!("{key_type} without versions"));
    };
    let state = match key.min_decryption_version {
        0 | 1 => key_type,
        oldest => format!("{key_type}, decrypts v{oldest}..v{latest_version}"),
    };
    Described::Usable {
        latest_version,
        state,
    }
}

#[async_trait]
impl Kms for VaultKms {
    fn backend(&self) -> &'static str {
        "vault"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let mount = &self.config.mount;
        let resp = self
            .call("transit datakey", key_id, |c| async move {
                vaultrs::transit::generate::data_key(
                    c.as_ref(),
                    mount,
                    key_id,
                    vaultrs::api::transit::requests::DataKeyType::Plaintext,
                    None,
                )
                .await
            })
            .await?;
        let plaintext = Zeroizing::new(resp.plaintext.unwrap_or_default());
        let dek = decode_key(key_id, &plaintext, "datakey plaintext")?;
        let kek_version = vault_version(&resp.ciphertext).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "datakey ciphertext is not of the form vault:vN:...",
            )
        })?;
        Ok(DataKey {
            plaintext: dek,
            edek: resp.ciphertext.into_bytes(),
            kek_version,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let ct = std::str::from_utf8(edek)
            .ok()
            .filter(|s| vault_version(s).is_some())
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    key_id,
                    "EDEK is not a Vault transit ciphertext (vault:vN:...)",
                )
            })?;
        let mount = &self.config.mount;
        let resp = self
            .call("transit decrypt", key_id, |c| async move {
                vaultrs::transit::data::decrypt(c.as_ref(), mount, key_id, ct, None).await
            })
            .await?;
        let plaintext = Zeroizing::new(resp.plaintext);
        decode_key(key_id, &plaintext, "decrypted DEK")
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let mount = &self.config.mount;
        let resp = self
            .call("transit read key", key_id, |c| async move {
                vaultrs::transit::key::read(c.as_ref(), mount, key_id).await
            })
            .await?;
        let latest = latest_version(&resp.keys)
            .ok_or_else(|| KmsError::new(KmsErrorKind::Other, key_id, "key has no versions"))?;
        Ok(KeyInfo::new(key_id, latest))
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        let DeriveRequest {
            key_id,
            context,
            version,
        } = request;
        let mount = &self.config.mount;
        let input = B64.encode(context);
        let input = &input;
        let resp = self
            .call("transit hmac", key_id, |c| async move {
                let mut opts = vaultrs::api::transit::requests::GenerateHmacRequest::builder();
                if let Some(v) = version {
                    opts.key_version(u64::from(v));
                }
                vaultrs::transit::generate::hmac(c.as_ref(), mount, key_id, input, Some(&mut opts))
                    .await
            })
            .await?;
        let kek_version = vault_version(&resp.hmac).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "hmac is not of the form vault:vN:...",
            )
        })?;
        let b64 = resp.hmac.rsplit(':').next().unwrap_or_default();
        let material = decode_key(key_id, b64, "hmac")?;
        Ok(DerivedKey {
            material,
            kek_version,
        })
    }
}

#[cfg(test)]
mod tests;
