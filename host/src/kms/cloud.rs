//! What the REST back ends (Azure Key Vault, Google Cloud KMS) share: one HTTPS client (reqwest on
//! rustls, the stack the Vault client already uses), JSON calls whose failures are classified for
//! [`super::retry`], OAuth2 bearer tokens cached until shortly before they expire, and
//! [`RestBackend`], which makes one authorised call of either under the shared retries.
//!
//! Tokens and secrets are held in [`Zeroizing`] strings, never logged and never put into an error
//! message; error messages carry the HTTP status and the service's error text only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::retry::{call_with_retries, Failure, RetryPolicy};
use super::{KmsError, KmsErrorKind};

/// A token is renewed when less than this is left of its lifetime.
pub(crate) const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(120);

/// The HTTPS client of a REST back end.
#[derive(Debug, Clone)]
pub(crate) struct RestClient {
    http: reqwest::Client,
}

impl RestClient {
    /// A client trusting the web PKI roots plus the PEM certificates in `ca_cert`, with
    /// `timeout` per request (the retry loop cuts it to the request deadline besides).
    pub(crate) fn new(ca_cert: Option<&Path>, timeout: Duration) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("kms.ca_cert: reading {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("kms.ca_cert: {} is not PEM", path.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: b.build().context("building the KMS HTTPS client")?,
        })
    }

    /// The underlying client, to build requests.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends `request` and returns its JSON body; any failure is classified (see
    /// [`classify_status`]); `what` names the call in messages.
    pub(crate) async fn send_json(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, Failure> {
        let response = request.send().await.map_err(|e| Failure {
            kind: KmsErrorKind::Transient,
            message: format!("{what}: cannot reach the KMS: {}", error_chain(&e)),
            retry: true,
            status: None,
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| Failure {
            kind: KmsErrorKind::Transient,
            message: format!("{what}: reading the answer: {}", error_chain(&e)),
            retry: true,
            status: Some(status),
        })?;
        if !(200..300).contains(&status) {
            let mut f = classify_status(status, &body);
            f.message = format!("{what}: {}", f.message);
            return Err(f);
        }
        serde_json::from_str(&body).map_err(|e| Failure {
            kind: KmsErrorKind::Other,
            message: format!("{what}: HTTP {status} answer is not JSON ({e})"),
            retry: false,
            status: Some(status),
        })
    }
}

/// The error text of a JSON error body (`{"error": {"code", "message"}}`, `{"error": "...",
/// "error_description": "..."}`), shortened; else the start of the body.
pub(crate) fn error_text(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) => match &v["error"] {
            Value::Object(e) => format!(
                "{} {}",
                // Google: {"code": 400, "status": "FAILED_PRECONDITION"}; Azure: {"code": "Forbidden"}.
                e.get("status")
                    .and_then(Value::as_str)
                    .or_else(|| e.get("code").and_then(Value::as_str))
                    .unwrap_or_default(),
                e.get("message").and_then(Value::as_str).unwrap_or_default()
            ),
            Value::String(code) => format!(
                "{code} {}",
                v["error_description"].as_str().unwrap_or_default()
            ),
            _ => body.to_owned(),
        },
        Err(_) => body.to_owned(),
    };
    let text = text.trim();
    let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    text[..cut].escape_debug().to_string()
}

/// Classifies a non-2xx answer: 429/5xx transient (retried), 401/403 refused, 404 unknown key,
/// anything else a configuration or request problem.
pub(crate) fn classify_status(status: u16, body: &str) -> Failure {
    let text = error_text(body);
    let (kind, retry) = match status {
        408 | 429 | 500..=599 => (KmsErrorKind::Transient, true),
        401 | 403 => (KmsErrorKind::PermissionDenied, false),
        404 => (KmsErrorKind::UnknownKey, false),
        _ => (KmsErrorKind::Other, false),
    };
    Failure {
        kind,
        message: format!("HTTP {status}: {text}"),
        retry,
        status: Some(status),
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// An OAuth2 access token.
pub(crate) struct AccessToken {
    /// The bearer token.
    pub secret: Zeroizing<String>,
    /// When it stops being valid.
    pub expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Parses a token endpoint's answer: `access_token` and `expires_in` (seconds, number or string,
/// as Entra ID, IMDS and Google send it); a missing lifetime counts as 5 minutes.
pub(crate) fn parse_token(what: &str, v: &Value) -> Result<AccessToken, Failure> {
    let secret = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure {
            kind: KmsErrorKind::PermissionDenied,
            message: format!("{what}: the answer has no access_token"),
            retry: false,
            status: None,
        })?;
    let lifetime = match &v["expires_in"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(300);
    Ok(AccessToken {
        secret: Zeroizing::new(secret.to_owned()),
        expires_at: Instant::now() + Duration::from_secs(lifetime),
    })
}

/// Where a back end gets its access tokens from (client secret, federated token, metadata
/// server, service-account key...).
#[async_trait]
pub(crate) trait TokenSource: Send + Sync {
    /// Fetches a fresh token. Refusals by the identity provider are `PermissionDenied`.
    async fn fetch(&self, http: &RestClient) -> Result<AccessToken, Failure>;
}

/// A [`TokenSource`] whose token is reused until [`TOKEN_RENEW_MARGIN`] before it expires;
/// concurrent callers share one fetch.
pub(crate) struct TokenCache {
    source: Box<dyn TokenSource>,
    current: tokio::sync::Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache over `source`.
    pub(crate) fn new(source: Box<dyn TokenSource>) -> Self {
        Self {
            source,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// A bearer token valid for at least the renewal margin (fetched when needed).
    pub(crate) async fn bearer(&self, http: &RestClient) -> Result<Zeroizing<String>, Failure> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref() {
            if t.expires_at > Instant::now() + TOKEN_RENEW_MARGIN {
                return Ok(t.secret.clone());
            }
        }
        // Whatever keeps Kapsule from getting a token, short of an outage, is a credential problem.
        let fresh = self.source.fetch(http).await.map_err(|f| match f.kind {
            KmsErrorKind::Transient => f,
            _ => Failure {
                kind: KmsErrorKind::PermissionDenied,
                message: format!("cannot obtain an access token: {}", f.message),
                ..f
            },
        })?;
        let secret = fresh.secret.clone();
        *current = Some(fresh);
        Ok(secret)
    }

    /// Forgets the cached token (after the KMS answered 401 with it).
    pub(crate) async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

/// The bytes of the string `field` of the JSON answer `v`, decoded by `decode` (the service's
/// base64 flavour) into zeroized storage; a missing or undecodable field is an `other` error
/// naming `what` and the field.
pub(crate) fn base64_field(
    key_id: &str,
    v: &Value,
    field: &str,
    what: &str,
    decode: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    v[field]
        .as_str()
        .and_then(decode)
        .map(Zeroizing::new)
        .ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                format!("{what}: no base64 '{field}' in the answer"),
            )
        })
}

/// One call of a REST back end, for [`RestBackend::call`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestCall<'a> {
    /// The service, for the final error (`Key Vault`, `Cloud KMS`).
    pub service: &'a str,
    /// The Kapsule key id the call is for (empty when it is for none, as a listing).
    pub key_id: &'a str,
    /// The operation, for messages (`wrapkey`, `encrypt`, `get key`).
    pub what: &'a str,
    /// The full URL.
    pub url: &'a str,
    /// Query parameters added to the URL.
    pub query: &'a [(&'a str, &'a str)],
    /// The JSON body of a `POST`; `None` sends a `GET`.
    pub body: Option<&'a serde_json::Value>,
}

/// The connection of a REST back end: its HTTPS client, its cached bearer token and its retry
/// policy.
pub(crate) struct RestBackend {
    http: RestClient,
    tokens: TokenCache,
    policy: RetryPolicy,
}

impl std::fmt::Debug for RestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestBackend")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RestBackend {
    /// A client trusting `ca_cert` besides the web PKI roots, with the back end's `timeout_ms`
    /// and `retries`, getting its tokens from `tokens`. Reads `ca_cert`; makes no network call.
    pub(crate) fn new(
        ca_cert: Option<&Path>,
        timeout_ms: u64,
        retries: u32,
        tokens: Box<dyn TokenSource>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: RestClient::new(ca_cert, Duration::from_millis(timeout_ms))?,
            tokens: TokenCache::new(tokens),
            policy: RetryPolicy::from_config(timeout_ms, retries),
        })
    }

    /// Makes `call` with a bearer token under the shared timeouts and retries
    /// ([`call_with_retries`]) and returns the JSON answer. A 401 drops the cached token (it may
    /// have been revoked or have expired early) and is retried with a fresh one; `refine` may
    /// reclassify any other failure (such as a 400 that means a bad ciphertext); `hint` is
    /// appended to the final error's message, as [`call_with_retries`] does.
    pub(crate) async fn call(
        &self,
        call: RestCall<'_>,
        hint: impl Fn(KmsErrorKind) -> String,
        refine: impl Fn(Failure) -> Failure,
    ) -> Result<Value, KmsError> {
        let body = call.body.map(Value::to_string);
        call_with_retries(call.service, call.key_id, self.policy, hint, || {
            let (refine, body) = (&refine, &body);
            async move {
                let token = self.tokens.bearer(&self.http).await?;
                let request = match body {
                    None => self.http.http().get(call.url),
                    Some(body) => self
                        .http
                        .http()
                        .post(call.url)
                        .header("content-type", "application/json")
                        .body(body.clone()),
                };
                let request = request.query(call.query).bearer_auth(token.as_str());
                match self.http.send_json(call.what, request).await {
                    Err(mut f) if f.status == Some(401) => {
                        self.tokens.invalidate().await;
                        f.retry = true;
                        Err(f)
                    }
                    Err(f) => Err(refine(f)),
                    ok => ok,
                }
            }
        })
        .await
    }
}

/// A secret read from a file (trimmed) or an environment variable; the file wins.
pub(crate) fn read_secret(
    file: Option<&PathBuf>,
    env: Option<&str>,
    what: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let raw = match (file, env) {
        (Some(f), _) => Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("{what}: reading {}", f.display()))?,
        ),
        (None, Some(var)) => Zeroizing::new(
            std::env::var(var)
                .with_context(|| format!("{what}: environment variable {var} is not set"))?,
        ),
        (None, None) => anyhow::bail!("{what}: neither a file nor an environment variable is set"),
    };
    let secret = Zeroizing::new(raw.trim().to_owned());
    anyhow::ensure!(!secret.is_empty(), "{what} is empty");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_error_bodies_are_classified_without_echoing_more_than_the_error() {
        let f = classify_status(
            400,
            r#"{"error":{"code":400,"message":"version 3 is not enabled","status":"FAILED_PRECONDITION"}}"#,
        );
        assert_eq!(
            f.message,
            "HTTP 400: FAILED_PRECONDITION version 3 is not enabled"
        );
        let f = classify_status(
            429,
            r#"{"error":{"code":"Throttled","message":"Request was not processed"}}"#,
        );
        assert!(f.retry && f.kind == KmsErrorKind::Transient);
        assert_eq!(f.message, "HTTP 429: Throttled Request was not processed");
        let f = classify_status(
            400,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret"}"#,
        );
        assert_eq!(f.kind, KmsErrorKind::Other);
        assert!(f.message.contains("AADSTS7000215"), "{}", f.message);
        assert_eq!(
            classify_status(403, "").kind,
            KmsErrorKind::PermissionDenied
        );
        assert_eq!(classify_status(404, "{}").kind, KmsErrorKind::UnknownKey);
        let long = classify_status(500, &"x\n".repeat(1000));
        assert!(long.message.len() < 700 && !long.message.contains('\n'));
    }

    #[test]
    fn tokens_parse_with_numeric_or_string_lifetimes() {
        let t = parse_token(
            "t",
            &serde_json::json!({"access_token": "abc", "expires_in": "3599"}),
        )
        .unwrap();
        assert!(t.expires_at > Instant::now() + Duration::from_secs(3500));
        assert!(!format!("{t:?}").contains("abc"));
        let t = parse_token(
            "t",
            &serde_json::json!({"access_token": "abc", "expires_in": 60}),
        )
        .unwrap();
        assert!(t.expires_at < Instant::now() + Duration::from_secs(61));
        assert_eq!(
            parse_token("t", &serde_json::json!({"token_type": "Bearer"}))
                .unwrap_err()
                .kind,
            KmsErrorKind::PermissionDenied
        );
    }

    struct Counting(std::sync::atomic::AtomicU32, u64);

    #[async_trait]
    impl TokenSource for Counting {
        async fn fetch(&self, _: &RestClient) -> Result<AccessToken, Failure> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(AccessToken {
                secret: Zeroizing::new(format!("token-{n}")),
                expires_at: Instant::now() + Duration::from_secs(self.1),
            })
        }
    }

    #[tokio::test]
    async fn tokens_are_reused_until_close_to_expiry_and_after_invalidation_refetched() {
        let http = RestClient::new(None, Duration::from_secs(1)).unwrap();
        let cache = TokenCache::new(Box::new(Counting(Default::default(), 3600)));
        assert_eq!(*cache.bearer(&http).await.unwrap(), "token-0");
        assert_eq!(*cache.bearer(&http).await.unwrap(), "token-0");
        cache.invalidate().await;
        assert_eq!(*cache.bearer(&http).await.unwrap(), "token-1");
        // A token inside the renewal margin is replaced at once.
        let short = TokenCache::new(Box::new(Counting(Default::default(), 60)));
        assert_eq!(*short.bearer(&http).await.unwrap(), "token-0");
        assert_eq!(*short.bearer(&http).await.unwrap(), "token-1");
    }
}
