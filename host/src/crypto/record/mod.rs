//! Record-level encryption and decryption of whole batches: the API the proxy calls.
//!
//! - [`batch`]: [`RecordEncryptor`], the batch API (`encrypt_batch`, `prefetch`,
//!   `decrypt_batch`) with its key collection and metrics.
//! - `seal`: the encrypt side of one record (what to encrypt, then the sealed record).
//! - `open`: the decrypt side of one record (find the descriptor, verify and open).
//! - `stream`: a value's encrypted fields and its record tag as one AES-GCM stream (associated
//!   data revision 3), both ways.
//!
//! This file holds the vocabulary the three share: errors, options, statistics.

pub mod batch;
mod fields;
mod open;
mod seal;
mod stream;

use std::ops::Range;

use crate::crypto::primitives::{Dek, NONCE_LEN, TAG_LEN};
use crate::crypto::wire::{
    AadScheme, KeyIdError, RecordContext, TagValue, ValueEncryption, HEADER_KEY,
};
use crate::kafka::records::RecordBatch;
use crate::kms::KmsError;
use crate::plan::RevealParts;
use crate::schema::SchemaError;

pub use batch::RecordEncryptor;

/// How encrypted records are written (`record_format:` in the config): choices that trade
/// readability by older releases for speed. Readers read every form whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordFormat {
    /// Associated data revision of wholly encrypted values (docs/wire-format.md, "Associated
    /// data"): `3` (default) seals value and record tag in one AES-GCM call; `1` writes what
    /// releases before revision 3 for whole values (2026-12-07) can read, for a rolling upgrade
    /// until every reader runs this release or later.
    #[serde(default = "RecordFormat::latest_whole_value_revision")]
    pub whole_value_revision: u8,
}

impl Default for RecordFormat {
    fn default() -> Self {
        Self {
            whole_value_revision: Self::latest_whole_value_revision(),
        }
    }
}

impl RecordFormat {
    fn latest_whole_value_revision() -> u8 {
        3
    }

    /// Pushes a problem when a setting is out of range (`path` is this section's YAML path).
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if !matches!(self.whole_value_revision, 1 | 3) {
            problems.push(format!(
                "{path}.whole_value_revision: {} is not a revision Kapsule writes for whole \
                 values; use 3 (default) or 1 (readable by releases before 2026-12-07)",
                self.whole_value_revision
            ));
        }
    }

    /// The revision whole values are sealed under (a validated config gives 1 or 3).
    pub(crate) fn whole_value_scheme(&self) -> AadScheme {
        match self.whole_value_revision {
            1 => AadScheme::V1,
            _ => AadScheme::V3,
        }
    }
}

/// Why a produce batch was refused. The batch must then not be forwarded at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncryptError {
    /// A record's decision was [`crate::plan::RecordDecision::Reject`].
    #[error("record {index} rejected by policy: {message}")]
    Rejected {
        /// Index of the record in the batch.
        index: usize,
        /// The policy's message.
        message: String,
    },
    /// A record cannot be encrypted as planned.
    #[error("record {index} cannot be encrypted: {message}")]
    InvalidRecord {
        /// Index of the record in the batch.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A record already carries a `kapsule.enc` header (encrypted elsewhere, or forged) on a
    /// topic that does not accept pre-encrypted records.
    #[error(
        "record {index} already carries a '{HEADER_KEY}' header; this topic does not accept \
         pre-encrypted records (set accept_pre_encrypted on its rule or binding if it should)"
    )]
    PreEncrypted {
        /// Index of the record in the batch.
        index: usize,
    },
    /// The plan names a key id Kapsule never passes to a KMS (checked before any KMS call).
    #[error("record {index}: policy named key id {key_id:?}: {source}")]
    InvalidKeyId {
        /// Index of the record in the batch.
        index: usize,
        /// The refused id.
        key_id: String,
        /// What is wrong with it.
        source: KeyIdError,
    },
    /// The KMS failed (see [`KmsError::kind`]).
    #[error("{0}")]
    Kms(KmsError),
    /// A schema-encoded value cannot be field-encrypted: not in the wire format, schema not in
    /// the registry or registry unavailable (retriable), selection does not fit the schema, or
    /// body does not decode.
    #[error("record {index}: {source}")]
    Schema {
        /// Index of the record in the batch.
        index: usize,
        /// What failed.
        source: SchemaError,
    },
    /// The caller passed a decision list of the wrong length (a bug in the caller).
    #[error("internal error: {decisions} decisions for {records} records")]
    DecisionCount {
        /// Decisions passed.
        decisions: usize,
        /// Records in the batch.
        records: usize,
    },
}

impl EncryptError {
    /// The record of the batch that caused the error and why, when one did (a rejection, an
    /// unencryptable or pre-encrypted record, a refused key id, a schema-encoded value that does
    /// not fit its schema or rule).
    pub fn record(&self) -> Option<(usize, String)> {
        match self {
            Self::Rejected { index, message } | Self::InvalidRecord { index, message } => {
                Some((*index, message.clone()))
            }
            Self::PreEncrypted { index } => Some((
                *index,
                format!("already carries a '{HEADER_KEY}' header, which only Kapsule may write"),
            )),
            Self::InvalidKeyId {
                index,
                key_id,
                source,
            } => Some((*index, format!("policy named key id {key_id:?}: {source}"))),
            // A registry outage is the batch's (retriable), not one record's fault.
            Self::Schema { source, .. } if source.is_retriable() => None,
            Self::Schema { index, source } => Some((*index, source.to_string())),
            Self::Kms(_) | Self::DecisionCount { .. } => None,
        }
    }

    /// True when the producer should retry (the KMS was unavailable).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Kms(e) => e.is_retriable(),
            Self::Schema { source, .. } => source.is_retriable(),
            _ => false,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Schema { source, .. } if source.is_retriable() => "schema_registry_unavailable",
            Self::Schema { .. } => "schema",
            Self::Rejected { .. } => "rejected",
            Self::InvalidRecord { .. } => "invalid_record",
            Self::PreEncrypted { .. } => "pre_encrypted",
            Self::InvalidKeyId { .. } => "invalid_key_id",
            Self::Kms(e) if e.is_retriable() => "kms_transient",
            Self::Kms(_) => "kms_permanent",
            Self::DecisionCount { .. } => "internal",
        }
    }
}

/// Why a fetched batch could not be decrypted (only returned in [`DecryptFailure::Error`], or for
/// an unavailable KMS in any mode).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecryptError {
    /// The KMS failed for this record's DEK or record-key key.
    #[error("record {index}: {source}")]
    Kms {
        /// Index of the record in the batch.
        index: usize,
        /// The KMS failure.
        source: KmsError,
    },
    /// Authentication failed: the ciphertext, descriptor or binding was altered or moved.
    #[error("record {index} failed authentication: {message}")]
    Integrity {
        /// Index of the record in the batch.
        index: usize,
        /// Which part failed.
        message: String,
    },
    /// The descriptor or an encrypted part is structurally invalid.
    #[error("record {index} is malformed: {message}")]
    Malformed {
        /// Index of the record in the batch.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The descriptor names a KEK the topic does not allow (`require_encrypted` with the rule's
    /// key or the binding's `allowed_key_ids`): written by someone else, never sent to the KMS.
    #[error("record {index} names KEK {kek_id:?}, which this topic does not allow")]
    KeyNotAllowed {
        /// Index of the record in the batch.
        index: usize,
        /// The KEK id in the descriptor.
        kek_id: String,
    },
    /// A record without `kapsule.enc` on a topic that requires encryption (an injection).
    #[error("record {index} is not encrypted but the topic requires encryption")]
    NotEncrypted {
        /// Index of the record in the batch.
        index: usize,
    },
}

impl DecryptError {
    /// True when the consumer should retry (the KMS was unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Kms { source, .. } if source.is_retriable())
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Kms { source, .. } if source.is_retriable() => "kms_transient",
            Self::Kms { .. } => "kms_permanent",
            Self::Integrity { .. } => "integrity",
            Self::Malformed { .. } => "malformed",
            Self::KeyNotAllowed { .. } => "key_not_allowed",
            Self::NotEncrypted { .. } => "missing_header",
        }
    }
}

pub use crate::plan::DecryptFailure;

/// Which KEK ids a topic's stored descriptors may name (see [`DecryptOptions::allowed_kek`]).
pub type KekFilter<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// Options of [`RecordEncryptor::decrypt_batch`].
#[derive(Clone, Copy, Default)]
pub struct DecryptOptions<'a> {
    /// Handling of records that fail to decrypt (integrity, malformed, unknown or forbidden key).
    /// An unavailable KMS always fails the batch with a retriable error, whatever the mode, so
    /// consumers never skip records because of a KMS outage.
    pub on_failure: DecryptFailure,
    /// The topic should only hold encrypted records: a record without `kapsule.enc` is an
    /// injection. It fails the batch in [`DecryptFailure::Error`] and is dropped otherwise (never
    /// delivered as if it had been encrypted).
    pub require_encrypted: bool,
    /// When set, a descriptor naming a KEK id for which this returns `false` is a decrypt
    /// failure ([`DecryptError::KeyNotAllowed`], handled per `on_failure`) and its keys are never
    /// requested from the KMS.
    pub allowed_kek: Option<KekFilter<'a>>,
}

impl std::fmt::Debug for DecryptOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptOptions")
            .field("on_failure", &self.on_failure)
            .field("require_encrypted", &self.require_encrypted)
            .field("allowed_kek", &self.allowed_kek.map(|_| "filter"))
            .finish()
    }
}

impl DecryptOptions<'_> {
    fn kek_allowed(&self, kek_id: &str) -> bool {
        self.allowed_kek.is_none_or(|f| f(kek_id))
    }
}

/// Name of the header Kapsule adds to a record delivered with some encrypted parts withheld
/// ([`RevealScope::Parts`]): a JSON object naming the parts that are still ciphertext, e.g.
/// `{"json_fields":["/ssn"],"headers":["pii"]}` (members `key`, `value`, `json_fields`,
/// `schema_fields`, `headers`, each present only when something of that kind is withheld). Only Kapsule writes it:
/// a stored header of this name is dropped from every record Kapsule opens.
pub const WITHHELD_HEADER: &str = "kapsule.withheld";

/// Which encrypted parts of fetched records the client may see in clear: the record-level form
/// of a principal's [`crate::plan::Reveal`] (a `Deny` never reaches the batch API).
#[derive(Debug, Clone, Copy, Default)]
pub enum RevealScope<'a> {
    /// Decrypt every encrypted part and drop the descriptor (the default).
    #[default]
    All,
    /// Decrypt only these parts, each authenticated (and the record tag always) before it is
    /// delivered. A record with at least one part withheld loses its `kapsule.enc` header (its
    /// descriptor and tag bind the stored bytes, so it could never describe the delivered
    /// record) and gets a [`WITHHELD_HEADER`] instead; withheld parts are delivered exactly as
    /// stored and are not opened. A record whose every encrypted part is revealed is delivered
    /// as under [`RevealScope::All`].
    Parts(&'a RevealParts),
    /// Deliver encrypted records as stored, descriptor included, without any KMS call.
    /// Descriptors are still parsed, so malformed ones, KEKs the topic does not allow and (with
    /// `require_encrypted`) records without descriptor are handled per `on_failure` as usual.
    Ciphertext,
}

/// Counters of one [`RecordEncryptor::encrypt_batch`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncryptStats {
    /// Records that got a descriptor.
    pub records_encrypted: u64,
    /// Records passed in clear.
    pub records_passed: u64,
    /// Plaintext bytes encrypted.
    pub plaintext_bytes: u64,
}

/// Counters of one [`RecordEncryptor::decrypt_batch`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecryptStats {
    /// Records decrypted.
    pub records_decrypted: u64,
    /// Records without descriptor delivered as they are.
    pub records_plain: u64,
    /// Records that failed and were delivered still encrypted ([`DecryptFailure::Ciphertext`]).
    pub records_left_encrypted: u64,
    /// Records dropped ([`DecryptFailure::Skip`] or injections).
    pub records_dropped: u64,
    /// Encrypted records delivered without opening any part because the [`RevealScope`]
    /// reveals none of their parts (records with only some parts withheld count as decrypted).
    pub records_withheld: u64,
    /// Plaintext bytes recovered.
    pub plaintext_bytes: u64,
}

/// True when some record of `batch` carries a `kapsule.enc` header.
pub fn batch_has_encrypted_records(batch: &RecordBatch) -> bool {
    batch
        .records
        .iter()
        .any(|r| r.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes()))
}

/// Cheap pre-check on the raw, uncompressed records section of a batch: `false` guarantees that
/// no record carries a `kapsule.enc` header, so the batch can be forwarded byte for byte (when the
/// topic does not require encryption). `true` means "decode and look". Meaningless on compressed
/// bytes.
pub fn may_contain_encrypted(raw_records: &[u8]) -> bool {
    memchr::memmem::find(raw_records, HEADER_KEY.as_bytes()).is_some()
}

fn tag_value<'a>(mode: &ValueEncryption, wire_value: Option<&'a [u8]>) -> TagValue<'a> {
    match (mode, wire_value) {
        (ValueEncryption::Whole, _) => TagValue::Encrypted,
        (_, None) => TagValue::Null,
        (_, Some(v)) => TagValue::Bytes(v),
    }
}

/// The record tag of a record bound by `ctx` (docs/wire-format.md, "Record tag"), `nonce` the
/// one after its last part. `aad` is scratch space for its associated data (the record's parts
/// reuse one buffer).
fn record_tag(
    dek: &Dek,
    nonce: &[u8; NONCE_LEN],
    ctx: &RecordContext<'_>,
    value: TagValue<'_>,
    aad: &mut Vec<u8>,
) -> [u8; TAG_LEN] {
    reserve_aad(aad, ctx);
    let sealed = ctx.record_tag_input(value, aad);
    dek.tag(nonce, aad, sealed)
}

/// Gives the record's one AAD buffer, the first time it is needed, room for the associated
/// data of any part or record tag of a record bound by `ctx` (besides a revision 1 record tag's
/// value bytes): prefix, lengths, markers, topic, key, descriptor. A record that needs no AAD
/// (revision 3 fields without encrypted headers) allocates none.
fn reserve_aad(aad: &mut Vec<u8>, ctx: &RecordContext<'_>) {
    if aad.capacity() == 0 {
        aad.reserve_exact(
            96 + ctx.topic.len() + ctx.wire_key.map_or(0, <[u8]>::len) + ctx.descriptor.len(),
        );
    }
}

/// Replaces non-overlapping `spans` of `doc`.
fn splice(doc: &[u8], mut repl: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    repl.sort_by_key(|(r, _)| r.start);
    let extra: usize = repl.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(doc.len() + extra);
    let mut pos = 0;
    for (r, b) in repl {
        out.extend_from_slice(&doc[pos..r.start]);
        out.extend_from_slice(&b);
        pos = r.end;
    }
    out.extend_from_slice(&doc[pos..]);
    out
}

/// Test-only access to the deterministic core (golden vectors).
#[cfg(test)]
pub(crate) mod testing {
    use super::open::{find_descriptor, open_record, OpenFail};
    use super::seal::{prepare, seal_record, SealParams};
    use super::stream::ValueArena;
    use super::RevealScope;
    use crate::crypto::primitives::{Dek, RecordKeyCipher, NONCE_LEN};
    use crate::crypto::wire::AadScheme;
    use crate::kafka::records::Record;
    use crate::plan::EncryptionPlan;

    /// What a golden vector fixes besides the keys.
    pub struct Fixed {
        pub nonce_base: [u8; NONCE_LEN],
        pub record_id: [u8; 16],
        /// The revision written for a value with encrypted fields.
        pub fields_scheme: AadScheme,
        /// The revision written for a wholly encrypted value.
        pub whole_scheme: AadScheme,
    }

    /// Encrypts one record with fixed keys, nonce base and record id.
    pub fn seal(
        topic: &str,
        rec: &Record,
        plan: &EncryptionPlan,
        dek: &Dek,
        key_cipher: Option<&RecordKeyCipher>,
        fixed: Fixed,
    ) -> Result<Record, String> {
        let prep = prepare(rec, plan, None).map_err(|e| e.to_string())?;
        let mut siv = key_cipher.map(|c| (c.siv(), c.kek_version));
        let mut arena = ValueArena::empty();
        let sealed = seal_record(
            rec,
            prep,
            SealParams {
                topic,
                dek,
                nonce_base: fixed.nonce_base,
                record_id: fixed.record_id,
                key_cipher: siv.as_mut().map(|(s, v)| (s, *v)),
                fields_scheme: fixed.fields_scheme,
                whole_scheme: fixed.whole_scheme,
            },
            &mut arena,
        )
        .map_err(|e| e.to_string())?;
        Ok(sealed.complete(&arena.freeze()))
    }

    /// Decrypts one record with fixed keys.
    pub fn open(
        topic: &str,
        rec: &Record,
        dek: &Dek,
        key_cipher: Option<&RecordKeyCipher>,
    ) -> Result<Record, String> {
        open_revealing(topic, rec, dek, key_cipher, RevealScope::All)
    }

    /// Decrypts the parts of one record that `scope` reveals, with fixed keys.
    pub fn open_revealing(
        topic: &str,
        rec: &Record,
        dek: &Dek,
        key_cipher: Option<&RecordKeyCipher>,
        scope: RevealScope<'_>,
    ) -> Result<Record, String> {
        let (i, d) = find_descriptor(rec)
            .map_err(|e| e.to_string())?
            .ok_or("no descriptor")?;
        let mut siv = key_cipher.map(|c| c.siv());
        let mut arena = ValueArena::empty();
        let (opened, _) = open_record(topic, rec, i, &d, dek, siv.as_mut(), scope, &mut arena)
            .map_err(|f| match f {
                OpenFail::Integrity(m) | OpenFail::Malformed(m) => m,
            })?;
        Ok(opened.complete(&arena.freeze()))
    }
}

#[cfg(test)]
mod tests;
