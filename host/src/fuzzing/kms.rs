//! The KMS the fuzz oracles encrypt and decrypt with: a [`MemoryKms`] whose keys are derived
//! from a fixed seed, so encrypted seeds written once decrypt in every fuzzing run; the encryptor
//! over it and the runtime it is driven on.

use std::future::Future;
use std::sync::Arc;

use crate::crypto::keys::DekConfig;
use crate::crypto::record::RecordEncryptor;
use crate::kms::memory::MemoryKms;

/// Fixed seed every KEK is derived from (test material, never a real key).
const SEED: [u8; 32] = *b"kapsule fuzzing master key 00000";
/// The key ids that exist. Any other id is unknown to the KMS.
pub const KEY_IDS: [&str; 2] = ["k1", "k2"];
/// Key ids with this prefix do not exist ([`crate::kms::KmsErrorKind::UnknownKey`]).
pub const MISSING_KEY_PREFIX: &str = "missing";

/// Runs `f` to completion on this thread's single-threaded runtime (built once per thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// A fresh encryptor over the fixed-seed KMS with empty caches (small ones: a fuzz input needs
/// few keys, and one encryptor is built per input).
pub fn encryptor() -> RecordEncryptor {
    let cfg = DekConfig {
        decrypted_cache_size: 64,
        ..DekConfig::default()
    };
    RecordEncryptor::new(Arc::new(MemoryKms::with_derived_keys(&SEED, &KEY_IDS)), cfg)
}
