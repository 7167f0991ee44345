//! Fuzz target `descriptor`: the `kapsule.enc` header parser on arbitrary bytes; a descriptor
//! that decodes must re-encode byte for byte. Oracle: `kapsule::fuzzing::descriptor::check`
//! (stable fallback: `fuzzing::tests::fuzz_fallback_descriptor`).
#![no_main]

#[path = "common/capped_alloc.rs"]
mod capped_alloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kapsule::fuzzing::descriptor::check(data);
});
