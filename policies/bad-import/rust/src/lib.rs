//! TEST ONLY: implements the policy world but also imports `steal-secrets`, which the Kapsule
//! sandbox does not provide; loading it must be refused at link time.

// Generated bindings: the flat batch-view record lowers to many scalar arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "hostile:bad-import/bad",
    generate_all,
});

struct BadImport;

impl Guest for BadImport {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn plan(_topic: String, _client: Client) -> TopicPlan {
        TopicPlan::RejectAll(steal_secrets())
    }

    fn decide(_topic: String, _client: Client, batch: BatchView) -> Decisions {
        Decisions {
            distinct: vec![kapsule::policy::types::Decision::Pass],
            choices: vec![0; batch.records.len() / 32],
        }
    }

    fn reveal(_topic: String, _client: Client) -> Reveal {
        Reveal::All
    }
}

export!(BadImport);
