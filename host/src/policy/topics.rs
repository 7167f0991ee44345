//! Topic selectors: which topics a rule or binding applies to, as written in the config
//! ([`TopicSelector`]) and compiled for matching ([`TopicMatcher`]).

use std::fmt;

use globset::{Glob, GlobMatcher};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Which topics a rule or binding applies to.
///
/// In YAML: a plain string is an exact name unless it contains a glob character (`*`, `?`, `[`,
/// `{`), then it is a glob; or a one-key map `{exact: ..}`, `{prefix: ..}`, `{glob: ..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSelector {
    /// Exactly this topic.
    Exact(String),
    /// Every topic starting with this prefix.
    Prefix(String),
    /// Every topic matching this glob (`*` also matches `.`).
    Glob(String),
}

impl TopicSelector {
    /// Builds a selector from a plain string, as the YAML form does.
    pub fn from_plain(s: &str) -> Self {
        if s.contains(['*', '?', '[', '{']) {
            Self::Glob(s.to_string())
        } else {
            Self::Exact(s.to_string())
        }
    }

    /// Pushes problems (empty selector, invalid glob) into `problems` under `path`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        match self {
            Self::Exact(s) | Self::Prefix(s) if s.is_empty() => {
                problems.push(format!("{path}: empty topic selector"))
            }
            Self::Glob(g) => {
                if let Err(e) = Glob::new(g) {
                    problems.push(format!("{path}: invalid glob `{g}`: {e}"));
                }
            }
            _ => {}
        }
    }

    /// Compiles the selector for matching; fails only for an invalid glob (see
    /// [`TopicSelector::validate`]).
    pub fn compile(&self) -> Result<TopicMatcher, globset::Error> {
        Ok(match self {
            Self::Exact(s) => TopicMatcher::Exact(s.clone()),
            Self::Prefix(s) => TopicMatcher::Prefix(s.clone()),
            Self::Glob(g) => TopicMatcher::Glob(Glob::new(g)?.compile_matcher()),
        })
    }
}

impl fmt::Display for TopicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => write!(f, "{s}"),
            Self::Prefix(s) => write!(f, "{s}*"),
            Self::Glob(s) => write!(f, "{s}"),
        }
    }
}

impl<'de> Deserialize<'de> for TopicSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const FIELDS: &[&str] = &["exact", "prefix", "glob"];
        impl<'de> Visitor<'de> for V {
            type Value = TopicSelector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a topic name or glob, or a map `{exact|prefix|glob: \"...\"}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TopicSelector::from_plain(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("empty topic selector map"))?;
                let value: String = map.next_value()?;
                let sel = match key.as_str() {
                    "exact" => TopicSelector::Exact(value),
                    "prefix" => TopicSelector::Prefix(value),
                    "glob" => TopicSelector::Glob(value),
                    other => return Err(de::Error::unknown_field(other, FIELDS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "topic selector has more than one kind (`{key}` and `{extra}`)"
                    )));
                }
                Ok(sel)
            }
        }
        d.deserialize_any(V)
    }
}

/// A compiled [`TopicSelector`].
#[derive(Debug, Clone)]
pub enum TopicMatcher {
    /// Exact name.
    Exact(String),
    /// Name prefix.
    Prefix(String),
    /// Compiled glob.
    Glob(GlobMatcher),
}

impl TopicMatcher {
    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(s) => s == topic,
            Self::Prefix(p) => topic.starts_with(p.as_str()),
            Self::Glob(g) => g.is_match(topic),
        }
    }
}
