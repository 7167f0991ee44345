//! `describe-schema`: the schemas a `decide` call may ask about, fetched before the call.
//!
//! A guest call must never wait on the network (it runs on a blocking thread under a CPU
//! deadline, holding a pooled instance). So before `decide` runs for a module that imports
//! `describe-schema`, the async caller fetches the schemas of the batch's distinct schema ids
//! from the schema registry ([`prefetch`], each within the registry's `timeout_ms`, concurrently),
//! and the call carries them ([`BatchSchemas`]); the import only reads what was fetched. An id
//! that could not be had is an error the policy sees, with the registry's message.

use std::sync::Arc;

use super::answer::SCHEMA_IDS_DESCRIPTOR_LEN;
use super::bindings::kapsule::policy::types as wit;
use crate::schema::{ListedKind, RegisteredSchema, SchemaFormat, SchemaRegistry};

/// Most distinct schema ids fetched for one batch; further ids are errors for the policy.
pub(crate) const MAX_BATCH_SCHEMAS: usize = 64;

/// A schema id in `batch-view.schema-ids` that marks a value or key not in the wire format.
const ABSENT: u32 = u32::MAX;

/// A schema id with its schema, or why it could not be had.
type Fetched = (u32, Result<Arc<RegisteredSchema>, String>);

/// The schemas of one batch, and the topic it goes to. Empty outside `decide` (every id is then
/// an error).
#[derive(Clone, Default)]
pub(crate) struct BatchSchemas {
    fetched: Arc<Vec<Fetched>>,
    topic: Arc<str>,
}

impl BatchSchemas {
    fn new(fetched: Vec<Fetched>) -> Self {
        Self {
            fetched: Arc::new(fetched),
            topic: Arc::from(""),
        }
    }

    /// The same schemas described for a batch of `topic`: `subject` is then the topic's own
    /// subject (`<topic>-value`, `<topic>-key`, Confluent's default naming) when the schema is
    /// registered under it, since one schema text registered under several subjects has one
    /// id; else the first subject the registry lists.
    pub(crate) fn for_topic(mut self, topic: &str) -> Self {
        self.topic = Arc::from(topic);
        self
    }

    /// The answer of `describe-schema(id)`.
    pub(crate) fn describe(&self, id: u32) -> Result<wit::SchemaInfo, String> {
        let Some((_, found)) = self.fetched.iter().find(|(i, _)| *i == id) else {
            return Err(format!(
                "schema id {id} is not a value or key schema id of the batch being decided \
                 (describe-schema answers only during decide, for the ids in \
                 batch-view.schema-ids)"
            ));
        };
        let schema = found.as_ref().map_err(Clone::clone)?;
        let listing = schema.fields();
        let registered_as = |subject: String| {
            schema
                .registered_as
                .iter()
                .find(move |(s, _)| !self.topic.is_empty() && *s == subject)
        };
        let (subject, version) = match registered_as(format!("{}-value", self.topic))
            .or_else(|| registered_as(format!("{}-key", self.topic)))
            .or(schema.registered_as.first())
        {
            Some((s, v)) => (Some(s.clone()), Some(*v)),
            None => (None, None),
        };
        Ok(wit::SchemaInfo {
            format: match schema.format {
                SchemaFormat::Avro => wit::SchemaFormat::Avro,
                SchemaFormat::Protobuf => wit::SchemaFormat::Protobuf,
                SchemaFormat::Json => wit::SchemaFormat::Json,
            },
            subject,
            version,
            fields: listing
                .fields
                .iter()
                .map(|f| wit::SchemaField {
                    path: f.path.clone(),
                    tags: f.tags.clone(),
                    kind: match f.kind {
                        ListedKind::Text => wit::FieldKind::Text,
                        ListedKind::Bytes => wit::FieldKind::Bytes,
                        ListedKind::Other => wit::FieldKind::Other,
                    },
                })
                .collect(),
            fields_truncated: listing.truncated,
        })
    }
}

/// Distinct value and key schema ids of `batch`, in first-seen order.
pub(crate) fn distinct_ids(batch: &wit::BatchView) -> Vec<u32> {
    let mut ids = Vec::new();
    for word in batch.schema_ids.chunks_exact(SCHEMA_IDS_DESCRIPTOR_LEN / 2) {
        let id = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        if id != ABSENT && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Fetches the schemas of `ids` (at most [`MAX_BATCH_SCHEMAS`]) from `registry` concurrently,
/// from its cache when there, each within the registry's deadline. Never fails: what could not
/// be had is recorded as the error `describe-schema` returns.
pub(crate) async fn prefetch(registry: Option<&SchemaRegistry>, ids: &[u32]) -> BatchSchemas {
    let fetches = ids.iter().enumerate().map(|(n, &id)| async move {
        let got = match registry {
            _ if n >= MAX_BATCH_SCHEMAS => Err(format!(
                "schema id {id} not fetched: the batch has more than {MAX_BATCH_SCHEMAS} \
                 distinct schema ids"
            )),
            None => Err(format!(
                "schema id {id} cannot be described: Kapsule has no `schema_registry` configured"
            )),
            Some(r) => r.schema(id).await.map_err(|e| e.to_string()),
        };
        (id, got)
    });
    BatchSchemas::new(futures::future::join_all(fetches).await)
}

/// [`prefetch`] without waiting: the schemas of `ids` that `registry` has cached, for
/// synchronous callers (`policy check`, tests) that cannot wait on the registry.
pub(crate) fn from_cache(registry: Option<&SchemaRegistry>, ids: &[u32]) -> BatchSchemas {
    let found = ids.iter().take(MAX_BATCH_SCHEMAS).map(|&id| {
        let got = registry.and_then(|r| r.cached_schema(id)).ok_or_else(|| {
            format!(
                "schema id {id} is not cached and this synchronous decide does not fetch \
                     schemas (the proxy does)"
            )
        });
        (id, got)
    });
    BatchSchemas::new(found.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[u32]) -> wit::BatchView {
        wit::BatchView {
            data: Vec::new(),
            records: Vec::new(),
            headers: Vec::new(),
            schema_ids: ids.iter().flat_map(|i| i.to_le_bytes()).collect(),
        }
    }

    #[tokio::test]
    async fn describes_the_prefetched_schemas_of_the_batch_only() {
        let ids = distinct_ids(&batch(&[7, ABSENT, 7, 9, ABSENT, 8]));
        assert_eq!(ids, vec![7, 9, 8]);
        let registry = SchemaRegistry::unreachable_for_tests();
        registry.preload(
            RegisteredSchema::parse(
                7,
                None,
                r#"{"type": "record", "name": "R", "fields": [
                    {"name": "email", "type": "string", "confluent:tags": ["PII"]},
                    {"name": "n", "type": "long"}]}"#,
            )
            .unwrap(),
        );
        registry
            .preload(RegisteredSchema::parse(9, Some("JSON"), r#"{"type": "object"}"#).unwrap());
        let schemas = prefetch(Some(&registry), &ids).await;
        let info = schemas.describe(7).unwrap();
        assert_eq!(info.format, wit::SchemaFormat::Avro);
        assert_eq!((info.subject, info.version), (None, None));
        assert_eq!(
            info.fields,
            vec![
                wit::SchemaField {
                    path: "email".into(),
                    tags: vec!["PII".into()],
                    kind: wit::FieldKind::Text,
                },
                wit::SchemaField {
                    path: "n".into(),
                    tags: vec![],
                    kind: wit::FieldKind::Other,
                },
            ]
        );
        assert!(!info.fields_truncated);
        assert_eq!(schemas.describe(9).unwrap().format, wit::SchemaFormat::Json);
        let e = schemas.describe(8).unwrap_err();
        assert!(
            e.contains("schema registry unavailable fetching schema id 8"),
            "{e}"
        );
        let e = schemas.describe(5).unwrap_err();
        assert!(
            e.contains("not a value or key schema id of the batch"),
            "{e}"
        );
        let e = BatchSchemas::default().describe(7).unwrap_err();
        assert!(e.contains("answers only during decide"), "{e}");
        let e = prefetch(None, &[7]).await.describe(7).unwrap_err();
        assert!(e.contains("no `schema_registry` configured"), "{e}");
        let many: Vec<u32> = (0..MAX_BATCH_SCHEMAS as u32 + 1).collect();
        let e = prefetch(None, &many)
            .await
            .describe(MAX_BATCH_SCHEMAS as u32)
            .unwrap_err();
        assert!(e.contains("more than 64 distinct schema ids"), "{e}");
    }

    /// One schema text registered under several subjects has one id: the subject described is
    /// the batch's topic's own (`<topic>-value`, else `<topic>-key`), whatever order the
    /// registry lists them in; the first listed for another topic.
    #[tokio::test]
    async fn the_subject_described_is_the_topics_own_when_the_schema_has_several() {
        let registry = SchemaRegistry::unreachable_for_tests();
        let mut schema = RegisteredSchema::parse(
            4,
            None,
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}"#,
        )
        .unwrap();
        schema.registered_as = vec![
            ("payments-value".into(), 3),
            ("orders-key".into(), 2),
            ("orders-value".into(), 1),
        ];
        registry.preload(schema);
        let fetched = prefetch(Some(&registry), &[4]).await;
        let subject = |topic: &str| {
            let info = fetched.clone().for_topic(topic).describe(4).unwrap();
            (info.subject.unwrap(), info.version.unwrap())
        };
        assert_eq!(subject("orders"), ("orders-value".into(), 1));
        assert_eq!(subject("payments"), ("payments-value".into(), 3));
        assert_eq!(subject("audit"), ("payments-value".into(), 3));
    }
}
