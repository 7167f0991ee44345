//! Kapsule: a Kafka-aware proxy that encrypts records at rest, per topic, with keys from a KMS.
//!
//! Module map (one concern each):
//! - [`alloc`]: gives freed memory back to the OS after a burst (the allocator's side).
//! - [`app`]: assembles KMS, policies, admin and proxy from a config and runs them.
//! - [`config`]: YAML configuration, validation that reports every problem at start-up.
//! - [`proxy`]: listeners, per-connection relay, address rewriting, request/response stages.
//! - [`kafka`]: Kafka framing, header parsing and the project's own record-batch codec.
//! - [`plan`]: the per-record encryption plan, the single input of the encryption stage.
//! - [`crypto`]: AEAD/SIV primitives, the encrypted-record wire format and the DEK lifecycle
//!   (`crypto::keys`: rotation, refresh-ahead, caches).
//! - [`error`]: one error vocabulary (source, Kafka error code, retriability) for refusals.
//! - [`kms`]: the `Kms` trait and its back ends (Vault/OpenBao transit, local KMS, in-memory fake)
//!   behind one gate; it never depends on `crypto`.
//! - [`policy`]: where plans come from: built-in rules and sandboxed Wasm policy components.
//! - [`schema`]: Schema Registry client and the Avro / JSON Schema walkers of schema-aware field
//!   encryption.
//! - [`admin`]: HTTP admin endpoint: health, readiness, policy status and `/metrics`.
//! - [`metrics`]: the one `/metrics` registry and the family encoders every module's counters
//!   use (a leaf: it imports nothing from the crate).
//! - [`tools`]: operator tools speaking Kafka themselves: `reencrypt`, `inspect`.
//!
//! With the `fuzzing` feature (and in the crate's own tests) `fuzzing` holds the fuzz oracles.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod cli;
pub mod config;
pub mod constant_time;
pub mod crypto;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod json;
pub mod kafka;
pub mod kms;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod principal;
pub mod proxy;
pub mod schema;
pub mod tools;
