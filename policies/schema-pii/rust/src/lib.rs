//! Encrypts every field the writer schema tags `PII` (Avro, Protobuf or JSON Schema records in
//! the Confluent wire format), and the whole value of records from chosen tenants.
//!
//! Config (JSON, every field optional):
//! `{"key_id": "kek-${topic}", "tags": ["PII"], "whole_value_tenants": ["x"],
//! "tenant_header": "tenant", "public_header": "class"}`
//!
//! Per record, from two headers only:
//! 1. `tenant` is one of `whole_value_tenants`: the whole value is encrypted;
//! 2. else `class: public`: the record passes in clear;
//! 3. else every field tagged with one of `tags` is encrypted (Kapsule reads the tags from the
//!    writer schema in its registry; the value stays valid under its schema id). A value that
//!    is not in the wire format is refused by Kapsule, never passed in clear.
//!
//! The decision depends on the two headers together, and the plan says so
//! (`MemoKey::headers`): Kapsule asks once per (tenant, class) pair.

use kapsule_policy::{
    expand_topic, export_policy, Client, Decision, Encrypt, MemoKey, Needs, Policy, RecordView,
    SchemaSelection, TopicPlan,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_key_id")]
    key_id: String,
    #[serde(default = "default_tags")]
    tags: Vec<String>,
    #[serde(default)]
    whole_value_tenants: Vec<String>,
    #[serde(default = "default_tenant_header")]
    tenant_header: String,
    #[serde(default = "default_public_header")]
    public_header: String,
}

fn default_key_id() -> String {
    "kek-${topic}".into()
}
fn default_tags() -> Vec<String> {
    vec!["PII".into()]
}
fn default_tenant_header() -> String {
    "tenant".into()
}
fn default_public_header() -> String {
    "class".into()
}

struct SchemaPii(Config);

impl Policy for SchemaPii {
    fn init(config: &str) -> Result<Self, String> {
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: Config =
            serde_json::from_str(text).map_err(|e| format!("schema-pii config: {e}"))?;
        if c.tags.is_empty() || c.tags.iter().any(String::is_empty) {
            return Err("schema-pii config: `tags` must list non-empty tags".into());
        }
        if c.tenant_header.is_empty() || c.public_header.is_empty() {
            return Err("schema-pii config: header names must not be empty".into());
        }
        if c.tenant_header == c.public_header {
            return Err("schema-pii config: `tenant_header` and `public_header` are equal".into());
        }
        Ok(Self(c))
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        TopicPlan::per_record(Needs::none().with_headers()).memo(MemoKey::headers([
            self.0.tenant_header.as_str(),
            self.0.public_header.as_str(),
        ]))
    }

    fn decide(&self, topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let key = expand_topic(&self.0.key_id, topic);
        records
            .iter()
            .map(|r| {
                let tenant = r.header_str(&self.0.tenant_header);
                if tenant.is_some_and(|t| self.0.whole_value_tenants.iter().any(|w| w == t)) {
                    Decision::Encrypt(Encrypt::new(key.clone()).whole_value())
                } else if r.header(&self.0.public_header) == Some(b"public") {
                    Decision::Pass
                } else {
                    Decision::Encrypt(
                        Encrypt::new(key.clone())
                            .schema_fields(SchemaSelection::tagged(self.0.tags.iter().cloned())),
                    )
                }
            })
            .collect()
    }
}

export_policy!(SchemaPii);
