//! TEST ONLY: a policy built against `kapsule:policy@0.1.0` (`wit/v0.1/policy.wit`), as modules
//! built before 0.2 were. Kapsule must keep loading it: it sees no client, declares no memo key
//! and lets every principal read all.
//!
//! Topics starting with `per-record.` are decided per record: a record with a `tenant` header is
//! encrypted under `legacy-<tenant>`, others pass. Every other topic is encrypted whole under
//! `kek-legacy`.

// Generated bindings: the flat batch-view record lowers to 8 scalar arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../../wit/v0.1",
    world: "kapsule:policy/policy@0.1.0",
    additional_derives: [PartialEq],
});

use kapsule::policy::types::{Decision, Encrypt, Needs, ValuePart};

struct Legacy;

fn whole(key_id: String) -> Encrypt {
    Encrypt {
        key_id,
        value: ValuePart::Whole,
        record_key: false,
        headers: Vec::new(),
    }
}

impl Guest for Legacy {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn plan(topic: String) -> TopicPlan {
        if topic.starts_with("per-record.") {
            TopicPlan::PerRecord(Needs::HEADERS)
        } else {
            TopicPlan::EncryptAll(whole("kek-legacy".into()))
        }
    }

    fn decide(_topic: String, batch: BatchView) -> Decisions {
        let bytes = |offset: u32, len: u32| {
            let start = offset as usize;
            batch.data.get(start..start + len as usize).unwrap_or(&[])
        };
        let mut distinct = Vec::new();
        let mut choices = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            let start = r.headers_start as usize;
            let tenant = batch.headers[start..start + r.headers_len as usize]
                .iter()
                .find(|h| bytes(h.key.offset, h.key.len) == b"tenant")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(bytes(v.offset, v.len)).into_owned());
            let d = match tenant {
                Some(t) => Decision::Encrypt(whole(format!("legacy-{t}"))),
                None => Decision::Pass,
            };
            let i = match distinct.iter().position(|x| *x == d) {
                Some(i) => i,
                None => {
                    distinct.push(d);
                    distinct.len() - 1
                }
            };
            choices.push(i as u32);
        }
        Decisions { distinct, choices }
    }
}

export!(Legacy);
