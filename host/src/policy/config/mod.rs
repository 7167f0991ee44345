//! The `policy:` section of the configuration: built-in rules, Wasm bindings, cache and limits.
//!
//! Parsing rejects unknown fields; [`PolicyConfig::validate`] then reports every remaining problem
//! with its YAML path (for example `policy.rules[2].key_id: ...`) so an operator fixes a config in
//! one round.

mod reveal;

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use self::reveal::validate_reveal;
pub use self::reveal::{RevealConfig, RevealGrantConfig, RevealPartsConfig, MECHANISMS};
use super::topics::TopicSelector;

/// The whole `policy:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens to topics that no binding and no rule matches (default `pass`).
    #[serde(default)]
    pub unmatched_topics: UnmatchedTopics,
    /// Built-in rules, tried in order after the bindings; the first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Wasm policy bindings, tried in order before the rules; the first match wins.
    #[serde(default)]
    pub bindings: Vec<BindingConfig>,
    /// Directory for compiled policy modules, keyed by content hash (default:
    /// `$XDG_CACHE_HOME/kapsule/policy-modules`, else `~/.cache/kapsule/policy-modules`). It must
    /// be owned by Kapsule's user and not writable by group or others (start-up fails
    /// otherwise); entries are authenticated with a per-install secret kept there.
    #[serde(default)]
    pub module_cache_dir: Option<PathBuf>,
    /// Sandbox limits applied to every Wasm policy instance.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Watch module files and reload them when they change (default `true`).
    #[serde(default = "default_true")]
    pub watch: bool,
}

/// What happens to records of a topic that nothing matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedTopics {
    /// Forward records in clear (default).
    #[default]
    Pass,
    /// Refuse produce requests to such topics with a policy violation.
    Reject,
}

/// Defines a `policy:` entry type (a rule or a binding) with the settings every entry shares:
/// `topics` first, the entry's own fields, then `on_decrypt_failure`, `require_encrypted` and
/// `accept_pre_encrypted`; and [`DecryptSettings`] from them. Written once so the two entry types
/// cannot drift apart; the YAML keys stay plain fields of the entry, so unknown keys and wrong
/// types are reported with the entry's path and the list of accepted keys (serde's `flatten`
/// would lose both).
macro_rules! topic_entry_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Which topics the entry applies to.
            pub topics: TopicSelector,
            $($(#[$field_meta])* pub $field: $ty,)*
            /// What consumers get when a record of these topics cannot be decrypted.
            #[serde(default)]
            pub on_decrypt_failure: DecryptFailure,
            /// Refuse to deliver records of these topics that are not encrypted, or encrypted
            /// under a KEK other than the rule's key / one `allowed_key_ids` matches (default
            /// `false`).
            #[serde(default)]
            pub require_encrypted: bool,
            /// Accept produced records that already carry a `kapsule.enc` header and forward
            /// them as they are (default `false`: such records are refused with
            /// INVALID_RECORD). Only for producers that write Kapsule's format themselves (e.g.
            /// records copied between clusters).
            #[serde(default)]
            pub accept_pre_encrypted: bool,
        }

        impl $name {
            /// The record-stage settings of the entry's topics.
            pub fn decrypt_settings(&self) -> DecryptSettings {
                DecryptSettings {
                    on_decrypt_failure: self.on_decrypt_failure,
                    require_encrypted: self.require_encrypted,
                    accept_pre_encrypted: self.accept_pre_encrypted,
                    covered: true,
                }
            }
        }
    };
}

topic_entry_config! {
    /// A built-in rule: encrypt matching topics with one fixed plan.
    pub struct RuleConfig {
        /// KEK id; `${topic}` is replaced by the topic name. Write `$${topic}` in the YAML file,
        /// since the config loader expands `${NAME}` from the environment.
        pub key_id: String,
        /// Which part of the value to encrypt (default `whole`).
        #[serde(default)]
        pub value: ValuePartConfig,
        /// Encrypt the record key deterministically (default `false`).
        #[serde(default)]
        pub record_key: bool,
        /// Header names whose values are encrypted (default none).
        #[serde(default)]
        pub headers: Vec<String>,
        /// Who may read which encrypted parts on Fetch, first match wins (default: nobody is
        /// listed, everyone gets `reveal_default`). Entries match authenticated principals only.
        #[serde(default)]
        pub reveal_to: Vec<RevealGrantConfig>,
        /// What principals no `reveal_to` entry matches get, unauthenticated connections
        /// included. Required when `reveal_to` is set; without `reveal_to` the default is `all`.
        #[serde(default)]
        pub reveal_default: Option<RevealConfig>,
    }
}

/// The value part of a built-in rule: `whole`, `none`, or `{json_fields: [pointers]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ValuePartConfig {
    /// Encrypt the whole value (default).
    #[default]
    Whole,
    /// Leave the value in clear.
    None,
    /// Encrypt these RFC 6901 JSON pointers.
    JsonFields(Vec<String>),
    /// Encrypt these fields of values in the Schema Registry wire format (needs
    /// `schema_registry:`).
    SchemaFields(SchemaFieldsConfig),
}

/// `value: {schema: {fields: [..], tags: [..]}}`: fields of a schema-encoded value (Avro or
/// JSON Schema in the Confluent wire format) to encrypt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFieldsConfig {
    /// Dotted field paths from the top-level record, e.g. `customer.email`.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Schema tags (`confluent:tags`), e.g. `PII`: every field tagged with one is encrypted.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl SchemaFieldsConfig {
    /// The plan's form.
    pub fn to_selection(&self) -> crate::plan::FieldSelection {
        crate::plan::FieldSelection {
            fields: self.fields.clone(),
            tags: self.tags.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for ValuePartConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValuePartConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`whole`, `none`, or a map `{json_fields: [\"/pointer\", ...]}` or \
                     `{schema: {fields: [..], tags: [..]}}`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "whole" => Ok(ValuePartConfig::Whole),
                    "none" => Ok(ValuePartConfig::None),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key: Option<String> = map.next_key()?;
                match key.as_deref() {
                    Some("json_fields") => {
                        let fields: Vec<String> = map.next_value()?;
                        if let Some(extra) = map.next_key::<String>()? {
                            return Err(de::Error::unknown_field(&extra, &["json_fields"]));
                        }
                        Ok(ValuePartConfig::JsonFields(fields))
                    }
                    Some("schema") => {
                        let sel: SchemaFieldsConfig = map.next_value()?;
                        if let Some(extra) = map.next_key::<String>()? {
                            return Err(de::Error::unknown_field(&extra, &["schema"]));
                        }
                        Ok(ValuePartConfig::SchemaFields(sel))
                    }
                    Some(other) => Err(de::Error::unknown_field(other, &["json_fields", "schema"])),
                    None => Err(de::Error::missing_field("json_fields")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

pub use crate::plan::DecryptFailure;

/// Per-topic settings of the record stage beyond the encryption plan (defaults when no rule or
/// binding matches the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecryptSettings {
    /// What a consumer gets for a record that cannot be decrypted.
    pub on_decrypt_failure: DecryptFailure,
    /// Refuse to deliver records that are not encrypted, or encrypted under a KEK the topic's
    /// rule or binding does not name.
    pub require_encrypted: bool,
    /// Produced records with a `kapsule.enc` header are forwarded as they are (else refused).
    pub accept_pre_encrypted: bool,
    /// A rule or binding matches the topic. Fetched records of topics nothing covers are
    /// forwarded as stored: no decryption, no KMS call.
    pub covered: bool,
}

topic_entry_config! {
    /// A Wasm policy binding: topics decided by a policy component.
    pub struct BindingConfig {
        /// Path of the policy component (`.wasm`), relative to the working directory.
        pub module: PathBuf,
        /// Config string passed to the policy's `init` (default empty).
        #[serde(default)]
        pub config: String,
        /// Glob patterns of KEK ids the policy may name; `${topic}` is replaced by the topic
        /// name. A decision naming any other key is a policy violation. Empty means the policy
        /// may only pass or reject.
        #[serde(default)]
        pub allowed_key_ids: Vec<String>,
    }
}

/// Sandbox limits for Wasm policy instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory cap per instance, in MiB (default 64).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Deadline of one `plan` call and base deadline of one `decide` call, in milliseconds
    /// (default 10).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Extra deadline of a `decide` call per record of its batch, in microseconds (default 250:
    /// a batch of 1,000 records gets 10 ms + 250 ms — room for a Python or JS policy deciding
    /// every record, ~13–21 µs each, on a loaded 2-core machine).
    #[serde(default = "default_call_timeout_per_record_us")]
    pub call_timeout_per_record_us: u64,
    /// Largest deadline of one call however large the batch, in milliseconds (default 1000;
    /// never less than `call_timeout_ms`).
    #[serde(default = "default_call_timeout_max_ms")]
    pub call_timeout_max_ms: u64,
    /// Most host memory one `plan` or `decide` answer may take once copied out of the guest, in
    /// KiB (default 4096). A larger answer fails the call as malformed.
    #[serde(default = "default_answer_max_kib")]
    pub answer_max_kib: u64,
    /// Deadline of instantiating a module and running its `init`, in milliseconds (default 1000).
    #[serde(default = "default_init_timeout_ms")]
    pub init_timeout_ms: u64,
    /// Wasm stack limit, in KiB (default 512, at most 1024). Guest code runs on host threads
    /// with 2 MiB stacks (Tokio's blocking pool), which also hold the host's own frames.
    #[serde(default = "default_stack_kib")]
    pub stack_kib: u64,
    /// Most instances of one module alive at once; further calls wait (default: the number of
    /// CPUs, at least 2 and at most 8). More instances than CPUs only add instance start-ups
    /// (milliseconds of CPU each for a Python or JavaScript module) and memory: guest calls are
    /// CPU-bound.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// Log messages a policy may emit per second; the rest are dropped and counted (default 20).
    #[serde(default = "default_log_per_second")]
    pub log_messages_per_second: u32,
    /// Longest log message kept, in bytes; longer ones are truncated (default 1024).
    #[serde(default = "default_log_max_bytes")]
    pub log_message_max_bytes: usize,
    /// Largest module file accepted, in MiB (default 64).
    #[serde(default = "default_module_max_mib")]
    pub module_max_mib: u64,
    /// Bytes one module version may keep of cached answers — plans and reveals per (topic,
    /// principal), memoized decisions per (topic, principal, value) — in KiB (default 8192).
    /// Past it the least recently used answers are evicted; clients choose how many topics and
    /// principals there are, so this is what bounds a tenant module's cache in memory.
    #[serde(default = "default_answer_cache_kib")]
    pub answer_cache_kib: u64,
    /// Largest single answer (with its key) cached, in KiB (default 16). A larger answer is used
    /// for the batch that asked for it but not cached, so the guest is asked again next time; an
    /// answer over `answer_max_kib` is refused outright.
    #[serde(default = "default_answer_cache_entry_max_kib")]
    pub answer_cache_entry_max_kib: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_mib: default_memory_mib(),
            call_timeout_ms: default_call_timeout_ms(),
            call_timeout_per_record_us: default_call_timeout_per_record_us(),
            call_timeout_max_ms: default_call_timeout_max_ms(),
            answer_max_kib: default_answer_max_kib(),
            init_timeout_ms: default_init_timeout_ms(),
            stack_kib: default_stack_kib(),
            max_instances: default_max_instances(),
            log_messages_per_second: default_log_per_second(),
            log_message_max_bytes: default_log_max_bytes(),
            module_max_mib: default_module_max_mib(),
            answer_cache_kib: default_answer_cache_kib(),
            answer_cache_entry_max_kib: default_answer_cache_entry_max_kib(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_memory_mib() -> u64 {
    64
}
fn default_call_timeout_ms() -> u64 {
    10
}
fn default_call_timeout_per_record_us() -> u64 {
    250
}
fn default_call_timeout_max_ms() -> u64 {
    1000
}
fn default_answer_max_kib() -> u64 {
    4096
}
fn default_init_timeout_ms() -> u64 {
    1000
}
fn default_stack_kib() -> u64 {
    512
}
fn default_max_instances() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}
fn default_log_per_second() -> u32 {
    20
}
fn default_log_max_bytes() -> usize {
    1024
}
fn default_module_max_mib() -> u64 {
    64
}
fn default_answer_cache_kib() -> u64 {
    8192
}
fn default_answer_cache_entry_max_kib() -> u64 {
    16
}

impl PolicyConfig {
    /// Pushes every problem of this section into `problems`, each prefixed with its YAML path
    /// under `prefix` (normally `"policy"`). Does not touch the filesystem except to check that
    /// module files exist.
    pub fn validate(&self, prefix: &str, problems: &mut Vec<String>) {
        for (i, rule) in self.rules.iter().enumerate() {
            let p = format!("{prefix}.rules[{i}]");
            rule.topics.validate(&format!("{p}.topics"), problems);
            validate_key_template(&rule.key_id, &format!("{p}.key_id"), problems);
            if let ValuePartConfig::SchemaFields(sel) = &rule.value {
                crate::schema::validate_selection(
                    &sel.to_selection(),
                    &format!("{p}.value.schema"),
                    problems,
                );
            }
            if let ValuePartConfig::JsonFields(fields) = &rule.value {
                if fields.is_empty() {
                    problems.push(format!(
                        "{p}.value.json_fields: empty list; use `value: none` to leave values in clear"
                    ));
                }
                for (j, f) in fields.iter().enumerate() {
                    if let Err(e) = super::validate_json_pointer(f) {
                        problems.push(format!("{p}.value.json_fields[{j}]: {e}"));
                    }
                }
            }
            for (j, h) in rule.headers.iter().enumerate() {
                if h.is_empty() {
                    problems.push(format!("{p}.headers[{j}]: header name is empty"));
                }
            }
            validate_reveal(rule, &p, problems);
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let p = format!("{prefix}.bindings[{i}]");
            b.topics.validate(&format!("{p}.topics"), problems);
            if b.module.as_os_str().is_empty() {
                problems.push(format!("{p}.module: path is empty"));
            } else if !b.module.is_file() {
                problems.push(format!(
                    "{p}.module: {} does not exist or is not a file; build the policy with \
                     `cargo build --release --target wasm32-wasip2` and point here to the .wasm",
                    b.module.display()
                ));
            }
            for (j, pat) in b.allowed_key_ids.iter().enumerate() {
                let q = format!("{p}.allowed_key_ids[{j}]");
                validate_key_template(pat, &q, problems);
                let probe = pat.replace("${topic}", "topic");
                if let Err(e) = globset::Glob::new(&probe) {
                    problems.push(format!("{q}: invalid glob pattern: {e}"));
                }
            }
        }
        let l = &self.limits;
        let lp = format!("{prefix}.limits");
        if !(1..=4096).contains(&l.memory_mib) {
            problems.push(format!(
                "{lp}.memory_mib: {} is outside 1..=4096",
                l.memory_mib
            ));
        }
        if !(1..=60_000).contains(&l.call_timeout_ms) {
            problems.push(format!(
                "{lp}.call_timeout_ms: {} is outside 1..=60000",
                l.call_timeout_ms
            ));
        }
        if !(1..=600_000).contains(&l.init_timeout_ms) {
            problems.push(format!(
                "{lp}.init_timeout_ms: {} is outside 1..=600000",
                l.init_timeout_ms
            ));
        }
        if !(64..=MAX_STACK_KIB).contains(&l.stack_kib) {
            problems.push(format!(
                "{lp}.stack_kib: {} is outside 64..={MAX_STACK_KIB} (guest code shares 2 MiB host \
                 thread stacks with the host's own frames)",
                l.stack_kib
            ));
        }
        if l.call_timeout_per_record_us > 10_000 {
            problems.push(format!(
                "{lp}.call_timeout_per_record_us: {} is outside 0..=10000",
                l.call_timeout_per_record_us
            ));
        }
        if !(1..=60_000).contains(&l.call_timeout_max_ms) {
            problems.push(format!(
                "{lp}.call_timeout_max_ms: {} is outside 1..=60000",
                l.call_timeout_max_ms
            ));
        }
        if !(1..=1 << 20).contains(&l.answer_max_kib) {
            problems.push(format!(
                "{lp}.answer_max_kib: {} is outside 1..=1048576",
                l.answer_max_kib
            ));
        }
        if !(1..=1024).contains(&l.max_instances) {
            problems.push(format!(
                "{lp}.max_instances: {} is outside 1..=1024",
                l.max_instances
            ));
        }
        if l.log_message_max_bytes == 0 || l.log_message_max_bytes > 1 << 20 {
            problems.push(format!(
                "{lp}.log_message_max_bytes: {} is outside 1..=1048576",
                l.log_message_max_bytes
            ));
        }
        if !(1..=1024).contains(&l.module_max_mib) {
            problems.push(format!(
                "{lp}.module_max_mib: {} is outside 1..=1024",
                l.module_max_mib
            ));
        }
        if !(64..=1 << 20).contains(&l.answer_cache_kib) {
            problems.push(format!(
                "{lp}.answer_cache_kib: {} is outside 64..=1048576 (it bounds each module \
                 version's cached answers in memory)",
                l.answer_cache_kib
            ));
        }
        if l.answer_cache_entry_max_kib == 0 || l.answer_cache_entry_max_kib > l.answer_cache_kib {
            problems.push(format!(
                "{lp}.answer_cache_entry_max_kib: {} is outside 1..=answer_cache_kib ({})",
                l.answer_cache_entry_max_kib, l.answer_cache_kib
            ));
        }
    }
}

/// Largest accepted `limits.stack_kib`: guest calls run on threads with 2 MiB stacks, and a Wasm
/// stack close to that overflows the host thread (the process aborts) instead of trapping.
pub const MAX_STACK_KIB: u64 = 1024;

/// Checks a key-id template: non-empty and only the `${topic}` placeholder.
fn validate_key_template(t: &str, path: &str, problems: &mut Vec<String>) {
    if t.trim().is_empty() {
        problems.push(format!("{path}: key id is empty"));
        return;
    }
    let mut rest = t;
    while let Some(pos) = rest.find("${") {
        let after = &rest[pos + 2..];
        match after.find('}') {
            Some(end) if &after[..end] == "topic" => rest = &after[end + 1..],
            Some(end) => {
                problems.push(format!(
                    "{path}: unknown placeholder `${{{}}}`; only `${{topic}}` is supported",
                    &after[..end]
                ));
                return;
            }
            None => {
                problems.push(format!("{path}: unterminated `${{` in `{t}`"));
                return;
            }
        }
    }
}

/// Expands `${topic}` in a key-id template.
pub fn expand_key_template(template: &str, topic: &str) -> String {
    template.replace("${topic}", topic)
}

#[cfg(test)]
mod tests;
