//! Memoized decisions: for a `per-record` plan that declares what its decision depends on (a
//! header's value, the record key, or a key prefix), a batch is grouped by that value, the guest
//! is shown one record per value that has no cached decision yet, and every other record reuses
//! the answer.
//!
//! Cached decisions belong to one module version (they live in its
//! [`AnswerCache`], with its plans and reveals, and go with it on reload), are kept per (topic,
//! principal, value), and are bounded in bytes with the rest of that cache (see
//! [`super::answer_cache`]); values longer than [`MAX_VALUE_LEN`] bytes are decided once per
//! batch but not remembered across batches.
//!
//! The policy promises that records with the same value get the same decision. The host does
//! not take that on trust: it **audits** memo answers ([`MemoAudit`]). Every memo-answered record
//! among the first [`AUDIT_FIRST`] of a module version, then one in [`AUDIT_EVERY`] but at most
//! one per [`AUDIT_MIN_INTERVAL_MS`] (so a busy module pays a few guest calls per second for its
//! audits, not one per batch), is shown to the guest as well, and its real decision compared with the memo's. On a mismatch the memo is
//! turned off for that module version (an ERROR log line, the
//! `kapsule_policy_memo_mismatches_total` counter) and the whole batch is decided again record by
//! record, so no record — the audited one included — is encrypted less than the module decides.
//! Until an audit catches it, a policy that breaks the promise gets the decisions it gave for the
//! representative records, each validated like any other answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::answer_cache::{AnswerCache, Slot};
use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision};
use crate::principal::Principal;

/// Longest value remembered across batches, bytes.
pub(super) const MAX_VALUE_LEN: usize = 256;

/// Memo-answered records of a module version that are all audited (the first ones after each
/// load or swap).
pub(super) const AUDIT_FIRST: u64 = 256;
/// After the first [`AUDIT_FIRST`], one memo-answered record in this many is audited.
pub(super) const AUDIT_EVERY: u64 = 1024;
/// After the first [`AUDIT_FIRST`], sampled audits of one module version are at least this far
/// apart, in milliseconds.
pub(super) const AUDIT_MIN_INTERVAL_MS: u64 = 100;

/// How a `decide` uses the memo key a plan declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoUse {
    /// As in production: memoized, with audits of the memo's answers (see the module docs).
    Audited,
    /// Memoized without audits: exactly what the memo alone decides (`policy check` compares
    /// it with [`MemoUse::Off`]).
    Unaudited,
    /// Every record is shown to the guest, whatever memo key the plan declares.
    Off,
}

/// Audit state of one module version's memo: how many memo answers it gave, and whether an
/// audit found one wrong (the memo is then off for that version).
#[derive(Debug, Default)]
pub(super) struct MemoAudit {
    answered: AtomicU64,
    broken: AtomicBool,
    /// When the last sampled audit was picked: milliseconds since [`audit_clock`]'s start, plus
    /// one (0: never).
    last_sampled_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts with the first call.
fn audit_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl MemoAudit {
    /// True once an audit found a memo answer that differs from the module's own decision.
    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Turns the memo off; returns true the first time (the caller reports it once).
    pub(super) fn mark_broken(&self) -> bool {
        !self.broken.swap(true, Ordering::Relaxed)
    }

    /// Which of the next `answered` memo answers (positions `0..answered`) are audited.
    fn picks(&self, answered: usize) -> Vec<usize> {
        self.picks_at(answered, audit_clock())
    }

    /// [`Self::picks`] at time `now_ms` (of [`audit_clock`]).
    fn picks_at(&self, answered: usize, now_ms: u64) -> Vec<usize> {
        let n = answered as u64;
        let base = self.answered.fetch_add(n, Ordering::Relaxed);
        let mut picked: Vec<usize> = (0..n)
            .filter(|k| base + k < AUDIT_FIRST)
            .map(|k| k as usize)
            .collect();
        // One sampled audit at most per call, and only if the interval since the last one passed.
        let sampled = (0..n).find(|k| {
            let seen = base + k;
            seen >= AUDIT_FIRST && seen.is_multiple_of(AUDIT_EVERY)
        });
        if let Some(k) = sampled {
            let last = self.last_sampled_ms.load(Ordering::Relaxed);
            let due = last == 0 || now_ms + 1 >= last + AUDIT_MIN_INTERVAL_MS;
            if due
                && self
                    .last_sampled_ms
                    .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                picked.push(k as usize);
            }
        }
        picked
    }
}

/// An audit found that the memo's answer for a record differs from the module's own decision.
#[derive(Debug, Clone)]
pub(super) struct MemoMismatch {
    /// Index of the record in the batch.
    pub(super) index: usize,
    /// What the memo answered.
    pub(super) memo: RecordDecision,
    /// What the module decides when shown the record.
    pub(super) module: RecordDecision,
}

/// The value a record's decision depends on, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum MemoValue<'r> {
    /// The header is absent.
    Absent,
    /// A null header value or a null record key.
    Null,
    /// These bytes.
    Bytes(&'r [u8]),
}

impl<'r> MemoValue<'r> {
    /// The value of `r` under `key` (`None` for [`MemoKey::None`]).
    pub(super) fn of(r: &'r Record, key: &MemoKey) -> Option<MemoValue<'r>> {
        let bytes = |b: Option<&'r bytes::Bytes>, max: usize| match b {
            None => MemoValue::Null,
            Some(b) => MemoValue::Bytes(&b[..b.len().min(max)]),
        };
        Some(match key {
            MemoKey::None => return None,
            MemoKey::Header(name) => match r.headers.iter().find(|h| h.key == name.as_bytes()) {
                None => MemoValue::Absent,
                Some(h) => bytes(h.value.as_ref(), usize::MAX),
            },
            MemoKey::RecordKey => bytes(r.key.as_ref(), usize::MAX),
            MemoKey::KeyPrefix(n) => bytes(r.key.as_ref(), *n as usize),
            MemoKey::Headers(_) => {
                unreachable!("several headers' values are encoded by `encode_headers`")
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            MemoValue::Bytes(b) => b.len(),
            _ => 0,
        }
    }

    fn slot(self) -> Slot<'r> {
        match self {
            MemoValue::Absent => Slot::Absent,
            MemoValue::Null => Slot::Null,
            MemoValue::Bytes(b) => Slot::Bytes(b),
        }
    }
}

/// The values of the first header named each of `names` in `r`, as one byte string: per name,
/// `0` (absent), `1` (null) or `2`, a u32 little-endian length and the value. Equal strings mean
/// equal values for every name, so it serves as the memo value of [`MemoKey::Headers`].
fn encode_headers(r: &Record, names: &[String]) -> Box<[u8]> {
    let mut out = Vec::new();
    for name in names {
        match r.headers.iter().find(|h| h.key == name.as_bytes()) {
            None => out.push(0),
            Some(h) => match &h.value {
                None => out.push(1),
                Some(v) => {
                    out.push(2);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
            },
        }
    }
    out.into_boxed_slice()
}

/// A [`MemoValue`] kept until the guest has answered.
#[derive(Debug, Clone)]
enum OwnedValue {
    Absent,
    Null,
    Bytes(Box<[u8]>),
}

impl From<MemoValue<'_>> for OwnedValue {
    fn from(v: MemoValue<'_>) -> Self {
        match v {
            MemoValue::Absent => OwnedValue::Absent,
            MemoValue::Null => OwnedValue::Null,
            MemoValue::Bytes(b) => OwnedValue::Bytes(b.into()),
        }
    }
}

impl OwnedValue {
    fn slot(&self) -> Slot<'_> {
        match self {
            OwnedValue::Absent => Slot::Absent,
            OwnedValue::Null => Slot::Null,
            OwnedValue::Bytes(b) => Slot::Bytes(b),
        }
    }
}

/// What grouping a batch found: the records already decided, and one representative per value
/// the guest must decide.
pub(super) enum Grouped {
    /// Every record has a cached decision and none is audited.
    Done(Vec<RecordDecision>),
    /// The guest must decide the records at [`Pending::shown`] (one per undecided value, then
    /// the audited ones); then [`Pending::finish`] fills in the rest.
    Pending(Pending),
}

/// A grouped batch waiting for the guest's decisions on its representatives.
pub(super) struct Pending {
    /// Decisions known so far, per record.
    decided: Vec<Option<RecordDecision>>,
    /// Records still to decide, with the index of their value's representative.
    waiting: Vec<(usize, u32)>,
    /// Per representative: its index in the batch and its value (`None`: too long to cache).
    representatives: Vec<usize>,
    values: Vec<Option<OwnedValue>>,
    /// Memo-answered records shown to the guest too, to audit the memo's answer.
    audited: Vec<usize>,
}

/// Groups `records` by their value under `key`, answering from `cache` what it can; with
/// `audit`, picks memo-answered records to show the guest as well (see [`MemoAudit`]).
pub(super) fn group(
    cache: &AnswerCache,
    audit: Option<&MemoAudit>,
    topic: &str,
    principal: Option<&Principal>,
    key: &MemoKey,
    records: &[Record],
) -> Grouped {
    let mut decided = Vec::with_capacity(records.len());
    let mut waiting = Vec::new();
    let mut representatives = Vec::new();
    let mut values = Vec::new();
    // Several headers: each record's values encoded once, borrowed as its memo value below.
    let encoded: Vec<Box<[u8]>> = match key {
        MemoKey::Headers(names) => records.iter().map(|r| encode_headers(r, names)).collect(),
        _ => Vec::new(),
    };
    let mut missing: HashMap<MemoValue<'_>, u32> = HashMap::new();
    {
        let mut cached = cache.decisions(topic, principal);
        // Consecutive records usually share their value: compare with the previous one
        // before hashing.
        let mut last: Option<(MemoValue<'_>, Option<RecordDecision>, u32)> = None;
        for (i, r) in records.iter().enumerate() {
            let v = match encoded.get(i) {
                Some(e) => MemoValue::Bytes(e),
                None => match MemoValue::of(r, key) {
                    Some(v) => v,
                    None => unreachable!("grouping is only used with a memo key"),
                },
            };
            if let Some((lv, ld, lr)) = &last {
                if *lv == v {
                    match ld {
                        Some(d) => decided.push(Some(d.clone())),
                        None => {
                            decided.push(None);
                            waiting.push((i, *lr));
                        }
                    }
                    continue;
                }
            }
            if let Some(&rep) = missing.get(&v) {
                decided.push(None);
                waiting.push((i, rep));
                last = Some((v, None, rep));
                continue;
            }
            let hit = if v.len() <= MAX_VALUE_LEN {
                cached.get(v.slot())
            } else {
                None
            };
            if let Some(d) = hit {
                decided.push(Some(d.clone()));
                last = Some((v, Some(d), 0));
                continue;
            }
            representatives.push(i);
            values.push((v.len() <= MAX_VALUE_LEN).then(|| OwnedValue::from(v)));
            let rep = (representatives.len() - 1) as u32;
            missing.insert(v, rep);
            decided.push(None);
            waiting.push((i, rep));
            last = Some((v, None, rep));
        }
    }
    // Memo-answered records: every record but the representatives (both in batch order).
    let audited = match audit {
        None => Vec::new(),
        Some(a) => {
            let picks = a.picks(records.len() - representatives.len());
            if picks.is_empty() {
                return finish_grouping(decided, waiting, representatives, values, Vec::new());
            }
            let mut reps = representatives.iter().peekable();
            let answered = (0..records.len()).filter(|i| {
                if reps.peek() == Some(&i) {
                    reps.next();
                    false
                } else {
                    true
                }
            });
            let mut picks = picks.into_iter().peekable();
            answered
                .enumerate()
                .filter(|(k, _)| {
                    let picked = picks.peek() == Some(k);
                    if picked {
                        picks.next();
                    }
                    picked
                })
                .map(|(_, i)| i)
                .collect()
        }
    };
    finish_grouping(decided, waiting, representatives, values, audited)
}

/// Done when no record needs the guest, else the pending batch.
fn finish_grouping(
    decided: Vec<Option<RecordDecision>>,
    waiting: Vec<(usize, u32)>,
    representatives: Vec<usize>,
    values: Vec<Option<OwnedValue>>,
    audited: Vec<usize>,
) -> Grouped {
    if representatives.is_empty() && audited.is_empty() {
        return Grouped::Done(decided.into_iter().map(known).collect());
    }
    Grouped::Pending(Pending {
        decided,
        waiting,
        representatives,
        values,
        audited,
    })
}

impl Pending {
    /// The records the guest must see, in the order [`Pending::finish`] expects their answers:
    /// the representatives, then the audited records.
    pub(super) fn shown(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        self.representatives.iter().chain(&self.audited).copied()
    }

    /// Fills in every record from the guest's (validated) decisions for [`Pending::shown`], and
    /// caches the representatives' under (`topic`, `principal`). Fails with the first audited
    /// record whose memo answer differs from the guest's own decision (nothing is cached then).
    pub(super) fn finish(
        mut self,
        cache: &AnswerCache,
        topic: &str,
        principal: Option<&Principal>,
        answers: Vec<RecordDecision>,
    ) -> Result<Vec<RecordDecision>, MemoMismatch> {
        let reps = self.representatives.len();
        debug_assert_eq!(answers.len(), reps + self.audited.len());
        for &(i, rep) in &self.waiting {
            self.decided[i] = Some(answers[rep as usize].clone());
        }
        for (&i, module) in self.audited.iter().zip(&answers[reps..]) {
            let memo = self.decided[i].clone();
            if memo.as_ref() != Some(module) {
                return Err(MemoMismatch {
                    index: i,
                    memo: known(memo),
                    module: module.clone(),
                });
            }
        }
        cache.put_decisions(
            topic,
            principal,
            self.values
                .iter()
                .zip(&answers[..reps])
                .filter_map(|(v, d)| Some((v.as_ref()?.slot(), d))),
        );
        Ok(self.decided.into_iter().map(known).collect())
    }
}

/// Every record is cached or waiting for its representative, so each has a decision by now; if
/// that were ever wrong, the record is refused rather than forwarded.
fn known(d: Option<RecordDecision>) -> RecordDecision {
    d.unwrap_or_else(|| RecordDecision::Reject("internal error: no memoized decision".into()))
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    #[test]
    fn the_first_answers_are_all_audited_then_a_sample_at_most_once_per_interval() {
        let a = MemoAudit::default();
        // The first AUDIT_FIRST memo answers: every one.
        assert_eq!(a.picks_at(200, 0), (0..200).collect::<Vec<_>>());
        assert_eq!(a.picks_at(100, 0), (0..56).collect::<Vec<_>>());
        // Answers 300..1324 hold one multiple of AUDIT_EVERY (1024): audited.
        assert_eq!(a.picks_at(1024, 0), vec![1024 - 300]);
        // The next multiple (2048) comes 10 ms later: skipped, the interval has not passed.
        assert_eq!(a.picks_at(1024, 10), Vec::<usize>::new());
        // 3072, after the interval: audited again.
        assert_eq!(
            a.picks_at(1024, 10 + AUDIT_MIN_INTERVAL_MS),
            vec![3072 - 2348]
        );
        // A batch without a multiple of AUDIT_EVERY: nothing.
        assert_eq!(a.picks_at(10, 10_000), Vec::<usize>::new());
    }
}
