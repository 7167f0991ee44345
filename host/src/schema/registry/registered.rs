//! A registered schema parsed for walking ([`RegisteredSchema`]): its format, its references,
//! the field listing policies see and the selections resolved against it.

use std::sync::Arc;

use parking_lot::Mutex;

use super::super::{avro, json_schema, protobuf, SchemaError, SchemaListing};
use super::RegistryError;
use crate::plan::FieldSelection;

/// The schema language of a registered schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFormat {
    /// Apache Avro (`schemaType` absent or `AVRO`).
    Avro,
    /// Protocol Buffers (`PROTOBUF`).
    Protobuf,
    /// JSON Schema (`JSON`).
    Json,
}

/// A writer schema parsed for walking.
enum Parsed {
    Avro(Arc<avro::AvroSchema>),
    Json(json_schema::JsonSchema),
    Protobuf(Arc<protobuf::ProtoSchema>),
}

/// A selection resolved against one schema: what the walker looks for.
pub enum Compiled {
    /// Avro targets.
    Avro(avro::Targets),
    /// JSON pointers and names.
    Json(json_schema::Targets),
    /// Protobuf targets.
    Protobuf(protobuf::Targets),
}

/// Most subject versions kept per schema id (`registered_as`).
pub const MAX_SUBJECTS: usize = 64;

/// Most schemas a schema may reference, directly and through their own references.
pub const MAX_REFERENCES: usize = 32;

/// A schema another one references, as fetched (dependencies before their dependents).
#[derive(Debug, Clone)]
pub struct ReferencedSchema {
    /// The reference's `name`: an Avro full type name, a Protobuf import path, the URI a JSON
    /// Schema `$ref` names it by.
    pub name: String,
    /// Subject and version it was registered under (for messages).
    pub subject: String,
    /// Version under `subject`.
    pub version: i64,
    /// `schemaType` as the registry returned it (`None` for Avro).
    pub schema_type: Option<String>,
    /// Schema text.
    pub text: String,
}

/// Selections resolved per schema: a handful of rules at most.
const MAX_COMPILED_PER_SCHEMA: usize = 16;

/// One registered schema, parsed, with its resolved selections.
pub struct RegisteredSchema {
    /// Schema id.
    pub id: u32,
    /// Schema language.
    pub format: SchemaFormat,
    /// Every subject and version the schema is registered under, as the registry said
    /// (`GET /schemas/ids/{id}/versions`, at most [`MAX_SUBJECTS`]): one schema text registered
    /// under several subjects has one id. Empty when the registry did not say.
    pub registered_as: Vec<(String, u32)>,
    /// Bytes of schema text (references included) and of the field listing: what the schema
    /// counts against `cache_bytes`.
    pub(super) text_len: usize,
    parsed: Parsed,
    compiled: Mutex<Vec<(FieldSelection, Resolution)>>,
    /// Every field with its tags ([`RegisteredSchema::fields`]).
    listing: Arc<SchemaListing>,
}

/// A selection resolved against a schema, or why it does not fit.
type Resolution = Result<Arc<Compiled>, String>;

impl std::fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("id", &self.id)
            .field("format", &self.format)
            .field("text_len", &self.text_len)
            .finish()
    }
}

impl RegisteredSchema {
    /// Parses a schema as the registry returned it (`schemaType` as sent, `None` for Avro).
    pub fn parse(id: u32, schema_type: Option<&str>, text: &str) -> Result<Self, RegistryError> {
        Self::parse_with_references(id, schema_type, text, &[])
    }

    /// Parses a schema with the schemas it references (`references`, dependencies before their
    /// dependents, as [`SchemaRegistry`] fetches them): Avro named types and Protobuf messages
    /// and enums they define are known to `text`; a JSON Schema's `$ref`s may name them.
    pub fn parse_with_references(
        id: u32,
        schema_type: Option<&str>,
        text: &str,
        references: &[ReferencedSchema],
    ) -> Result<Self, RegistryError> {
        let unusable = |message: String| RegistryError::Unusable { id, message };
        let kind = schema_type.unwrap_or("AVRO");
        for r in references {
            let rk = r.schema_type.as_deref().unwrap_or("AVRO");
            if rk != kind {
                return Err(unusable(format!(
                    "a {kind} schema references `{}` (subject `{}` version {}), which is {rk}",
                    r.name, r.subject, r.version
                )));
            }
        }
        fn in_reference(id: u32, r: &ReferencedSchema) -> impl Fn(String) -> RegistryError + '_ {
            move |e: String| RegistryError::Unusable {
                id,
                message: format!(
                    "referenced schema `{}` (subject `{}` version {}): {e}",
                    r.name, r.subject, r.version
                ),
            }
        }
        let (format, parsed) = match kind {
            "AVRO" => {
                let mut parser = avro::Parser::default();
                for r in references {
                    parser.definitions(&r.text).map_err(in_reference(id, r))?;
                }
                (
                    SchemaFormat::Avro,
                    Parsed::Avro(Arc::new(parser.finish(text).map_err(unusable)?)),
                )
            }
            "JSON" => {
                let named: Vec<(&str, &str)> = references
                    .iter()
                    .map(|r| (r.name.as_str(), r.text.as_str()))
                    .collect();
                (
                    SchemaFormat::Json,
                    Parsed::Json(json_schema::JsonSchema::parse(text, &named).map_err(unusable)?),
                )
            }
            "PROTOBUF" => {
                let mut imports = Vec::with_capacity(references.len());
                for r in references {
                    imports
                        .push(protobuf::ProtoSchema::read(&r.text).map_err(in_reference(id, r))?);
                }
                (
                    SchemaFormat::Protobuf,
                    Parsed::Protobuf(Arc::new(
                        protobuf::ProtoSchema::parse_with_imports(text, imports)
                            .map_err(unusable)?,
                    )),
                )
            }
            other => return Err(unusable(format!("unknown schemaType `{other}`"))),
        };
        // Listed now, once per schema id, so its size counts against the cache's budget.
        let listing = Arc::new(match &parsed {
            Parsed::Avro(s) => s.list_fields(),
            Parsed::Json(s) => s.list_fields(),
            Parsed::Protobuf(s) => s.list_fields(),
        });
        Ok(Self {
            id,
            format,
            registered_as: Vec::new(),
            text_len: text.len()
                + references.iter().map(|r| r.text.len()).sum::<usize>()
                + listing.bytes(),
            parsed,
            compiled: Mutex::new(Vec::new()),
            listing,
        })
    }

    /// Every field path of the schema with its tags and kind (bounded, see
    /// [`SchemaListing`]), listed when the schema was parsed.
    pub fn fields(&self) -> &Arc<SchemaListing> {
        &self.listing
    }

    /// `selection` resolved against this schema, once per selection: a path that is not in the
    /// schema or a selected field that is not a string or bytes is an error naming the field.
    pub fn compiled(&self, selection: &FieldSelection) -> Result<Arc<Compiled>, SchemaError> {
        let selection_err = |message: String| SchemaError::Selection {
            id: self.id,
            message,
        };
        if let Some((_, r)) = self.compiled.lock().iter().find(|(s, _)| s == selection) {
            return r.clone().map_err(selection_err);
        }
        let r = match &self.parsed {
            Parsed::Avro(s) => avro::Targets::resolve(s, selection).map(Compiled::Avro),
            Parsed::Json(s) => json_schema::Targets::resolve(s, selection).map(Compiled::Json),
            Parsed::Protobuf(s) => protobuf::Targets::resolve(s, selection).map(Compiled::Protobuf),
        }
        .map(Arc::new);
        let mut cache = self.compiled.lock();
        if cache.len() >= MAX_COMPILED_PER_SCHEMA {
            cache.clear();
        }
        cache.push((selection.clone(), r.clone()));
        r.map_err(selection_err)
    }
}
