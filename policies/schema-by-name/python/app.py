"""schema-by-name (Python): encrypts the string and bytes fields of schema-encoded records (Avro,
Protobuf or JSON Schema in the Confluent wire format) whose dotted path contains one of ``words``,
choosing the fields itself from the writer schema Kapsule describes (``describe-schema``). The
Python twin of ``policies/schema-by-name/rust``: same config, same decisions.

Config (JSON, every field optional): ``{"key_id": "kek-${topic}", "words": ["email"],
"fallback_tags": ["PII"], "subject": "${topic}-value"}``.

Per record (with ``subject`` set, a described schema registered under another subject, or under
none the registry names, is refused first):

1. a value in the wire format whose schema Kapsule describes: encrypt the text and bytes fields
   whose path contains a word (none matching: the record passes);
2. a value in the wire format whose schema Kapsule could not describe (registry down, id
   unknown): encrypt the fields tagged ``fallback_tags``, which makes Kapsule's record stage fetch
   the schema itself and refuse the record if it still cannot, never pass it in clear;
3. any other value: encrypt the whole value.

The decision depends on the value's schema id, which no memo key expresses: every record is
decided (schemas are described once per id and batch).

Build: ``kapsule-policy-build app.py schema-by-name.wasm``.
"""

import json

from kapsule_policy import (Decision, Encrypt, Needs, Policy, SchemaError, Schemas, TopicPlan,
                            expand_topic, export)

DEFAULTS = {
    "key_id": "kek-${topic}",
    "words": ["email"],
    "fallback_tags": ["PII"],
    "subject": None,
}


def _names(c: dict, name: str) -> list:
    v = c[name]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise ValueError(f"schema-by-name config: `{name}` must list non-empty strings")
    return v


class SchemaByName(Policy):
    def __init__(self, config: str):
        c = json.loads(config) if config.strip() else {}
        if not isinstance(c, dict):
            raise ValueError("schema-by-name config: expected a JSON object")
        unknown = sorted(set(c) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"schema-by-name config: unknown field(s) {', '.join(unknown)}")
        c = {**DEFAULTS, **c}
        if not isinstance(c["key_id"], str):
            raise ValueError("schema-by-name config: `key_id` must be a string")
        if c["subject"] is not None and not isinstance(c["subject"], str):
            raise ValueError("schema-by-name config: `subject` must be a string")
        self.key_id = c["key_id"]
        self.words = _names(c, "words")
        self.fallback_tags = _names(c, "fallback_tags")
        self.subject = c["subject"]

    def plan(self, topic, client):
        # Schema ids are shown whatever `needs` asks for: no record bytes are needed.
        return TopicPlan.per_record(Needs())

    def decide(self, topic, client, records):
        key = Encrypt(expand_topic(self.key_id, topic))
        subject = None if self.subject is None else expand_topic(self.subject, topic)
        whole = Decision.encrypt(key.whole_value())
        fallback = Decision.encrypt(key.schema_fields(tags=self.fallback_tags))
        schemas = Schemas()
        # One decision per schema id: records of the same schema share the same Decision object.
        by_id = {}
        out = []
        for r in records:
            sid = r.value_schema_id
            if sid is None:
                out.append(whole)
                continue
            d = by_id.get(sid)
            if d is None:
                d = by_id[sid] = self._decide_schema(key, subject, fallback, schemas, sid)
            out.append(d)
        return out

    def _decide_schema(self, key, subject, fallback, schemas, sid):
        try:
            schema = schemas.describe(sid)
        except SchemaError:
            return fallback
        if subject is not None and schema.subject != subject:
            return Decision.reject(f"schema id {sid} is registered under subject "
                                   f"{schema.subject!r}, not {subject!r}")
        chosen = schema.select(lambda f: any(w in f.path for w in self.words))
        return Decision.encrypt(key.schema_fields(fields=chosen)) if chosen else Decision.PASS


WitWorld = export(SchemaByName)
