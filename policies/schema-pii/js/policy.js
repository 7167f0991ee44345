// schema-pii (JavaScript): encrypts every field the writer schema tags `PII` (Avro, Protobuf or JSON
// Schema records in the Confluent wire format), and the whole value of records from chosen tenants.
// The JavaScript twin of policies/schema-pii/rust: same config, same decisions.
//
// Config (JSON, every field optional):
//   {"key_id": "kek-${topic}", "tags": ["PII"], "whole_value_tenants": ["x"],
//    "tenant_header": "tenant", "public_header": "class"}
// Per record, from two headers only:
//   1. `tenant` is one of `whole_value_tenants`: the whole value is encrypted;
//   2. else `class: public`: the record passes in clear;
//   3. else every field tagged with one of `tags` is encrypted (Kapsule reads the tags from the
//      writer schema in its registry; the value stays valid under its schema id). A value that is
//      not in the wire format is refused by Kapsule, never passed in clear.
// The decision depends on the two headers together, and the plan says so (`Memo.headers`): Kapsule
// asks once per (tenant, class) pair.
import { Decision, Encrypt, Memo, Needs, TopicPlan, expandTopic, exportPolicy } from 'kapsule-policy';

const DEFAULTS = {
  key_id: 'kek-${topic}',
  tags: ['PII'],
  whole_value_tenants: [],
  tenant_header: 'tenant',
  public_header: 'class',
};

function strings(c, name) {
  const v = c[name];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw new Error(`schema-pii config: \`${name}\` must be a list of strings`);
  }
  return v;
}

class SchemaPii {
  constructor(config) {
    const given = config.trim() ? JSON.parse(config) : {};
    if (typeof given !== 'object' || given === null || Array.isArray(given)) {
      throw new Error('schema-pii config: expected a JSON object');
    }
    const unknown = Object.keys(given).filter((k) => !(k in DEFAULTS));
    if (unknown.length) throw new Error(`schema-pii config: unknown field(s) ${unknown.sort().join(', ')}`);
    const c = { ...DEFAULTS, ...given };
    for (const name of ['key_id', 'tenant_header', 'public_header']) {
      if (typeof c[name] !== 'string') throw new Error(`schema-pii config: \`${name}\` must be a string`);
    }
    this.keyId = c.key_id;
    this.tags = strings(c, 'tags');
    if (this.tags.length === 0 || this.tags.some((t) => t === '')) {
      throw new Error('schema-pii config: `tags` must list non-empty tags');
    }
    this.wholeValueTenants = new Set(strings(c, 'whole_value_tenants'));
    this.tenantHeader = c.tenant_header;
    this.publicHeader = c.public_header;
    if (!this.tenantHeader || !this.publicHeader) throw new Error('schema-pii config: header names must not be empty');
    if (this.tenantHeader === this.publicHeader) {
      throw new Error('schema-pii config: `tenant_header` and `public_header` are equal');
    }
    this.memo = Memo.headers([this.tenantHeader, this.publicHeader]);
  }

  plan(topic, client) {
    return TopicPlan.perRecord(new Needs({ headers: true }), this.memo);
  }

  decide(topic, client, records) {
    const key = new Encrypt(expandTopic(this.keyId, topic));
    const whole = Decision.encrypt(key.wholeValue());
    const tagged = Decision.encrypt(key.schemaFields({ tags: this.tags }));
    return records.map((r) => {
      if (this.wholeValueTenants.has(r.headerStr(this.tenantHeader))) return whole;
      if (r.headerStr(this.publicHeader) === 'public') return Decision.PASS;
      return tagged;
    });
  }
}

export const { init, plan, decide, reveal } = exportPolicy(SchemaPii);
