//! Record-level encryption and decryption of whole batches: the API the proxy calls.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aes_siv::siv::Aes256Siv;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use rand::RngCore;

use crate::crypto::json::{find_spans, parse_pointer, JsonError};
use crate::crypto::metrics::CryptoMetrics;
use crate::crypto::primitives::{nonce_at, siv_open, siv_seal, Dek, RecordKeyCipher, NONCE_LEN};
use crate::crypto::wire::{
    key_aad, part_aad, record_aad, split_header, validate_key_id, Descriptor, KeyIdError, PartKind,
    TagValue, ValueEncryption, WireError, HEADER_KEY, JSON_PREFIX,
};
use crate::kafka::records::{Record, RecordBatch, RecordHeader};
use crate::kms::{DekConfig, DekManager, Kms, KmsError};
use crate::plan::{EncryptionPlan, RecordDecision, ValuePart};

/// Why a produce batch was refused. The batch must then not be forwarded at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncryptError {
    /// A record's decision was [`RecordDecision::Reject`].
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
    /// True when the producer should retry (the KMS was unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Kms(e) if e.is_retriable())
    }

    fn reason(&self) -> &'static str {
        match self {
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

/// Why a fetched batch could not be decrypted (only returned in [`FailureMode::Error`], or for
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

/// What to do with a fetched record that cannot be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Fail the whole partition batch with [`DecryptError`] (default).
    #[default]
    Error,
    /// Deliver the record still encrypted (with its `kapsule.enc` header).
    Ciphertext,
    /// Drop the record from the batch.
    Skip,
}

/// Which KEK ids a topic's stored descriptors may name (see [`DecryptOptions::allowed_kek`]).
pub type KekFilter<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// Options of [`RecordEncryptor::decrypt_batch`].
#[derive(Clone, Copy, Default)]
pub struct DecryptOptions<'a> {
    /// Handling of records that fail to decrypt (integrity, malformed, unknown or forbidden key).
    /// An unavailable KMS always fails the batch with a retriable error, whatever the mode, so
    /// consumers never skip records because of a KMS outage.
    pub on_failure: FailureMode,
    /// The topic should only hold encrypted records: a record without `kapsule.enc` is an
    /// injection. It fails the batch in [`FailureMode::Error`] and is dropped otherwise (never
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
    /// Records that failed and were delivered still encrypted ([`FailureMode::Ciphertext`]).
    pub records_left_encrypted: u64,
    /// Records dropped ([`FailureMode::Skip`] or injections).
    pub records_dropped: u64,
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

/// What of one record will be encrypted, found before any key is fetched.
struct Prepared {
    key: bool,
    value_whole: bool,
    /// (pointer, span in the value), in plan order.
    fields: Vec<(String, Range<usize>)>,
    /// Indices of headers whose values are encrypted.
    headers: Vec<usize>,
    bytes: u64,
}

impl Prepared {
    /// AES-GCM invocations: value parts, header parts, and the record tag.
    fn parts(&self) -> u64 {
        u64::from(self.value_whole) + self.fields.len() as u64 + self.headers.len() as u64 + 1
    }
}

/// Why one record cannot be sealed as planned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealFail {
    /// The record already carries a descriptor.
    #[error("it already carries a '{HEADER_KEY}' header (already encrypted, or forged)")]
    PreEncrypted,
    /// The value is not JSON, or a pointer is invalid.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The descriptor cannot be encoded (a field too long).
    #[error(transparent)]
    Descriptor(#[from] WireError),
    /// More parts than the nonce counter allows.
    #[error("nonce counter overflow")]
    NonceOverflow,
    /// The plan encrypts the key but no record-key cipher was given (a bug in the caller).
    #[error("record-key cipher missing")]
    KeyCipherMissing,
}

fn prepare(rec: &Record, plan: &EncryptionPlan) -> Result<Prepared, SealFail> {
    if rec.headers.iter().any(|h| h.key == HEADER_KEY.as_bytes()) {
        return Err(SealFail::PreEncrypted);
    }
    let mut bytes = 0u64;
    let key = plan.record_key && rec.key.is_some();
    if key {
        bytes += rec.key.as_ref().map_or(0, |k| k.len() as u64);
    }
    let mut value_whole = false;
    let mut fields = Vec::new();
    match (&plan.value, &rec.value) {
        (_, None) | (ValuePart::None, _) => {}
        (ValuePart::Whole, Some(v)) => {
            value_whole = true;
            bytes += v.len() as u64;
        }
        (ValuePart::JsonFields(ptrs), Some(v)) => {
            let mut seen = HashSet::new();
            let names: Vec<String> = ptrs.iter().filter(|p| seen.insert(*p)).cloned().collect();
            let targets = names
                .iter()
                .map(|p| parse_pointer(p))
                .collect::<Result<Vec<_>, JsonError>>()?;
            let spans = find_spans(v, &targets, &names)?;
            for (name, span) in names.into_iter().zip(spans) {
                if let Some(s) = span {
                    bytes += s.len() as u64;
                    fields.push((name, s));
                }
            }
        }
    }
    let mut headers = Vec::new();
    for (i, h) in rec.headers.iter().enumerate() {
        if let Some(v) = &h.value {
            if plan.headers.iter().any(|n| n.as_bytes() == h.key.as_ref()) {
                bytes += v.len() as u64;
                headers.push(i);
            }
        }
    }
    Ok(Prepared {
        key,
        value_whole,
        fields,
        headers,
        bytes,
    })
}

/// Everything that makes encryption of one record deterministic (fixed in golden tests).
pub(crate) struct SealParams<'a> {
    pub topic: &'a str,
    pub dek: &'a Dek,
    pub nonce_base: [u8; NONCE_LEN],
    pub record_id: [u8; 16],
    /// AES-SIV cipher and KEK version for the record key, when the plan encrypts it.
    pub key_cipher: Option<(&'a mut Aes256Siv, u32)>,
}

/// Encrypts `rec` as `prep` says; pure given `p`.
fn seal_record(rec: &Record, prep: &Prepared, p: SealParams<'_>) -> Result<Record, SealFail> {
    let kek_id: &str = &p.dek.kek_id;
    let (new_key, key_version) = match (prep.key, p.key_cipher, &rec.key) {
        (true, Some((siv, ver)), Some(k)) => (
            Some(Bytes::from(siv_seal(
                siv,
                &key_aad(p.topic, kek_id, ver),
                k,
            ))),
            ver,
        ),
        (true, _, _) => return Err(SealFail::KeyCipherMissing),
        (false, _, k) => (k.clone(), 0),
    };
    let desc = Descriptor {
        value: if prep.value_whole {
            ValueEncryption::Whole
        } else if !prep.fields.is_empty() {
            ValueEncryption::Json(prep.fields.iter().map(|(n, _)| n.clone()).collect())
        } else {
            ValueEncryption::None
        },
        key_encrypted: prep.key,
        record_id: p.record_id,
        nonce_base: p.nonce_base,
        key_kek_version: key_version,
        kek_id: kek_id.to_owned(),
        edek: p.dek.edek.to_vec(),
        headers: prep
            .headers
            .iter()
            .map(|&i| rec.headers[i].key.to_vec())
            .collect(),
    };
    let desc_bytes = desc.encode()?;
    let wk = new_key.as_deref();
    let seal = |kind: PartKind, index: u32, name: &[u8], pt: &[u8]| -> Result<Vec<u8>, SealFail> {
        let nonce = nonce_at(&p.nonce_base, index).ok_or(SealFail::NonceOverflow)?;
        Ok(p.dek.seal(
            &nonce,
            &part_aad(p.topic, kind, index, name, wk, &desc_bytes),
            pt,
        ))
    };
    let new_value = match &rec.value {
        Some(v) if prep.value_whole => Some(Bytes::from(seal(PartKind::Value, 0, b"", v)?)),
        Some(v) if !prep.fields.is_empty() => {
            let mut repl: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(prep.fields.len());
            for (i, (name, span)) in prep.fields.iter().enumerate() {
                let ct = seal(
                    PartKind::JsonField,
                    i as u32,
                    name.as_bytes(),
                    &v[span.clone()],
                )?;
                let mut s = Vec::with_capacity(JSON_PREFIX.len() + ct.len() * 4 / 3 + 6);
                s.push(b'"');
                s.extend_from_slice(JSON_PREFIX.as_bytes());
                s.extend_from_slice(B64.encode(&ct).as_bytes());
                s.push(b'"');
                repl.push((span.clone(), s));
            }
            Some(Bytes::from(splice(v, repl)))
        }
        other => other.clone(),
    };
    let base = desc.value_parts();
    let mut headers = rec.headers.clone();
    for (j, &i) in prep.headers.iter().enumerate() {
        let h = &mut headers[i];
        let pt = h.value.as_ref().expect("prepared headers are non-null");
        let ct = seal(PartKind::Header, base + j as u32, &h.key, pt)?;
        h.value = Some(Bytes::from(ct));
    }
    let tag_index = base + prep.headers.len() as u32;
    let tag_nonce = nonce_at(&p.nonce_base, tag_index).ok_or(SealFail::NonceOverflow)?;
    let tag = p.dek.seal(
        &tag_nonce,
        &record_aad(
            p.topic,
            wk,
            tag_value(&desc.value, new_value.as_deref()),
            &desc_bytes,
        ),
        b"",
    );
    let mut header_value = desc_bytes;
    header_value.extend_from_slice(&tag);
    headers.push(RecordHeader {
        key: Bytes::from_static(HEADER_KEY.as_bytes()),
        value: Some(Bytes::from(header_value)),
    });
    Ok(Record {
        attributes: rec.attributes,
        timestamp_delta: rec.timestamp_delta,
        offset_delta: rec.offset_delta,
        key: new_key,
        value: new_value,
        headers,
    })
}

fn tag_value<'a>(mode: &ValueEncryption, wire_value: Option<&'a [u8]>) -> TagValue<'a> {
    match (mode, wire_value) {
        (ValueEncryption::Whole, _) => TagValue::Encrypted,
        (_, None) => TagValue::Null,
        (_, Some(v)) => TagValue::Bytes(v),
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

/// A failure to open one record, before it is given its index.
enum OpenFail {
    Integrity(String),
    Malformed(String),
}

/// Decrypts `rec` whose descriptor (header at `desc_idx`) is `desc`; pure given the keys.
fn open_record(
    topic: &str,
    rec: &Record,
    desc_idx: usize,
    desc: &Descriptor,
    dek: &Dek,
    key_cipher: Option<&mut Aes256Siv>,
) -> Result<(Record, u64), OpenFail> {
    let header_value = rec.headers[desc_idx]
        .value
        .as_deref()
        .ok_or_else(|| OpenFail::Malformed("null kapsule.enc header".into()))?;
    let (desc_bytes, tag) =
        split_header(header_value).map_err(|e| OpenFail::Malformed(e.to_string()))?;
    let wk = rec.key.as_deref();
    // The record tag first: it covers the whole record body and the descriptor.
    let tag_index = desc
        .value_parts()
        .checked_add(desc.headers.len() as u32)
        .ok_or_else(|| OpenFail::Malformed("too many parts".into()))?;
    let tag_nonce = nonce_at(&desc.nonce_base, tag_index)
        .ok_or_else(|| OpenFail::Malformed("nonce counter overflow".into()))?;
    if dek
        .open(
            &tag_nonce,
            &record_aad(
                topic,
                wk,
                tag_value(&desc.value, rec.value.as_deref()),
                desc_bytes,
            ),
            tag,
        )
        .is_none()
    {
        return Err(OpenFail::Integrity(
            "record tag does not authenticate (record body or descriptor altered, moved or forged)"
                .into(),
        ));
    }
    let mut bytes = 0u64;
    let open = |kind: PartKind, index: u32, name: &[u8], ct: &[u8]| -> Result<Vec<u8>, OpenFail> {
        let nonce = nonce_at(&desc.nonce_base, index)
            .ok_or_else(|| OpenFail::Malformed("nonce counter overflow".into()))?;
        dek.open(&nonce, &part_aad(topic, kind, index, name, wk, desc_bytes), ct)
            .ok_or_else(|| {
                let what = match kind {
                    PartKind::Value => "value".to_owned(),
                    PartKind::JsonField => {
                        format!("JSON field {}", String::from_utf8_lossy(name))
                    }
                    PartKind::Header => format!("header {}", String::from_utf8_lossy(name)),
                };
                OpenFail::Integrity(format!(
                    "{what} does not authenticate (moved from another topic, record or part, or altered)"
                ))
            })
    };
    let new_key = if desc.key_encrypted {
        let (Some(k), Some(siv)) = (&rec.key, key_cipher) else {
            return Err(OpenFail::Malformed(
                "descriptor says the key is encrypted but it is null".into(),
            ));
        };
        let pt = siv_open(siv, &key_aad(topic, &desc.kek_id, desc.key_kek_version), k)
            .ok_or_else(|| OpenFail::Integrity("record key does not authenticate".into()))?;
        bytes += pt.len() as u64;
        Some(Bytes::from(pt))
    } else {
        rec.key.clone()
    };
    let new_value = match (&desc.value, &rec.value) {
        (ValueEncryption::None, v) => v.clone(),
        (_, None) => {
            return Err(OpenFail::Integrity(
                "encrypted value was replaced by null".into(),
            ));
        }
        (ValueEncryption::Whole, Some(v)) => {
            let pt = open(PartKind::Value, 0, b"", v)?;
            bytes += pt.len() as u64;
            Some(Bytes::from(pt))
        }
        (ValueEncryption::Json(ptrs), Some(v)) => {
            let targets = ptrs
                .iter()
                .map(|p| parse_pointer(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OpenFail::Malformed(e.to_string()))?;
            let spans =
                find_spans(v, &targets, ptrs).map_err(|e| OpenFail::Malformed(e.to_string()))?;
            let mut repl = Vec::with_capacity(ptrs.len());
            for (i, (name, span)) in ptrs.iter().zip(spans).enumerate() {
                let span = span.ok_or_else(|| {
                    OpenFail::Integrity(format!("encrypted JSON field {name} was removed"))
                })?;
                let raw = &v[span.clone()];
                let inner = raw
                    .strip_prefix(b"\"")
                    .and_then(|r| r.strip_suffix(b"\""))
                    .and_then(|r| r.strip_prefix(JSON_PREFIX.as_bytes()))
                    .ok_or_else(|| {
                        OpenFail::Malformed(format!("JSON field {name} is not a kapsule:v1 string"))
                    })?;
                let ct = B64.decode(inner).map_err(|_| {
                    OpenFail::Malformed(format!("JSON field {name}: invalid base64"))
                })?;
                let pt = open(PartKind::JsonField, i as u32, name.as_bytes(), &ct)?;
                bytes += pt.len() as u64;
                repl.push((span, pt));
            }
            Some(Bytes::from(splice(v, repl)))
        }
    };
    let base = desc.value_parts();
    let mut headers = Vec::with_capacity(rec.headers.len().saturating_sub(1));
    let mut j = 0usize;
    for (i, h) in rec.headers.iter().enumerate() {
        if i == desc_idx {
            continue;
        }
        let mut h = h.clone();
        if let Some(v) = &h.value {
            // Encrypted header names are few (usually none): a scan beats hashing.
            if desc.headers.iter().any(|n| n.as_slice() == h.key.as_ref()) {
                if desc.headers.get(j).map(Vec::as_slice) != Some(h.key.as_ref()) {
                    return Err(OpenFail::Integrity(
                        "encrypted headers were added, removed or reordered".into(),
                    ));
                }
                let pt = open(PartKind::Header, base + j as u32, &h.key, v)?;
                bytes += pt.len() as u64;
                h.value = Some(Bytes::from(pt));
                j += 1;
            }
        }
        headers.push(h);
    }
    if j != desc.headers.len() {
        return Err(OpenFail::Integrity(
            "encrypted headers were removed or nulled".into(),
        ));
    }
    Ok((
        Record {
            attributes: rec.attributes,
            timestamp_delta: rec.timestamp_delta,
            offset_delta: rec.offset_delta,
            key: new_key,
            value: new_value,
            headers,
        },
        bytes,
    ))
}

/// Finds the one descriptor header of `rec`: `Ok(None)` when absent.
fn find_descriptor(rec: &Record) -> Result<Option<(usize, Descriptor)>, String> {
    let mut found = None;
    for (i, h) in rec.headers.iter().enumerate() {
        if h.key == HEADER_KEY.as_bytes() {
            if found.is_some() {
                return Err(format!("more than one '{HEADER_KEY}' header"));
            }
            let v = h.value.as_deref().ok_or("null kapsule.enc header")?;
            let (d, _) = split_header(v).map_err(|e| e.to_string())?;
            found = Some((i, Descriptor::decode(d).map_err(|e| e.to_string())?));
        }
    }
    Ok(found)
}

fn seal_error(index: usize, f: SealFail) -> EncryptError {
    match f {
        SealFail::PreEncrypted => EncryptError::PreEncrypted { index },
        other => EncryptError::InvalidRecord {
            index,
            message: other.to_string(),
        },
    }
}

/// Encrypts and decrypts record batches for the proxy. Cheap to share (`Arc`); one per process.
#[derive(Debug)]
pub struct RecordEncryptor {
    deks: Arc<DekManager>,
    metrics: Arc<CryptoMetrics>,
}

impl RecordEncryptor {
    /// An encryptor over `kms` with DEK policy `cfg` (no KMS call until first use).
    pub fn new(kms: Arc<dyn Kms>, cfg: DekConfig) -> Self {
        let metrics = Arc::new(CryptoMetrics::default());
        Self {
            deks: Arc::new(DekManager::new(kms, cfg, metrics.clone())),
            metrics,
        }
    }

    /// The metrics (render with [`CryptoMetrics::render_prometheus`]).
    pub fn metrics(&self) -> &Arc<CryptoMetrics> {
        &self.metrics
    }

    /// The DEK manager (diagnostics).
    pub fn deks(&self) -> &Arc<DekManager> {
        &self.deks
    }

    /// Encrypts `batch` in place as `decisions` say (one per record, in order).
    ///
    /// All or nothing: on any error (a [`RecordDecision::Reject`], an unencryptable record, a
    /// KMS failure) `batch` is left untouched and the caller must refuse the whole partition
    /// batch with [`EncryptError::kafka_error_code`]; it must never be forwarded. Waits for the
    /// KMS only when no DEK is cached for a (KEK, topic) pair.
    pub async fn encrypt_batch(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        decisions: &[RecordDecision],
    ) -> Result<EncryptStats, EncryptError> {
        let r = self.encrypt_inner(topic, batch, decisions).await;
        match &r {
            Ok(s) => {
                let t = self.metrics.topic(topic);
                t.records_encrypted
                    .fetch_add(s.records_encrypted, Ordering::Relaxed);
                t.bytes_encrypted
                    .fetch_add(s.plaintext_bytes, Ordering::Relaxed);
            }
            Err(e) => self.metrics.encrypt_failure(topic, e.reason()),
        }
        r
    }

    async fn encrypt_inner(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        decisions: &[RecordDecision],
    ) -> Result<EncryptStats, EncryptError> {
        if decisions.len() != batch.records.len() {
            return Err(EncryptError::DecisionCount {
                decisions: decisions.len(),
                records: batch.records.len(),
            });
        }
        // Reject before any KMS call.
        for (index, d) in decisions.iter().enumerate() {
            if let RecordDecision::Reject(message) = d {
                return Err(EncryptError::Rejected {
                    index,
                    message: message.clone(),
                });
            }
        }
        let mut stats = EncryptStats::default();
        let mut sivs: HashMap<String, (Arc<RecordKeyCipher>, Aes256Siv)> = HashMap::new();
        let mut out = Vec::with_capacity(batch.records.len());
        for (index, (rec, d)) in batch.records.iter().zip(decisions).enumerate() {
            let plan = match d {
                RecordDecision::Encrypt(plan) => plan,
                _ => {
                    stats.records_passed += 1;
                    out.push(rec.clone());
                    continue;
                }
            };
            validate_key_id(&plan.key_id).map_err(|source| EncryptError::InvalidKeyId {
                index,
                key_id: plan.key_id.clone(),
                source,
            })?;
            let prep = prepare(rec, plan).map_err(|f| seal_error(index, f))?;
            if prep.key && !sivs.contains_key(&plan.key_id) {
                let c = self
                    .deks
                    .record_key_cipher(&plan.key_id, topic, None)
                    .await
                    .map_err(EncryptError::Kms)?;
                let siv = c.siv();
                sivs.insert(plan.key_id.clone(), (c, siv));
            }
            let res = self
                .deks
                .reserve(&plan.key_id, topic, prep.parts(), prep.bytes)
                .await
                .map_err(EncryptError::Kms)?;
            let mut record_id = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut record_id);
            let key_cipher = if prep.key {
                sivs.get_mut(&plan.key_id)
                    .map(|(c, siv)| (siv, c.kek_version))
            } else {
                None
            };
            let sealed = seal_record(
                rec,
                &prep,
                SealParams {
                    topic,
                    dek: &res.dek,
                    nonce_base: res.nonce_base,
                    record_id,
                    key_cipher,
                },
            )
            .map_err(|f| seal_error(index, f))?;
            stats.records_encrypted += 1;
            stats.plaintext_bytes += prep.bytes;
            out.push(sealed);
        }
        batch.records = out;
        Ok(stats)
    }

    /// Resolves, concurrently and once each, every DEK and record-key key the encrypted records
    /// of `batches` need, so that the following [`Self::decrypt_batch`] calls hit the cache.
    /// Returns the number of distinct keys resolved; failures are reported by `decrypt_batch`.
    pub async fn prefetch(&self, topic: &str, batches: &[&RecordBatch]) -> usize {
        let mut deks = HashSet::new();
        let mut sivs = HashSet::new();
        for b in batches {
            for r in &b.records {
                if let Ok(Some((_, d))) = find_descriptor(r) {
                    if d.key_encrypted {
                        sivs.insert((d.kek_id.clone(), d.key_kek_version));
                    }
                    deks.insert((d.kek_id, d.edek));
                }
            }
        }
        let f1 = futures::future::join_all(deks.iter().map(|(k, e)| self.deks.decrypt(k, e)));
        let f2 = futures::future::join_all(
            sivs.iter()
                .map(|(k, v)| self.deks.record_key_cipher(k, topic, Some(*v))),
        );
        let (a, b) = futures::future::join(f1, f2).await;
        a.iter().filter(|r| r.is_ok()).count() + b.iter().filter(|r| r.is_ok()).count()
    }

    /// Decrypts `batch` in place.
    ///
    /// Records without `kapsule.enc` pass unchanged (dropped, or an error, with
    /// `require_encrypted`). A record that fails follows `options.on_failure`; an unavailable
    /// KMS fails the batch with a retriable error in every mode. On error `batch` is untouched.
    /// Never returns ciphertext as if it were plaintext: a record is either decrypted and
    /// stripped of its descriptor, or left as it was (with its descriptor), or dropped.
    pub async fn decrypt_batch(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        options: &DecryptOptions<'_>,
    ) -> Result<DecryptStats, DecryptError> {
        let r = self.decrypt_inner(topic, batch, options).await;
        match &r {
            Ok(s) => {
                let t = self.metrics.topic(topic);
                t.records_decrypted
                    .fetch_add(s.records_decrypted, Ordering::Relaxed);
                t.bytes_decrypted
                    .fetch_add(s.plaintext_bytes, Ordering::Relaxed);
            }
            Err(e) => self.metrics.decrypt_failure(topic, e.reason(), 1),
        }
        r
    }

    async fn decrypt_inner(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        options: &DecryptOptions<'_>,
    ) -> Result<DecryptStats, DecryptError> {
        let mut stats = DecryptStats::default();
        let descs: Vec<Result<Option<(usize, Descriptor)>, String>> =
            batch.records.iter().map(find_descriptor).collect();
        // Resolve every key once, concurrently. Records of a batch nearly always share one DEK,
        // so each record is compared with the previous one before anything is hashed.
        let mut dek_keys: Vec<(&str, &[u8])> = Vec::new();
        let mut siv_keys: Vec<(&str, u32)> = Vec::new();
        let mut dek_seen: HashMap<(&str, &[u8]), usize> = HashMap::new();
        let mut siv_seen: HashMap<(&str, u32), usize> = HashMap::new();
        // Per record: (index into dek_keys, index into siv_keys when the key is encrypted).
        let mut slots: Vec<Option<(usize, Option<usize>)>> = Vec::with_capacity(descs.len());
        let mut last: Option<(usize, Option<usize>)> = None;
        for desc in &descs {
            let Ok(Some((_, d))) = desc else {
                slots.push(None);
                continue;
            };
            if !options.kek_allowed(&d.kek_id) {
                // Never ask the KMS about a key this topic does not allow.
                slots.push(None);
                continue;
            }
            let dk = (d.kek_id.as_str(), d.edek.as_slice());
            let di = match last {
                Some((i, _)) if dek_keys[i] == dk => i,
                _ => *dek_seen.entry(dk).or_insert_with(|| {
                    dek_keys.push(dk);
                    dek_keys.len() - 1
                }),
            };
            let si = d.key_encrypted.then(|| {
                let sk = (d.kek_id.as_str(), d.key_kek_version);
                match last {
                    Some((_, Some(i))) if siv_keys[i] == sk => i,
                    _ => *siv_seen.entry(sk).or_insert_with(|| {
                        siv_keys.push(sk);
                        siv_keys.len() - 1
                    }),
                }
            });
            last = Some((di, si));
            slots.push(last);
        }
        let (deks, siv_res) = futures::future::join(
            futures::future::join_all(dek_keys.iter().map(|(k, e)| self.deks.decrypt(k, e))),
            futures::future::join_all(
                siv_keys
                    .iter()
                    .map(|(k, v)| self.deks.record_key_cipher(k, topic, Some(*v))),
            ),
        )
        .await;
        let mut sivs: Vec<Result<Aes256Siv, KmsError>> =
            siv_res.into_iter().map(|r| r.map(|c| c.siv())).collect();

        let mut out = Vec::with_capacity(batch.records.len());
        let mut failures = 0u64;
        for (index, ((rec, desc), slot)) in batch.records.iter().zip(&descs).zip(slots).enumerate()
        {
            let result: Result<(Record, u64), DecryptError> = match desc {
                Ok(None) if options.require_encrypted => Err(DecryptError::NotEncrypted { index }),
                Ok(None) => {
                    stats.records_plain += 1;
                    out.push(rec.clone());
                    continue;
                }
                Err(message) => Err(DecryptError::Malformed {
                    index,
                    message: message.clone(),
                }),
                Ok(Some((_, d))) if !options.kek_allowed(&d.kek_id) => {
                    Err(DecryptError::KeyNotAllowed {
                        index,
                        kek_id: d.kek_id.clone(),
                    })
                }
                Ok(Some((di, d))) => {
                    let (dek_slot, siv_slot) = slot.expect("every allowed descriptor has a slot");
                    match &deks[dek_slot] {
                        Err(e) => Err(DecryptError::Kms {
                            index,
                            source: e.clone(),
                        }),
                        Ok(dek) => {
                            let siv = if d.key_encrypted {
                                match &mut sivs[siv_slot.expect("encrypted key has a slot")] {
                                    Ok(s) => Ok(Some(s)),
                                    Err(e) => Err(DecryptError::Kms {
                                        index,
                                        source: e.clone(),
                                    }),
                                }
                            } else {
                                Ok(None)
                            };
                            siv.and_then(|siv| {
                                open_record(topic, rec, *di, d, dek, siv).map_err(|f| match f {
                                    OpenFail::Integrity(message) => {
                                        DecryptError::Integrity { index, message }
                                    }
                                    OpenFail::Malformed(message) => {
                                        DecryptError::Malformed { index, message }
                                    }
                                })
                            })
                        }
                    }
                }
            };
            match result {
                Ok((r, bytes)) => {
                    stats.records_decrypted += 1;
                    stats.plaintext_bytes += bytes;
                    out.push(r);
                }
                Err(e) => {
                    if e.is_retriable() || options.on_failure == FailureMode::Error {
                        if failures > 0 {
                            self.metrics.decrypt_failure(topic, e.reason(), failures);
                        }
                        return Err(e);
                    }
                    failures += 1;
                    self.metrics.decrypt_failure(topic, e.reason(), 1);
                    match (&e, options.on_failure) {
                        (DecryptError::NotEncrypted { .. }, _) | (_, FailureMode::Skip) => {
                            stats.records_dropped += 1
                        }
                        _ => {
                            stats.records_left_encrypted += 1;
                            out.push(rec.clone());
                        }
                    }
                }
            }
        }
        batch.records = out;
        Ok(stats)
    }
}

/// Test-only access to the deterministic core (golden vectors).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Encrypts one record with fixed keys, nonce base and record id.
    pub fn seal(
        topic: &str,
        rec: &Record,
        plan: &EncryptionPlan,
        dek: &Dek,
        nonce_base: [u8; NONCE_LEN],
        record_id: [u8; 16],
        key_cipher: Option<&RecordKeyCipher>,
    ) -> Result<Record, String> {
        let prep = prepare(rec, plan).map_err(|e| e.to_string())?;
        let mut siv = key_cipher.map(|c| (c.siv(), c.kek_version));
        seal_record(
            rec,
            &prep,
            SealParams {
                topic,
                dek,
                nonce_base,
                record_id,
                key_cipher: siv.as_mut().map(|(s, v)| (s, *v)),
            },
        )
        .map_err(|e| e.to_string())
    }

    /// Decrypts one record with fixed keys.
    pub fn open(
        topic: &str,
        rec: &Record,
        dek: &Dek,
        key_cipher: Option<&RecordKeyCipher>,
    ) -> Result<Record, String> {
        let (i, d) = find_descriptor(rec)?.ok_or("no descriptor")?;
        let mut siv = key_cipher.map(|c| c.siv());
        open_record(topic, rec, i, &d, dek, siv.as_mut())
            .map(|(r, _)| r)
            .map_err(|f| match f {
                OpenFail::Integrity(m) | OpenFail::Malformed(m) => m,
            })
    }
}
