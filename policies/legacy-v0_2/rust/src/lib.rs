//! TEST ONLY: a policy built against `kapsule:policy@0.2.0` (`wit/v0.2/policy.wit`), as modules
//! built before 0.3 were. Kapsule must keep loading it, show it the 0.2 batch layout and take
//! its 0.2 answers.
//!
//! Topics starting with `per-record.` are decided per record with the memo key `header
//! "tenant"`: a record with a `tenant` header is encrypted whole under `legacy-<tenant>`, others
//! pass. Every other topic is encrypted whole under `kek-legacy`. Principal `bob` reads
//! ciphertext; everyone else reads all.

// Generated bindings: the flat batch-view record lowers to many scalar arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../../wit/v0.2",
    world: "kapsule:policy/policy@0.2.0",
    additional_derives: [PartialEq],
});

use kapsule::policy::types::{Decision, Encrypt, MemoKey, Needs, PerRecordPlan, ValuePart};

struct Legacy;

fn whole(key_id: String) -> Encrypt {
    Encrypt {
        key_id,
        value: ValuePart::Whole,
        record_key: false,
        headers: Vec::new(),
    }
}

/// The little-endian u32 at byte `at` of a descriptor.
fn word(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

impl Guest for Legacy {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn plan(topic: String, _client: Client) -> TopicPlan {
        if topic.starts_with("per-record.") {
            TopicPlan::PerRecord(PerRecordPlan {
                needs: Needs::HEADERS,
                memo: MemoKey::Header("tenant".into()),
            })
        } else {
            TopicPlan::EncryptAll(whole("kek-legacy".into()))
        }
    }

    fn decide(_topic: String, _client: Client, batch: BatchView) -> Decisions {
        let bytes = |d: &[u8], at: usize| {
            let len = word(d, at + 4);
            (len != u32::MAX).then(|| {
                let start = word(d, at) as usize;
                &batch.data[start..start + len as usize]
            })
        };
        let mut distinct = Vec::new();
        let mut choices = Vec::new();
        for r in batch.records.chunks_exact(32) {
            let (start, count) = (word(r, 16) as usize, word(r, 20) as usize);
            let tenant = batch.headers[start * 16..(start + count) * 16]
                .chunks_exact(16)
                .find(|h| bytes(h, 0) == Some(b"tenant"))
                .and_then(|h| bytes(h, 8))
                .map(|v| String::from_utf8_lossy(v).into_owned());
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

    fn reveal(_topic: String, client: Client) -> Reveal {
        match client.principal {
            Some(p) if p.name == "bob" => Reveal::Ciphertext,
            _ => Reveal::All,
        }
    }
}

export!(Legacy);
