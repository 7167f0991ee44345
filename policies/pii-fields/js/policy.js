// pii-fields (JavaScript): encrypts JSON members whose names look like personal data.
//
// Config (JSON, every field optional):
//   {"key_id": "pii-${topic}", "fields": ["email", "ssn", "phone"], "non_json": "whole",
//    "pii_hidden_from": ["analytics"]}
// Every object member whose name is in `fields` (case-insensitive, at any depth, inside arrays too)
// is encrypted; the value stays JSON. Records without such members and tombstones pass. Values
// that are not JSON are encrypted whole (non_json "whole", fail closed) or refused ("reject").
//
// Who may read: principals named in `pii_hidden_from` (default ["analytics"]) read these records
// with the PII fields still ciphertext (Reveal.parts(): nothing decrypted, the rest of the JSON is
// clear anyway); everyone else reads everything (Reveal.ALL).
import { Decision, Encrypt, Needs, Reveal, TopicPlan, exportPolicy, expandTopic, jsonPointer } from 'kapsule-policy';

const DEFAULT_FIELDS = ['email', 'ssn', 'phone', 'iban', 'card_number', 'date_of_birth'];
const KNOWN = new Set(['key_id', 'fields', 'non_json', 'pii_hidden_from']);

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
    const hidden = c.pii_hidden_from ?? ['analytics'];
    if (!Array.isArray(hidden) || !hidden.every((h) => typeof h === 'string')) {
      throw new Error('pii-fields config: `pii_hidden_from` must be a list of principal names');
    }
    this.hiddenFrom = new Set(hidden);
  }

  plan(_topic, _client) {
    return TopicPlan.perRecord(new Needs({ value: true }));
  }

  reveal(_topic, client) {
    // PII fields stay ciphertext for the listed principals; the rest of the JSON is clear.
    return this.hiddenFrom.has(client.name) ? Reveal.parts() : Reveal.ALL;
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

  decide(topic, _client, records) {
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

export const { init, plan, decide, reveal } = exportPolicy(PiiFields);
