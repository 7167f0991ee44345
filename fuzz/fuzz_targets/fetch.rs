//! Fuzz target `fetch`: an options byte and a Fetch partition's record set, decrypted batch by
//! batch by a real `RecordEncryptor` over a fixed-key in-memory KMS (seeds in
//! fuzz/seeds/fetch are batches encrypted under those keys). No panic, no unbounded
//! allocation, and the decrypt invariants of `kapsule::fuzzing::fetch::check` hold (stable
//! fallback: `fuzzing::tests::fuzz_fallback_fetch`).
#![no_main]

#[path = "common/capped_alloc.rs"]
mod capped_alloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kapsule::fuzzing::fetch::check(data);
});
