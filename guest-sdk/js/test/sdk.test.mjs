// Unit tests of the JavaScript SDK and the JavaScript example policies, run in plain Node (no
// Wasm): `node --test guest-sdk/js/test/`. Each policy is bundled with the SDK exactly as build.mjs
// does (bundlePolicy), the host `log` import is replaced by a recorder, and the exports are driven with values
// shaped as componentize-js passes the WIT types ({tag, val} variants, camelCase records).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile, mkdtemp } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { bundlePolicy } from '../build.mjs';

const sdkDir = dirname(dirname(fileURLToPath(import.meta.url)));
const repo = dirname(dirname(sdkDir));
const work = await mkdtemp(join(tmpdir(), 'kapsule-js-sdk-'));
let n = 0;

const hostLog = join(work, 'host-log.mjs');
await writeFile(hostLog, 'export default (l, m) => globalThis.__logged.push([l, m]);\n');
// The host's `describe-schema`, faked by `globalThis.__describeSchema` (a test sets it).
const hostDescribeSchema = join(work, 'host-describe-schema.mjs');
await writeFile(hostDescribeSchema, 'export default (id) => globalThis.__describeSchema(id);\n');

/**
 * The module built from policy file `entry` (bundled as build.mjs does), with `log` recorded and
 * `describe-schema` answered by `globalThis.__describeSchema`.
 */
async function loadFile(entry) {
  const f = join(work, `m${n++}.mjs`);
  await writeFile(f, await bundlePolicy(entry, { hostLog, hostDescribeSchema }));
  globalThis.__logged = [];
  return import(pathToFileURL(f).href);
}
/** The module built from policy source `app`. */
async function load(app) {
  const f = join(work, `app${n++}.mjs`);
  await writeFile(f, app);
  return loadFile(f);
}
const example = async (name) => loadFile(join(repo, 'policies', name, 'js', 'policy.js'));

/**
 * A batch as componentize-js passes it, in Kapsule's flat layout (wit/policy.wit), from
 * [[key, value, [[hkey, hvalue], ...]], ...] (strings, Uint8Arrays, or null). Record i has
 * timestamp `timestamps[i]` (default 1000 + i). The schema ids are read from values and keys in
 * the Confluent wire format as Kapsule reads them, unless `schemaIds` gives them ([value id, key
 * id] per record, null for absent). With `unaligned`, the descriptor bytes start at an odd offset
 * of their buffer, as a guest's lifted list may.
 */
function batch(records, { timestamps = [], unaligned = false, schemaIds } = {}) {
  const bytes = [];
  const enc = new TextEncoder();
  const desc = [];
  const hdrs = [];
  const ids = [];
  const u32 = (out, v) => out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  const span = (out, s) => {
    if (s === null) { u32(out, 0); u32(out, 0xffffffff); return; }
    const b = typeof s === 'string' ? enc.encode(s) : s;
    u32(out, bytes.length);
    u32(out, b.length);
    bytes.push(...b);
  };
  const wireId = (s) => {
    if (s === null || typeof s === 'string' || s.length < 5 || s[0] !== 0) return 0xffffffff;
    return ((s[1] << 24) | (s[2] << 16) | (s[3] << 8) | s[4]) >>> 0;
  };
  records.forEach(([k, v, hs], i) => {
    const [vid, kid] = schemaIds ? schemaIds[i] : [wireId(v), wireId(k)];
    u32(ids, vid ?? 0xffffffff);
    u32(ids, kid ?? 0xffffffff);
    span(desc, k);
    span(desc, v);
    u32(desc, hdrs.length / 16);
    u32(desc, hs.length);
    const ts = BigInt.asUintN(64, BigInt(timestamps[i] ?? 1000 + i));
    u32(desc, Number(ts & 0xffffffffn));
    u32(desc, Number(ts >> 32n));
    for (const [hk, hv] of hs) { span(hdrs, hk); span(hdrs, hv); }
  });
  const lifted = (arr) => {
    if (!unaligned) return new Uint8Array(arr);
    const buf = new Uint8Array(arr.length + 1);
    buf.set(arr, 1);
    return buf.subarray(1);
  };
  return { data: new Uint8Array(bytes), records: lifted(desc), headers: lifted(hdrs), schemaIds: lifted(ids) };
}
const ANON = { principal: undefined };
const ANALYTICS = { principal: { name: 'analytics', mechanism: 'sasl-scram-sha512' } };
const ALICE = { principal: { name: 'alice', mechanism: 'mtls' } };
const chosen = (d) => [...d.choices].map((i) => d.distinct[i]);

const SDK_IMPORT = "import { Client, Decision, Encrypt, Memo, Needs, Reveal, TopicPlan, exportPolicy } from 'kapsule-policy';\n";

for (const unaligned of [false, true]) {
  test(`record views read the flat batch (unaligned descriptors: ${unaligned})`, async () => {
    const m = await load(SDK_IMPORT + `
      globalThis.__views = [];
      class P {
        constructor(config) {}
        plan() { return TopicPlan.perRecord(new Needs({ key: true, value: true, headers: true })); }
        decide(topic, client, records) {
          const text = (b) => (b === null ? null : new TextDecoder().decode(b));
          for (const r of records) {
            globalThis.__views.push([text(r.key), text(r.value), r.timestamp,
              r.headers.map((h) => [h.key, text(h.value)]), r.headerStr('t'), r.hasHeader('n'),
              r.header('n'), r.header('missing'), r.keyStr(), r.valueStr()]);
          }
          return records.map(() => Decision.PASS);
        }
      }
      export const { init, plan, decide, reveal } = exportPolicy(P);`);
    m.init('');
    const d = m.decide('t', ANON, batch([
      ['k1', 'v1', [['t', 'acme'], ['n', null], ['t', 'second']]],
      [null, null, []],
      ['', '', [['tt', 'x'], ['t', 'é']]],
    ], { timestamps: [1733100000000, -5], unaligned }));
    assert.deepEqual([...d.choices], [0, 0, 0]);
    assert.deepEqual(globalThis.__views, [
      ['k1', 'v1', 1733100000000, [['t', 'acme'], ['n', null], ['t', 'second']], 'acme', true, null, null, 'k1', 'v1'],
      [null, null, -5, [], null, false, null, null, null, null],
      ['', '', 1002, [['tt', 'x'], ['t', 'é']], 'é', false, null, null, '', ''],
    ]);
  });
}

for (const unaligned of [false, true]) {
  test(`schema ids per record (unaligned descriptors: ${unaligned})`, async () => {
    const m = await load(SDK_IMPORT + `
      globalThis.__ids = [];
      class P {
        constructor(config) {}
        plan() { return TopicPlan.perRecord(new Needs({ key: true, value: true })); }
        decide(topic, client, records) {
          for (const r of records) globalThis.__ids.push([r.valueSchemaId, r.keySchemaId]);
          return records.map(() => Decision.PASS);
        }
      }
      export const { init, plan, decide, reveal } = exportPolicy(P);`);
    m.init('');
    const u8 = (...b) => new Uint8Array(b);
    m.decide('t', ANON, batch([
      [u8(0, 0, 0, 1, 0, 7), u8(0, 0, 0, 0, 42, 0x61, 0x62), []],
      [null, u8(0, 0, 0, 0), []], // 4 bytes: too short for the wire format
      [u8(1, 0, 0, 0, 42), null, []], // another magic byte; a tombstone
      [null, u8(0, 0xff, 0xff, 0xff, 0xfe), []], // the largest id that is not absent
    ], { unaligned }));
    assert.deepEqual(globalThis.__ids, [[42, 256], [null, null], [null, null], [0xfffffffe, null]]);
    // The ids come with every batch, whatever needs asked for: values not shown, ids read.
    globalThis.__ids = [];
    m.decide('t', ANON, batch([[null, null, []], [null, null, []]], { unaligned, schemaIds: [[7, null], [null, 9]] }));
    assert.deepEqual(globalThis.__ids, [[7, null], [null, 9]]);
  });
}

test('schema-fields decisions by path and tag', async () => {
  const m = await load(SDK_IMPORT + `
    class P {
      constructor(config) {}
      plan(topic) {
        if (topic === 'all') return TopicPlan.encryptAll(new Encrypt('k').withRecordKey().schemaFields({ fields: ['a.b'] }).withHeader('h'));
        return TopicPlan.perRecord({ headers: true });
      }
      decide(topic, client, records) {
        return records.map((r) => Decision.encrypt(new Encrypt('kek-' + topic)
          .schemaFields({ fields: r.hasHeader('email') ? ['customer.email'] : [], tags: new Set(['PII']) })));
      }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);
    export { Encrypt };`);
  m.init('');
  const d = m.decide('orders', ANON, batch([[null, 'v', []], [null, 'v', [['email', '1']]], [null, 'v', []]]));
  // Equal selections built per record are sent once.
  assert.deepEqual([...d.choices], [0, 1, 0]);
  assert.deepEqual(d.distinct[0], { tag: 'encrypt', val: { keyId: 'kek-orders', value: { tag: 'schema-fields', val: { fields: [], tags: ['PII'] } }, recordKey: false, headers: [] } });
  assert.deepEqual(d.distinct[1].val.value, { tag: 'schema-fields', val: { fields: ['customer.email'], tags: ['PII'] } });
  assert.deepEqual(m.plan('all', ANON), { tag: 'encrypt-all', val: { keyId: 'k', value: { tag: 'schema-fields', val: { fields: ['a.b'], tags: [] } }, recordKey: true, headers: ['h'] } });
  // Mistakes are caught where they are written, not as a refused module at run time.
  const e = new m.Encrypt('k');
  assert.throws(() => e.schemaFields({}), /names no field and no tag/);
  assert.throws(() => e.schemaFields({ tags: 'PII' }), TypeError);
  assert.throws(() => e.schemaFields({ tags: [''] }), TypeError);
  assert.throws(() => e.schemaFields({ fields: [3] }), TypeError);
});

/** A ComponentError as jco's bindings throw it for an import's `err`: the payload is the string. */
class ComponentError extends Error {
  constructor(payload) { super(payload); this.payload = payload; }
}
const ORDERS_SCHEMA = {
  format: 'avro', subject: 'orders-value', version: 3, fieldsTruncated: false,
  fields: [
    { path: 'email', tags: [], kind: 'text' },
    { path: 'customer', tags: [], kind: 'other' },
    { path: 'customer.email', tags: ['PII'], kind: 'text' },
    { path: 'customer.email_count', tags: [], kind: 'other' },
    { path: 'photo', tags: ['PII'], kind: 'bytes' },
  ],
};

test('describe-schema: once per id and batch, typed answers, errors as SchemaError', async () => {
  const m = await load(`
    import { Decision, Encrypt, Needs, SchemaError, Schemas, TopicPlan, exportPolicy } from 'kapsule-policy';
    globalThis.__seen = [];
    class P {
      constructor(config) {}
      plan() { return TopicPlan.perRecord(new Needs()); }
      decide(topic, client, records) {
        const schemas = new Schemas();
        return records.map((r) => {
          if (r.valueSchemaId === null) return Decision.encrypt(new Encrypt('k').wholeValue());
          let s;
          try {
            s = schemas.describe(r.valueSchemaId);
          } catch (e) {
            if (!(e instanceof SchemaError)) throw e;
            globalThis.__seen.push(e.message);
            return Decision.encrypt(new Encrypt('k').schemaFields({ tags: ['PII'] }));
          }
          globalThis.__seen.push(s);
          const fields = s.select((f) => f.path.includes('email'));
          return fields.length ? Decision.encrypt(new Encrypt('k').schemaFields({ fields })) : Decision.PASS;
        });
      }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);`);
  const asked = [];
  globalThis.__describeSchema = (id) => {
    asked.push(id);
    if (id === 7) return ORDERS_SCHEMA;
    // jco lifts `option` none as undefined.
    if (id === 8) return { format: 'protobuf', subject: undefined, version: undefined, fields: [{ path: 'id', tags: [], kind: 'other' }], fieldsTruncated: true };
    throw new ComponentError('schema registry unavailable: connection refused');
  };
  m.init('');
  const ids = [[7, null], [9, null], [7, null], [null, null], [9, null], [8, null]];
  const d = m.decide('t', ANON, batch(ids.map(() => [null, null, []]), { schemaIds: ids }));
  assert.deepEqual(asked, [7, 9, 8]);
  const byName = { tag: 'encrypt', val: { keyId: 'k', value: { tag: 'schema-fields', val: { fields: ['email', 'customer.email'], tags: [] } }, recordKey: false, headers: [] } };
  const byTag = { tag: 'encrypt', val: { keyId: 'k', value: { tag: 'schema-fields', val: { fields: [], tags: ['PII'] } }, recordKey: false, headers: [] } };
  const whole = { tag: 'encrypt', val: { keyId: 'k', value: { tag: 'whole' }, recordKey: false, headers: [] } };
  assert.deepEqual(chosen(d), [byName, byTag, byName, whole, byTag, { tag: 'pass' }]);
  const [orders, failure] = globalThis.__seen;
  assert.equal(orders.format, 'avro');
  assert.equal(orders.subject, 'orders-value');
  assert.equal(orders.version, 3);
  assert.deepEqual(orders.fields.map((f) => [f.path, [...f.tags], f.kind]), ORDERS_SCHEMA.fields.map((f) => [f.path, f.tags, f.kind]));
  assert.equal(failure, 'schema registry unavailable: connection refused');
  const proto = globalThis.__seen.at(-1);
  assert.deepEqual([proto.format, proto.subject, proto.version, proto.fieldsTruncated], ['protobuf', null, null, true]);
  // The next batch asks again: answers are valid for one batch.
  m.decide('t', ANON, batch([[null, null, []]], { schemaIds: [[7, null]] }));
  assert.deepEqual(asked, [7, 9, 8, 7]);
});

test('SchemaInfo.select keeps only text and bytes fields', async () => {
  const m = await load(`export { SchemaInfo, SchemaError, describeSchema } from 'kapsule-policy';`);
  const info = new m.SchemaInfo(ORDERS_SCHEMA);
  assert.deepEqual(info.select((f) => f.path.includes('email')), ['email', 'customer.email']);
  assert.deepEqual(info.select((f) => f.tags.includes('PII')), ['customer.email', 'photo']);
  assert.deepEqual(info.select((f) => f.path === 'customer'), []);
  assert.ok(Object.isFrozen(info.fields) && Object.isFrozen(info.fields[0].tags));
  globalThis.__describeSchema = () => { throw new ComponentError('schema id 5 is not in the batch being decided'); };
  assert.throws(() => m.describeSchema(5), (e) => e instanceof m.SchemaError && e.message === 'schema id 5 is not in the batch being decided');
});

test('a policy that does not describe schemas never calls describe-schema', async () => {
  const app = SDK_IMPORT + `
    class P {
      constructor(config) {}
      plan() { return TopicPlan.perRecord(new Needs({ value: true })); }
      decide(topic, client, records) {
        return records.map((r) => (r.valueSchemaId === null ? Decision.PASS : Decision.encrypt(new Encrypt('k').schemaFields({ tags: ['PII'] }))));
      }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);`;
  const m = await load(app);
  const asked = [];
  globalThis.__describeSchema = (id) => { asked.push(id); throw new ComponentError('unexpected'); };
  m.init('');
  m.plan('t', ANON);
  m.decide('t', ANON, batch([[null, new Uint8Array([0, 0, 0, 0, 7, 1]), []]]));
  m.reveal('t', ANON);
  assert.deepEqual(asked, []);
});

test('memo on several headers', async () => {
  const m = await load(SDK_IMPORT + `
    class P {
      constructor(config) {}
      plan() { return TopicPlan.perRecord({ value: true }, Memo.headers(['tenant', 'class'])); }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);
    export { Memo };`);
  m.init('');
  // The memo's headers are shown to decide even though needs left them out.
  assert.deepEqual(m.plan('t', ANON).val, { needs: { key: false, value: true, headers: true }, memo: { tag: 'headers', val: ['tenant', 'class'] } });
  assert.equal(m.Memo.headers(Array.from({ length: 16 }, (_, i) => 'h' + i)).val.length, 16);
  assert.throws(() => m.Memo.headers([]), RangeError);
  assert.throws(() => m.Memo.headers(Array.from({ length: 17 }, (_, i) => 'h' + i)), RangeError);
  assert.throws(() => m.Memo.headers(['tenant', 'tenant']), /twice/);
  assert.throws(() => m.Memo.headers(['tenant', '']), TypeError);
  assert.throws(() => m.Memo.headers('tenant'), TypeError);
});

test('client, memo and the default reveal', async () => {
  const m = await load(SDK_IMPORT + `
    globalThis.__seen = [];
    class P {
      constructor(config) {}
      plan(topic, client) {
        globalThis.__seen.push([client.name, client.mechanism, client instanceof Client]);
        return TopicPlan.perRecord(new Needs({ value: true }), Memo.header('tenant'));
      }
      decide(topic, client, records) { return records.map(() => Decision.encrypt(new Encrypt('k-' + client.name).wholeValue())); }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);`);
  m.init('');
  const p = m.plan('t', ALICE);
  assert.deepEqual(globalThis.__seen, [['alice', 'mtls', true]]);
  assert.deepEqual(p, { tag: 'per-record', val: { needs: { key: false, value: true, headers: true }, memo: { tag: 'header', val: 'tenant' } } });
  m.plan('t', ANON);
  assert.deepEqual(globalThis.__seen[1], [null, null, true]);
  const d = m.decide('t', ALICE, batch([[null, 'v', []], [null, 'w', []]]));
  assert.deepEqual([...d.choices], [0, 0]);
  assert.equal(d.distinct[0].val.keyId, 'k-alice');
  assert.deepEqual(m.reveal('t', ANALYTICS), { tag: 'all' });
});

test('memo variants and plans', async () => {
  const m = await load(SDK_IMPORT + `
    class P {
      constructor(config) { this.c = config; }
      plan(topic, client) {
        if (topic === 'prefix') return TopicPlan.perRecord({}, Memo.keyPrefix(4));
        if (topic === 'key') return TopicPlan.perRecord({ headers: true }, Memo.RECORD_KEY);
        return TopicPlan.perRecord({ headers: true });
      }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);
    export { Memo };`);
  m.init('');
  assert.deepEqual(m.plan('prefix', ANON).val, { needs: { key: true, value: false, headers: false }, memo: { tag: 'key-prefix', val: 4 } });
  assert.deepEqual(m.plan('key', ANON).val.memo, { tag: 'record-key' });
  assert.deepEqual(m.plan('none', ANON).val.memo, { tag: 'none' });
  assert.throws(() => m.Memo.header(''), TypeError);
  assert.throws(() => m.Memo.keyPrefix(0), RangeError);
});

test('exceptions fail closed and never carry their message', async () => {
  const m = await load(SDK_IMPORT + `
    class P {
      constructor(config) { this.mode = config; }
      plan(topic, client) {
        if (this.mode === 'plan') throw new TypeError('SECRET-acme');
        return TopicPlan.perRecord({ value: true });
      }
      decide(topic, client, records) { throw new RangeError('SECRET-' + records[0].valueStr()); }
      reveal(topic, client) { throw 'SECRET'; }
    }
    export const { init, plan, decide, reveal } = exportPolicy(P);`);
  m.init('');
  const d = m.decide('t', ANON, batch([[null, 'plain', []], [null, 'plain', []]]));
  assert.deepEqual([...d.choices], [0, 0]);
  assert.deepEqual(d.distinct, [{ tag: 'reject', val: 'policy decide() threw RangeError' }]);
  assert.deepEqual(m.reveal('t', ANON), { tag: 'deny', val: 'policy reveal() threw string' });
  m.init('plan');
  assert.deepEqual(m.plan('t', ANON), { tag: 'reject-all', val: 'policy plan() threw TypeError' });
});

test('0.1 method signatures keep working; wrong answers are refused', async () => {
  const m = await load(SDK_IMPORT + `
    class Old {
      constructor(config) { this.bad = config === 'bad'; }
      plan(topic) { return this.bad ? 'encrypt please' : TopicPlan.perRecord({ headers: true }); }
      decide(topic, records) { return this.bad ? [] : records.map(() => Decision.PASS); }
      reveal(topic, client) { return this.bad ? true : Reveal.parts({ jsonFields: ['/a'], headers: ['pii'] }); }
    }
    export const { init, plan, decide, reveal } = exportPolicy(Old);`);
  m.init('');
  assert.equal(m.plan('t', ANALYTICS).tag, 'per-record');
  assert.deepEqual(chosen(m.decide('t', ANALYTICS, batch([['k', null, []]]))), [{ tag: 'pass' }]);
  assert.deepEqual(m.reveal('t', ANON), { tag: 'parts', val: { value: false, jsonFields: ['/a'], recordKey: false, headers: ['pii'] } });
  m.init('bad');
  assert.equal(m.plan('t', ANON).tag, 'reject-all');
  assert.deepEqual(m.decide('t', ANON, batch([[null, 'x', []], [null, 'y', []]])).distinct,
    [{ tag: 'reject', val: 'policy decide() returned 0 decisions for 2 records' }]);
  assert.equal(m.reveal('t', ANON).tag, 'deny');
});

test('tenant-keys declares memo = header "tenant"', async () => {
  const m = await example('tenant-keys');
  m.init('');
  assert.deepEqual(m.plan('orders', ANON).val.memo, { tag: 'header', val: 'tenant' });
  const got = chosen(m.decide('orders', ANON, batch([[null, null, [['tenant', 'acme']]], [null, null, []]])));
  assert.equal(got[0].val.keyId, 'tenant-acme');
  assert.equal(got[1].tag, 'reject');
  m.init('{"header": "org"}');
  assert.deepEqual(m.plan('orders', ANON).val.memo, { tag: 'header', val: 'org' });
});

test('header-gate declares memo = header "classification"', async () => {
  const m = await example('header-gate');
  m.init('kek-');
  assert.deepEqual(m.plan('t', ANON).val.memo, { tag: 'header', val: 'classification' });
});

test('pii-fields keeps PII ciphertext for analytics', async () => {
  const m = await example('pii-fields');
  m.init('');
  assert.deepEqual(m.reveal('t', ANALYTICS), { tag: 'parts', val: { value: false, jsonFields: [], recordKey: false, headers: [] } });
  assert.deepEqual(m.reveal('t', ALICE), { tag: 'all' });
  assert.deepEqual(m.reveal('t', ANON), { tag: 'all' });
  const d = m.decide('t', ANON, batch([[null, '{"customer": {"email": "x"}, "a": 1}', []]]));
  assert.deepEqual(chosen(d)[0].val.value, { tag: 'json-fields', val: ['/customer/email'] });
  m.init('{"pii_hidden_from": ["bi"]}');
  assert.deepEqual(m.reveal('t', ANALYTICS), { tag: 'all' });
  assert.equal(m.reveal('t', { principal: { name: 'bi', mechanism: 'sasl-plain' } }).tag, 'parts');
});

test('schema-pii mirrors the Rust example', async () => {
  const m = await example('schema-pii');
  m.init('{"whole_value_tenants": ["x"]}');
  assert.deepEqual(m.plan('orders', ANON).val, { needs: { key: false, value: false, headers: true }, memo: { tag: 'headers', val: ['tenant', 'class'] } });
  const d = m.decide('orders', ANON, batch([
    [null, null, [['tenant', 'x']]],
    [null, null, [['tenant', 'y']]],
    [null, null, [['tenant', 'y'], ['class', 'public']]],
    [null, null, [['tenant', 'x'], ['class', 'public']]], // tenant x wins
    [null, null, []],
  ]));
  const whole = { tag: 'encrypt', val: { keyId: 'kek-orders', value: { tag: 'whole' }, recordKey: false, headers: [] } };
  const pii = { tag: 'encrypt', val: { keyId: 'kek-orders', value: { tag: 'schema-fields', val: { fields: [], tags: ['PII'] } }, recordKey: false, headers: [] } };
  assert.deepEqual(chosen(d), [whole, pii, { tag: 'pass' }, whole, pii]);
  assert.equal(d.distinct.length, 3);
  m.init('{"key_id": "k", "tags": ["PII", "SECRET"], "tenant_header": "org"}');
  assert.deepEqual(m.plan('t', ANON).val.memo, { tag: 'headers', val: ['org', 'class'] });
  assert.deepEqual(chosen(m.decide('t', ANON, batch([[null, null, [['org', 'x']]]])))[0].val.value,
    { tag: 'schema-fields', val: { fields: [], tags: ['PII', 'SECRET'] } });
  for (const bad of ['{"tags": []}', '{"tags": "PII"}', '{"tenant_header": "class"}', '{"public_header": ""}', '{"nope": 1}', '[]']) {
    assert.throws(() => m.init(bad), (e) => typeof e === 'string' && e.includes('schema-pii config'), bad);
  }
});

test('types/ is what gen-types.mjs generates from wit/policy.wit', async () => {
  const { worldTypes } = await import('../gen-types.mjs');
  for (const [name, text] of await worldTypes()) {
    const committed = await readFile(join(sdkDir, 'types', name), 'utf8').catch(() => null);
    assert.equal(committed, text, `types/${name} is stale: run \`npm run gen-types\``);
  }
});
