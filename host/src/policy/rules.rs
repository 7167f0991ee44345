//! Built-in rules: the no-Wasm way to say which topics are encrypted, with which key and parts.
//!
//! A rule is a topic selector, a key-id template and the parts to encrypt. Matching topics get a
//! [`TopicPlan::EncryptAll`] (or [`TopicPlan::PassAll`] when the rule encrypts nothing); rules are
//! evaluated in order and the first match wins.
//!
//! On Fetch, a rule's `reveal_to` list says what each principal may read of its topics
//! ([`Rule::reveal`]): the first entry whose principal pattern (and mechanism, if given) matches
//! wins; principals no entry matches, and unauthenticated connections, get `reveal_default`
//! (`all` when the rule has neither). Answers are cached per principal (rules do not change
//! while Kapsule runs). docs/reveal.md.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use parking_lot::RwLock;

use super::config::{
    expand_key_template, DecryptSettings, RevealConfig, RevealGrantConfig, RuleConfig,
    ValuePartConfig,
};
pub use super::topics::{TopicMatcher, TopicSelector};
use crate::plan::{EncryptionPlan, Reveal, RevealParts, TopicPlan, ValuePart};
use crate::principal::Principal;

/// Principals whose reveal answer one rule remembers before the cache is cleared.
const MAX_CACHED_PRINCIPALS: usize = 4096;

/// Which KEK ids the stored descriptors of a topic may name (checked with `require_encrypted`).
#[derive(Debug, Clone)]
pub enum KekAllowance {
    /// Exactly this id (a rule's key, `${topic}` expanded).
    Exact(String),
    /// Ids matching these globs (a binding's `allowed_key_ids`, `${topic}` expanded).
    Globs(globset::GlobSet),
}

impl KekAllowance {
    /// Whether a descriptor naming `kek_id` may be decrypted.
    pub fn allows(&self, kek_id: &str) -> bool {
        match self {
            Self::Exact(id) => id == kek_id,
            Self::Globs(g) => g.is_match(kek_id),
        }
    }
}

/// One compiled built-in rule.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: TopicMatcher,
    key_template: String,
    value: ValuePart,
    record_key: bool,
    headers: Vec<String>,
    decrypt: DecryptSettings,
    reveal_to: Vec<Grant>,
    /// `None`: the rule has no `reveal_default` (and so no `reveal_to`): everyone reads all.
    reveal_default: Option<RevealConfig>,
    reveals: Arc<RwLock<HashMap<Option<Principal>, Reveal>>>,
}

/// A compiled `reveal_to` entry.
#[derive(Debug, Clone)]
struct Grant {
    principal: PrincipalMatcher,
    mechanism: Option<String>,
    reveal: RevealConfig,
}

#[derive(Debug, Clone)]
enum PrincipalMatcher {
    Exact(String),
    Glob(GlobMatcher),
}

impl Grant {
    fn compile(c: &RevealGrantConfig) -> Result<Self, globset::Error> {
        let principal = if c.principal.contains(['*', '?', '[', '{']) {
            PrincipalMatcher::Glob(Glob::new(&c.principal)?.compile_matcher())
        } else {
            PrincipalMatcher::Exact(c.principal.clone())
        };
        Ok(Self {
            principal,
            mechanism: c.mechanism.clone(),
            reveal: c.reveal.clone(),
        })
    }

    fn matches(&self, p: &Principal) -> bool {
        let name = match &self.principal {
            PrincipalMatcher::Exact(n) => n == p.name(),
            PrincipalMatcher::Glob(g) => g.is_match(p.name()),
        };
        name && self
            .mechanism
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(p.mechanism().label()))
    }
}

fn to_reveal(c: &RevealConfig, principal: Option<&Principal>) -> Reveal {
    match c {
        RevealConfig::All => Reveal::All,
        RevealConfig::Ciphertext => Reveal::Ciphertext,
        RevealConfig::Parts(p) => Reveal::Parts(RevealParts {
            value: p.value,
            json_fields: p.json_fields.clone(),
            record_key: p.record_key,
            headers: p.headers.clone(),
            schema_fields: p.schema_fields.clone(),
        }),
        RevealConfig::Deny => Reveal::Deny(match principal {
            Some(p) => format!(
                "principal {p} may not read this topic (denied by the reveal_to rules of its \
                 policy rule)"
            ),
            None => "unauthenticated connections may not read this topic (its policy rule's \
                     reveal_default is deny); authenticate with a client certificate or SASL"
                .to_string(),
        }),
    }
}

impl Rule {
    /// Compiles a validated rule config.
    pub fn compile(c: &RuleConfig) -> Result<Self, globset::Error> {
        Ok(Self {
            matcher: c.topics.compile()?,
            key_template: c.key_id.clone(),
            value: match &c.value {
                ValuePartConfig::Whole => ValuePart::Whole,
                ValuePartConfig::None => ValuePart::None,
                ValuePartConfig::JsonFields(f) => ValuePart::JsonFields(f.clone()),
                ValuePartConfig::SchemaFields(s) => ValuePart::SchemaFields(s.to_selection()),
            },
            record_key: c.record_key,
            headers: c.headers.clone(),
            decrypt: c.decrypt_settings(),
            reveal_to: c
                .reveal_to
                .iter()
                .map(Grant::compile)
                .collect::<Result<_, _>>()?,
            reveal_default: c.reveal_default.clone(),
            reveals: Arc::default(),
        })
    }

    /// Whether the rule applies to `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.matcher.matches(topic)
    }

    /// The rule's plan for `topic`: encrypt-all with the expanded key id, or pass-all when the rule
    /// encrypts no part at all.
    pub fn plan(&self, topic: &str) -> TopicPlan {
        if self.value == ValuePart::None && !self.record_key && self.headers.is_empty() {
            return TopicPlan::PassAll;
        }
        TopicPlan::EncryptAll(Arc::new(EncryptionPlan {
            key_id: expand_key_template(&self.key_template, topic),
            value: self.value.clone(),
            record_key: self.record_key,
            headers: self.headers.clone(),
        }))
    }

    /// The rule's KEK id for `topic` (`${topic}` expanded).
    pub fn key_id(&self, topic: &str) -> String {
        expand_key_template(&self.key_template, topic)
    }

    /// Decrypt-side settings of the rule's topics.
    pub fn decrypt_settings(&self) -> DecryptSettings {
        self.decrypt
    }

    /// What `principal` (`None`: an unauthenticated connection) may read of the rule's topics on
    /// Fetch: the first `reveal_to` entry matching it, else `reveal_default`, else
    /// [`Reveal::All`]. Cached per principal (bounded).
    pub fn reveal(&self, principal: Option<&Principal>) -> Reveal {
        if self.reveal_default.is_none() {
            return Reveal::All;
        }
        let key = principal.cloned();
        if let Some(r) = self.reveals.read().get(&key) {
            return r.clone();
        }
        let config = principal
            .and_then(|p| self.reveal_to.iter().find(|g| g.matches(p)))
            .map(|g| &g.reveal)
            .or(self.reveal_default.as_ref())
            .unwrap_or(&RevealConfig::All);
        let r = to_reveal(config, principal);
        let mut cache = self.reveals.write();
        if cache.len() >= MAX_CACHED_PRINCIPALS {
            cache.clear();
        }
        cache.insert(key, r.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        let c: RuleConfig = serde_norway::from_str(yaml).unwrap();
        Rule::compile(&c).unwrap()
    }

    #[test]
    fn selectors_match_as_documented() {
        let exact = TopicSelector::from_plain("orders").compile().unwrap();
        assert!(exact.matches("orders") && !exact.matches("orders2"));
        let glob = TopicSelector::from_plain("orders*").compile().unwrap();
        assert!(glob.matches("orders") && glob.matches("orders.eu") && !glob.matches("xorders"));
        let glob = TopicSelector::from_plain("tenant-?.*").compile().unwrap();
        assert!(glob.matches("tenant-a.x") && !glob.matches("tenant-ab.x"));
        let prefix: TopicSelector = serde_norway::from_str("{prefix: 'a[b'}").unwrap();
        let prefix = prefix.compile().unwrap();
        assert!(prefix.matches("a[b-1") && !prefix.matches("ab"));
        let e = serde_norway::from_str::<TopicSelector>("{exact: a, glob: b}").unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
    }

    #[test]
    fn rule_plans_expand_the_topic() {
        let r =
            rule("{topics: 'orders*', key_id: 'kek-${topic}', record_key: true, headers: [pii]}");
        assert_eq!(
            r.plan("orders.eu"),
            TopicPlan::encrypt_all(EncryptionPlan {
                key_id: "kek-orders.eu".into(),
                value: ValuePart::Whole,
                record_key: true,
                headers: vec!["pii".into()],
            })
        );
        let r = rule("{topics: logs, key_id: k, value: none}");
        assert_eq!(r.plan("logs"), TopicPlan::PassAll);
        let r = rule("{topics: logs, key_id: k, value: none, headers: [h]}");
        assert!(matches!(r.plan("logs"), TopicPlan::EncryptAll(p) if p.value == ValuePart::None));
    }

    #[test]
    fn reveal_to_first_match_wins_and_others_get_the_default() {
        use crate::principal::AuthMechanism::{SaslScramSha256, TlsClientCertificate};
        let r = rule(
            r#"
topics: customers
key_id: k
value: {json_fields: [/email, /ssn]}
reveal_to:
  - {principal: app, mechanism: mtls, reveal: all}
  - {principal: "analytics-*", reveal: {json_fields: [/email], headers: [trace]}}
  - {principal: "CN=backup,O=Example", reveal: ciphertext}
  - {principal: "*", mechanism: SCRAM-SHA-256, reveal: deny}
reveal_default: {record_key: true}
"#,
        );
        let p = |n: &str, m| Principal::new(n, m);
        assert_eq!(r.reveal(Some(&p("app", TlsClientCertificate))), Reveal::All);
        // Same name, other mechanism: not the app entry; the SCRAM catch-all denies.
        let denied = r.reveal(Some(&p("app", SaslScramSha256)));
        assert!(
            matches!(&denied, Reveal::Deny(m) if m.contains("app (SCRAM-SHA-256)")),
            "{denied:?}"
        );
        assert_eq!(
            r.reveal(Some(&p("analytics-eu", SaslScramSha256))),
            Reveal::Parts(RevealParts {
                json_fields: vec!["/email".into()],
                headers: vec!["trace".into()],
                ..RevealParts::default()
            })
        );
        assert_eq!(
            r.reveal(Some(&p("CN=backup,O=Example", TlsClientCertificate))),
            Reveal::Ciphertext
        );
        let default = Reveal::Parts(RevealParts {
            record_key: true,
            ..RevealParts::default()
        });
        assert_eq!(r.reveal(Some(&p("bob", TlsClientCertificate))), default);
        // Unauthenticated connections never match an entry, not even `*`.
        assert_eq!(r.reveal(None), default);
        // Cached answers are the same answers.
        assert_eq!(r.reveal(Some(&p("app", TlsClientCertificate))), Reveal::All);
        // Without reveal_to / reveal_default everyone reads all.
        let open = rule("{topics: t, key_id: k}");
        assert_eq!(open.reveal(None), Reveal::All);
        let deny_anon = rule("{topics: t, key_id: k, reveal_default: deny}");
        assert!(matches!(deny_anon.reveal(None), Reveal::Deny(m) if m.contains("unauthenticated")));
    }
}
