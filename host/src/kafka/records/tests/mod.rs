//! Codec tests: fixtures and decode/encode tests here; the splitter, interoperability with
//! kafka-protocol and property tests in the submodules. The fixtures are `pub(crate)` so the
//! fuzzing fallbacks ([`crate::fuzzing`]) build on the same batches and generators.

use bytes::{BufMut, Bytes, BytesMut};

use super::encode::{put_varint, put_varlong, varint_len, varlong_len};
use super::types::{
    be_i16, be_i32, ATTRIBUTES_OFFSET, CRC_OFFSET, LOG_OVERHEAD, MAGIC_OFFSET, RECORD_COUNT_OFFSET,
};
use super::*;
use crate::kafka::reader::ByteReader;

mod interop;
pub(crate) mod props;
mod split;

pub(crate) fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// A batch exercising every edge case of the record format.
pub(crate) fn edge_batch(compression: Compression) -> RecordBatch {
    RecordBatch {
        base_offset: 1_234_567_890_123,
        partition_leader_epoch: 7,
        attributes: compression.apply_to_attributes(ATTR_TIMESTAMP_TYPE | ATTR_TRANSACTIONAL),
        last_offset_delta: 4,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_321,
        producer_id: 424_242,
        producer_epoch: 3,
        base_sequence: 99,
        records: vec![
            Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: 0,
                key: Some(b(b"key-0")),
                value: Some(b(b"value-0")),
                headers: vec![],
            },
            Record {
                attributes: -5,
                timestamp_delta: -17,
                offset_delta: 1,
                key: None,
                value: None,
                headers: vec![
                    RecordHeader {
                        key: b(b"dup"),
                        value: Some(b(b"first")),
                    },
                    RecordHeader {
                        key: b(b"dup"),
                        value: None,
                    },
                    RecordHeader {
                        key: b(b""),
                        value: Some(b(b"")),
                    },
                    RecordHeader {
                        key: b(b"dup"),
                        value: Some(b(b"third")),
                    },
                ],
            },
            Record {
                attributes: 1,
                timestamp_delta: 321,
                offset_delta: 4,
                key: Some(b(b"")),
                value: Some(Bytes::from(vec![0xab; 300])),
                headers: vec![RecordHeader {
                    key: b("ключ".as_bytes()),
                    value: Some(Bytes::from(vec![1; 200])),
                }],
            },
        ],
    }
}

pub(crate) fn encode(batch: &RecordBatch) -> Bytes {
    batch.to_bytes().unwrap()
}

/// Recomputes the CRC of a v2 batch after a test tampered with it.
fn fix_crc(buf: &mut [u8]) {
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
    buf[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// Builds an uncompressed batch around hand-written record bytes (independent of `encode`).
fn batch_with_raw_records(count: i32, records: &[u8]) -> Bytes {
    let mut v = Vec::new();
    v.extend_from_slice(&0i64.to_be_bytes());
    v.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes());
    v.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    v.push(2);
    v.extend_from_slice(&[0; 4]); // crc
    v.extend_from_slice(&0i16.to_be_bytes()); // attributes
    v.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    v.extend_from_slice(&0i64.to_be_bytes());
    v.extend_from_slice(&0i64.to_be_bytes());
    v.extend_from_slice(&(-1i64).to_be_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v.extend_from_slice(&(-1i32).to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(records);
    fix_crc(&mut v);
    Bytes::from(v)
}

/// A hand-built v0 or v1 message set of two messages (offsets 0 and 1).
pub(crate) fn legacy_set(version: i8) -> Bytes {
    let mut out = BytesMut::new();
    for offset in 0..2i64 {
        let mut msg = BytesMut::new();
        msg.put_u32(0x1234_5678); // CRC32 (not checked by the splitter)
        msg.put_i8(version);
        msg.put_i8(0); // attributes
        if version == 1 {
            msg.put_i64(1_700_000_000_000 + offset);
        }
        msg.put_i32(1);
        msg.put_u8(b'k');
        msg.put_i32(5);
        msg.extend_from_slice(b"value");
        out.put_i64(offset);
        out.put_i32(msg.len() as i32);
        out.extend_from_slice(&msg);
    }
    out.freeze()
}

pub(crate) fn mixed_record_set() -> (Bytes, Vec<Bytes>) {
    let mut parts = vec![
        encode(&edge_batch(Compression::None)),
        encode(&edge_batch(Compression::Gzip)),
    ];
    let mut control = edge_batch(Compression::None);
    control.attributes |= ATTR_CONTROL;
    parts.push(encode(&control));
    // Each legacy message is its own entry (offset + size framing).
    for v in [0, 1] {
        let set = legacy_set(v);
        let mut pos = 0;
        while pos < set.len() {
            let len = be_i32(&set[pos + 8..]) as usize + LOG_OVERHEAD;
            parts.push(set.slice(pos..pos + len));
            pos += len;
        }
    }
    parts.push(encode(&edge_batch(Compression::Snappy)));
    let mut all = BytesMut::new();
    for p in &parts {
        all.extend_from_slice(p);
    }
    (all.freeze(), parts)
}

#[test]
fn hand_built_batch_decodes_and_reencodes_identically() {
    // Record: attrs 0, ts delta 5 (zz 10), offset delta 0, key "k", value null,
    // 1 header "h" = "v". Body = 1+1+1+2+1+1+4 = 11 bytes (zz 22).
    let rec = [22, 0, 10, 0, 2, b'k', 1, 2, 2, b'h', 2, b'v'];
    let bytes = batch_with_raw_records(1, &rec);
    assert_eq!(bytes.len(), 61 + rec.len());
    let batch = RecordBatch::decode(&bytes).unwrap();
    assert_eq!(batch.base_offset, 0);
    assert_eq!(batch.producer_id, -1);
    assert_eq!(batch.producer_epoch, -1);
    assert_eq!(batch.base_sequence, -1);
    assert_eq!(
        batch.records,
        vec![Record {
            attributes: 0,
            timestamp_delta: 5,
            offset_delta: 0,
            key: Some(b(b"k")),
            value: None,
            headers: vec![RecordHeader {
                key: b(b"h"),
                value: Some(b(b"v")),
            }],
        }]
    );
    assert_eq!(encode(&batch), bytes);
}

#[test]
fn every_field_survives_uncompressed_and_reencodes_byte_identical() {
    let batch = edge_batch(Compression::None);
    let bytes = encode(&batch);
    let decoded = RecordBatch::decode(&bytes).unwrap();
    assert_eq!(decoded, batch);
    assert!(decoded.is_transactional());
    assert!(!decoded.is_control());
    assert_eq!(
        decoded.attributes & ATTR_TIMESTAMP_TYPE,
        ATTR_TIMESTAMP_TYPE
    );
    assert_eq!(encode(&decoded), bytes);
}

#[test]
fn every_codec_round_trips_a_batch() {
    for c in Compression::ALL {
        let batch = edge_batch(c);
        let bytes = encode(&batch);
        assert_eq!(
            Compression::from_attributes(be_i16(&bytes[21..])).unwrap(),
            c
        );
        let decoded = RecordBatch::decode(&bytes).unwrap();
        assert_eq!(decoded, batch, "{c}");
        // Deterministic compressors: re-encoding is identical too.
        assert_eq!(encode(&decoded), bytes, "{c}");
    }
}

#[test]
fn decode_is_zero_copy() {
    let bytes = encode(&edge_batch(Compression::None));
    let batch = RecordBatch::decode(&bytes).unwrap();
    let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    let v = batch.records[2].value.as_ref().unwrap();
    assert!(range.contains(&(v.as_ptr() as usize)));
    let h = &batch.records[1].headers[0];
    assert!(range.contains(&(h.key.as_ptr() as usize)));
    assert!(range.contains(&(h.value.as_ref().unwrap().as_ptr() as usize)));
}

#[test]
fn empty_batch_round_trips() {
    let mut batch = edge_batch(Compression::None);
    batch.records.clear();
    for c in Compression::ALL {
        batch.attributes = c.apply_to_attributes(batch.attributes);
        assert_eq!(RecordBatch::decode(&encode(&batch)).unwrap(), batch, "{c}");
    }
}

#[test]
fn control_batch_round_trips() {
    // A COMMIT marker as brokers write it: key = version 0, type 1; value = version, epoch.
    let batch = RecordBatch {
        base_offset: 42,
        partition_leader_epoch: 0,
        attributes: ATTR_CONTROL | ATTR_TRANSACTIONAL,
        last_offset_delta: 0,
        base_timestamp: 1,
        max_timestamp: 1,
        producer_id: 9,
        producer_epoch: 2,
        base_sequence: -1,
        records: vec![Record {
            attributes: 0,
            timestamp_delta: 0,
            offset_delta: 0,
            key: Some(b(&[0, 0, 0, 1])),
            value: Some(b(&[0, 0, 0, 0, 0, 5])),
            headers: vec![],
        }],
    };
    let bytes = encode(&batch);
    let decoded = RecordBatch::decode(&bytes).unwrap();
    assert!(decoded.is_control());
    assert_eq!(decoded, batch);
    assert_eq!(encode(&decoded), bytes);
}

#[test]
fn crc_mismatch_is_detected() {
    let bytes = encode(&edge_batch(Compression::None));
    // Flip one bit in a record value, and separately in the stored CRC.
    for pos in [bytes.len() - 5, CRC_OFFSET + 1, ATTRIBUTES_OFFSET + 3] {
        let mut v = bytes.to_vec();
        v[pos] ^= 0x04;
        let err = RecordBatch::decode(&Bytes::from(v)).unwrap_err();
        assert!(
            matches!(err, CodecError::CrcMismatch { .. }),
            "{pos}: {err}"
        );
    }
    // Same for a compressed batch.
    let mut v = encode(&edge_batch(Compression::Zstd)).to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::CrcMismatch { .. })
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for c in Compression::ALL {
        let bytes = encode(&edge_batch(c));
        for n in 0..bytes.len() {
            let err = RecordBatch::decode(&bytes.slice(..n)).unwrap_err();
            assert!(
                matches!(err, CodecError::Truncated { .. }),
                "{c} prefix {n}: {err}"
            );
        }
    }
}

#[test]
fn truncated_batch_with_consistent_length_is_an_error() {
    // Shorten the records section and fix length + CRC: the parser must notice the record
    // running past the end, not read out of bounds.
    let bytes = encode(&edge_batch(Compression::None));
    for cut in 1..40 {
        let mut v = bytes[..bytes.len() - cut].to_vec();
        let len = (v.len() - LOG_OVERHEAD) as i32;
        v[8..12].copy_from_slice(&len.to_be_bytes());
        fix_crc(&mut v);
        let err = RecordBatch::decode(&Bytes::from(v)).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Truncated { .. } | CodecError::InvalidCount { .. }
            ),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn huge_or_negative_record_count_is_rejected_without_allocating() {
    let bytes = encode(&edge_batch(Compression::None));
    for count in [i32::MAX, 1_000_000, -1, i32::MIN] {
        let mut v = bytes.to_vec();
        v[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&count.to_be_bytes());
        fix_crc(&mut v);
        let err = RecordBatch::decode(&Bytes::from(v)).unwrap_err();
        assert!(
            matches!(err, CodecError::InvalidCount { what: "record", .. }),
            "{count}: {err}"
        );
    }
    // Same check applies to the decompressed section of a compressed batch.
    let mut v = encode(&edge_batch(Compression::Gzip)).to_vec();
    v[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    fix_crc(&mut v);
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::InvalidCount { .. })
    ));
}

#[test]
fn count_smaller_than_records_leaves_trailing_bytes() {
    let bytes = encode(&edge_batch(Compression::None));
    let mut v = bytes.to_vec();
    v[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&2i32.to_be_bytes());
    fix_crc(&mut v);
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::TrailingBytes { .. })
    ));
}

#[test]
fn huge_header_count_is_rejected() {
    // Record: attrs, ts, off, key null, value null, header count 1_000_000 (zz 2_000_000).
    let mut body = vec![0, 0, 0, 1, 1];
    let mut hc = BytesMut::new();
    put_varint(&mut hc, 1_000_000);
    body.extend_from_slice(&hc);
    let mut rec = BytesMut::new();
    put_varint(&mut rec, body.len() as i32);
    rec.extend_from_slice(&body);
    let err = RecordBatch::decode(&batch_with_raw_records(1, &rec)).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::InvalidCount {
                what: "header",
                count: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    // Negative header count.
    let rec = [12, 0, 0, 0, 1, 1, 1];
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::InvalidCount {
            what: "header",
            count: -1,
            ..
        })
    ));
}

#[test]
fn huge_varint_lengths_are_rejected() {
    // Key length 1_000_000_000 with 3 bytes present.
    let mut body = vec![0, 0, 0];
    let mut kl = BytesMut::new();
    put_varint(&mut kl, 1_000_000_000);
    body.extend_from_slice(&kl);
    body.extend_from_slice(b"abc");
    let mut rec = BytesMut::new();
    put_varint(&mut rec, body.len() as i32);
    rec.extend_from_slice(&body);
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::Truncated {
            what: "record key",
            ..
        })
    ));
    // Record length far beyond the batch.
    let mut rec = BytesMut::new();
    put_varint(&mut rec, i32::MAX);
    rec.extend_from_slice(&[0; 10]);
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::Truncated { what: "record", .. })
    ));
}

#[test]
fn invalid_lengths_are_rejected() {
    // Key length -2 (zz 3).
    let rec = [12, 0, 0, 0, 3, 1, 0];
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::InvalidLength {
            what: "record key",
            length: -2
        })
    ));
    // Header key length -1 (null header keys are not allowed).
    let rec = [16, 0, 0, 0, 1, 1, 2, 1, 1];
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::InvalidLength {
            what: "header key",
            length: -1
        })
    ));
    // Negative record length.
    let rec = [1, 0, 0, 0, 0, 1, 1, 0];
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::InvalidLength {
            what: "record",
            length: -1
        })
    ));
}

#[test]
fn record_length_must_match_fields() {
    // Declares 8 bytes (zz 16) but the fields take 7; the 8th byte is padding.
    let rec = [16, 0, 0, 0, 1, 1, 0, 0xff, 0xff];
    assert!(matches!(
        RecordBatch::decode(&batch_with_raw_records(1, &rec)),
        Err(CodecError::RecordSizeMismatch {
            declared: 8,
            consumed: 6
        })
    ));
}

#[test]
fn varint_overflow_is_rejected() {
    // Six continuation bytes as the timestamp delta is fine for a varlong only up to 10.
    let mut rec = vec![0u8, 0];
    rec.extend_from_slice(&[0xff; 11]);
    rec.extend_from_slice(&[0, 1, 1, 0]);
    let mut full = BytesMut::new();
    put_varint(&mut full, rec.len() as i32);
    full.extend_from_slice(&rec);
    let err = RecordBatch::decode(&batch_with_raw_records(1, &full)).unwrap_err();
    assert!(matches!(err, CodecError::VarintOverflow { .. }), "{err}");

    let read = |b: &[u8]| ByteReader::new(b).varint("t").map_err(CodecError::from);
    assert!(matches!(
        read(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
        Err(CodecError::VarintOverflow { .. })
    ));
    assert!(matches!(
        read(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        Err(CodecError::VarintOverflow { .. })
    ));
    assert_eq!(read(&[0xfe, 0xff, 0xff, 0xff, 0x0f]).unwrap(), i32::MAX);
    assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap(), i32::MIN);
    assert!(matches!(read(&[0x80]), Err(CodecError::Truncated { .. })));
    let readl = |b: &[u8]| ByteReader::new(b).varlong("t").map_err(CodecError::from);
    let mut max = vec![0xfe; 1];
    max.extend_from_slice(&[0xff; 8]);
    max.push(0x01);
    assert_eq!(readl(&max).unwrap(), i64::MAX);
    max[9] = 0x02;
    assert!(matches!(
        readl(&max),
        Err(CodecError::VarintOverflow { .. })
    ));
}

#[test]
fn varints_round_trip_at_boundaries() {
    for v in [
        0,
        1,
        -1,
        63,
        -64,
        64,
        -65,
        8191,
        8192,
        i32::MAX,
        i32::MIN,
        i32::MAX - 1,
    ] {
        let mut out = BytesMut::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "{v}");
        assert_eq!(ByteReader::new(&out).varint("t").unwrap(), v);
    }
    for v in [0, -1, 1, i64::MAX, i64::MIN, 1 << 40, -(1 << 40)] {
        let mut out = BytesMut::new();
        put_varlong(&mut out, v);
        assert_eq!(out.len(), varlong_len(v), "{v}");
        assert_eq!(ByteReader::new(&out).varlong("t").unwrap(), v);
    }
}

#[test]
fn decode_rejects_wrong_magic_trailing_bytes_and_unknown_codec() {
    let bytes = encode(&edge_batch(Compression::None));
    let mut v = bytes.to_vec();
    v[MAGIC_OFFSET] = 1;
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::UnsupportedMagic(1))
    ));
    let mut v = bytes.to_vec();
    v.push(0);
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::TrailingBytes { count: 1, .. })
    ));
    let mut v = bytes.to_vec();
    v[ATTRIBUTES_OFFSET + 1] |= 0x07;
    fix_crc(&mut v);
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::UnknownCompression(7))
    ));
    let mut batch = edge_batch(Compression::None);
    batch.attributes |= 0x05;
    assert!(matches!(
        batch.encode(&mut BytesMut::new()),
        Err(CodecError::UnknownCompression(5))
    ));
    let mut v = bytes.to_vec();
    v[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert!(matches!(
        RecordBatch::decode(&Bytes::from(v)),
        Err(CodecError::InvalidBatchLength { length: 10, .. })
    ));
}

#[test]
fn decompression_cap_is_enforced() {
    let mut batch = edge_batch(Compression::None);
    batch.records[0].value = Some(Bytes::from(vec![0u8; 2 * 1024 * 1024]));
    for c in Compression::ALL.into_iter().skip(1) {
        batch.attributes = c.apply_to_attributes(batch.attributes);
        let bytes = encode(&batch);
        assert!(
            bytes.len() < 256 * 1024,
            "{c} compressed to {}",
            bytes.len()
        );
        assert!(matches!(
            RecordBatch::decode_with_limit(&bytes, 1024 * 1024),
            Err(CodecError::DecompressedTooLarge { .. })
        ));
        assert_eq!(RecordBatch::decode(&bytes).unwrap(), batch);
    }
}

#[test]
fn encode_appends_after_existing_content() {
    let batch = edge_batch(Compression::Lz4);
    let mut out = BytesMut::from(&b"prefix"[..]);
    batch.encode(&mut out).unwrap();
    let out = out.freeze();
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(RecordBatch::decode(&out.slice(6..)).unwrap(), batch);
}

/// A batch far larger than the stretch the encoder passes to the CRC as it writes (records of
/// uneven sizes, so the stretches end mid-record at varying places), appended after other
/// bytes, carries the CRC-32C of the reference implementation over its whole body, and decodes
/// back to itself; so does the same batch compressed.
#[test]
fn a_large_batch_gets_the_crc_of_its_whole_body() {
    let mut batch = edge_batch(Compression::None);
    let template = batch.records[0].clone();
    batch.records = (0..200)
        .map(|i| Record {
            offset_delta: i,
            value: Some(Bytes::from(vec![i as u8; 37 + (i as usize * 131) % 1500])),
            ..template.clone()
        })
        .collect();
    batch.last_offset_delta = 199;
    for compression in [Compression::None, Compression::Zstd] {
        batch.attributes = compression.apply_to_attributes(ATTR_TIMESTAMP_TYPE);
        let mut out = BytesMut::from(&b"earlier batch"[..]);
        batch.encode(&mut out).unwrap();
        let out = out.freeze().slice(13..);
        assert!(out.len() > 10_000 || compression != Compression::None);
        let stored = u32::from_be_bytes(out[CRC_OFFSET..ATTRIBUTES_OFFSET].try_into().unwrap());
        assert_eq!(
            stored,
            crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]),
            "{compression:?}"
        );
        assert_eq!(RecordBatch::decode(&out).unwrap(), batch, "{compression:?}");
    }
}
