//! The `schema_registry:` section ([`SchemaRegistryConfig`]) and its start-up checks.

use std::path::PathBuf;

use serde::Deserialize;

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
