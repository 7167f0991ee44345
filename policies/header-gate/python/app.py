"""header-gate (Python): the ``classification`` header decides each record.

Config: the key-id prefix (default ``kek-``); the key id is prefix + topic.
``public`` passes in clear, ``restricted`` is refused, anything else (or no header) is encrypted:
whole value and every ``pii`` header (fail closed). The decision depends only on the
``classification`` header, which the plan declares (``memo``) so Kapsule decides once per value.
"""

from kapsule_policy import Decision, Encrypt, Memo, Needs, Policy, TopicPlan, export


class HeaderGate(Policy):
    def __init__(self, config: str):
        self.prefix = config or "kek-"
        if any(ch <= " " for ch in self.prefix):
            raise ValueError("header-gate: key prefix must not contain spaces or control characters")
        self.restricted = Decision.reject("restricted records may not be produced to this topic")

    def plan(self, topic, client) -> TopicPlan:
        return TopicPlan.per_record(Needs(headers=True), memo=Memo.header("classification"))

    def decide(self, topic, client, records):
        encrypt = Decision.encrypt(Encrypt(self.prefix + topic).whole_value().with_header("pii"))
        out = []
        for r in records:
            c = r.header("classification")
            out.append(Decision.PASS if c == b"public"
                       else self.restricted if c == b"restricted" else encrypt)
        return out


WitWorld = export(HeaderGate)
