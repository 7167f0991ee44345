//! Write Kapsule encryption policies in Rust.
//!
//! A policy is a WebAssembly component implementing the `kapsule:policy/policy` world (see
//! `wit/policy.wit`). It tells Kapsule, per topic and when needed per record, which records to
//! encrypt, under which key id and which parts. It never sees keys and never encrypts anything.
//!
//! Implement [`Policy`] for a type and export it with [`export_policy!`]:
//!
//! ```no_run
//! use kapsule_policy::{export_policy, Decision, Encrypt, Needs, Policy, RecordView, TopicPlan};
//!
//! /// Encrypts `orders.*` with one key; for `events.*` encrypts records whose `tenant` header
//! /// is set, under that tenant's key.
//! struct Example;
//!
//! impl Policy for Example {
//!     fn init(_config: &str) -> Result<Self, String> {
//!         Ok(Example)
//!     }
//!
//!     fn plan(&self, topic: &str) -> TopicPlan {
//!         if topic.starts_with("orders.") {
//!             TopicPlan::EncryptAll(Encrypt::new("kek-orders").whole_value())
//!         } else if topic.starts_with("events.") {
//!             TopicPlan::PerRecord(Needs::none().with_headers())
//!         } else {
//!             TopicPlan::PassAll
//!         }
//!     }
//!
//!     fn decide(&self, _topic: &str, records: &[RecordView]) -> Vec<Decision> {
//!         records
//!             .iter()
//!             .map(|r| match r.header_str("tenant") {
//!                 Some(t) => Decision::Encrypt(Encrypt::new(format!("tenant-{t}")).whole_value()),
//!                 None => Decision::Pass,
//!             })
//!             .collect()
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
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "kapsule:policy/policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "kapsule_policy::__bindings",
        runtime_path: "kapsule_policy::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

mod types;

pub use types::{Decision, Encrypt, Header, Needs, RecordView, TopicPlan, ValuePart};

pub mod json_pointer;
pub mod log;

/// A policy: created once per instance by `init`, then asked for topic plans and decisions.
///
/// Kapsule calls [`Policy::plan`] once per topic and caches the answer; [`Policy::decide`] runs
/// once per record batch, only for topics planned as [`TopicPlan::PerRecord`].
pub trait Policy: Sized + Send + 'static {
    /// Builds the policy from the binding's config string (`config:` in Kapsule's YAML; any
    /// format the policy chooses). An error refuses the module, and the message is shown to the
    /// operator.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides how to treat a whole topic. Called once per topic and module version.
    fn plan(&self, topic: &str) -> TopicPlan;

    /// One decision per record, in order, for a topic planned as [`TopicPlan::PerRecord`].
    /// Records only carry the parts the plan's [`Needs`] asked for.
    ///
    /// The default refuses every record, so a policy that plans `PerRecord` without implementing
    /// this fails closed.
    fn decide(&self, topic: &str, records: &[RecordView]) -> Vec<Decision> {
        let _ = topic;
        records
            .iter()
            .map(|_| Decision::Reject("policy does not implement per-record decisions".into()))
            .collect()
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

/// Exports a [`Policy`] implementation as the component's `init`, `plan` and `decide`.
///
/// Use exactly once per policy crate (crate type `cdylib`):
///
/// ```no_run
/// # use kapsule_policy::{Policy, TopicPlan};
/// struct PassEverything;
/// impl Policy for PassEverything {
///     fn init(_: &str) -> Result<Self, String> { Ok(PassEverything) }
///     fn plan(&self, _: &str) -> TopicPlan { TopicPlan::PassAll }
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
                fn plan(topic: ::std::string::String) -> $crate::__private::WitTopicPlan {
                    __KAPSULE_STATE.plan(&topic)
                }
                fn decide(
                    topic: ::std::string::String,
                    records: ::std::vec::Vec<$crate::__private::WitRecordView>,
                ) -> ::std::vec::Vec<$crate::__private::WitDecision> {
                    __KAPSULE_STATE.decide(&topic, records)
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
        Decision as WitDecision, RecordView as WitRecordView, TopicPlan as WitTopicPlan,
    };

    use crate::{Policy, RecordView};

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
        pub fn plan(&self, topic: &str) -> WitTopicPlan {
            match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => p.plan(topic).into(),
                None => WitTopicPlan::RejectAll("policy used before init".into()),
            }
        }

        /// Runs `P::decide` on the converted records.
        pub fn decide(&self, topic: &str, records: Vec<WitRecordView>) -> Vec<WitDecision> {
            let records: Vec<RecordView> = records.into_iter().map(Into::into).collect();
            match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => p
                    .decide(topic, &records)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
                None => records
                    .iter()
                    .map(|_| WitDecision::Reject("policy used before init".into()))
                    .collect(),
            }
        }
    }
}
