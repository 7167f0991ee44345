//! The batch API: [`RecordEncryptor`] encrypts and decrypts whole record batches, fetching
//! the keys they need through the [`DekManager`] once each and concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use aes_siv::siv::Aes256Siv;
use rand::RngCore;

use crate::crypto::keys::{DekConfig, DekManager, Reservation};
use crate::crypto::metrics::CryptoMetrics;
use crate::crypto::primitives::{nonce_at, Dek, RecordKeyCipher};
use crate::crypto::wire::{
    validate_key_id, value_stream_prefix_len, AadScheme, Descriptor, ValueEncryption,
};
use crate::kafka::records::{Record, RecordBatch};
use crate::kms::{Kms, KmsError};
use crate::plan::{EncryptionPlan, RecordDecision, ValuePart};
use crate::schema::{self, LocatedField, SchemaError, SchemaRegistry};

use super::open::{find_descriptor, open_record, withhold_all, DescriptorProblem, OpenFail};
use super::seal::{prepare, seal_error, seal_record, Prepared, SealFail, SealParams};
use super::stream::{PendingRecord, ValueArena};
use super::*;

/// Encrypts and decrypts record batches for the proxy. Cheap to share (`Arc`); one per process.
#[derive(Debug)]
pub struct RecordEncryptor {
    deks: Arc<DekManager>,
    metrics: Arc<CryptoMetrics>,
    schemas: Option<Arc<SchemaRegistry>>,
    /// The associated data revision written for whole values (`record_format`).
    whole_value_scheme: AadScheme,
}

impl RecordEncryptor {
    /// An encryptor over `kms` with DEK policy `cfg` (no KMS call until first use).
    pub fn new(kms: Arc<dyn Kms>, cfg: DekConfig) -> Self {
        let metrics = Arc::new(CryptoMetrics::default());
        Self {
            deks: Arc::new(DekManager::new(kms, cfg, metrics.clone())),
            metrics,
            schemas: None,
            whole_value_scheme: AadScheme::V3,
        }
    }

    /// Writes whole values under associated data revision 1 instead of 3 when `format` says so
    /// (for a fleet whose readers predate revision 3 for whole values).
    pub fn with_record_format(mut self, format: RecordFormat) -> Self {
        self.whole_value_scheme = format.whole_value_scheme();
        self
    }

    /// Reads writer schemas from `registry` for plans that encrypt schema fields (without one,
    /// such records are refused).
    pub fn with_schema_registry(mut self, registry: Arc<SchemaRegistry>) -> Self {
        self.schemas = Some(registry);
        self
    }

    /// The selected fields of `rec`'s schema-encoded value, when `plan` encrypts schema fields
    /// (fetching the writer schema on first sight of its id).
    async fn locate_schema_fields(
        &self,
        rec: &Record,
        plan: &EncryptionPlan,
    ) -> Result<Option<Vec<LocatedField>>, SchemaError> {
        let (ValuePart::SchemaFields(sel), Some(v)) = (&plan.value, &rec.value) else {
            return Ok(None);
        };
        let id = schema::schema_id(v)?;
        let registry = self
            .schemas
            .as_ref()
            .ok_or_else(|| SchemaError::Selection {
                id,
                message: "no `schema_registry:` is configured".into(),
            })?;
        let s = registry.schema(id).await?;
        schema::locate(v, &s, sel).map(Some)
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
    /// batch with the Kafka error of the error's [`crate::error::ProxyError`]; it must never be
    /// forwarded. Waits for the KMS only when no DEK is cached for a (KEK, topic) pair.
    pub async fn encrypt_batch(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        decisions: &[RecordDecision],
    ) -> Result<EncryptStats, EncryptError> {
        let r = self.encrypt_inner(topic, batch, decisions).await;
        match &r {
            Ok(s) => self
                .metrics
                .encrypted(topic, s.records_encrypted, s.plaintext_bytes),
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
        // What each record needs, found before any key is fetched.
        let mut prepared = Vec::with_capacity(batch.records.len());
        let mut checked_key_id: Option<&str> = None;
        for (index, (rec, d)) in batch.records.iter().zip(decisions).enumerate() {
            let RecordDecision::Encrypt(plan) = d else {
                prepared.push(None);
                continue;
            };
            if checked_key_id != Some(plan.key_id.as_str()) {
                validate_key_id(&plan.key_id).map_err(|source| EncryptError::InvalidKeyId {
                    index,
                    key_id: plan.key_id.clone(),
                    source,
                })?;
                checked_key_id = Some(plan.key_id.as_str());
            }
            let located = self
                .locate_schema_fields(rec, plan)
                .await
                .map_err(|source| EncryptError::Schema { index, source })?;
            let prep = prepare(rec, plan, located).map_err(|f| seal_error(index, f))?;
            prepared.push(Some((&**plan, prep)));
        }
        let shared = self.one_reservation_for(topic, &prepared).await?;
        let mut shared_offset = 0u64;
        let mut sivs: HashMap<String, (Arc<RecordKeyCipher>, Aes256Siv)> = HashMap::new();
        // Whole values (revision 3) are sealed in one buffer for the batch.
        let edek_len = shared.as_ref().map_or(256, |r| r.dek.edek.len());
        let mut arena = ValueArena::with_capacity(
            batch
                .records
                .iter()
                .zip(&prepared)
                .filter_map(|(rec, p)| p.as_ref().map(|(plan, prep)| (rec, plan, prep)))
                .map(|(rec, plan, prep)| {
                    prep.stream_bytes_estimate(rec, plan, topic, edek_len, self.whole_value_scheme)
                })
                .sum(),
        );
        let mut out = Vec::with_capacity(batch.records.len());
        for (index, (rec, prepared)) in batch.records.iter().zip(prepared).enumerate() {
            let Some((plan, prep)) = prepared else {
                stats.records_passed += 1;
                out.push(PendingRecord::ready(rec.clone()));
                continue;
            };
            if prep.key && !sivs.contains_key(&plan.key_id) {
                let c = self
                    .deks
                    .record_key_cipher(&plan.key_id, topic, None)
                    .await
                    .map_err(EncryptError::Kms)?;
                let siv = c.siv();
                sivs.insert(plan.key_id.clone(), (c, siv));
            }
            let own_reservation: Reservation;
            let (dek, nonce_base) = match &shared {
                Some(res) => {
                    // Consecutive sub-ranges of the batch's one reservation.
                    let nonce_base = u32::try_from(shared_offset)
                        .ok()
                        .and_then(|o| nonce_at(&res.nonce_base, o))
                        .ok_or_else(|| seal_error(index, SealFail::NonceOverflow))?;
                    shared_offset += prep.parts(self.whole_value_scheme);
                    (&res.dek, nonce_base)
                }
                None => {
                    own_reservation = self
                        .deks
                        .reserve(
                            &plan.key_id,
                            topic,
                            prep.parts(self.whole_value_scheme),
                            prep.bytes,
                        )
                        .await
                        .map_err(EncryptError::Kms)?;
                    (&own_reservation.dek, own_reservation.nonce_base)
                }
            };
            let mut record_id = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut record_id);
            let key_cipher = if prep.key {
                sivs.get_mut(&plan.key_id)
                    .map(|(c, siv)| (siv, c.kek_version))
            } else {
                None
            };
            let plaintext_bytes = prep.bytes;
            let sealed = seal_record(
                rec,
                prep,
                SealParams {
                    topic,
                    dek,
                    nonce_base,
                    record_id,
                    key_cipher,
                    fields_scheme: AadScheme::V3,
                    whole_scheme: self.whole_value_scheme,
                },
                &mut arena,
            )
            .map_err(|f| seal_error(index, f))?;
            stats.records_encrypted += 1;
            stats.plaintext_bytes += plaintext_bytes;
            out.push(sealed);
        }
        let arena = arena.freeze();
        batch.records = out.into_iter().map(|r| r.complete(&arena)).collect();
        Ok(stats)
    }

    /// One reservation covering every record of a batch, when all its encrypted records use
    /// one KEK and their nonces and bytes fit a DEK's limits (the common case: one DEK lookup
    /// per batch instead of one per record); `None` to reserve record by record.
    async fn one_reservation_for(
        &self,
        topic: &str,
        prepared: &[Option<(&EncryptionPlan, Prepared)>],
    ) -> Result<Option<Reservation>, EncryptError> {
        let mut encrypted = prepared.iter().flatten();
        let Some((first, _)) = encrypted.next() else {
            return Ok(None);
        };
        if !encrypted.all(|(plan, _)| plan.key_id == first.key_id) {
            return Ok(None);
        }
        let (parts, bytes) = prepared
            .iter()
            .flatten()
            .fold((0u64, 0u64), |(p, b), (_, prep)| {
                (p + prep.parts(self.whole_value_scheme), b + prep.bytes)
            });
        if !self.deks.fits_one_reservation(parts, bytes) {
            return Ok(None);
        }
        self.deks
            .reserve(&first.key_id, topic, parts, bytes)
            .await
            .map(Some)
            .map_err(EncryptError::Kms)
    }

    /// Resolves, concurrently and once each, every DEK and record-key key the encrypted records
    /// of `batches` need, so that the following [`Self::decrypt_batch`] calls hit the cache.
    /// Returns the number of distinct keys resolved; failures are reported by `decrypt_batch`.
    pub async fn prefetch(&self, topic: &str, batches: &[&RecordBatch]) -> usize {
        let descs: Vec<Descriptor> = batches
            .iter()
            .flat_map(|b| &b.records)
            .filter_map(|r| find_descriptor(r).ok().flatten().map(|(_, d)| d))
            .collect();
        let mut needs = KeyNeeds::default();
        for d in &descs {
            needs.add(d);
        }
        let (deks, sivs) = needs.resolve(&self.deks, topic).await;
        deks.iter().filter(|r| r.is_ok()).count() + sivs.iter().filter(|r| r.is_ok()).count()
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
        self.decrypt_batch_revealing(topic, batch, options, RevealScope::All)
            .await
    }

    /// [`Self::decrypt_batch`] for a client that may see only what `scope` reveals (see
    /// [`RevealScope`]). Keys are requested only for records of which something is revealed.
    pub async fn decrypt_batch_revealing(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        options: &DecryptOptions<'_>,
        scope: RevealScope<'_>,
    ) -> Result<DecryptStats, DecryptError> {
        let r = self.decrypt_inner(topic, batch, options, scope).await;
        match &r {
            Ok(s) => self
                .metrics
                .decrypted(topic, s.records_decrypted, s.plaintext_bytes),
            Err(e) => self.metrics.decrypt_failure(topic, e.reason(), 1),
        }
        r
    }

    async fn decrypt_inner(
        &self,
        topic: &str,
        batch: &mut RecordBatch,
        options: &DecryptOptions<'_>,
        scope: RevealScope<'_>,
    ) -> Result<DecryptStats, DecryptError> {
        // Under `All` every descriptor is opened (its tag verified) even if it lists no part.
        let needs_keys = |d: &Descriptor| match scope {
            RevealScope::All => true,
            RevealScope::Parts(_) => scope.reveals_any(d),
            RevealScope::Ciphertext => false,
        };
        let mut stats = DecryptStats::default();
        let descs: Vec<Result<Option<(usize, Descriptor)>, DescriptorProblem>> =
            batch.records.iter().map(find_descriptor).collect();
        // Resolve every key once, concurrently.
        let mut needs = KeyNeeds::default();
        // Per record: (index into the DEKs, index into the record-key ciphers when the key is
        // encrypted).
        let slots: Vec<Option<(usize, Option<usize>)>> = descs
            .iter()
            .map(|desc| match desc {
                // Never ask the KMS about a key this topic does not allow.
                Ok(Some((_, d))) if options.kek_allowed(&d.kek_id) && needs_keys(d) => {
                    Some(needs.add(d))
                }
                _ => None,
            })
            .collect();
        let (deks, siv_res) = needs.resolve(&self.deks, topic).await;
        let mut sivs: Vec<Result<Aes256Siv, KmsError>> =
            siv_res.into_iter().map(|r| r.map(|c| c.siv())).collect();

        // Whole values (revision 3) are opened in one buffer for the batch.
        let mut arena = ValueArena::with_capacity(
            batch
                .records
                .iter()
                .zip(&descs)
                .map(|(rec, desc)| match desc {
                    Ok(Some((di, d)))
                        if d.aad == AadScheme::V3
                            && d.value == ValueEncryption::Whole
                            && needs_keys(d) =>
                    {
                        whole_stream_len(topic, rec, *di)
                    }
                    _ => 0,
                })
                .sum(),
        );
        let mut out = Vec::with_capacity(batch.records.len());
        let mut failures = 0u64;
        for (index, ((rec, desc), slot)) in batch.records.iter().zip(&descs).zip(slots).enumerate()
        {
            let result: Result<(PendingRecord, u64), DecryptError> = match desc {
                Ok(None) if options.require_encrypted => Err(DecryptError::NotEncrypted { index }),
                Ok(None) => {
                    stats.records_plain += 1;
                    out.push(PendingRecord::ready(rec.clone()));
                    continue;
                }
                Err(problem) => Err(DecryptError::Malformed {
                    index,
                    message: problem.to_string(),
                }),
                Ok(Some((_, d))) if !options.kek_allowed(&d.kek_id) => {
                    Err(DecryptError::KeyNotAllowed {
                        index,
                        kek_id: d.kek_id.to_string(),
                    })
                }
                Ok(Some((di, d))) if !needs_keys(d) => {
                    stats.records_withheld += 1;
                    out.push(PendingRecord::ready(match scope {
                        RevealScope::Ciphertext => rec.clone(),
                        _ => withhold_all(rec, *di, d),
                    }));
                    continue;
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
                                open_record(topic, rec, *di, d, dek, siv, scope, &mut arena)
                                    .map_err(|f| match f {
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
                    if e.is_retriable() || options.on_failure == DecryptFailure::Error {
                        if failures > 0 {
                            self.metrics.decrypt_failure(topic, e.reason(), failures);
                        }
                        return Err(e);
                    }
                    failures += 1;
                    self.metrics.decrypt_failure(topic, e.reason(), 1);
                    match (&e, options.on_failure) {
                        (DecryptError::NotEncrypted { .. }, _) | (_, DecryptFailure::Skip) => {
                            stats.records_dropped += 1
                        }
                        _ => {
                            stats.records_left_encrypted += 1;
                            out.push(PendingRecord::ready(rec.clone()));
                        }
                    }
                }
            }
        }
        let arena = arena.freeze();
        batch.records = out.into_iter().map(|r| r.complete(&arena)).collect();
        Ok(stats)
    }
}

/// The length of the revision 3 stream of `rec`'s whole value as stored, its descriptor in
/// header `desc_idx`: what opening it takes in a batch's [`ValueArena`] (over by the record tag,
/// which the header holds after the descriptor).
fn whole_stream_len(topic: &str, rec: &Record, desc_idx: usize) -> usize {
    let len = |b: Option<&bytes::Bytes>| b.map_or(0, bytes::Bytes::len);
    value_stream_prefix_len(
        topic.len(),
        len(rec.key.as_ref()),
        len(rec.headers[desc_idx].value.as_ref()),
        1,
    ) + len(rec.value.as_ref())
}

/// The distinct keys a set of descriptors needs: the one key-collection step of
/// [`RecordEncryptor::prefetch`] and [`RecordEncryptor::decrypt_batch`].
#[derive(Default)]
struct KeyNeeds<'a> {
    /// (KEK id, EDEK) of each DEK, in first-seen order.
    deks: Vec<(&'a str, &'a [u8])>,
    /// (KEK id, KEK version) of each record-key cipher, in first-seen order.
    sivs: Vec<(&'a str, u32)>,
    dek_seen: HashMap<(&'a str, &'a [u8]), usize>,
    siv_seen: HashMap<(&'a str, u32), usize>,
    /// What the previous descriptor needed.
    last: Option<(usize, Option<usize>)>,
}

impl<'a> KeyNeeds<'a> {
    /// Adds the keys of `d`; returns its index into the DEKs and, when its record key is
    /// encrypted, into the record-key ciphers. Records of a batch nearly always share one DEK,
    /// so each descriptor is compared with the previous one before anything is hashed.
    fn add(&mut self, d: &'a Descriptor) -> (usize, Option<usize>) {
        let dk = (&*d.kek_id, &*d.edek);
        let di = match self.last {
            Some((i, _)) if self.deks[i] == dk => i,
            _ => *self.dek_seen.entry(dk).or_insert_with(|| {
                self.deks.push(dk);
                self.deks.len() - 1
            }),
        };
        let si = d.key_encrypted.then(|| {
            let sk = (&*d.kek_id, d.key_kek_version);
            match self.last {
                Some((_, Some(i))) if self.sivs[i] == sk => i,
                _ => *self.siv_seen.entry(sk).or_insert_with(|| {
                    self.sivs.push(sk);
                    self.sivs.len() - 1
                }),
            }
        });
        self.last = Some((di, si));
        (di, si)
    }

    /// Fetches every collected key once, concurrently, in the order of the indices `add` gave.
    async fn resolve(
        &self,
        deks: &DekManager,
        topic: &str,
    ) -> (
        Vec<Result<Arc<Dek>, KmsError>>,
        Vec<Result<Arc<RecordKeyCipher>, KmsError>>,
    ) {
        futures::future::join(
            futures::future::join_all(self.deks.iter().map(|(k, e)| deks.decrypt(k, e))),
            futures::future::join_all(
                self.sivs
                    .iter()
                    .map(|(k, v)| deks.record_key_cipher(k, topic, Some(*v))),
            ),
        )
        .await
    }
}
