//! Passes every record of every bound topic in clear. Useful to exempt topics explicitly.

use kapsule_policy::{export_policy, Client, Policy, TopicPlan};

struct Passthrough;

impl Policy for Passthrough {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        TopicPlan::PassAll
    }
}

export_policy!(Passthrough);
