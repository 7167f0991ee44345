//! The answer cache of one module version: validated plans, reveals and memoized decisions in one
//! least-recently-used map, bounded in bytes.
//!
//! A tenant's module decides how large its answers are (a plan may name megabytes of header
//! names), and clients decide how many (topic names, principals, memo values), so a bound in
//! entries is no bound in memory. Every entry is charged what it holds on the host — its key
//! (topic, principal, memo value), its answer's strings and lists, and a fixed
//! [`ENTRY_OVERHEAD`] for the map's own node — against one budget per module version
//! (`policy.limits.answer_cache_kib`). Inserting past the budget evicts the least recently used
//! entries first. An answer charged more than `policy.limits.answer_cache_entry_max_kib` is used
//! for the call that produced it but never cached (the next batch asks the guest again); an
//! answer larger than `policy.limits.answer_max_kib` was already refused when it was lifted.
//!
//! Lookups run on every produce batch and fetch: they take the topic, principal and memo value as
//! borrowed slices ([`KeyView`]) and allocate nothing.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use super::answer::{Plan, TopicEntry};
use crate::plan::{EncryptionPlan, MemoKey, RecordDecision, Reveal, TopicPlan, ValuePart};
use crate::principal::{AuthMechanism, Principal};

/// Bytes charged per entry on top of what its key and answer hold: the LRU node, its hash-map
/// slot, the boxed key and the answer's own enum (measured sizes rounded up).
pub(super) const ENTRY_OVERHEAD: usize = 192;
/// Bytes charged per owned string or list on top of its content (its `String`/`Vec` header and
/// allocator rounding).
const PER_ALLOCATION: usize = 32;
/// Bytes charged for a plan's compiled key allowance (a `GlobSet` built from the binding's
/// `allowed_key_ids`), plus [`ALLOWANCE_PER_PATTERN_BYTE`] per byte of its expanded patterns.
const ALLOWANCE_BASE: usize = 1024;
/// See [`ALLOWANCE_BASE`].
const ALLOWANCE_PER_PATTERN_BYTE: usize = 32;

/// Which kind of answer an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Plan,
    Reveal,
    Decision,
}

/// The memo value a cached decision is for (none for plans and reveals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Slot<'a> {
    /// Not a memoized decision.
    None,
    /// The header the plan depends on is absent.
    Absent,
    /// A null header value or a null record key.
    Null,
    /// These bytes.
    Bytes(&'a [u8]),
}

impl Slot<'_> {
    fn len(&self) -> usize {
        match self {
            Slot::Bytes(b) => b.len(),
            _ => 0,
        }
    }
}

/// A cache key as borrowed slices: what lookups build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct KeyView<'a> {
    kind: Kind,
    topic: &'a str,
    principal: Option<(&'a str, AuthMechanism)>,
    value: Slot<'a>,
}

impl<'a> KeyView<'a> {
    fn new(kind: Kind, topic: &'a str, principal: Option<&'a Principal>, value: Slot<'a>) -> Self {
        Self {
            kind,
            topic,
            principal: principal.map(|p| (p.name(), p.mechanism())),
            value,
        }
    }

    fn to_owned(self) -> OwnedKey {
        OwnedKey {
            kind: self.kind,
            topic: self.topic.into(),
            principal: self.principal.map(|(n, m)| (n.into(), m)),
            value: match self.value {
                Slot::None => OwnedSlot::None,
                Slot::Absent => OwnedSlot::Absent,
                Slot::Null => OwnedSlot::Null,
                Slot::Bytes(b) => OwnedSlot::Bytes(b.into()),
            },
        }
    }

    /// Host bytes the owned form of this key holds.
    fn heap_bytes(&self) -> usize {
        self.topic.len()
            + self.principal.map_or(0, |(n, _)| n.len() + PER_ALLOCATION)
            + self.value.len()
            + PER_ALLOCATION
    }
}

#[derive(Debug)]
enum OwnedSlot {
    None,
    Absent,
    Null,
    Bytes(Box<[u8]>),
}

/// A cache key as stored.
#[derive(Debug)]
struct OwnedKey {
    kind: Kind,
    topic: Box<str>,
    principal: Option<(Box<str>, AuthMechanism)>,
    value: OwnedSlot,
}

/// Both key forms seen as a [`KeyView`], so the map can be searched with a borrowed key.
trait AsKeyView {
    fn view(&self) -> KeyView<'_>;
}

impl AsKeyView for OwnedKey {
    fn view(&self) -> KeyView<'_> {
        KeyView {
            kind: self.kind,
            topic: &self.topic,
            principal: self.principal.as_ref().map(|(n, m)| (&**n, *m)),
            value: match &self.value {
                OwnedSlot::None => Slot::None,
                OwnedSlot::Absent => Slot::Absent,
                OwnedSlot::Null => Slot::Null,
                OwnedSlot::Bytes(b) => Slot::Bytes(b),
            },
        }
    }
}

impl AsKeyView for KeyView<'_> {
    fn view(&self) -> KeyView<'_> {
        *self
    }
}

// `OwnedKey` hashes and compares exactly as its view, so `dyn AsKeyView` can stand for it.
impl Hash for OwnedKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view().hash(h)
    }
}
impl PartialEq for OwnedKey {
    fn eq(&self, o: &Self) -> bool {
        self.view() == o.view()
    }
}
impl Eq for OwnedKey {}
impl Hash for dyn AsKeyView + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.view().hash(h)
    }
}
impl PartialEq for dyn AsKeyView + '_ {
    fn eq(&self, o: &Self) -> bool {
        self.view() == o.view()
    }
}
impl Eq for dyn AsKeyView + '_ {}
impl<'a> Borrow<dyn AsKeyView + 'a> for OwnedKey {
    fn borrow(&self) -> &(dyn AsKeyView + 'a) {
        self
    }
}

/// One cached answer.
#[derive(Debug, Clone)]
enum Answer {
    Plan(Plan),
    Reveal(Reveal),
    Decision(RecordDecision),
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    /// Bytes charged for this entry (key, answer and [`ENTRY_OVERHEAD`]).
    charged: usize,
}

struct State {
    map: LruCache<OwnedKey, Entry>,
    bytes: usize,
    decisions: usize,
}

/// Counters of one answer cache, for `GET /policies` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    /// Bytes charged for the answers cached now.
    pub(crate) bytes: usize,
    /// The budget `bytes` stays under.
    pub(crate) budget: usize,
    /// Answers cached now (plans, reveals and memoized decisions).
    pub(crate) entries: usize,
    /// Of which memoized decisions.
    pub(crate) decisions: usize,
    /// Entries evicted to stay under the budget since this version loaded.
    pub(crate) evictions: u64,
    /// Answers used once but not cached because they were larger than the per-answer cap.
    pub(crate) uncached: u64,
}

/// See [`AnswerCache::decisions`].
pub(super) struct DecisionLookup<'c> {
    state: parking_lot::MutexGuard<'c, State>,
    topic: &'c str,
    principal: Option<&'c Principal>,
}

impl DecisionLookup<'_> {
    /// The decision cached for `value`, marked as recently used.
    pub(super) fn get(&mut self, value: Slot<'_>) -> Option<RecordDecision> {
        let key = KeyView::new(Kind::Decision, self.topic, self.principal, value);
        match self.state.map.get(&key as &dyn AsKeyView) {
            Some(Entry {
                answer: Answer::Decision(d),
                ..
            }) => Some(d.clone()),
            _ => None,
        }
    }
}

/// Validated answers of one module version, bounded in bytes (see the module docs).
pub(super) struct AnswerCache {
    state: Mutex<State>,
    budget: usize,
    entry_max: usize,
    evictions: AtomicU64,
    uncached: AtomicU64,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("budget", &self.budget)
            .field("entry_max", &self.entry_max)
            .finish_non_exhaustive()
    }
}

impl AnswerCache {
    /// An empty cache holding at most `budget` bytes of answers, none larger than `entry_max`.
    pub(super) fn new(budget: usize, entry_max: usize) -> Self {
        Self {
            state: Mutex::new(State {
                map: LruCache::unbounded(),
                bytes: 0,
                decisions: 0,
            }),
            budget,
            entry_max: entry_max.min(budget),
            evictions: AtomicU64::new(0),
            uncached: AtomicU64::new(0),
        }
    }

    /// The plan cached for (`topic`, `principal`), marked as recently used.
    pub(super) fn plan(&self, topic: &str, principal: Option<&Principal>) -> Option<Plan> {
        let key = KeyView::new(Kind::Plan, topic, principal, Slot::None);
        match self.get(&key)? {
            Answer::Plan(p) => Some(p),
            _ => None,
        }
    }

    /// Caches `plan` for (`topic`, `principal`) unless it is larger than the per-answer cap.
    pub(super) fn put_plan(&self, topic: &str, principal: Option<&Principal>, plan: &Plan) {
        let key = KeyView::new(Kind::Plan, topic, principal, Slot::None);
        let size = entry_bytes(&plan.0);
        self.put(key, Answer::Plan(plan.clone()), size);
    }

    /// The reveal cached for (`topic`, `principal`), marked as recently used.
    pub(super) fn reveal(&self, topic: &str, principal: Option<&Principal>) -> Option<Reveal> {
        let key = KeyView::new(Kind::Reveal, topic, principal, Slot::None);
        match self.get(&key)? {
            Answer::Reveal(r) => Some(r),
            _ => None,
        }
    }

    /// Caches `reveal` for (`topic`, `principal`) unless it is larger than the per-answer cap.
    pub(super) fn put_reveal(&self, topic: &str, principal: Option<&Principal>, reveal: &Reveal) {
        let key = KeyView::new(Kind::Reveal, topic, principal, Slot::None);
        self.put(key, Answer::Reveal(reveal.clone()), reveal_bytes(reveal));
    }

    /// A lookup of the memoized decisions of (`topic`, `principal`) that holds the cache's lock
    /// until dropped: one lock for a whole batch.
    pub(super) fn decisions<'c>(
        &'c self,
        topic: &'c str,
        principal: Option<&'c Principal>,
    ) -> DecisionLookup<'c> {
        DecisionLookup {
            state: self.state.lock(),
            topic,
            principal,
        }
    }

    /// Caches the decision for each (value, decision) of `answers` under (`topic`, `principal`),
    /// skipping any larger than the per-answer cap.
    pub(super) fn put_decisions<'v>(
        &self,
        topic: &str,
        principal: Option<&Principal>,
        answers: impl IntoIterator<Item = (Slot<'v>, &'v RecordDecision)>,
    ) {
        for (v, d) in answers {
            let key = KeyView::new(Kind::Decision, topic, principal, v);
            self.put(key, Answer::Decision(d.clone()), decision_bytes(d));
        }
    }

    /// What the cache holds now.
    pub(super) fn stats(&self) -> CacheStats {
        let st = self.state.lock();
        CacheStats {
            bytes: st.bytes,
            budget: self.budget,
            entries: st.map.len(),
            decisions: st.decisions,
            evictions: self.evictions.load(Ordering::Relaxed),
            uncached: self.uncached.load(Ordering::Relaxed),
        }
    }

    fn get(&self, key: &KeyView<'_>) -> Option<Answer> {
        let mut st = self.state.lock();
        st.map.get(key as &dyn AsKeyView).map(|e| e.answer.clone())
    }

    /// Inserts `answer` (whose own heap bytes are `answer_bytes`) under `key`, evicting the least
    /// recently used entries until it fits; an entry over the per-answer cap is not cached.
    fn put(&self, key: KeyView<'_>, answer: Answer, answer_bytes: usize) {
        let charged = ENTRY_OVERHEAD
            .saturating_add(key.heap_bytes())
            .saturating_add(answer_bytes);
        if charged > self.entry_max {
            self.uncached.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                topic = %key.topic,
                bytes = charged,
                cap = self.entry_max,
                "policy answer larger than policy.limits.answer_cache_entry_max_kib: used once, not cached"
            );
            return;
        }
        let is_decision = key.kind == Kind::Decision;
        let mut st = self.state.lock();
        if let Some(old) = st.map.pop(&key as &dyn AsKeyView) {
            st.bytes -= old.charged;
            st.decisions -= usize::from(is_decision);
        }
        let mut evicted = 0;
        while st.bytes + charged > self.budget {
            let Some((k, e)) = st.map.pop_lru() else {
                break;
            };
            st.bytes -= e.charged;
            st.decisions -= usize::from(k.kind == Kind::Decision);
            evicted += 1;
        }
        st.map.put(key.to_owned(), Entry { answer, charged });
        st.bytes += charged;
        st.decisions += usize::from(is_decision);
        drop(st);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }
}

fn string_bytes(s: &str) -> usize {
    s.len() + PER_ALLOCATION
}

fn strings_bytes(v: &[String]) -> usize {
    v.iter().map(|s| string_bytes(s)).sum::<usize>() + PER_ALLOCATION
}

fn encryption_plan_bytes(p: &EncryptionPlan) -> usize {
    let value = match &p.value {
        ValuePart::None | ValuePart::Whole => 0,
        ValuePart::JsonFields(f) => strings_bytes(f),
        ValuePart::SchemaFields(s) => strings_bytes(&s.fields) + strings_bytes(&s.tags),
    };
    PER_ALLOCATION + string_bytes(&p.key_id) + value + strings_bytes(&p.headers)
}

/// Host bytes a validated plan holds (its encryption plan, memo key and key allowance).
fn entry_bytes(e: &TopicEntry) -> usize {
    let plan = match &e.plan {
        TopicPlan::PassAll | TopicPlan::PerRecord(_) => 0,
        TopicPlan::EncryptAll(p) => encryption_plan_bytes(p),
        TopicPlan::RejectAll(m) => string_bytes(m),
    };
    let memo = match &e.memo {
        MemoKey::Header(h) => string_bytes(h),
        MemoKey::Headers(names) => strings_bytes(names),
        _ => 0,
    };
    PER_ALLOCATION
        + plan
        + memo
        + ALLOWANCE_BASE
        + e.allowed_pattern_bytes * ALLOWANCE_PER_PATTERN_BYTE
}

/// Host bytes a validated reveal holds.
fn reveal_bytes(r: &Reveal) -> usize {
    match r {
        Reveal::All | Reveal::Ciphertext => 0,
        Reveal::Deny(m) => string_bytes(m),
        Reveal::Parts(p) => {
            strings_bytes(&p.json_fields)
                + strings_bytes(&p.headers)
                + strings_bytes(&p.schema_fields)
        }
    }
}

/// Host bytes a decision holds. A shared encryption plan is charged in full to every decision
/// that holds it, so the charge never underestimates.
fn decision_bytes(d: &RecordDecision) -> usize {
    match d {
        RecordDecision::Pass => 0,
        RecordDecision::Encrypt(p) => encryption_plan_bytes(p),
        RecordDecision::Reject(m) => string_bytes(m),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn reject(len: usize) -> RecordDecision {
        RecordDecision::Reject("r".repeat(len))
    }

    #[test]
    fn principals_and_kinds_are_told_apart() {
        let c = AnswerCache::new(1 << 20, 1 << 16);
        let alice = Principal::new("alice", AuthMechanism::SaslPlain);
        let alice_tls = Principal::new("alice", AuthMechanism::TlsClientCertificate);
        c.put_reveal("t", None, &Reveal::All);
        c.put_reveal("t", Some(&alice), &Reveal::Ciphertext);
        c.put_reveal("t", Some(&alice_tls), &Reveal::Deny("no".into()));
        assert_eq!(c.reveal("t", None), Some(Reveal::All));
        assert_eq!(c.reveal("t", Some(&alice)), Some(Reveal::Ciphertext));
        assert_eq!(
            c.reveal("t", Some(&alice_tls)),
            Some(Reveal::Deny("no".into()))
        );
        assert_eq!(c.reveal("u", Some(&alice)), None);
        assert!(c.plan("t", None).is_none(), "a reveal is not a plan");
        let d = RecordDecision::Pass;
        c.put_decisions("t", None, [(Slot::Bytes(b"acme"), &d), (Slot::Absent, &d)]);
        let mut l = c.decisions("t", None);
        let seen: Vec<_> = [Slot::Bytes(b"acme"), Slot::Null, Slot::Absent, Slot::None]
            .into_iter()
            .map(|v| l.get(v))
            .collect();
        drop(l);
        assert_eq!(seen, vec![Some(d.clone()), None, Some(d), None]);
        let s = c.stats();
        assert_eq!((s.entries, s.decisions), (5, 2));
    }

    #[test]
    fn bytes_stay_under_the_budget_and_the_least_recently_used_go_first() {
        let budget = 64 << 10;
        let c = AnswerCache::new(budget, 8 << 10);
        let d = reject(4000);
        for i in 0..100 {
            let v = format!("v{i}");
            c.put_decisions("t", None, [(Slot::Bytes(v.as_bytes()), &d)]);
            // Keep v0 in use: it must survive.
            assert!(c.decisions("t", None).get(Slot::Bytes(b"v0")).is_some());
            assert!(c.stats().bytes <= budget, "{:?}", c.stats());
        }
        let s = c.stats();
        assert!(s.evictions > 0);
        assert!(s.entries < 100 && s.entries > 5, "{s:?}");
        let v1 = c.decisions("t", None).get(Slot::Bytes(b"v1"));
        assert_eq!(v1, None, "v1 was the least recently used");
    }

    #[test]
    fn an_answer_over_the_entry_cap_is_not_cached() {
        let c = AnswerCache::new(1 << 20, 4 << 10);
        let big = Reveal::Parts(crate::plan::RevealParts {
            headers: vec!["h".repeat(5000)],
            ..Default::default()
        });
        c.put_reveal("t", None, &big);
        assert_eq!(c.reveal("t", None), None);
        assert_eq!(c.stats().uncached, 1);
        assert_eq!(c.stats().bytes, 0);
        // A shared plan is charged to every decision holding it.
        let plan = Arc::new(EncryptionPlan {
            key_id: "k".into(),
            value: ValuePart::Whole,
            record_key: false,
            headers: vec!["h".repeat(1000)],
        });
        let d = RecordDecision::Encrypt(plan);
        c.put_decisions("t", None, [(Slot::Null, &d), (Slot::Absent, &d)]);
        assert!(c.stats().bytes >= 2 * 1000);
    }
}
