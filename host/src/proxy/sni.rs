//! SNI routing (`proxy.sni`): the whole cluster behind the one TLS port `proxy.listen`.
//!
//! Rewritten metadata advertises broker `n` as `broker_host` with `$(nodeId)` replaced by `n`,
//! on the shared port (`advertised_port`, default the listen port). A client connecting to that
//! name sends it as the TLS server name (SNI); after the handshake [`SniConfig::route_for`] turns
//! it back into the broker. So one DNS wildcard (`*.kafka.example`), one certificate
//! (`*.kafka.example`) and one load-balancer port serve any number of brokers.
//!
//! * `bootstrap_host`, or **no server name at all** (a client that connects by IP address sends
//!   none), leads to the bootstrap broker (`proxy.upstream`). Bootstrap only needs *a* broker, so
//!   this is safe and keeps `kafka-console-producer --bootstrap-server 10.0.0.5:9092` working.
//! * A name that is neither: one WARN line naming the peer and the name, and the connection is
//!   closed (the client sees a disconnect and refreshes its metadata).
//!
//! Names compare case-insensitively (DNS names do). Node ids are decimal without sign or
//! leading zeros, so every broker has exactly one name.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

use super::Route;

/// The placeholder `broker_host` must contain.
pub const NODE_ID_PLACEHOLDER: &str = "$(nodeId)";

/// `proxy.sni`: route by TLS server name on the one listener `proxy.listen`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniConfig {
    /// Name clients bootstrap with, e.g. `kafka.example` (also reached without SNI).
    pub bootstrap_host: String,
    /// Name of broker `n`, with `$(nodeId)` standing for `n`, e.g.
    /// `broker-$(nodeId).kafka.example`.
    pub broker_host: String,
    /// Port advertised for every broker (default: the port of `proxy.listen`). Set it to the
    /// load balancer's port when clients reach Kapsule through one on another port.
    #[serde(default)]
    pub advertised_port: Option<u16>,
}

/// Why a TLS server name selects no broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "TLS server name `{name}` is neither proxy.sni.bootstrap_host `{bootstrap}` nor a broker name \
     of the form `{pattern}`"
)]
pub struct UnknownServerName {
    /// The name the client sent (control characters escaped).
    pub name: String,
    /// The configured bootstrap name.
    pub bootstrap: String,
    /// The configured broker pattern.
    pub pattern: String,
}

impl SniConfig {
    /// Appends one message per problem to `problems`; `path` prefixes each (`proxy.sni`).
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if !is_dns_name(&self.bootstrap_host) {
            problems.push(format!(
                "{path}.bootstrap_host: `{}` is not a DNS name (e.g. kafka.example)",
                self.bootstrap_host
            ));
        }
        match self.broker_host.matches(NODE_ID_PLACEHOLDER).count() {
            1 => {
                let sample = self.broker_name(0);
                if !is_dns_name(&sample) {
                    problems.push(format!(
                        "{path}.broker_host: `{}` does not give a DNS name (broker 0 would be `{sample}`)",
                        self.broker_host
                    ));
                } else if self.node_id_of(&self.bootstrap_host).is_some() {
                    problems.push(format!(
                        "{path}.bootstrap_host: `{}` is also a broker name of `{}`; pick a name \
                         outside the broker pattern",
                        self.bootstrap_host, self.broker_host
                    ));
                }
            }
            n => problems.push(format!(
                "{path}.broker_host: `{}` must contain {NODE_ID_PLACEHOLDER} exactly once (found {n}), \
                 e.g. broker-{NODE_ID_PLACEHOLDER}.kafka.example",
                self.broker_host
            )),
        }
        if self.advertised_port == Some(0) {
            problems.push(format!("{path}.advertised_port: must be 1..=65535"));
        }
    }

    /// The name advertised for broker `node_id`.
    pub fn broker_name(&self, node_id: i32) -> String {
        self.broker_host
            .replace(NODE_ID_PLACEHOLDER, &node_id.to_string())
    }

    /// The broker a connection is for, from the server name its TLS handshake carried.
    ///
    /// No server name or `bootstrap_host` → [`Route::Bootstrap`]; a broker name →
    /// [`Route::Node`]; anything else → [`UnknownServerName`] (the caller logs and closes).
    pub fn route_for(&self, server_name: Option<&str>) -> Result<Route, UnknownServerName> {
        let Some(name) = server_name else {
            return Ok(Route::Bootstrap);
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.eq_ignore_ascii_case(&self.bootstrap_host) {
            return Ok(Route::Bootstrap);
        }
        match self.node_id_of(name) {
            Some(id) => Ok(Route::Node(id)),
            None => Err(UnknownServerName {
                name: name.escape_default().to_string(),
                bootstrap: self.bootstrap_host.clone(),
                pattern: self.broker_host.clone(),
            }),
        }
    }

    /// The node id `name` stands for under `broker_host`, if it is a broker name.
    fn node_id_of(&self, name: &str) -> Option<i32> {
        let (prefix, suffix) = self.broker_host.split_once(NODE_ID_PLACEHOLDER)?;
        if name.len() <= prefix.len() + suffix.len()
            || !name.is_char_boundary(prefix.len())
            || !name.is_char_boundary(name.len() - suffix.len())
            || !name[..prefix.len()].eq_ignore_ascii_case(prefix)
            || !name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        {
            return None;
        }
        let digits = &name[prefix.len()..name.len() - suffix.len()];
        let canonical = digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        digits.parse().ok()
    }

    /// Problems with the certificate in `cert_file` for these names: one line per name its leaf
    /// certificate does not cover (a `*.kafka.example` wildcard covers both usual names). Checks
    /// `bootstrap_host` and broker 0 as a sample of the pattern. Logged as warnings at start-up;
    /// clients that verify host names would fail their handshake.
    pub fn certificate_warnings(&self, cert_file: &Path) -> Vec<String> {
        let leaf = match CertificateDer::pem_file_iter(cert_file).map(|mut it| it.next()) {
            Ok(Some(Ok(der))) => der,
            // Unreadable files are reported by the TLS set-up itself.
            _ => return Vec::new(),
        };
        let parsed = match rustls::server::ParsedCertificate::try_from(&leaf) {
            Ok(p) => p,
            Err(e) => {
                return vec![format!(
                    "proxy.sni: cannot read the names of {}: {e}",
                    cert_file.display()
                )]
            }
        };
        let mut out = Vec::new();
        for (what, name) in [
            ("bootstrap_host", self.bootstrap_host.clone()),
            ("broker_host (broker 0)", self.broker_name(0)),
        ] {
            let Ok(server_name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            if rustls::client::verify_server_name(&parsed, &server_name).is_err() {
                out.push(format!(
                    "proxy.sni.{what}: the certificate {} does not cover `{name}`; clients that \
                     verify host names will refuse the handshake. Use a certificate for \
                     `*.<domain>` or list every name as a subjectAltName",
                    cert_file.display()
                ));
            }
        }
        out
    }
}

/// A host name rustls accepts as a DNS server name (not an IP address).
fn is_dns_name(name: &str) -> bool {
    matches!(ServerName::try_from(name), Ok(ServerName::DnsName(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sni() -> SniConfig {
        SniConfig {
            bootstrap_host: "kafka.example".into(),
            broker_host: "broker-$(nodeId).kafka.example".into(),
            advertised_port: None,
        }
    }

    fn route(s: &SniConfig, name: Option<&str>) -> Result<Option<i32>, UnknownServerName> {
        s.route_for(name).map(|r| match r {
            Route::Bootstrap => None,
            Route::Node(id) => Some(id),
        })
    }

    #[test]
    fn server_names_select_bootstrap_or_broker() {
        let s = sni();
        assert_eq!(route(&s, None), Ok(None), "no SNI leads to bootstrap");
        assert_eq!(route(&s, Some("kafka.example")), Ok(None));
        assert_eq!(route(&s, Some("KAFKA.example.")), Ok(None));
        assert_eq!(route(&s, Some("broker-0.kafka.example")), Ok(Some(0)));
        assert_eq!(route(&s, Some("Broker-111.Kafka.Example")), Ok(Some(111)));
        assert_eq!(s.broker_name(7), "broker-7.kafka.example");
        for bad in [
            "broker-.kafka.example",
            "broker-01.kafka.example",
            "broker--1.kafka.example",
            "broker-1x.kafka.example",
            "broker-99999999999.kafka.example",
            "broker-1.other.example",
            "evil.example",
        ] {
            let e = route(&s, Some(bad)).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn sni_config_problems_are_all_reported() {
        let mut problems = Vec::new();
        SniConfig {
            bootstrap_host: "10.0.0.1".into(),
            broker_host: "broker.kafka.example".into(),
            advertised_port: Some(0),
        }
        .validate("proxy.sni", &mut problems);
        let all = problems.join("\n");
        assert_eq!(problems.len(), 3, "{all}");
        assert!(all.contains("bootstrap_host") && all.contains("not a DNS name"));
        assert!(all.contains("exactly once"));
        assert!(all.contains("advertised_port"));

        let mut problems = Vec::new();
        SniConfig {
            bootstrap_host: "broker-1.kafka.example".into(),
            ..sni()
        }
        .validate("proxy.sni", &mut problems);
        assert!(problems[0].contains("also a broker name"), "{problems:?}");

        let mut problems = Vec::new();
        sni().validate("proxy.sni", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn sni_needs_tls_and_excludes_port_per_broker_settings() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n  node_port_base: 9300\n  sni:\n    bootstrap_host: kafka.example\n    broker_host: b-$(nodeId).kafka.example\n";
        let err = crate::config::Config::parse(base).unwrap_err().to_string();
        assert!(err.contains("proxy.sni: needs proxy.tls"), "{err}");
        assert!(err.contains("remove proxy.node_port_base"), "{err}");
    }
}
