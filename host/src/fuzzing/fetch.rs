//! Oracle of the `fetch` target: a Fetch partition's record set through the decryption path,
//! as the proxy runs it (split, decode under a cap, prefetch keys, decrypt), with a real
//! [`RecordEncryptor`] over the fixed-seed KMS of [`super::kms`].

use bytes::{Bytes, BytesMut};

use super::kms::{block_on, encryptor};
use crate::crypto::record::{DecryptFailure, DecryptOptions, RecordEncryptor};
use crate::crypto::wire::HEADER_KEY;
use crate::kafka::records::{
    split_record_set, Record, RecordBatch, RecordSetEntry, ATTRIBUTES_OFFSET, CRC_OFFSET,
};

/// Topic every fuzzed record set belongs to (the AAD binds records to it).
pub const TOPIC: &str = "orders";
/// Decompression cap per batch: enough for any seed, small enough to keep runs fast.
const MAX_DECOMPRESSED: usize = 1 << 20;

/// Decrypt options from the first input byte: bits 0-1 the failure mode (0 and 3: error,
/// 1: ciphertext, 2: skip), bit 2 `require_encrypted`, bit 3 a KEK allow-list that refuses
/// every id starting with `k` (so forbidden-key descriptors are exercised too).
pub fn options(byte: u8) -> DecryptOptions<'static> {
    static REFUSE_K: fn(&str) -> bool = |id| !id.starts_with('k');
    DecryptOptions {
        on_failure: match byte & 3 {
            1 => DecryptFailure::Ciphertext,
            2 => DecryptFailure::Skip,
            _ => DecryptFailure::Error,
        },
        require_encrypted: byte & 4 != 0,
        allowed_kek: (byte & 8 != 0).then_some(&REFUSE_K as _),
    }
}

/// `data` = options byte ([`options`]) + a record set. Every complete v2 data batch is decoded
/// (its CRC repaired first, so mutations reach the decryptor; the proxy itself refuses a bad
/// CRC) and decrypted by a fresh encryptor. Panics when an invariant breaks: a failed decrypt
/// changed the batch; the counters do not add up to the records; a mode produced what it must
/// not (left-encrypted or dropped records in error mode, plain records with
/// `require_encrypted`); a record leaves with a `kapsule.enc` header without being counted as
/// left encrypted; the result does not re-encode. Never panics on malformed input otherwise.
pub fn check(data: &[u8]) {
    let Some((&opt, set)) = data.split_first() else {
        return;
    };
    let options = options(opt);
    let encryptor = encryptor();
    let set = Bytes::copy_from_slice(set);
    for entry in split_record_set(&set) {
        let Ok(RecordSetEntry::Batch(raw)) = entry else {
            break;
        };
        if raw.is_legacy() || raw.is_control() {
            continue;
        }
        let Ok(batch) =
            RecordBatch::decode_with_limit(&with_valid_crc(raw.bytes()), MAX_DECOMPRESSED)
        else {
            continue;
        };
        check_batch(&encryptor, batch, &options);
    }
}

/// `batch` with its CRC-32C recomputed.
pub fn with_valid_crc(batch: &Bytes) -> Bytes {
    let mut fixed = BytesMut::from(batch.as_ref());
    let crc = crate::kafka::records::crc32c(&fixed[ATTRIBUTES_OFFSET..]);
    fixed[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    fixed.freeze()
}

fn has_descriptor(r: &Record) -> bool {
    r.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes())
}

fn check_batch(encryptor: &RecordEncryptor, input: RecordBatch, options: &DecryptOptions) {
    let mut batch = input.clone();
    block_on(encryptor.prefetch(TOPIC, &[&batch]));
    let stats = match block_on(encryptor.decrypt_batch(TOPIC, &mut batch, options)) {
        Err(e) => {
            assert_eq!(batch, input, "a failed decrypt changed the batch: {e}");
            assert!(!e.is_retriable(), "the fixed KMS is never unavailable: {e}");
            return;
        }
        Ok(stats) => stats,
    };
    let n = input.records.len() as u64;
    assert_eq!(
        stats.records_decrypted
            + stats.records_plain
            + stats.records_left_encrypted
            + stats.records_dropped,
        n,
        "{stats:?} for {n} records"
    );
    assert_eq!(batch.records.len() as u64, n - stats.records_dropped);
    match options.on_failure {
        DecryptFailure::Error => {
            assert_eq!(stats.records_left_encrypted + stats.records_dropped, 0)
        }
        DecryptFailure::Skip => assert_eq!(stats.records_left_encrypted, 0),
        DecryptFailure::Ciphertext => {}
    }
    if options.require_encrypted {
        assert_eq!(
            stats.records_plain, 0,
            "plain record delivered on a required topic"
        );
    }
    let still_encrypted = batch.records.iter().filter(|r| has_descriptor(r)).count() as u64;
    assert_eq!(
        still_encrypted, stats.records_left_encrypted,
        "a record left with a descriptor without being counted as left encrypted"
    );
    let header = |b: &RecordBatch| RecordBatch {
        records: Vec::new(),
        ..b.clone()
    };
    assert_eq!(
        header(&batch),
        header(&input),
        "decrypt changed the batch header"
    );
    let bytes = batch.to_bytes().expect("a decrypted batch must encode");
    let again = RecordBatch::decode_with_limit(&bytes, usize::MAX).expect("and decode again");
    assert_eq!(again, batch);
}
