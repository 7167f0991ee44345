"""TEST ONLY: a Python policy that misbehaves the way its config names, to prove Kapsule contains
Python guests. Never bind it to real topics.

Config (one word):
``ok`` (per record: encrypts the whole value under ``kek-ok``), ``loop-decide`` (never returns),
``alloc-decide`` (allocates 1 MiB after 1 MiB until memory runs out), ``print-init`` and
``print-decide`` (5000 lines on stdout, then behave like ``ok``), ``raise-decide`` (an exception
in ``decide``: the SDK refuses the batch), ``trap-decide`` (``SystemExit``, which the SDK does not
catch: the instance traps), ``wrong-count`` (one choice too many, past the SDK),
``bad-index`` (a choice outside ``distinct``, past the SDK), ``bad-key`` (a key id outside the
binding's ``allowed_key_ids``).
"""

from kapsule_policy import Decision, Encrypt, Needs, Policy, TopicPlan, export

MODES = {"ok", "loop-decide", "alloc-decide", "print-init", "print-decide", "raise-decide",
         "trap-decide", "wrong-count", "bad-index", "bad-key"}
_mode = {"now": "ok"}


def _storm(where: str) -> None:
    for i in range(5000):
        print(f"hostile print storm in {where} {i}")


class Hostile(Policy):
    def __init__(self, config: str):
        if config not in MODES:
            raise ValueError(f"hostile: unknown mode `{config}` (one of {', '.join(sorted(MODES))})")
        _mode["now"] = config
        if config == "print-init":
            _storm("init")

    def plan(self, topic, client):
        return TopicPlan.per_record(Needs(value=True))

    def decide(self, topic, client, records):
        mode = _mode["now"]
        if mode == "loop-decide":
            n = 0
            while True:
                n += 1
        if mode == "alloc-decide":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if mode == "print-decide":
            _storm("decide")
        if mode == "raise-decide":
            raise RuntimeError("hostile policy raises in decide")
        if mode == "trap-decide":
            raise SystemExit(3)
        key = "kek-not-allowed" if mode == "bad-key" else "kek-ok"
        return [Decision.encrypt(Encrypt(key).whole_value())] * len(records)


_Exports = export(Hostile)


class WitWorld(_Exports):
    """The SDK's exports, with answers the SDK would never build for the malformed modes."""

    def decide(self, topic, client, batch):
        mode = _mode["now"]
        if mode in ("wrong-count", "bad-index"):
            from wit_world.imports import types as wit

            n = len(batch.records) // 32  # one 32-byte descriptor per record
            choices = [0] * (n + 1) if mode == "wrong-count" else [7] * n
            return wit.Decisions(distinct=[wit.Decision_Pass()], choices=choices)
        return super().decide(topic, client, batch)
