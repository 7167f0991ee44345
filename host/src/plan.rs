//! The per-record encryption plan: the single input of the encryption stage.
//!
//! Plans are data, not code paths. Built-in config rules ([`crate::policy::rules`]) and Wasm policy
//! components ([`crate::policy`]) both produce these types; the encryption stage
//! ([`crate::crypto`]) consumes them and never asks where they came from.

use std::sync::Arc;

/// Which part of a record value to encrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    /// Leave the value in clear.
    None,
    /// Encrypt the whole value (null values, i.e. tombstones, stay null).
    Whole,
    /// Encrypt the JSON fields at these RFC 6901 pointers; the value stays valid JSON.
    JsonFields(Vec<String>),
    /// Encrypt these fields of a value in the Confluent Schema Registry wire format (Avro,
    /// Protobuf or JSON Schema, read with the writer schema from the registry); the value stays
    /// valid under its schema id (see [`crate::schema`]).
    SchemaFields(FieldSelection),
}

/// Which fields of a schema-encoded value to encrypt: the union of explicit paths and of fields
/// the schema tags. The same selection a built-in rule writes (`value: {schema: {fields: [..],
/// tags: [..]}}`) and a policy decision can carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldSelection {
    /// Dotted field paths from the top-level record or message, e.g. `customer.email`. Arrays,
    /// maps, unions and optional wrappers are stepped through: `orders.card` is the `card` field
    /// of every element of `orders`.
    pub fields: Vec<String>,
    /// Schema tags, e.g. `PII`: every field tagged with one of them (Avro and JSON Schema
    /// `confluent:tags`) is encrypted.
    pub tags: Vec<String>,
}

/// How to encrypt one record: under which key and which parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionPlan {
    /// KEK id in the KMS (already expanded: no `${topic}` left).
    pub key_id: String,
    /// Which part of the value to encrypt.
    pub value: ValuePart,
    /// Encrypt the record key deterministically (equal keys give equal ciphertext).
    pub record_key: bool,
    /// Names of headers whose values are encrypted (every header with that name).
    pub headers: Vec<String>,
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordDecision {
    /// Forward the record as it is.
    Pass,
    /// Encrypt the record as the plan says (shared: a batch's records usually share one plan,
    /// so deciding costs a reference count per record, not a copy).
    Encrypt(Arc<EncryptionPlan>),
    /// Refuse the record (and so its whole partition batch) with this message.
    Reject(String),
}

impl RecordDecision {
    /// Encrypt with `plan` (wraps it in the shared form).
    pub fn encrypt(plan: EncryptionPlan) -> Self {
        Self::Encrypt(Arc::new(plan))
    }
}

/// Which parts of a record a per-record policy needs to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// The record key.
    pub key: bool,
    /// The record value.
    pub value: bool,
    /// The record headers.
    pub headers: bool,
}

/// What a `per-record` policy's decision depends on, as its plan declares. With anything but
/// [`MemoKey::None`] the host asks the policy once per distinct value and reuses the answer for
/// every other record with that value (per topic and principal, until the module is replaced).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MemoKey {
    /// The decision may depend on anything the policy sees: every record is decided.
    #[default]
    None,
    /// Only on the value of the first header with this name (absent and null are values too).
    Header(String),
    /// Only on the whole record key (a null key is a value too).
    RecordKey,
    /// Only on the first `n` bytes of the record key (shorter keys: the whole key).
    KeyPrefix(u32),
    /// Only on the values of the first header with each of these names, together (absent and
    /// null are values too); two or more distinct names (one is [`MemoKey::Header`]).
    Headers(Vec<String>),
}

impl std::fmt::Display for MemoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoKey::None => f.write_str("none (every record is decided)"),
            MemoKey::Header(h) => write!(f, "header `{h}`"),
            MemoKey::RecordKey => f.write_str("record key"),
            MemoKey::KeyPrefix(n) => write!(f, "first {n} bytes of the record key"),
            MemoKey::Headers(names) => write!(f, "headers `{}`", names.join("`, `")),
        }
    }
}

impl TopicPlan {
    /// Encrypt every record with `plan` (wraps it in the shared form).
    pub fn encrypt_all(plan: EncryptionPlan) -> Self {
        Self::EncryptAll(Arc::new(plan))
    }

    /// The plan's decision repeated for `n` records. A `per-record` plan has no decision of its
    /// own (its records are decided by the policy's `decide`): it refuses them here, so a
    /// caller that skipped `decide` fails closed.
    pub fn repeated(&self, n: usize) -> Vec<RecordDecision> {
        let d = match self {
            TopicPlan::PassAll => RecordDecision::Pass,
            TopicPlan::PerRecord(_) => RecordDecision::Reject(
                "internal error: a per-record plan was not shown to its policy's decide".into(),
            ),
            TopicPlan::EncryptAll(p) => RecordDecision::Encrypt(p.clone()),
            TopicPlan::RejectAll(m) => RecordDecision::Reject(m.clone()),
        };
        vec![d; n]
    }
}

/// What a policy decided for a whole topic; computed once per topic and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPlan {
    /// Every record passes in clear.
    PassAll,
    /// Every record is encrypted with the same plan; no per-record call.
    EncryptAll(Arc<EncryptionPlan>),
    /// Each batch must be shown to the policy, with these parts of each record.
    PerRecord(Needs),
    /// Every record is refused with this message.
    RejectAll(String),
}

/// What one principal may read of a topic's encrypted records on Fetch: decided per (topic,
/// principal) by the topic's rule (`reveal_to`) or policy module (`reveal`), and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reveal {
    /// Decrypt every encrypted part (the default).
    All,
    /// Decrypt only these parts; every other encrypted part reaches the client as stored
    /// (ciphertext).
    Parts(RevealParts),
    /// Deliver records exactly as stored on the broker: ciphertext with their `kapsule.enc`
    /// descriptor.
    Ciphertext,
    /// Refuse the fetch of this topic's partitions (TOPIC_AUTHORIZATION_FAILED) with this message.
    Deny(String),
}

/// The encrypted parts one principal may see in clear under [`Reveal::Parts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevealParts {
    /// Decrypt the value: a wholly encrypted value, or every encrypted JSON field.
    pub value: bool,
    /// When `value` is false: decrypt only the encrypted JSON fields at these RFC 6901
    /// pointers; the other encrypted fields stay ciphertext.
    pub json_fields: Vec<String>,
    /// Decrypt the record key.
    pub record_key: bool,
    /// Decrypt the values of the encrypted headers with these names.
    pub headers: Vec<String>,
    /// When `value` is false: decrypt only the encrypted schema fields at these dotted paths
    /// (as the encrypting rule names them); the other encrypted schema fields stay ciphertext.
    pub schema_fields: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_plans_give_their_decision_and_per_record_fails_closed() {
        assert_eq!(
            TopicPlan::PassAll.repeated(2),
            vec![RecordDecision::Pass; 2]
        );
        assert!(TopicPlan::PerRecord(Needs::default())
            .repeated(3)
            .iter()
            .all(|d| matches!(d, RecordDecision::Reject(_))));
        assert!(TopicPlan::RejectAll("no".into()).repeated(0).is_empty());
    }
}

/// What a consumer receives for a record that cannot be decrypted (`on_decrypt_failure` of a
/// rule or binding; [`crate::crypto::record::DecryptOptions::on_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DecryptFailure {
    /// Fail the fetch for the partition with an error (default; the whole partition batch fails
    /// with the `DecryptError`).
    #[default]
    Error,
    /// Deliver the record as stored (ciphertext, with its `kapsule.enc` header).
    Ciphertext,
    /// Drop the record from the response.
    Skip,
}
