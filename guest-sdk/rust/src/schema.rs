//! Schemas of schema-encoded records, through the `describe-schema` import: a schema's format,
//! subject and version, and every field path with its tags and kind, so a policy can choose
//! which fields [`Encrypt::schema_fields`](crate::Encrypt::schema_fields) encrypts.
//!
//! Kapsule fetches the schemas of a batch's schema ids from its registry before calling
//! `decide`; [`describe_schema`] only reads them and never waits on the network. It answers
//! during `decide` only, for the ids in [`RecordView::value_schema_id`](crate::RecordView) and
//! `key_schema_id`. Describing a schema copies its field list into the guest: ask once per id
//! and batch ([`Schemas`] keeps the answers).
//!
//! ```no_run
//! use kapsule_policy::schema::Schemas;
//! use kapsule_policy::{Decision, Encrypt, RecordView};
//!
//! /// Encrypts every string or bytes field whose path contains `email`.
//! fn decide(records: &[RecordView]) -> Vec<Decision> {
//!     let mut schemas = Schemas::new();
//!     records
//!         .iter()
//!         .map(|r| match r.value_schema_id.map(|id| schemas.describe(id)) {
//!             Some(Ok(schema)) => Decision::Encrypt(
//!                 Encrypt::new("kek-orders")
//!                     .schema_fields(schema.select(|f| f.path.contains("email"))),
//!             ),
//!             // Not in the wire format, or the schema could not be had: encrypt it all.
//!             _ => Decision::Encrypt(Encrypt::new("kek-orders").whole_value()),
//!         })
//!         .collect()
//! }
//! ```

use crate::__bindings::kapsule::policy::types as wit;
use crate::SchemaSelection;

/// The schema language of a registered schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaFormat {
    /// Apache Avro.
    Avro,
    /// Protocol Buffers.
    Protobuf,
    /// JSON Schema.
    Json,
}

/// What a schema field can hold, as far as field encryption is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// Text (Avro or Protobuf `string`, JSON Schema `type: string`; also nullable, or an array
    /// or map of them): encryptable, the ciphertext is written as text.
    Text,
    /// Raw bytes (Avro or Protobuf `bytes`; also nullable, or an array or map of them):
    /// encryptable, the ciphertext is written raw.
    Bytes,
    /// Anything else (numbers, enums, records, messages, unions of several types): selecting
    /// it refuses the record. Its own fields are listed under its path.
    Other,
}

/// One field of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaField {
    /// Dotted path as [`SchemaSelection::fields`] takes it, e.g. `customer.email`.
    pub path: String,
    /// The field's Confluent tags, e.g. `PII`.
    pub tags: Vec<String>,
    /// What the field can hold.
    pub kind: FieldKind,
}

impl SchemaField {
    /// True for text and bytes fields: the ones `schema-fields` can encrypt.
    pub fn is_encryptable(&self) -> bool {
        self.kind != FieldKind::Other
    }

    /// True when the field carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A registered schema as Kapsule describes it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaInfo {
    /// The schema language.
    pub format: SchemaFormat,
    /// The subject the schema is registered under (the batch topic's own subject when the schema is registered under it, else the first the registry lists), if the
    /// registry said.
    pub subject: Option<String>,
    /// Version under `subject`.
    pub version: Option<u32>,
    /// Every field, depth-first: records and messages are listed, then their fields below
    /// them.
    pub fields: Vec<SchemaField>,
    /// True when the schema has more fields than were listed (over 1024 fields, 256 KiB of
    /// paths and tags, or 64 levels deep).
    pub fields_truncated: bool,
}

impl SchemaInfo {
    /// The encryptable fields for which `choose` is true, as explicit paths. Fields of other
    /// kinds are never chosen, so the selection never refuses a record for its type.
    pub fn select(&self, choose: impl Fn(&SchemaField) -> bool) -> SchemaSelection {
        SchemaSelection::fields(
            self.fields
                .iter()
                .filter(|f| f.is_encryptable() && choose(f))
                .map(|f| f.path.clone()),
        )
    }
}

impl From<wit::SchemaInfo> for SchemaInfo {
    fn from(s: wit::SchemaInfo) -> Self {
        Self {
            format: match s.format {
                wit::SchemaFormat::Avro => SchemaFormat::Avro,
                wit::SchemaFormat::Protobuf => SchemaFormat::Protobuf,
                wit::SchemaFormat::Json => SchemaFormat::Json,
            },
            subject: s.subject,
            version: s.version,
            fields: s
                .fields
                .into_iter()
                .map(|f| SchemaField {
                    path: f.path,
                    tags: f.tags,
                    kind: match f.kind {
                        wit::FieldKind::Text => FieldKind::Text,
                        wit::FieldKind::Bytes => FieldKind::Bytes,
                        wit::FieldKind::Other => FieldKind::Other,
                    },
                })
                .collect(),
            fields_truncated: s.fields_truncated,
        }
    }
}

/// The schema with this id (a value or key schema id of the batch being decided), or why
/// Kapsule could not describe it: an id not in this batch, a call outside `decide`, no
/// registry configured, the registry unavailable or not knowing the id.
pub fn describe_schema(id: u32) -> Result<SchemaInfo, String> {
    crate::__bindings::describe_schema(id).map(Into::into)
}

/// The schemas described during one `decide` call, each asked of Kapsule once. Create one per
/// call: answers are valid for the batch they were asked for.
#[derive(Debug, Default)]
pub struct Schemas {
    described: Vec<(u32, Result<SchemaInfo, String>)>,
}

impl Schemas {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`describe_schema`], asked once per id.
    pub fn describe(&mut self, id: u32) -> Result<&SchemaInfo, &str> {
        let i = match self.described.iter().position(|(i, _)| *i == id) {
            Some(i) => i,
            None => {
                self.described.push((id, describe_schema(id)));
                self.described.len() - 1
            }
        };
        self.described[i].1.as_ref().map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_chooses_only_encryptable_fields() {
        let field = |path: &str, tags: &[&str], kind| SchemaField {
            path: path.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind,
        };
        let info = SchemaInfo {
            format: SchemaFormat::Avro,
            subject: Some("orders-value".into()),
            version: Some(3),
            fields: vec![
                field("email", &[], FieldKind::Text),
                field("customer", &[], FieldKind::Other),
                field("customer.email", &["PII"], FieldKind::Text),
                field("customer.email_count", &[], FieldKind::Other),
                field("photo", &["PII"], FieldKind::Bytes),
            ],
            fields_truncated: false,
        };
        assert_eq!(
            info.select(|f| f.path.contains("email")).fields,
            vec!["email", "customer.email"]
        );
        assert_eq!(
            info.select(|f| f.has_tag("PII")).fields,
            vec!["customer.email", "photo"]
        );
        assert!(info.select(|f| f.path == "customer").fields.is_empty());
    }
}
