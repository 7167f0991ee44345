// tenant-keys (JavaScript): encrypts each record under its tenant's key, the tenant from a header.
//
// Config (JSON, every field optional):
//   {"header": "tenant", "key_prefix": "tenant-", "on_missing": "reject", "record_key": false,
//    "memo": true}
// A record with header `tenant: acme` is encrypted (whole value) under key `tenant-acme`. Tenant
// names must be 1 to 64 characters of [A-Za-z0-9_-]; others are refused. Records without the header
// are refused (on_missing "reject", default) or passed ("pass").
//
// The plan declares `memo: Memo.header(<header>)`: the decision depends only on that header, so
// Kapsule asks `decide` once per tenant it has not seen and reuses the answer for every other
// record of that tenant (about 100 ns per record instead of a JavaScript call per record).
// `"memo": false` makes every record be decided (to compare).
import { Decision, Encrypt, Memo, Needs, TopicPlan, exportPolicy } from 'kapsule-policy';

const VALID_TENANT = /^[A-Za-z0-9_-]{1,64}$/;
const KNOWN = new Set(['header', 'key_prefix', 'on_missing', 'record_key', 'memo']);

class TenantKeys {
  constructor(config) {
    const c = config.trim() ? JSON.parse(config) : {};
    if (typeof c !== 'object' || c === null || Array.isArray(c)) {
      throw new Error('tenant-keys config: expected a JSON object');
    }
    const unknown = Object.keys(c).filter((k) => !KNOWN.has(k));
    if (unknown.length) throw new Error(`tenant-keys config: unknown field(s) ${unknown.join(', ')}`);
    this.header = c.header ?? 'tenant';
    this.keyPrefix = c.key_prefix ?? 'tenant-';
    const onMissing = c.on_missing ?? 'reject';
    if (onMissing !== 'reject' && onMissing !== 'pass') {
      throw new Error(`tenant-keys config: on_missing \`${onMissing}\` is not reject|pass`);
    }
    if (!this.header) throw new Error('tenant-keys config: `header` is empty');
    this.recordKey = !!c.record_key;
    this.memo = (c.memo ?? true) ? Memo.header(this.header) : Memo.NONE;
    this.missing = onMissing === 'pass' ? Decision.PASS : Decision.reject(`record has no \`${this.header}\` header`);
    this.invalid = Decision.reject(`header \`${this.header}\` is not a valid tenant name ([A-Za-z0-9_-], 1 to 64)`);
    this.byTenant = new Map(); // tenant -> the same Decision object for every record of a tenant
  }

  plan(_topic, _client) {
    return TopicPlan.perRecord(new Needs({ headers: true }), this.memo);
  }

  decide(_topic, _client, records) {
    return records.map((r) => {
      const t = r.headerStr(this.header);
      if (t === null) return this.missing;
      let d = this.byTenant.get(t);
      if (d === undefined) {
        if (!VALID_TENANT.test(t)) return this.invalid;
        let e = new Encrypt(this.keyPrefix + t).wholeValue();
        if (this.recordKey) e = e.withRecordKey();
        d = Decision.encrypt(e);
        if (this.byTenant.size < 10000) this.byTenant.set(t, d);
      }
      return d;
    });
  }
}

export const { init, plan, decide, reveal } = exportPolicy(TenantKeys);
