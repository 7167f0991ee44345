//! Property tests: arbitrary batches round-trip and record sets split exactly. The generators
//! are `pub(crate)`: the fuzzing fallbacks ([`crate::fuzzing`]) use them too.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

pub(crate) fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 0..600),
    ]
    .prop_map(Bytes::from)
}

pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
    let header = (arb_bytes(), proptest::option::of(arb_bytes()))
        .prop_map(|(key, value)| RecordHeader { key, value });
    (
        any::<i8>(),
        any::<i64>(),
        any::<i32>(),
        proptest::option::of(arb_bytes()),
        proptest::option::of(arb_bytes()),
        proptest::collection::vec(header, 0..4),
    )
        .prop_map(
            |(attributes, timestamp_delta, offset_delta, key, value, headers)| Record {
                attributes,
                timestamp_delta,
                offset_delta,
                key,
                value,
                headers,
            },
        )
}

pub(crate) fn arb_batch() -> impl Strategy<Value = RecordBatch> {
    (
        (
            any::<i64>(),
            any::<i32>(),
            any::<i16>(),
            0u8..5,
            any::<i32>(),
        ),
        (
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i16>(),
            any::<i32>(),
        ),
        proptest::collection::vec(arb_record(), 0..12),
    )
        .prop_map(
            |(
                (base_offset, partition_leader_epoch, attrs, codec, last_offset_delta),
                (base_timestamp, max_timestamp, producer_id, producer_epoch, base_sequence),
                records,
            )| RecordBatch {
                base_offset,
                partition_leader_epoch,
                attributes: Compression::from_id(codec)
                    .unwrap()
                    .apply_to_attributes(attrs),
                last_offset_delta,
                base_timestamp,
                max_timestamp,
                producer_id,
                producer_epoch,
                base_sequence,
                records,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_decode_encode_round_trips(batch in arb_batch()) {
        let bytes = encode(&batch);
        let decoded = RecordBatch::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &batch);
        // Re-encoding the decoded batch is byte-identical (all codecs are deterministic;
        // the requirement is for uncompressed batches).
        prop_assert_eq!(encode(&decoded), bytes.clone());
        // Also splits as one complete entry.
        let entries: Vec<_> = split_record_set(&bytes).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(entries.len(), 1);
        prop_assert_eq!(entries[0].bytes(), &bytes);
    }

    #[test]
    fn prop_codec_record_sets_split_exactly(batches in proptest::collection::vec(arb_batch(), 0..5)) {
        let mut set = BytesMut::new();
        for b in &batches {
            b.encode(&mut set).unwrap();
        }
        let set = set.freeze();
        let decoded: Vec<RecordBatch> = split_record_set(&set)
            .map(|e| e.unwrap().as_batch().unwrap().decode().unwrap())
            .collect();
        prop_assert_eq!(decoded, batches);
    }
}
