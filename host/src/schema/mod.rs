//! Schema-aware field encryption: values in the Confluent Schema Registry wire format.
//!
//! A value on a topic whose rule says `value: {schema: {fields: [..], tags: [..]}}` must be
//! `0x00 | schema id (u32 big-endian) | [Protobuf message indexes] | body`. Kapsule fetches the
//! writer schema by id from the registry ([`registry::SchemaRegistry`], cached), walks the body
//! by it ([`avro`], [`json_schema`], [`protobuf`]) and returns the byte span of every selected
//! field ([`LocatedField`]). The record stage (`crypto::record`) then replaces each span with a
//! ciphertext of the same schema type, so the value stays valid under the same schema id, and
//! records the spans in the descriptor: a reader restores the original bytes without the
//! schema. See docs/schema-fields.md.

pub mod avro;
pub mod json_schema;
pub mod protobuf;
pub mod registry;

use std::ops::Range;

use crate::plan::FieldSelection;

pub use registry::{RegisteredSchema, RegistryError, SchemaFormat, SchemaRegistry};

/// The Confluent wire format's magic byte.
pub const WIRE_MAGIC: u8 = 0;

/// Length of the magic byte and schema id that start every wire-format value.
pub const WIRE_PREFIX_LEN: usize = 5;

/// Deepest nesting a walker follows (records in records, arrays in arrays, ...): deeper values
/// are refused, not recursed into.
pub const MAX_DEPTH: usize = 64;

/// Most fields a schema listing ([`SchemaListing`]) holds; a larger schema is listed up to
/// this many fields and marked truncated.
pub const MAX_LISTED_FIELDS: usize = 1024;

/// Most bytes of paths and tags a schema listing holds (it is cached with its schema and
/// counted against `schema_registry.cache_bytes`).
pub const MAX_LISTED_BYTES: usize = 256 << 10;

/// Most fields a lister visits (a named type used in many places is walked once per place):
/// a bound on the work a registry-supplied schema can cause.
const MAX_VISITED_FIELDS: usize = 16 * MAX_LISTED_FIELDS;

/// What a listed field can hold, as far as field encryption is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    /// Text (Avro or Protobuf `string`, JSON Schema `type: string`): selectable, the
    /// ciphertext is written as text.
    Text,
    /// Raw bytes (Avro or Protobuf `bytes`): selectable, the ciphertext is written raw.
    Bytes,
    /// Anything else (numbers, enums, records, fixed, a union of several types, ...): not
    /// selectable; its own fields, if any, are listed under its path.
    Other,
}

/// One field of a schema as a policy sees it (`describe-schema` in wit/policy.wit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedField {
    /// Dotted path as a rule or a `schema-fields` decision writes it (arrays, maps, unions and
    /// optional wrappers stepped through).
    pub path: String,
    /// Confluent tags of the field (`confluent:tags`, `(confluent.field_meta).tags`).
    pub tags: Vec<String>,
    /// What the field can hold.
    pub kind: ListedKind,
}

/// Every field of a schema, depth-first in declaration order, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaListing {
    /// The fields, at most [`MAX_LISTED_FIELDS`].
    pub fields: Vec<ListedField>,
    /// True when fields were left out: more than [`MAX_LISTED_FIELDS`] or [`MAX_LISTED_BYTES`],
    /// nesting deeper than [`MAX_DEPTH`], or more than the visit budget.
    pub truncated: bool,
    visited: usize,
    bytes: usize,
    /// Position of each path in `fields`.
    index: std::collections::HashMap<String, usize>,
}

impl SchemaListing {
    /// Counts one visited field; false (and marks the listing truncated) once the budgets are
    /// spent or `depth` is past [`MAX_DEPTH`]: the lister then stops descending.
    fn visit(&mut self, depth: usize) -> bool {
        self.visited += 1;
        if depth > MAX_DEPTH
            || self.visited > MAX_VISITED_FIELDS
            || self.fields.len() >= MAX_LISTED_FIELDS
        {
            self.truncated = true;
            return false;
        }
        true
    }

    /// Bytes of paths and tags held (what the listing adds to its schema's cache footprint).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a field. A path seen before (the same name in two union branches or two Protobuf
    /// top-level messages) is listed once, with the union of the tags, and as
    /// [`ListedKind::Other`] when the kinds differ (a selection must fit every branch).
    fn push(&mut self, path: String, tags: &[String], kind: ListedKind) {
        if let Some(f) = self.index.get(&path).map(|&i| &mut self.fields[i]) {
            for t in tags {
                if !f.tags.contains(t) && self.bytes + t.len() <= MAX_LISTED_BYTES {
                    self.bytes += t.len();
                    f.tags.push(t.clone());
                }
            }
            if f.kind != kind {
                f.kind = ListedKind::Other;
            }
            return;
        }
        let size = path.len() + tags.iter().map(String::len).sum::<usize>();
        if self.fields.len() >= MAX_LISTED_FIELDS || self.bytes + size > MAX_LISTED_BYTES {
            self.truncated = true;
            return;
        }
        self.bytes += size;
        self.index.insert(path.clone(), self.fields.len());
        self.fields.push(ListedField {
            path,
            tags: tags.to_vec(),
            kind,
        });
    }
}

/// `prefix.name`, or `name` at the top.
fn child_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A selected field found in a value: where its bytes are and how to write its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedField {
    /// Dotted path of the field (the name bound in the ciphertext's AAD).
    pub path: String,
    /// Span in the whole value (wire prefix included) that the ciphertext replaces.
    pub range: Range<usize>,
    /// How the ciphertext is written in place of the span.
    pub encoding: FieldEncoding,
}

/// For the format walkers' tests: what a `locate` of `value` found, as each field's path, the
/// bytes of `value` it spans and its encoding. Panics when `located` is an error.
#[cfg(test)]
pub(crate) fn found_spans(
    value: &[u8],
    located: Result<Vec<LocatedField>, String>,
) -> Vec<(String, Vec<u8>, FieldEncoding)> {
    located
        .unwrap()
        .into_iter()
        .map(|f| (f.path, value[f.range].to_vec(), f.encoding))
        .collect()
}

/// Why a schema-encoded value cannot be field-encrypted (the record is then refused).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    /// The value does not start with the wire-format prefix.
    #[error(
        "value is not in the Confluent Schema Registry wire format (magic byte 0, 4-byte schema \
         id): {0}; this topic's rule encrypts schema fields, so produce with a registry \
         serializer"
    )]
    NotWireFormat(String),
    /// The registry failed or does not know the schema.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The selection does not fit the schema (a selected field of another type, a path that is
    /// not in the schema, a construct Kapsule does not support).
    #[error("schema id {id}: {message}")]
    Selection {
        /// Schema id.
        id: u32,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The body does not decode under its schema.
    #[error("value does not decode under schema id {id}: {message}")]
    Body {
        /// Schema id.
        id: u32,
        /// What is wrong.
        message: String,
    },
}

impl SchemaError {
    /// True when the producer should retry (the registry was unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_retriable())
    }
}

/// Reads the schema id of a wire-format value.
pub fn schema_id(value: &[u8]) -> Result<u32, SchemaError> {
    match value {
        [WIRE_MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [m, ..] if *m != WIRE_MAGIC => Err(SchemaError::NotWireFormat(format!(
            "first byte is 0x{m:02x}"
        ))),
        _ => Err(SchemaError::NotWireFormat(format!(
            "only {} bytes",
            value.len()
        ))),
    }
}

/// Finds the selected fields of `value` (a whole wire-format value whose schema id is
/// `schema.id`), in ascending span order.
pub fn locate(
    value: &[u8],
    schema: &RegisteredSchema,
    selection: &FieldSelection,
) -> Result<Vec<LocatedField>, SchemaError> {
    let compiled = schema.compiled(selection)?;
    let body_err = |message: String| SchemaError::Body {
        id: schema.id,
        message,
    };
    let mut found = match &*compiled {
        registry::Compiled::Avro(targets) => {
            avro::locate(targets, value, WIRE_PREFIX_LEN).map_err(body_err)?
        }
        registry::Compiled::Json(targets) => {
            json_schema::locate(targets, value, WIRE_PREFIX_LEN).map_err(body_err)?
        }
        registry::Compiled::Protobuf(targets) => {
            protobuf::locate(targets, value, WIRE_PREFIX_LEN).map_err(body_err)?
        }
    };
    found.sort_by_key(|f| f.range.start);
    Ok(found)
}

/// Splits a dotted path into its names; empty names are refused.
pub fn split_path(path: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!(
            "field path `{path}` has an empty name (write names joined by `.`, e.g. `customer.email`)"
        ));
    }
    Ok(parts)
}

/// Checks a rule's or a reveal grant's field selection (start-up validation).
pub fn validate_selection(sel: &FieldSelection, path: &str, problems: &mut Vec<String>) {
    if sel.fields.is_empty() && sel.tags.is_empty() {
        problems.push(format!(
            "{path}: names no field and no tag; use `value: none` to leave values in clear"
        ));
    }
    for (j, f) in sel.fields.iter().enumerate() {
        if let Err(e) = split_path(f) {
            problems.push(format!("{path}.fields[{j}]: {e}"));
        }
    }
    for (j, t) in sel.tags.iter().enumerate() {
        if t.is_empty() {
            problems.push(format!("{path}.tags[{j}]: empty tag"));
        }
    }
}

/// How an encrypted schema field's ciphertext is written in the stored value (one byte in the
/// descriptor). Each form keeps the value valid under its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FieldEncoding {
    /// Avro `string`: zig-zag length, then the `kapsule:v1:` prefix + base64 of the ciphertext.
    AvroText = 1,
    /// Avro `bytes`: zig-zag length, then the raw ciphertext.
    AvroRaw = 2,
    /// JSON string: `"` + the `kapsule:v1:` prefix + base64 of the ciphertext + `"`.
    JsonText = 3,
    /// Protobuf `string`: varint length, then the `kapsule:v1:` prefix + base64 of the ciphertext.
    ProtoText = 4,
    /// Protobuf `bytes`: varint length, then the raw ciphertext.
    ProtoRaw = 5,
}

/// Zig-zag varint reader/writer shared by the Avro walker and the record stage.
pub mod varint {
    /// Reads an Avro zig-zag `long` at `*pos` (the encoding of Kafka's varlong, at a position
    /// rather than through a reader); `None` when truncated or over 64 bits.
    pub fn read_zigzag(b: &[u8], pos: &mut usize) -> Option<i64> {
        read_unsigned(b, pos).map(|u| ((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Reads a base-128 varint (Protobuf) at `*pos`; `None` when truncated or too long.
    pub fn read_unsigned(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = *b.get(*pos)?;
            if i == 9 && byte > 1 {
                return None; // more than 64 bits
            }
            *pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// Appends an Avro zig-zag `long`.
    pub fn write_zigzag(out: &mut Vec<u8>, v: i64) {
        write_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
    }

    /// Appends a base-128 varint.
    pub fn write_unsigned(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Length of `v` as a base-128 varint.
    pub fn unsigned_len(v: u64) -> usize {
        (1..10).find(|&n| v >> (7 * n) == 0).unwrap_or(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_prefix_and_paths() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]).unwrap(), 258);
        assert!(matches!(
            schema_id(b"{\"a\":1}"),
            Err(SchemaError::NotWireFormat(_))
        ));
        assert!(schema_id(&[0, 0, 1]).is_err());
        assert_eq!(split_path("a.b").unwrap(), vec!["a", "b"]);
        assert!(split_path("a..b").is_err());
        let mut out = Vec::new();
        for v in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN] {
            out.clear();
            varint::write_zigzag(&mut out, v);
            let mut pos = 0;
            assert_eq!(varint::read_zigzag(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
            assert_eq!(
                varint::unsigned_len(((v << 1) ^ (v >> 63)) as u64),
                out.len()
            );
        }
    }
}
