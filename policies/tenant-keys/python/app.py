"""tenant-keys (Python): encrypts each record under its tenant's key, the tenant from a header.

Config (JSON, every field optional):
``{"header": "tenant", "key_prefix": "tenant-", "on_missing": "reject", "record_key": false,
"memo": true}``

A record with header ``tenant: acme`` is encrypted (whole value) under key ``tenant-acme``. Tenant
names must be 1 to 64 characters of ``[A-Za-z0-9_-]``; others are refused. Records without the
header are refused (``on_missing: "reject"``, default) or passed (``"pass"``).

The plan declares ``memo=Memo.header(<header>)``: the decision depends only on that header, so
Kapsule asks ``decide`` once per tenant it has not seen and reuses the answer for every other
record of that tenant (about 100 ns per record instead of a Python call per record).
``"memo": false`` makes every record be decided (to compare).
"""

import json
import re

from kapsule_policy import Decision, Encrypt, Memo, Needs, Policy, TopicPlan, export

VALID_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")
KNOWN = {"header", "key_prefix", "on_missing", "record_key", "memo"}


class TenantKeys(Policy):
    def __init__(self, config: str):
        c = json.loads(config) if config.strip() else {}
        if not isinstance(c, dict):
            raise ValueError("tenant-keys config: expected a JSON object")
        unknown = sorted(set(c) - KNOWN)
        if unknown:
            raise ValueError(f"tenant-keys config: unknown field(s) {', '.join(unknown)}")
        self.header = c.get("header", "tenant")
        self.key_prefix = c.get("key_prefix", "tenant-")
        on_missing = c.get("on_missing", "reject")
        if on_missing not in ("reject", "pass"):
            raise ValueError(f"tenant-keys config: on_missing `{on_missing}` is not reject|pass")
        if not self.header:
            raise ValueError("tenant-keys config: `header` is empty")
        self.record_key = bool(c.get("record_key", False))
        self.memo = Memo.header(self.header) if c.get("memo", True) else Memo.NONE
        self.missing = (Decision.PASS if on_missing == "pass"
                        else Decision.reject(f"record has no `{self.header}` header"))
        self.invalid = Decision.reject(
            f"header `{self.header}` is not a valid tenant name ([A-Za-z0-9_-], 1 to 64)")
        self.by_tenant = {}  # tenant -> Decision; the same object for every record of a tenant

    def plan(self, topic, client) -> TopicPlan:
        return TopicPlan.per_record(Needs(headers=True), memo=self.memo)

    def decide(self, topic, client, records):
        out = []
        for r in records:
            t = r.header_str(self.header)
            if t is None:
                out.append(self.missing)
                continue
            d = self.by_tenant.get(t)
            if d is None:
                if not VALID_TENANT.fullmatch(t):
                    out.append(self.invalid)
                    continue
                e = Encrypt(self.key_prefix + t).whole_value()
                d = Decision.encrypt(e.with_record_key() if self.record_key else e)
                if len(self.by_tenant) < 10_000:
                    self.by_tenant[t] = d
            out.append(d)
        return out


WitWorld = export(TenantKeys)
