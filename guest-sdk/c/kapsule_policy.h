// Write Kapsule encryption policies in C.
//
// A policy is a WebAssembly component implementing the `kapsule:policy/policy` world
// (wit/policy.wit). This SDK implements the component's exports over the bindings `wit-bindgen c`
// generates, and calls the functions you write:
//
//   const char *kp_policy_init(const char *config, size_t len);     // NULL = accepted
//   kp_plan     kp_policy_plan(kp_str topic, const kp_client *client);  // once per (topic,
//                                                                        // principal), cached
//   void        kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records,
//                                size_t n, kp_decision *out);     // one decision per record
//   kp_reveal   kp_policy_reveal(kp_str topic, const kp_client *client);  // optional: the SDK's
//                                                                // default reveals everything
//
// `client` is who produced or fetches (`authenticated` false on a connection without
// authentication). A per-record plan may declare what its decision depends on
// (`.memo = kp_memo_header("tenant")`, or kp_memo_headers for several): Kapsule then asks once
// per distinct value and caches. Schema-encoded records (contract 0.3.0): kp_value_schema_id /
// kp_key_schema_id read a record's Confluent wire-format schema id, and kp_encrypt_schema_fields
// encrypts fields of such a value by dotted path and by schema tag (e.g. "PII"); during decide,
// kp_describe_schema describes a record's writer schema (`describe-schema`: format, subject, every
// field path with its tags and kind) and kp_schema_select picks the text and bytes fields to pass
// to kp_encrypt_schema_fields.
//
// `decide` sees one kp_record per record (spans of the flat batch resolved to pointers) and writes
// one kp_decision per record into `out`; the SDK packs equal decisions into one entry and copies
// what it sends, so decisions may point at static strings or at buffers that live until
// kp_policy_decide returns.
//
// Build: build.sh [--sysroot DIR] policy.c policy.wasm, beside this header (wit-bindgen c 0.60 +
// any clang for wasm32-wasi with a wasi-libc sysroot, e.g. wasi-sdk via WASI_SDK_PATH +
// wasm-component-ld).
// The sandbox grants no files, network, environment or clocks; printf/fprintf(stderr) output goes
// to Kapsule's rate-limited policy log (line by line), as kp_log does. Never log record contents.
#ifndef KAPSULE_POLICY_H
#define KAPSULE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Bytes borrowed from Kapsule's batch. `ptr == NULL` means absent (null key, tombstone, null
/// header value, or a part the plan did not ask for).
typedef struct {
  const uint8_t *ptr;
  size_t len;
} kp_bytes;

/// A string that is not NUL-terminated.
typedef struct {
  const char *ptr;
  size_t len;
} kp_str;

/// One Kafka header.
typedef struct {
  kp_bytes key;
  kp_bytes value;
} kp_header;

/// One record: only the parts the topic plan's needs asked for (others are absent / empty).
typedef struct {
  kp_bytes key;
  kp_bytes value;
  const kp_header *headers;
  size_t headers_len;
  /// Milliseconds since the Unix epoch, as the producer set it.
  int64_t timestamp;
  /// Schema id of the value when it is in the Confluent Schema Registry wire format (magic byte
  /// 0, 4-byte id, body), whatever the plan's needs asked for; KP_NO_SCHEMA_ID otherwise. Read it
  /// with kp_value_schema_id.
  uint32_t value_schema_id;
  /// Schema id of the key when it is in the wire format; KP_NO_SCHEMA_ID otherwise.
  uint32_t key_schema_id;
} kp_record;

/// The schema id of a value or key that is not in the wire format (null, shorter than 5 bytes,
/// or a first byte other than 0).
#define KP_NO_SCHEMA_ID 0xFFFFFFFFu

/// Which part of the value to encrypt.
typedef enum {
  KP_VALUE_NONE = 0,
  KP_VALUE_WHOLE,
  KP_VALUE_JSON_FIELDS,
  /// Fields of a schema-encoded value (Avro, Protobuf, JSON Schema in the Confluent wire format):
  /// the union of `schema_fields` (dotted paths, e.g. `customer.email`) and of every field the
  /// writer schema tags with one of `schema_tags` (e.g. `PII`). The value stays valid under its
  /// schema id; a value not in the wire format is refused by Kapsule, never passed in clear.
  /// Names at least one field or tag (Kapsule refuses an empty selection as a malformed answer).
  KP_VALUE_SCHEMA_FIELDS
} kp_value_kind;

/// How to encrypt a record. Strings are NUL-terminated and borrowed.
typedef struct {
  /// KEK id; must match the binding's `allowed_key_ids`.
  const char *key_id;
  kp_value_kind value;
  /// RFC 6901 pointers, for KP_VALUE_JSON_FIELDS.
  const char *const *json_fields;
  size_t json_fields_len;
  /// Encrypt the record key deterministically.
  bool record_key;
  /// Names of headers whose values are encrypted.
  const char *const *headers;
  size_t headers_len;
  /// Dotted field paths, for KP_VALUE_SCHEMA_FIELDS.
  const char *const *schema_fields;
  size_t schema_fields_len;
  /// Schema tags, for KP_VALUE_SCHEMA_FIELDS.
  const char *const *schema_tags;
  size_t schema_tags_len;
} kp_encrypt;

typedef enum { KP_PASS = 0, KP_ENCRYPT, KP_REJECT } kp_decision_kind;

/// What to do with one record. A zeroed kp_decision is KP_PASS.
typedef struct {
  kp_decision_kind kind;
  /// For KP_ENCRYPT.
  kp_encrypt encrypt;
  /// For KP_REJECT: the message for the producer.
  const char *message;
} kp_decision;

/// How a client authenticated (the WIT `auth-mechanism`, same order).
typedef enum {
  KP_AUTH_SASL_PLAIN = 0,
  KP_AUTH_SASL_SCRAM_SHA256,
  KP_AUTH_SASL_SCRAM_SHA512,
  KP_AUTH_SASL_OAUTHBEARER,
  KP_AUTH_MTLS
} kp_auth_mechanism;

/// The client connection a call is made for. Valid only during the call.
typedef struct {
  /// False on a connection without authentication (`name` is then empty).
  bool authenticated;
  /// SASL user name, OAuth subject or certificate subject (not NUL-terminated).
  kp_str name;
  /// How `name` was established (meaningful only when `authenticated`).
  kp_auth_mechanism mechanism;
} kp_client;

/// What a per-record decision depends on. A promise: two records with the same value get the same
/// decision, so Kapsule calls decide once per distinct value and caches the answer. A zeroed
/// kp_memo is KP_MEMO_NONE (every record is decided).
typedef enum {
  KP_MEMO_NONE = 0,
  KP_MEMO_HEADER,
  KP_MEMO_RECORD_KEY,
  KP_MEMO_KEY_PREFIX,
  KP_MEMO_HEADERS
} kp_memo_kind;

/// Most header names one KP_MEMO_HEADERS memo may list.
#define KP_MAX_MEMO_HEADERS 16

typedef struct {
  kp_memo_kind kind;
  /// For KP_MEMO_HEADER: the header name (first header with it; absent and null are values too).
  const char *header;
  /// For KP_MEMO_KEY_PREFIX: number of leading key bytes.
  uint32_t prefix_len;
  /// For KP_MEMO_HEADERS: the header names (first header with each, together; absent and null are
  /// values too). 1 to KP_MAX_MEMO_HEADERS distinct, non-empty names; otherwise the SDK refuses
  /// the topic (reject-all) with a message saying why.
  const char *const *header_names;
  size_t header_names_len;
} kp_memo;

/// Parts of each record `decide` needs (bit flags; asking for less is faster).
enum { KP_NEEDS_KEY = 1, KP_NEEDS_VALUE = 2, KP_NEEDS_HEADERS = 4 };

typedef enum { KP_PLAN_PASS_ALL = 0, KP_PLAN_ENCRYPT_ALL, KP_PLAN_PER_RECORD, KP_PLAN_REJECT_ALL } kp_plan_kind;

/// The answer for a whole topic.
typedef struct {
  kp_plan_kind kind;
  /// For KP_PLAN_ENCRYPT_ALL.
  kp_encrypt encrypt;
  /// For KP_PLAN_PER_RECORD: KP_NEEDS_* bits. The part `memo` names is added by the SDK.
  unsigned needs;
  /// For KP_PLAN_PER_RECORD: what the decision depends on (zeroed: every record decided).
  kp_memo memo;
  /// For KP_PLAN_REJECT_ALL.
  const char *message;
} kp_plan;

typedef enum { KP_REVEAL_ALL = 0, KP_REVEAL_PARTS, KP_REVEAL_CIPHERTEXT, KP_REVEAL_DENY } kp_reveal_kind;

/// What a client may read in clear of a topic's encrypted records on Fetch. A zeroed kp_reveal is
/// KP_REVEAL_ALL. Strings are NUL-terminated and borrowed (copied by the SDK).
typedef struct {
  kp_reveal_kind kind;
  /// KP_REVEAL_PARTS: decrypt the whole value, or every encrypted JSON field.
  bool value;
  /// KP_REVEAL_PARTS with `value` false: decrypt only the encrypted JSON fields at these pointers.
  const char *const *json_fields;
  size_t json_fields_len;
  /// KP_REVEAL_PARTS: decrypt the record key.
  bool record_key;
  /// KP_REVEAL_PARTS: decrypt the encrypted headers with these names.
  const char *const *headers;
  size_t headers_len;
  /// KP_REVEAL_DENY: the message (the fetch fails with TOPIC_AUTHORIZATION_FAILED).
  const char *message;
} kp_reveal;

// ---- written by the policy author -------------------------------------------------------------

/// Builds the policy from the binding's config (NUL-terminated copy, `len` bytes). Returns NULL to
/// accept, or a message refusing the module (shown to the operator; static or malloc'd).
const char *kp_policy_init(const char *config, size_t len);
/// Decides a whole topic for records produced by `client`. Called once per (topic, client
/// principal) and module version; cached.
kp_plan kp_policy_plan(kp_str topic, const kp_client *client);
/// Writes one decision per record into `out` (`n` entries, zeroed = pass) for per-record topics.
/// With a memo, `records` holds one record per value not cached yet.
void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out);
/// What `client` may read in clear of `topic` on Fetch. Optional: the SDK defines a weak default
/// that reveals everything; define this function to override it. Cached per (topic, principal).
kp_reveal kp_policy_reveal(kp_str topic, const kp_client *client);

// ---- helpers ------------------------------------------------------------------------------------

/// The first header named `name`; returns false if there is none. `*value` may be absent (NULL ptr)
/// for a null header value.
bool kp_find_header(const kp_record *r, const char *name, kp_bytes *value);
/// True if the first header named `name` has exactly the text `value`.
bool kp_header_is(const kp_record *r, const char *name, const char *value);
/// True if `s` has exactly the text `text`.
bool kp_str_eq(kp_str s, const char *text);
/// Encrypt the whole value under `key_id`.
kp_encrypt kp_encrypt_whole(const char *key_id);
/// Encrypt fields of a schema-encoded value under `key_id`: the `fields_len` dotted paths in
/// `fields` and every field tagged with one of the `tags_len` tags in `tags` (either list may be
/// NULL with length 0, not both). The arrays are borrowed, as every string of a decision.
kp_encrypt kp_encrypt_schema_fields(const char *key_id, const char *const *fields, size_t fields_len,
                                    const char *const *tags, size_t tags_len);
/// Sets `*id` to the schema id of the record's value and returns true when the value is in the
/// Confluent wire format; returns false otherwise (null, short, another first byte).
bool kp_value_schema_id(const kp_record *r, uint32_t *id);
/// As kp_value_schema_id, for the record key.
bool kp_key_schema_id(const kp_record *r, uint32_t *id);
/// A decision to encrypt as `e` says.
kp_decision kp_decide_encrypt(kp_encrypt e);
/// A decision to refuse the record with `message`.
kp_decision kp_decide_reject(const char *message);
/// True if `client` authenticated with exactly the name `name`.
bool kp_client_is(const kp_client *client, const char *name);
/// Memo on the first header named `name` (a static or long-lived string).
kp_memo kp_memo_header(const char *name);
/// Memo on the first header with each of the `n` names in `names` (static or long-lived).
kp_memo kp_memo_headers(const char *const *names, size_t n);
/// Memo on the whole record key.
kp_memo kp_memo_record_key(void);
/// Memo on the first `n` bytes of the record key.
kp_memo kp_memo_key_prefix(uint32_t n);
// ---- schemas (`describe-schema`) ---------------------------------------------------------------

/// The schema language of a registered schema (the WIT `schema-format`, same order).
typedef enum { KP_SCHEMA_AVRO = 0, KP_SCHEMA_PROTOBUF, KP_SCHEMA_JSON } kp_schema_format;

/// What a schema field can hold (the WIT `field-kind`, same order).
typedef enum {
  /// Text (a string; also nullable, or an array or map of strings): encryptable, the ciphertext
  /// is written as text.
  KP_FIELD_TEXT = 0,
  /// Raw bytes (also nullable, or an array or map of bytes): encryptable, written raw.
  KP_FIELD_BYTES,
  /// Anything else (numbers, enums, records, messages, unions of several types): selecting it
  /// refuses the record. Its own fields are listed under its path.
  KP_FIELD_OTHER
} kp_field_kind;

/// One field of a schema. Strings are NUL-terminated.
typedef struct {
  /// Dotted path exactly as kp_encrypt_schema_fields takes it, e.g. "customer.email".
  const char *path;
  /// The field's Confluent tags, e.g. "PII".
  const char *const *tags;
  size_t tags_len;
  kp_field_kind kind;
} kp_schema_field;

/// A registered schema as Kapsule describes it. Strings are NUL-terminated.
typedef struct {
  kp_schema_format format;
  /// The subject it is registered under (the batch topic's own subject when the schema is registered under it, else the first the registry lists); NULL when the registry
  /// did not say.
  const char *subject;
  /// Version under `subject`, when `has_version`.
  bool has_version;
  uint32_t version;
  /// Every field, depth-first: records and messages are listed, then their fields below them.
  const kp_schema_field *fields;
  size_t fields_len;
  /// True when the schema has more fields than were listed (over 1024 fields, 256 KiB of paths
  /// and tags, or 64 levels deep).
  bool fields_truncated;
} kp_schema_info;

/// The schema with this id (a value or key schema id of the records being decided), or NULL with
/// `*error` (if `error` is not NULL) set to why Kapsule could not describe it: an id not in this
/// batch, no registry configured, the registry unavailable or not knowing the id. Call it from
/// kp_policy_decide only (elsewhere it answers an error without asking Kapsule). Each id is asked
/// of Kapsule once per decide call, its answer (or error) kept: the schema and the error message
/// stay valid until kp_policy_decide returns, so decisions may point at its paths. A policy that
/// never calls it never calls the import.
const kp_schema_info *kp_describe_schema(uint32_t id, const char **error);
/// The paths of the text and bytes fields of `schema` for which `choose(field, ctx)` is true, in
/// schema order, as an array of `*n` paths for kp_encrypt_schema_fields (valid until
/// kp_policy_decide returns). KP_FIELD_OTHER fields are never chosen, so the selection never
/// refuses a record for its type. `*n` may be 0: kp_encrypt_schema_fields needs a field or a tag,
/// so decide what such a record gets.
const char *const *kp_schema_select(const kp_schema_info *schema,
                                    bool (*choose)(const kp_schema_field *field, void *ctx),
                                    void *ctx, size_t *n);
/// A `choose` for kp_schema_select: true when the field's path contains the NUL-terminated text
/// `ctx` (e.g. kp_schema_select(s, kp_field_path_contains, "email", &n)).
bool kp_field_path_contains(const kp_schema_field *field, void *ctx);
/// A `choose` for kp_schema_select: true when the field carries the NUL-terminated tag `ctx`.
bool kp_field_has_tag(const kp_schema_field *field, void *ctx);

/// Sends a message to Kapsule's log (levels 0 trace .. 4 error; rate-limited, truncated).
void kp_log(int level, const char *message);

#ifdef __cplusplus
}
#endif
#endif
