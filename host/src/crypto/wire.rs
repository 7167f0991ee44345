//! The encrypted-record wire format, version 1 (documented byte by byte in docs/wire-format.md).
//!
//! An encrypted record carries one header [`HEADER_KEY`] whose value is an encoded
//! [`Descriptor`]: format version, what is encrypted, a random record id, the nonce base, the
//! KEK id, the EDEK, the encrypted JSON pointers and header names. Every AES-GCM ciphertext is
//! authenticated together with the topic, its part (kind, index, name), the record key as it is
//! on the wire and the whole descriptor ([`part_aad`]); the deterministic record-key ciphertext
//! with the topic, KEK id and KEK version ([`key_aad`]).

use std::borrow::Cow;

use crate::crypto::primitives::NONCE_LEN;
use crate::kafka::reader::{ByteReader, ReadError};

/// Name of the record header carrying the descriptor.
pub const HEADER_KEY: &str = "kapsule.enc";
/// Descriptor format version written by this code.
pub const FORMAT_V1: u8 = 1;
/// Prefix of an encrypted JSON field's string value (followed by standard base64 with padding).
pub const JSON_PREFIX: &str = "kapsule:v1:";

/// Descriptor flag: the whole value is encrypted (part 0).
pub const FLAG_VALUE_WHOLE: u8 = 0x01;
/// Descriptor flag: JSON fields of the value are encrypted.
pub const FLAG_VALUE_JSON: u8 = 0x02;
/// Descriptor flag: the record key is encrypted (AES-SIV).
pub const FLAG_KEY: u8 = 0x04;
/// Descriptor flag: some header values are encrypted.
pub const FLAG_HEADERS: u8 = 0x08;
/// Descriptor flag: fields of a schema-encoded value (Avro, Protobuf, JSON Schema in the
/// Confluent wire format) are encrypted; their paths are in the pointer list and their spans in
/// the trailing field-span list.
pub const FLAG_VALUE_SCHEMA: u8 = 0x10;
/// Descriptor flag: the record binds its parts and its tag by associated data revision 2
/// ([`AadScheme::V2`]).
pub const FLAG_AAD_V2: u8 = 0x20;
/// Descriptor flag: the record seals its value fields and its record tag in one AES-GCM stream,
/// associated data revision 3 ([`AadScheme::V3`]); only with an encrypted value (whole, JSON or
/// schema flag).
pub const FLAG_AAD_V3: u8 = 0x40;
const KNOWN_FLAGS: u8 = FLAG_VALUE_WHOLE
    | FLAG_VALUE_JSON
    | FLAG_KEY
    | FLAG_HEADERS
    | FLAG_VALUE_SCHEMA
    | FLAG_AAD_V2
    | FLAG_AAD_V3;

/// How a record's parts and its record tag bind their context (docs/wire-format.md, "Associated
/// data"). The three revisions bind the same things; they differ in cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AadScheme {
    /// Revision 1: every part's AAD holds the whole descriptor, and the record tag is the GCM tag
    /// of an empty plaintext whose AAD holds the value. Written for tombstones, and for
    /// whole-value records when `record_format.whole_value_revision` is 1 (readers that predate
    /// revision 3 for whole values read them).
    #[default]
    V1,
    /// Revision 2: a part's AAD holds the record id instead of the descriptor, and the record tag
    /// is the GCM tag of the value sealed as plaintext (that ciphertext is discarded) under an
    /// AAD that holds the descriptor. The tag, verified before any part is opened, still covers
    /// the descriptor, and the record id and nonce bind each part to its record; but the value
    /// goes through AES-GCM's bulk path instead of GHASH one block at a time (a 1 KiB value with
    /// encrypted fields cost several times its whole-value encryption under revision 1). Written
    /// whenever the value is left wholly in clear (key-only or header-only plans).
    V2,
    /// Revision 3, for an encrypted value (whole, or JSON or schema fields): the value's
    /// encrypted bytes and the record tag are one AES-GCM stream, `value prefix | field
    /// plaintexts | the stored value outside the field spans`
    /// ([`RecordContext::value_stream_prefix`]; a whole value is one field spanning it, with
    /// nothing outside). The fields' ciphertexts are stored (without a tag of their own), the
    /// rest of that ciphertext is discarded, and its tag is the record tag. Header parts bind as
    /// in revision 2. One AES-GCM call instead of one per field plus one for the tag, whose fixed
    /// cost (and the block-at-a-time GHASH of each AAD) made a 1 KiB record with three encrypted
    /// fields cost 2.7 times its whole-value encryption under revision 2, and spent more time in
    /// GHASH over the two AADs of a revision 1 whole value than in encrypting it.
    V3,
}

pub use crate::schema::FieldEncoding;

impl FieldEncoding {
    fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            1 => Self::AvroText,
            2 => Self::AvroRaw,
            3 => Self::JsonText,
            4 => Self::ProtoText,
            5 => Self::ProtoRaw,
            _ => return Err(WireError::Malformed("unknown schema field encoding")),
        })
    }
}

/// One encrypted field of a schema-encoded value: its path (bound in the part's AAD), how its
/// ciphertext is written, and the byte span it occupies in the stored value. The span is
/// authenticated by the record tag (it is in the descriptor), so a reader restores the original
/// bytes without the schema: the part's plaintext is exactly the bytes the span replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFieldPart {
    /// Dotted path of the field, e.g. `customer.email`.
    pub path: String,
    /// How the ciphertext is written.
    pub encoding: FieldEncoding,
    /// Offset of the span in the stored value.
    pub start: u32,
    /// Length of the span in the stored value.
    pub len: u32,
}

/// What of the value is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueEncryption {
    /// Value in clear (or null).
    None,
    /// The whole value is part 0.
    Whole,
    /// Values at these JSON pointers are parts 0..n, in this order.
    Json(Vec<String>),
    /// These fields of a schema-encoded value are parts 0..n, in this order (ascending spans).
    Schema(Vec<SchemaFieldPart>),
}

/// The content of the `kapsule.enc` header.
///
/// The KEK id and the EDEK borrow from the header value a descriptor was decoded from (or from
/// the DEK a record is sealed with): the records of a batch nearly always share them, and
/// copying them for every record was most of the cost of decoding one.
/// [`into_owned`](Self::into_owned) detaches a descriptor that must outlive its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor<'a> {
    /// Which part of the value is encrypted.
    pub value: ValueEncryption,
    /// The record key is encrypted deterministically.
    pub key_encrypted: bool,
    /// Random per-record id: binds value and headers to this record.
    pub record_id: [u8; 16],
    /// Nonce of part 0; part i uses the counter in bytes 4..12 plus i.
    pub nonce_base: [u8; NONCE_LEN],
    /// KEK version of the record-key encryption key (0 when the key is not encrypted).
    pub key_kek_version: u32,
    /// KEK id (1..=255 bytes of UTF-8).
    pub kek_id: Cow<'a, str>,
    /// The wrapped DEK (opaque KMS ciphertext, at most 65535 bytes).
    pub edek: Cow<'a, [u8]>,
    /// Names of encrypted headers, one entry per encrypted occurrence, in wire order.
    pub headers: Vec<Vec<u8>>,
    /// How the parts and the record tag bind their context.
    pub aad: AadScheme,
}

/// Why a descriptor could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A version this build does not understand (written by a newer Kapsule?).
    #[error("unsupported kapsule.enc format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// Structurally invalid.
    #[error("malformed kapsule.enc header: {0}")]
    Malformed(&'static str),
    /// A field is too long to encode.
    #[error("cannot encode kapsule.enc header: {0}")]
    TooLong(&'static str),
    /// The KEK id is not one Kapsule would ever pass to a KMS (see [`validate_key_id`]).
    #[error("invalid KEK id: {0}")]
    InvalidKeyId(KeyIdError),
}

pub use crate::kms::key_id::{validate_key_id, KeyIdError, MAX_KEY_ID_LEN};

impl From<ReadError> for WireError {
    fn from(_: ReadError) -> Self {
        WireError::Malformed("truncated")
    }
}

/// A u16 count, then that many u16-length-prefixed items.
fn read_list<'a>(r: &mut ByteReader<'a>, what: &'static str) -> Result<Vec<&'a [u8]>, WireError> {
    let n = r.u16(what)?;
    (0..n)
        .map(|_| {
            let l = r.u16(what)? as usize;
            Ok(r.take(l, what)?)
        })
        .collect()
}

fn put_list<'a>(
    out: &mut Vec<u8>,
    items: impl ExactSizeIterator<Item = &'a [u8]>,
    what: &'static str,
) -> Result<(), WireError> {
    let n = u16::try_from(items.len()).map_err(|_| WireError::TooLong(what))?;
    out.extend_from_slice(&n.to_be_bytes());
    for i in items {
        let l = u16::try_from(i.len()).map_err(|_| WireError::TooLong(what))?;
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(i);
    }
    Ok(())
}

impl<'a> Descriptor<'a> {
    /// Flags byte derived from the content.
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        match self.value {
            ValueEncryption::None => {}
            ValueEncryption::Whole => f |= FLAG_VALUE_WHOLE,
            ValueEncryption::Json(_) => f |= FLAG_VALUE_JSON,
            ValueEncryption::Schema(_) => f |= FLAG_VALUE_SCHEMA,
        }
        if self.key_encrypted {
            f |= FLAG_KEY;
        }
        if !self.headers.is_empty() {
            f |= FLAG_HEADERS;
        }
        match self.aad {
            AadScheme::V1 => {}
            AadScheme::V2 => f |= FLAG_AAD_V2,
            AadScheme::V3 => f |= FLAG_AAD_V3,
        }
        f
    }

    /// Number of value parts (AES-GCM encryptions of the value on their own nonce). Under
    /// revision 3 there are none: the whole value or its fields are sealed in the record tag's
    /// stream.
    pub fn value_parts(&self) -> u32 {
        match &self.value {
            ValueEncryption::None => 0,
            _ if self.aad == AadScheme::V3 => 0,
            ValueEncryption::Whole => 1,
            ValueEncryption::Json(p) => p.len() as u32,
            ValueEncryption::Schema(p) => p.len() as u32,
        }
    }

    /// The same descriptor, owning its KEK id and EDEK.
    pub fn into_owned(self) -> Descriptor<'static> {
        Descriptor {
            kek_id: Cow::Owned(self.kek_id.into_owned()),
            edek: Cow::Owned(self.edek.into_owned()),
            ..self
        }
    }

    /// Encodes to the header value.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let kek = self.kek_id.as_bytes();
        if kek.is_empty() || kek.len() > 255 {
            return Err(WireError::TooLong("KEK id must be 1..=255 bytes"));
        }
        if matches!(&self.value, ValueEncryption::Json(p) if p.is_empty())
            || matches!(&self.value, ValueEncryption::Schema(p) if p.is_empty())
        {
            return Err(WireError::TooLong(
                "JSON and schema modes need at least one field",
            ));
        }
        // Exactly the encoded size plus the record tag the writer appends, so the header value
        // becomes `Bytes` without another allocation.
        let pointers: usize = match &self.value {
            ValueEncryption::Json(p) => p.iter().map(|p| 2 + p.len()).sum(),
            ValueEncryption::Schema(f) => f.iter().map(|f| 2 + f.path.len() + 9).sum(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(
            2 + 16
                + NONCE_LEN
                + 4
                + 1
                + kek.len()
                + 2
                + self.edek.len()
                + 2
                + pointers
                + 2
                + self.headers.iter().map(|h| 2 + h.len()).sum::<usize>()
                + RECORD_TAG_LEN,
        );
        out.push(FORMAT_V1);
        out.push(self.flags());
        out.extend_from_slice(&self.record_id);
        out.extend_from_slice(&self.nonce_base);
        out.extend_from_slice(&self.key_kek_version.to_be_bytes());
        out.push(kek.len() as u8);
        out.extend_from_slice(kek);
        let el = u16::try_from(self.edek.len()).map_err(|_| WireError::TooLong("EDEK"))?;
        out.extend_from_slice(&el.to_be_bytes());
        out.extend_from_slice(&self.edek);
        match &self.value {
            ValueEncryption::Json(p) => {
                put_list(&mut out, p.iter().map(|s| s.as_bytes()), "JSON pointers")?
            }
            ValueEncryption::Schema(f) => put_list(
                &mut out,
                f.iter().map(|f| f.path.as_bytes()),
                "JSON pointers",
            )?,
            _ => put_list(&mut out, std::iter::empty(), "JSON pointers")?,
        }
        put_list(
            &mut out,
            self.headers.iter().map(Vec::as_slice),
            "header names",
        )?;
        if let ValueEncryption::Schema(fields) = &self.value {
            for f in fields {
                out.push(f.encoding as u8);
                out.extend_from_slice(&f.start.to_be_bytes());
                out.extend_from_slice(&f.len.to_be_bytes());
            }
        }
        Ok(out)
    }

    /// Decodes a header value; rejects unknown versions and flags, inconsistent flags and
    /// trailing bytes.
    pub fn decode(b: &'a [u8]) -> Result<Self, WireError> {
        let mut r = ByteReader::new(b);
        let version = r.u8("version")?;
        if version != FORMAT_V1 {
            return Err(WireError::UnsupportedVersion(version));
        }
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::Malformed("unknown flag bits"));
        }
        let value_modes = [FLAG_VALUE_WHOLE, FLAG_VALUE_JSON, FLAG_VALUE_SCHEMA]
            .iter()
            .filter(|&&m| flags & m != 0)
            .count();
        if value_modes > 1 {
            return Err(WireError::Malformed(
                "more than one of the whole-value, JSON and schema flags set",
            ));
        }
        if flags & FLAG_AAD_V2 != 0 && flags & FLAG_AAD_V3 != 0 {
            return Err(WireError::Malformed(
                "both associated data revision flags set",
            ));
        }
        if flags & FLAG_AAD_V3 != 0
            && flags & (FLAG_VALUE_WHOLE | FLAG_VALUE_JSON | FLAG_VALUE_SCHEMA) == 0
        {
            return Err(WireError::Malformed(
                "associated data revision 3 without an encrypted value",
            ));
        }
        let record_id: [u8; 16] = r.take(16, "record id")?.try_into().expect("16");
        let nonce_base: [u8; NONCE_LEN] = r.take(NONCE_LEN, "nonce base")?.try_into().expect("12");
        let key_kek_version = r.u32("key KEK version")?;
        let kl = r.u8("KEK id length")? as usize;
        if kl == 0 {
            return Err(WireError::Malformed("empty KEK id"));
        }
        let kek_id = std::str::from_utf8(r.take(kl, "KEK id")?)
            .map_err(|_| WireError::Malformed("KEK id is not UTF-8"))?;
        validate_key_id(kek_id).map_err(WireError::InvalidKeyId)?;
        let el = r.u16("EDEK length")? as usize;
        let edek = r.take(el, "EDEK")?;
        let ptrs = read_list(&mut r, "JSON pointers")?
            .into_iter()
            .map(|p| {
                std::str::from_utf8(p)
                    .map(str::to_owned)
                    .map_err(|_| WireError::Malformed("JSON pointer is not UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let headers: Vec<Vec<u8>> = read_list(&mut r, "header names")?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let mut schema_fields = Vec::new();
        if flags & FLAG_VALUE_SCHEMA != 0 {
            let mut end = 0u64;
            for path in &ptrs {
                let encoding = FieldEncoding::from_byte(r.u8("field encoding")?)?;
                let start = r.u32("field start")?;
                let len = r.u32("field length")?;
                if u64::from(start) < end {
                    return Err(WireError::Malformed(
                        "schema field spans overlap or are unordered",
                    ));
                }
                end = u64::from(start) + u64::from(len);
                schema_fields.push(SchemaFieldPart {
                    path: path.clone(),
                    encoding,
                    start,
                    len,
                });
            }
        }
        if !r.is_empty() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        let value = if flags & FLAG_VALUE_WHOLE != 0 {
            ValueEncryption::Whole
        } else if flags & FLAG_VALUE_JSON != 0 {
            ValueEncryption::Json(ptrs.clone())
        } else if flags & FLAG_VALUE_SCHEMA != 0 {
            ValueEncryption::Schema(schema_fields)
        } else {
            ValueEncryption::None
        };
        if (flags & (FLAG_VALUE_JSON | FLAG_VALUE_SCHEMA) != 0) == ptrs.is_empty() {
            return Err(WireError::Malformed(
                "JSON or schema flag and pointer list disagree",
            ));
        }
        if (flags & FLAG_HEADERS != 0) == headers.is_empty() {
            return Err(WireError::Malformed(
                "headers flag and header list disagree",
            ));
        }
        let key_encrypted = flags & FLAG_KEY != 0;
        if !key_encrypted && key_kek_version != 0 {
            return Err(WireError::Malformed("key version set for a clear key"));
        }
        Ok(Self {
            value,
            key_encrypted,
            record_id,
            nonce_base,
            key_kek_version,
            kek_id: Cow::Borrowed(kek_id),
            edek: Cow::Borrowed(edek),
            headers,
            aad: if flags & FLAG_AAD_V3 != 0 {
                AadScheme::V3
            } else if flags & FLAG_AAD_V2 != 0 {
                AadScheme::V2
            } else {
                AadScheme::V1
            },
        })
    }
}

/// Kind of an AES-GCM part, as bound in its AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PartKind {
    /// The whole value.
    Value = 1,
    /// A JSON field of the value.
    JsonField = 2,
    /// A header value.
    Header = 3,
    /// A field of a schema-encoded value (name: its dotted path).
    SchemaField = 4,
}

/// The label a revision 3 value stream starts with.
const VALUE_STREAM_LABEL: &[u8] = b"kapsule/v3/value";

/// The length of the revision 3 value stream prefix
/// ([`RecordContext::append_value_stream_prefix`]) for a topic, wire key and descriptor of these
/// lengths and `fields` encrypted fields (a null key counts as empty).
pub fn value_stream_prefix_len(
    topic: usize,
    key: usize,
    descriptor: usize,
    fields: usize,
) -> usize {
    // label | lp(topic) | key-present u8 | lp(key) | lp(descriptor) | field count | field lengths
    VALUE_STREAM_LABEL.len() + 4 + topic + 1 + 4 + key + 4 + descriptor + 4 + 4 * fields
}

fn put32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// What every associated data of one record binds: the topic, the record key exactly as sent to
/// the broker, and the record's descriptor, under the record's [`AadScheme`].
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// The revision the descriptor names.
    pub scheme: AadScheme,
    /// Topic name.
    pub topic: &'a str,
    /// The record key as sent to the broker (ciphertext if encrypted).
    pub wire_key: Option<&'a [u8]>,
    /// The descriptor bytes (the `kapsule.enc` header value without the tag).
    pub descriptor: &'a [u8],
    /// The descriptor's record id.
    pub record_id: &'a [u8; 16],
}

impl RecordContext<'_> {
    /// Writes the AAD of AES-GCM part `index` into `out` (cleared first):
    /// `prefix | kind u8 | index u32 | lp(topic) | lp(name) | key-present u8 | lp(key) | binding`,
    /// where lp = u32 big-endian length then bytes, `name` is empty (value), the JSON pointer,
    /// the schema field path or the header name; revision 1: prefix `"kapsule/v1/part"`, binding
    /// `lp(descriptor)`; revisions 2 and 3: prefix `"kapsule/v2/part"` or `"kapsule/v3/part"`,
    /// binding the 16-byte record id.
    pub fn part_aad(&self, kind: PartKind, index: u32, name: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(match self.scheme {
            AadScheme::V1 => b"kapsule/v1/part",
            AadScheme::V2 => b"kapsule/v2/part",
            AadScheme::V3 => b"kapsule/v3/part",
        });
        out.push(kind as u8);
        out.extend_from_slice(&index.to_be_bytes());
        put32(out, self.topic.as_bytes());
        put32(out, name);
        self.put_key(out);
        match self.scheme {
            AadScheme::V1 => put32(out, self.descriptor),
            AadScheme::V2 | AadScheme::V3 => out.extend_from_slice(self.record_id),
        }
    }

    /// Writes the start of a revision 3 value stream into `out` (cleared first): `"kapsule/v3/value"
    /// | lp(topic) | key-present u8 | lp(key) | lp(descriptor) | field count u32 | each field's
    /// plaintext length u32`, in descriptor order (a whole value: one field, the value). The
    /// stream continues with the field plaintexts in that order, then the stored value without
    /// its field spans (nothing, for a whole value); it is sealed
    /// with no AAD at nonce index = number of header parts, and its tag is the record tag.
    pub fn value_stream_prefix(
        &self,
        field_lens: impl ExactSizeIterator<Item = usize>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        self.append_value_stream_prefix(field_lens, out);
    }

    /// [`Self::value_stream_prefix`] appended to `out` as it is (several records' streams in
    /// one buffer).
    pub fn append_value_stream_prefix(
        &self,
        field_lens: impl ExactSizeIterator<Item = usize>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(VALUE_STREAM_LABEL);
        put32(out, self.topic.as_bytes());
        self.put_key(out);
        put32(out, self.descriptor);
        out.extend_from_slice(&(field_lens.len() as u32).to_be_bytes());
        for len in field_lens {
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }

    /// Writes the record tag's AAD into `out` (cleared first) and returns the bytes the tag seals
    /// as plaintext (nonce index = number of parts).
    ///
    /// Revision 1: AAD `"kapsule/v1/record" | lp(topic) | key-present u8 | lp(key) | value marker
    /// u8 | lp(value) | lp(descriptor)`, empty plaintext. Revision 2: AAD `"kapsule/v2/record" |
    /// lp(topic) | key-present u8 | lp(key) | value marker u8 | lp(descriptor)`, plaintext the
    /// value. The value is exactly as sent to the broker, and empty for markers 0 and 2. The tag
    /// authenticates the whole record body, including parts left in clear, so a descriptor cannot
    /// be copied onto a forged record.
    pub fn record_tag_input<'v>(&self, value: TagValue<'v>, out: &mut Vec<u8>) -> &'v [u8] {
        let (marker, bytes): (u8, &'v [u8]) = match value {
            TagValue::Null => (0, b""),
            TagValue::Bytes(b) => (1, b),
            TagValue::Encrypted => (2, b""),
        };
        out.clear();
        out.extend_from_slice(match self.scheme {
            AadScheme::V1 => b"kapsule/v1/record",
            // A revision 3 record's tag is its value stream's; a descriptor without an encrypted
            // value does not decode. Bound like revision 2 all the same.
            AadScheme::V2 | AadScheme::V3 => b"kapsule/v2/record",
        });
        put32(out, self.topic.as_bytes());
        self.put_key(out);
        out.push(marker);
        match self.scheme {
            AadScheme::V1 => {
                put32(out, bytes);
                put32(out, self.descriptor);
                b""
            }
            AadScheme::V2 | AadScheme::V3 => {
                put32(out, self.descriptor);
                bytes
            }
        }
    }

    fn put_key(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.wire_key.is_some()));
        put32(out, self.wire_key.unwrap_or_default());
    }
}

/// Length of the record tag that follows the descriptor in the `kapsule.enc` header value.
pub const RECORD_TAG_LEN: usize = 16;

/// Splits a `kapsule.enc` header value into (descriptor bytes, record tag).
pub fn split_header(value: &[u8]) -> Result<(&[u8], &[u8; RECORD_TAG_LEN]), WireError> {
    if value.len() < RECORD_TAG_LEN + 2 {
        return Err(WireError::Malformed("truncated"));
    }
    let (d, t) = value.split_at(value.len() - RECORD_TAG_LEN);
    Ok((d, t.try_into().expect("16 bytes")))
}

/// How the record value enters the record tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagValue<'a> {
    /// Null value: marker 0.
    Null,
    /// The value as sent to the broker (clear, or JSON with encrypted fields): marker 1 + bytes.
    Bytes(&'a [u8]),
    /// Whole value encrypted, hence already authenticated by part 0: marker 2, no bytes.
    Encrypted,
}

/// AAD of the deterministic record-key ciphertext:
/// `"kapsule/v1/key" | lp(topic) | lp(kek_id) | kek_version u32`.
pub fn key_aad(topic: &str, kek_id: &str, kek_version: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(26 + topic.len() + kek_id.len());
    a.extend_from_slice(b"kapsule/v1/key");
    put32(&mut a, topic.as_bytes());
    put32(&mut a, kek_id.as_bytes());
    a.extend_from_slice(&kek_version.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value_stream_prefix_len` is the length the prefix writer writes, with and without a key.
    #[test]
    fn value_stream_prefix_len_is_what_the_prefix_takes() {
        for (key, fields) in [(Some(&b"user-7"[..]), 1usize), (None, 3)] {
            let ctx = RecordContext {
                scheme: AadScheme::V3,
                topic: "orders",
                wire_key: key,
                descriptor: b"descriptor bytes",
                record_id: &[0; 16],
            };
            let mut out = b"earlier stream".to_vec();
            ctx.append_value_stream_prefix(std::iter::repeat_n(10, fields), &mut out);
            assert_eq!(
                out.len() - b"earlier stream".len(),
                value_stream_prefix_len(6, key.map_or(0, <[u8]>::len), 16, fields)
            );
        }
    }

    fn sample() -> Descriptor<'static> {
        Descriptor {
            value: ValueEncryption::Json(vec!["/a".into(), "/b/0".into()]),
            key_encrypted: true,
            record_id: [1; 16],
            nonce_base: [2; 12],
            key_kek_version: 3,
            kek_id: "orders".into(),
            edek: b"vault:v1:abc".to_vec().into(),
            headers: vec![b"h1".to_vec(), b"h1".to_vec()],
            aad: AadScheme::V2,
        }
    }

    /// The encoding's buffer has exactly the room of the record tag left (appending it never
    /// reallocates, and the header value becomes `Bytes` without another allocation).
    #[test]
    fn encoding_leaves_exactly_the_record_tags_room() {
        let mut schema = sample();
        schema.value = ValueEncryption::Schema(vec![SchemaFieldPart {
            path: "customer.email".into(),
            encoding: FieldEncoding::AvroRaw,
            start: 4,
            len: 30,
        }]);
        schema.aad = AadScheme::V3;
        let mut whole = sample();
        whole.value = ValueEncryption::Whole;
        whole.headers.clear();
        whole.aad = AadScheme::V1;
        for d in [sample(), schema, whole] {
            let out = d.encode().unwrap();
            assert_eq!(out.capacity(), out.len() + RECORD_TAG_LEN, "{d:?}");
        }
    }

    #[test]
    fn round_trip_and_strict_decoding() {
        let d = sample();
        let b = d.encode().unwrap();
        assert_eq!(Descriptor::decode(&b).unwrap(), d);
        // Every truncation fails, as do trailing bytes.
        for n in 0..b.len() {
            assert!(Descriptor::decode(&b[..n]).is_err(), "prefix {n} accepted");
        }
        let mut t = b.clone();
        t.push(0);
        assert!(Descriptor::decode(&t).is_err());
        let mut v = b.clone();
        v[0] = 2;
        assert_eq!(
            Descriptor::decode(&v),
            Err(WireError::UnsupportedVersion(2))
        );
        let mut f = b.clone();
        f[1] |= 0x80;
        assert!(Descriptor::decode(&f).is_err());
        let mut f = b;
        f[1] |= FLAG_VALUE_WHOLE;
        assert!(Descriptor::decode(&f).is_err());
        let mut d2 = sample();
        d2.kek_id = String::new().into();
        assert!(d2.encode().is_err());
    }

    #[test]
    fn key_ids_with_path_tricks_are_refused_before_any_kms_call() {
        for ok in ["orders", "tenant-a.orders_v2", "kek-${x}", "a.b"] {
            assert_eq!(validate_key_id(ok), Ok(()), "{ok}");
        }
        for (bad, want) in [
            ("", KeyIdError::Empty),
            ("tenant-b-x/../tenant-a-secret", KeyIdError::PathSeparator),
            ("a\\b", KeyIdError::PathSeparator),
            ("..", KeyIdError::DotDot),
            ("a..b", KeyIdError::DotDot),
            ("a\nb", KeyIdError::Control),
            ("a\u{0}", KeyIdError::Control),
        ] {
            assert_eq!(validate_key_id(bad), Err(want), "{bad:?}");
        }
        assert_eq!(
            validate_key_id(&"k".repeat(256)),
            Err(KeyIdError::TooLong(256))
        );
        // A stored descriptor naming such a key does not decode (so it never reaches the KMS).
        let mut d = sample();
        d.kek_id = "tenant-b-x/../tenant-a-secret".into();
        let b = d.encode().unwrap();
        assert_eq!(
            Descriptor::decode(&b),
            Err(WireError::InvalidKeyId(KeyIdError::PathSeparator))
        );
    }
}
