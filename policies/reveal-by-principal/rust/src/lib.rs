//! Each authenticated principal produces under its own key (`kek-<name>`); unauthenticated
//! clients may not produce. On Fetch, what a principal reads in clear depends on its name:
//!
//! | principal | reads |
//! |---|---|
//! | `analytics` | the value, except the encrypted `/customer/email` field |
//! | `auditor` | ciphertext, as stored |
//! | `intruder` | nothing: the fetch is denied |
//! | none (unauthenticated) | nothing: the fetch is denied |
//! | anyone else | everything |
//!
//! TEST ONLY (the host's validation of `reveal` answers): `bad-pointer` gets a JSON pointer
//! without its leading `/`, and `bad-header` an empty header name.

use kapsule_policy::{export_policy, Client, Encrypt, Policy, Reveal, RevealParts, TopicPlan};

struct RevealByPrincipal;

impl Policy for RevealByPrincipal {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(RevealByPrincipal)
    }

    fn plan(&self, _topic: &str, client: &Client) -> TopicPlan {
        match client.principal_name() {
            Some(name) => TopicPlan::EncryptAll(
                Encrypt::new(format!("kek-{name}")).json_fields(["/customer/email", "/card"]),
            ),
            None => TopicPlan::RejectAll("authenticate to produce to this topic".into()),
        }
    }

    fn reveal(&self, _topic: &str, client: &Client) -> Reveal {
        match client.principal_name() {
            Some("analytics") => Reveal::Parts(RevealParts::none().with_json_fields(["/card"])),
            Some("auditor") => Reveal::Ciphertext,
            Some("intruder") | None => Reveal::Deny("not allowed to read this topic".into()),
            Some("bad-pointer") => Reveal::Parts(RevealParts::none().with_json_fields(["card"])),
            Some("bad-header") => Reveal::Parts(RevealParts::none().with_header("")),
            Some(_) => Reveal::All,
        }
    }
}

export_policy!(RevealByPrincipal);
