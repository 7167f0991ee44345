//! Test rig: starts real services (tansu, OpenBao, Kapsule) on free ports, runs real Kafka clients against
//! them, and stops every process it started, also when a test fails.
//!
//! Integration tests take the bootstrap address their clients use from [`Kapsule::bootstrap`], so
//! every client talks only to Kapsule, which talks to a real tansu broker. Setting
//! `KAPSULE_RIG_DIRECT=1` makes [`Kapsule::start`] hand out the broker's own address instead; that
//! validates the tests and client scripts against tansu alone (useful before the proxy exists, and to
//! tell a proxy bug from a broker or client limit).
//!
//! Environment:
//! - `KAPSULE_BIN`: the `kapsule` binary to run; otherwise the rig builds it once with
//!   `cargo build -p kapsule --bin kapsule` and uses the artifact cargo reports.
//! - `LOCAL_KMS_BIN`: the `local-kms` binary (AWS KMS API); otherwise PATH, then `~/go/bin`.
//! - `TANSU_BIN`: the `tansu` binary; otherwise `tansu` on `PATH`, then `~/.cargo/bin/tansu`.
//! - `KAPSULE_RIG_DIRECT=1`: bypass Kapsule (see above).
//! - `KAPSULE_RIG_SHOW_LOGS=1`: print every service's log when its guard drops, not only on panic.
//! - `KAPSULE_TEST_BROKER=tansu`: run the tests about Kafka behaviour ([`Broker::start_default`])
//!   against tansu instead of the shared Apache Kafka node.
//! - `KAPSULE_JAVA_LOG=INFO`: log level of the Java reference client (stderr; default WARN).

pub mod aws_kms;
pub mod broker;
pub mod clients;
pub mod encryption;
pub mod fleet;
pub mod gcp_kms;
pub mod kafka;
pub mod kapsule;
pub mod kms_server;
pub mod netns;
pub mod openbao;
pub mod ports;
pub mod probe;
pub mod process;
pub mod records;
pub mod registry;
pub mod sasl;
pub mod tansu;
pub mod tls;
pub mod wait;

pub use broker::{Broker, TestBroker};
pub use clients::{
    run_bench_load, run_franz, run_java, run_java_serde, run_node, run_python, ClientOutput,
    InteractiveClient,
};
pub use kafka::{AclOperation, KafkaCluster, KafkaOptions, Listener};
pub use kapsule::{Kapsule, KapsuleConfig, RecordsMode};
pub use ports::free_port;
pub use process::ProcessGuard;
pub use records::TestRecord;
pub use registry::SchemaRegistry;
pub use tansu::Tansu;

/// Names unique within this test process and across concurrent runs: `prefix-<pid>-<counter>`.
///
/// Use for topics and consumer groups so tests running in parallel never share state.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
