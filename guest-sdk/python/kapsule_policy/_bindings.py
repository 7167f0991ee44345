"""Conversions between the hand-written types and componentize-py's generated bindings.

Imported only inside the component (``wit_world`` exists only at build time and in Wasm).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from wit_world.imports import types as wit

from ._types import (MECHANISMS, Client, Decision, Encrypt, Memo, Needs, Principal, Reveal,
                     TopicPlan, ValuePart)


def _value_part(v: ValuePart) -> Any:
    if v.kind == "whole":
        return wit.ValuePart_Whole()
    if v.kind == "json-fields":
        return wit.ValuePart_JsonFields(list(v.pointers))
    if v.kind == "schema-fields":
        sel = v.selection
        return wit.ValuePart_SchemaFields(wit.SchemaSelection(fields=list(sel.fields),
                                                              tags=list(sel.tags)))
    return wit.ValuePart_None_()


def _encrypt(e: Encrypt) -> Any:
    return wit.Encrypt(key_id=e.key_id, value=_value_part(e.value), record_key=e.record_key,
                       headers=list(e.headers))


def _needs(n: Needs) -> Any:
    f = wit.Needs(0)
    if n.key:
        f |= wit.Needs.KEY
    if n.value:
        f |= wit.Needs.VALUE
    if n.headers:
        f |= wit.Needs.HEADERS
    return f


def _memo(m: Memo) -> Any:
    if m.kind == "header":
        return wit.MemoKey_Header(m.header_name)
    if m.kind == "headers":
        return wit.MemoKey_Headers(list(m.header_names))
    if m.kind == "record-key":
        return wit.MemoKey_RecordKey()
    if m.kind == "key-prefix":
        return wit.MemoKey_KeyPrefix(m.prefix_len)
    return wit.MemoKey_None_()


def client_from_wit(c: Any) -> Client:
    """The hand-written :class:`Client` for the generated one."""
    p = c.principal
    if p is None:
        return Client.ANONYMOUS
    m = p.mechanism.value
    return Client(Principal(p.name, MECHANISMS[m] if 0 <= m < len(MECHANISMS) else "unknown"))


def reveal_to_wit(r: Any) -> Any:
    """The generated ``Reveal`` for ``r``; anything that is not a ``Reveal`` denies the fetch
    with a message naming the mistake (fail closed)."""
    if not isinstance(r, Reveal):
        return wit.Reveal_Deny(f"policy reveal() returned {type(r).__name__}, not Reveal")
    if r.kind == "all":
        return wit.Reveal_All()
    if r.kind == "parts":
        return wit.Reveal_Parts(wit.RevealParts(value=r.value, json_fields=list(r.json_fields),
                                                record_key=r.record_key, headers=list(r.headers)))
    if r.kind == "ciphertext":
        return wit.Reveal_Ciphertext()
    return wit.Reveal_Deny(r.message)


def _decision(d: Decision) -> Any:
    if d.kind == "encrypt":
        return wit.Decision_Encrypt(_encrypt(d.encryption))
    if d.kind == "reject":
        return wit.Decision_Reject(d.message)
    return wit.Decision_Pass()


def plan_to_wit(p: Any) -> Any:
    """The generated ``TopicPlan`` for ``p``; anything that is not a ``TopicPlan`` refuses the
    topic with a message naming the mistake (fail closed)."""
    if not isinstance(p, TopicPlan):
        return wit.TopicPlan_RejectAll(f"policy plan() returned {type(p).__name__}, not TopicPlan")
    if p.kind == "encrypt-all":
        return wit.TopicPlan_EncryptAll(_encrypt(p.encryption))
    if p.kind == "per-record":
        return wit.TopicPlan_PerRecord(wit.PerRecordPlan(needs=_needs(p.needs), memo=_memo(p.memo)))
    if p.kind == "reject-all":
        return wit.TopicPlan_RejectAll(p.message)
    return wit.TopicPlan_PassAll()


def pack(decided: Any, n: int) -> Any:
    """Distinct decisions in first-seen order and one index per record. A wrong count or a value
    that is not a ``Decision`` rejects the whole batch with a message saying so (fail closed)."""
    try:
        decided = list(decided)
    except TypeError:
        decided = None
    if decided is None or len(decided) != n:
        got = "a non-list" if decided is None else f"{len(decided)} decisions"
        d = Decision.reject(f"policy decide() returned {got} for {n} records")
        return wit.Decisions(distinct=[_decision(d)], choices=[0] * n)
    # Policies return the same Decision object for records that decide alike, so most records are
    # found by identity (the previous record's, or `by_object`, keyed by id() while `decided`
    # holds every object) without hashing the decision's contents.
    by_object: Dict[int, int] = {}
    index: Dict[Any, int] = {}
    distinct: List[Any] = []
    choices = [0] * n
    last = None
    last_i = 0
    for i, given in enumerate(decided):
        if given is last:
            choices[i] = last_i
            continue
        j = by_object.get(id(given))
        if j is None:
            d = given
            if not isinstance(d, Decision):
                d = Decision.reject(f"policy decide() returned {type(d).__name__}, not Decision")
            j = index.get(d._k)
            if j is None:
                j = len(distinct)
                index[d._k] = j
                distinct.append(_decision(d))
            by_object[id(given)] = j
        choices[i] = j
        last = given
        last_i = j
    return wit.Decisions(distinct=distinct, choices=choices)
