//! The splitter: every entry untouched, partial tails, corrupt framing.

use bytes::{Bytes, BytesMut};

use super::super::types::MAGIC_OFFSET;
use super::*;

#[test]
fn splitter_yields_every_entry_untouched() {
    let (set, parts) = mixed_record_set();
    let entries: Vec<_> = split_record_set(&set).collect::<Result<_, _>>().unwrap();
    assert_eq!(entries.len(), parts.len());
    for (e, p) in entries.iter().zip(&parts) {
        assert_eq!(e.bytes(), p);
        assert!(!e.is_partial());
    }
    let raws: Vec<&RawBatch> = entries.iter().map(|e| e.as_batch().unwrap()).collect();
    // v2 batches.
    assert_eq!(raws[0].magic(), 2);
    assert_eq!(raws[0].base_offset(), 1_234_567_890_123);
    assert_eq!(raws[0].record_count(), Some(3));
    assert!(raws[0].is_transactional());
    assert!(!raws[0].is_control());
    assert_eq!(raws[0].compression().unwrap(), Compression::None);
    assert_eq!(raws[1].compression().unwrap(), Compression::Gzip);
    assert_eq!(raws[1].decode().unwrap(), edge_batch(Compression::Gzip));
    // Control batch: flagged, passed through.
    assert!(raws[2].is_control());
    // Legacy messages: flagged, not decodable, bytes untouched.
    for raw in &raws[3..7] {
        assert!(raw.is_legacy(), "magic {}", raw.magic());
        assert!(!raw.is_control());
        assert_eq!(raw.record_count(), None);
        assert_eq!(raw.compression().unwrap(), Compression::None);
        assert!(matches!(raw.decode(), Err(CodecError::UnsupportedMagic(_))));
    }
    assert_eq!(raws[3].magic(), 0);
    assert_eq!(raws[4].base_offset(), 1);
    assert_eq!(raws[5].magic(), 1);
    assert_eq!(raws[7].decode().unwrap(), edge_batch(Compression::Snappy));
    // Zero-copy: entries point into the record set.
    assert_eq!(entries[1].bytes().as_ptr(), set[parts[0].len()..].as_ptr());
}

#[test]
fn splitter_reports_a_truncated_tail_as_partial_at_every_cut() {
    let (set, parts) = mixed_record_set();
    let ends: Vec<usize> = parts
        .iter()
        .scan(0, |acc, p| {
            *acc += p.len();
            Some(*acc)
        })
        .collect();
    for cut in 1..set.len() {
        let prefix = set.slice(..cut);
        let entries: Vec<_> = split_record_set(&prefix).collect::<Result<_, _>>().unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let on_boundary = ends.contains(&cut);
        assert_eq!(
            entries.len(),
            complete + usize::from(!on_boundary),
            "cut {cut}"
        );
        let mut joined = BytesMut::new();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.is_partial(), i == complete, "cut {cut} entry {i}");
            joined.extend_from_slice(e.bytes());
        }
        assert_eq!(joined.as_ref(), prefix.as_ref(), "cut {cut}");
    }
}

#[test]
fn splitter_errors_on_corrupt_framing_and_stops() {
    let good = encode(&edge_batch(Compression::None));
    let corrupt = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.to_vec();
        let mut tail = good.to_vec();
        f(&mut tail);
        v.extend_from_slice(&tail);
        v.extend_from_slice(&good);
        let set = Bytes::from(v);
        let items: Vec<_> = split_record_set(&set).collect();
        assert_eq!(items.len(), 2, "the error ends the iteration");
        assert!(items[0].is_ok());
        items.into_iter().nth(1).unwrap().unwrap_err()
    };
    assert!(matches!(
        corrupt(&|v| v[8..12].copy_from_slice(&13i32.to_be_bytes())),
        CodecError::InvalidBatchLength { length: 13, .. }
    ));
    assert!(matches!(
        corrupt(&|v| v[8..12].copy_from_slice(&(-5i32).to_be_bytes())),
        CodecError::InvalidBatchLength { length: -5, .. }
    ));
    assert!(matches!(
        corrupt(&|v| v[8..12].copy_from_slice(&20i32.to_be_bytes())),
        CodecError::InvalidBatchLength {
            length: 20,
            minimum: 49
        }
    ));
    assert!(matches!(
        corrupt(&|v| v[MAGIC_OFFSET] = 3),
        CodecError::UnsupportedMagic(3)
    ));
}

#[test]
fn splitter_on_empty_and_tiny_inputs() {
    assert_eq!(split_record_set(&Bytes::new()).count(), 0);
    let tiny = b(&[0, 0, 0]);
    let items: Vec<_> = split_record_set(&tiny).collect();
    assert_eq!(items.len(), 1);
    assert!(items[0].as_ref().unwrap().is_partial());
    // A huge declared length is a partial tail, not an allocation.
    let mut v = vec![0u8; 8];
    v.extend_from_slice(&i32::MAX.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, 2]);
    let items: Vec<_> = split_record_set(&Bytes::from(v)).collect();
    assert!(items[0].as_ref().unwrap().is_partial());
}
