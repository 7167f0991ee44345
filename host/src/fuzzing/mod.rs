//! Fuzz oracles: one function per cargo-fuzz target in `fuzz/`, each taking the fuzzer's input
//! and panicking only when an invariant breaks (never on malformed input).
//!
//! - [`decode`]: the record-batch codec on arbitrary bytes.
//! - [`descriptor`]: the `kapsule.enc` descriptor parser on arbitrary bytes.
//! - [`fetch`]: a Fetch partition's record set through decryption with a real encryptor.
//! - [`produce`]: structure-aware batches through encrypt → wire → decrypt, which must round-trip.
//!
//! The encryptor runs over a [`crate::kms::memory::MemoryKms`] with keys derived from a fixed
//! seed ([`kms`]), so the encrypted seeds in
//! `fuzz/seeds/` decrypt in every run. Compiled only for the crate's own tests and with the
//! `fuzzing` feature (which the `fuzz/` crate enables); never part of the shipped library. The
//! stable fallbacks in `tests` run the same oracles on proptest-generated inputs
//! (`scripts/fuzz.sh` without cargo-fuzz, and a short round in every `cargo test`). See
//! docs/codec.md.

pub mod decode;
pub mod descriptor;
pub mod fetch;
pub mod kms;
pub mod produce;

#[cfg(test)]
mod tests;
