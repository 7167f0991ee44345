//! In-process KMS for tests: real AES-256-GCM wrapping, KEK versions, failure injection, delays
//! and per-operation call counters. Not for production (keys vanish with the process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use hkdf::Hkdf;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN,
};

/// In-memory KMS (see the module docs).
#[derive(Default)]
pub struct MemoryKms {
    keys: Mutex<HashMap<String, Vec<SecretKey>>>,
    fail: Mutex<Option<KmsErrorKind>>,
    delay: Mutex<Duration>,
    /// Number of `generate_data_key` calls (including failed ones).
    pub generate_calls: AtomicU64,
    /// Number of `decrypt_data_key` calls (including failed ones).
    pub decrypt_calls: AtomicU64,
    /// Number of `derive_key` calls (including failed ones).
    pub derive_calls: AtomicU64,
}

impl std::fmt::Debug for MemoryKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKms").finish_non_exhaustive()
    }
}

impl MemoryKms {
    /// A KMS holding version 1 of each of `key_ids`.
    pub fn with_keys(key_ids: &[&str]) -> Self {
        let kms = Self::default();
        for k in key_ids {
            kms.rotate_key(k);
        }
        kms
    }

    /// A KMS holding version 1 of each of `key_ids`, each KEK derived from `seed` and the key id
    /// (HKDF-SHA256): ciphertext written through one such KMS decrypts through any other built
    /// from the same seed (e.g. committed fuzzing seeds). Test material only.
    pub fn with_derived_keys(seed: &[u8; 32], key_ids: &[&str]) -> Self {
        let kms = Self::default();
        let hkdf = Hkdf::<Sha256>::new(Some(b"memory kms derived keks"), seed);
        let mut keys = kms.keys.lock();
        for k in key_ids {
            let mut kek = Zeroizing::new([0u8; DEK_LEN]);
            hkdf.expand(k.as_bytes(), kek.as_mut())
                .expect("32-byte output");
            keys.insert((*k).to_owned(), vec![kek]);
        }
        drop(keys);
        kms
    }

    /// Adds a version to `key_id` (creating it at version 1); returns the new version.
    pub fn rotate_key(&self, key_id: &str) -> u32 {
        let mut k = Zeroizing::new([0u8; DEK_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        let mut keys = self.keys.lock();
        let v = keys.entry(key_id.to_owned()).or_default();
        v.push(k);
        v.len() as u32
    }

    /// Deletes `key_id` and all its versions.
    pub fn delete_key(&self, key_id: &str) {
        self.keys.lock().remove(key_id);
    }

    /// Makes every following call fail with `kind` (`None` restores normal operation).
    pub fn fail_with(&self, kind: Option<KmsErrorKind>) {
        *self.fail.lock() = kind;
    }

    /// Delays every following call by `d` (to test coalescing and refresh-ahead).
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock() = d;
    }

    async fn enter(&self, key_id: &str, counter: &AtomicU64) -> Result<(), KmsError> {
        counter.fetch_add(1, Ordering::SeqCst);
        let d = *self.delay.lock();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        if let Some(kind) = *self.fail.lock() {
            return Err(KmsError::new(kind, key_id, "injected failure"));
        }
        Ok(())
    }

    fn version(&self, key_id: &str, version: Option<u32>) -> Result<(u32, SecretKey), KmsError> {
        let keys = self.keys.lock();
        let versions = keys
            .get(key_id)
            .ok_or_else(|| KmsError::new(KmsErrorKind::UnknownKey, key_id, "no such key"))?;
        let n = version.unwrap_or(versions.len() as u32);
        let k = n
            .checked_sub(1)
            .and_then(|i| versions.get(i as usize))
            .ok_or_else(|| {
                KmsError::new(
                    KmsErrorKind::InvalidCiphertext,
                    key_id,
                    "no such key version",
                )
            })?;
        Ok((n, k.clone()))
    }
}

#[async_trait]
impl Kms for MemoryKms {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        self.enter(key_id, &self.generate_calls).await?;
        let (v, kek) = self.version(key_id, None)?;
        let dek = super::random_dek();
        let mut edek = vec![0u8; 16];
        edek[..4].copy_from_slice(&v.to_be_bytes());
        rand::rngs::OsRng.fill_bytes(&mut edek[4..16]);
        let ct = Aes256Gcm::new_from_slice(kek.as_ref())
            .expect("32-byte key")
            .encrypt(
                Nonce::from_slice(&edek[4..16]),
                Payload {
                    msg: dek.as_ref(),
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| KmsError::new(KmsErrorKind::Other, key_id, "AES-GCM failed"))?;
        edek.extend_from_slice(&ct);
        Ok(DataKey {
            plaintext: dek,
            edek,
            kek_version: v,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        self.enter(key_id, &self.decrypt_calls).await?;
        let bad = || KmsError::new(KmsErrorKind::InvalidCiphertext, key_id, "bad EDEK");
        if edek.len() != 16 + DEK_LEN + 16 {
            return Err(bad());
        }
        let v = u32::from_be_bytes(edek[..4].try_into().expect("4 bytes"));
        let (_, kek) = self.version(key_id, Some(v))?;
        let pt = Zeroizing::new(
            Aes256Gcm::new_from_slice(kek.as_ref())
                .expect("32-byte key")
                .decrypt(
                    Nonce::from_slice(&edek[4..16]),
                    Payload {
                        msg: &edek[16..],
                        aad: key_id.as_bytes(),
                    },
                )
                .map_err(|_| bad())?,
        );
        let mut out = Zeroizing::new([0u8; DEK_LEN]);
        out.copy_from_slice(&pt);
        Ok(out)
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        let (v, _) = self.version(key_id, None)?;
        Ok(KeyInfo::new(key_id, v))
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        self.enter(request.key_id, &self.derive_calls).await?;
        let (v, kek) = self.version(request.key_id, request.version)?;
        let mut material = Zeroizing::new([0u8; DEK_LEN]);
        Hkdf::<Sha256>::new(Some(b"memory kms derive"), kek.as_ref())
            .expand(request.context, material.as_mut())
            .expect("32-byte output");
        Ok(DerivedKey {
            material,
            kek_version: v,
        })
    }
}
