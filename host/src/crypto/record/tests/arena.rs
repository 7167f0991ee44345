//! Whole values are sealed and opened in one buffer per batch ([`super::super::stream::ValueArena`]):
//! every value comes back whatever its size and however far the buffer had to grow, and a record
//! that fails after its value was opened leaves no plaintext behind and shifts no other record.

use std::sync::Arc;

use bytes::Bytes;

use super::super::stream::{open_whole, seal_whole, ValueArena};
use super::super::*;
use crate::crypto::keys::DekConfig;
use crate::crypto::primitives::{nonce_at, Dek, NONCE_LEN};
use crate::crypto::tests::batch;
use crate::crypto::wire::{AadScheme, RecordContext};
use crate::kafka::records::{Record, RecordHeader};
use crate::kms::memory::MemoryKms;
use crate::plan::{EncryptionPlan, RecordDecision, ValuePart};

const TOPIC: &str = "payments";

/// A value of `len` bytes that differs from record to record.
fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j * 7) as u8).collect()
}

fn ctx<'a>(descriptor: &'a [u8], record_id: &'a [u8; 16]) -> RecordContext<'a> {
    RecordContext {
        scheme: AadScheme::V3,
        topic: TOPIC,
        wire_key: Some(b"key"),
        descriptor,
        record_id,
    }
}

/// Values of 0 B to 200 KiB sealed into an arena that starts with no room (so it grows, moving
/// what it holds), then opened in another: each comes back byte for byte, and the stored
/// values are ciphertext.
#[test]
fn values_of_every_size_round_trip_through_growing_arenas() {
    let dek = Dek::new(&[3u8; 32], "k1", b"edek");
    let base = [9u8; NONCE_LEN];
    let record_id = [5u8; 16];
    let descriptor = b"descriptor bytes";
    let ctx = ctx(descriptor, &record_id);
    let sizes = [
        0usize,
        1,
        15,
        16,
        17,
        1000,
        1024,
        4096,
        65_537,
        200 * 1024,
        3,
    ];
    let mut sealing = ValueArena::with_capacity(0);
    let mut sealed = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let nonce = nonce_at(&base, i as u32).unwrap();
        let (slot, tag) = seal_whole(&dek, &nonce, &ctx, &value(i, len), &mut sealing);
        sealed.push((nonce, slot, tag));
    }
    let stored = sealing.freeze();
    let mut opening = ValueArena::with_capacity(0);
    let mut opened = Vec::new();
    for (i, (nonce, slot, tag)) in sealed.into_iter().enumerate() {
        let ciphertext = stored.value(slot);
        assert_eq!(ciphertext.len(), sizes[i]);
        if sizes[i] >= 16 {
            assert_ne!(
                ciphertext[..],
                value(i, sizes[i])[..],
                "value {i} stored in clear"
            );
        }
        let slot = open_whole(&dek, &nonce, &ctx, &ciphertext, &tag, &mut opening).unwrap();
        opened.push(slot);
    }
    let plaintexts = opening.freeze();
    for (i, slot) in opened.into_iter().enumerate() {
        assert_eq!(
            plaintexts.value(slot)[..],
            value(i, sizes[i])[..],
            "value {i}"
        );
    }
}

/// A value that does not authenticate leaves nothing in the arena, and the next value opened
/// there is still right.
#[test]
fn a_value_that_fails_to_open_leaves_nothing_in_the_arena() {
    let dek = Dek::new(&[3u8; 32], "k1", b"edek");
    let record_id = [5u8; 16];
    let ctx = ctx(b"descriptor", &record_id);
    let nonce = [1u8; NONCE_LEN];
    let mut sealing = ValueArena::with_capacity(0);
    let (slot, tag) = seal_whole(&dek, &nonce, &ctx, &value(1, 2000), &mut sealing);
    let stored = sealing.freeze().value(slot);
    let mut tampered = stored.to_vec();
    tampered[100] ^= 1;

    let mut opening = ValueArena::with_capacity(4096);
    let before = opening.mark();
    assert!(open_whole(&dek, &nonce, &ctx, &tampered, &tag, &mut opening).is_err());
    assert_eq!(opening.mark(), before, "a failed open left bytes behind");
    let slot = open_whole(&dek, &nonce, &ctx, &stored, &tag, &mut opening).unwrap();
    assert_eq!(opening.freeze().value(slot)[..], value(1, 2000)[..]);
}

fn record(i: usize, len: usize) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: i as i64,
        offset_delta: i as i32,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(value(i, len))),
        headers: vec![RecordHeader {
            key: Bytes::from_static(b"card"),
            value: Some(Bytes::from(format!("4111-{i}"))),
        }],
    }
}

/// A batch of whole values with their `card` header encrypted, three records of which fail
/// *after* their values were opened (their encrypted header was altered, which the value's
/// stream does not cover): delivered as stored under `ciphertext`, dropped under `skip`, while
/// every record around them comes back byte for byte.
#[tokio::test]
async fn records_failing_after_their_value_was_opened_shift_no_other_record() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = RecordEncryptor::new(kms, DekConfig::default());
    let plain = batch((0..12).map(|i| record(i, 100 + i * 700)).collect());
    let decision = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k1".into(),
        value: ValuePart::Whole,
        record_key: false,
        headers: vec!["card".into()],
    });
    let mut stored = plain.clone();
    enc.encrypt_batch(TOPIC, &mut stored, &vec![decision; 12])
        .await
        .unwrap();
    let failing = [0usize, 5, 11];
    for &i in &failing {
        let header = stored.records[i].headers[0].value.as_mut().unwrap();
        let mut altered = header.to_vec();
        altered[2] ^= 1;
        *header = Bytes::from(altered);
    }
    for mode in [DecryptFailure::Ciphertext, DecryptFailure::Skip] {
        let mut got = stored.clone();
        let options = DecryptOptions {
            on_failure: mode,
            ..DecryptOptions::default()
        };
        let stats = enc.decrypt_batch(TOPIC, &mut got, &options).await.unwrap();
        assert_eq!(stats.records_decrypted, 9, "{mode:?}");
        let mut got = got.records.into_iter();
        for i in 0..12 {
            if failing.contains(&i) {
                if mode == DecryptFailure::Ciphertext {
                    assert_eq!(
                        got.next().unwrap(),
                        stored.records[i],
                        "record {i} as stored"
                    );
                }
                continue;
            }
            assert_eq!(
                got.next().unwrap(),
                plain.records[i],
                "record {i} under {mode:?}"
            );
        }
        assert!(got.next().is_none());
    }
}

/// One record failing after its value was opened in the arena: nothing of it stays there (its
/// plaintext is wiped and dropped), so the arena holds only what records delivered refer to.
#[tokio::test]
async fn a_record_failing_after_its_value_was_opened_leaves_nothing_in_the_arena() {
    let kms = Arc::new(MemoryKms::with_keys(&["k1"]));
    let enc = RecordEncryptor::new(kms, DekConfig::default());
    let mut stored = batch(vec![record(0, 3000)]);
    let decision = RecordDecision::encrypt(EncryptionPlan {
        key_id: "k1".into(),
        value: ValuePart::Whole,
        record_key: false,
        headers: vec!["card".into()],
    });
    enc.encrypt_batch(TOPIC, &mut stored, &[decision])
        .await
        .unwrap();
    let mut rec = stored.records.remove(0);
    let (desc_idx, desc) = super::super::open::find_descriptor(&rec).unwrap().unwrap();
    let desc = desc.into_owned();
    let dek = enc.deks().decrypt(&desc.kek_id, &desc.edek).await.unwrap();

    let open = |rec: &Record, arena: &mut ValueArena| {
        super::super::open::open_record(
            TOPIC,
            rec,
            desc_idx,
            &desc,
            &dek,
            None,
            RevealScope::All,
            arena,
        )
    };
    let mut arena = ValueArena::with_capacity(8192);
    let (opened, _) = open(&rec, &mut arena)
        .ok()
        .expect("the record as stored opens");
    let after_one = arena.mark();
    assert!(after_one > 3000, "the value was opened in the arena");
    drop(opened);

    let header = rec.headers[0].value.as_mut().unwrap();
    let mut altered = header.to_vec();
    altered[2] ^= 1;
    *header = Bytes::from(altered);
    let failed = open(&rec, &mut arena);
    assert!(failed.is_err(), "the altered header does not authenticate");
    assert_eq!(
        arena.mark(),
        after_one,
        "the failed record's value stayed in the arena"
    );
}
