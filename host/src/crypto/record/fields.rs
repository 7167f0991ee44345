//! How an encrypted schema field's ciphertext is written in place of the field
//! ([`FieldEncoding`]), and read back: the one place the record stage knows these forms.

use base64_simd::STANDARD as B64;

use crate::crypto::wire::{FieldEncoding, JSON_PREFIX};
use crate::schema::varint;

fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Length of the varint that prefixes `len` content bytes in `encoding`.
fn prefix_len(encoding: FieldEncoding, len: usize) -> usize {
    match encoding {
        FieldEncoding::AvroText | FieldEncoding::AvroRaw => varint::unsigned_len(2 * len as u64),
        FieldEncoding::ProtoText | FieldEncoding::ProtoRaw => varint::unsigned_len(len as u64),
        FieldEncoding::JsonText => 0,
    }
}

/// Length of the content (after any length prefix) for a ciphertext of `ct_len` bytes.
fn content_len(encoding: FieldEncoding, ct_len: usize) -> usize {
    match encoding {
        FieldEncoding::AvroText | FieldEncoding::ProtoText => JSON_PREFIX.len() + b64_len(ct_len),
        FieldEncoding::AvroRaw | FieldEncoding::ProtoRaw => ct_len,
        FieldEncoding::JsonText => 2 + JSON_PREFIX.len() + b64_len(ct_len),
    }
}

/// Length of the stored field for a ciphertext of `ct_len` bytes (known from the plaintext's
/// length before sealing, so the descriptor can carry the stored spans it authenticates).
pub(super) fn stored_len(encoding: FieldEncoding, ct_len: usize) -> usize {
    let c = content_len(encoding, ct_len);
    prefix_len(encoding, c) + c
}

/// Appends the stored field for ciphertext `ct` to `out`.
pub(super) fn encode_into(encoding: FieldEncoding, ct: &[u8], out: &mut Vec<u8>) {
    let c = content_len(encoding, ct.len());
    out.reserve(prefix_len(encoding, c) + c);
    match encoding {
        FieldEncoding::AvroText | FieldEncoding::AvroRaw => varint::write_zigzag(out, c as i64),
        FieldEncoding::ProtoText | FieldEncoding::ProtoRaw => varint::write_unsigned(out, c as u64),
        FieldEncoding::JsonText => out.push(b'"'),
    }
    match encoding {
        FieldEncoding::AvroRaw | FieldEncoding::ProtoRaw => out.extend_from_slice(ct),
        _ => {
            out.extend_from_slice(JSON_PREFIX.as_bytes());
            let start = out.len();
            out.resize(start + b64_len(ct.len()), 0);
            let written = B64.encode(ct, base64_simd::Out::from_slice(&mut out[start..]));
            debug_assert_eq!(written.len(), b64_len(ct.len()));
        }
    }
    if encoding == FieldEncoding::JsonText {
        out.push(b'"');
    }
}

/// The ciphertext of a stored field; `Err` says why the bytes are not in `encoding`'s form.
pub(super) fn decode(encoding: FieldEncoding, stored: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    decode_into(encoding, stored, &mut out)?;
    Ok(out)
}

/// Appends the ciphertext of a stored field to `out`; `Err` says why the bytes are not in
/// `encoding`'s form (`out` may then hold part of it).
pub(super) fn decode_into(
    encoding: FieldEncoding,
    stored: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let content = match encoding {
        FieldEncoding::AvroText | FieldEncoding::AvroRaw => {
            let mut pos = 0;
            let n = varint::read_zigzag(stored, &mut pos).ok_or("bad length")?;
            (usize::try_from(n).ok() == Some(stored.len() - pos))
                .then(|| &stored[pos..])
                .ok_or("length does not match the span")?
        }
        FieldEncoding::ProtoText | FieldEncoding::ProtoRaw => {
            let mut pos = 0;
            let n = varint::read_unsigned(stored, &mut pos).ok_or("bad length")?;
            (usize::try_from(n).ok() == Some(stored.len() - pos))
                .then(|| &stored[pos..])
                .ok_or("length does not match the span")?
        }
        FieldEncoding::JsonText => stored
            .strip_prefix(b"\"")
            .and_then(|s| s.strip_suffix(b"\""))
            .ok_or("not a JSON string")?,
    };
    match encoding {
        FieldEncoding::AvroRaw | FieldEncoding::ProtoRaw => out.extend_from_slice(content),
        _ => {
            let b = content
                .strip_prefix(JSON_PREFIX.as_bytes())
                .ok_or("not a kapsule:v1 string")?;
            let start = out.len();
            let len = B64.decoded_length(b).map_err(|_| "invalid base64")?;
            out.resize(start + len, 0);
            let decoded = B64
                .decode(b, base64_simd::Out::from_slice(&mut out[start..]))
                .map_err(|_| "invalid base64")?
                .len();
            out.truncate(start + decoded);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_len_matches_encode_and_decode_inverts_it() {
        for enc in [
            FieldEncoding::AvroText,
            FieldEncoding::AvroRaw,
            FieldEncoding::JsonText,
            FieldEncoding::ProtoText,
            FieldEncoding::ProtoRaw,
        ] {
            for ct_len in [0usize, 1, 2, 3, 16, 40, 47, 48, 100, 5016] {
                let ct = vec![0xa5; ct_len];
                let mut stored = vec![0xAA];
                encode_into(enc, &ct, &mut stored);
                let stored = stored.split_off(1);
                assert_eq!(stored.len(), stored_len(enc, ct_len), "{enc:?} {ct_len}");
                assert_eq!(decode(enc, &stored).unwrap(), ct);
                let mut cut = stored.clone();
                cut.pop();
                assert!(decode(enc, &cut).is_err(), "{enc:?}: truncated accepted");
            }
        }
    }
}
