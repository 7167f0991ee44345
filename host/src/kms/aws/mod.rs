//! AWS KMS back end (the AWS SDK for Rust: `aws-sdk-kms`, credentials from `aws-config`).
//!
//! Operations (see docs/kms.md for the least-privilege key policy):
//! - [`Kms::generate_data_key`]: `GenerateDataKey` (`AES_256`) under the KEK the key id maps to
//!   ([`AwsKmsConfig::key_reference`]); EDEK = the returned `CiphertextBlob`, as is.
//! - [`Kms::decrypt_data_key`]: `Decrypt` naming the same KEK, so a ciphertext of another key is
//!   refused by KMS (`IncorrectKeyException`) rather than decrypted under whatever key it names.
//! - [`Kms::key_info`]: `DescribeKey` (a symmetric encryption key, else a configuration error).
//! - [`AwsKms::list_keys`] (`kapsule keys list`): `ListAliases` filtered by `key_template`, plus
//!   the `keys` map, each checked with `DescribeKey`.
//! - [`Kms::derive_key`]: `GenerateMac` (`HMAC_SHA_256`) with the HMAC key of
//!   [`AwsKmsConfig::mac_key_template`].
//!
//! Every `GenerateDataKey` and `Decrypt` carries the encryption context
//! `{"kapsule-kek": <Kapsule key id>}`: an EDEK only decrypts for the key id it was made for (with
//! `key_id: "kek-${topic}"` rules that binds it to the topic), and key policies can grant by key id
//! with the `kms:EncryptionContext:kapsule-kek` condition.
//!
//! AWS rotates the material of a KEK behind the same key id and keeps every old version for
//! decryption, invisibly to callers: KEK versions are therefore always reported as 1.
//!
//! Credentials come from the SDK's default chain, built once without network calls: environment
//! variables, the shared config/credentials files (`profile`), web identity tokens (IRSA), the
//! container endpoint (ECS, EKS Pod Identity) and EC2 instance metadata; the SDK caches and
//! refreshes them. The SDK's own retries are off: [`super::retry`] retries throttling and
//! unavailability within the request deadline, the same way for every back end.

mod config;

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyUsageType, MacAlgorithmSpec};
use zeroize::Zeroizing;

pub use config::AwsKmsConfig;

use super::listing::{candidates, describe_all, Described, ListedKey};
use super::retry::{call_with_retries, ensure_valid, Failure, RetryPolicy};
use super::{DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey};

/// Name of the encryption-context entry that binds an EDEK to its Kapsule key id.
pub const ENCRYPTION_CONTEXT_KEY: &str = "kapsule-kek";

/// KEK version reported for every AWS key (see the module docs).
const AWS_KEK_VERSION: u32 = 1;

/// AWS KMS (see the module docs).
pub struct AwsKms {
    config: AwsKmsConfig,
    client: aws_sdk_kms::Client,
    policy: RetryPolicy,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("region", &self.config.region)
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

/// The SDK's HTTPS client on hyper 1 + rustls with ring (the provider the proxy uses), trusting
/// the system roots plus `ca_cert`.
fn http_client(config: &AwsKmsConfig) -> anyhow::Result<aws_sdk_kms::config::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    let mut trust = tls::TrustStore::default();
    if let Some(ca) = &config.ca_cert {
        let pem =
            std::fs::read(ca).with_context(|| format!("kms.ca_cert: reading {}", ca.display()))?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .context("kms.ca_cert: building the TLS context")?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context)
        .build_https())
}

impl AwsKms {
    /// Builds the client: validates the configuration, reads `ca_cert`, checks that `profile`
    /// exists, and sets up the credential chain. Makes no network call.
    pub fn new(config: &AwsKmsConfig) -> anyhow::Result<Self> {
        ensure_valid("AWS KMS", |p| config.validate("kms", p))?;
        config.check_profile()?;
        let http = http_client(config)?;
        let region = aws_sdk_kms::config::Region::new(config.region.clone());
        let provider_config = aws_config::provider_config::ProviderConfig::without_region()
            .with_region(Some(region.clone()))
            .with_http_client(http.clone());
        let mut chain =
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .region(region.clone())
                .configure(provider_config);
        if let Some(profile) = &config.profile {
            chain = chain.profile_name(profile);
        }
        // With a fixed region the chain's build resolves nothing over the network or the file
        // system (providers load lazily), so it completes on the first poll.
        let credentials = futures::executor::block_on(chain.build());
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut sdk = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .http_client(http)
            .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_attempt_timeout(timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            sdk = sdk.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(Self {
            config: config.clone(),
            client: aws_sdk_kms::Client::from_conf(sdk.build()),
            policy: RetryPolicy::from_config(config.timeout_ms, config.retries),
        })
    }

    /// The SDK client (for `kapsule keys` and tests).
    pub fn client(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// The KEKs this configuration reaches, for `kapsule keys list`: every `keys` entry and every
    /// alias of the account that `key_template` produces (`ListAliases`, all pages), each looked
    /// up with `DescribeKey`. Template aliases of keys that are not symmetric encryption keys
    /// (such as the HMAC keys of `mac_key_template`) are left out; a `keys` entry is always
    /// listed, with what is wrong with it as its state. Sorted by key id.
    pub async fn list_keys(&self) -> Result<Vec<ListedKey>, KmsError> {
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .call("ListAliases", "*", || {
                    self.client.list_aliases().set_marker(marker.clone()).send()
                })
                .await?;
            for alias in page.aliases() {
                let (Some(name), Some(_)) = (alias.alias_name(), alias.target_key_id()) else {
                    continue;
                };
                if let Some(id) = self.config.key_id_of_alias(name) {
                    found.push((id, name.to_owned()));
                }
            }
            match page.next_marker {
                Some(next) if page.truncated => marker = Some(next),
                _ => break,
            }
        }
        describe_all(candidates(&self.config.keys, found), |c| async move {
            let out = self
                .call("DescribeKey", &c.key_id, || {
                    self.client.describe_key().key_id(&c.reference).send()
                })
                .await?;
            Ok(match out.key_metadata {
                Some(meta) if is_symmetric(&meta) => Described::Usable {
                    latest_version: AWS_KEK_VERSION,
                    state: meta
                        .key_state
                        .map_or("unknown state".to_owned(), |s| s.as_str().to_owned()),
                },
                _ => Described::Unsuitable("not a symmetric encryption key".to_owned()),
            })
        })
        .await
    }

    /// What to do about a final failure of class `kind`.
    fn hint(&self, kind: KmsErrorKind) -> String {
        match kind {
            KmsErrorKind::Transient => format!(
                "; check that AWS KMS in {} is reachable{} and the key is enabled",
                self.config.region,
                self.config
                    .endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            KmsErrorKind::UnknownKey => {
                "; create the key or alias, or map the key id under kms.keys".to_owned()
            }
            KmsErrorKind::PermissionDenied => {
                "; the key policy or IAM role must allow the actions in docs/kms.md (AWS KMS)"
                    .to_owned()
            }
            _ => String::new(),
        }
    }

    /// Runs one SDK operation with the shared timeouts and retries.
    async fn call<T, E, F, Fut>(&self, op: &str, key_id: &str, f: F) -> Result<T, KmsError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: Fn() -> Fut,
        Fut: std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
        >,
    {
        call_with_retries(
            op,
            key_id,
            self.policy,
            |k| self.hint(k),
            || {
                let fut = f();
                async move { fut.await.map_err(|e| classify(&e)) }
            },
        )
        .await
    }
}

/// Classifies an SDK error: AWS error codes first, then the HTTP status, then the transport.
fn classify<E>(e: &SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    // The service's own words (code, message, status), else the transport error's chain; never
    // the SDK's Debug form, which prints whole HTTP responses.
    let detail = match e {
        SdkError::ServiceError(service) => format!(
            "{}: {} (HTTP {})",
            service.err().code().unwrap_or("unknown error"),
            service.err().message().unwrap_or_default().escape_debug(),
            service.raw().status().as_u16()
        ),
        _ => super::cloud::error_chain(e),
    };
    let failure = |kind, retry| Failure {
        kind,
        message: detail.clone(),
        retry,
        status,
    };
    match e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err().code().unwrap_or_default() {
                "ThrottlingException"
                | "LimitExceededException"
                | "RequestLimitExceeded"
                | "ServiceUnavailableException"
                | "DependencyTimeoutException"
                | "KMSInternalException"
                | "KeyUnavailableException"
                | "CustomKeyStoreInvalidStateException" => failure(KmsErrorKind::Transient, true),
                // An operator can enable the key or cancel its deletion: clients retry, but
                // asking again within this request will not change the answer.
                "DisabledException" | "KMSInvalidStateException" => {
                    failure(KmsErrorKind::Transient, false)
                }
                "NotFoundException" => failure(KmsErrorKind::UnknownKey, false),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "InvalidGrantTokenException" => failure(KmsErrorKind::PermissionDenied, false),
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    failure(KmsErrorKind::InvalidCiphertext, false)
                }
                _ if status == 429 || status >= 500 => failure(KmsErrorKind::Transient, true),
                _ => failure(KmsErrorKind::Other, false),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            failure(KmsErrorKind::Transient, true)
        }
        SdkError::ResponseError(r) if r.raw().status().as_u16() >= 500 => {
            failure(KmsErrorKind::Transient, true)
        }
        SdkError::ResponseError(_) => failure(KmsErrorKind::Other, false),
        // Typically no credentials could be resolved (the chain has its own timeouts): clients
        // retry, this request does not.
        _ => Failure {
            kind: KmsErrorKind::Transient,
            message: format!(
                "{detail} (are AWS credentials available to Kapsule? see docs/kms.md)"
            ),
            retry: false,
            status,
        },
    }
}

fn is_symmetric(meta: &aws_sdk_kms::types::KeyMetadata) -> bool {
    meta.key_usage == Some(KeyUsageType::EncryptDecrypt)
        && meta.key_spec == Some(KeySpec::SymmetricDefault)
}

/// Copies a 32-byte key out of an SDK blob into zeroized storage.
fn secret_from(key_id: &str, blob: Option<Blob>, what: &str) -> Result<SecretKey, KmsError> {
    let raw = Zeroizing::new(blob.map(Blob::into_inner).unwrap_or_default());
    super::secret_key(key_id, &raw, what)
}

#[async_trait]
impl Kms for AwsKms {
    fn backend(&self) -> &'static str {
        "aws"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let kek = self.config.key_reference(key_id)?;
        let out = self
            .call("GenerateDataKey", key_id, || {
                self.client
                    .generate_data_key()
                    .key_id(&kek)
                    .key_spec(DataKeySpec::Aes256)
                    .encryption_context(ENCRYPTION_CONTEXT_KEY, key_id)
                    .send()
            })
            .await?;
        let edek = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::Other,
                    key_id,
                    "GenerateDataKey: no CiphertextBlob",
                )
            })?;
        Ok(DataKey {
            plaintext: secret_from(key_id, out.plaintext, "GenerateDataKey plaintext")?,
            edek,
            kek_version: AWS_KEK_VERSION,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let kek = self.config.key_reference(key_id)?;
        if edek.is_empty() || edek.len() > 6144 {
            return Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                format!(
                    "EDEK of {} bytes is no AWS KMS ciphertext (1..=6144)",
                    edek.len()
                ),
            ));
        }
        let out = self
            .call("Decrypt", key_id, || {
                self.client
                    .decrypt()
                    .key_id(&kek)
                    .ciphertext_blob(Blob::new(edek))
                    .encryption_context(ENCRYPTION_CONTEXT_KEY, key_id)
                    .send()
            })
            .await?;
        secret_from(key_id, out.plaintext, "Decrypt plaintext")
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let kek = self.config.key_reference(key_id)?;
        let out = self
            .call("DescribeKey", key_id, || {
                self.client.describe_key().key_id(&kek).send()
            })
            .await?;
        let meta = out.key_metadata.ok_or_else(|| {
            KmsError::new(KmsErrorKind::Other, key_id, "DescribeKey: no KeyMetadata")
        })?;
        if !is_symmetric(&meta) {
            return Err(KmsError::new(
                KmsErrorKind::Other,
                key_id,
                format!(
                    "{kek} is a {:?} key for {:?}; Kapsule needs a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT",
                    meta.key_spec, meta.key_usage
                ),
            ));
        }
        Ok(KeyInfo::new(key_id, AWS_KEK_VERSION))
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        request.require_version(
            AWS_KEK_VERSION,
            "does not exist: AWS HMAC keys have one version",
        )?;
        let key_id = request.key_id;
        let mac_key = self.config.mac_key_reference(key_id)?;
        let out = self
            .call("GenerateMac", key_id, || {
                self.client
                    .generate_mac()
                    .key_id(&mac_key)
                    .mac_algorithm(MacAlgorithmSpec::HmacSha256)
                    .message(Blob::new(request.context))
                    .send()
            })
            .await?;
        Ok(DerivedKey {
            material: secret_from(key_id, out.mac, "GenerateMac result")?,
            kek_version: AWS_KEK_VERSION,
        })
    }
}

#[cfg(test)]
mod tests;
