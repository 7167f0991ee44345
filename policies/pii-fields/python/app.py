"""pii-fields (Python): encrypts JSON members whose names look like personal data.

Config (JSON, every field optional):
``{"key_id": "pii-${topic}", "fields": ["email", "ssn", "phone"], "non_json": "whole",
"pii_hidden_from": ["analytics"]}``

Every object member whose name is in ``fields`` (case-insensitive, at any depth, inside arrays
too) is encrypted; the value stays JSON. Records without such members and tombstones pass.
Values that are not JSON are encrypted whole (``non_json: "whole"``, fail closed) or refused
(``"reject"``).

Who may read: principals named in ``pii_hidden_from`` (default ``["analytics"]``) read these
records with the PII fields still ciphertext (``Reveal.parts()``: nothing decrypted, the rest of
the JSON is clear anyway); everyone else reads everything (``Reveal.ALL``).
"""

import json

from kapsule_policy import (Decision, Encrypt, Needs, Policy, Reveal, TopicPlan, expand_topic,
                            export, json_pointer)

DEFAULT_FIELDS = ["email", "ssn", "phone", "iban", "card_number", "date_of_birth"]
KNOWN = {"key_id", "fields", "non_json", "pii_hidden_from"}


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
        hidden = c.get("pii_hidden_from", ["analytics"])
        if not isinstance(hidden, list) or not all(isinstance(h, str) for h in hidden):
            raise ValueError("pii-fields config: `pii_hidden_from` must be a list of principal names")
        self.hidden_from = set(hidden)

    def plan(self, topic, client) -> TopicPlan:
        return TopicPlan.per_record(Needs(value=True))

    def reveal(self, topic, client) -> Reveal:
        # PII fields stay ciphertext for the listed principals; the rest of the JSON is clear.
        return Reveal.parts() if client.name in self.hidden_from else Reveal.ALL

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

    def decide(self, topic, client, records):
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
