//! Oracle of the `decode` target: the record-batch codec on arbitrary bytes.

use bytes::{Bytes, BytesMut};

use crate::kafka::records::{
    split_record_set, CodecError, Compression, RecordBatch, RecordSetEntry, ATTRIBUTES_OFFSET,
    CRC_OFFSET,
};

/// Fuzz oracle: splits `data` as a record set and decodes every complete v2 batch (as given and
/// with its CRC repaired so mutations reach the record parser). Whenever a decode succeeds, the
/// batch must re-encode and decode to an equal batch; for uncompressed batches the re-encoding
/// must be no longer than the input and byte-identical when equally long (only non-minimal
/// varints in the input may make it shorter). Panics on any violation; never panics on
/// malformed input otherwise.
pub fn check(data: &[u8]) {
    const LIMIT: usize = 1 << 20;
    let input = Bytes::copy_from_slice(data);
    let mut consumed = 0usize;
    let mut saw_partial = false;
    for entry in split_record_set(&input) {
        let Ok(entry) = entry else { break };
        assert!(!saw_partial, "partial entry must be last");
        assert_eq!(
            entry.bytes().as_ref(),
            &data[consumed..consumed + entry.bytes().len()],
            "entries must be contiguous input slices"
        );
        consumed += entry.bytes().len();
        let raw = match entry {
            RecordSetEntry::Partial(_) => {
                saw_partial = true;
                continue;
            }
            RecordSetEntry::Batch(raw) => raw,
        };
        let _ = (raw.base_offset(), raw.attributes(), raw.record_count());
        let _ = (raw.is_control(), raw.is_transactional(), raw.compression());
        if raw.is_legacy() {
            assert!(matches!(raw.decode(), Err(CodecError::UnsupportedMagic(_))));
            continue;
        }
        let mut fixed = BytesMut::from(raw.bytes().as_ref());
        let crc = crate::kafka::records::crc32c(&fixed[ATTRIBUTES_OFFSET..]);
        fixed[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        for candidate in [raw.bytes().clone(), fixed.freeze()] {
            let Ok(batch) = RecordBatch::decode_with_limit(&candidate, LIMIT) else {
                continue;
            };
            let mut out = BytesMut::new();
            batch
                .encode(&mut out)
                .expect("a decoded batch must re-encode");
            let again = RecordBatch::decode_with_limit(&out.clone().freeze(), LIMIT)
                .expect("a re-encoded batch must decode");
            assert_eq!(again, batch, "decode(encode(b)) != b");
            if batch.compression().ok() == Some(Compression::None) {
                assert!(out.len() <= candidate.len(), "re-encoding grew");
                if out.len() == candidate.len() {
                    assert_eq!(out.as_ref(), candidate.as_ref(), "re-encoding differs");
                }
            }
        }
    }
    assert!(consumed <= data.len());
}
