// header-gate (JavaScript): the `classification` header decides each record.
//
// Config: the key-id prefix (default "kek-"); the key id is prefix + topic. `public` passes in
// clear, `restricted` is refused, anything else (or no header) is encrypted: whole value and every
// `pii` header (fail closed).
import { Decision, Encrypt, Needs, TopicPlan, exportPolicy } from 'kapsule-policy';

class HeaderGate {
  constructor(config) {
    this.prefix = config || 'kek-';
    if (/[\x00-\x20]/.test(this.prefix)) {
      throw new Error('header-gate: key prefix must not contain spaces or control characters');
    }
    this.restricted = Decision.reject('restricted records may not be produced to this topic');
  }

  plan(_topic) {
    return TopicPlan.perRecord(new Needs({ headers: true }));
  }

  decide(topic, records) {
    const encrypt = Decision.encrypt(new Encrypt(this.prefix + topic).wholeValue().withHeader('pii'));
    return records.map((r) => {
      const c = r.headerStr('classification');
      return c === 'public' ? Decision.PASS : c === 'restricted' ? this.restricted : encrypt;
    });
  }
}

export const { init, plan, decide } = exportPolicy(HeaderGate);
