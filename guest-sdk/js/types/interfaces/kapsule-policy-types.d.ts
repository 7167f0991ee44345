// Generated from wit/policy.wit by gen-types.mjs (jco 1.35); do not edit.
declare module 'kapsule:policy/types@0.3.0' {
  /**
   * Severity of a message sent through the `log` import.
   * # Variants
   * 
   * ## `"trace"`
   * 
   * Very detailed diagnostics.
   * ## `"debug"`
   * 
   * Diagnostics useful while developing a policy.
   * ## `"info"`
   * 
   * Normal operational messages.
   * ## `"warn"`
   * 
   * Something unexpected that the policy handled.
   * ## `"error"`
   * 
   * Something the policy could not handle.
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /**
   * One record batch, laid out flat: every byte the policy asked for in one buffer, and
   * fixed-size little-endian descriptors pointing into it. Passing a batch costs three copies
   * however many records and headers it has, and a guest reads only the descriptors it needs:
   * no per-record object is built before `decide` runs, which keeps an interpreted policy
   * (Python, JavaScript) at a few microseconds per record. The SDKs turn this into ordinary
   * per-record views; the layout below is for authors writing on the generated bindings.
   * 
   * Parts the topic plan did not ask for (`needs`) are absent: the key and value are
   * `absent` and the record has no headers, whatever the record holds.
   * 
   * A length of `0xFFFF_FFFF` (absent) marks a null key, a null value (tombstone), a null
   * header value, or a part that was not asked for; its offset is then 0.
   */
  export interface BatchView {
    /**
     * Keys, values and header keys and values, concatenated. Every descriptor below
     * points at bytes `offset .. offset + length` of this buffer.
     */
    data: Uint8Array,
    /**
     * One 32-byte descriptor per record, in batch order, so the batch has
     * `len(records) / 32` records. Little-endian fields, by byte offset:
     * `0` key offset (u32), `4` key length (u32, or absent), `8` value offset (u32),
     * `12` value length (u32, or absent), `16` index of the record's first header in
     * `headers` (u32), `20` number of headers of the record (u32), `24` timestamp in
     * milliseconds since the Unix epoch as the producer set it (s64).
     */
    records: Uint8Array,
    /**
     * One 16-byte descriptor per header, the headers of all records record after record
     * in wire order (Kafka allows duplicate header keys). Little-endian fields, by byte
     * offset: `0` key offset (u32), `4` key length (u32), `8` value offset (u32), `12`
     * value length (u32, or absent for a null value).
     */
    headers: Uint8Array,
    /**
     * One 8-byte descriptor per record, in batch order, whatever `needs` asked for.
     * Little-endian fields, by byte offset: `0` schema id of the value (u32), `4` schema id
     * of the key (u32). A value or key starts the Confluent Schema Registry wire format
     * when it is at least 5 bytes long and its first byte is 0; the id is then the next 4
     * bytes (big-endian on the wire). Otherwise (null, shorter, another first byte) the id
     * is `0xFFFF_FFFF` (absent). The id says only what the bytes claim: a value that does
     * not decode under it is refused when its fields are encrypted, never passed in clear.
     */
    schemaIds: Uint8Array,
  }
  /**
   * Which fields of a schema-encoded value to encrypt: the union of explicit paths and of
   * the fields the writer schema tags with one of `tags`.
   */
  export interface SchemaSelection {
    /**
     * Dotted field paths from the top-level record or message, e.g. `customer.email`.
     * Arrays, maps, unions/oneof and optional wrappers are stepped through: `orders.card`
     * is the `card` field of every element of `orders`.
     */
    fields: Array<string>,
    /**
     * Schema tags, e.g. `PII`: every field tagged with one of them (Avro and JSON Schema
     * `confluent:tags`, Protobuf `(confluent.field_meta).tags`).
     */
    tags: Array<string>,
  }
  /**
   * The schema language of a registered schema.
   * # Variants
   * 
   * ## `"avro"`
   * 
   * Apache Avro.
   * ## `"protobuf"`
   * 
   * Protocol Buffers.
   * ## `"json"`
   * 
   * JSON Schema.
   */
  export type SchemaFormat = 'avro' | 'protobuf' | 'json';
  /**
   * What a schema field can hold, as far as `schema-fields` is concerned.
   * # Variants
   * 
   * ## `"text"`
   * 
   * Text: an Avro or Protobuf `string`, a JSON Schema `type: string` (also nullable, an
   * array or map of strings). Selectable; the ciphertext is written as text.
   * ## `"bytes"`
   * 
   * Raw bytes: an Avro or Protobuf `bytes` (also nullable, an array or map of bytes).
   * Selectable; the ciphertext is written raw.
   * ## `"other"`
   * 
   * Anything else: numbers, booleans, enums, fixed, records and messages, a union of
   * several types. Selecting it refuses the record; its own fields, if any, are listed
   * under its path.
   */
  export type FieldKind = 'text' | 'bytes' | 'other';
  /**
   * One field of a schema.
   */
  export interface SchemaField {
    /**
     * Dotted path exactly as `schema-selection.fields` takes it, e.g. `customer.email`;
     * arrays, maps, unions/oneof and optional wrappers are stepped through
     * (`orders.card` is the `card` of every element of `orders`).
     */
    path: string,
    /**
     * The field's Confluent tags (Avro and JSON Schema `confluent:tags`, Protobuf
     * `(confluent.field_meta).tags`), e.g. `PII`.
     */
    tags: Array<string>,
    /**
     * What the field can hold.
     */
    kind: FieldKind,
  }
  /**
   * A registered schema as `describe-schema` shows it.
   */
  export interface SchemaInfo {
    /**
     * The schema language.
     */
    format: SchemaFormat,
    /**
     * The subject the schema is registered under and its version there: one schema text
     * registered under several subjects has one id, so the batch's topic's own subject
     * (`<topic>-value`, else `<topic>-key`) when it is one of them, else the first the
     * registry lists.
     * `none` when the registry does not serve `GET /schemas/ids/{id}/versions` or refuses
     * it (a registry unavailable for it fails the whole description, retriably).
     */
    subject?: string,
    /**
     * Version under `subject`.
     */
    version?: number,
    /**
     * Every field, depth-first from the top-level record or message (every top-level
     * message for Protobuf): records and messages are listed with their fields below them;
     * a record inside itself is not entered again. A path reached twice (the same name in
     * two union branches) is listed once with the tags of both, and as `other` when their
     * kinds differ. JSON Schema lists properties through `properties` and `$ref`s only:
     * properties under `items`, `oneOf`/`anyOf`/`allOf`, `additionalProperties` or
     * `patternProperties` are not listed (no path selects them). JSON Schema properties
     * come in name order; Avro and Protobuf fields in declaration order.
     */
    fields: Array<SchemaField>,
    /**
     * True when the schema has more fields than were listed: at most 1024 fields, 256 KiB
     * of paths and tags, 64 levels deep.
     */
    fieldsTruncated: boolean,
  }
  /**
   * Which part of a record value to encrypt.
   */
  export type ValuePart = ValuePartNone | ValuePartWhole | ValuePartJsonFields | ValuePartSchemaFields;
  /**
   * Leave the value in clear.
   */
  export interface ValuePartNone {
    tag: 'none',
  }
  /**
   * Encrypt the whole value. Null values (tombstones) stay null.
   */
  export interface ValuePartWhole {
    tag: 'whole',
  }
  /**
   * Encrypt the JSON fields at these RFC 6901 pointers (for example `/customer/email`);
   * the value stays valid JSON. Each pointer must start with `/`; `~` must be escaped as `~0`
   * and `/` inside a name as `~1`. Pointers that are absent from a record are skipped.
   */
  export interface ValuePartJsonFields {
    tag: 'json-fields',
    val: Array<string>,
  }
  /**
   * Encrypt these fields of a value in the Confluent Schema Registry wire format (Avro,
   * Protobuf or JSON Schema, read with the writer schema Kapsule fetches from its
   * `schema_registry`); the value stays valid under the same schema id and each
   * ciphertext is bound to the topic and field path. A selected field that is not a
   * string or bytes, a value that is not in the wire format, or a Kapsule without a
   * registry refuses the record; a registry outage fails the produce with a retriable
   * error. Never plaintext.
   */
  export interface ValuePartSchemaFields {
    tag: 'schema-fields',
    val: SchemaSelection,
  }
  /**
   * How to encrypt a record: under which key and which parts.
   */
  export interface Encrypt {
    /**
     * Id of the key-encryption key in the KMS, for example `kek-orders`. Must match one of
     * the binding's `allowed_key_ids` patterns, or the decision is refused as a violation.
     */
    keyId: string,
    /**
     * Which part of the value to encrypt.
     */
    value: ValuePart,
    /**
     * Encrypt the record key deterministically (equal keys give equal ciphertext, so
     * partitioning and compaction keep working).
     */
    recordKey: boolean,
    /**
     * Names of headers whose values are encrypted (every header with that name).
     */
    headers: Array<string>,
  }
  /**
   * What to do with one record.
   */
  export type Decision = DecisionPass | DecisionEncrypt | DecisionReject;
  /**
   * Forward the record unchanged.
   */
  export interface DecisionPass {
    tag: 'pass',
  }
  /**
   * Encrypt the record as described.
   */
  export interface DecisionEncrypt {
    tag: 'encrypt',
    val: Encrypt,
  }
  /**
   * Refuse the record, and with it the whole partition batch, with this message for the
   * producer.
   */
  export interface DecisionReject {
    tag: 'reject',
    val: string,
  }
  /**
   * The decisions for one batch: a table of distinct decisions and, per record, which one
   * applies. Most batches need one or a handful of distinct decisions, so this stays small
   * however many records the batch has. (The Rust SDK builds it from one decision per record.)
   */
  export interface Decisions {
    /**
     * Distinct decisions.
     */
    distinct: Array<Decision>,
    /**
     * One entry per record, in batch order: the index in `distinct` of its decision.
     */
    choices: Uint32Array,
  }
  /**
   * Which parts of each record `decide` needs to see. Asking for less is faster.
   */
  export interface Needs {
    /**
     * The record key.
     */
    key?: boolean,
    /**
     * The record value.
     */
    value?: boolean,
    /**
     * The record headers.
     */
    headers?: boolean,
  }
  /**
   * What a per-record decision depends on. Declaring it lets Kapsule call `decide` once per
   * distinct value instead of once per record, and cache the answers (per topic and client
   * principal, bounded, dropped when the module is replaced). The policy promises that two
   * records with the same value get the same decision; Kapsule relies on that promise.
   */
  export type MemoKey = MemoKeyNone | MemoKeyHeader | MemoKeyRecordKey | MemoKeyKeyPrefix | MemoKeyHeaders;
  /**
   * The decision may depend on anything `needs` shows: every record is decided.
   */
  export interface MemoKeyNone {
    tag: 'none',
  }
  /**
   * Only on the value of the first header with this name (absent and null are values
   * too).
   */
  export interface MemoKeyHeader {
    tag: 'header',
    val: string,
  }
  /**
   * Only on the whole record key (a null key is a value too).
   */
  export interface MemoKeyRecordKey {
    tag: 'record-key',
  }
  /**
   * Only on the first `n` bytes of the record key (shorter keys: the whole key).
   */
  export interface MemoKeyKeyPrefix {
    tag: 'key-prefix',
    val: number,
  }
  /**
   * Only on the values of the first header with each of these names, together (absent
   * and null are values too). 1 to 16 distinct, non-empty names.
   */
  export interface MemoKeyHeaders {
    tag: 'headers',
    val: Array<string>,
  }
  /**
   * How `decide` is called for a `per-record` topic.
   */
  export interface PerRecordPlan {
    /**
     * Which parts of each record `decide` sees.
     */
    needs: Needs,
    /**
     * What the decision depends on (see `memo-key`).
     */
    memo: MemoKey,
  }
  /**
   * The policy's answer for a whole topic, computed once per (topic, client) and cached.
   */
  export type TopicPlan = TopicPlanPassAll | TopicPlanEncryptAll | TopicPlanPerRecord | TopicPlanRejectAll;
  /**
   * Every record passes in clear; `decide` is never called.
   */
  export interface TopicPlanPassAll {
    tag: 'pass-all',
  }
  /**
   * Every record is encrypted the same way; `decide` is never called.
   */
  export interface TopicPlanEncryptAll {
    tag: 'encrypt-all',
    val: Encrypt,
  }
  /**
   * Batches are shown to `decide`, as `per-record-plan` says.
   */
  export interface TopicPlanPerRecord {
    tag: 'per-record',
    val: PerRecordPlan,
  }
  /**
   * Every record is refused with this message; `decide` is never called.
   */
  export interface TopicPlanRejectAll {
    tag: 'reject-all',
    val: string,
  }
  /**
   * How the client was authenticated.
   * # Variants
   * 
   * ## `"sasl-plain"`
   * 
   * SASL/PLAIN, accepted by the broker.
   * ## `"sasl-scram-sha256"`
   * 
   * SASL/SCRAM-SHA-256, accepted by the broker.
   * ## `"sasl-scram-sha512"`
   * 
   * SASL/SCRAM-SHA-512, accepted by the broker.
   * ## `"sasl-oauthbearer"`
   * 
   * SASL/OAUTHBEARER, accepted by the broker.
   * ## `"mtls"`
   * 
   * A TLS client certificate verified by Kapsule.
   */
  export type AuthMechanism = 'sasl-plain' | 'sasl-scram-sha256' | 'sasl-scram-sha512' | 'sasl-oauthbearer' | 'mtls';
  /**
   * An authenticated client.
   */
  export interface Principal {
    /**
     * The SASL user name, OAuth subject or certificate subject (e.g. `alice`,
     * `CN=alice,O=Example`).
     */
    name: string,
    /**
     * How `name` was established.
     */
    mechanism: AuthMechanism,
  }
  /**
   * The client connection a call is made for.
   */
  export interface Client {
    /**
     * Who the client authenticated as; `none` on a connection without authentication.
     */
    principal?: Principal,
  }
  /**
   * The encrypted parts a principal may read in clear (`reveal::parts`).
   */
  export interface RevealParts {
    /**
     * Decrypt the value: a wholly encrypted value, or every encrypted JSON field.
     */
    value: boolean,
    /**
     * When `value` is false: decrypt only the encrypted JSON fields at these RFC 6901
     * pointers; the other encrypted fields stay ciphertext.
     */
    jsonFields: Array<string>,
    /**
     * Decrypt the record key.
     */
    recordKey: boolean,
    /**
     * Decrypt the values of the encrypted headers with these names.
     */
    headers: Array<string>,
  }
  /**
   * What a principal may read of a topic's encrypted records on Fetch.
   */
  export type Reveal = RevealAll | RevealParts | RevealCiphertext | RevealDeny;
  /**
   * Decrypt every encrypted part.
   */
  export interface RevealAll {
    tag: 'all',
  }
  /**
   * Decrypt only these parts; the rest reaches the client as stored (ciphertext).
   */
  export interface RevealParts {
    tag: 'parts',
    val: RevealParts,
  }
  /**
   * Deliver records as stored on the broker: ciphertext with their `kapsule.enc`
   * descriptor.
   */
  export interface RevealCiphertext {
    tag: 'ciphertext',
  }
  /**
   * Refuse the fetch (TOPIC_AUTHORIZATION_FAILED) with this message.
   */
  export interface RevealDeny {
    tag: 'deny',
    val: string,
  }
}
