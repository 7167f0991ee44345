//! Decodes a serialized `google.protobuf.FileDescriptorProto` (the form confluent-kafka's Python
//! serializer registers, base64-encoded) into the same raw form the `.proto` text parser gives:
//! the package, messages (nested, map entries marked), enums and fields with their type names.

use super::{qualify, Message, Raw, RawField, FIELD_META_EXTENSION, META_TAGS_FIELD};
use crate::schema::varint::read_unsigned;
use crate::schema::MAX_DEPTH;

/// One field of a serialized message: number and payload.
enum Item<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a serialized message, in order.
fn items(b: &[u8]) -> Result<Vec<(u64, Item<'_>)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let tag = read_unsigned(b, &mut pos).ok_or("descriptor: bad tag")?;
        let item = match tag & 7 {
            0 => Item::Varint(read_unsigned(b, &mut pos).ok_or("descriptor: bad varint")?),
            1 | 5 => {
                pos += if tag & 7 == 1 { 8 } else { 4 };
                Item::Fixed
            }
            2 => {
                let n = read_unsigned(b, &mut pos).ok_or("descriptor: bad length")? as usize;
                let v = b
                    .get(pos..pos.checked_add(n).ok_or("descriptor: bad length")?)
                    .ok_or("descriptor: truncated")?;
                pos += n;
                Item::Bytes(v)
            }
            w => return Err(format!("descriptor: wire type {w} not expected")),
        };
        if pos > b.len() {
            return Err("descriptor: truncated".into());
        }
        out.push((tag >> 3, item));
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "descriptor: a name is not UTF-8".into())
}

/// `FieldDescriptorProto.type` to the scalar name the resolver knows (`None`: message or enum,
/// named by `type_name`).
fn scalar_name(t: u64) -> Result<Option<&'static str>, String> {
    Ok(Some(match t {
        1 => "double",
        2 => "float",
        3 => "int64",
        4 => "uint64",
        5 => "int32",
        6 => "fixed64",
        7 => "fixed32",
        8 => "bool",
        9 => "string",
        12 => "bytes",
        13 => "uint32",
        15 => "sfixed32",
        16 => "sfixed64",
        17 => "sint32",
        18 => "sint64",
        11 | 14 => return Ok(None),
        10 => return Err("proto2 groups are not supported".into()),
        other => return Err(format!("descriptor: unknown field type {other}")),
    }))
}

/// Decodes a `FileDescriptorProto`.
pub(super) fn decode(b: &[u8]) -> Result<Raw, String> {
    let mut raw = Raw::default();
    let mut package = String::new();
    let file = items(b)?;
    for (n, it) in &file {
        if let (2, Item::Bytes(v)) = (n, it) {
            package = text(v)?;
        }
    }
    for (n, it) in &file {
        match (n, it) {
            (4, Item::Bytes(v)) => {
                let i = message(&mut raw, &package, v, 0)?;
                raw.top.push(i);
            }
            (5, Item::Bytes(v)) => enum_name(&mut raw, &package, v)?,
            _ => {}
        }
    }
    Ok(raw)
}

fn enum_name(raw: &mut Raw, scope: &str, b: &[u8]) -> Result<(), String> {
    for (n, it) in items(b)? {
        if let (1, Item::Bytes(v)) = (n, it) {
            raw.enums.push(qualify(scope, &text(v)?));
        }
    }
    Ok(())
}

fn message(raw: &mut Raw, scope: &str, b: &[u8], depth: usize) -> Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err("messages nested deeper than 64 levels".into());
    }
    let its = items(b)?;
    let name = its
        .iter()
        .find_map(|(n, it)| match (n, it) {
            (1, Item::Bytes(v)) => Some(text(v)),
            _ => None,
        })
        .ok_or("descriptor: message without a name")??;
    let full = qualify(scope, &name);
    raw.messages.push(Message {
        full_name: full.clone(),
        ..Default::default()
    });
    let me = raw.messages.len() - 1;
    for (n, it) in &its {
        let Item::Bytes(v) = it else { continue };
        match n {
            2 => field(raw, me, v)?,
            3 => {
                let nested = message(raw, &full, v, depth + 1)?;
                raw.messages[me].nested.push(nested);
            }
            4 => enum_name(raw, &full, v)?,
            7 => {
                for (o, x) in items(v)? {
                    if let (7, Item::Varint(1)) = (o, x) {
                        raw.messages[me].map_entry = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(me)
}

fn field(raw: &mut Raw, msg: usize, b: &[u8]) -> Result<(), String> {
    let (mut name, mut number, mut ty, mut type_name) = (None, None, None, None);
    let mut tags = Vec::new();
    for (n, it) in items(b)? {
        match (n, it) {
            (1, Item::Bytes(v)) => name = Some(text(v)?),
            (3, Item::Varint(v)) => number = Some(v),
            (5, Item::Varint(v)) => ty = Some(v),
            (6, Item::Bytes(v)) => type_name = Some(text(v)?),
            // FieldOptions: `(confluent.field_meta)` is a `confluent.Meta` whose field 3 is
            // `repeated string tags`.
            (8, Item::Bytes(options)) => {
                for (o, meta) in items(options)? {
                    let (FIELD_META_EXTENSION, Item::Bytes(meta)) = (o, meta) else {
                        continue;
                    };
                    for (m, tag) in items(meta)? {
                        if let (META_TAGS_FIELD, Item::Bytes(tag)) = (m, tag) {
                            tags.push(text(tag)?);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or("descriptor: field without a name")?;
    let number = number.ok_or_else(|| format!("descriptor: field `{name}` without a number"))?;
    let type_name = match ty.map(scalar_name).transpose()?.flatten() {
        Some(s) => s.to_owned(),
        None => type_name.ok_or_else(|| format!("descriptor: field `{name}` without a type"))?,
    };
    raw.fields.push(RawField {
        msg,
        name,
        number,
        type_name,
        map: false,
        tags,
    });
    Ok(())
}
