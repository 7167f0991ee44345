//! The Schema Registry client: writer schemas by id over the Confluent REST API
//! (`GET {url}/schemas/ids/{id}`), parsed once and kept in a cache bounded in bytes.
//!
//! Served by Confluent Schema Registry, Apicurio Registry (`/apis/ccompat/v7`), Karapace and
//! Redpanda. Every call has a deadline (`timeout_ms`); an unreachable registry, a timeout, HTTP
//! 429 or 5xx is [`RegistryError::Unavailable`] (the producer retries; nothing is forwarded), an
//! unknown id [`RegistryError::NotFound`]. Ids are immutable in the registry, so a cached schema
//! never goes stale; a new schema version has a new id, fetched on first sight.
//!
//! A schema with `references` (Avro named types of another subject, Protobuf imports, JSON
//! Schemas a `$ref` names) is parsed with the referenced schemas
//! (`GET {url}/subjects/{subject}/versions/{version}`, their own references followed
//! depth-first, each subject version fetched once), at most
//! [`MAX_REFERENCES`] of them, all within `cache_bytes`; they are cached with the schema that
//! needs them (their text counts towards its size), so they are fetched once per schema id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use zeroize::Zeroizing;

mod config;
mod registered;

pub use config::SchemaRegistryConfig;
pub use registered::{
    Compiled, ReferencedSchema, RegisteredSchema, SchemaFormat, MAX_REFERENCES, MAX_SUBJECTS,
};

/// Why a schema could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry did not answer in time, or answered 429/5xx: retriable, nothing forwarded.
    #[error("schema registry unavailable fetching schema id {id}: {message}")]
    Unavailable {
        /// Schema id.
        id: u32,
        /// What failed.
        message: String,
    },
    /// The registry has no schema with this id.
    #[error(
        "schema id {0} is not in the schema registry (produced with another registry, or the \
         schema was deleted)"
    )]
    NotFound(u32),
    /// The registry refused the request (authentication, permissions, other 4xx).
    #[error("schema registry refused fetching schema id {id}: {message}")]
    Refused {
        /// Schema id.
        id: u32,
        /// Status and body excerpt.
        message: String,
    },
    /// The schema cannot be used (unparsable, unsupported type, too large, too many
    /// references).
    #[error("schema id {id} cannot be used: {message}")]
    Unusable {
        /// Schema id.
        id: u32,
        /// What is wrong.
        message: String,
    },
}

impl RegistryError {
    /// True for [`RegistryError::Unavailable`].
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
enum Auth {
    None,
    Basic {
        username: String,
        password: Zeroizing<String>,
    },
    Bearer(Zeroizing<String>),
}

struct Cache {
    entries: lru::LruCache<u32, Arc<RegisteredSchema>>,
    bytes: usize,
    /// Ids whose fetch failed, with when and why ([`FAILURE_MEMORY`]).
    failures: HashMap<u32, (Instant, RegistryError)>,
}

/// How long a failed fetch is remembered: asking for that id again meanwhile fails at once with
/// the same error, instead of every batch (and the policy's `describe-schema` prefetch before
/// it) waiting `timeout_ms` again on a registry that is down. Recovery is seen within this long.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// Most failed ids remembered at once (a burst of unknown ids cannot grow the map).
const MAX_REMEMBERED_FAILURES: usize = 1024;

/// A Schema Registry client with a cache of parsed schemas (one per process).
pub struct SchemaRegistry {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    timeout: Duration,
    cache_bytes: usize,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base", &self.base.as_str())
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// One entry of a schema's `references`.
#[derive(Deserialize, Clone)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

impl SchemaRegistry {
    /// A client for `config` (validated); reads the credentials from the environment now.
    pub fn new(config: &SchemaRegistryConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading schema_registry.ca_cert {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .context("schema_registry.ca_cert holds no PEM certificate")?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let env = |var: &str| {
            std::env::var(var)
                .map(Zeroizing::new)
                .with_context(|| format!("environment variable `{var}` is not set"))
        };
        let auth = match (&config.username, &config.password_env, &config.token_env) {
            (Some(u), Some(p), _) => Auth::Basic {
                username: u.clone(),
                password: env(p)?,
            },
            (_, _, Some(t)) => Auth::Bearer(env(t)?),
            _ => Auth::None,
        };
        Ok(Self {
            http: b
                .build()
                .context("building the schema registry HTTP client")?,
            base: url::Url::parse(&config.url).context("schema_registry.url is not a URL")?,
            auth,
            timeout,
            cache_bytes: config.cache_bytes,
            cache: Mutex::new(Cache {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
                failures: HashMap::new(),
            }),
        })
    }

    /// The writer schema with this id: from the cache, else fetched (within `timeout_ms`),
    /// parsed and cached.
    pub async fn schema(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        {
            let mut cache = self.cache.lock();
            if let Some(s) = cache.entries.get(&id) {
                return Ok(s.clone());
            }
            if let Some((at, e)) = cache.failures.get(&id) {
                if at.elapsed() < FAILURE_MEMORY {
                    return Err(e.clone());
                }
                cache.failures.remove(&id);
            }
        }
        let fetched = self.fetch(id).await;
        let mut cache = self.cache.lock();
        let s = match fetched {
            Ok(s) => Arc::new(s),
            Err(e) => {
                if cache.failures.len() >= MAX_REMEMBERED_FAILURES {
                    cache
                        .failures
                        .retain(|_, (at, _)| at.elapsed() < FAILURE_MEMORY);
                    if cache.failures.len() >= MAX_REMEMBERED_FAILURES {
                        cache.failures.clear();
                    }
                }
                cache.failures.insert(id, (Instant::now(), e.clone()));
                return Err(e);
            }
        };
        cache.failures.remove(&id);
        if let Some(old) = cache.entries.put(id, s.clone()) {
            cache.bytes -= old.text_len;
        }
        cache.bytes += s.text_len;
        while cache.bytes > self.cache_bytes {
            match cache.entries.pop_lru() {
                Some((_, old)) => cache.bytes -= old.text_len,
                None => break,
            }
        }
        Ok(s)
    }

    /// The writer schema with this id if it is cached (never fetches).
    pub fn cached_schema(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.cache.lock().entries.get(&id).cloned()
    }

    /// A client of a registry that never answers (`127.0.0.1:9`, 500 ms deadline): tests
    /// preload the schemas they need, and any other id fails as the registry being down.
    #[cfg(test)]
    pub(crate) fn unreachable_for_tests() -> Self {
        Self::new(&SchemaRegistryConfig {
            url: "http://127.0.0.1:9".into(),
            username: None,
            password_env: None,
            token_env: None,
            ca_cert: None,
            timeout_ms: 500,
            cache_bytes: 1 << 20,
        })
        .expect("a plain http URL")
    }

    /// Number of schemas cached (diagnostics and tests).
    pub fn cached(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// Puts a schema known ahead into the cache, as if fetched (benchmarks and tests run
    /// without a registry this way).
    pub fn preload(&self, schema: RegisteredSchema) {
        let s = Arc::new(schema);
        let mut cache = self.cache.lock();
        if let Some(old) = cache.entries.put(s.id, s.clone()) {
            cache.bytes -= old.text_len;
        }
        cache.bytes += s.text_len;
    }

    async fn fetch(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        let id_text = id.to_string();
        let r: SchemaResponse = self
            .get_json(id, &["schemas", "ids", &id_text], None)
            .await?;
        // Where the schema is registered, asked alongside its references, for policies
        // (`describe-schema`). A registry that does not answer this fails the fetch like any
        // other outage (retriable, not cached), so a transient error is never cached with the
        // schema as "unknown subject"; one that does not know the endpoint leaves it unknown.
        let (references, registered_as) = tokio::join!(
            self.references(id, &r.references),
            self.registered_as(id, &id_text)
        );
        let mut schema = RegisteredSchema::parse_with_references(
            id,
            r.schema_type.as_deref(),
            &r.schema,
            &references?,
        )?;
        schema.registered_as = registered_as?;
        Ok(schema)
    }

    /// The subjects and versions schema `id` is registered under
    /// (`GET {url}/schemas/ids/{id}/versions`, at most [`MAX_SUBJECTS`]); none when the
    /// registry does not say (no such endpoint, refused, unreadable answer); an error only when
    /// it is unavailable (retriable).
    async fn registered_as(
        &self,
        id: u32,
        id_text: &str,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        #[derive(Deserialize)]
        struct SubjectVersion {
            subject: String,
            version: u32,
        }
        match self
            .get_json::<Vec<SubjectVersion>>(id, &["schemas", "ids", id_text, "versions"], None)
            .await
        {
            Ok(v) => Ok(v
                .into_iter()
                .take(MAX_SUBJECTS)
                .map(|sv| (sv.subject, sv.version))
                .collect()),
            Err(e) if e.is_retriable() => Err(e),
            Err(e) => {
                tracing::debug!(schema_id = id, error = %e, "subject and version of a schema unknown");
                Ok(Vec::new())
            }
        }
    }

    /// The schemas `refs` name, and theirs, depth-first with dependencies first, each subject
    /// version once; at most [`MAX_REFERENCES`], their text within `cache_bytes` altogether.
    async fn references(
        &self,
        id: u32,
        refs: &[Reference],
    ) -> Result<Vec<ReferencedSchema>, RegistryError> {
        // Iterative depth-first walk: (reference, its own references once fetched).
        let mut out: Vec<ReferencedSchema> = Vec::new();
        let mut seen: std::collections::HashSet<(String, i64)> = Default::default();
        let mut stack: Vec<(Reference, Option<SchemaResponse>)> =
            refs.iter().rev().map(|r| (r.clone(), None)).collect();
        let mut bytes = 0usize;
        while let Some((r, fetched)) = stack.pop() {
            match fetched {
                None => {
                    if seen.contains(&(r.subject.clone(), r.version)) {
                        continue;
                    }
                    if seen.len() >= MAX_REFERENCES {
                        return Err(RegistryError::Unusable {
                            id,
                            message: format!(
                                "references more than {MAX_REFERENCES} schemas (directly and \
                                 through their references)"
                            ),
                        });
                    }
                    seen.insert((r.subject.clone(), r.version));
                    let version = r.version.to_string();
                    let resp: SchemaResponse = self
                        .get_json(
                            id,
                            &["subjects", &r.subject, "versions", &version],
                            Some(&r),
                        )
                        .await?;
                    bytes += resp.schema.len();
                    if bytes > self.cache_bytes {
                        return Err(RegistryError::Unusable {
                            id,
                            message: format!(
                                "with its references larger than schema_registry.cache_bytes ({})",
                                self.cache_bytes
                            ),
                        });
                    }
                    let children: Vec<Reference> = resp.references.clone();
                    stack.push((r, Some(resp)));
                    stack.extend(children.into_iter().rev().map(|c| (c, None)));
                }
                Some(resp) => out.push(ReferencedSchema {
                    name: r.name,
                    subject: r.subject,
                    version: r.version,
                    schema_type: resp.schema_type,
                    text: resp.schema,
                }),
            }
        }
        Ok(out)
    }

    /// `GET {base}/{segments...}` (each segment percent-encoded) for a JSON answer (a schema
    /// object, a list of subject versions); `id` names the schema being fetched in errors,
    /// `reference` the referenced subject version when that is what is read.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        id: u32,
        segments: &[&str],
        reference: Option<&Reference>,
    ) -> Result<T, RegistryError> {
        let what = reference.map_or_else(String::new, |r| {
            format!(
                " (its reference `{}`: subject `{}` version {})",
                r.name, r.subject, r.version
            )
        });
        let unavailable = |message: String| RegistryError::Unavailable {
            id,
            message: format!("{message}{what}"),
        };
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::Refused {
                id,
                message: "schema_registry.url cannot have a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        let mut req = self.http.get(url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { username, password } => req.basic_auth(username, Some(password.as_str())),
            Auth::Bearer(t) => req.bearer_auth(t.as_str()),
        };
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| unavailable(format!("no answer within {} ms", self.timeout.as_millis())))?
            .map_err(|e| unavailable(without_url(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(self.timeout, read_limited(resp, self.cache_bytes))
            .await
            .map_err(|_| unavailable(format!("no answer within {} ms", self.timeout.as_millis())))?
            .map_err(|e| match e {
                ReadFail::Http(m) => unavailable(m),
                ReadFail::TooLarge => RegistryError::Unusable {
                    id,
                    message: format!(
                        "larger than schema_registry.cache_bytes ({})",
                        self.cache_bytes
                    ),
                },
            })?;
        if status.as_u16() == 404 && reference.is_none() {
            return Err(RegistryError::NotFound(id));
        }
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(RegistryError::Refused {
                id,
                message: format!("HTTP {status}: {excerpt}{what}"),
            });
        }
        serde_json::from_slice(&body).map_err(|e| RegistryError::Unusable {
            id,
            message: format!(
                "registry answer to `{}` is not as the Confluent API defines it{what}: {e}",
                segments.join("/")
            ),
        })
    }
}

enum ReadFail {
    Http(String),
    TooLarge,
}

/// Reads a response body, refusing more than `max` bytes.
async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadFail> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ReadFail::Http(without_url(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(ReadFail::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes (the URL carries no credentials: validation refuses them).
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests;
