//! Encryption of Kafka records: primitives, the `kapsule.enc` wire format, the DEK lifecycle
//! ([`keys`]) and the batch API.
//!
//! The proxy uses one [`RecordEncryptor`] per process:
//! - Produce: [`RecordEncryptor::encrypt_batch`] with one [`crate::plan::RecordDecision`] per
//!   record. All or nothing; on error refuse the partition with the Kafka error of
//!   [`crate::error::ProxyError`] (`From<EncryptError>`) and never forward the batch.
//! - Fetch: optionally [`may_contain_encrypted`] on the raw uncompressed records or
//!   [`batch_has_encrypted_records`] to forward untouched batches as they are, then
//!   [`RecordEncryptor::decrypt_batch`] per batch with [`DecryptOptions`] (the proxy works batch
//!   by batch; [`RecordEncryptor::prefetch`] resolves the keys of many batches at once).
//! - Metrics: [`metrics::CryptoMetrics::render_prometheus`] via [`RecordEncryptor::metrics`].
//!
//! Scheme (details in docs/wire-format.md): values, header values and JSON fields use
//! AES-256-GCM under a per-(KEK, topic) DEK with counter nonces; record keys use deterministic
//! AES-SIV under a key derived by the KMS from the KEK per topic, so equal keys stay equal.

pub mod gcm;
pub mod keys;
pub mod metrics;
pub mod primitives;
pub mod record;
pub mod wire;

#[cfg(test)]
mod tests;

pub use keys::{DekConfig, DekManager, RotationReason};
pub use metrics::CryptoMetrics;
pub use record::{
    batch_has_encrypted_records, may_contain_encrypted, DecryptError, DecryptFailure,
    DecryptOptions, DecryptStats, EncryptError, EncryptStats, RecordEncryptor,
};
pub use wire::HEADER_KEY;
