//! Google Cloud KMS back end over the REST API (`cloudkms.googleapis.com/v1`).
//!
//! - [`Kms::generate_data_key`]: a random DEK from the OS, encrypted with `POST
//!   {cryptoKey}:encrypt` under the key's primary version, with additionalAuthenticatedData
//!   `kapsule-kek:<Kapsule key id>` (the key id binding, like AWS's encryption context). EDEK =
//!   the returned ciphertext (it names its key version; Cloud KMS picks it on decrypt).
//! - [`Kms::decrypt_data_key`]: `POST {cryptoKey}:decrypt` with the same AAD: records under older
//!   versions decrypt while those versions are enabled.
//! - [`Kms::key_info`]: `GET {cryptoKey}` (primary version number).
//! - [`GcpKms::list_keys`] (`kapsule keys list`): `GET {keyRing}/cryptoKeys` filtered by
//!   `key_template`, plus the `keys` map.
//! - [`Kms::derive_key`]: `POST {cryptoKeyVersion}:macSign` (HMAC-SHA256 key version named by
//!   `mac_key_template`).
//!
//! Tokens come from [`credential`]; a 401 drops the cached token and the call is retried.

mod credential;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

pub use credential::{GcpCredentialConfig, GcpCredentialType, CLOUD_KMS_SCOPE};

use super::cloud::{base64_field, RestBackend, RestCall};
use super::key_id::validate_key_map;
use super::listing::{
    candidates, describe_all, key_id_in_template, Described, ListedKey, KEY_ID_PLACEHOLDER,
};
use super::retry::{ensure_valid, validate_policy, Failure};
use super::{
    random_dek, secret_key, DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError,
    KmsErrorKind, SecretKey,
};

fn default_endpoint() -> String {
    "https://cloudkms.googleapis.com".to_owned()
}

/// `kms: { type: gcp, ... }` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpKmsConfig {
    /// CryptoKey resource name for a Kapsule key id without an entry in `keys`, `{key_id}`
    /// replaced: `projects/P/locations/L/keyRings/R/cryptoKeys/kapsule-{key_id}`.
    pub key_template: String,
    /// Explicit KEKs: Kapsule key id → CryptoKey resource name.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// CryptoKeyVersion of an HMAC_SHA256 key used to derive record-key keys, `{key_id}`
    /// replaced: `.../cryptoKeys/kapsule-{key_id}-mac/cryptoKeyVersions/1`.
    #[serde(default)]
    pub mac_key_template: Option<String>,
    /// API endpoint (default `https://cloudkms.googleapis.com`; a regional or private endpoint).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// How Kapsule gets its tokens.
    pub credential: GcpCredentialConfig,
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

fn is_segment(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks `projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]`.
fn check_resource(name: &str, want_version: bool) -> Result<(), String> {
    let parts: Vec<&str> = name.split('/').collect();
    let labels = [
        "projects",
        "locations",
        "keyRings",
        "cryptoKeys",
        "cryptoKeyVersions",
    ];
    let n = if want_version { 10 } else { 8 };
    let ok = parts.len() == n
        && parts
            .chunks(2)
            .zip(labels)
            .all(|(pair, label)| pair[0] == label && is_segment(pair[1]));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not projects/P/locations/L/keyRings/R/cryptoKeys/K{}",
            if want_version {
                "/cryptoKeyVersions/N"
            } else {
                ""
            }
        ))
    }
}

fn fill(template: &str, key_id: &str) -> Result<String, KmsError> {
    let name = template.replace("{key_id}", key_id);
    if key_id.is_empty()
        || key_id.contains(['/', '.'])
        || check_resource(&name, template.contains("/cryptoKeyVersions/")).is_err()
    {
        return Err(KmsError::new(
            KmsErrorKind::UnknownKey,
            key_id,
            "key id cannot be part of a Cloud KMS key name (only A-Z a-z 0-9 _ -, at most 63); \
             map it under kms.keys or change the rule's key_id",
        ));
    }
    Ok(name)
}

impl GcpKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        for (field, template, versioned) in [
            ("key_template", Some(&self.key_template), false),
            ("mac_key_template", self.mac_key_template.as_ref(), true),
        ] {
            let Some(t) = template else { continue };
            if t.matches("{key_id}").count() != 1 {
                problems.push(format!(
                    "{path}.{field}: '{t}' must contain {{key_id}} once"
                ));
            } else if let Err(why) = check_resource(&t.replace("{key_id}", "k"), versioned) {
                problems.push(format!("{path}.{field}: {why}"));
            }
        }
        validate_key_map(
            path,
            &self.keys,
            |name| check_resource(name, false),
            problems,
        );
        match url::Url::parse(&self.endpoint) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && u.host_str().is_some_and(|h| h == "127.0.0.1" || h == "localhost")) => {}
            _ => problems.push(format!(
                "{path}.endpoint: '{}' must be an https:// URL (http:// only on loopback, for tests)",
                self.endpoint
            )),
        }
        self.credential
            .validate(&format!("{path}.credential"), problems);
        validate_policy(path, self.timeout_ms, self.retries, problems);
    }

    fn key_name(&self, key_id: &str) -> Result<String, KmsError> {
        match self.keys.get(key_id) {
            Some(name) => Ok(name.clone()),
            None => fill(&self.key_template, key_id),
        }
    }
}

/// The additional authenticated data binding an EDEK to its Kapsule key id.
fn aad(key_id: &str) -> String {
    B64.encode(format!("kapsule-kek:{key_id}"))
}

/// The version number at the end of a CryptoKeyVersion name.
fn version_of(name: &str) -> Option<u32> {
    name.rsplit_once("/cryptoKeyVersions/")?.1.parse().ok()
}

/// Google Cloud KMS (see the module docs).
pub struct GcpKms {
    config: GcpKmsConfig,
    rest: RestBackend,
}

impl std::fmt::Debug for GcpKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpKms")
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl GcpKms {
    /// Builds the client: validates the configuration, reads `ca_cert` and the credential file.
    /// Makes no network call.
    pub fn new(config: &GcpKmsConfig) -> anyhow::Result<Self> {
        ensure_valid("Google Cloud KMS", |p| config.validate("kms", p))?;
        Ok(Self {
            rest: RestBackend::new(
                config.ca_cert.as_deref(),
                config.timeout_ms,
                config.retries,
                config.credential.source()?,
            )?,
            config: config.clone(),
        })
    }

    /// `POST {endpoint}/v1/{resource}:{method}` (or `GET` without a method) with a bearer token.
    async fn call(
        &self,
        key_id: &str,
        resource: &str,
        method: &str,
        body: Value,
    ) -> Result<Value, KmsError> {
        let url = if method.is_empty() {
            self.url(resource)
        } else {
            format!("{}:{method}", self.url(resource))
        };
        let call = RestCall {
            service: "Cloud KMS",
            key_id,
            what: if method.is_empty() { "get" } else { method },
            url: &url,
            query: &[],
            body: (!method.is_empty()).then_some(&body),
        };
        self.rest
            .call(call, hint, |f| match f.status {
                Some(400) => classify_400(method, f),
                _ => f,
            })
            .await
    }

    /// `{endpoint}/v1/{resource}`.
    fn url(&self, resource: &str) -> String {
        format!(
            "{}/v1/{resource}",
            self.config.endpoint.trim_end_matches('/')
        )
    }
}

impl GcpKms {
    /// The CryptoKeys this configuration reaches, for `kapsule keys list`: every `keys` entry,
    /// and every key of the key ring of `key_template` (`GET {keyRing}/cryptoKeys`, all pages)
    /// whose name the template makes from a key id, each with its primary version and that
    /// version's state (`ENABLED`, `DISABLED`, `DESTROY_SCHEDULED`, ...). Keys of another
    /// purpose (such as the HMAC keys of `mac_key_template`) are left out unless mapped. When
    /// `{key_id}` stands outside the CryptoKey name (in the key ring, say) only the `keys`
    /// entries are listed. Sorted by key id.
    pub async fn list_keys(&self) -> Result<Vec<ListedKey>, KmsError> {
        let template = &self.config.key_template;
        let mut listed: BTreeMap<String, Value> = BTreeMap::new();
        let ring = template
            .rsplit_once("/cryptoKeys/")
            .map(|(ring, _)| ring)
            .filter(|ring| !ring.contains(KEY_ID_PLACEHOLDER));
        if let Some(ring) = ring {
            let url = self.url(&format!("{ring}/cryptoKeys"));
            let mut page_token = String::new();
            loop {
                let query = [("pageToken", page_token.as_str())];
                let call = RestCall {
                    service: "Cloud KMS",
                    key_id: "*",
                    what: "list cryptoKeys",
                    url: &url,
                    query: if page_token.is_empty() { &[] } else { &query },
                    body: None,
                };
                let page = self.rest.call(call, list_hint, |f| f).await?;
                for key in page["cryptoKeys"].as_array().into_iter().flatten() {
                    if let Some(name) = key["name"].as_str() {
                        listed.insert(name.to_owned(), key.clone());
                    }
                }
                match page["nextPageToken"].as_str() {
                    Some(next) if !next.is_empty() => page_token = next.to_owned(),
                    _ => break,
                }
            }
        }
        let found = listed.keys().filter_map(|name| {
            let id = key_id_in_template(template, name)?;
            fill(template, id).ok()?;
            Some((id.to_owned(), name.clone()))
        });
        let candidates = candidates(&self.config.keys, found.collect::<Vec<_>>());
        describe_all(candidates, |c| {
            let listed = &listed;
            async move {
                let key = match listed.get(&c.reference) {
                    Some(key) => key.clone(),
                    None => self.call(&c.key_id, &c.reference, "", Value::Null).await?,
                };
                Ok(describe_crypto_key(&key))
            }
        })
        .await
    }
}

/// A CryptoKey resource as a KEK: its primary version and that version's state, or why Kapsule
/// cannot wrap DEKs with it.
fn describe_crypto_key(key: &Value) -> Described {
    if key["purpose"] != "ENCRYPT_DECRYPT" {
        return Described::Unsuitable(format!(
            "purpose {}: Kapsule needs ENCRYPT_DECRYPT",
            key["purpose"].as_str().unwrap_or("unknown")
        ));
    }
    match key["primary"]["name"].as_str().and_then(version_of) {
        Some(latest_version) => Described::Usable {
            latest_version,
            state: key["primary"]["state"]
                .as_str()
                .unwrap_or("unknown state")
                .to_owned(),
        },
        None => Described::Unsuitable("the key has no primary version".to_owned()),
    }
}

/// What to do about a final failure of class `kind` to list a key ring's keys.
fn list_hint(kind: KmsErrorKind) -> String {
    match kind {
        KmsErrorKind::PermissionDenied => "; listing needs cloudkms.cryptoKeys.list on the key \
            ring (roles/cloudkms.viewer, docs/kms.md), which the proxy's role lacks"
            .into(),
        KmsErrorKind::UnknownKey => "; the key ring of kms.key_template does not exist".into(),
        other => hint(other),
    }
}

/// What to do about a final Cloud KMS failure of class `kind`.
fn hint(kind: KmsErrorKind) -> String {
    match kind {
        KmsErrorKind::PermissionDenied => {
            "; grant roles/cloudkms.cryptoKeyEncrypterDecrypter on the key (docs/kms.md)".into()
        }
        KmsErrorKind::UnknownKey => "; create the key or map the key id under kms.keys".into(),
        _ => String::new(),
    }
}

/// A 400 is a disabled or destroyed key version (FAILED_PRECONDITION: clients may retry once an
/// operator enables it) or, on decrypt, a ciphertext that does not decrypt.
fn classify_400(method: &str, f: Failure) -> Failure {
    if f.message.contains("FAILED_PRECONDITION") {
        Failure {
            kind: KmsErrorKind::Transient,
            retry: false,
            ..f
        }
    } else if method == "decrypt" {
        Failure {
            kind: KmsErrorKind::InvalidCiphertext,
            ..f
        }
    } else {
        f
    }
}

/// Cloud KMS's base64, for [`base64_field`].
fn b64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[async_trait]
impl Kms for GcpKms {
    fn backend(&self) -> &'static str {
        "gcp"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let name = self.config.key_name(key_id)?;
        let dek = random_dek();
        let body = json!({"plaintext": B64.encode(dek.as_ref()), "additionalAuthenticatedData": aad(key_id)});
        let v = self.call(key_id, &name, "encrypt", body).await?;
        let ciphertext = base64_field(key_id, &v, "ciphertext", "encrypt", b64)?;
        Ok(DataKey {
            plaintext: dek,
            edek: ciphertext.to_vec(),
            kek_version: v["name"].as_str().and_then(version_of).unwrap_or(1),
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let name = self.config.key_name(key_id)?;
        if edek.is_empty() || edek.len() > 65_536 {
            return Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "EDEK size is not a Cloud KMS ciphertext",
            ));
        }
        let body =
            json!({"ciphertext": B64.encode(edek), "additionalAuthenticatedData": aad(key_id)});
        let v = self.call(key_id, &name, "decrypt", body).await?;
        let plain = base64_field(key_id, &v, "plaintext", "decrypt", b64)?;
        secret_key(key_id, &plain, "decrypted DEK")
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let name = self.config.key_name(key_id)?;
        match describe_crypto_key(&self.call(key_id, &name, "", Value::Null).await?) {
            Described::Usable { latest_version, .. } => Ok(KeyInfo::new(key_id, latest_version)),
            Described::Unsuitable(why) => Err(KmsError::new(
                KmsErrorKind::Other,
                key_id,
                format!("{name}: {why}"),
            )),
        }
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        let key_id = request.key_id;
        let template = self.config.mac_key_template.as_deref().ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "record-key encryption with Cloud KMS needs kms.mac_key_template (see docs/kms.md)",
            )
        })?;
        let name = fill(template, key_id)?;
        let pinned = version_of(&name).unwrap_or(1);
        request.require_version(
            pinned,
            &format!("is not the configured MAC key version {pinned}"),
        )?;
        let v = self
            .call(
                key_id,
                &name,
                "macSign",
                json!({"data": B64.encode(request.context)}),
            )
            .await?;
        let mac = base64_field(key_id, &v, "mac", "macSign", b64)?;
        Ok(DerivedKey {
            material: secret_key(key_id, &mac, "MAC")?,
            kek_version: pinned,
        })
    }
}

#[cfg(test)]
mod tests;
