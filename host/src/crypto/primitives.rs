//! Cryptographic primitives: AES-256-GCM under a DEK, AES-SIV for record keys, nonce arithmetic.
//!
//! Key material is held only inside cipher objects whose key schedules are wiped on drop
//! ([`super::gcm::GcmKey`], the `zeroize` feature of `aes`) or in [`zeroize::Zeroizing`] buffers.

use std::sync::Arc;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::gcm::GcmKey;
pub use super::gcm::{NONCE_LEN, TAG_LEN};

/// A data encryption key ready for AES-256-GCM, with the wrapped form it travels with.
pub struct Dek {
    cipher: GcmKey,
    /// KEK id that wrapped it.
    pub kek_id: Arc<str>,
    /// The wrapped DEK (opaque KMS ciphertext) stored in every record encrypted with it.
    pub edek: Arc<[u8]>,
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dek")
            .field("kek_id", &self.kek_id)
            .field("edek_len", &self.edek.len())
            .finish_non_exhaustive()
    }
}

impl Dek {
    /// Builds a DEK from 32 bytes of key material.
    pub fn new(key: &[u8; 32], kek_id: &str, edek: &[u8]) -> Self {
        Self {
            cipher: GcmKey::new(key),
            kek_id: Arc::from(kek_id),
            edek: Arc::from(edek),
        }
    }

    /// AES-256-GCM encryption: returns `ciphertext || tag`.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.cipher.seal_into(nonce, aad, plaintext, &mut out);
        out
    }
}

/// A DEK encrypts as its AES-256-GCM key: [`GcmKey::seal_into`], [`GcmKey::tag`],
/// [`GcmKey::open`] and the stream operations are called on the `Dek` directly.
impl std::ops::Deref for Dek {
    type Target = GcmKey;

    #[inline]
    fn deref(&self) -> &GcmKey {
        &self.cipher
    }
}

/// Deterministic AES-SIV (RFC 5297, AES-256-SIV: 512-bit key) for record keys.
pub struct RecordKeyCipher {
    key: Zeroizing<[u8; 64]>,
    /// KEK version the key was derived from (stored in the descriptor).
    pub kek_version: u32,
}

impl std::fmt::Debug for RecordKeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKeyCipher")
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

impl RecordKeyCipher {
    /// Expands 32 bytes of KMS-derived material into the 64-byte SIV key with HKDF-SHA256
    /// (salt `kapsule record key v1`, info = topic).
    pub fn from_material(material: &[u8; 32], topic: &str, kek_version: u32) -> Self {
        let mut key = Zeroizing::new([0u8; 64]);
        Hkdf::<Sha256>::new(Some(b"kapsule record key v1"), material)
            .expand(topic.as_bytes(), key.as_mut())
            .expect("64 bytes is a valid HKDF-SHA256 output length");
        Self { key, kek_version }
    }

    /// A cipher instance (AES-SIV needs `&mut`; build one per batch).
    pub fn siv(&self) -> Aes256Siv {
        Aes256Siv::new_from_slice(self.key.as_ref()).expect("64-byte key")
    }
}

/// Encrypts deterministically: `SIV tag (16) || ciphertext`.
pub fn siv_seal(siv: &mut Aes256Siv, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    siv.encrypt([aad], plaintext)
        .expect("AES-SIV encryption only fails for absurd header counts")
}

/// Decrypts `SIV tag || ciphertext`; `None` when authentication fails.
pub fn siv_open(siv: &mut Aes256Siv, aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    siv.decrypt([aad], ciphertext).ok()
}

/// Nonce of part `index`: the big-endian 64-bit counter in bytes 4..12 of `base` plus `index`.
/// `None` on overflow (a tampered descriptor; never produced by the encoder).
pub fn nonce_at(base: &[u8; NONCE_LEN], index: u32) -> Option<[u8; NONCE_LEN]> {
    let ctr = u64::from_be_bytes(base[4..].try_into().expect("8 bytes"));
    let ctr = ctr.checked_add(u64::from(index))?;
    let mut n = *base;
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_round_trip_and_tamper() {
        let dek = Dek::new(&[1u8; 32], "k", b"edek");
        let n = [9u8; 12];
        let ct = dek.seal(&n, b"aad", b"hello");
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert_eq!(dek.open(&n, b"aad", &ct).unwrap(), b"hello");
        assert!(dek.open(&n, b"aaD", &ct).is_none());
        assert!(dek.open(&nonce_at(&n, 1).unwrap(), b"aad", &ct).is_none());
    }

    #[test]
    fn siv_is_deterministic_and_topic_separated() {
        let a = RecordKeyCipher::from_material(&[2u8; 32], "t1", 1);
        let b = RecordKeyCipher::from_material(&[2u8; 32], "t2", 1);
        let c1 = siv_seal(&mut a.siv(), b"x", b"key-1");
        assert_eq!(c1, siv_seal(&mut a.siv(), b"x", b"key-1"));
        assert_ne!(c1, siv_seal(&mut a.siv(), b"x", b"key-2"));
        assert_ne!(c1, siv_seal(&mut b.siv(), b"x", b"key-1"));
        assert_eq!(siv_open(&mut a.siv(), b"x", &c1).unwrap(), b"key-1");
        assert!(siv_open(&mut a.siv(), b"y", &c1).is_none());
    }

    #[test]
    fn nonce_arithmetic() {
        let mut base = [0u8; 12];
        base[11] = 0xff;
        assert_eq!(nonce_at(&base, 1).unwrap()[10..], [1, 0]);
        let max = [0xffu8; 12];
        assert!(nonce_at(&max, 1).is_none());
        assert_eq!(nonce_at(&max, 0).unwrap(), max);
    }
}
