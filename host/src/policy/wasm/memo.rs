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
//! The policy promises that records with the same value get the same decision; the host relies
//! on it. A policy that breaks the promise gets the decisions it gave for the representative
//! records, each validated like any other answer, so nothing unsafe reaches the encryption stage.

use std::collections::HashMap;

use super::answer_cache::{AnswerCache, Slot};
use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision};
use crate::principal::Principal;

/// Longest value remembered across batches, bytes.
pub(super) const MAX_VALUE_LEN: usize = 256;

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
    /// Every record has a cached decision.
    Done(Vec<RecordDecision>),
    /// The guest must decide the records at `representatives` (one per value); then
    /// [`Pending::finish`] fills in the rest.
    Pending(Pending),
}

/// A grouped batch waiting for the guest's decisions on its representatives.
pub(super) struct Pending {
    /// Decisions known so far, per record.
    decided: Vec<Option<RecordDecision>>,
    /// Records still to decide, with the index of their value's representative.
    waiting: Vec<(usize, u32)>,
    /// Per representative: its index in the batch and its value (`None`: too long to cache).
    pub(super) representatives: Vec<usize>,
    values: Vec<Option<OwnedValue>>,
}

/// Groups `records` by their value under `key`, answering from `cache` what it can.
pub(super) fn group(
    cache: &AnswerCache,
    topic: &str,
    principal: Option<&Principal>,
    key: &MemoKey,
    records: &[Record],
) -> Grouped {
    let mut decided = Vec::with_capacity(records.len());
    let mut waiting = Vec::new();
    let mut representatives = Vec::new();
    let mut values = Vec::new();
    let mut missing: HashMap<MemoValue<'_>, u32> = HashMap::new();
    {
        let mut cached = cache.decisions(topic, principal);
        // Consecutive records usually share their value: compare with the previous one
        // before hashing.
        let mut last: Option<(MemoValue<'_>, Option<RecordDecision>, u32)> = None;
        for (i, r) in records.iter().enumerate() {
            let Some(v) = MemoValue::of(r, key) else {
                unreachable!("grouping is only used with a memo key");
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
    if representatives.is_empty() {
        return Grouped::Done(decided.into_iter().map(known).collect());
    }
    Grouped::Pending(Pending {
        decided,
        waiting,
        representatives,
        values,
    })
}

impl Pending {
    /// Fills in every record from the guest's (validated) decisions for the representatives, in
    /// representative order, and caches them under (`topic`, `principal`).
    pub(super) fn finish(
        mut self,
        cache: &AnswerCache,
        topic: &str,
        principal: Option<&Principal>,
        answers: Vec<RecordDecision>,
    ) -> Vec<RecordDecision> {
        debug_assert_eq!(answers.len(), self.representatives.len());
        cache.put_decisions(
            topic,
            principal,
            self.values
                .iter()
                .zip(&answers)
                .filter_map(|(v, d)| Some((v.as_ref()?.slot(), d))),
        );
        for (i, rep) in self.waiting {
            self.decided[i] = Some(answers[rep as usize].clone());
        }
        self.decided.into_iter().map(known).collect()
    }
}

/// Every record is cached or waiting for its representative, so each has a decision by now; if
/// that were ever wrong, the record is refused rather than forwarded.
fn known(d: Option<RecordDecision>) -> RecordDecision {
    d.unwrap_or_else(|| RecordDecision::Reject("internal error: no memoized decision".into()))
}
