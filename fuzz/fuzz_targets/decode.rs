//! Fuzz target `decode`: splits arbitrary bytes as a Kafka record set and decodes every
//! complete v2 batch; whenever a decode succeeds, encode+decode must give the same batch (and
//! uncompressed re-encodes must be byte-identical). The oracle is
//! `kapsule::kafka::records::fuzz_check`, shared with the stable fallback test
//! `kafka::records::tests::fuzz_fallback_decode`.
#![no_main]
// The codec modules are compiled in from the host crate's sources so the fuzz build instruments
// only the codec and its compression crates. Items the oracle does not use are dead code here.
#![allow(dead_code, unused_imports)]

#[path = "../../host/src/kafka/compression.rs"]
mod compression;
#[path = "../../host/src/kafka/records.rs"]
mod records;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    records::fuzz_check(data);
});
