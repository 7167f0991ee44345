//! Encrypts the whole value of every record of every bound topic.
//!
//! Config: the key-id template, e.g. `kek-${topic}` (empty config means `kek-${topic}`). Add
//! `+key` after the template (`kek-${topic}+key`) to encrypt record keys too.
//! The plan is per topic, so Kapsule never calls `decide` for this policy.

use kapsule_policy::{expand_topic, export_policy, Client, Encrypt, Policy, TopicPlan};

struct EncryptAll {
    template: String,
    record_key: bool,
}

impl Policy for EncryptAll {
    fn init(config: &str) -> Result<Self, String> {
        let config = config.trim();
        let (template, record_key) = match config.strip_suffix("+key") {
            Some(t) => (t, true),
            None => (config, false),
        };
        let template = if template.is_empty() {
            "kek-${topic}"
        } else {
            template
        };
        if template.contains(char::is_whitespace) {
            return Err(format!("key-id template `{template}` contains whitespace"));
        }
        Ok(Self {
            template: template.to_string(),
            record_key,
        })
    }

    fn plan(&self, topic: &str, _client: &Client) -> TopicPlan {
        let mut e = Encrypt::new(expand_topic(&self.template, topic)).whole_value();
        if self.record_key {
            e = e.with_record_key();
        }
        TopicPlan::EncryptAll(e)
    }
}

export_policy!(EncryptAll);
