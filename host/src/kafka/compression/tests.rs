//! Compression codecs: round trips, decompression limits and malformed input.

use super::*;

fn sample() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..20_000u32 {
        v.extend_from_slice(format!("record-{i}-payload;").as_bytes());
    }
    v
}

#[test]
fn every_codec_round_trips() {
    let data = sample();
    for c in Compression::ALL {
        let mut out = BytesMut::new();
        c.compress(&data, &mut out).unwrap();
        if c != Compression::None {
            assert!(out.len() < data.len(), "{c} did not compress");
        }
        let back = c.decompress(&out, DEFAULT_MAX_DECOMPRESSED_SIZE).unwrap();
        assert_eq!(back.as_ref(), data.as_slice(), "{c}");
    }
}

#[test]
fn every_codec_round_trips_empty_input() {
    for c in Compression::ALL {
        let mut out = BytesMut::new();
        c.compress(&[], &mut out).unwrap();
        let back = c.decompress(&out, 10).unwrap();
        assert!(back.is_empty(), "{c}");
    }
}

#[test]
fn snappy_writes_xerial_framing() {
    let data = sample();
    let mut out = BytesMut::new();
    Compression::Snappy.compress(&data, &mut out).unwrap();
    assert_eq!(&out[..8], &XERIAL_MAGIC);
    assert_eq!(&out[8..16], &[0, 0, 0, 1, 0, 0, 0, 1]);
    // More than one chunk for > 32 KiB input.
    let first = i32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
    assert!(20 + first < out.len());
}

#[test]
fn snappy_decodes_raw_block() {
    let data = sample();
    let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
    let back = Compression::Snappy
        .decompress(&raw, DEFAULT_MAX_DECOMPRESSED_SIZE)
        .unwrap();
    assert_eq!(back.as_ref(), data.as_slice());
}

#[test]
fn snappy_decodes_hand_built_xerial_stream() {
    // Built independently of our encoder: header + two chunks of different sizes.
    let a = b"hello, kafka ".repeat(100);
    let b = b"second chunk".to_vec();
    let mut s = XERIAL_MAGIC.to_vec();
    s.extend_from_slice(&1i32.to_be_bytes());
    s.extend_from_slice(&1i32.to_be_bytes());
    for part in [&a, &b] {
        let c = snap::raw::Encoder::new().compress_vec(part).unwrap();
        s.extend_from_slice(&(c.len() as i32).to_be_bytes());
        s.extend_from_slice(&c);
    }
    let back = Compression::Snappy.decompress(&s, 1 << 20).unwrap();
    let mut want = a.clone();
    want.extend_from_slice(&b);
    assert_eq!(back.as_ref(), want.as_slice());
}

#[test]
fn snappy_xerial_truncated_chunk_is_error() {
    let mut out = BytesMut::new();
    Compression::Snappy.compress(&sample(), &mut out).unwrap();
    let cut = &out[..out.len() - 3];
    assert!(matches!(
        Compression::Snappy.decompress(cut, DEFAULT_MAX_DECOMPRESSED_SIZE),
        Err(CodecError::Decompress { .. })
    ));
    let cut = &out[..XERIAL_HEADER_LEN + 2];
    assert!(matches!(
        Compression::Snappy.decompress(cut, DEFAULT_MAX_DECOMPRESSED_SIZE),
        Err(CodecError::Decompress { .. })
    ));
}

#[test]
fn zip_bombs_hit_the_limit() {
    let zeros = vec![0u8; 4 * 1024 * 1024];
    for c in Compression::ALL {
        let mut out = BytesMut::new();
        c.compress(&zeros, &mut out).unwrap();
        let r = c.decompress(&out, 1024 * 1024);
        assert!(
            matches!(r, Err(CodecError::DecompressedTooLarge { limit }) if limit == 1024 * 1024),
            "{c}: {r:?}"
        );
        // Exactly at the limit is fine.
        assert_eq!(c.decompress(&out, zeros.len()).unwrap().len(), zeros.len());
    }
    // Raw snappy announces its length up front: rejected before allocating.
    let raw = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
    assert!(matches!(
        Compression::Snappy.decompress(&raw, 1000),
        Err(CodecError::DecompressedTooLarge { .. })
    ));
}

#[test]
fn zstd_and_snappy_state_their_decompressed_size() {
    let data = sample();
    for c in Compression::ALL {
        let mut out = BytesMut::new();
        c.compress(&data, &mut out).unwrap();
        let want = match c {
            Compression::None | Compression::Snappy | Compression::Zstd => Some(data.len()),
            Compression::Gzip | Compression::Lz4 => None,
        };
        assert_eq!(c.declared_size(&out), want, "{c}");
    }
    // Several zstd frames: their sizes add up, and the output is exactly that.
    let mut two = BytesMut::new();
    Compression::Zstd.compress(&data, &mut two).unwrap();
    Compression::Zstd.compress(b"tail", &mut two).unwrap();
    assert_eq!(Compression::Zstd.declared_size(&two), Some(data.len() + 4));
    assert_eq!(
        Compression::Zstd
            .decompress(&two, data.len() + 4)
            .unwrap()
            .len(),
        data.len() + 4
    );
    // A frame without its content size (as the Java client writes them) states nothing and
    // is still decoded under the limit.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&data).unwrap();
    let unsized_frame = enc.finish().unwrap();
    assert_eq!(Compression::Zstd.declared_size(&unsized_frame), None);
    assert_eq!(
        // (A limit below the frame's 2 MiB window refuses it: the window is memory too.)
        Compression::Zstd
            .decompress(&unsized_frame, 4 << 20)
            .unwrap()
            .len(),
        data.len()
    );
    assert!(matches!(
        Compression::Zstd.decompress(&unsized_frame, data.len() - 1),
        Err(CodecError::DecompressedTooLarge { .. })
    ));
    // A damaged frame is an error, not a shorter output.
    let mut damaged = BytesMut::new();
    Compression::Zstd.compress(&data, &mut damaged).unwrap();
    let declared = Compression::Zstd.declared_size(&damaged).unwrap();
    assert!(Compression::Zstd
        .decompress(&damaged[..damaged.len() - 1], declared)
        .is_err());
}

#[test]
fn garbage_is_a_decompress_error() {
    // Starts with a small length varint so raw snappy fails on content, not on size.
    let junk = [0x0a, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8];
    for c in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        assert!(
            matches!(
                c.decompress(&junk, 1 << 20),
                Err(CodecError::Decompress { .. })
            ),
            "{c}"
        );
    }
}

#[test]
fn codec_ids_and_attributes() {
    for c in Compression::ALL {
        assert_eq!(Compression::from_id(c.id()).unwrap(), c);
        let attrs = c.apply_to_attributes(0x7ff8);
        assert_eq!(attrs & 0x7ff8, 0x7ff8);
        assert_eq!(Compression::from_attributes(attrs).unwrap(), c);
    }
    for bad in 5..8u8 {
        assert!(matches!(
            Compression::from_id(bad),
            Err(CodecError::UnknownCompression(b)) if b == bad
        ));
    }
}
