"""schema-pii (Python): encrypts every field the writer schema tags ``PII`` (Avro, Protobuf or JSON
Schema records in the Confluent wire format), and the whole value of records from chosen tenants.
The Python twin of ``policies/schema-pii/rust``: same config, same decisions.

Config (JSON, every field optional):
``{"key_id": "kek-${topic}", "tags": ["PII"], "whole_value_tenants": ["x"],
"tenant_header": "tenant", "public_header": "class"}``

Per record, from two headers only:

1. ``tenant`` is one of ``whole_value_tenants``: the whole value is encrypted;
2. else ``class: public``: the record passes in clear;
3. else every field tagged with one of ``tags`` is encrypted (Kapsule reads the tags from the
   writer schema in its registry; the value stays valid under its schema id). A value that is
   not in the wire format is refused by Kapsule, never passed in clear.

The decision depends on the two headers together, and the plan says so (``Memo.headers``):
Kapsule asks once per (tenant, class) pair.
"""

import json

from kapsule_policy import Decision, Encrypt, Memo, Needs, Policy, TopicPlan, expand_topic, export

DEFAULTS = {
    "key_id": "kek-${topic}",
    "tags": ["PII"],
    "whole_value_tenants": [],
    "tenant_header": "tenant",
    "public_header": "class",
}


def _strings(c: dict, name: str) -> list:
    v = c[name]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"schema-pii config: `{name}` must be a list of strings")
    return v


class SchemaPii(Policy):
    def __init__(self, config: str):
        c = json.loads(config) if config.strip() else {}
        if not isinstance(c, dict):
            raise ValueError("schema-pii config: expected a JSON object")
        unknown = sorted(set(c) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"schema-pii config: unknown field(s) {', '.join(unknown)}")
        c = {**DEFAULTS, **c}
        for name in ("key_id", "tenant_header", "public_header"):
            if not isinstance(c[name], str):
                raise ValueError(f"schema-pii config: `{name}` must be a string")
        self.key_id = c["key_id"]
        self.tags = _strings(c, "tags")
        if not self.tags or not all(self.tags):
            raise ValueError("schema-pii config: `tags` must list non-empty tags")
        self.whole_value_tenants = frozenset(_strings(c, "whole_value_tenants"))
        self.tenant_header = c["tenant_header"]
        self.public_header = c["public_header"]
        if not self.tenant_header or not self.public_header:
            raise ValueError("schema-pii config: header names must not be empty")
        if self.tenant_header == self.public_header:
            raise ValueError("schema-pii config: `tenant_header` and `public_header` are equal")
        self.memo = Memo.headers([self.tenant_header, self.public_header])

    def plan(self, topic, client) -> TopicPlan:
        return TopicPlan.per_record(Needs(headers=True), memo=self.memo)

    def decide(self, topic, client, records):
        key = Encrypt(expand_topic(self.key_id, topic))
        whole = Decision.encrypt(key.whole_value())
        tagged = Decision.encrypt(key.schema_fields(tags=self.tags))
        out = []
        for r in records:
            if r.header_str(self.tenant_header) in self.whole_value_tenants:
                out.append(whole)
            elif r.header(self.public_header) == b"public":
                out.append(Decision.PASS)
            else:
                out.append(tagged)
        return out


WitWorld = export(SchemaPii)
