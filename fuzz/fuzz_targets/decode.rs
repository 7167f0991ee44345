//! Fuzz target `decode`: splits arbitrary bytes as a Kafka record set and decodes every
//! complete v2 batch; whenever a decode succeeds, encode+decode must give the same batch (and
//! uncompressed re-encodes must be byte-identical). Oracle: `kapsule::fuzzing::decode::check`,
//! shared with the stable fallback test `fuzzing::tests::fuzz_fallback_decode`.
#![no_main]

#[path = "common/capped_alloc.rs"]
mod capped_alloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kapsule::fuzzing::decode::check(data);
});
