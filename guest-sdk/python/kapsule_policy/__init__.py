"""Write Kapsule encryption policies in Python.

A policy is a WebAssembly component implementing the ``kapsule:policy/policy`` world
(``wit/policy.wit``), built from Python with componentize-py. It tells Kapsule, per topic and when
needed per record, which records to encrypt, under which key id and which parts. It never sees
keys and never encrypts anything itself.

Subclass :class:`Policy` and export it as the component's ``WitWorld``::

    from kapsule_policy import Decision, Encrypt, Memo, Needs, Policy, Reveal, TopicPlan, export

    class Example(Policy):
        def __init__(self, config: str):
            self.prefix = config or "tenant-"

        def plan(self, topic, client):
            # The decision depends only on the `tenant` header: Kapsule asks once per tenant.
            return TopicPlan.per_record(Needs(headers=True), memo=Memo.header("tenant"))

        def decide(self, topic, client, records):
            out = []
            for r in records:
                t = r.header_str("tenant")
                out.append(Decision.encrypt(Encrypt(self.prefix + t).whole_value())
                           if t else Decision.reject("no tenant header"))
            return out

        def reveal(self, topic, client):          # optional; the default is Reveal.ALL
            return Reveal.CIPHERTEXT if client.name == "backup" else Reveal.ALL

    WitWorld = export(Example)

Build with one command, ``kapsule-policy-build app.py policy.wasm`` (installed with this package),
which runs ``componentize-py -w kapsule:policy/policy componentize app -o policy.wasm``;
componentize-py finds the contract through this package's ``componentize-py.toml``.

The generated bindings (``wit_world``) stay underneath: ``plan``, ``decide`` and ``reveal`` get a
:class:`Client` (``client.name`` is the authenticated principal, or ``None``); ``decide``
receives one :class:`RecordView` per record, built lazily over the flat batch Kapsule passes, and
returns one :class:`Decision` per record, which the SDK packs into distinct decisions plus one
index per record. An exception in ``plan``, ``decide`` or ``reveal`` fails closed: the topic's
records or the batch are refused (or the fetch denied) with a message naming the exception type;
the exception's message and traceback go to Kapsule's log at trace level only (they may quote
record contents), where ``kapsule policy check`` shows them for its sample records.

Schema-encoded records: :class:`Schemas` (module :mod:`kapsule_policy.schema`) describes a
record's writer schema during ``decide`` (format, subject, every field path with its tags and
kind) and ``SchemaInfo.select(choose)`` turns the text and bytes fields you choose into paths for
``Encrypt(k).schema_fields(fields=...)``.

What works in the sandbox: pure computation, the standard library's parsing modules (``json``,
``re``, ``base64``...). What does not: files, sockets, environment variables, clocks (time is
frozen at 0), randomness seeded from the host. ``print`` output goes to Kapsule's rate-limited
policy log, like :mod:`kapsule_policy.log`. Never print or log record contents.
"""

from __future__ import annotations

import gc
import traceback  # imported at build time: the sandbox cannot load modules later
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from . import log
from ._types import (
    MECHANISMS,
    Client,
    Decision,
    Encrypt,
    Header,
    Memo,
    Needs,
    Principal,
    RecordView,
    Reveal,
    SchemaSelection,
    TopicPlan,
    ValuePart,
    expand_topic,
    json_pointer,
)
from .schema import SchemaError, SchemaField, SchemaInfo, Schemas, describe_schema

__all__ = [
    "Policy",
    "MECHANISMS",
    "Client",
    "Decision",
    "Encrypt",
    "Header",
    "Memo",
    "Needs",
    "Principal",
    "RecordView",
    "Reveal",
    "SchemaError",
    "SchemaField",
    "SchemaInfo",
    "SchemaSelection",
    "Schemas",
    "TopicPlan",
    "ValuePart",
    "describe_schema",
    "export",
    "expand_topic",
    "json_pointer",
    "log",
]


def _arity(fn: Callable) -> int:
    """Positional parameters of a method, ``self`` included (0.1 methods lack ``client``)."""
    code = getattr(fn, "__code__", None)
    return code.co_argcount if code is not None else -1


def _failed(what: str, e: BaseException) -> str:
    """The refusal message for an exception in ``what``, after sending its traceback to the log.

    The refusal names only the exception type: its message may quote record contents, and this
    text reaches the producer and Kapsule's log. The message and traceback go to the ``log``
    import at trace level, which production builds of Kapsule never emit and
    ``kapsule policy check`` shows (its first line is the refusal message, so the check can
    pair them).
    """
    failed = f"policy {what} raised {type(e).__name__}"
    try:
        log.trace(failed + "\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except Exception:  # the refusal stands even if the report cannot be sent
        pass
    return failed


class Policy:
    """Base class of a policy: built once per instance from the binding's config string.

    ``__init__(self, config)`` runs in the component's ``init`` export; raising any exception
    refuses the module and the message (``str(exc)``) is shown to the operator.
    """

    def __init__(self, config: str) -> None:  # pragma: no cover - documentation only
        pass

    def plan(self, topic: str, client: Client) -> TopicPlan:
        """Decides how to treat a whole topic for records produced by ``client``.

        Called once per (topic, client principal) and module version; the answer is cached.
        An exception refuses the topic's records (``reject_all``) naming the exception type.
        """
        raise NotImplementedError("a policy must implement plan(topic, client)")

    def decide(self, topic: str, client: Client, records: Sequence[RecordView]) -> List[Decision]:
        """One :class:`Decision` per record, in order, for a topic planned ``per_record``.

        Records carry only the parts the plan's :class:`Needs` asked for; with a :class:`Memo`
        other than ``Memo.NONE``, ``records`` holds one record per value not cached yet. The
        default refuses every record, so a policy that plans ``per_record`` without implementing
        this fails closed, as does an exception (every record of the batch is refused).
        """
        return [Decision.reject("policy does not implement per-record decisions")] * len(records)

    def reveal(self, topic: str, client: Client) -> Reveal:
        """What ``client`` may read in clear of ``topic`` on Fetch. Called once per (topic,
        client principal) and module version; cached. The default reveals everything
        (``Reveal.ALL``); an exception denies the fetch."""
        return Reveal.ALL


def export(policy_class: Type[Policy]) -> type:
    """Returns the ``WitWorld`` class componentize-py exports for ``policy_class``.

    Use exactly once, at module level: ``WitWorld = export(MyPolicy)``. Methods written for the
    0.1 SDK (``plan(self, topic)``, ``decide(self, topic, records)``) keep working: the SDK
    leaves the client out for them.
    """
    import wit_world  # generated by componentize-py at build time
    from componentize_py_types import Err

    from ._bindings import client_from_wit, pack, plan_to_wit, reveal_to_wit

    state: Dict[str, Optional[Policy]] = {"policy": None}
    plan_with_client = _arity(getattr(policy_class, "plan", Policy.plan)) != 2
    decide_with_client = _arity(getattr(policy_class, "decide", Policy.decide)) != 3

    class WitWorld(wit_world.WitWorld):
        def init(self, config: str) -> None:
            try:
                state["policy"] = policy_class(config)
            except Exception as e:  # any failure refuses the module, with its message
                msg = str(e) or type(e).__name__
                raise Err(msg)
            # Everything alive now (the interpreter, the standard library, the policy's own
            # state) lives as long as the instance: move it out of the cyclic collector's view,
            # so a full collection during a small `decide` call does not walk the whole heap and
            # run past the call's deadline.
            gc.collect()
            gc.freeze()

        def plan(self, topic: str, client):
            p = state["policy"]
            if p is None:
                return plan_to_wit(TopicPlan.reject_all("policy used before init"))
            try:
                if plan_with_client:
                    answer = p.plan(topic, client_from_wit(client))
                else:
                    answer = p.plan(topic)  # type: ignore[call-arg]
            except Exception as e:
                answer = TopicPlan.reject_all(_failed("plan()", e))
            return plan_to_wit(answer)

        def decide(self, topic: str, client, batch):
            p = state["policy"]
            views = RecordView._views(batch)
            n = len(views)
            if p is None:
                return pack([Decision.reject("policy used before init")] * n, n)
            try:
                if decide_with_client:
                    decided = p.decide(topic, client_from_wit(client), views)
                else:
                    decided = p.decide(topic, views)  # type: ignore[call-arg]
            except Exception as e:
                decided = [Decision.reject(_failed("decide()", e))] * n
            return pack(decided, n)

        def reveal(self, topic: str, client):
            p = state["policy"]
            if p is None:
                return reveal_to_wit(Reveal.deny("policy used before init"))
            try:
                answer = p.reveal(topic, client_from_wit(client))
            except Exception as e:
                answer = Reveal.deny(_failed("reveal()", e))
            return reveal_to_wit(answer)

    WitWorld.__name__ = "WitWorld"
    WitWorld.__qualname__ = "WitWorld"
    return WitWorld
