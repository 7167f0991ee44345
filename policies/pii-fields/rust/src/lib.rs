//! Encrypts JSON fields whose names look like personal data, record by record.
//!
//! Config (JSON, every field optional):
//! `{"key_id": "pii-${topic}", "fields": ["email", "ssn", "phone"], "non_json": "whole"}`
//!
//! For each record the value is parsed as JSON and every object member whose name is in `fields`
//! (case-insensitive, at any depth, including inside arrays) is encrypted. Records without such
//! members pass in clear; tombstones pass. Values that are not JSON are encrypted whole
//! (`non_json: "whole"`, the fail-closed default) or refused (`"reject"`).

use kapsule_policy::{
    expand_topic, export_policy, json_pointer, Client, Decision, Encrypt, Needs, Policy,
    RecordView, TopicPlan,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_key")]
    key_id: String,
    #[serde(default = "default_fields")]
    fields: Vec<String>,
    #[serde(default = "default_non_json")]
    non_json: String,
}

fn default_key() -> String {
    "pii-${topic}".into()
}
fn default_fields() -> Vec<String> {
    [
        "email",
        "ssn",
        "phone",
        "iban",
        "card_number",
        "date_of_birth",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
fn default_non_json() -> String {
    "whole".into()
}

struct PiiFields {
    key_id: String,
    fields: Vec<String>,
    reject_non_json: bool,
}

impl Policy for PiiFields {
    fn init(config: &str) -> Result<Self, String> {
        let c: Config = if config.trim().is_empty() {
            serde_json::from_str("{}").map_err(|e| e.to_string())?
        } else {
            serde_json::from_str(config).map_err(|e| format!("pii-fields config: {e}"))?
        };
        if c.fields.is_empty() {
            return Err("pii-fields config: `fields` is empty".into());
        }
        let reject_non_json = match c.non_json.as_str() {
            "whole" => false,
            "reject" => true,
            other => {
                return Err(format!(
                    "pii-fields config: non_json `{other}` is not whole|reject"
                ))
            }
        };
        Ok(Self {
            key_id: c.key_id,
            fields: c
                .fields
                .into_iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            reject_non_json,
        })
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        TopicPlan::per_record(Needs::none().with_value())
    }

    fn decide(&self, topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let key_id = expand_topic(&self.key_id, topic);
        records
            .iter()
            .map(|r| {
                let Some(value) = r.value else {
                    return Decision::Pass;
                };
                match serde_json::from_slice::<Value>(value) {
                    Ok(doc) => {
                        let mut found = Vec::new();
                        let mut path = Vec::new();
                        self.collect(&doc, &mut path, &mut found);
                        if found.is_empty() {
                            Decision::Pass
                        } else {
                            Decision::Encrypt(Encrypt::new(key_id.clone()).json_fields(found))
                        }
                    }
                    Err(_) if self.reject_non_json => {
                        Decision::Reject("record value is not JSON".into())
                    }
                    Err(_) => Decision::Encrypt(Encrypt::new(key_id.clone()).whole_value()),
                }
            })
            .collect()
    }
}

impl PiiFields {
    fn collect(&self, v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(k.clone());
                    if self.fields.iter().any(|f| f.eq_ignore_ascii_case(k)) {
                        out.push(json_pointer::from_tokens(path.iter()));
                    } else {
                        self.collect(child, path, out);
                    }
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(i.to_string());
                    self.collect(child, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

export_policy!(PiiFields);
