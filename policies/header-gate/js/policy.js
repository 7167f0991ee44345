// header-gate (JavaScript): the `classification` header decides each record.
//
// Config: the key-id prefix (default "kek-"); the key id is prefix + topic. `public` passes in
// clear, `restricted` is refused, anything else (or no header) is encrypted: whole value and every
// `pii` header (fail closed). The decision depends only on the `classification` header, which the
// plan declares (memo) so Kapsule decides once per value.
import { Decision, Encrypt, Memo, Needs, TopicPlan, exportPolicy } from 'kapsule-policy';

class HeaderGate {
  constructor(config) {
    this.prefix = config || 'kek-';
    if (/[\x00-\x20]/.test(this.prefix)) {
      throw new Error('header-gate: key prefix must not contain spaces or control characters');
    }
    this.restricted = Decision.reject('restricted records may not be produced to this topic');
  }

  plan(_topic, _client) {
    return TopicPlan.perRecord(new Needs({ headers: true }), Memo.header('classification'));
  }

  decide(topic, _client, records) {
    const encrypt = Decision.encrypt(new Encrypt(this.prefix + topic).wholeValue().withHeader('pii'));
    return records.map((r) => {
      const c = r.headerStr('classification');
      return c === 'public' ? Decision.PASS : c === 'restricted' ? this.restricted : encrypt;
    });
  }
}

export const { init, plan, decide, reveal } = exportPolicy(HeaderGate);
