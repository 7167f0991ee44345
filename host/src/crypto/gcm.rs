//! AES-256-GCM through `ring` (stitched AES-NI/VAES + CLMUL code, several times the throughput of
//! the portable implementation on the hot path), with the key schedule wiped on drop.
//!
//! `ring` does not zeroize its keys. Its AEAD key keeps its whole state (AES round keys and the
//! GHASH key table) inline, without heap pointers, so [`GcmKey`] boxes it and overwrites the box's
//! bytes after dropping it.

use std::mem::ManuallyDrop;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// GCM nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// GCM / SIV tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key. Wiped when dropped.
pub struct GcmKey {
    key: Box<ManuallyDrop<LessSafeKey>>,
}

impl std::fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcmKey(..)")
    }
}

impl GcmKey {
    /// Expands a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes 32-byte keys");
        Self {
            key: Box::new(ManuallyDrop::new(LessSafeKey::new(unbound))),
        }
    }

    /// Encrypts `plaintext` and appends `ciphertext || tag` to `out`.
    pub fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .expect("AES-GCM sealing only fails for inputs beyond 64 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// The tag of an empty plaintext under `aad` (a MAC of `aad`), without allocating.
    pub fn tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut [],
            )
            .expect("AES-GCM sealing only fails for inputs beyond 64 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `tag` is [`Self::tag`] of `aad` (verified in constant time by `ring`).
    pub fn verify_tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], tag: &[u8]) -> bool {
        let Ok(mut buf) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        self.key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .is_ok()
    }

    /// Decrypts `ciphertext || tag`; `None` when authentication fails.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() < TAG_LEN {
            return None;
        }
        let mut buf = ciphertext.to_vec();
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

impl Drop for GcmKey {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let slot: &mut ManuallyDrop<LessSafeKey> = &mut self.key;
        // SAFETY: the key is dropped exactly once, here, and never touched again as a
        // `LessSafeKey`. Afterwards the box's bytes are plain memory this struct still owns (the
        // box is freed after this function), so overwriting them is sound. `ring`'s key holds its
        // state inline (no heap pointers), so this wipes all of it. Volatile writes keep the
        // compiler from eliding the stores to memory about to be freed.
        unsafe {
            ManuallyDrop::drop(slot);
            let bytes = (slot as *mut ManuallyDrop<LessSafeKey>).cast::<u8>();
            for i in 0..std::mem::size_of::<ManuallyDrop<LessSafeKey>>() {
                std::ptr::write_volatile(bytes.add(i), 0);
            }
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit, Payload};

    /// Same bytes as the RustCrypto implementation, both ways.
    #[test]
    fn matches_the_reference_implementation() {
        let key = [7u8; 32];
        let nonce = [3u8; 12];
        let reference = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
        let gcm = GcmKey::new(&key);
        for len in [0usize, 1, 15, 16, 17, 1024, 4099] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut ct = vec![0xAA];
            gcm.seal_into(&nonce, b"aad", &pt, &mut ct);
            let want = reference
                .encrypt(
                    aes_gcm::Nonce::from_slice(&nonce),
                    Payload {
                        msg: &pt,
                        aad: b"aad",
                    },
                )
                .unwrap();
            assert_eq!(&ct[1..], &want[..], "len {len}");
            assert_eq!(gcm.open(&nonce, b"aad", &want).unwrap(), pt);
            assert!(gcm.open(&nonce, b"aaD", &want).is_none());
        }
        assert!(gcm.open(&nonce, b"", &[0u8; 15]).is_none());
    }
}
