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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{avro, json_schema, protobuf, SchemaError, SchemaListing};
use crate::plan::FieldSelection;

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_cache_bytes() -> usize {
    16 << 20
}

/// The `schema_registry:` section: where writer schemas come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://registry:8081` or
    /// `http://apicurio:8080/apis/ccompat/v7`.
    pub url: String,
    /// User name for HTTP basic authentication (with `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the basic-authentication password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Environment variable holding a bearer token (exclusive with `username`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// PEM file of the CA that signed the registry's certificate (default: the web PKI roots).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Deadline of one schema fetch in milliseconds (default 5000, 100..=60000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most bytes of schema text kept parsed in memory (default 16 MiB); least recently used
    /// schemas are dropped beyond it, and a single larger schema is refused.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
}

impl SchemaRegistryConfig {
    /// Pushes every problem of this section into `problems`, under `path`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match url::Url::parse(&self.url) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => problems.push(format!(
                "{path}.url: credentials in the URL; use `username` + `password_env` or `token_env`"
            )),
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => problems.push(format!(
                "{path}.url: scheme `{}` is not http or https",
                u.scheme()
            )),
            Err(e) => problems.push(format!("{path}.url: `{}` is not a URL: {e}", self.url)),
        }
        if self.username.is_some() != self.password_env.is_some() {
            problems.push(format!(
                "{path}: basic authentication needs both `username` and `password_env`"
            ));
        }
        if self.username.is_some() && self.token_env.is_some() {
            problems.push(format!(
                "{path}: choose basic authentication (`username`) or a bearer token (`token_env`), not both"
            ));
        }
        for var in [&self.password_env, &self.token_env].into_iter().flatten() {
            if std::env::var_os(var).is_none() {
                problems.push(format!("{path}: environment variable `{var}` is not set"));
            }
        }
        if let Some(ca) = &self.ca_cert {
            if !ca.is_file() {
                problems.push(format!("{path}.ca_cert: `{}` is not a file", ca.display()));
            }
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            problems.push(format!(
                "{path}.timeout_ms: {} is outside 100..=60000",
                self.timeout_ms
            ));
        }
        if self.cache_bytes < 64 << 10 {
            problems.push(format!(
                "{path}.cache_bytes: {} is below 65536",
                self.cache_bytes
            ));
        }
    }
}

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

/// The schema language of a registered schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFormat {
    /// Apache Avro (`schemaType` absent or `AVRO`).
    Avro,
    /// Protocol Buffers (`PROTOBUF`).
    Protobuf,
    /// JSON Schema (`JSON`).
    Json,
}

/// A writer schema parsed for walking.
enum Parsed {
    Avro(Arc<avro::AvroSchema>),
    Json(json_schema::JsonSchema),
    Protobuf(Arc<protobuf::ProtoSchema>),
}

/// A selection resolved against one schema: what the walker looks for.
pub enum Compiled {
    /// Avro targets.
    Avro(avro::Targets),
    /// JSON pointers and names.
    Json(json_schema::Targets),
    /// Protobuf targets.
    Protobuf(protobuf::Targets),
}

/// Most schemas a schema may reference, directly and through their own references.
pub const MAX_REFERENCES: usize = 32;

/// A schema another one references, as fetched (dependencies before their dependents).
#[derive(Debug, Clone)]
pub struct ReferencedSchema {
    /// The reference's `name`: an Avro full type name, a Protobuf import path, the URI a JSON
    /// Schema `$ref` names it by.
    pub name: String,
    /// Subject and version it was registered under (for messages).
    pub subject: String,
    /// Version under `subject`.
    pub version: i64,
    /// `schemaType` as the registry returned it (`None` for Avro).
    pub schema_type: Option<String>,
    /// Schema text.
    pub text: String,
}

/// Selections resolved per schema: a handful of rules at most.
const MAX_COMPILED_PER_SCHEMA: usize = 16;

/// One registered schema, parsed, with its resolved selections.
pub struct RegisteredSchema {
    /// Schema id.
    pub id: u32,
    /// Schema language.
    pub format: SchemaFormat,
    /// Subject and version the schema is registered under, when the registry said
    /// (`GET /schemas/ids/{id}/versions`, first entry); `None` for a schema parsed without one.
    pub registered_as: Option<(String, u32)>,
    /// Bytes of schema text (references included) and of the field listing: what the schema
    /// counts against `cache_bytes`.
    text_len: usize,
    parsed: Parsed,
    compiled: Mutex<Vec<(FieldSelection, Resolution)>>,
    /// Every field with its tags ([`RegisteredSchema::fields`]).
    listing: Arc<SchemaListing>,
}

/// A selection resolved against a schema, or why it does not fit.
type Resolution = Result<Arc<Compiled>, String>;

impl std::fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("id", &self.id)
            .field("format", &self.format)
            .field("text_len", &self.text_len)
            .finish()
    }
}

impl RegisteredSchema {
    /// Parses a schema as the registry returned it (`schemaType` as sent, `None` for Avro).
    pub fn parse(id: u32, schema_type: Option<&str>, text: &str) -> Result<Self, RegistryError> {
        Self::parse_with_references(id, schema_type, text, &[])
    }

    /// Parses a schema with the schemas it references (`references`, dependencies before their
    /// dependents, as [`SchemaRegistry`] fetches them): Avro named types and Protobuf messages
    /// and enums they define are known to `text`; a JSON Schema's `$ref`s may name them.
    pub fn parse_with_references(
        id: u32,
        schema_type: Option<&str>,
        text: &str,
        references: &[ReferencedSchema],
    ) -> Result<Self, RegistryError> {
        let unusable = |message: String| RegistryError::Unusable { id, message };
        let kind = schema_type.unwrap_or("AVRO");
        for r in references {
            let rk = r.schema_type.as_deref().unwrap_or("AVRO");
            if rk != kind {
                return Err(unusable(format!(
                    "a {kind} schema references `{}` (subject `{}` version {}), which is {rk}",
                    r.name, r.subject, r.version
                )));
            }
        }
        fn in_reference(id: u32, r: &ReferencedSchema) -> impl Fn(String) -> RegistryError + '_ {
            move |e: String| RegistryError::Unusable {
                id,
                message: format!(
                    "referenced schema `{}` (subject `{}` version {}): {e}",
                    r.name, r.subject, r.version
                ),
            }
        }
        let (format, parsed) = match kind {
            "AVRO" => {
                let mut parser = avro::Parser::default();
                for r in references {
                    parser.definitions(&r.text).map_err(in_reference(id, r))?;
                }
                (
                    SchemaFormat::Avro,
                    Parsed::Avro(Arc::new(parser.finish(text).map_err(unusable)?)),
                )
            }
            "JSON" => {
                let named: Vec<(&str, &str)> = references
                    .iter()
                    .map(|r| (r.name.as_str(), r.text.as_str()))
                    .collect();
                (
                    SchemaFormat::Json,
                    Parsed::Json(json_schema::JsonSchema::parse(text, &named).map_err(unusable)?),
                )
            }
            "PROTOBUF" => {
                let mut imports = Vec::with_capacity(references.len());
                for r in references {
                    imports
                        .push(protobuf::ProtoSchema::read(&r.text).map_err(in_reference(id, r))?);
                }
                (
                    SchemaFormat::Protobuf,
                    Parsed::Protobuf(Arc::new(
                        protobuf::ProtoSchema::parse_with_imports(text, imports)
                            .map_err(unusable)?,
                    )),
                )
            }
            other => return Err(unusable(format!("unknown schemaType `{other}`"))),
        };
        // Listed now, once per schema id, so its size counts against the cache's budget.
        let listing = Arc::new(match &parsed {
            Parsed::Avro(s) => s.list_fields(),
            Parsed::Json(s) => s.list_fields(),
            Parsed::Protobuf(s) => s.list_fields(),
        });
        Ok(Self {
            id,
            format,
            registered_as: None,
            text_len: text.len()
                + references.iter().map(|r| r.text.len()).sum::<usize>()
                + listing.bytes(),
            parsed,
            compiled: Mutex::new(Vec::new()),
            listing,
        })
    }

    /// Every field path of the schema with its tags and kind (bounded, see
    /// [`SchemaListing`]), listed when the schema was parsed.
    pub fn fields(&self) -> &Arc<SchemaListing> {
        &self.listing
    }

    /// `selection` resolved against this schema, once per selection: a path that is not in the
    /// schema or a selected field that is not a string or bytes is an error naming the field.
    pub fn compiled(&self, selection: &FieldSelection) -> Result<Arc<Compiled>, SchemaError> {
        let selection_err = |message: String| SchemaError::Selection {
            id: self.id,
            message,
        };
        if let Some((_, r)) = self.compiled.lock().iter().find(|(s, _)| s == selection) {
            return r.clone().map_err(selection_err);
        }
        let r = match &self.parsed {
            Parsed::Avro(s) => avro::Targets::resolve(s, selection).map(Compiled::Avro),
            Parsed::Json(s) => json_schema::Targets::resolve(s, selection).map(Compiled::Json),
            Parsed::Protobuf(s) => protobuf::Targets::resolve(s, selection).map(Compiled::Protobuf),
        }
        .map(Arc::new);
        let mut cache = self.compiled.lock();
        if cache.len() >= MAX_COMPILED_PER_SCHEMA {
            cache.clear();
        }
        cache.push((selection.clone(), r.clone()));
        r.map_err(selection_err)
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
}

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
            }),
        })
    }

    /// The writer schema with this id: from the cache, else fetched (within `timeout_ms`),
    /// parsed and cached.
    pub async fn schema(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        if let Some(s) = self.cache.lock().entries.get(&id) {
            return Ok(s.clone());
        }
        let s = Arc::new(self.fetch(id).await?);
        let mut cache = self.cache.lock();
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
        // Where the schema is registered, asked alongside its references: only for policies
        // (`describe-schema`), so a failure leaves it unknown rather than failing the fetch.
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
        schema.registered_as = registered_as;
        Ok(schema)
    }

    /// The first subject and version schema `id` is registered under
    /// (`GET {url}/schemas/ids/{id}/versions`); `None` when the registry does not say.
    async fn registered_as(&self, id: u32, id_text: &str) -> Option<(String, u32)> {
        #[derive(Deserialize)]
        struct SubjectVersion {
            subject: String,
            version: u32,
        }
        match self
            .get_json::<Vec<SubjectVersion>>(id, &["schemas", "ids", id_text, "versions"], None)
            .await
        {
            Ok(v) => v.into_iter().next().map(|sv| (sv.subject, sv.version)),
            Err(e) => {
                tracing::debug!(schema_id = id, error = %e, "subject and version of a schema unknown");
                None
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
