// TypeScript types of the Kapsule policy SDK for JavaScript (kapsule-policy.js).
// Compile TypeScript to an ES module first (tsc or esbuild), then build it with build.mjs.

/** Which parts of each record `decide` needs to see. Asking for less is faster. */
export class Needs {
  constructor(parts?: { key?: boolean; value?: boolean; headers?: boolean });
  readonly key: boolean;
  readonly value: boolean;
  readonly headers: boolean;
}

/** Which part of a record value to encrypt (the generated `value-part` variant). */
export type ValuePart =
  | { tag: 'none' }
  | { tag: 'whole' }
  | { tag: 'json-fields'; val: readonly string[] };

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

/** The answer for a whole topic, computed once and cached by Kapsule. */
export class TopicPlan {
  private constructor();
  readonly kind: 'pass-all' | 'encrypt-all' | 'per-record' | 'reject-all';
  /** Every record passes in clear; decide is never called. */
  static readonly PASS_ALL: TopicPlan;
  /** Every record is encrypted the same way; decide is never called. */
  static encryptAll(e: Encrypt): TopicPlan;
  /** Every batch goes to decide, showing these parts of each record. */
  static perRecord(needs: Needs | { key?: boolean; value?: boolean; headers?: boolean }): TopicPlan;
  /** Every record is refused with this message. */
  static rejectAll(message: string): TopicPlan;
}

/** One record of a batch: only the parts the plan asked for (others are null / empty). */
export class RecordView {
  private constructor();
  readonly key: Uint8Array | null;
  readonly value: Uint8Array | null;
  /** Milliseconds since the Unix epoch, as the producer set it. */
  readonly timestamp: number;
  readonly headers: { key: string; value: Uint8Array | null }[];
  header(name: string): Uint8Array | null;
  headerStr(name: string): string | null;
  hasHeader(name: string): boolean;
  keyStr(): string | null;
  valueStr(): string | null;
  /** The value parsed as JSON; throws if absent or not JSON. */
  valueJson(): unknown;
}

/** A policy class: built once per instance from the binding's config string. */
export interface PolicyClass {
  new (config: string): {
    plan(topic: string): TopicPlan;
    decide?(topic: string, records: RecordView[]): Decision[];
  };
}

/** The component exports for a policy class. */
export interface PolicyExports {
  init(config: string): void;
  plan(topic: string): unknown;
  decide(topic: string, batch: unknown): unknown;
}

/** `export const { init, plan, decide } = exportPolicy(MyPolicy);` */
export function exportPolicy(policy: PolicyClass): PolicyExports;
/** Expands `${topic}` in a key-id template. */
export function expandTopic(template: string, topic: string): string;
/** An RFC 6901 pointer from path tokens. */
export function jsonPointer(tokens: Iterable<string | number>): string;
/** Logging to Kapsule's log (rate-limited, truncated). Never log record contents. */
export const log: {
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
};
