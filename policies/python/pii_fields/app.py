"""pii-fields (Python): encrypts JSON members whose names look like personal data.

Config (JSON, every field optional):
``{"key_id": "pii-${topic}", "fields": ["email", "ssn", "phone"], "non_json": "whole"}``

Every object member whose name is in ``fields`` (case-insensitive, at any depth, inside arrays
too) is encrypted; the value stays JSON. Records without such members and tombstones pass.
Values that are not JSON are encrypted whole (``non_json: "whole"``, fail closed) or refused
(``"reject"``).
"""

import json

from kapsule_policy import (Decision, Encrypt, Needs, Policy, TopicPlan, expand_topic, export,
                            json_pointer)

DEFAULT_FIELDS = ["email", "ssn", "phone", "iban", "card_number", "date_of_birth"]
KNOWN = {"key_id", "fields", "non_json"}


class PiiFields(Policy):
    def __init__(self, config: str):
        c = json.loads(config) if config.strip() else {}
        if not isinstance(c, dict):
            raise ValueError("pii-fields config: expected a JSON object")
        unknown = sorted(set(c) - KNOWN)
        if unknown:
            raise ValueError(f"pii-fields config: unknown field(s) {', '.join(unknown)}")
        self.key_id = c.get("key_id", "pii-${topic}")
        self.fields = {f.lower() for f in c.get("fields", DEFAULT_FIELDS)}
        if not self.fields:
            raise ValueError("pii-fields config: `fields` is empty")
        non_json = c.get("non_json", "whole")
        if non_json not in ("whole", "reject"):
            raise ValueError(f"pii-fields config: non_json `{non_json}` is not whole|reject")
        self.reject_non_json = non_json == "reject"

    def plan(self, topic: str) -> TopicPlan:
        return TopicPlan.per_record(Needs(value=True))

    def _collect(self, v, path, out):
        if isinstance(v, dict):
            for k, child in v.items():
                path.append(k)
                if k.lower() in self.fields:
                    out.append(json_pointer(path))
                else:
                    self._collect(child, path, out)
                path.pop()
        elif isinstance(v, list):
            for i, child in enumerate(v):
                path.append(i)
                self._collect(child, path, out)
                path.pop()

    def decide(self, topic, records):
        key_id = expand_topic(self.key_id, topic)
        whole = Decision.encrypt(Encrypt(key_id).whole_value())
        not_json = Decision.reject("record value is not JSON") if self.reject_non_json else whole
        out = []
        for r in records:
            value = r.value
            if value is None:
                out.append(Decision.PASS)
                continue
            try:
                doc = json.loads(value)
            except ValueError:
                out.append(not_json)
                continue
            found = []
            self._collect(doc, [], found)
            out.append(Decision.encrypt(Encrypt(key_id).json_fields(found)) if found
                       else Decision.PASS)
        return out


WitWorld = export(PiiFields)
