//! The `admin:` section of the configuration: where the admin endpoint listens and how it is
//! protected. Validated by [`AdminConfig::validate`], which the aggregate
//! [`crate::config::Config`] calls.

use std::net::SocketAddr;

use serde::Deserialize;

/// Admin endpoint settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint (default `127.0.0.1:9190`).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Environment variable holding the bearer token that mutating endpoints
    /// (`POST /policies/reload`) require. A token (this or `token_file`) is mandatory when
    /// `listen` is not a loopback address; when set, it is required on loopback too.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding that bearer token (read at start-up). Exclusive with `token_env`.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// Admin connections served at once (default 16); more are answered 503 and closed.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Adds per-principal families to `/metrics` (`kapsule_principal_requests`,
    /// `kapsule_principal_bytes`; default off).
    #[serde(default)]
    pub principal_metrics: bool,
    /// Most distinct principal labels (default 100); later principals are counted as `other`.
    #[serde(default = "default_max_principal_labels")]
    pub max_principal_labels: usize,
    /// `GET /metrics` and `GET /policies` require the bearer token too (default off: only
    /// `POST /policies/reload` does). Needs `token_env` or `token_file`. `/livez` and `/readyz`
    /// stay open for probes.
    #[serde(default)]
    pub require_token_for_reads: bool,
    /// Host names (without port) accepted in a request's `Host` header besides IP addresses and
    /// `localhost`, e.g. the Service name a scraper uses. Any other name is refused with 421
    /// (DNS rebinding). See docs/security.md.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: None,
            token_file: None,
            max_connections: default_admin_max_connections(),
            principal_metrics: false,
            max_principal_labels: default_max_principal_labels(),
            require_token_for_reads: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// True when `listen` parses as a loopback socket address (127.0.0.0/8 or ::1).
    pub fn is_loopback(&self) -> bool {
        self.listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// The configured bearer token, trimmed (`None` when neither source is set).
    pub fn read_token(&self) -> Result<Option<zeroize::Zeroizing<String>>, String> {
        let raw = match (&self.token_env, &self.token_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| format!("admin.token_env: environment variable `{var}` is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("admin.token_file: cannot read {}: {e}", file.display()))?,
            (None, None) => return Ok(None),
        };
        let token = zeroize::Zeroizing::new(raw.trim().to_owned());
        drop(zeroize::Zeroizing::new(raw));
        if token.len() < 16 {
            return Err(
                "admin token: must be at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
            );
        }
        Ok(Some(token))
    }

    /// Pushes every problem of the `admin:` section into `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "admin.listen: `{}` is not an IP:port socket address (e.g. 127.0.0.1:9190)",
                self.listen
            ));
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            problems.push("admin: set only one of token_env and token_file".into());
        }
        if self.principal_metrics && self.max_principal_labels == 0 {
            problems.push("admin.max_principal_labels: must be at least 1".into());
        }
        if self.max_connections == 0 {
            problems.push("admin.max_connections: must be at least 1".into());
        }
        for host in &self.allowed_hosts {
            let bad = host.is_empty()
                || host.contains(':')
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if bad {
                problems.push(format!(
                    "admin.allowed_hosts: `{}` is not a host name (letters, digits, `-`, `.`; no port)",
                    host.escape_debug()
                ));
            }
        }
        let no_token = self.token_env.is_none() && self.token_file.is_none();
        if self.require_token_for_reads && no_token {
            problems.push(
                "admin.require_token_for_reads: needs a token; set admin.token_env or admin.token_file"
                    .into(),
            );
        }
        match self.read_token() {
            Err(e) => problems.push(e),
            Ok(None) if self.listen.parse::<SocketAddr>().is_ok() && !self.is_loopback() => {
                problems.push(format!(
                    "admin.listen: `{}` is not a loopback address, so POST /policies/reload must be \
                     protected: set admin.token_env or admin.token_file to a bearer token",
                    self.listen
                ))
            }
            Ok(_) => {}
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9190".into()
}

fn default_max_principal_labels() -> usize {
    100
}

fn default_admin_max_connections() -> usize {
    16
}
