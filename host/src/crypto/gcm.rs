//! AES-256-GCM through `ring` (stitched AES-NI/VAES + CLMUL code, several times the throughput of
//! the portable implementation on the hot path), with the key schedule wiped on drop.
//!
//! The same key is also expanded as a RustCrypto `aes` block cipher, used only for GCM's CTR
//! keystream over the known prefix of a revision 3 whole-value stream when opening it (`ring`
//! has no bare CTR): one AES-GCM call per record instead of two.
//!
//! `ring` does not zeroize its keys. Its AEAD key keeps its whole state (AES round keys and the
//! GHASH key table) inline, without heap pointers, so [`GcmKey`] boxes it and overwrites the box's
//! bytes after dropping it.

use std::cell::RefCell;
use std::mem::ManuallyDrop;

use aes::cipher::KeyInit;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

/// GCM nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// GCM / SIV tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Largest plaintext [`GcmKey::tag`] seals in its per-thread scratch buffer; a larger one gets
/// a buffer of its own, so no thread keeps more than this.
pub const TAG_SCRATCH_KEEP: usize = 256 * 1024;

thread_local! {
    /// Where [`GcmKey::tag`] seals (ciphertext only, never plaintext, once sealed).
    static TAG_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An AES-256-GCM key. Wiped when dropped.
pub struct GcmKey {
    key: Box<ManuallyDrop<LessSafeKey>>,
    /// The same key as a block cipher (RustCrypto `aes`, AES-NI; its schedule is wiped on drop by
    /// the `zeroize` feature), for GCM's CTR keystream over a stream's known prefix without a
    /// whole AES-GCM call ([`GcmKey::open_stored_tail`]).
    blocks: Box<aes::Aes256>,
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
            blocks: Box::new(aes::Aes256::new(key.into())),
        }
    }

    /// XORs `buf`, the first bytes of a message sealed at `nonce`, with GCM's keystream for
    /// them: AES of `nonce ‖ counter` for counters 2, 3, ... (96-bit nonce; counter 1 masks the
    /// tag). Turns known plaintext into the ciphertext AES-GCM gave it, and back.
    fn apply_keystream(&self, nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
        use aes::cipher::BlockEncrypt;
        // Eight blocks per call: the AES-NI backend pipelines them.
        const LANES: usize = 8;
        let mut counter: u32 = 2;
        let mut blocks = [aes::Block::default(); LANES];
        for chunk in buf.chunks_mut(16 * LANES) {
            let n = chunk.len().div_ceil(16);
            for block in &mut blocks[..n] {
                block[..NONCE_LEN].copy_from_slice(nonce);
                block[NONCE_LEN..].copy_from_slice(&counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            self.blocks.encrypt_blocks(&mut blocks[..n]);
            for (piece, key) in chunk.chunks_mut(16).zip(&blocks) {
                match <&mut [u8; 16]>::try_from(&mut *piece) {
                    // A whole block: one 128-bit XOR, not sixteen byte ones.
                    Ok(piece) => {
                        let key: [u8; 16] = key.as_slice().try_into().expect("16-byte block");
                        *piece =
                            (u128::from_ne_bytes(*piece) ^ u128::from_ne_bytes(key)).to_ne_bytes();
                    }
                    Err(_) => {
                        for (byte, k) in piece.iter_mut().zip(key.iter()) {
                            *byte ^= k;
                        }
                    }
                }
            }
        }
        for block in &mut blocks {
            zeroize::Zeroize::zeroize(block.as_mut_slice());
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
        let tag = self.seal_in_place(nonce, aad, &mut out[start..]);
        out.extend_from_slice(&tag);
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("AES-GCM sealing only fails for inputs beyond 64 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The tag of sealing `plaintext` under `aad` (a MAC of both), discarding the ciphertext.
    /// An empty `plaintext` allocates nothing; otherwise it is sealed in a per-thread scratch
    /// buffer (kept up to [`TAG_SCRATCH_KEEP`] bytes), which takes AES-GCM's bulk path: for more
    /// than a few blocks, far cheaper than passing the same bytes as `aad`.
    pub fn tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> [u8; TAG_LEN] {
        let seal = |buf: &mut [u8]| self.seal_in_place(nonce, aad, buf);
        if plaintext.is_empty() {
            return seal(&mut []);
        }
        if plaintext.len() > TAG_SCRATCH_KEEP {
            return seal(&mut plaintext.to_vec());
        }
        TAG_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            scratch.extend_from_slice(plaintext);
            seal(&mut scratch)
        })
    }

    /// Seals `stream` in place under no AAD and returns the tag: a stream of which the caller
    /// keeps some ciphertext and discards the rest (associated data revision 3).
    pub fn seal_stream(&self, nonce: &[u8; NONCE_LEN], stream: &mut [u8]) -> [u8; TAG_LEN] {
        self.seal_in_place(nonce, b"", stream)
    }

    /// Verifies and decrypts a stream sealed by [`seal_stream`](Self::seal_stream) of which
    /// only `stored_ciphertext` was kept, the ciphertext of the bytes at `stored_at..`: `stream`
    /// holds the plaintext everywhere else (what it holds in that range is ignored). On success
    /// `stream` holds the whole plaintext and `true` is returned; otherwise `stream` is zeroed
    /// and `false` returned.
    ///
    /// GCM authenticates ciphertext, so the discarded ciphertext is first recomputed: one pass
    /// seals the stream (turning the known plaintext into its ciphertext; the range becomes
    /// garbage and is then filled with the stored ciphertext), a second opens it against `tag`.
    /// Nothing unverified leaves this function.
    pub fn open_partly_stored(
        &self,
        nonce: &[u8; NONCE_LEN],
        stream: &mut [u8],
        stored_at: usize,
        stored_ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let stored = stored_at..stored_at.saturating_add(stored_ciphertext.len());
        if stored.end > stream.len() {
            stream.fill(0);
            return false;
        }
        self.seal_in_place(nonce, b"", stream);
        stream[stored].copy_from_slice(stored_ciphertext);
        self.open_stream(nonce, stream, tag)
    }

    /// [`open_partly_stored`](Self::open_partly_stored) for a stream whose kept ciphertext runs
    /// from `stored_at` to its end and is already in place: `stream` holds the known plaintext
    /// before `stored_at` and the stored ciphertext after it. The bytes before `stored_at` are
    /// turned into their ciphertext with GCM's CTR keystream alone (no tag, no GHASH: the
    /// keystream at a position does not depend on what follows), so the stored bytes go through
    /// AES once and the whole takes one AES-GCM call. On success `stream` holds the whole
    /// plaintext and `true` is returned; otherwise `stream` is zeroed and `false` returned.
    pub fn open_stored_tail(
        &self,
        nonce: &[u8; NONCE_LEN],
        stream: &mut [u8],
        stored_at: usize,
        tag: &[u8; TAG_LEN],
    ) -> bool {
        if stored_at > stream.len() {
            stream.fill(0);
            return false;
        }
        self.apply_keystream(nonce, &mut stream[..stored_at]);
        self.open_stream(nonce, stream, tag)
    }

    /// Opens a stream sealed by [`seal_stream`](Self::seal_stream), now all ciphertext, in
    /// place; `ring` zeroes it when `tag` does not authenticate it.
    fn open_stream(&self, nonce: &[u8; NONCE_LEN], stream: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::empty(),
                Tag::from(*tag),
                stream,
                0..,
            )
            .is_ok()
    }

    /// Decrypts `ciphertext || tag`; `None` when authentication fails. The plaintext's `Vec`
    /// has exactly its length as capacity (it becomes [`bytes::Bytes`] without another
    /// allocation).
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let body_len = ciphertext.len().checked_sub(TAG_LEN)?;
        let (body, tag) = ciphertext.split_at(body_len);
        let tag: [u8; TAG_LEN] = tag.try_into().expect("TAG_LEN bytes");
        let mut buf = Vec::with_capacity(body_len);
        buf.extend_from_slice(body);
        let opened = self.key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            Tag::from(tag),
            &mut buf,
            0..,
        );
        if opened.is_err() {
            // Unauthenticated: never handed out.
            buf.fill(0);
            return None;
        }
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

    /// `tag` is the tag `seal_into` appends, for empty, scratch-sized and larger plaintexts, and
    /// two calls on one thread do not see each other's bytes.
    #[test]
    fn tag_is_the_seal_tag_of_the_plaintext() {
        let gcm = GcmKey::new(&[9u8; 32]);
        let nonce = [5u8; 12];
        for len in [0usize, 1, 17, 1200, TAG_SCRATCH_KEEP, TAG_SCRATCH_KEEP + 1] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let mut sealed = Vec::new();
            gcm.seal_into(&nonce, b"ctx", &pt, &mut sealed);
            assert_eq!(gcm.tag(&nonce, b"ctx", &pt), sealed[len..], "len {len}");
        }
        let long = gcm.tag(&nonce, b"", &[1u8; 100]);
        assert_ne!(long, gcm.tag(&nonce, b"", &[1u8; 99]));
        let short = gcm.tag(&nonce, b"", &[1u8; 10]);
        assert_ne!(long, short);
        assert_eq!(gcm.tag(&nonce, b"", &[1u8; 100]), long);
    }

    /// A stream of which only a range's ciphertext is kept opens back to its plaintext with the
    /// seal's tag, and fails (leaving zeros) when a byte of that ciphertext or of the plaintext
    /// around it, or the tag, differs, or the range does not fit the stream.
    #[test]
    fn a_partly_stored_stream_opens_only_when_every_byte_is_as_sealed() {
        let gcm = GcmKey::new(&[4u8; 32]);
        let nonce = [8u8; 12];
        for (len, kept) in [(0usize, 0..0), (40, 10..20), (1200, 300..700), (33, 0..33)] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let mut sealed = plaintext.clone();
            let tag = gcm.seal_stream(&nonce, &mut sealed);
            let kept_ciphertext = &sealed[kept.clone()];
            // The stream as a reader rebuilds it: plaintext around the kept range, junk in it.
            let rebuilt = || {
                let mut s = plaintext.clone();
                s[kept.clone()].fill(0xA5);
                s
            };
            let mut stream = rebuilt();
            assert!(gcm.open_partly_stored(&nonce, &mut stream, kept.start, kept_ciphertext, &tag));
            assert_eq!(stream, plaintext, "len {len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    break;
                }
                // A byte of the kept ciphertext, or of the plaintext around it, altered.
                let mut stream = rebuilt();
                let mut ciphertext = kept_ciphertext.to_vec();
                if kept.contains(&at) {
                    ciphertext[at - kept.start] ^= 1;
                } else {
                    stream[at] ^= 1;
                }
                assert!(!gcm.open_partly_stored(
                    &nonce,
                    &mut stream,
                    kept.start,
                    &ciphertext,
                    &tag
                ));
                assert!(stream.iter().all(|&b| b == 0), "len {len}: not zeroed");
            }
            let mut bad_tag = tag;
            bad_tag[0] ^= 1;
            let mut stream = rebuilt();
            assert!(!gcm.open_partly_stored(
                &nonce,
                &mut stream,
                kept.start,
                kept_ciphertext,
                &bad_tag
            ));
        }
        let mut short = vec![0u8; 4];
        assert!(!gcm.open_partly_stored(&nonce, &mut short, 2, &[0; 7], &[0; 16]));
    }

    /// The CTR keystream alone gives the ciphertext AES-GCM gives the same bytes at the same
    /// nonce, at every length around the 8-block chunks.
    #[test]
    fn the_keystream_is_the_one_aes_gcm_seals_with() {
        let gcm = GcmKey::new(&[0x3cu8; 32]);
        let nonce = [0xa7u8; 12];
        for len in [0usize, 1, 15, 16, 17, 127, 128, 129, 300, 1024] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 29 % 256) as u8).collect();
            let mut sealed = plaintext.clone();
            gcm.seal_stream(&nonce, &mut sealed);
            let mut xored = plaintext.clone();
            gcm.apply_keystream(&nonce, &mut xored);
            assert_eq!(xored, sealed, "len {len}");
            gcm.apply_keystream(&nonce, &mut xored);
            assert_eq!(xored, plaintext, "len {len}: not an involution");
        }
    }

    /// A stream of which the ciphertext from some point to its end was kept opens back to its
    /// plaintext with the seal's tag, and fails (leaving zeros) when a byte of the known
    /// plaintext or of the kept ciphertext, or the tag, differs, or the split lies past the end.
    #[test]
    fn a_stream_with_its_stored_tail_opens_only_when_every_byte_is_as_sealed() {
        let gcm = GcmKey::new(&[6u8; 32]);
        let nonce = [2u8; 12];
        for (len, at) in [
            (0usize, 0usize),
            (40, 17),
            (1200, 150),
            (1200, 1200),
            (33, 0),
        ] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 11 % 251) as u8).collect();
            let mut sealed = plaintext.clone();
            let tag = gcm.seal_stream(&nonce, &mut sealed);
            // As a reader rebuilds it: the known plaintext, then the kept ciphertext.
            let rebuilt = || [&plaintext[..at], &sealed[at..]].concat();
            let mut stream = rebuilt();
            assert!(gcm.open_stored_tail(&nonce, &mut stream, at, &tag));
            assert_eq!(stream, plaintext, "len {len}");
            for flip in [0, at.saturating_sub(1), at, len.saturating_sub(1)] {
                if flip >= len {
                    continue;
                }
                let mut stream = rebuilt();
                stream[flip] ^= 1;
                assert!(!gcm.open_stored_tail(&nonce, &mut stream, at, &tag));
                assert!(stream.iter().all(|&b| b == 0), "len {len}: not zeroed");
            }
            let mut bad_tag = tag;
            bad_tag[15] ^= 1;
            assert!(!gcm.open_stored_tail(&nonce, &mut rebuilt(), at, &bad_tag));
        }
        let mut short = vec![1u8; 4];
        assert!(!gcm.open_stored_tail(&nonce, &mut short, 5, &[0; 16]));
        assert_eq!(short, [0; 4]);
    }
}
