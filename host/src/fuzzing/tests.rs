//! Stable fallbacks of the fuzz targets: each oracle of [`super`] on proptest-generated inputs.
//! Under `cargo test` one round per target; with `FUZZ_FALLBACK_SECONDS=N` (set by
//! scripts/fuzz.sh) each repeats rounds until N seconds have passed. A failure is shrunk and
//! the minimal input printed. The `write_*_seeds` tests (ignored) refresh `fuzz/seeds/`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::fetch::TOPIC;
use super::kms::{block_on, encryptor};
use crate::crypto::record::DecryptError;
use crate::crypto::wire::{AadScheme, Descriptor, ValueEncryption};
use crate::kafka::records::tests::props::arb_batch;
use crate::kafka::records::tests::{edge_batch, encode, mixed_record_set};
use crate::kafka::records::{split_record_set, Compression, RecordBatch};

/// Runs `check` on inputs from `strategy`: one round of `cases` under `cargo test`, or rounds
/// until `FUZZ_FALLBACK_SECONDS` have passed. Returns the number of inputs run.
fn run_fallback<S: Strategy>(name: &str, cases: u32, strategy: S, check: impl Fn(S::Value)) -> u64 {
    let budget = std::env::var("FUZZ_FALLBACK_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let started = std::time::Instant::now();
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut total = 0u64;
    loop {
        // A fresh runner per round (randomly seeded; a runner's case budget is cumulative).
        let result = TestRunner::new(config.clone()).run(&strategy, |input| {
            check(input);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{name}: fuzz oracle failed: {e}");
        }
        total += u64::from(cases);
        match budget {
            Some(b) if started.elapsed() < b => continue,
            _ => break,
        }
    }
    eprintln!(
        "{name}: {total} inputs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    total
}

/// Writes one file per seed into `$FUZZ_SEED_DIR/<target>/` (relative paths are taken from
/// `host/`, where cargo runs the crate's tests: pass an absolute path).
fn write_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = std::path::PathBuf::from(std::env::var("FUZZ_SEED_DIR").unwrap()).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

// ---- decode ---------------------------------------------------------------------------------

/// Writes the `decode` seed corpus (one record set per codec, plus a mixed v0/v1/v2/control set
/// and a truncated one). Run by hand when the format of seeds changes:
/// `FUZZ_SEED_DIR=$PWD/fuzz/seeds cargo test -p kapsule --lib write_decode_seeds -- --ignored`
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/seeds"]
fn write_decode_seeds() {
    let mut seeds = Vec::new();
    for c in Compression::ALL {
        let mut small = edge_batch(c);
        for r in &mut small.records {
            if let Some(v) = &r.value {
                r.value = Some(v.slice(..v.len().min(20)));
            }
        }
        seeds.push((format!("batch-{c}"), encode(&small).to_vec()));
    }
    let (set, _) = mixed_record_set();
    seeds.push(("mixed".into(), set.to_vec()));
    seeds.push(("mixed-truncated".into(), set[..set.len() - 7].to_vec()));
    write_seeds("decode", &seeds);
}

/// mutations and truncation (so mutations get past the framing).
fn arb_fuzz_input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::collection::vec(arb_batch(), 1..3),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(batches, edits, cut)| {
            let mut v = BytesMut::new();
            for b in &batches {
                b.encode(&mut v).unwrap();
            }
            let mut v = v.to_vec();
            for (i, byte) in edits {
                let i = i.index(v.len());
                v[i] = byte;
            }
            if let Some(c) = cut {
                v.truncate(c.index(v.len() + 1));
            }
            v
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        4 => mutated,
    ]
}

/// Stable stand-in for the `decode` target.
#[test]
fn fuzz_fallback_decode() {
    run_fallback("fuzz_fallback_decode", 512, arb_fuzz_input(), |data| {
        super::decode::check(&data)
    });
}

// ---- descriptor -----------------------------------------------------------------------------

fn arb_descriptor() -> impl Strategy<Value = Descriptor<'static>> {
    let name = proptest::collection::vec(any::<u8>(), 0..12);
    (
        prop_oneof![
            Just(ValueEncryption::None),
            Just(ValueEncryption::Whole),
            proptest::collection::vec("/[a-z0-9~]{0,6}", 1..4).prop_map(ValueEncryption::Json),
        ],
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 12]>(),
        // Valid KEK ids only (no `/`, no `..`: `wire::validate_key_id`); mutations cover the rest.
        "[a-z0-9_-]{1,10}(\\.[a-z0-9_-]{1,9})?",
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(name, 0..4),
        1u32..5,
        0u8..3,
    )
        .prop_map(
            |(value, key_encrypted, record_id, nonce_base, kek_id, edek, headers, version, rev)| {
                // Revision 3 only names a value with encrypted fields (else it does not decode).
                let aad = match (rev, &value) {
                    (2, ValueEncryption::Json(_) | ValueEncryption::Schema(_)) => AadScheme::V3,
                    (1 | 2, _) => AadScheme::V2,
                    _ => AadScheme::V1,
                };
                Descriptor {
                    value,
                    key_encrypted,
                    record_id,
                    nonce_base,
                    key_kek_version: if key_encrypted { version } else { 0 },
                    kek_id: kek_id.into(),
                    edek: edek.into(),
                    headers,
                    aad,
                }
            },
        )
}

/// Random edits and an optional truncation of `v`.
fn mutate(v: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(move |(edits, cut)| {
            let mut v = v.clone();
            if !v.is_empty() {
                for (i, byte) in edits {
                    let i = i.index(v.len());
                    v[i] = byte;
                }
            }
            if let Some(c) = cut {
                v.truncate(c.index(v.len() + 1));
            }
            v
        })
}

fn arb_descriptor_input() -> impl Strategy<Value = Vec<u8>> {
    let valid = || arb_descriptor().prop_map(|d| d.encode().unwrap());
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..128),
        2 => valid(),
        4 => valid().prop_flat_map(mutate),
    ]
}

/// Stable stand-in for the `descriptor` target.
#[test]
fn fuzz_fallback_descriptor() {
    run_fallback(
        "fuzz_fallback_descriptor",
        1024,
        arb_descriptor_input(),
        |data| super::descriptor::check(&data),
    );
}

#[test]
fn descriptor_oracle_accepts_every_valid_descriptor_byte_for_byte() {
    // The oracle's own claim, checked on the encoder's output: decode(encode(d)) == d and the
    // bytes are canonical, so the fuzz target's equality assertion cannot fire on valid input.
    TestRunner::new(Config::with_cases(256))
        .run(&arb_descriptor(), |d| {
            let bytes = d.encode().unwrap();
            prop_assert_eq!(Descriptor::decode(&bytes).unwrap(), d);
            super::descriptor::check(&bytes);
            Ok(())
        })
        .unwrap();
}

// ---- fetch ----------------------------------------------------------------------------------

/// Encrypts `batch` with selector-driven decisions (as the produce oracle does) and returns the
/// encoded batch, or `None` when the decisions refuse it.
fn encrypted_batch_bytes(mut batch: RecordBatch, selectors: &[u8]) -> Option<Vec<u8>> {
    super::produce::prepare(&mut batch, selectors);
    let decisions: Vec<_> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| super::produce::decision(selectors.get(i).copied().unwrap_or(0x31), r))
        .collect();
    let enc = encryptor();
    block_on(enc.encrypt_batch(TOPIC, &mut batch, &decisions)).ok()?;
    Some(batch.to_bytes().unwrap().to_vec())
}

fn arb_fetch_input() -> impl Strategy<Value = Vec<u8>> {
    let encrypted = || {
        (
            proptest::collection::vec(
                (arb_batch(), proptest::collection::vec(any::<u8>(), 0..12)),
                1..3,
            ),
            any::<u8>(),
        )
            .prop_map(|(batches, opt)| {
                let mut v = vec![opt];
                for (b, s) in batches {
                    if let Some(bytes) = encrypted_batch_bytes(b, &s) {
                        v.extend_from_slice(&bytes);
                    }
                }
                v
            })
    };
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        2 => encrypted(),
        4 => encrypted().prop_flat_map(mutate),
    ]
}

/// Stable stand-in for the `fetch` target.
#[test]
fn fuzz_fallback_fetch() {
    run_fallback("fuzz_fallback_fetch", 128, arb_fetch_input(), |data| {
        super::fetch::check(&data)
    });
}

/// Writes the `fetch` seed corpus: batches encrypted under the fixed keys (every plan kind,
/// uncompressed and zstd), each once per decrypt-option byte, and a plain batch.
/// `FUZZ_SEED_DIR=$PWD/fuzz/seeds cargo test -p kapsule --lib write_fetch_seeds -- --ignored`
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/seeds"]
fn write_fetch_seeds() {
    let mut seeds = Vec::new();
    for c in [Compression::None, Compression::Zstd] {
        let mut batch = edge_batch(c);
        for r in &mut batch.records {
            if let Some(v) = &r.value {
                r.value = Some(v.slice(..v.len().min(24)));
            }
        }
        // Whole value + key + headers, JSON fields, pass.
        let selectors = [0x3d, 0x32, 0x00];
        let bytes = encrypted_batch_bytes(batch.clone(), &selectors).unwrap();
        for opt in [0u8, 1, 2, 4, 5, 6] {
            let mut v = vec![opt];
            v.extend_from_slice(&bytes);
            seeds.push((format!("encrypted-{c}-opt{opt}"), v));
        }
        let mut plain = vec![0u8];
        plain.extend_from_slice(&encode(&batch));
        seeds.push((format!("plain-{c}"), plain));
    }
    write_seeds("fetch", &seeds);
}

#[test]
fn committed_fetch_seeds_still_decrypt() {
    // The seeds are only useful while they decrypt: a change to the wire format or the fixed
    // keys must refresh them (write_fetch_seeds).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/fetch");
    let mut decrypted = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        super::fetch::check(&data);
        let set = Bytes::copy_from_slice(&data[1..]);
        for e in split_record_set(&set) {
            let mut batch = e.unwrap().as_batch().unwrap().decode().unwrap();
            let enc = encryptor();
            let opts = super::fetch::options(0);
            let stats = block_on(enc.decrypt_batch(TOPIC, &mut batch, &opts)).unwrap();
            decrypted += stats.records_decrypted;
        }
    }
    assert!(
        decrypted >= 4,
        "only {decrypted} records of the seeds decrypted"
    );
}

#[test]
fn fetch_oracle_catches_a_tampered_ciphertext_without_panicking() {
    // A flipped bit in an encrypted value must be a decrypt failure (integrity), which the
    // oracle accepts in every mode; and the untampered batch decrypts.
    let batch = edge_batch(Compression::None);
    let bytes = encrypted_batch_bytes(batch, &[0x31, 0x31, 0x31]).unwrap();
    let raw = RecordBatch::decode(&Bytes::from(bytes.clone())).unwrap();
    let enc = encryptor();
    let mut ok = raw.clone();
    let stats = block_on(enc.decrypt_batch(TOPIC, &mut ok, &super::fetch::options(0))).unwrap();
    assert_eq!(
        stats.records_decrypted, 3,
        "every planned record carries a descriptor, even with a null value"
    );
    assert_eq!(ok, edge_batch(Compression::None));
    let mut tampered = raw.clone();
    let v = tampered.records[0].value.as_mut().unwrap();
    let mut flipped = v.to_vec();
    flipped[0] ^= 1;
    *v = Bytes::from(flipped);
    let mut out = tampered.clone();
    let err = block_on(enc.decrypt_batch(TOPIC, &mut out, &super::fetch::options(0))).unwrap_err();
    assert!(
        matches!(err, DecryptError::Integrity { index: 0, .. }),
        "{err}"
    );
    assert_eq!(out, tampered);
    for opt in 0..8 {
        let mut v = vec![opt];
        v.extend_from_slice(&tampered.to_bytes().unwrap());
        super::fetch::check(&v);
    }
}

// ---- produce --------------------------------------------------------------------------------

/// Stable stand-in for the `produce` target.
#[test]
fn fuzz_fallback_produce() {
    let input = (arb_batch(), proptest::collection::vec(any::<u8>(), 0..12));
    run_fallback(
        "fuzz_fallback_produce",
        128,
        input,
        |(mut batch, selectors)| {
            super::produce::prepare(&mut batch, &selectors);
            super::produce::check(&batch, &selectors)
        },
    );
}

#[test]
fn produce_oracle_round_trips_every_plan_kind() {
    let mut batch = edge_batch(Compression::Lz4);
    // JSON fields under k1; whole value + key + headers under k2; key only under k1.
    let selectors = [0x32, 0xbd, 0x34];
    super::produce::prepare(&mut batch, &selectors);
    assert!(batch.records[0]
        .value
        .as_ref()
        .unwrap()
        .starts_with(b"{\"a\""));
    super::produce::check(&batch, &selectors);
    // And the refusals the oracle accepts: a policy reject and a key the KMS does not have.
    super::produce::check(&batch, &[0x10]);
    super::produce::check(&batch, &[0x21]);
}

/// Writes the `descriptor` seed corpus: one descriptor per value mode, with and without an
/// encrypted key and header names, and one full header value (descriptor + record tag).
/// `FUZZ_SEED_DIR=$PWD/fuzz/seeds cargo test -p kapsule --lib write_descriptor_seeds -- --ignored`
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/seeds"]
fn write_descriptor_seeds() {
    let base = Descriptor {
        value: ValueEncryption::Whole,
        key_encrypted: true,
        record_id: [7; 16],
        nonce_base: [9; 12],
        key_kek_version: 1,
        kek_id: "orders".into(),
        edek: vec![0xee; 64].into(),
        headers: vec![b"h1".to_vec(), b"trace".to_vec()],
        aad: AadScheme::V1,
    };
    let json = Descriptor {
        value: ValueEncryption::Json(vec!["/card/number".into(), "/a".into()]),
        aad: AadScheme::V2,
        key_encrypted: false,
        key_kek_version: 0,
        headers: Vec::new(),
        ..base.clone()
    };
    let clear = Descriptor {
        value: ValueEncryption::None,
        ..json.clone()
    };
    let mut header_value = base.encode().unwrap();
    header_value.extend_from_slice(&[0x5a; 16]);
    write_seeds(
        "descriptor",
        &[
            ("whole-key-headers".into(), base.encode().unwrap()),
            ("json".into(), json.encode().unwrap()),
            ("clear".into(), clear.encode().unwrap()),
            ("header-value".into(), header_value),
        ],
    );
}
