//! `reveal_to` and `reveal_default` of a built-in rule: who may read which encrypted parts on
//! Fetch, as written in the config, and the checks [`super::PolicyConfig::validate`] runs on them.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::RuleConfig;

/// One `reveal_to` entry: which principals, and what they may read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealGrantConfig {
    /// Principal name: exact, or a glob when it contains `*`, `?`, `[` or `{` (e.g. `CN=app`,
    /// `analytics-*`). Compared with the name Kapsule derived (SASL user name, or the client
    /// certificate's subject / CN / DNS name as `proxy.tls.principal_from` says).
    pub principal: String,
    /// Only principals authenticated this way: `mTLS`, `PLAIN`, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512` or `OAUTHBEARER` (case-insensitive; default: any).
    #[serde(default)]
    pub mechanism: Option<String>,
    /// What they may read.
    pub reveal: RevealConfig,
}

/// What one principal may read: `all`, `ciphertext`, `deny`, or a map of the parts revealed
/// `{value: bool, json_fields: [pointers], record_key: bool, headers: [names]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevealConfig {
    /// Every encrypted part in clear.
    All,
    /// Records as stored, with their `kapsule.enc` descriptor.
    Ciphertext,
    /// Fetches of the topics fail with TOPIC_AUTHORIZATION_FAILED.
    Deny,
    /// Only these parts in clear.
    Parts(RevealPartsConfig),
}

/// The parts map of [`RevealConfig::Parts`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealPartsConfig {
    /// The whole value, or every encrypted JSON field (default `false`).
    #[serde(default)]
    pub value: bool,
    /// Only these encrypted JSON fields (RFC 6901 pointers, as the encrypting rule wrote them).
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// The record key (default `false`).
    #[serde(default)]
    pub record_key: bool,
    /// The encrypted headers with these names.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Only these encrypted schema fields (dotted paths, as the encrypting rule resolves them).
    #[serde(default)]
    pub schema_fields: Vec<String>,
}

impl<'de> Deserialize<'de> for RevealConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RevealConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`all`, `ciphertext`, `deny`, or a map `{value: bool, json_fields: [..], \
                     record_key: bool, headers: [..]}`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "all" => Ok(RevealConfig::All),
                    "ciphertext" => Ok(RevealConfig::Ciphertext),
                    "deny" => Ok(RevealConfig::Deny),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RevealPartsConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RevealConfig::Parts)
            }
        }
        d.deserialize_any(V)
    }
}

/// Mechanism names `reveal_to[].mechanism` accepts (the labels of
/// [`crate::principal::AuthMechanism`]).
pub const MECHANISMS: &[&str] = &[
    "mTLS",
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "OAUTHBEARER",
];

impl RevealConfig {
    /// Pushes the problems of this reveal form into `problems` under `path`.
    pub(super) fn validate(&self, path: &str, problems: &mut Vec<String>) {
        let RevealConfig::Parts(p) = self else {
            return;
        };
        if !p.value
            && !p.record_key
            && p.json_fields.is_empty()
            && p.schema_fields.is_empty()
            && p.headers.is_empty()
        {
            problems.push(format!(
                "{path}: reveals no part; write `ciphertext` to deliver records as stored or \
                 `deny` to refuse, or name the parts to reveal"
            ));
        }
        if p.value && !p.json_fields.is_empty() {
            problems.push(format!(
                "{path}.json_fields: `value: true` already reveals every JSON field; drop one of \
                 the two"
            ));
        }
        for (j, f) in p.json_fields.iter().enumerate() {
            if let Err(e) = crate::policy::validate_json_pointer(f) {
                problems.push(format!("{path}.json_fields[{j}]: {e}"));
            }
        }
        if p.value && !p.schema_fields.is_empty() {
            problems.push(format!(
                "{path}.schema_fields: `value: true` already reveals every schema field; drop one \
                 of the two"
            ));
        }
        for (j, f) in p.schema_fields.iter().enumerate() {
            if let Err(e) = crate::schema::split_path(f) {
                problems.push(format!("{path}.schema_fields[{j}]: {e}"));
            }
        }
        for (j, h) in p.headers.iter().enumerate() {
            if h.is_empty() {
                problems.push(format!("{path}.headers[{j}]: header name is empty"));
            }
        }
    }
}

/// Pushes the problems of a rule's `reveal_to` and `reveal_default` into `problems`.
pub(super) fn validate_reveal(rule: &RuleConfig, p: &str, problems: &mut Vec<String>) {
    if !rule.reveal_to.is_empty() && rule.reveal_default.is_none() {
        problems.push(format!(
            "{p}.reveal_default: required with reveal_to: say what principals not listed (and \
             unauthenticated connections) get: all, ciphertext, deny, or a parts map"
        ));
    }
    for (j, g) in rule.reveal_to.iter().enumerate() {
        let q = format!("{p}.reveal_to[{j}]");
        if g.principal.is_empty() {
            problems.push(format!(
                "{q}.principal: empty; use `*` for every authenticated principal"
            ));
        } else if let Err(e) = globset::Glob::new(&g.principal) {
            problems.push(format!(
                "{q}.principal: invalid glob `{}`: {e}",
                g.principal
            ));
        }
        if let Some(m) = &g.mechanism {
            if !MECHANISMS.iter().any(|k| k.eq_ignore_ascii_case(m)) {
                problems.push(format!(
                    "{q}.mechanism: unknown `{m}`; one of {}",
                    MECHANISMS.join(", ")
                ));
            }
        }
        g.reveal.validate(&format!("{q}.reveal"), problems);
    }
    if let Some(d) = &rule.reveal_default {
        d.validate(&format!("{p}.reveal_default"), problems);
    }
}
