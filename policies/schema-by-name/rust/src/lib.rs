//! Encrypts the string and bytes fields of schema-encoded records (Avro, Protobuf or JSON
//! Schema in the Confluent wire format) whose dotted path contains one of `words`, choosing the
//! fields itself from the writer schema Kapsule describes (`describe-schema`).
//!
//! Config (JSON, every field optional): `{"key_id": "kek-${topic}", "words": ["email"],
//! "fallback_tags": ["PII"], "subject": "${topic}-value"}`.
//!
//! Per record (with `subject` set, a described schema registered under another subject, or
//! under none the registry names, is refused first):
//! 1. a value in the wire format whose schema Kapsule describes: encrypt the text and bytes
//!    fields whose path contains a word (none matching: the record passes);
//! 2. a value in the wire format whose schema Kapsule could not describe (registry down, id
//!    unknown): encrypt the fields tagged `fallback_tags`, which makes Kapsule's record stage
//!    fetch the schema itself and refuse the record if it still cannot, never pass it in
//!    clear;
//! 3. any other value: encrypt the whole value.
//!
//! The decision depends on the value's schema id, which no memo key expresses: every record is
//! decided (schemas are described once per id and batch).

use kapsule_policy::schema::Schemas;
use kapsule_policy::{
    expand_topic, export_policy, Client, Decision, Encrypt, Needs, Policy, RecordView,
    SchemaSelection, TopicPlan,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_key_id")]
    key_id: String,
    #[serde(default = "default_words")]
    words: Vec<String>,
    #[serde(default = "default_fallback_tags")]
    fallback_tags: Vec<String>,
    /// The subject every described value schema must be registered under (`${topic}` is the
    /// topic).
    #[serde(default)]
    subject: Option<String>,
}

fn default_key_id() -> String {
    "kek-${topic}".into()
}
fn default_words() -> Vec<String> {
    vec!["email".into()]
}
fn default_fallback_tags() -> Vec<String> {
    vec!["PII".into()]
}

struct SchemaByName(Config);

impl Policy for SchemaByName {
    fn init(config: &str) -> Result<Self, String> {
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: Config =
            serde_json::from_str(text).map_err(|e| format!("schema-by-name config: {e}"))?;
        if c.words.is_empty() || c.words.iter().any(String::is_empty) {
            return Err("schema-by-name config: `words` must list non-empty words".into());
        }
        if c.fallback_tags.is_empty() || c.fallback_tags.iter().any(String::is_empty) {
            return Err("schema-by-name config: `fallback_tags` must list non-empty tags".into());
        }
        Ok(Self(c))
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        // Schema ids are shown whatever `needs` asks for: no record bytes are needed.
        TopicPlan::per_record(Needs::none())
    }

    fn decide(&self, topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let key = expand_topic(&self.0.key_id, topic);
        let subject = self.0.subject.as_deref().map(|s| expand_topic(s, topic));
        let mut schemas = Schemas::new();
        records
            .iter()
            .map(|r| {
                let Some(id) = r.value_schema_id else {
                    return Decision::Encrypt(Encrypt::new(key.clone()).whole_value());
                };
                match schemas.describe(id) {
                    Ok(schema) if subject.is_some() && schema.subject != subject => {
                        Decision::Reject(format!(
                            "schema id {id} is registered under subject {:?}, not {:?}",
                            schema.subject, subject
                        ))
                    }
                    Ok(schema) => {
                        let chosen =
                            schema.select(|f| self.0.words.iter().any(|w| f.path.contains(w)));
                        if chosen.fields.is_empty() {
                            Decision::Pass
                        } else {
                            Decision::Encrypt(Encrypt::new(key.clone()).schema_fields(chosen))
                        }
                    }
                    Err(_) => Decision::Encrypt(Encrypt::new(key.clone()).schema_fields(
                        SchemaSelection::tagged(self.0.fallback_tags.iter().cloned()),
                    )),
                }
            })
            .collect()
    }
}

export_policy!(SchemaByName);
