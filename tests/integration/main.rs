//! Integration tests: real clients talk only to Kapsule, which talks to a real tansu broker.
//!
//! Every test starts its own broker and Kapsule on free ports (so tests run in parallel) and takes
//! the bootstrap address its clients use from [`kapsule_integration::Kapsule::bootstrap`]. With
//! `KAPSULE_RIG_DIRECT=1` the same tests run against tansu alone, which tells proxy bugs from broker
//! or client limits. Each record-path test runs once per `records:` mode (passthrough, reencode).

mod apache_kafka;
mod approle;
mod authoring;
mod common;
mod compaction;
mod concurrency;
mod confluent;
mod encryption;
mod fail_closed;
mod fleet;
mod groups;
mod hardening;
mod hostile_guests;
mod kafka_cluster;
mod kafka_security;
mod kafkajs;
mod kcat;
mod kms_aws;
mod kms_figure;
mod kms_gcp;
mod kms_vault;
mod lifecycle;
mod memory;
mod pipeline;
mod policies;
mod polyglot;
mod proxy_protocol;
mod resilience;
mod reveal;
mod sandbox;
mod sasl;
mod schema_fields;
mod schema_java;
mod schema_policy;
mod schema_refusals;
mod sni;
mod templates;
mod tls;
mod tools;
mod topic_ids;
