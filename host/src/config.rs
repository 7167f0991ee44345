//! Configuration: a YAML file (`kapsule.yaml`), overridable by command-line flags.
//!
//! Loading never stops at the first problem: [`Config::load`] expands `${ENV}` references, parses
//! with unknown fields rejected, then validates and returns *every* problem found, each with its
//! YAML path, so an operator fixes a config in one round.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::admin::config::AdminConfig;
use crate::crypto::keys::DekConfig;
use crate::crypto::record::RecordFormat;
use crate::kms::KmsConfig;
use crate::policy::config::PolicyConfig;
use crate::proxy::config::{ProxyConfig, RecordsMode};
use crate::proxy::proxy_protocol::ProxyProtocol;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners and upstream.
    pub proxy: ProxyConfig,
    /// Admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Record handling when no encryption applies.
    #[serde(default)]
    pub records: RecordsMode,
    /// Key management: where KEKs live (`type: local` or `type: vault`). Required when any rule
    /// or policy binding may encrypt.
    #[serde(default)]
    pub kms: Option<KmsConfig>,
    /// Data-key lifecycle: rotation limits and caches.
    #[serde(default)]
    pub deks: DekConfig,
    /// How encrypted records are written (`whole_value_revision`).
    #[serde(default)]
    pub record_format: RecordFormat,
    /// Which topics are encrypted, how, and under which key: built-in rules and Wasm bindings.
    /// Without this section Kapsule encrypts nothing.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Where writer schemas come from, for rules that encrypt fields of schema-encoded values
    /// (`value: {schema: ...}`). See docs/schema-fields.md.
    #[serde(default)]
    pub schema_registry: Option<crate::schema::registry::SchemaRegistryConfig>,
}

impl Config {
    /// Settings that are valid alone but break, or risk data, when Kapsule runs behind a load
    /// balancer as one of several instances (signalled by `proxy_protocol: v2`,
    /// `advertised_port_base` or `sni`). Logged as warnings at start-up; each says what to do.
    pub fn fleet_warnings(&self) -> Vec<String> {
        let p = &self.proxy;
        let behind_lb = p.proxy_protocol == ProxyProtocol::V2
            || p.advertised_port_base.is_some()
            || p.sni.is_some();
        let mut out = Vec::new();
        if !behind_lb {
            return out;
        }
        if let Some(crate::kms::KmsConfig::Local(local)) = &self.kms {
            out.push(format!(
                "kms.type local behind a load balancer: KEKs live in this instance's file {}; \
                 instances that do not share that exact file hold different KEKs under the same \
                 key id{} and cannot decrypt each other's records. Use kms.type vault (one \
                 transit engine shared by every instance) for more than one instance",
                local.key_file.display(),
                if local.auto_create_keys {
                    " (auto_create_keys makes one per instance)"
                } else {
                    ""
                }
            ));
        }
        if p.sni.is_none() && p.proxy_protocol == ProxyProtocol::V2 {
            if p.node_port_base.is_none() {
                out.push(
                    "proxy.proxy_protocol is v2 but proxy.node_port_base is unset: per-broker \
                     ports are chosen by the OS and differ per instance, so a load balancer \
                     cannot forward to them. Set proxy.node_port_base (and \
                     proxy.advertised_port_base if the load balancer's ports differ)"
                        .into(),
                );
            }
            if p.advertised_host.is_none() {
                out.push(
                    "proxy.proxy_protocol is v2 but proxy.advertised_host is unset: clients are \
                     told this instance's own address, bypass the load balancer and are refused \
                     for sending no PROXY header. Set proxy.advertised_host to the load \
                     balancer's name"
                        .into(),
                );
            }
        }
        out
    }
}

/// Every problem found in a configuration, each prefixed with its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// A passthrough configuration from command-line flags alone.
    pub fn from_flags(listen: String, upstream: String) -> Self {
        Self {
            proxy: ProxyConfig::from_flags(listen, upstream),
            admin: AdminConfig::default(),
            records: RecordsMode::default(),
            kms: None,
            deks: DekConfig::default(),
            record_format: RecordFormat::default(),
            policy: None,
            schema_registry: None,
        }
    }

    /// Reads, expands, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![format!(
                "cannot read config file {}: {e}",
                path.display()
            )])
        })?;
        Self::parse(&text)
    }

    /// Expands `${ENV}` references, parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let (expanded, mut problems) = expand_env(text, |name| std::env::var(name).ok());
        let parsed: Result<Config, _> =
            serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(&expanded));
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                problems.push(if path == "." || path.is_empty() {
                    format!("{inner}")
                } else {
                    format!("{path}: {inner}")
                });
                return Err(ConfigErrors(problems));
            }
        };
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Applies command-line overrides, then re-validates.
    pub fn apply_overrides(
        &mut self,
        listen: Option<String>,
        upstream: Option<String>,
        admin: Option<String>,
    ) -> Result<(), ConfigErrors> {
        if let Some(l) = listen {
            self.proxy.listen = l;
        }
        if let Some(u) = upstream {
            self.proxy.upstream = u;
        }
        if let Some(a) = admin {
            self.admin.listen = a;
        }
        let mut problems = Vec::new();
        self.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Pushes every semantic problem into `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        self.proxy.validate(problems);
        if let Some(kms) = &self.kms {
            kms.validate("kms", problems);
        }
        self.deks.validate("deks", problems);
        self.record_format.validate("record_format", problems);
        if let Some(policy) = &self.policy {
            policy.validate("policy", problems);
            let may_encrypt = !policy.rules.is_empty() || !policy.bindings.is_empty();
            let schema_rules: Vec<usize> = policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(
                        r.value,
                        crate::policy::config::ValuePartConfig::SchemaFields(_)
                    )
                })
                .map(|(i, _)| i)
                .collect();
            if let (Some(i), None) = (schema_rules.first(), &self.schema_registry) {
                problems.push(format!(
                    "schema_registry: missing; policy.rules[{i}] encrypts schema fields, so \
                     Kapsule needs the registry the producers use (e.g. `schema_registry: {{ url: \
                     http://registry:8081 }}`)"
                ));
            }
            if may_encrypt && self.kms.is_none() {
                problems.push(
                    "kms: missing; policy rules or bindings can encrypt, so a KMS is needed (e.g. `kms: { type: local, key_file: keys.json, auto_create_keys: true }`)"
                        .into(),
                );
            }
        }
        if let Some(r) = &self.schema_registry {
            r.validate("schema_registry", problems);
        }
        self.admin.validate(problems);
    }
}

/// Template placeholders the config keeps for later expansion (not environment variables).
const TEMPLATE_PLACEHOLDERS: &[&str] = &["topic"];

/// Replaces `${NAME}` with the value of `lookup(NAME)`; `$${` escapes a literal `${`.
/// `${topic}` is a key-id template placeholder and is left as it is.
/// Returns the text and one problem per unset variable.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    let name = &body[..end];
                    if TEMPLATE_PLACEHOLDERS.contains(&name) {
                        out.push_str(&after[..end + 3]);
                        rest = &body[end + 1..];
                        continue;
                    }
                    let line = text[..text.len() - after.len()].lines().count().max(1);
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => problems.push(format!(
                            "line {line}: environment variable `{name}` is referenced but not set"
                        )),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str(after);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::sasl::AuthenticationMode;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("proxy:\n  listen: 127.0.0.1:9192\n  upstream: localhost:9092\n")
            .unwrap();
        assert_eq!(c.records, RecordsMode::Passthrough);
        assert_eq!(c.proxy.max_frame_bytes, 100 * 1024 * 1024);
        assert_eq!(c.admin.listen, "127.0.0.1:9190");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let err = Config::parse("proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  lisen: x\n")
            .unwrap_err();
        assert!(
            err.0[0].contains("proxy") && err.0[0].contains("lisen"),
            "{err}"
        );
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let err = Config::parse(
            "proxy:\n  listen: nowhere\n  upstream: no-port\n  max_in_flight: 0\nadmin:\n  listen: bad\n",
        )
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 4, "{all}");
        for path in [
            "proxy.listen",
            "proxy.upstream",
            "proxy.max_in_flight",
            "admin.listen",
        ] {
            assert!(all.contains(path), "missing {path} in {all}");
        }
    }

    #[test]
    fn worker_threads_default_to_the_runtime_and_zero_is_refused() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: localhost:9092\n";
        assert_eq!(Config::parse(base).unwrap().proxy.worker_threads, None);
        let one = Config::parse(&format!("{base}  worker_threads: 1\n")).unwrap();
        assert_eq!(one.proxy.worker_threads, Some(1));
        for bad in ["0", "1025"] {
            let err = Config::parse(&format!("{base}  worker_threads: {bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("proxy.worker_threads"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn env_references_expand_and_missing_ones_are_reported() {
        let (out, problems) = expand_env("a: ${A}\nb: ${MISSING}\nc: $${LITERAL}\nd: $5", |n| {
            (n == "A").then(|| "one".to_string())
        });
        assert_eq!(out, "a: one\nb: \nc: ${LITERAL}\nd: $5");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("MISSING") && problems[0].contains("line 2"));
    }

    #[test]
    fn encryption_sections_are_validated_together() {
        let err = Config::parse(
            "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\npolicy:\n  rules:\n    - topics: orders\n      key_id: kek-${topic}\n      value: whole\ndeks:\n  refresh_ahead_fraction: 7\n",
        );
        // `${topic}` is not an environment variable: it must survive expansion for the template.
        let all = err.unwrap_err().to_string();
        assert!(all.contains("kms: missing"), "{all}");
        assert!(all.contains("deks.refresh_ahead_fraction"), "{all}");
    }

    #[test]
    fn the_whole_value_revision_defaults_to_3_and_only_1_or_3_is_accepted() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.record_format.whole_value_revision, 3);
        let c = Config::parse(&format!(
            "{base}record_format:\n  whole_value_revision: 1\n"
        ))
        .unwrap();
        assert_eq!(c.record_format.whole_value_revision, 1);
        for bad in ["2", "4", "0"] {
            let err = Config::parse(&format!(
                "{base}record_format:\n  whole_value_revision: {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("record_format.whole_value_revision") && err.contains("use 3"),
                "{err}"
            );
        }
        let err = Config::parse(&format!("{base}record_format:\n  revision: 1\n")).unwrap_err();
        assert!(err.to_string().contains("revision"), "{err}");
    }

    #[test]
    fn authentication_mode_and_principal_metrics_are_validated() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.proxy.authentication, AuthenticationMode::Optional);
        assert!(!c.admin.principal_metrics);
        let c = Config::parse(&format!("{base}  authentication: required\n")).unwrap();
        assert_eq!(c.proxy.authentication, AuthenticationMode::Required);
        let err = Config::parse(&format!("{base}  authentication: yes\n")).unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
        let err = Config::parse(&format!(
            "{base}admin:\n  principal_metrics: true\n  max_principal_labels: 0\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("admin.max_principal_labels"),
            "{err}"
        );
    }

    #[test]
    fn admin_off_loopback_needs_a_token_and_every_problem_is_reported() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let err = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  max_connections: 0\n"
        ))
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 2, "{all}");
        assert!(
            all.contains("not a loopback address") && all.contains("token_env"),
            "{all}"
        );
        assert!(all.contains("admin.max_connections"), "{all}");

        let err = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  token_env: KAPSULE_TEST_UNSET_ADMIN_TOKEN\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("KAPSULE_TEST_UNSET_ADMIN_TOKEN"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let c = Config::parse(&format!(
            "{base}admin:\n  listen: 0.0.0.0:9190\n  token_file: {}\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(
            c.admin.read_token().unwrap().unwrap().as_str(),
            "0123456789abcdef0123"
        );
        std::fs::write(&file, "short").unwrap();
        assert!(c.admin.read_token().unwrap_err().contains("16 characters"));
        // Loopback without a token is fine.
        let c = Config::parse(base).unwrap();
        assert!(c.admin.is_loopback() && c.admin.read_token().unwrap().is_none());
    }

    #[test]
    fn fleet_settings_are_validated_and_foot_guns_warned() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let err = Config::parse(&format!("{base}  advertised_port_base: 19000\n")).unwrap_err();
        assert!(
            err.to_string().contains("needs proxy.node_port_base"),
            "{err}"
        );
        let err = Config::parse(&format!(
            "{base}  node_port_base: 1000\n  advertised_port_base: 65000\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("exceeds port 65535"), "{err}");

        // Alone, nothing to warn about.
        assert!(Config::parse(base).unwrap().fleet_warnings().is_empty());
        // Behind a load balancer with OS-chosen ports, no advertised host and a local KMS.
        let c = Config::parse(&format!(
            "{base}  proxy_protocol: v2\nkms:\n  type: local\n  key_file: keys.json\n  auto_create_keys: true\n"
        ))
        .unwrap();
        let w = c.fleet_warnings().join("\n");
        for needle in [
            "kms.type local behind a load balancer",
            "auto_create_keys",
            "node_port_base is unset",
            "advertised_host is unset",
        ] {
            assert!(w.contains(needle), "missing {needle} in {w}");
        }
        // A correct fleet member: fixed ports, the load balancer's name, a shared KMS.
        let c = Config::parse(&format!(
            "{base}  proxy_protocol: v2\n  advertised_host: lb.example\n  node_port_base: 9300\n  advertised_port_base: 19300\nkms:\n  type: vault\n  address: https://vault:8200\n  token_env: VAULT_TOKEN\n"
        ))
        .unwrap();
        assert!(c.fleet_warnings().is_empty(), "{:?}", c.fleet_warnings());
        assert_eq!(c.proxy.advertised_port_base, Some(19300));
    }

    #[test]
    fn node_port_range_must_fit() {
        let err = Config::parse(
            "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  node_port_base: 65000\n  max_node_id: 1000\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("node_port_base"));
    }
}
