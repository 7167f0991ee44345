//! Azure Key Vault / Managed HSM back end over the Key Vault REST API (api-version 7.4).
//!
//! - [`Kms::generate_data_key`]: a random DEK from the OS, wrapped with `POST
//!   {key}/wrapkey` (`RSA-OAEP-256` for RSA keys, `A256KW` for Managed HSM AES keys). The wrapped
//!   value is `DEK ‖ SHA-256("kapsule-kek\0" ‖ key id)`, so an EDEK only unwraps for the key id
//!   it was made for (Key Vault has no encryption context). EDEK = `azure:<key version>:<base64url>`.
//! - [`Kms::decrypt_data_key`]: `POST {key}/{version}/unwrapkey` with the version recorded in the
//!   EDEK, so records wrapped before a rotation still decrypt.
//! - [`Kms::key_info`]: `GET {key}`.
//! - [`AzureKms::list_keys`] (`kapsule keys list`): `GET {vault}/keys` filtered by
//!   `key_template`, plus the `keys` map.
//! - [`Kms::derive_key`]: `POST {derive key}/sign` (`RS256`, deterministic) over SHA-256 of the
//!   context, with the versioned RSA key of `derive_key_url`; the signature is hashed to 32 bytes.
//!
//! Tokens come from Entra ID ([`credential`]); a 401 drops the cached token and the call is
//! retried with a fresh one. Timeouts and retries follow [`super::retry`].

mod credential;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use credential::{AzureCredentialConfig, AzureCredentialType};

use super::cloud::{base64_field, RestBackend, RestCall};
use super::key_id::validate_key_map;
use super::listing::{candidates, describe_all, key_id_in_template, Described, ListedKey};
use super::retry::{ensure_valid, validate_policy, Failure};
use super::{
    DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN,
};

/// Key Vault REST API version used.
pub const API_VERSION: &str = "7.4";

fn default_key_template() -> String {
    "{key_id}".to_owned()
}

/// Key wrapping algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum WrapAlgorithm {
    /// RSA-OAEP with SHA-256 (RSA and RSA-HSM keys).
    #[default]
    #[serde(rename = "RSA-OAEP-256")]
    RsaOaep256,
    /// AES key wrap with a 256-bit key (Managed HSM `oct-HSM` keys).
    #[serde(rename = "A256KW")]
    A256Kw,
}

impl WrapAlgorithm {
    fn name(self) -> &'static str {
        match self {
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::A256Kw => "A256KW",
        }
    }
}

/// `kms: { type: azure, ... }` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKmsConfig {
    /// Vault or Managed HSM URL, e.g. `https://kapsule.vault.azure.net`.
    pub vault_url: String,
    /// Key name for a Kapsule key id without an entry in `keys`: `{key_id}` is replaced (default
    /// `{key_id}`). Key names hold `A-Z a-z 0-9 -` only.
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Explicit KEKs: Kapsule key id → key URL (`{vault_url}/keys/NAME`, with or without a
    /// version; with one, new DEKs are wrapped with that version only).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Wrap algorithm (default `RSA-OAEP-256`).
    #[serde(default)]
    pub algorithm: WrapAlgorithm,
    /// Versioned RSA key URL used to derive record-key keys (`sign`, RS256). Unset: topics whose
    /// rule encrypts record keys fail with a configuration error naming this field.
    #[serde(default)]
    pub derive_key_url: Option<String>,
    /// Token scope (default: from `vault_url`, e.g. `https://vault.azure.net/.default`).
    #[serde(default)]
    pub scope: Option<String>,
    /// How Kapsule gets its tokens.
    pub credential: AzureCredentialConfig,
    /// PEM CA certificate(s) to trust besides the web PKI roots.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one request in milliseconds (default 5000).
    #[serde(default = "crate::kms::retry::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of throttled or failed requests (default 3).
    #[serde(default = "crate::kms::retry::default_retries")]
    pub retries: u32,
}

/// A parsed key URL: name and optional version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRef {
    name: String,
    version: Option<String>,
}

fn is_key_name(s: &str) -> bool {
    (1..=127).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_version(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl AzureKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match url::Url::parse(&self.vault_url) {
            Ok(u) if u.scheme() == "https" && u.has_host() && u.path() == "/" => {}
            Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback_host) => {}
            _ => problems.push(format!(
                "{path}.vault_url: '{}' must be https://NAME.vault.azure.net (no path)",
                self.vault_url
            )),
        }
        if self.key_template.matches("{key_id}").count() != 1
            || !is_key_name(&self.key_template.replace("{key_id}", "k"))
        {
            problems.push(format!(
                "{path}.key_template: '{}' must contain {{key_id}} once and otherwise only A-Z a-z 0-9 -",
                self.key_template
            ));
        }
        validate_key_map(path, &self.keys, |url| self.parse_key_url(url), problems);
        if let Some(url) = &self.derive_key_url {
            match self.parse_key_url(url) {
                Ok(KeyRef { version: None, .. }) => problems.push(format!(
                    "{path}.derive_key_url: '{url}' needs a version (derived keys must not change)"
                )),
                Ok(_) => {}
                Err(why) => problems.push(format!("{path}.derive_key_url: {why}")),
            }
        }
        self.credential
            .validate(&format!("{path}.credential"), problems);
        validate_policy(path, self.timeout_ms, self.retries, problems);
    }

    fn base(&self) -> &str {
        self.vault_url.trim_end_matches('/')
    }

    /// Parses `{vault_url}/keys/NAME[/VERSION]`.
    fn parse_key_url(&self, url: &str) -> Result<KeyRef, String> {
        let rest = url
            .strip_prefix(self.base())
            .and_then(|r| r.strip_prefix("/keys/"))
            .ok_or_else(|| {
                format!(
                    "'{url}' is not a key URL of {}/keys/NAME[/VERSION]",
                    self.base()
                )
            })?;
        let mut parts = rest.trim_end_matches('/').split('/');
        let name = parts.next().unwrap_or_default();
        let version = parts.next();
        if !is_key_name(name) || parts.next().is_some() || version.is_some_and(|v| !is_version(v)) {
            return Err(format!(
                "'{url}' is not a key URL of {}/keys/NAME[/VERSION]",
                self.base()
            ));
        }
        Ok(KeyRef {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// The key a Kapsule key id maps to; refused before any call when the id cannot be a key name.
    fn key_ref(&self, key_id: &str) -> Result<KeyRef, KmsError> {
        if let Some(url) = self.keys.get(key_id) {
            return self
                .parse_key_url(url)
                .map_err(|why| KmsError::new(KmsErrorKind::Other, key_id, why));
        }
        let name = self.key_template.replace("{key_id}", key_id);
        if key_id.is_empty() || !is_key_name(&name) {
            return Err(KmsError::new(
                KmsErrorKind::UnknownKey,
                key_id,
                "key id cannot be part of a Key Vault key name (only A-Z a-z 0-9 -, at most 127); \
                 map it under kms.keys or change the rule's key_id",
            ));
        }
        Ok(KeyRef {
            name,
            version: None,
        })
    }

    /// The token scope: `scope`, else `https://<vault_url host minus its first label>/.default`.
    fn token_scope(&self) -> String {
        if let Some(s) = &self.scope {
            return s.clone();
        }
        let host = url::Url::parse(&self.vault_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let suffix = host.split_once('.').map_or(host.as_str(), |(_, s)| s);
        format!("https://{suffix}/.default")
    }
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost" || h == "127.0.0.1" || h == "[::1]"
}

/// The binding appended to every wrapped DEK: SHA-256 of the key id.
fn key_id_binding(key_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kapsule-kek\0");
    h.update(key_id.as_bytes());
    h.finalize().into()
}

/// Azure Key Vault (see the module docs).
pub struct AzureKms {
    config: AzureKmsConfig,
    rest: RestBackend,
}

impl std::fmt::Debug for AzureKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKms")
            .field("vault_url", &self.config.vault_url)
            .finish_non_exhaustive()
    }
}

impl AzureKms {
    /// Builds the client: validates the configuration, reads `ca_cert` and checks the
    /// credential's inputs. Makes no network call.
    pub fn new(config: &AzureKmsConfig) -> anyhow::Result<Self> {
        ensure_valid("Azure Key Vault", |p| config.validate("kms", p))?;
        let tokens = config.credential.source(&config.token_scope())?;
        Ok(Self {
            rest: RestBackend::new(
                config.ca_cert.as_deref(),
                config.timeout_ms,
                config.retries,
                tokens,
            )?,
            config: config.clone(),
        })
    }

    /// POSTs `body` to `{vault}/keys/{name}[/{version}]/{operation}` (or GETs the key when
    /// `operation` is empty) with a bearer token, under the shared timeouts and retries.
    async fn key_op(
        &self,
        key_id: &str,
        key: &KeyRef,
        operation: &str,
        body: Value,
    ) -> Result<Value, KmsError> {
        let mut url = format!("{}/keys/{}", self.config.base(), key.name);
        if let Some(v) = &key.version {
            url.push('/');
            url.push_str(v);
        }
        if !operation.is_empty() {
            url.push('/');
            url.push_str(operation);
        }
        let call = RestCall {
            service: "Key Vault",
            key_id,
            what: if operation.is_empty() {
                "get key"
            } else {
                operation
            },
            url: &url,
            query: &[("api-version", API_VERSION)],
            body: (!operation.is_empty()).then_some(&body),
        };
        self.rest
            .call(call, hint, |f| match f.status {
                Some(400) if operation.starts_with("unwrap") => Failure {
                    kind: KmsErrorKind::InvalidCiphertext,
                    ..f
                },
                _ => f,
            })
            .await
    }
}

impl AzureKms {
    /// The keys this configuration reaches, for `kapsule keys list`: every `keys` entry, and
    /// every key of the vault (`GET {vault}/keys`, following `nextLink` within the vault only)
    /// whose name `key_template` makes from a key id, each looked up (`GET {vault}/keys/{name}`)
    /// for its state and current version. Keys whose type the configured algorithm cannot wrap
    /// with are left out unless mapped. Key Vault versions are opaque ids, so every key is
    /// `v1` (as `kapsule keys describe` shows it) and its current version id is in the state.
    /// Sorted by key id.
    pub async fn list_keys(&self) -> Result<Vec<ListedKey>, KmsError> {
        let base = self.config.base();
        let mut found = Vec::new();
        let mut next = Some(format!("{base}/keys"));
        let mut first = true;
        while let Some(url) = next.take() {
            let call = RestCall {
                service: "Key Vault",
                key_id: "*",
                what: "list keys",
                url: &url,
                // A nextLink carries its own api-version and skip token.
                query: if first {
                    &[("api-version", API_VERSION)]
                } else {
                    &[]
                },
                body: None,
            };
            let page = self.rest.call(call, list_hint, |f| f).await?;
            for kid in page["value"].as_array().into_iter().flatten() {
                let name = kid["kid"].as_str().and_then(|k| k.rsplit('/').next());
                let Some(name) = name else { continue };
                let Some(id) = key_id_in_template(&self.config.key_template, name) else {
                    continue;
                };
                if self.config.key_ref(id).is_ok() {
                    found.push((id.to_owned(), format!("{base}/keys/{name}")));
                }
            }
            next = match page["nextLink"].as_str().filter(|l| !l.is_empty()) {
                None => None,
                Some(link) if link.starts_with(&format!("{base}/keys?")) => Some(link.to_owned()),
                Some(link) => {
                    return Err(KmsError::new(
                        KmsErrorKind::Other,
                        "",
                        format!(
                            "list keys: the next page {link:?} is outside {base}; not followed \
                             (the access token would go with it)"
                        ),
                    ))
                }
            };
            first = false;
        }
        describe_all(candidates(&self.config.keys, found), |c| async move {
            let key = self
                .config
                .parse_key_url(&c.reference)
                .map_err(|why| KmsError::new(KmsErrorKind::Other, &c.key_id, why))?;
            let v = self.key_op(&c.key_id, &key, "", Value::Null).await?;
            Ok(self.describe_key(&v))
        })
        .await
    }

    /// A key (a `GET` answer) as a KEK: enabled or disabled, with its current version, or why
    /// the configured algorithm cannot wrap with it.
    fn describe_key(&self, v: &Value) -> Described {
        let kty = v["key"]["kty"].as_str().unwrap_or("unknown");
        let fits = match self.config.algorithm {
            WrapAlgorithm::RsaOaep256 => matches!(kty, "RSA" | "RSA-HSM"),
            WrapAlgorithm::A256Kw => matches!(kty, "oct" | "oct-HSM"),
        };
        if !fits {
            return Described::Unsuitable(format!(
                "a {kty} key: {} needs {}",
                self.config.algorithm.name(),
                match self.config.algorithm {
                    WrapAlgorithm::RsaOaep256 => "RSA or RSA-HSM",
                    WrapAlgorithm::A256Kw => "oct or oct-HSM",
                }
            ));
        }
        let enabled = v["attributes"]["enabled"] != Value::Bool(false);
        let version = v["key"]["kid"].as_str().and_then(kid_version);
        Described::Usable {
            latest_version: 1,
            state: format!(
                "{} (version {})",
                if enabled { "enabled" } else { "disabled" },
                version.unwrap_or("unknown")
            ),
        }
    }
}

/// What to do about a final failure of class `kind` to list the vault's keys.
fn list_hint(kind: KmsErrorKind) -> String {
    match kind {
        KmsErrorKind::PermissionDenied => "; listing needs the keys list permission (Key Vault \
            Reader or Crypto User on the vault, docs/kms.md), which the proxy's role lacks"
            .into(),
        other => hint(other),
    }
}

/// What to do about a final Key Vault failure of class `kind`.
fn hint(kind: KmsErrorKind) -> String {
    match kind {
        KmsErrorKind::PermissionDenied => "; the identity needs the Key Vault Crypto Service \
            Encryption User role on the key (docs/kms.md)"
            .into(),
        KmsErrorKind::UnknownKey => "; create the key or map the key id under kms.keys".into(),
        _ => String::new(),
    }
}

/// Key Vault's base64url (padding tolerated), for [`base64_field`].
fn b64url(s: &str) -> Option<Vec<u8>> {
    B64URL.decode(s.trim_end_matches('=')).ok()
}

/// The version at the end of a `kid` (`.../keys/NAME/VERSION`).
fn kid_version(kid: &str) -> Option<&str> {
    kid.rsplit('/').next().filter(|v| is_version(v))
}

#[async_trait]
impl Kms for AzureKms {
    fn backend(&self) -> &'static str {
        "azure"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let key = self.config.key_ref(key_id)?;
        let dek = super::random_dek();
        let mut wrapped_input = Zeroizing::new(Vec::with_capacity(DEK_LEN + 32));
        wrapped_input.extend_from_slice(dek.as_ref());
        wrapped_input.extend_from_slice(&key_id_binding(key_id));
        let body =
            json!({"alg": self.config.algorithm.name(), "value": B64URL.encode(&wrapped_input)});
        let v = self.key_op(key_id, &key, "wrapkey", body).await?;
        let wrapped = base64_field(key_id, &v, "value", "wrapkey", b64url)?;
        let version = v["kid"].as_str().and_then(kid_version).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "wrapkey: the answer's kid has no key version",
            )
        })?;
        Ok(DataKey {
            plaintext: dek,
            edek: format!("azure:{version}:{}", B64URL.encode(&*wrapped)).into_bytes(),
            kek_version: 1,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let mut key = self.config.key_ref(key_id)?;
        let invalid = || {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "EDEK is not an Azure Key Vault wrapped key (azure:VERSION:BASE64URL)",
            )
        };
        let text = std::str::from_utf8(edek).map_err(|_| invalid())?;
        let (version, wrapped) = text
            .strip_prefix("azure:")
            .and_then(|r| r.split_once(':'))
            .filter(|(v, w)| is_version(v) && !w.is_empty())
            .ok_or_else(invalid)?;
        key.version = Some(version.to_owned());
        let body = json!({"alg": self.config.algorithm.name(), "value": wrapped});
        let v = self.key_op(key_id, &key, "unwrapkey", body).await?;
        let plain = base64_field(key_id, &v, "value", "unwrapkey", b64url)?;
        if plain.len() != DEK_LEN + 32 || plain[DEK_LEN..] != key_id_binding(key_id) {
            return Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "the unwrapped DEK was made for another key id",
            ));
        }
        super::secret_key(key_id, &plain[..DEK_LEN], "unwrapped DEK")
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let key = self.config.key_ref(key_id)?;
        let v = self.key_op(key_id, &key, "", Value::Null).await?;
        if v["attributes"]["enabled"] == Value::Bool(false) {
            return Err(KmsError::new(
                KmsErrorKind::Transient,
                key_id,
                "the key is disabled",
            ));
        }
        Ok(KeyInfo::new(key_id, 1))
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        request.require_version(1, "does not exist (derive_key_url is pinned)")?;
        let key_id = request.key_id;
        let url = self.config.derive_key_url.as_deref().ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "record-key encryption with Azure Key Vault needs kms.derive_key_url (see docs/kms.md)",
            )
        })?;
        let key = self
            .config
            .parse_key_url(url)
            .map_err(|why| KmsError::new(KmsErrorKind::Other, key_id, why))?;
        let mut h = Sha256::new();
        h.update(b"kapsule-derive\0");
        h.update(key_id.as_bytes());
        h.update([0]);
        h.update(request.context);
        let digest: [u8; 32] = h.finalize().into();
        let v = self
            .key_op(
                key_id,
                &key,
                "sign",
                json!({"alg": "RS256", "value": B64URL.encode(digest)}),
            )
            .await?;
        let signature = base64_field(key_id, &v, "value", "sign", b64url)?;
        let material: [u8; 32] = Sha256::digest(&*signature).into();
        Ok(DerivedKey {
            material: Zeroizing::new(material),
            kek_version: 1,
        })
    }
}

#[cfg(test)]
mod tests;
