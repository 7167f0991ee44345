//! A KMS with fixed keys, so encrypted seeds written once decrypt in every fuzzing run; the
//! encryptor over it and the runtime it is driven on.

use std::future::Future;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::keys::DekConfig;
use crate::crypto::record::RecordEncryptor;
use crate::kms::{DataKey, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN};

/// Fixed master secret every KEK is derived from (test material, never a real key).
const MASTER: [u8; 32] = *b"kapsule fuzzing master key 00000";
/// Key ids with this prefix do not exist ([`KmsErrorKind::UnknownKey`]).
pub const MISSING_KEY_PREFIX: &str = "missing";
/// EDEK layout: version (u32 BE), nonce (12), AES-GCM(KEK, DEK) with the key id as AAD.
const EDEK_LEN: usize = 4 + 12 + DEK_LEN + 16;

/// KMS whose KEK for a key id is HKDF(fixed master, key id), version 1 only. Every key id
/// exists except those starting with [`MISSING_KEY_PREFIX`]. DEKs and EDEK nonces are random
/// (as with a real KMS); the fixed KEKs are what make stored ciphertext decryptable later.
#[derive(Debug, Default)]
pub struct FixedKms;

impl FixedKms {
    fn kek(key_id: &str, version: Option<u32>) -> Result<SecretKey, KmsError> {
        if key_id.starts_with(MISSING_KEY_PREFIX) {
            return Err(KmsError::new(
                KmsErrorKind::UnknownKey,
                key_id,
                "no such key",
            ));
        }
        if !matches!(version, None | Some(1)) {
            return Err(KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "no such key version",
            ));
        }
        let mut kek = Zeroizing::new([0u8; DEK_LEN]);
        Hkdf::<Sha256>::new(Some(b"kapsule fuzz kek"), &MASTER)
            .expand(key_id.as_bytes(), kek.as_mut())
            .expect("32-byte output");
        Ok(kek)
    }

    fn cipher(kek: &SecretKey) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(kek.as_ref()).expect("32-byte key")
    }
}

#[async_trait]
impl Kms for FixedKms {
    fn backend(&self) -> &'static str {
        "fuzzing"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let kek = Self::kek(key_id, None)?;
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        rand::rngs::OsRng.fill_bytes(dek.as_mut());
        let mut edek = vec![0u8; 16];
        edek[..4].copy_from_slice(&1u32.to_be_bytes());
        rand::rngs::OsRng.fill_bytes(&mut edek[4..16]);
        let ct = Self::cipher(&kek)
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
            kek_version: 1,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let bad = || KmsError::new(KmsErrorKind::InvalidCiphertext, key_id, "bad EDEK");
        if edek.len() != EDEK_LEN {
            return Err(bad());
        }
        let version = u32::from_be_bytes(edek[..4].try_into().expect("4 bytes"));
        let kek = Self::kek(key_id, Some(version))?;
        let pt = Zeroizing::new(
            Self::cipher(&kek)
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
        Self::kek(key_id, None)?;
        Ok(KeyInfo {
            key_id: key_id.to_owned(),
            latest_version: 1,
        })
    }

    async fn derive_key(
        &self,
        key_id: &str,
        context: &[u8],
        version: Option<u32>,
    ) -> Result<DerivedKey, KmsError> {
        let kek = Self::kek(key_id, version)?;
        let mut material = Zeroizing::new([0u8; DEK_LEN]);
        Hkdf::<Sha256>::new(Some(b"kapsule fuzz derive"), kek.as_ref())
            .expand(context, material.as_mut())
            .expect("32-byte output");
        Ok(DerivedKey {
            material,
            kek_version: 1,
        })
    }
}

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

/// A fresh encryptor over [`FixedKms`] with empty caches (small ones: a fuzz input needs few
/// keys, and one encryptor is built per input).
pub fn encryptor() -> RecordEncryptor {
    let cfg = DekConfig {
        decrypted_cache_size: 64,
        ..DekConfig::default()
    };
    RecordEncryptor::new(Arc::new(FixedKms), cfg)
}
