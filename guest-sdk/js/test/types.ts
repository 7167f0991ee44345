// Type-checks a TypeScript policy against kapsule-policy.d.ts:
//   node_modules/.bin/tsc --noEmit --strict --target es2022 --module es2022 --moduleResolution bundler test/types.ts
import {
  Client, Decision, Encrypt, Memo, Needs, RecordView, Reveal, TopicPlan, exportPolicy, log,
} from '../kapsule-policy';

class Typed {
  private readonly prefix: string;
  constructor(config: string) {
    this.prefix = config || 'tenant-';
  }
  plan(_topic: string, _client: Client): TopicPlan {
    return TopicPlan.perRecord(new Needs({ headers: true }), Memo.headers(['tenant', 'class']));
  }
  decide(_topic: string, client: Client, records: RecordView[]): Decision[] {
    if (client.principal?.mechanism === 'mtls') log.debug('mtls client');
    return records.map((r) => {
      const t = r.headerStr('tenant');
      const schemaId: number | null = r.valueSchemaId ?? r.keySchemaId;
      if (schemaId !== null && t === null) {
        return Decision.encrypt(new Encrypt('kek-schema').schemaFields({ tags: ['PII'], fields: new Set(['customer.email']) }));
      }
      return t ? Decision.encrypt(new Encrypt(this.prefix + t).wholeValue()) : Decision.reject('no tenant');
    });
  }
  reveal(_topic: string, client: Client): Reveal {
    return client.name === 'analytics' ? Reveal.parts({ jsonFields: ['/customer/email'] }) : Reveal.ALL;
  }
}

export const { init, plan, decide, reveal } = exportPolicy(Typed);
