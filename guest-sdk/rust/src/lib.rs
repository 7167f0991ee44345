//! Write Kapsule encryption policies in Rust.
//!
//! A policy is a WebAssembly component implementing the `kapsule:policy/policy@0.3.0` world (see
//! `wit/policy.wit`). It tells Kapsule, per topic and client and when needed per record, which
//! records to encrypt, under which key id and which parts, and what each client may read in
//! clear. It never sees keys and never encrypts anything.
//!
//! Implement [`Policy`] for a type and export it with [`export_policy!`]:
//!
//! ```no_run
//! use kapsule_policy::{
//!     export_policy, Client, Decision, Encrypt, MemoKey, Needs, Policy, RecordView, Reveal,
//!     RevealParts, TopicPlan,
//! };
//!
//! /// Encrypts `orders.*` with one key; for `events.*` encrypts records whose `tenant` header
//! /// is set, under that tenant's key. The `analytics` principal reads orders without their
//! /// `/customer/email` field.
//! struct Example;
//!
//! impl Policy for Example {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Example)
//!     }
//!
//!     fn plan(&self, topic: &str, _client: &Client) -> TopicPlan {
//!         if topic.starts_with("orders.") {
//!             TopicPlan::EncryptAll(Encrypt::new("kek-orders").json_fields(["/customer/email"]))
//!         } else if topic.starts_with("events.") {
//!             // The decision depends only on the `tenant` header: Kapsule asks once per tenant.
//!             TopicPlan::per_record(Needs::none().with_headers()).memo(MemoKey::header("tenant"))
//!         } else {
//!             TopicPlan::PassAll
//!         }
//!     }
//!
//!     fn decide(&self, _topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
//!         records
//!             .iter()
//!             .map(|r| match r.header_str("tenant") {
//!                 Some(t) => Decision::Encrypt(Encrypt::new(format!("tenant-{t}")).whole_value()),
//!                 None => Decision::Pass,
//!             })
//!             .collect()
//!     }
//!
//!     fn reveal(&self, topic: &str, client: &Client) -> Reveal {
//!         match client.principal_name() {
//!             Some("analytics") if topic.starts_with("orders.") => Reveal::Parts(RevealParts::none()),
//!             _ => Reveal::All,
//!         }
//!     }
//! }
//!
//! export_policy!(Example);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the `.wasm`
//! in `target/wasm32-wasip2/release/` is the component to point a Kapsule binding at.
//!
//! The sandbox grants no filesystem, network, environment variables or clocks: such calls fail
//! or see nothing. Memory, call time and stack are capped; a panic traps, the call fails with a
//! non-retriable error for the affected partitions and the instance is rebuilt. Instances are
//! reused across calls and may be discarded at any time, so keep only caches in `self`.
#![deny(missing_docs)]

extern crate self as kapsule_policy;

#[doc(hidden)]
pub mod __bindings {
    #![allow(missing_docs, clippy::too_many_arguments)]
    wit_bindgen::generate!({
        path: "wit",
        world: "kapsule:policy/policy@0.3.0",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "kapsule_policy::__bindings",
        runtime_path: "kapsule_policy::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

mod types;

pub use types::{
    AuthMechanism, Client, Decision, Encrypt, Header, MemoKey, Needs, Principal, RecordView,
    Reveal, RevealParts, SchemaSelection, TopicPlan, ValuePart,
};

pub mod json_pointer;
pub mod log;
pub mod schema;

/// A policy: created once per instance by `init`, then asked for topic plans, decisions and
/// reveals.
///
/// Kapsule calls [`Policy::plan`] once per (topic, client principal) and caches the answer;
/// [`Policy::decide`] runs once per record batch, only for topics planned as
/// [`TopicPlan::PerRecord`] (with a [`MemoKey`], only for values not decided yet);
/// [`Policy::reveal`] once per (topic, client principal) on Fetch, cached.
pub trait Policy: Sized + Send + 'static {
    /// Builds the policy from the binding's config string (`config:` in Kapsule's YAML; any
    /// format the policy chooses). An error refuses the module, and the message is shown to the
    /// operator.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides how to treat a whole topic for records produced by `client`. Called once per
    /// (topic, client principal) and module version.
    fn plan(&self, topic: &str, client: &Client) -> TopicPlan;

    /// One decision per record, in order, for a topic planned as [`TopicPlan::PerRecord`].
    /// Records only carry the parts the plan's [`Needs`] asked for. With a [`MemoKey`], `records`
    /// holds one record per value not decided yet, and the answer is reused for every record
    /// with that value.
    ///
    /// The default refuses every record, so a policy that plans `PerRecord` without implementing
    /// this fails closed.
    fn decide(&self, topic: &str, client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let _ = (topic, client);
        records
            .iter()
            .map(|_| Decision::Reject("policy does not implement per-record decisions".into()))
            .collect()
    }

    /// What `client` may read in clear of `topic` on Fetch. Called once per (topic, client
    /// principal) and module version. The default reveals everything ([`Reveal::All`]).
    fn reveal(&self, topic: &str, client: &Client) -> Reveal {
        let _ = (topic, client);
        Reveal::All
    }
}

/// Expands `${topic}` in a key-id template, the same way Kapsule's built-in rules do.
///
/// ```no_run
/// assert_eq!(kapsule_policy::expand_topic("kek-${topic}", "orders"), "kek-orders");
/// ```
pub fn expand_topic(template: &str, topic: &str) -> String {
    template.replace("${topic}", topic)
}

/// Exports a [`Policy`] implementation as the component's `init`, `plan`, `decide` and `reveal`.
///
/// Use exactly once per policy crate (crate type `cdylib`):
///
/// ```no_run
/// # use kapsule_policy::{Client, Policy, TopicPlan};
/// struct PassEverything;
/// impl Policy for PassEverything {
///     fn init(_: &str) -> Result<Self, String> { Ok(PassEverything) }
///     fn plan(&self, _: &str, _: &Client) -> TopicPlan { TopicPlan::PassAll }
/// }
/// kapsule_policy::export_policy!(PassEverything);
/// ```
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        const _: () = {
            struct __KapsulePolicyExport;
            static __KAPSULE_STATE: $crate::__private::State<$ty> = $crate::__private::State::new();
            impl $crate::__bindings::Guest for __KapsulePolicyExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    __KAPSULE_STATE.init(&config)
                }
                fn plan(
                    topic: ::std::string::String,
                    client: $crate::__private::WitClient,
                ) -> $crate::__private::WitTopicPlan {
                    __KAPSULE_STATE.plan(&topic, client)
                }
                fn decide(
                    topic: ::std::string::String,
                    client: $crate::__private::WitClient,
                    batch: $crate::__private::WitBatchView,
                ) -> $crate::__private::WitDecisions {
                    __KAPSULE_STATE.decide(&topic, client, batch)
                }
                fn reveal(
                    topic: ::std::string::String,
                    client: $crate::__private::WitClient,
                ) -> $crate::__private::WitReveal {
                    __KAPSULE_STATE.reveal(&topic, client)
                }
            }
            $crate::__bindings::__export_policy_world!(__KapsulePolicyExport with_types_in $crate::__bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::sync::Mutex;

    use crate::__bindings::kapsule::policy::types as wit;
    pub use wit::{
        BatchView as WitBatchView, Client as WitClient, Decision as WitDecision,
        Decisions as WitDecisions, Reveal as WitReveal, TopicPlan as WitTopicPlan,
    };

    use std::collections::hash_map::DefaultHasher;
    use std::collections::HashMap;
    use std::hash::BuildHasherDefault;

    use crate::{Client, Decision, Header, Policy, RecordView, Reveal};

    /// Holds the instance's policy between calls.
    pub struct State<P>(Mutex<Option<P>>);

    impl<P: Policy> Default for State<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<P: Policy> State<P> {
        /// Empty state (before `init`).
        pub const fn new() -> Self {
            Self(Mutex::new(None))
        }

        /// Runs `P::init` and keeps the result.
        pub fn init(&self, config: &str) -> Result<(), String> {
            let p = P::init(config)?;
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            Ok(())
        }

        /// Runs `P::plan`; refuses the topic when `init` has not run.
        pub fn plan(&self, topic: &str, client: WitClient) -> WitTopicPlan {
            match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => p.plan(topic, &Client::from(client)).into(),
                None => WitTopicPlan::RejectAll("policy used before init".into()),
            }
        }

        /// Runs `P::reveal`; denies the read when `init` has not run.
        pub fn reveal(&self, topic: &str, client: WitClient) -> WitReveal {
            match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => p.reveal(topic, &Client::from(client)).into(),
                None => Reveal::Deny("policy used before init".into()).into(),
            }
        }

        /// Runs `P::decide` on views borrowed from `batch` and packs the answer as distinct
        /// decisions plus one index per record.
        pub fn decide(&self, topic: &str, client: WitClient, batch: WitBatchView) -> WitDecisions {
            let client = Client::from(client);
            let data = batch.data.as_slice();
            let headers: Vec<Header<'_>> = batch
                .headers
                .chunks_exact(HEADER_DESCRIPTOR_LEN)
                .map(|h| Header {
                    key: span(data, h, 0).unwrap_or(&[]),
                    value: span(data, h, 8),
                })
                .collect();
            let schema_id = |i: usize, at: usize| {
                let d = batch.schema_ids.get(i * SCHEMA_IDS_DESCRIPTOR_LEN..)?;
                Some(word(d.get(..SCHEMA_IDS_DESCRIPTOR_LEN)?, at)).filter(|&id| id != ABSENT)
            };
            let records: Vec<RecordView<'_>> = batch
                .records
                .chunks_exact(RECORD_DESCRIPTOR_LEN)
                .enumerate()
                .map(|(i, r)| {
                    let start = word(r, 16) as usize;
                    RecordView {
                        key: span(data, r, 0),
                        value: span(data, r, 8),
                        headers: headers
                            .get(start..start.saturating_add(word(r, 20) as usize))
                            .unwrap_or(&[]),
                        timestamp: i64::from_le_bytes(r[24..32].try_into().unwrap_or([0; 8])),
                        value_schema_id: schema_id(i, 0),
                        key_schema_id: schema_id(i, 4),
                    }
                })
                .collect();
            let decided = match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => p.decide(topic, &client, &records),
                None => vec![Decision::Reject("policy used before init".into()); records.len()],
            };
            pack(decided)
        }
    }

    /// Bytes of one record descriptor in `batch-view.records` (`wit/policy.wit`).
    const RECORD_DESCRIPTOR_LEN: usize = 32;
    /// Bytes of one record's entry in `batch-view.schema-ids` (value id, key id).
    const SCHEMA_IDS_DESCRIPTOR_LEN: usize = 8;
    /// Bytes of one header descriptor in `batch-view.headers`.
    const HEADER_DESCRIPTOR_LEN: usize = 16;
    /// The length that marks an absent part (null, or not asked for).
    const ABSENT: u32 = u32::MAX;

    /// The little-endian u32 at byte `at` of a descriptor.
    fn word(d: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(d[at..at + 4].try_into().unwrap_or([0; 4]))
    }

    /// The bytes of `data` named by the (offset, length) pair at byte `at` of a descriptor;
    /// `None` when the length is `ABSENT` (and an empty slice for a range Kapsule never sends).
    fn span<'a>(data: &'a [u8], d: &[u8], at: usize) -> Option<&'a [u8]> {
        let len = word(d, at + 4);
        if len == ABSENT {
            return None;
        }
        let start = word(d, at) as usize;
        Some(
            data.get(start..start.saturating_add(len as usize))
                .unwrap_or(&[]),
        )
    }

    /// Distinct decisions in first-seen order and one index per record. Consecutive records
    /// usually decide alike, so each is compared with the previous one before hashing.
    pub fn pack(decided: Vec<Decision>) -> WitDecisions {
        let mut distinct: Vec<Decision> = Vec::new();
        // A fixed-key hasher: `RandomState` would ask WASI for randomness on every call.
        let mut index: HashMap<Decision, u32, BuildHasherDefault<DefaultHasher>> =
            HashMap::default();
        let mut choices = Vec::with_capacity(decided.len());
        let mut last: Option<u32> = None;
        for d in decided {
            let i = match last {
                Some(i) if distinct[i as usize] == d => i,
                _ => *index.entry(d).or_insert_with_key(|d| {
                    distinct.push(d.clone());
                    (distinct.len() - 1) as u32
                }),
            };
            choices.push(i);
            last = Some(i);
        }
        WitDecisions {
            distinct: distinct.into_iter().map(Into::into).collect(),
            choices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::__private::pack;
    use super::{Decision, Encrypt};

    #[test]
    fn pack_keeps_one_copy_of_each_decision_and_the_record_order() {
        let a = || Decision::Encrypt(Encrypt::new("tenant-a").whole_value());
        let b = || Decision::Encrypt(Encrypt::new("tenant-b").whole_value());
        let packed = pack(vec![a(), a(), b(), Decision::Pass, a(), b()]);
        assert_eq!(packed.distinct.len(), 3);
        assert_eq!(packed.choices, vec![0, 0, 1, 2, 0, 1]);
        assert!(pack(Vec::new()).choices.is_empty());
    }
}
