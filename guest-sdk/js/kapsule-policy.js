// Write Kapsule encryption policies in JavaScript (or TypeScript compiled to JavaScript).
//
// A policy is a WebAssembly component implementing the `kapsule:policy/policy` world
// (wit/policy.wit), built with componentize-js by this package's `build.mjs` (one command:
// `kapsule-policy-build policy.js -o policy.wasm`). It tells Kapsule, per topic and when
// needed per record, which records to encrypt, under which key id and which parts.
//
// Write a class with `constructor(config)`, `plan(topic, client)`, `decide(topic, client, records)`
// and optionally `reveal(topic, client)` (default Reveal.ALL), and export it:
//   export const { init, plan, decide, reveal } = exportPolicy(MyPolicy);
// `client.name` is the authenticated principal (or null). `decide` gets one RecordView per record,
// read lazily from the flat batch Kapsule passes, and returns one Decision per record; the SDK
// packs them into distinct decisions plus indices. A plan may declare what its decision depends on
// (`memo: Memo.header('tenant')`, or `Memo.headers([...])` for several) so Kapsule asks once per
// distinct value. Schema-encoded records (contract 0.3.0): `record.valueSchemaId` / `keySchemaId`
// read a record's Confluent wire-format schema id, `new Encrypt(k).schemaFields({ fields, tags })`
// encrypts fields by dotted path and by schema tag, and `new Schemas().describe(id)` describes a
// record's writer schema (`describe-schema`) so `schema.select(f => ...)` can choose the text and
// bytes fields to encrypt. An exception in plan,
// decide or reveal fails closed (records refused, fetch denied) naming only the error's type; its
// message and stack go to Kapsule's log at trace level only (they may quote record contents),
// where `kapsule policy check` shows them for its sample records.
// Types: kapsule-policy.d.ts. The generated bindings ({tag, val} variants, flags objects, spans)
// stay underneath.
import __kapsuleHostLog from 'log';
// Called only when the policy describes a schema (describeSchema, Schemas). componentize-js
// imports every world import into the component whatever the source uses.
import __kapsuleHostDescribeSchema from 'describe-schema';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

/** Expands `${topic}` in a key-id template, as Kapsule's built-in rules do. */
function expandTopic(template, topic) {
  return template.split('${topic}').join(topic);
}

/** An RFC 6901 pointer from path tokens: jsonPointer(['a/b', 0]) === '/a~1b/0'. */
function jsonPointer(tokens) {
  let out = '';
  for (const t of tokens) out += '/' + String(t).replaceAll('~', '~0').replaceAll('/', '~1');
  return out;
}

/** Which parts of each record `decide` needs to see. Asking for less is faster. */
class Needs {
  constructor({ key = false, value = false, headers = false } = {}) {
    this.key = !!key;
    this.value = !!value;
    this.headers = !!headers;
    Object.freeze(this);
  }
}

/** `names` as a frozen array of non-empty strings (a lone string, an easy slip, is refused). */
function nameList(what, names) {
  if (typeof names === 'string' || names === null || typeof names !== 'object' || !(Symbol.iterator in names)) {
    throw new TypeError(`${what}: pass an array of strings`);
  }
  const out = [...names];
  for (const n of out) {
    if (typeof n !== 'string' || n === '') throw new TypeError(`${what}: every entry must be a non-empty string, got ${JSON.stringify(n)}`);
  }
  return Object.freeze(out);
}

/**
 * Which fields of a schema-encoded value (Avro, Protobuf or JSON Schema in the Confluent wire
 * format) to encrypt: the union of dotted `fields` (`customer.email`; arrays, maps, unions/oneof
 * and optional wrappers are stepped through) and of every field the writer schema tags with one of
 * `tags` (`confluent:tags`, `(confluent.field_meta).tags`; e.g. `PII`). The generated
 * `schema-selection` record. Names at least one field or tag.
 */
function schemaSelection({ fields = [], tags = [] } = {}) {
  const sel = Object.freeze({ fields: nameList('schema selection fields', fields), tags: nameList('schema selection tags', tags) });
  if (sel.fields.length === 0 && sel.tags.length === 0) {
    throw new TypeError('schema selection names no field and no tag; leave the value out to keep it in clear');
  }
  return sel;
}

const VALUE_NONE = Object.freeze({ tag: 'none' });
const VALUE_WHOLE = Object.freeze({ tag: 'whole' });

/**
 * How to encrypt a record. Immutable; setters return a new value:
 *   new Encrypt('kek-orders').wholeValue().withRecordKey().withHeader('pii')
 */
class Encrypt {
  constructor(keyId, value = VALUE_NONE, recordKey = false, headers = []) {
    if (typeof keyId !== 'string') throw new TypeError('Encrypt: keyId must be a string');
    this.keyId = keyId;
    this.value = value;
    this.recordKey = !!recordKey;
    this.headers = Object.freeze([...headers]);
    this._key = JSON.stringify([keyId, value.tag, value.val ?? null, this.recordKey, this.headers]);
    Object.freeze(this);
  }
  /** Also encrypt the whole value (tombstones stay null). */
  wholeValue() {
    return new Encrypt(this.keyId, VALUE_WHOLE, this.recordKey, this.headers);
  }
  /** Encrypt these RFC 6901 JSON pointers of the value (the value stays JSON). */
  jsonFields(pointers) {
    const val = Object.freeze([...pointers].map(String));
    return new Encrypt(this.keyId, Object.freeze({ tag: 'json-fields', val }), this.recordKey, this.headers);
  }
  /**
   * Encrypt fields of a schema-encoded value by dotted path and by schema tag; the value stays
   * valid under its schema id (a value not in the wire format is refused, never passed in clear):
   *   new Encrypt('kek-orders').schemaFields({ tags: ['PII'] })
   */
  schemaFields({ fields = [], tags = [] } = {}) {
    const val = schemaSelection({ fields, tags });
    return new Encrypt(this.keyId, Object.freeze({ tag: 'schema-fields', val }), this.recordKey, this.headers);
  }
  /** Also encrypt the record key, deterministically. */
  withRecordKey() {
    return new Encrypt(this.keyId, this.value, true, this.headers);
  }
  /** Also encrypt every header named `name`. */
  withHeader(name) {
    return new Encrypt(this.keyId, this.value, this.recordKey, [...this.headers, String(name)]);
  }
}

/** What to do with one record: Decision.PASS, Decision.encrypt(e), Decision.reject(message). */
class Decision {
  constructor(kind, encryption, message) {
    this.kind = kind;
    this.encryption = encryption;
    this.message = message;
    this._key = kind === 'encrypt' ? 'e' + encryption._key : kind === 'reject' ? 'r' + message : 'p';
    Object.freeze(this);
  }
  static encrypt(e) {
    if (!(e instanceof Encrypt)) throw new TypeError('Decision.encrypt needs an Encrypt');
    return new Decision('encrypt', e, undefined);
  }
  static reject(message) {
    return new Decision('reject', undefined, String(message));
  }
}
Decision.PASS = new Decision('pass', undefined, undefined);

/** Most header names one Memo.headers may list (Kapsule refuses more). */
const MAX_MEMO_HEADERS = 16;

/**
 * What a per-record decision depends on: Memo.NONE, Memo.header(name), Memo.headers([names]),
 * Memo.RECORD_KEY or Memo.keyPrefix(n). A promise: two records with the same value get the same
 * decision, so Kapsule asks `decide` once per distinct value and caches the answer (per topic and
 * client principal).
 */
class Memo {
  constructor(tag, val) {
    this.tag = tag;
    if (val !== undefined) this.val = val;
    Object.freeze(this);
  }
  /** Only the first header named `name` (absent and null are values too). */
  static header(name) {
    if (typeof name !== 'string' || name === '') throw new TypeError('Memo.header needs a non-empty header name');
    return new Memo('header', name);
  }
  /**
   * Only the first header with each of these names, together (absent and null are values too):
   * the memo of "tenant + exception" policies, e.g. Memo.headers(['tenant', 'class']). 1 to 16
   * distinct, non-empty names.
   */
  static headers(names) {
    const list = nameList('Memo.headers', names);
    if (list.length === 0 || list.length > MAX_MEMO_HEADERS) {
      throw new RangeError(`Memo.headers needs 1 to ${MAX_MEMO_HEADERS} header names, got ${list.length}`);
    }
    if (new Set(list).size !== list.length) throw new TypeError(`Memo.headers lists a header twice: ${JSON.stringify(list)}`);
    return new Memo('headers', list);
  }
  /** Only the first `n` bytes of the record key. */
  static keyPrefix(n) {
    if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) throw new RangeError('Memo.keyPrefix needs a byte count between 1 and 2^32-1');
    return new Memo('key-prefix', n);
  }
}
Memo.NONE = new Memo('none');
Memo.RECORD_KEY = new Memo('record-key');

/** The answer for a whole topic, computed once per (topic, client principal) and cached. */
class TopicPlan {
  constructor(kind, encryption, needs, message, memo) {
    this.kind = kind;
    this.encryption = encryption;
    this.needs = needs;
    this.message = message;
    this.memo = memo ?? Memo.NONE;
    Object.freeze(this);
  }
  /** Every record is encrypted the same way; decide is never called. */
  static encryptAll(e) {
    if (!(e instanceof Encrypt)) throw new TypeError('TopicPlan.encryptAll needs an Encrypt');
    return new TopicPlan('encrypt-all', e, undefined, undefined);
  }
  /**
   * Batches go to decide, showing these parts of each record. `memo` (default Memo.NONE) declares
   * what the decision depends on; the part it names is shown even if `needs` leaves it out.
   */
  static perRecord(needs, memo = Memo.NONE) {
    if (!(needs instanceof Needs)) needs = new Needs(needs);
    if (memo === undefined || memo === null) memo = Memo.NONE;
    if (!(memo instanceof Memo)) throw new TypeError('TopicPlan.perRecord: memo must be a Memo (Memo.header(name), ...)');
    if ((memo.tag === 'header' || memo.tag === 'headers') && !needs.headers) needs = new Needs({ ...needs, headers: true });
    if ((memo.tag === 'record-key' || memo.tag === 'key-prefix') && !needs.key) needs = new Needs({ ...needs, key: true });
    return new TopicPlan('per-record', undefined, needs, undefined, memo);
  }
  /** Every record is refused with this message. */
  static rejectAll(message) {
    return new TopicPlan('reject-all', undefined, undefined, String(message));
  }
}
TopicPlan.PASS_ALL = new TopicPlan('pass-all');

// Layout of `batch-view` (wit/policy.wit): per record eight little-endian u32 words (key offset
// and length, value offset and length, first header index, header count, timestamp as an s64),
// per header four (key offset and length, value offset and length), per record in `schemaIds`
// two (schema id of the value, of the key). A length of ABSENT is a null or not-asked-for part; a
// schema id of ABSENT says the value or key is not in the Confluent wire format.
const ABSENT = 0xffffffff;

/** `bytes` (a Uint8Array of little-endian u32 words) as a Uint32Array, copied only if unaligned. */
function words(bytes) {
  const n = bytes.byteLength >>> 2;
  if (bytes.byteOffset % 4 === 0) return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  return new Uint32Array(bytes.slice(0, n * 4).buffer);
}

/** The descriptors of one batch as u32 views over the bytes Kapsule passed. */
class Batch {
  constructor(batch) {
    this.data = batch.data;
    this.count = batch.records.byteLength >>> 5;
    this.records = words(batch.records);
    this.headers = words(batch.headers);
    this.schemaIds = words(batch.schemaIds);
  }
  schemaId(at) {
    const id = this.schemaIds[at];
    return id === undefined || id === ABSENT ? null : id;
  }
  part(w, at) {
    const n = w[at + 1];
    if (n === ABSENT || n === undefined) return null;
    return this.data.subarray(w[at], w[at] + n);
  }
}

/** The parts of one record the plan asked for, read lazily from the batch (no copies). */
class RecordView {
  constructor(batch, index) {
    this._b = batch;
    this._i = index;
  }
  /** Record key (Uint8Array); null for a null key or when not asked for. */
  get key() { return this._b.part(this._b.records, this._i * 8); }
  /** Record value (Uint8Array); null for a tombstone or when not asked for. */
  get value() { return this._b.part(this._b.records, this._i * 8 + 2); }
  /** Timestamp in milliseconds since the Unix epoch (a Number). */
  get timestamp() {
    const w = this._b.records;
    const at = this._i * 8;
    return (w[at + 7] | 0) * 4294967296 + w[at + 6];
  }
  /**
   * Schema id of the value when it is in the Confluent Schema Registry wire format (magic byte 0,
   * 4-byte id, body), whatever `needs` asked for; null otherwise. It says only what the bytes
   * claim: Kapsule refuses a value that does not decode under it when its fields are encrypted.
   */
  get valueSchemaId() { return this._b.schemaId(this._i * 2); }
  /** Schema id of the key when it is in the wire format, whatever `needs` asked for; null otherwise. */
  get keySchemaId() { return this._b.schemaId(this._i * 2 + 1); }
  /** Headers in wire order as {key: string, value: Uint8Array|null}; empty when not asked for. */
  get headers() {
    const b = this._b;
    const w = b.records;
    const hw = b.headers;
    const at = this._i * 8;
    const out = [];
    const end = Math.min((w[at + 4] + w[at + 5]) * 4, hw.length);
    for (let j = w[at + 4] * 4; j < end; j += 4) {
      out.push({ key: decodeLossy(b.part(hw, j)), value: b.part(hw, j + 2) });
    }
    return out;
  }
  /** Index of the header words of the first header named `name`, or -1. */
  _find(name) {
    const b = this._b;
    const w = b.records;
    const at = this._i * 8;
    const count = w[at + 5];
    if (!count) return -1;
    const want = encoded(name);
    const n = want.length;
    const data = b.data;
    const hw = b.headers;
    const end = Math.min((w[at + 4] + count) * 4, hw.length);
    outer: for (let j = w[at + 4] * 4; j < end; j += 4) {
      if (hw[j + 1] !== n) continue;
      const o = hw[j];
      for (let k = 0; k < n; k++) if (data[o + k] !== want[k]) continue outer;
      return j;
    }
    return -1;
  }
  /** Value of the first header named `name` (Uint8Array), or null if absent or null. */
  header(name) {
    const j = this._find(name);
    return j < 0 ? null : this._b.part(this._b.headers, j + 2);
  }
  /** As header(), decoded as UTF-8; null if absent, null or not UTF-8. */
  headerStr(name) {
    return decodeOrNull(this.header(name));
  }
  /** Whether a header named `name` is present (even with a null value). */
  hasHeader(name) {
    return this._find(name) >= 0;
  }
  /** The key as UTF-8 text, or null. */
  keyStr() { return decodeOrNull(this.key); }
  /** The value as UTF-8 text, or null. */
  valueStr() { return decodeOrNull(this.value); }
  /** The value parsed as JSON; throws if absent or not JSON. */
  valueJson() {
    const s = this.valueStr();
    if (s === null) throw new Error('record value is absent or not UTF-8');
    return JSON.parse(s);
  }
}

/** How a client authenticated, in WIT order. */
const MECHANISMS = Object.freeze(['sasl-plain', 'sasl-scram-sha256', 'sasl-scram-sha512', 'sasl-oauthbearer', 'mtls']);

/**
 * The client connection a call is made for: `principal` is {name, mechanism} or null without
 * authentication; `name` and `mechanism` are the principal's, or null.
 */
class Client {
  constructor(principal) {
    this.principal = principal ? Object.freeze({ name: principal.name, mechanism: principal.mechanism }) : null;
    this.name = this.principal ? this.principal.name : null;
    this.mechanism = this.principal ? this.principal.mechanism : null;
    Object.freeze(this);
  }
}
Client.ANONYMOUS = new Client(null);

/**
 * What a client may read in clear of a topic's encrypted records on Fetch: Reveal.ALL (the
 * default), Reveal.parts({...}), Reveal.CIPHERTEXT or Reveal.deny(message). Cached per (topic,
 * client principal).
 */
class Reveal {
  constructor(kind, parts, message) {
    this.kind = kind;
    this.parts = parts;
    this.message = message;
    Object.freeze(this);
  }
  /**
   * Decrypt only these parts; the rest reaches the client as stored (ciphertext). `value: true`
   * decrypts the whole value or every encrypted JSON field; otherwise only the encrypted JSON
   * fields at `jsonFields` (RFC 6901 pointers). Reveal.parts() decrypts nothing.
   */
  static parts({ value = false, jsonFields = [], recordKey = false, headers = [] } = {}) {
    if (typeof jsonFields === 'string' || typeof headers === 'string') {
      throw new TypeError('Reveal.parts: jsonFields and headers are arrays of strings');
    }
    return new Reveal('parts', Object.freeze({
      value: !!value, jsonFields: Object.freeze([...jsonFields].map(String)),
      recordKey: !!recordKey, headers: Object.freeze([...headers].map(String)),
    }), undefined);
  }
  /** Refuse the fetch (TOPIC_AUTHORIZATION_FAILED) with this message. */
  static deny(message) {
    return new Reveal('deny', undefined, String(message));
  }
}
Reveal.ALL = new Reveal('all');
Reveal.CIPHERTEXT = new Reveal('ciphertext');

// Header names as UTF-8, cached: policies ask for the same few names on every record.
const ENCODED = new Map();
function encoded(name) {
  let b = ENCODED.get(name);
  if (b === undefined) {
    b = utf8Encoder.encode(name);
    if (ENCODED.size < 256) ENCODED.set(name, b);
  }
  return b;
}

function decodeOrNull(bytes) {
  if (bytes === null) return null;
  try { return utf8.decode(bytes); } catch { return null; }
}
function decodeLossy(bytes) {
  return new TextDecoder().decode(bytes);
}

/**
 * Kapsule could not describe a schema: an id not in the batch being decided, a call outside
 * `decide`, no registry configured, the registry unavailable or not knowing the id, a schema
 * Kapsule cannot parse. `message` is Kapsule's explanation (it quotes no record contents).
 * Uncaught in `decide`, it refuses the batch like any exception.
 */
class SchemaError extends Error {
  constructor(message) {
    super(message);
    this.name = 'SchemaError';
  }
}

/**
 * A registered schema as Kapsule describes it: `format` ('avro' | 'protobuf' | 'json'), `subject`
 * and `version` (null when the registry did not say), `fields` (every field depth-first:
 * `{ path, tags, kind }`, kind 'text' | 'bytes' | 'other'), `fieldsTruncated`.
 */
class SchemaInfo {
  constructor({ format, subject = null, version = null, fields = [], fieldsTruncated = false }) {
    this.format = format;
    this.subject = subject ?? null;
    this.version = version ?? null;
    this.fields = Object.freeze(fields.map((f) => Object.freeze({ path: f.path, tags: Object.freeze([...f.tags]), kind: f.kind })));
    this.fieldsTruncated = !!fieldsTruncated;
    Object.freeze(this);
  }

  /**
   * The paths of the text and bytes fields for which `choose(field)` is true, in schema order,
   * for `new Encrypt(k).schemaFields({ fields })`. Fields of kind 'other' are never chosen, so the
   * selection never refuses a record for its type. Empty when nothing is chosen (schemaFields
   * refuses an empty selection: decide what such a record gets).
   */
  select(choose) {
    return this.fields.filter((f) => f.kind !== 'other' && choose(f)).map((f) => f.path);
  }
}

/** The text of an error the `describe-schema` binding threw (jco: a ComponentError whose payload is the err string). */
function hostErrorText(e) {
  if (e && typeof e.payload === 'string') return e.payload;
  if (e && typeof e.message === 'string') return e.message;
  return String(e);
}

/**
 * The schema with this id (a value or key schema id of the batch being decided, `valueSchemaId`
 * or `keySchemaId`); throws SchemaError when Kapsule cannot describe it. Answers during `decide`
 * only and never waits on the network (Kapsule fetched the batch's schemas before the call). Each
 * call copies the whole field list: prefer `Schemas`, which asks once per id.
 */
function describeSchema(id) {
  let answer;
  try {
    answer = __kapsuleHostDescribeSchema(id);
  } catch (e) {
    throw new SchemaError(hostErrorText(e));
  }
  return new SchemaInfo(answer);
}

/**
 * The schemas described during one `decide` call, each asked of Kapsule once (a failure too:
 * the same SchemaError is thrown again). Create one per call: answers are valid for the batch they
 * were asked for. Creating one calls nothing.
 */
class Schemas {
  #described = new Map();

  /** describeSchema(id), asked once per id. */
  describe(id) {
    let answer = this.#described.get(id);
    if (answer === undefined) {
      try {
        answer = describeSchema(id);
      } catch (e) {
        if (!(e instanceof SchemaError)) throw e;
        answer = e;
      }
      this.#described.set(id, answer);
    }
    // The same error object each time: a batch of one failing schema id throws once per record,
    // and a fresh Error (with its stack) per record costs memory the call may not have.
    if (answer instanceof SchemaError) throw answer;
    return answer;
  }
}

function host(level, message) {
  __kapsuleHostLog(level, String(message));
}
/**
 * Logging to Kapsule's log (rate-limited, truncated). console.log/console.error output reaches the
 * same policy log under the same limits. Never log record contents.
 */
const log = Object.freeze({
  trace: (m) => host('trace', m),
  debug: (m) => host('debug', m),
  info: (m) => host('info', m),
  warn: (m) => host('warn', m),
  error: (m) => host('error', m),
});

function valueToWit(v) {
  if (v.tag === 'json-fields') return { tag: 'json-fields', val: [...v.val] };
  if (v.tag === 'schema-fields') return { tag: 'schema-fields', val: { fields: [...v.val.fields], tags: [...v.val.tags] } };
  return { tag: v.tag };
}
function encryptToWit(e) {
  return { keyId: e.keyId, value: valueToWit(e.value), recordKey: e.recordKey, headers: [...e.headers] };
}
function decisionToWit(d) {
  if (d.kind === 'encrypt') return { tag: 'encrypt', val: encryptToWit(d.encryption) };
  if (d.kind === 'reject') return { tag: 'reject', val: d.message };
  return { tag: 'pass' };
}
function planToWit(p) {
  if (!(p instanceof TopicPlan)) {
    return { tag: 'reject-all', val: `policy plan() returned ${typeof p}, not TopicPlan` };
  }
  switch (p.kind) {
    case 'encrypt-all': return { tag: 'encrypt-all', val: encryptToWit(p.encryption) };
    case 'per-record': return {
      tag: 'per-record',
      val: {
        needs: { key: p.needs.key, value: p.needs.value, headers: p.needs.headers },
        memo: p.memo.val === undefined ? { tag: p.memo.tag }
          : { tag: p.memo.tag, val: Array.isArray(p.memo.val) ? [...p.memo.val] : p.memo.val },
      },
    };
    case 'reject-all': return { tag: 'reject-all', val: p.message };
    default: return { tag: 'pass-all' };
  }
}

function revealToWit(r) {
  if (!(r instanceof Reveal)) return { tag: 'deny', val: `policy reveal() returned ${typeof r}, not a Reveal` };
  switch (r.kind) {
    case 'all': return { tag: 'all' };
    case 'parts': return {
      tag: 'parts',
      val: { value: r.parts.value, jsonFields: [...r.parts.jsonFields], recordKey: r.parts.recordKey, headers: [...r.parts.headers] },
    };
    case 'ciphertext': return { tag: 'ciphertext' };
    default: return { tag: 'deny', val: r.message };
  }
}

function clientFromWit(c) {
  const p = c && c.principal;
  return p ? new Client(p) : Client.ANONYMOUS;
}

/** Only the error's type: its message may quote record contents and reaches producers and logs. */
/**
 * The refusal message for an exception in `what` (only the error's type: its message may quote
 * record contents), after sending the message and stack to the log at trace level, which
 * production builds of Kapsule never emit and `kapsule policy check` shows (its first line is the
 * refusal message, so the check can pair them).
 */
function failed(what, e) {
  const type = e instanceof Error ? e.name : typeof e;
  const refusal = `policy ${what} threw ${type}`;
  try {
    const detail = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack || ''}` : String(e);
    log.trace(`${refusal}\n${detail}`);
  } catch (_) {
    // The refusal stands even if the report cannot be sent.
  }
  return refusal;
}

/** Distinct decisions in first-seen order and one index per record (fail closed on mistakes). */
function pack(decided, n) {
  if (!Array.isArray(decided) || decided.length !== n) {
    const got = Array.isArray(decided) ? `${decided.length} decisions` : 'a non-array';
    const d = Decision.reject(`policy decide() returned ${got} for ${n} records`);
    return { distinct: [decisionToWit(d)], choices: new Uint32Array(n) };
  }
  // Policies return the same Decision object for records that decide alike, so most records are
  // found by identity (the previous record's, or `byObject`) without building or hashing a key.
  const byObject = new Map();
  const index = new Map();
  const distinct = [];
  const choices = new Uint32Array(n);
  let last;
  let lastI = 0;
  for (let i = 0; i < n; i++) {
    const given = decided[i];
    if (given === last) { choices[i] = lastI; continue; }
    let j = byObject.get(given);
    if (j === undefined) {
      const d = given instanceof Decision ? given : Decision.reject(`policy decide() returned ${typeof given}, not a Decision`);
      j = index.get(d._key);
      if (j === undefined) {
        j = distinct.length;
        index.set(d._key, j);
        distinct.push(decisionToWit(d));
      }
      byObject.set(given, j);
    }
    choices[i] = j;
    last = given;
    lastI = j;
  }
  return { distinct, choices };
}

/**
 * The component's exports for `PolicyClass` (constructor(config), plan(topic, client),
 * decide(topic, client, records), optional reveal(topic, client)):
 *   export const { init, plan, decide, reveal } = exportPolicy(MyPolicy);
 * A constructor that throws refuses the module with the error's message. Methods written for the
 * 0.1 SDK (plan(topic), decide(topic, records)) keep working: the client is left out for them.
 */
function exportPolicy(PolicyClass) {
  let policy = null;
  const proto = PolicyClass.prototype || {};
  const planWithClient = typeof proto.plan !== 'function' || proto.plan.length !== 1;
  const decideWithClient = typeof proto.decide !== 'function' || proto.decide.length !== 2;
  return {
    init(config) {
      try {
        policy = new PolicyClass(config);
      } catch (e) {
        // A thrown string is the `err` of init's result; an Error would trap instead.
        throw String(e && e.message !== undefined ? e.message : e);
      }
    },
    plan(topic, client) {
      if (policy === null) return planToWit(TopicPlan.rejectAll('policy used before init'));
      let p;
      try {
        p = planWithClient ? policy.plan(topic, clientFromWit(client)) : policy.plan(topic);
      } catch (e) {
        p = TopicPlan.rejectAll(failed('plan()', e));
      }
      return planToWit(p);
    },
    decide(topic, client, batch) {
      const b = new Batch(batch);
      const n = b.count;
      const records = new Array(n);
      for (let i = 0; i < n; i++) records[i] = new RecordView(b, i);
      const all = (d) => pack(new Array(n).fill(d), n);
      if (policy === null) return all(Decision.reject('policy used before init'));
      if (typeof policy.decide !== 'function') return all(Decision.reject('policy does not implement per-record decisions'));
      let decided;
      try {
        decided = decideWithClient ? policy.decide(topic, clientFromWit(client), records) : policy.decide(topic, records);
      } catch (e) {
        return all(Decision.reject(failed('decide()', e)));
      }
      return pack(decided, n);
    },
    reveal(topic, client) {
      if (policy === null) return revealToWit(Reveal.deny('policy used before init'));
      if (typeof policy.reveal !== 'function') return revealToWit(Reveal.ALL);
      let r;
      try {
        r = policy.reveal(topic, clientFromWit(client));
      } catch (e) {
        r = Reveal.deny(failed('reveal()', e));
      }
      return revealToWit(r);
    },
  };
}

export {
  Client, Decision, Encrypt, MECHANISMS, Memo, Needs, RecordView, Reveal, SchemaError, SchemaInfo, Schemas, TopicPlan,
  describeSchema, exportPolicy, expandTopic, jsonPointer, log,
};
