//! Microsoft Entra ID access tokens for Azure Key Vault: client secret, client certificate (an
//! RS256 client assertion naming the certificate by its `x5t#S256` thumbprint), workload identity
//! (federated token file, as AKS injects it) and managed identity (instance metadata).

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::kms::cloud::{parse_token, read_secret, AccessToken, RestClient, TokenSource};
use crate::kms::jwt::{
    certificate_matches_key, pem_blocks, rsa_key_from_pem, sign_rs256, unix_now,
};
use crate::kms::retry::Failure;
use crate::kms::KmsErrorKind;

fn default_authority() -> String {
    "https://login.microsoftonline.com".to_owned()
}
fn default_imds() -> String {
    "http://169.254.169.254/metadata/identity/oauth2/token".to_owned()
}

/// How Kapsule authenticates to Entra ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureCredentialType {
    /// An app registration's client secret (OAuth2 client credentials).
    ClientSecret,
    /// An app registration's certificate: a PEM file with the certificate and its RSA private
    /// key, proven by a signed client assertion (OAuth2 client credentials).
    ClientCertificate,
    /// A federated token file (AKS workload identity), exchanged as a client assertion.
    WorkloadIdentity,
    /// The VM's / pod's managed identity from the instance metadata service.
    ManagedIdentity,
}

/// `kms.credential` of `type: azure`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureCredentialConfig {
    /// Which credential.
    #[serde(rename = "type")]
    pub kind: AzureCredentialType,
    /// Directory (tenant) id; workload identity defaults to `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id; workload identity defaults to `AZURE_CLIENT_ID`; for a managed
    /// identity it selects a user-assigned identity.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the client secret (`client_secret`).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the client secret (`client_secret`), re-read at each token fetch.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM file with the certificate and its private key (`client_certificate`; default
    /// `AZURE_CLIENT_CERTIFICATE_PATH`), re-read at each token fetch (renewed certificates).
    #[serde(default)]
    pub client_certificate_file: Option<PathBuf>,
    /// Federated token file (`workload_identity`; default `AZURE_FEDERATED_TOKEN_FILE`), re-read
    /// at each token fetch because the kubelet rotates it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Entra ID authority (default `https://login.microsoftonline.com`, or `AZURE_AUTHORITY_HOST`
    /// for workload identity).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Managed identity token endpoint (default the instance metadata service).
    #[serde(default)]
    pub endpoint: Option<String>,
}

impl AzureCredentialConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        use AzureCredentialType::*;
        // The optional fields each credential type reads; any other one set is a mistake.
        let used: &[&str] = match self.kind {
            ClientSecret => &[
                "tenant_id",
                "client_id",
                "client_secret_env",
                "client_secret_file",
                "authority_host",
            ],
            ClientCertificate => &[
                "tenant_id",
                "client_id",
                "client_certificate_file",
                "authority_host",
            ],
            WorkloadIdentity => &["tenant_id", "client_id", "token_file", "authority_host"],
            ManagedIdentity => &["client_id", "endpoint"],
        };
        let set = [
            ("tenant_id", self.tenant_id.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            (
                "client_certificate_file",
                self.client_certificate_file.is_some(),
            ),
            ("token_file", self.token_file.is_some()),
            ("authority_host", self.authority_host.is_some()),
            ("endpoint", self.endpoint.is_some()),
        ];
        for (field, present) in set {
            if present && !used.contains(&field) {
                problems.push(format!(
                    "{path}.{field}: not used by credential type {:?}",
                    self.kind
                ));
            }
        }
        if matches!(self.kind, ClientSecret | ClientCertificate)
            && (self.tenant_id.is_none() || self.client_id.is_none())
        {
            let kind = if self.kind == ClientSecret {
                "client_secret"
            } else {
                "client_certificate"
            };
            problems.push(format!("{path}: {kind} needs tenant_id and client_id"));
        }
        if self.kind == ClientSecret
            && self.client_secret_env.is_some() == self.client_secret_file.is_some()
        {
            problems.push(format!(
                "{path}: set exactly one of client_secret_env and client_secret_file"
            ));
        }
        for (field, url) in [
            ("authority_host", &self.authority_host),
            ("endpoint", &self.endpoint),
        ] {
            if let Some(u) = url {
                if !url::Url::parse(u).is_ok_and(|u| u.scheme() == "https" || u.scheme() == "http")
                {
                    problems.push(format!("{path}.{field}: '{u}' is not an http(s) URL"));
                }
            }
        }
    }

    /// The Entra ID token of the configured application (tenant, client id, authority) for
    /// `scope`, proven by `proof` (a client secret or certificate).
    fn app_token(&self, scope: &str, proof: Proof) -> EntraToken {
        EntraToken {
            token_url: token_url(
                self.authority_host
                    .as_deref()
                    .unwrap_or(&default_authority()),
                self.tenant_id.as_deref().unwrap_or_default(),
            ),
            client_id: self.client_id.clone().unwrap_or_default(),
            scope: scope.to_owned(),
            proof,
        }
    }

    /// The token source for `scope` (e.g. `https://vault.azure.net/.default`); reads what must
    /// exist at start-up (environment defaults, the secret's presence) and fails naming it.
    pub(crate) fn source(&self, scope: &str) -> anyhow::Result<Box<dyn TokenSource>> {
        let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        Ok(match self.kind {
            AzureCredentialType::ClientSecret => {
                // Checked now so a missing secret is a start-up error; read again per fetch.
                read_secret(
                    self.client_secret_file.as_ref(),
                    self.client_secret_env.as_deref(),
                    "kms.credential client secret",
                )?;
                Box::new(self.app_token(
                    scope,
                    Proof::Secret(
                        self.client_secret_file.clone(),
                        self.client_secret_env.clone(),
                    ),
                ))
            }
            AzureCredentialType::ClientCertificate => {
                let file = self
                    .client_certificate_file
                    .clone()
                    .or_else(|| env("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from))
                    .context("kms.credential: client_certificate needs client_certificate_file (or AZURE_CLIENT_CERTIFICATE_PATH)")?;
                // Checked now so a broken file is a start-up error; read again per fetch.
                ClientCertificate::load(&file)?;
                Box::new(self.app_token(scope, Proof::Certificate(file)))
            }
            AzureCredentialType::WorkloadIdentity => {
                let pick = |v: &Option<String>, var: &str| {
                    v.clone().or_else(|| env(var)).ok_or_else(|| {
                        anyhow::anyhow!(
                            "kms.credential: workload identity needs {var} (or the field)"
                        )
                    })
                };
                let tenant = pick(&self.tenant_id, "AZURE_TENANT_ID")?;
                let client_id = pick(&self.client_id, "AZURE_CLIENT_ID")?;
                let file = self
                    .token_file
                    .clone()
                    .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                    .ok_or_else(|| {
                        anyhow::anyhow!("kms.credential: workload identity needs AZURE_FEDERATED_TOKEN_FILE (or token_file)")
                    })?;
                let authority = self
                    .authority_host
                    .clone()
                    .or_else(|| env("AZURE_AUTHORITY_HOST"))
                    .unwrap_or_else(default_authority);
                Box::new(EntraToken {
                    token_url: token_url(&authority, &tenant),
                    client_id,
                    scope: scope.to_owned(),
                    proof: Proof::FederatedToken(file),
                })
            }
            AzureCredentialType::ManagedIdentity => Box::new(ManagedIdentity {
                endpoint: self.endpoint.clone().unwrap_or_else(default_imds),
                resource: scope.trim_end_matches("/.default").to_owned(),
                client_id: self.client_id.clone(),
            }),
        })
    }
}

fn token_url(authority: &str, tenant: &str) -> String {
    format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    )
}

/// What proves the app's identity to Entra ID.
enum Proof {
    /// Client secret from a file or an environment variable.
    Secret(Option<PathBuf>, Option<String>),
    /// A federated (Kubernetes service account) token file, sent as a client assertion.
    FederatedToken(PathBuf),
    /// A certificate + private key PEM file: a client assertion signed with the key.
    Certificate(PathBuf),
}

/// How long a certificate client assertion is valid (Entra ID accepts up to 10 minutes).
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// An app registration's certificate and its private key, from one PEM file.
struct ClientCertificate {
    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER, as Entra ID matches it.
    thumbprint: String,
    key: ring::signature::RsaKeyPair,
}

impl ClientCertificate {
    /// Reads `path`: the first `CERTIFICATE` block and an RSA `PRIVATE KEY` that belongs to it.
    fn load(path: &PathBuf) -> anyhow::Result<Self> {
        let what = format!("kms.credential.client_certificate_file {}", path.display());
        let pem = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read it"))?,
        );
        let blocks = pem_blocks(&pem, &what)?;
        let cert = blocks
            .iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der)
            .with_context(|| format!("{what}: no PEM CERTIFICATE block"))?;
        let key = rsa_key_from_pem(&pem, &what)?;
        anyhow::ensure!(
            certificate_matches_key(cert, &key),
            "{what}: the private key does not belong to the (first) certificate"
        );
        Ok(Self {
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.as_slice())),
            key,
        })
    }

    /// The client assertion for `client_id` at `token_url` (its `aud`), issued at `now`.
    fn assertion(&self, client_id: &str, token_url: &str, now: u64) -> Result<String, Failure> {
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = json!({
            "aud": token_url, "iss": client_id, "sub": client_id,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "nbf": now, "iat": now, "exp": now + ASSERTION_LIFETIME_SECS,
        });
        sign_rs256(&self.key, &header, &claims)
    }
}

/// Entra ID's token endpoint, client-credentials grant.
struct EntraToken {
    token_url: String,
    client_id: String,
    scope: String,
    proof: Proof,
}

fn client_assertion_type() -> (&'static str, Zeroizing<String>) {
    (
        "client_assertion_type",
        Zeroizing::new("urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
    )
}

fn credential_failure(message: String) -> Failure {
    Failure {
        kind: KmsErrorKind::PermissionDenied,
        message,
        retry: false,
        status: None,
    }
}

#[async_trait]
impl TokenSource for EntraToken {
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure> {
        let mut form: Vec<(&str, Zeroizing<String>)> = vec![
            ("grant_type", Zeroizing::new("client_credentials".into())),
            ("client_id", Zeroizing::new(self.client_id.clone())),
            ("scope", Zeroizing::new(self.scope.clone())),
        ];
        match &self.proof {
            Proof::Secret(file, env) => {
                let secret = read_secret(file.as_ref(), env.as_deref(), "client secret")
                    .map_err(|e| credential_failure(format!("{e:#}")))?;
                form.push(("client_secret", secret));
            }
            Proof::FederatedToken(file) => {
                let token = read_secret(Some(file), None, "federated token file")
                    .map_err(|e| credential_failure(format!("{e:#}")))?;
                form.push(client_assertion_type());
                form.push(("client_assertion", token));
            }
            Proof::Certificate(file) => {
                let certificate = ClientCertificate::load(file)
                    .map_err(|e| credential_failure(format!("{e:#}")))?;
                let assertion =
                    certificate.assertion(&self.client_id, &self.token_url, unix_now())?;
                form.push(client_assertion_type());
                form.push(("client_assertion", Zeroizing::new(assertion)));
            }
        }
        let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let request = http.http().post(&self.token_url).form(&fields);
        let v = http
            .send_json("Entra ID token", request)
            .await
            .map_err(refusal_is_permission_denied)?;
        parse_token("Entra ID token", &v)
    }
}

/// A token endpoint answering 400 (invalid_client, invalid_grant...) refuses the credentials.
fn refusal_is_permission_denied(mut f: Failure) -> Failure {
    if matches!(f.status, Some(400 | 401 | 403)) {
        f.kind = KmsErrorKind::PermissionDenied;
        f.message = format!(
            "{} (the identity provider refused Kapsule's credentials)",
            f.message
        );
    }
    f
}

/// Managed identity through the instance metadata service (`Metadata: true`).
struct ManagedIdentity {
    endpoint: String,
    resource: String,
    client_id: Option<String>,
}

#[async_trait]
impl TokenSource for ManagedIdentity {
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure> {
        let mut query = vec![
            ("api-version", "2018-02-01"),
            ("resource", self.resource.as_str()),
        ];
        if let Some(id) = &self.client_id {
            query.push(("client_id", id));
        }
        let request = http
            .http()
            .get(&self.endpoint)
            .header("Metadata", "true")
            .query(&query);
        let v = http
            .send_json("managed identity token", request)
            .await
            .map_err(refusal_is_permission_denied)?;
        parse_token("managed identity token", &v)
    }
}
