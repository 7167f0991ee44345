// TypeScript types of the Kapsule policy SDK for JavaScript (kapsule-policy.js).
// Compile TypeScript to an ES module first (tsc or esbuild), then build it with build.mjs.
// The component-level shapes (what `exportPolicy` hands to componentize-js) are the declarations
// jco generates from wit/policy.wit, in types/ (gen-types.mjs).
/// <reference path="./types/kapsule-policy.d.ts" />
import type * as World from 'kapsule:policy/policy@0.3.0';
import type * as Wit from 'kapsule:policy/types@0.3.0';

/** Which parts of each record `decide` needs to see. Asking for less is faster. */
export class Needs {
  constructor(parts?: { key?: boolean; value?: boolean; headers?: boolean });
  readonly key: boolean;
  readonly value: boolean;
  readonly headers: boolean;
}

/**
 * Which fields of a schema-encoded value (Avro, Protobuf or JSON Schema in the Confluent wire
 * format) to encrypt: the union of dotted `fields` (`customer.email`) and of every field the writer
 * schema tags with one of `tags` (e.g. `PII`). The generated `schema-selection` record.
 */
export type SchemaSelection = Wit.SchemaSelection;

/** Which part of a record value to encrypt (the generated `value-part` variant). */
export type ValuePart =
  | { tag: 'none' }
  | { tag: 'whole' }
  | { tag: 'json-fields'; val: readonly string[] }
  | { tag: 'schema-fields'; val: { readonly fields: readonly string[]; readonly tags: readonly string[] } };

/** How to encrypt a record. Immutable; setters return a new value. */
export class Encrypt {
  constructor(keyId: string, value?: ValuePart, recordKey?: boolean, headers?: readonly string[]);
  /** KEK id; must match the binding's `allowed_key_ids`. */
  readonly keyId: string;
  readonly value: ValuePart;
  readonly recordKey: boolean;
  readonly headers: readonly string[];
  /** Also encrypt the whole value (tombstones stay null). */
  wholeValue(): Encrypt;
  /** Encrypt these RFC 6901 JSON pointers of the value. */
  jsonFields(pointers: Iterable<string>): Encrypt;
  /**
   * Encrypt fields of a schema-encoded value by dotted path and by schema tag (at least one of
   * them); the value stays valid under its schema id. A value not in the wire format is refused
   * by Kapsule, never passed in clear: `new Encrypt('kek-orders').schemaFields({ tags: ['PII'] })`.
   */
  schemaFields(selection: { readonly [K in keyof SchemaSelection]?: Iterable<string> }): Encrypt;
  /** Also encrypt the record key, deterministically. */
  withRecordKey(): Encrypt;
  /** Also encrypt every header named `name`. */
  withHeader(name: string): Encrypt;
}

/** What to do with one record. Equal decisions are sent to Kapsule once per batch. */
export class Decision {
  private constructor();
  readonly kind: 'pass' | 'encrypt' | 'reject';
  /** Forward the record unchanged. */
  static readonly PASS: Decision;
  /** Encrypt the record as `e` describes. */
  static encrypt(e: Encrypt): Decision;
  /** Refuse the record, and with it its partition batch, with this message. */
  static reject(message: string): Decision;
}

/**
 * What a per-record decision depends on. A promise: two records with the same value get the same
 * decision, so Kapsule asks `decide` once per distinct value and caches the answer (per topic and
 * client principal, dropped when the module is replaced).
 */
export class Memo {
  private constructor();
  readonly tag: Wit.MemoKey['tag'];
  /** Every record is decided. */
  static readonly NONE: Memo;
  /** Only the whole record key (a null key is a value too). */
  static readonly RECORD_KEY: Memo;
  /** Only the first header named `name` (absent and null are values too). */
  static header(name: string): Memo;
  /**
   * Only the first header with each of these names, together (absent and null are values too);
   * 1 to 16 distinct, non-empty names, e.g. `Memo.headers(['tenant', 'class'])`.
   */
  static headers(names: Iterable<string>): Memo;
  /** Only the first `n` bytes of the record key (shorter keys: the whole key). */
  static keyPrefix(n: number): Memo;
}

/** The answer for a whole topic, computed once per (topic, client principal) and cached. */
export class TopicPlan {
  private constructor();
  readonly kind: 'pass-all' | 'encrypt-all' | 'per-record' | 'reject-all';
  /** Every record passes in clear; decide is never called. */
  static readonly PASS_ALL: TopicPlan;
  /** Every record is encrypted the same way; decide is never called. */
  static encryptAll(e: Encrypt): TopicPlan;
  /**
   * Batches go to decide, showing these parts of each record. `memo` (default Memo.NONE) declares
   * what the decision depends on; the part it names is shown even if `needs` leaves it out.
   */
  static perRecord(needs: Needs | { key?: boolean; value?: boolean; headers?: boolean }, memo?: Memo): TopicPlan;
  /** Every record is refused with this message. */
  static rejectAll(message: string): TopicPlan;
}

/** How a client authenticated. */
export type AuthMechanism = Wit.AuthMechanism;
/** The values of AuthMechanism, in WIT order. */
export const MECHANISMS: readonly AuthMechanism[];

/** An authenticated client. */
export interface Principal {
  /** SASL user name, OAuth subject or certificate subject (e.g. `alice`, `CN=alice,O=Example`). */
  readonly name: string;
  readonly mechanism: AuthMechanism;
}

/** The client connection a call is made for. */
export class Client {
  private constructor();
  /** Who the client authenticated as; null without authentication. */
  readonly principal: Principal | null;
  /** The principal's name, or null. */
  readonly name: string | null;
  /** The principal's mechanism, or null. */
  readonly mechanism: AuthMechanism | null;
  /** A client without authentication. */
  static readonly ANONYMOUS: Client;
}

/** The encrypted parts a principal may read in clear. */
export interface RevealParts {
  /** Decrypt the value: a wholly encrypted value, or every encrypted JSON field. */
  value?: boolean;
  /** When `value` is false: decrypt only the encrypted JSON fields at these RFC 6901 pointers. */
  jsonFields?: Iterable<string>;
  /** Decrypt the record key. */
  recordKey?: boolean;
  /** Decrypt the values of the encrypted headers with these names. */
  headers?: Iterable<string>;
}

/** What a client may read in clear of a topic's encrypted records on Fetch (cached per principal). */
export class Reveal {
  private constructor();
  readonly kind: 'all' | 'parts' | 'ciphertext' | 'deny';
  /** Decrypt every encrypted part (the default). */
  static readonly ALL: Reveal;
  /** Deliver records as stored: ciphertext with their `kapsule.enc` descriptor. */
  static readonly CIPHERTEXT: Reveal;
  /** Decrypt only these parts; the rest reaches the client as stored. `parts()` decrypts nothing. */
  static parts(parts?: RevealParts): Reveal;
  /** Refuse the fetch (TOPIC_AUTHORIZATION_FAILED) with this message. */
  static deny(message: string): Reveal;
}

/** One record of a batch: only the parts the plan asked for (others are null / empty). */
export class RecordView {
  private constructor();
  readonly key: Uint8Array | null;
  readonly value: Uint8Array | null;
  /** Milliseconds since the Unix epoch, as the producer set it. */
  readonly timestamp: number;
  /**
   * Schema id of the value when it is in the Confluent Schema Registry wire format (magic byte 0,
   * 4-byte id), whatever the plan's needs asked for; null otherwise.
   */
  readonly valueSchemaId: number | null;
  /** Schema id of the key when it is in the wire format; null otherwise. */
  readonly keySchemaId: number | null;
  readonly headers: { key: string; value: Uint8Array | null }[];
  header(name: string): Uint8Array | null;
  headerStr(name: string): string | null;
  hasHeader(name: string): boolean;
  keyStr(): string | null;
  valueStr(): string | null;
  /** The value parsed as JSON; throws if absent or not JSON. */
  valueJson(): unknown;
}

/** One field of a schema (the generated `schema-field` record, read-only). */
export interface SchemaField {
  /** Dotted path exactly as `schemaFields({ fields })` takes it, e.g. `customer.email`. */
  readonly path: Wit.SchemaField['path'];
  /** The field's Confluent tags, e.g. `PII`. */
  readonly tags: readonly string[];
  /**
   * What the field can hold: 'text' and 'bytes' are encryptable; 'other' (numbers, enums, records,
   * messages, unions of several types) refuses the record when selected.
   */
  readonly kind: Wit.FieldKind;
}

/** A registered schema as Kapsule describes it (the generated `schema-info` record). */
export class SchemaInfo {
  constructor(info: Wit.SchemaInfo | {
    format: Wit.SchemaFormat; subject?: string | null; version?: number | null;
    fields?: readonly SchemaField[]; fieldsTruncated?: boolean;
  });
  /** The schema language. */
  readonly format: Wit.SchemaFormat;
  /** The subject it is registered under (the batch topic's own, `<topic>-value` else `<topic>-key`, when it is one; else the first the registry lists); null if the registry did not say. */
  readonly subject: string | null;
  /** Version under `subject`; null if the registry did not say. */
  readonly version: number | null;
  /** Every field, depth-first: records and messages are listed, then their fields below them. */
  readonly fields: readonly SchemaField[];
  /** True when the schema has more fields than were listed (over 1024, 256 KiB, 64 levels). */
  readonly fieldsTruncated: boolean;
  /**
   * The paths of the text and bytes fields for which `choose` is true, for
   * `new Encrypt(k).schemaFields({ fields })`; 'other' fields are never chosen. May be empty.
   */
  select(choose: (field: SchemaField) => boolean): string[];
}

/**
 * Kapsule could not describe a schema (id not in the batch, call outside `decide`, no registry,
 * registry unavailable or not knowing the id, unparsable schema); `message` says which.
 */
export class SchemaError extends Error {
  constructor(message: string);
  readonly name: 'SchemaError';
}

/**
 * The schema with this id (a `valueSchemaId` / `keySchemaId` of the batch being decided), through
 * the `describe-schema` import; throws SchemaError when Kapsule cannot describe it. Prefer Schemas.
 */
export function describeSchema(id: number): SchemaInfo;

/**
 * The schemas described during one `decide` call, each asked of Kapsule once (failures too).
 * Create one per call; creating one calls nothing.
 */
export class Schemas {
  constructor();
  /** describeSchema(id), asked once per id; throws SchemaError when it cannot be described. */
  describe(id: number): SchemaInfo;
}

/**
 * A policy class: built once per instance from the binding's config string (throwing refuses the
 * module). An exception in plan, decide or reveal fails closed: the topic's records or the batch
 * are refused, or the fetch denied, with a message naming only the error's type.
 */
export interface PolicyClass {
  new (config: string): {
    /** Called once per (topic, client principal) and module version; cached. */
    plan(topic: string, client: Client): TopicPlan;
    /** One decision per record, in order; with a memo, one record per value not cached yet. */
    decide?(topic: string, client: Client, records: RecordView[]): Decision[];
    /** What `client` may read in clear on Fetch; default Reveal.ALL. Cached per principal. */
    reveal?(topic: string, client: Client): Reveal;
  };
}

/** The component exports for a policy class: the world's exports as jco generates them. */
export interface PolicyExports {
  init: typeof World.init;
  plan: typeof World.plan;
  decide: typeof World.decide;
  reveal: typeof World.reveal;
}

/** `export const { init, plan, decide, reveal } = exportPolicy(MyPolicy);` */
export function exportPolicy(policy: PolicyClass): PolicyExports;
/** Expands `${topic}` in a key-id template. */
export function expandTopic(template: string, topic: string): string;
/** An RFC 6901 pointer from path tokens. */
export function jsonPointer(tokens: Iterable<string | number>): string;
/**
 * Logging to Kapsule's log (rate-limited, truncated); console.log/console.error reach the same
 * log. Never log record contents.
 */
export const log: {
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
};
