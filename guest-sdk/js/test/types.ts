// Type-checks a TypeScript policy against kapsule-policy.d.ts:
//   node_modules/.bin/tsc --noEmit --strict --target es2022 --module es2022 --moduleResolution bundler test/types.ts
import {
  Client, Decision, Encrypt, Memo, Needs, RecordView, Reveal, SchemaError, SchemaInfo, Schemas, TopicPlan, exportPolicy, log,
} from '../kapsule-policy';

/** Every text or bytes field named like `email`, or null when the schema cannot be had. */
function emailFields(schemas: Schemas, id: number): string[] | null {
  try {
    const info: SchemaInfo = schemas.describe(id);
    const format: 'avro' | 'protobuf' | 'json' = info.format;
    if (info.subject !== null && format === 'json' && info.version === null) return [];
    return info.select((f) => f.path.includes('email') || (f.kind === 'bytes' && f.tags.includes('PII')));
  } catch (e) {
    if (e instanceof SchemaError) return null;
    throw e;
  }
}

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
    const schemas = new Schemas();
    return records.map((r) => {
      const chosen = r.valueSchemaId === null ? null : emailFields(schemas, r.valueSchemaId);
      if (chosen !== null && chosen.length > 0) {
        return Decision.encrypt(new Encrypt('kek-schema').schemaFields({ fields: chosen }));
      }
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
