//! Google OAuth2 access tokens for Cloud KMS: a service-account key file (a signed JWT exchanged
//! at the token URI), workload identity federation (an external-account file: a subject token
//! exchanged at Google's STS, optionally impersonating a service account), the metadata server,
//! and an access token kept fresh in a file by something else (like gcloud's `--access-token-file`).

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::kms::cloud::{parse_token, read_secret, AccessToken, RestClient, TokenSource};
use crate::kms::jwt::{rsa_key_from_pem, sign_rs256, unix_now};
use crate::kms::retry::Failure;
use crate::kms::KmsErrorKind;

/// OAuth2 scope of Cloud KMS.
pub const CLOUD_KMS_SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

/// How Kapsule authenticates to Google.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcpCredentialType {
    /// A service-account key file (JSON, `"type": "service_account"`).
    ServiceAccountKey,
    /// A workload identity federation file (JSON, `"type": "external_account"`) with a file
    /// credential source (e.g. a Kubernetes service account token).
    ExternalAccount,
    /// The metadata server of GCE / GKE (workload identity on GKE).
    MetadataServer,
    /// An OAuth2 access token in `file`, kept fresh by another process (a sidecar, a Vault GCP
    /// secrets engine agent, `gcloud auth print-access-token`); re-read every minute and after
    /// a 401.
    AccessTokenFile,
}

/// `kms.credential` of `type: gcp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpCredentialConfig {
    /// Which credential.
    #[serde(rename = "type")]
    pub kind: GcpCredentialType,
    /// The JSON file of `service_account_key` / `external_account` (default
    /// `GOOGLE_APPLICATION_CREDENTIALS`), or the token file of `access_token_file` (required).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Metadata server base URL (default `GCE_METADATA_HOST`, else `http://metadata.google.internal`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl GcpCredentialConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match self.kind {
            GcpCredentialType::MetadataServer if self.file.is_some() => {
                problems.push(format!("{path}.file: not used by the metadata server"))
            }
            GcpCredentialType::AccessTokenFile if self.file.is_none() => problems.push(format!(
                "{path}.file: access_token_file needs the token's file"
            )),
            GcpCredentialType::ServiceAccountKey
            | GcpCredentialType::ExternalAccount
            | GcpCredentialType::AccessTokenFile
                if self.endpoint.is_some() =>
            {
                problems.push(format!("{path}.endpoint: only used by metadata_server"))
            }
            _ => {}
        }
    }

    /// The token source; reads and checks the credential file now, so a broken file is a
    /// start-up error.
    pub(crate) fn source(&self) -> anyhow::Result<Box<dyn TokenSource>> {
        let file = || {
            self.file
                .clone()
                .or_else(|| std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from))
                .context("kms.credential: set file (or GOOGLE_APPLICATION_CREDENTIALS)")
        };
        Ok(match self.kind {
            GcpCredentialType::ServiceAccountKey => Box::new(ServiceAccount::load(&file()?)?),
            GcpCredentialType::ExternalAccount => Box::new(ExternalAccount::load(&file()?)?),
            GcpCredentialType::AccessTokenFile => {
                let path = self
                    .file
                    .clone()
                    .context("kms.credential: access_token_file needs file")?;
                read_secret(Some(&path), None, "kms.credential.file")?;
                Box::new(TokenFile { path })
            }
            GcpCredentialType::MetadataServer => {
                let base = self
                    .endpoint
                    .clone()
                    .or_else(|| {
                        std::env::var("GCE_METADATA_HOST")
                            .ok()
                            .map(|h| format!("http://{h}"))
                    })
                    .unwrap_or_else(|| "http://metadata.google.internal".to_owned());
                Box::new(MetadataServer {
                    url: format!(
                        "{}/computeMetadata/v1/instance/service-accounts/default/token",
                        base.trim_end_matches('/')
                    ),
                })
            }
        })
    }
}

fn refused(mut f: Failure) -> Failure {
    if matches!(f.status, Some(400 | 401 | 403)) {
        f.kind = KmsErrorKind::PermissionDenied;
        f.message = format!("{} (Google refused Kapsule's credentials)", f.message);
    }
    f
}

fn read_json(path: &PathBuf, want_type: &str) -> anyhow::Result<Zeroizing<String>> {
    let text = read_secret(Some(path), None, "kms.credential.file")?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("kms.credential.file {} is not JSON", path.display()))?;
    anyhow::ensure!(
        v["type"] == want_type,
        "kms.credential.file {} has type {}, expected {want_type}",
        path.display(),
        v["type"]
    );
    Ok(text)
}

/// A service account's key: JWT bearer grant (RFC 7523) signed with RS256.
struct ServiceAccount {
    email: String,
    key_id: String,
    token_uri: String,
    key: ring::signature::RsaKeyPair,
}

impl ServiceAccount {
    fn load(path: &PathBuf) -> anyhow::Result<Self> {
        let text = read_json(path, "service_account")?;
        let v: Value = serde_json::from_str(&text)?;
        let field = |f: &str| {
            v[f].as_str()
                .map(str::to_owned)
                .with_context(|| format!("kms.credential.file {}: no {f}", path.display()))
        };
        let pem = Zeroizing::new(field("private_key")?);
        let key = rsa_key_from_pem(
            &pem,
            &format!("kms.credential.file {}: private_key", path.display()),
        )?;
        Ok(Self {
            email: field("client_email")?,
            key_id: field("private_key_id").unwrap_or_default(),
            token_uri: field("token_uri")
                .unwrap_or_else(|_| "https://oauth2.googleapis.com/token".to_owned()),
            key,
        })
    }

    /// The signed assertion for `now` (seconds since the epoch).
    fn assertion(&self, now: u64) -> Result<String, Failure> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let claims = json!({
            "iss": self.email, "scope": CLOUD_KMS_SCOPE, "aud": self.token_uri,
            "iat": now, "exp": now + 3600,
        });
        sign_rs256(&self.key, &header, &claims)
    }
}

#[async_trait]
impl TokenSource for ServiceAccount {
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure> {
        let assertion = Zeroizing::new(self.assertion(unix_now())?);
        let request = http.http().post(&self.token_uri).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]);
        let v = http
            .send_json("service-account token", request)
            .await
            .map_err(refused)?;
        parse_token("service-account token", &v)
    }
}

/// Workload identity federation: a subject token from a file, exchanged at Google's STS.
struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    token_url: String,
    subject_file: PathBuf,
    impersonation_url: Option<String>,
}

impl ExternalAccount {
    fn load(path: &PathBuf) -> anyhow::Result<Self> {
        let text = read_json(path, "external_account")?;
        let v: Value = serde_json::from_str(&text)?;
        let field = |f: &str| {
            v[f].as_str()
                .map(str::to_owned)
                .with_context(|| format!("kms.credential.file {}: no {f}", path.display()))
        };
        let subject_file = v["credential_source"]["file"]
            .as_str()
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "kms.credential.file {}: only credential_source.file is supported",
                    path.display()
                )
            })?;
        Ok(Self {
            audience: field("audience")?,
            subject_token_type: field("subject_token_type")?,
            token_url: field("token_url")
                .unwrap_or_else(|_| "https://sts.googleapis.com/v1/token".to_owned()),
            subject_file,
            impersonation_url: v["service_account_impersonation_url"]
                .as_str()
                .map(str::to_owned),
        })
    }
}

#[async_trait]
impl TokenSource for ExternalAccount {
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure> {
        let subject =
            read_secret(Some(&self.subject_file), None, "subject token file").map_err(|e| {
                Failure {
                    kind: KmsErrorKind::PermissionDenied,
                    message: format!("{e:#}"),
                    retry: false,
                    status: None,
                }
            })?;
        let scope = if self.impersonation_url.is_some() {
            "https://www.googleapis.com/auth/cloud-platform"
        } else {
            CLOUD_KMS_SCOPE
        };
        let request = http.http().post(&self.token_url).form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("audience", self.audience.as_str()),
            ("scope", scope),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token_type", self.subject_token_type.as_str()),
            ("subject_token", subject.as_str()),
        ]);
        let v = http
            .send_json("STS token exchange", request)
            .await
            .map_err(refused)?;
        let federated = parse_token("STS token exchange", &v)?;
        let Some(url) = &self.impersonation_url else {
            return Ok(federated);
        };
        let request = http
            .http()
            .post(url)
            .bearer_auth(federated.secret.as_str())
            .header("content-type", "application/json")
            .body(json!({"scope": [CLOUD_KMS_SCOPE], "lifetime": "3600s"}).to_string());
        let v = http
            .send_json("service account impersonation", request)
            .await
            .map_err(refused)?;
        let token = v["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure {
                kind: KmsErrorKind::PermissionDenied,
                message: "service account impersonation: no accessToken in the answer".into(),
                retry: false,
                status: None,
            })?;
        Ok(AccessToken {
            secret: Zeroizing::new(token.to_owned()),
            // generateAccessToken grants the requested hour; be conservative.
            expires_at: Instant::now() + std::time::Duration::from_secs(3000),
        })
    }
}

/// The metadata server's token of the attached service account.
struct MetadataServer {
    url: String,
}

#[async_trait]
impl TokenSource for MetadataServer {
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure> {
        let request = http
            .http()
            .get(&self.url)
            .query(&[("scopes", CLOUD_KMS_SCOPE)])
            .header("Metadata-Flavor", "Google");
        let v = http.send_json("metadata server token", request).await?;
        parse_token("metadata server token", &v)
    }
}

/// How long a token read from a file is used before the file is read again.
const TOKEN_FILE_REREAD: std::time::Duration = std::time::Duration::from_secs(60);

/// An access token written to a file by another process.
struct TokenFile {
    path: PathBuf,
}

#[async_trait]
impl TokenSource for TokenFile {
    async fn fetch(&self, _http: &RestClient) -> Result<AccessToken, Failure> {
        let secret =
            read_secret(Some(&self.path), None, "kms.credential.file").map_err(|e| Failure {
                kind: KmsErrorKind::PermissionDenied,
                message: format!(
                    "{e:#} (the process that writes the access token must keep it there)"
                ),
                retry: false,
                status: None,
            })?;
        Ok(AccessToken {
            secret,
            // The cache renews this margin before expiry: reuse the token for TOKEN_FILE_REREAD.
            expires_at: Instant::now() + crate::kms::cloud::TOKEN_RENEW_MARGIN + TOKEN_FILE_REREAD,
        })
    }
}

#[cfg(test)]
pub(super) mod testing {
    /// A service-account key file with the test RSA key, `token_uri` pointing at `token_uri`.
    pub(crate) fn service_account_file(
        dir: &std::path::Path,
        token_uri: &str,
    ) -> std::path::PathBuf {
        let path = dir.join("sa.json");
        let v = serde_json::json!({
            "type": "service_account", "project_id": "p", "private_key_id": "kid-1",
            "private_key": include_str!("test-service-account.pem"),
            "client_email": "kapsule@p.iam.gserviceaccount.com", "token_uri": token_uri,
        });
        std::fs::write(&path, v.to_string()).unwrap();
        path
    }
}
