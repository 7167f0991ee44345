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

/// Declares two versions of a WIT variant whose newer version adds cases at the end: `$old`
/// with the `shared` cases, `$new` with them followed by the `added` ones (WIT names, in WIT
/// order), and `From` each for the 0.3 type `$wit`, every case converted as its arm says.
macro_rules! variant_versions {
    (
        $wit:path;
        $(#[$new_attr:meta])* $new:ident;
        $(#[$old_attr:meta])* $old:ident;
        shared { $($case:tt $variant:ident $(($bind:ident: $ty:ty))? => $conv:expr,)* }
        added { $($a_case:tt $a_variant:ident $(($a_bind:ident: $a_ty:ty))? => $a_conv:expr,)* }
    ) => {
        variant_versions!(@one $wit; $(#[$new_attr])* $new;
            $($case $variant $(($bind: $ty))? => $conv,)*
            $($a_case $a_variant $(($a_bind: $a_ty))? => $a_conv,)*);
        variant_versions!(@one $wit; $(#[$old_attr])* $old;
            $($case $variant $(($bind: $ty))? => $conv,)*);
    };
    (
        @one $wit:path; $(#[$attr:meta])* $name:ident;
        $($case:tt $variant:ident $(($bind:ident: $ty:ty))? => $conv:expr,)*
    ) => {
        $(#[$attr])*
        #[derive(ComponentType, Lift)]
        #[component(variant)]
        pub(super) enum $name {
            $(#[component(name = $case)] $variant $(($ty))?,)*
        }

        impl From<$name> for $wit {
            fn from(raw: $name) -> Self {
                match raw {
                    $($name::$variant $(($bind))? => $conv,)*
                }
            }
        }
    };
}

variant_versions! {
    wit::ValuePart;
    /// `value-part` of 0.3.
    RawValuePart;
    /// `value-part` of 0.2 and 0.1: no `schema-fields`.
    RawValuePartV0_2;
    shared {
        "none" None => wit::ValuePart::None,
        "whole" Whole => wit::ValuePart::Whole,
        "json-fields" JsonFields(f: BList<BString>) => wit::ValuePart::JsonFields(strings(f)),
    }
    added {
        "schema-fields" SchemaFields(s: RawSchemaSelection) => {
            wit::ValuePart::SchemaFields(wit::SchemaSelection {
                fields: strings(s.fields),
                tags: strings(s.tags),
            })
        },
    }
}

variant_versions! {
    wit::MemoKey;
    /// `memo-key` of 0.3.
    RawMemoKey;
    /// `memo-key` of 0.2: no `headers`.
    RawMemoKeyV0_2;
    shared {
        "none" None => wit::MemoKey::None,
        "header" Header(h: BString) => wit::MemoKey::Header(h.0),
        "record-key" RecordKey => wit::MemoKey::RecordKey,
        "key-prefix" KeyPrefix(n: u32) => wit::MemoKey::KeyPrefix(n),
    }
    added {
        "headers" Headers(h: BList<BString>) => wit::MemoKey::Headers(strings(h)),
    }
}

/// `decisions` as a view into guest memory. `V` is the `value-part` of the interface version:
/// [`RawValuePart`] for 0.3, [`RawValuePartV0_2`] for 0.2 and 0.1.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawDecisions<V = RawValuePart> {
    distinct: BList<RawDecision<V>>,
    choices: BList<u32>,
}

/// `decisions` of `kapsule:policy@0.2.0` (and 0.1.0), whose `value-part` has no
/// `schema-fields`.
pub(super) type RawDecisionsV0_2 = RawDecisions<RawValuePartV0_2>;

#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawDecision<V> {
    #[component(name = "pass")]
    Pass,
    #[component(name = "encrypt")]
    Encrypt(RawEncrypt<V>),
    #[component(name = "reject")]
    Reject(BString),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawEncrypt<V> {
    #[component(name = "key-id")]
    key_id: BString,
    value: V,
    #[component(name = "record-key")]
    record_key: bool,
    headers: BList<BString>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawSchemaSelection {
    fields: BList<BString>,
    tags: BList<BString>,
}

/// `topic-plan` as a view into guest memory. `V` is the version's `value-part`, `P` what its
/// `per-record` case carries: the defaults are 0.3's.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(super) enum RawTopicPlan<V = RawValuePart, P = RawPerRecordPlan<RawMemoKey>> {
    #[component(name = "pass-all")]
    PassAll,
    #[component(name = "encrypt-all")]
    EncryptAll(RawEncrypt<V>),
    #[component(name = "per-record")]
    PerRecord(P),
    #[component(name = "reject-all")]
    RejectAll(BString),
}

/// `topic-plan` of `kapsule:policy@0.2.0`: no `memo-key::headers`, no `schema-fields`.
pub(super) type RawTopicPlanV0_2 = RawTopicPlan<RawValuePartV0_2, RawPerRecordPlan<RawMemoKeyV0_2>>;

/// `topic-plan` of `kapsule:policy@0.1.0`, whose `per-record` carries only `needs`.
pub(super) type RawTopicPlanV0_1 = RawTopicPlan<RawValuePartV0_2, wit::Needs>;

#[derive(ComponentType, Lift)]
#[component(record)]
pub(super) struct RawPerRecordPlan<M> {
    needs: wit::Needs,
    memo: M,
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

impl<V: Into<wit::ValuePart>> From<RawEncrypt<V>> for wit::Encrypt {
    fn from(raw: RawEncrypt<V>) -> Self {
        wit::Encrypt {
            key_id: raw.key_id.0,
            value: raw.value.into(),
            record_key: raw.record_key,
            headers: strings(raw.headers),
        }
    }
}

impl<V: Into<wit::ValuePart>> From<RawDecisions<V>> for wit::Decisions {
    fn from(raw: RawDecisions<V>) -> Self {
        wit::Decisions {
            distinct: raw
                .distinct
                .0
                .into_iter()
                .map(|d| match d {
                    RawDecision::Pass => wit::Decision::Pass,
                    RawDecision::Reject(m) => wit::Decision::Reject(m.0),
                    RawDecision::Encrypt(e) => wit::Decision::Encrypt(e.into()),
                })
                .collect(),
            choices: raw.choices.0,
        }
    }
}

/// What a version's `per-record` topic plan carries, in the 0.3 types.
pub(super) trait PerRecordPayload {
    /// The 0.3 per-record plan.
    fn into_plan(self) -> wit::PerRecordPlan;
}

impl<M: Into<wit::MemoKey>> PerRecordPayload for RawPerRecordPlan<M> {
    fn into_plan(self) -> wit::PerRecordPlan {
        wit::PerRecordPlan {
            needs: self.needs,
            memo: self.memo.into(),
        }
    }
}

/// A 0.1 `per-record` plan declares no memo key: every record is decided.
impl PerRecordPayload for wit::Needs {
    fn into_plan(self) -> wit::PerRecordPlan {
        wit::PerRecordPlan {
            needs: self,
            memo: wit::MemoKey::None,
        }
    }
}

impl<V: Into<wit::ValuePart>, P: PerRecordPayload> From<RawTopicPlan<V, P>> for wit::TopicPlan {
    fn from(raw: RawTopicPlan<V, P>) -> Self {
        match raw {
            RawTopicPlan::PassAll => wit::TopicPlan::PassAll,
            RawTopicPlan::PerRecord(p) => wit::TopicPlan::PerRecord(p.into_plan()),
            RawTopicPlan::RejectAll(m) => wit::TopicPlan::RejectAll(m.0),
            RawTopicPlan::EncryptAll(e) => wit::TopicPlan::EncryptAll(e.into()),
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
