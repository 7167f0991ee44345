//! Bounded lifting of guest answers.
//!
//! The generated bindings copy a guest's answer into host memory in full, and a component answer
//! may name the same guest bytes many times: a list of a million decisions, each pointing at the
//! same 1 MiB string, would become a terabyte on the host. So `plan` and `decide` answers are
//! lifted into mirror types whose strings ([`BString`]) and lists ([`BList`]) charge their size
//! against a per-call byte budget ([`super::Limits::answer_max_bytes`]) *before* wasmtime copies
//! them; going over the budget stops the lift and fails the call as a malformed answer.
//!
//! The wrappers forward to wasmtime's own `String`/`Vec` lifting, through the
//! `component::__internal` items its derive macros use (stable within the pinned wasmtime).

use std::cell::Cell;

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

use super::bindings::kapsule::policy::types as wit;

/// Host bytes charged per list element on top of its strings (the owned enum/struct).
const ELEMENT_COST: usize = 32;
/// Tag bit of a string length in the latin1+utf16 encoding.
const UTF16_TAG: u32 = 1 << 31;

thread_local! {
    /// Bytes the answer being lifted on this thread may still take; `None` outside a call.
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether the budget stopped the last lift on this thread.
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

fn charge(bytes: usize) -> wasmtime::Result<()> {
    BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some(left) if bytes <= left => {
            b.set(Some(left - bytes));
            Ok(())
        }
        Some(_) => {
            EXCEEDED.with(|e| e.set(true));
            Err(wasmtime::Error::msg(
                "the answer is larger than policy.limits.answer_max_kib",
            ))
        }
    })
}

/// Runs `f` (a guest call) with a lift budget of `max` bytes. Returns `f`'s result and whether
/// the budget stopped the lift.
pub(super) fn with_budget<R>(max: usize, f: impl FnOnce() -> R) -> (R, bool) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(None));
        }
    }
    BUDGET.with(|b| b.set(Some(max)));
    EXCEEDED.with(|e| e.set(false));
    let _reset = Reset;
    let r = f();
    (r, EXCEEDED.with(|e| e.replace(false)))
}

fn flat_len(src: &[wasmtime::ValRaw; 2]) -> u32 {
    src[1].get_u32()
}

fn memory_len(bytes: &[u8]) -> u32 {
    bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(u32::MAX)
}

fn string_cost(len: u32) -> usize {
    let units = (len & !UTF16_TAG) as usize;
    // UTF-16 input may expand to up to 3 UTF-8 bytes per unit.
    let bytes = if len & UTF16_TAG != 0 {
        units * 3
    } else {
        units
    };
    bytes.saturating_add(ELEMENT_COST)
}

/// A `string` whose length is charged against the lift budget before it is copied.
pub(super) struct BString(pub(super) String);

// SAFETY: forwards every item to `String`'s implementation, whose representation it shares.
#[allow(unsafe_code)]
unsafe impl ComponentType for BString {
    type Lower = <String as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <String as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: forwards to `String`'s implementation after charging the budget.
#[allow(unsafe_code)]
unsafe impl Lift for BString {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        charge(string_cost(flat_len(src)))?;
        <String as Lift>::linear_lift_from_flat(cx, ty, src).map(BString)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        charge(string_cost(memory_len(bytes)))?;
        <String as Lift>::linear_lift_from_memory(cx, ty, bytes).map(BString)
    }
}

/// A `list<E>` whose element count is charged against the lift budget before it is copied.
pub(super) struct BList<E>(pub(super) Vec<E>);

fn list_cost<E>(len: u32) -> usize {
    (len as usize).saturating_mul(std::mem::size_of::<E>().max(4) + ELEMENT_COST)
}

// SAFETY: forwards every item to `Vec<E>`'s implementation, whose representation it shares.
#[allow(unsafe_code)]
unsafe impl<E: ComponentType> ComponentType for BList<E> {
    type Lower = <Vec<E> as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <Vec<E> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<E> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: forwards to `Vec<E>`'s implementation after charging the budget.
#[allow(unsafe_code)]
unsafe impl<E: Lift> Lift for BList<E> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        charge(list_cost::<E>(flat_len(src)))?;
        <Vec<E> as Lift>::linear_lift_from_flat(cx, ty, src).map(BList)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        charge(list_cost::<E>(memory_len(bytes)))?;
        <Vec<E> as Lift>::linear_lift_from_memory(cx, ty, bytes).map(BList)
    }
}

/// `decisions` as a view into guest memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawDecisions {
    distinct: BList<RawDecision>,
    choices: BList<u32>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawDecision {
    #[component(name = "pass")]
    Pass,
    #[component(name = "encrypt")]
    Encrypt(RawEncrypt),
    #[component(name = "reject")]
    Reject(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawEncrypt {
    #[component(name = "key-id")]
    key_id: BString,
    value: RawValuePart,
    #[component(name = "record-key")]
    record_key: bool,
    headers: BList<BString>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawValuePart {
    #[component(name = "none")]
    None,
    #[component(name = "whole")]
    Whole,
    #[component(name = "json-fields")]
    JsonFields(BList<BString>),
    #[component(name = "schema-fields")]
    SchemaFields(RawSchemaSelection),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawSchemaSelection {
    fields: BList<BString>,
    tags: BList<BString>,
}

/// `topic-plan` (0.3) as a view into guest memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawTopicPlan {
    #[component(name = "pass-all")]
    PassAll,
    #[component(name = "encrypt-all")]
    EncryptAll(RawEncrypt),
    #[component(name = "per-record")]
    PerRecord(RawPerRecordPlan),
    #[component(name = "reject-all")]
    RejectAll(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawPerRecordPlan {
    needs: wit::Needs,
    memo: RawMemoKey,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawMemoKey {
    #[component(name = "none")]
    None,
    #[component(name = "header")]
    Header(BString),
    #[component(name = "record-key")]
    RecordKey,
    #[component(name = "key-prefix")]
    KeyPrefix(u32),
    #[component(name = "headers")]
    Headers(BList<BString>),
}

/// `decisions` of `kapsule:policy@0.2.0` (and 0.1.0), whose `value-part` has no
/// `schema-fields`.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawDecisionsV0_2 {
    distinct: BList<RawDecisionV0_2>,
    choices: BList<u32>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawDecisionV0_2 {
    #[component(name = "pass")]
    Pass,
    #[component(name = "encrypt")]
    Encrypt(RawEncryptV0_2),
    #[component(name = "reject")]
    Reject(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawEncryptV0_2 {
    #[component(name = "key-id")]
    key_id: BString,
    value: RawValuePartV0_2,
    #[component(name = "record-key")]
    record_key: bool,
    headers: BList<BString>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawValuePartV0_2 {
    #[component(name = "none")]
    None,
    #[component(name = "whole")]
    Whole,
    #[component(name = "json-fields")]
    JsonFields(BList<BString>),
}

/// `topic-plan` of `kapsule:policy@0.2.0`: no `memo-key::headers`, no `schema-fields`.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawTopicPlanV0_2 {
    #[component(name = "pass-all")]
    PassAll,
    #[component(name = "encrypt-all")]
    EncryptAll(RawEncryptV0_2),
    #[component(name = "per-record")]
    PerRecord(RawPerRecordPlanV0_2),
    #[component(name = "reject-all")]
    RejectAll(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawPerRecordPlanV0_2 {
    needs: wit::Needs,
    memo: RawMemoKeyV0_2,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawMemoKeyV0_2 {
    #[component(name = "none")]
    None,
    #[component(name = "header")]
    Header(BString),
    #[component(name = "record-key")]
    RecordKey,
    #[component(name = "key-prefix")]
    KeyPrefix(u32),
}

/// `topic-plan` of `kapsule:policy@0.1.0`, whose `per-record` carries only `needs`.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawTopicPlanV0_1 {
    #[component(name = "pass-all")]
    PassAll,
    #[component(name = "encrypt-all")]
    EncryptAll(RawEncryptV0_2),
    #[component(name = "per-record")]
    PerRecord(wit::Needs),
    #[component(name = "reject-all")]
    RejectAll(BString),
}

/// `reveal` as a view into guest memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawReveal {
    #[component(name = "all")]
    All,
    #[component(name = "parts")]
    Parts(RawRevealParts),
    #[component(name = "ciphertext")]
    Ciphertext,
    #[component(name = "deny")]
    Deny(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawRevealParts {
    value: bool,
    #[component(name = "json-fields")]
    json_fields: BList<BString>,
    #[component(name = "record-key")]
    record_key: bool,
    headers: BList<BString>,
}

fn strings(l: BList<BString>) -> Vec<String> {
    l.0.into_iter().map(|s| s.0).collect()
}

fn encrypt(e: RawEncrypt) -> wit::Encrypt {
    wit::Encrypt {
        key_id: e.key_id.0,
        value: match e.value {
            RawValuePart::None => wit::ValuePart::None,
            RawValuePart::Whole => wit::ValuePart::Whole,
            RawValuePart::JsonFields(f) => wit::ValuePart::JsonFields(strings(f)),
            RawValuePart::SchemaFields(s) => wit::ValuePart::SchemaFields(wit::SchemaSelection {
                fields: strings(s.fields),
                tags: strings(s.tags),
            }),
        },
        record_key: e.record_key,
        headers: strings(e.headers),
    }
}

/// A 0.2 (or 0.1) `encrypt` in the 0.3 types: the same, its value part a subset.
fn encrypt_v0_2(e: RawEncryptV0_2) -> wit::Encrypt {
    wit::Encrypt {
        key_id: e.key_id.0,
        value: match e.value {
            RawValuePartV0_2::None => wit::ValuePart::None,
            RawValuePartV0_2::Whole => wit::ValuePart::Whole,
            RawValuePartV0_2::JsonFields(f) => wit::ValuePart::JsonFields(strings(f)),
        },
        record_key: e.record_key,
        headers: strings(e.headers),
    }
}

impl From<RawDecisionsV0_2> for wit::Decisions {
    fn from(raw: RawDecisionsV0_2) -> Self {
        wit::Decisions {
            distinct: raw
                .distinct
                .0
                .into_iter()
                .map(|d| match d {
                    RawDecisionV0_2::Pass => wit::Decision::Pass,
                    RawDecisionV0_2::Reject(m) => wit::Decision::Reject(m.0),
                    RawDecisionV0_2::Encrypt(e) => wit::Decision::Encrypt(encrypt_v0_2(e)),
                })
                .collect(),
            choices: raw.choices.0,
        }
    }
}

impl From<RawTopicPlanV0_2> for wit::TopicPlan {
    fn from(raw: RawTopicPlanV0_2) -> Self {
        match raw {
            RawTopicPlanV0_2::PassAll => wit::TopicPlan::PassAll,
            RawTopicPlanV0_2::PerRecord(p) => wit::TopicPlan::PerRecord(wit::PerRecordPlan {
                needs: p.needs,
                memo: match p.memo {
                    RawMemoKeyV0_2::None => wit::MemoKey::None,
                    RawMemoKeyV0_2::Header(h) => wit::MemoKey::Header(h.0),
                    RawMemoKeyV0_2::RecordKey => wit::MemoKey::RecordKey,
                    RawMemoKeyV0_2::KeyPrefix(n) => wit::MemoKey::KeyPrefix(n),
                },
            }),
            RawTopicPlanV0_2::RejectAll(m) => wit::TopicPlan::RejectAll(m.0),
            RawTopicPlanV0_2::EncryptAll(e) => wit::TopicPlan::EncryptAll(encrypt_v0_2(e)),
        }
    }
}

impl From<RawDecisions> for wit::Decisions {
    fn from(raw: RawDecisions) -> Self {
        wit::Decisions {
            distinct: raw
                .distinct
                .0
                .into_iter()
                .map(|d| match d {
                    RawDecision::Pass => wit::Decision::Pass,
                    RawDecision::Reject(m) => wit::Decision::Reject(m.0),
                    RawDecision::Encrypt(e) => wit::Decision::Encrypt(encrypt(e)),
                })
                .collect(),
            choices: raw.choices.0,
        }
    }
}

impl From<RawTopicPlan> for wit::TopicPlan {
    fn from(raw: RawTopicPlan) -> Self {
        match raw {
            RawTopicPlan::PassAll => wit::TopicPlan::PassAll,
            RawTopicPlan::PerRecord(p) => wit::TopicPlan::PerRecord(wit::PerRecordPlan {
                needs: p.needs,
                memo: match p.memo {
                    RawMemoKey::None => wit::MemoKey::None,
                    RawMemoKey::Header(h) => wit::MemoKey::Header(h.0),
                    RawMemoKey::RecordKey => wit::MemoKey::RecordKey,
                    RawMemoKey::KeyPrefix(n) => wit::MemoKey::KeyPrefix(n),
                    RawMemoKey::Headers(h) => wit::MemoKey::Headers(strings(h)),
                },
            }),
            RawTopicPlan::RejectAll(m) => wit::TopicPlan::RejectAll(m.0),
            RawTopicPlan::EncryptAll(e) => wit::TopicPlan::EncryptAll(encrypt(e)),
        }
    }
}

impl From<RawTopicPlanV0_1> for wit::TopicPlan {
    /// A 0.1 `per-record` plan declares no memo key: every record is decided.
    fn from(raw: RawTopicPlanV0_1) -> Self {
        match raw {
            RawTopicPlanV0_1::PassAll => wit::TopicPlan::PassAll,
            RawTopicPlanV0_1::PerRecord(needs) => wit::TopicPlan::PerRecord(wit::PerRecordPlan {
                needs,
                memo: wit::MemoKey::None,
            }),
            RawTopicPlanV0_1::RejectAll(m) => wit::TopicPlan::RejectAll(m.0),
            RawTopicPlanV0_1::EncryptAll(e) => wit::TopicPlan::EncryptAll(encrypt_v0_2(e)),
        }
    }
}

impl From<RawReveal> for wit::Reveal {
    fn from(raw: RawReveal) -> Self {
        match raw {
            RawReveal::All => wit::Reveal::All,
            RawReveal::Ciphertext => wit::Reveal::Ciphertext,
            RawReveal::Deny(m) => wit::Reveal::Deny(m.0),
            RawReveal::Parts(p) => wit::Reveal::Parts(wit::RevealParts {
                value: p.value,
                json_fields: strings(p.json_fields),
                record_key: p.record_key,
                headers: strings(p.headers),
            }),
        }
    }
}
