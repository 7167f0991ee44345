// pii-fields (JavaScript): encrypts JSON members whose names look like personal data.
//
// Config (JSON, every field optional):
//   {"key_id": "pii-${topic}", "fields": ["email", "ssn", "phone"], "non_json": "whole"}
// Every object member whose name is in `fields` (case-insensitive, at any depth, inside arrays too)
// is encrypted; the value stays JSON. Records without such members and tombstones pass. Values
// that are not JSON are encrypted whole (non_json "whole", fail closed) or refused ("reject").
import { Decision, Encrypt, Needs, TopicPlan, exportPolicy, expandTopic, jsonPointer } from 'kapsule-policy';

const DEFAULT_FIELDS = ['email', 'ssn', 'phone', 'iban', 'card_number', 'date_of_birth'];
const KNOWN = new Set(['key_id', 'fields', 'non_json']);

class PiiFields {
  constructor(config) {
    const c = config.trim() ? JSON.parse(config) : {};
    if (typeof c !== 'object' || c === null || Array.isArray(c)) {
      throw new Error('pii-fields config: expected a JSON object');
    }
    const unknown = Object.keys(c).filter((k) => !KNOWN.has(k));
    if (unknown.length) throw new Error(`pii-fields config: unknown field(s) ${unknown.join(', ')}`);
    this.keyId = c.key_id ?? 'pii-${topic}';
    this.fields = new Set((c.fields ?? DEFAULT_FIELDS).map((f) => String(f).toLowerCase()));
    if (this.fields.size === 0) throw new Error('pii-fields config: `fields` is empty');
    const nonJson = c.non_json ?? 'whole';
    if (nonJson !== 'whole' && nonJson !== 'reject') {
      throw new Error(`pii-fields config: non_json \`${nonJson}\` is not whole|reject`);
    }
    this.rejectNonJson = nonJson === 'reject';
  }

  plan(_topic) {
    return TopicPlan.perRecord(new Needs({ value: true }));
  }

  collect(v, path, out) {
    if (Array.isArray(v)) {
      v.forEach((child, i) => {
        path.push(i);
        this.collect(child, path, out);
        path.pop();
      });
    } else if (typeof v === 'object' && v !== null) {
      for (const [k, child] of Object.entries(v)) {
        path.push(k);
        if (this.fields.has(k.toLowerCase())) out.push(jsonPointer(path));
        else this.collect(child, path, out);
        path.pop();
      }
    }
  }

  decide(topic, records) {
    const keyId = expandTopic(this.keyId, topic);
    const whole = Decision.encrypt(new Encrypt(keyId).wholeValue());
    const notJson = this.rejectNonJson ? Decision.reject('record value is not JSON') : whole;
    return records.map((r) => {
      if (r.value === null) return Decision.PASS;
      let doc;
      try {
        doc = r.valueJson();
      } catch {
        return notJson;
      }
      const found = [];
      this.collect(doc, [], found);
      return found.length ? Decision.encrypt(new Encrypt(keyId).jsonFields(found)) : Decision.PASS;
    });
  }
}

export const { init, plan, decide } = exportPolicy(PiiFields);
