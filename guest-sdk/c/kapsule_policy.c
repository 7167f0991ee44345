// The C SDK: implements the component exports over wit-bindgen's generated `policy.h` and calls
// the kp_policy_* functions of the policy (see kapsule_policy.h).
#include "kapsule_policy.h"

#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef kapsule_policy_types_decision_t wit_decision;
typedef kapsule_policy_types_encrypt_t wit_encrypt;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) abort();
  return p;
}

// Memory for `n` bytes of a result Kapsule frees after the call, or NULL for none: the generated
// *_free functions free nothing of length 0, so a 1-byte placeholder would leak on every call.
static void *result_alloc(size_t n) {
  return n ? xmalloc(n) : NULL;
}

static void set_str(policy_string_t *s, const char *text) {
  size_t len = text ? strlen(text) : 0;
  uint8_t *p = result_alloc(len);
  if (len) memcpy(p, text, len);
  s->ptr = p;
  s->len = len;
}

bool kp_str_eq(kp_str s, const char *text) {
  size_t n = strlen(text);
  return s.len == n && memcmp(s.ptr, text, n) == 0;
}

bool kp_find_header(const kp_record *r, const char *name, kp_bytes *value) {
  size_t n = strlen(name);
  for (size_t i = 0; i < r->headers_len; i++) {
    const kp_header *h = &r->headers[i];
    if (h->key.len == n && memcmp(h->key.ptr, name, n) == 0) {
      if (value) *value = h->value;
      return true;
    }
  }
  return false;
}

bool kp_header_is(const kp_record *r, const char *name, const char *value) {
  kp_bytes v;
  size_t n = strlen(value);
  return kp_find_header(r, name, &v) && v.ptr != NULL && v.len == n && memcmp(v.ptr, value, n) == 0;
}

kp_encrypt kp_encrypt_whole(const char *key_id) {
  kp_encrypt e;
  memset(&e, 0, sizeof e);
  e.key_id = key_id;
  e.value = KP_VALUE_WHOLE;
  return e;
}

kp_encrypt kp_encrypt_schema_fields(const char *key_id, const char *const *fields, size_t fields_len,
                                    const char *const *tags, size_t tags_len) {
  kp_encrypt e;
  memset(&e, 0, sizeof e);
  e.key_id = key_id;
  e.value = KP_VALUE_SCHEMA_FIELDS;
  e.schema_fields = fields;
  e.schema_fields_len = fields ? fields_len : 0;
  e.schema_tags = tags;
  e.schema_tags_len = tags ? tags_len : 0;
  return e;
}

static bool schema_id(uint32_t id, uint32_t *out) {
  if (id == KP_NO_SCHEMA_ID) return false;
  if (out) *out = id;
  return true;
}

bool kp_value_schema_id(const kp_record *r, uint32_t *id) {
  return schema_id(r->value_schema_id, id);
}

bool kp_key_schema_id(const kp_record *r, uint32_t *id) {
  return schema_id(r->key_schema_id, id);
}

kp_decision kp_decide_encrypt(kp_encrypt e) {
  kp_decision d;
  memset(&d, 0, sizeof d);
  d.kind = KP_ENCRYPT;
  d.encrypt = e;
  return d;
}

kp_decision kp_decide_reject(const char *message) {
  kp_decision d;
  memset(&d, 0, sizeof d);
  d.kind = KP_REJECT;
  d.message = message;
  return d;
}

bool kp_client_is(const kp_client *client, const char *name) {
  return client != NULL && client->authenticated && kp_str_eq(client->name, name);
}

kp_memo kp_memo_header(const char *name) {
  kp_memo m = {.kind = KP_MEMO_HEADER, .header = name};
  return m;
}

kp_memo kp_memo_headers(const char *const *names, size_t n) {
  kp_memo m = {.kind = KP_MEMO_HEADERS, .header_names = names, .header_names_len = names ? n : 0};
  return m;
}

kp_memo kp_memo_record_key(void) {
  kp_memo m = {.kind = KP_MEMO_RECORD_KEY};
  return m;
}

kp_memo kp_memo_key_prefix(uint32_t n) {
  kp_memo m = {.kind = KP_MEMO_KEY_PREFIX, .prefix_len = n};
  return m;
}

// The default reveal: everything. A policy that defines kp_policy_reveal overrides it.
__attribute__((weak)) kp_reveal kp_policy_reveal(kp_str topic, const kp_client *client) {
  kp_reveal r;
  memset(&r, 0, sizeof r);
  r.kind = KP_REVEAL_ALL;
  return r;
}

void kp_log(int level, const char *message) {
  policy_string_t m;
  policy_string_set(&m, message);
  if (level < 0) level = 0;
  if (level > 4) level = 4;
  policy_log((kapsule_policy_types_level_t)level, &m);
}

// ---- schemas (`describe-schema`) ---------------------------------------------------------------

// Memory that lives until the running decide call returns (kp_describe_schema's answers and
// kp_schema_select's arrays), freed by end_decide after the decisions are copied.
static void **g_batch_mem = NULL;
static size_t g_batch_mem_len = 0, g_batch_mem_cap = 0;

static void *batch_alloc(size_t n) {
  if (g_batch_mem_len == g_batch_mem_cap) {
    size_t cap = g_batch_mem_cap ? 2 * g_batch_mem_cap : 16;
    void **grown = realloc(g_batch_mem, cap * sizeof(void *));
    if (grown == NULL) abort();
    g_batch_mem = grown;
    g_batch_mem_cap = cap;
  }
  void *p = xmalloc(n);
  g_batch_mem[g_batch_mem_len++] = p;
  return p;
}

static const char *batch_cstr(const policy_string_t *s) {
  char *p = batch_alloc(s->len + 1);
  if (s->len) memcpy(p, s->ptr, s->len);
  p[s->len] = '\0';
  return p;
}

// The schemas described during the running decide call, one entry per id asked.
typedef struct {
  uint32_t id;
  const kp_schema_info *info;  // NULL when `error` says why
  const char *error;
} described_schema;

static bool g_in_decide = false;
static described_schema *g_described = NULL;
static size_t g_described_len = 0, g_described_cap = 0;

static const kp_schema_info *schema_from_wit(const policy_schema_info_t *w) {
  kp_schema_info *info = batch_alloc(sizeof *info);
  memset(info, 0, sizeof *info);
  info->format = (kp_schema_format)w->format;
  info->subject = w->subject.is_some ? batch_cstr(&w->subject.val) : NULL;
  info->has_version = w->version.is_some;
  info->version = w->version.is_some ? w->version.val : 0;
  kp_schema_field *fields = batch_alloc(w->fields.len * sizeof *fields);
  for (size_t i = 0; i < w->fields.len; i++) {
    const kapsule_policy_types_schema_field_t *f = &w->fields.ptr[i];
    const char **tags = batch_alloc(f->tags.len * sizeof *tags);
    for (size_t j = 0; j < f->tags.len; j++) tags[j] = batch_cstr(&f->tags.ptr[j]);
    fields[i].path = batch_cstr(&f->path);
    fields[i].tags = tags;
    fields[i].tags_len = f->tags.len;
    // An unknown kind (a newer host) is never encryptable.
    fields[i].kind = f->kind <= KAPSULE_POLICY_TYPES_FIELD_KIND_OTHER ? (kp_field_kind)f->kind
                                                                     : KP_FIELD_OTHER;
  }
  info->fields = fields;
  info->fields_len = w->fields.len;
  info->fields_truncated = w->fields_truncated;
  return info;
}

const kp_schema_info *kp_describe_schema(uint32_t id, const char **error) {
  static const char outside[] = "kp_describe_schema answers only during kp_policy_decide";
  if (!g_in_decide) {
    if (error) *error = outside;
    return NULL;
  }
  size_t i;
  for (i = 0; i < g_described_len; i++)
    if (g_described[i].id == id) break;
  if (i == g_described_len) {
    if (g_described_len == g_described_cap) {
      size_t cap = g_described_cap ? 2 * g_described_cap : 8;
      described_schema *grown = realloc(g_described, cap * sizeof *grown);
      if (grown == NULL) abort();
      g_described = grown;
      g_described_cap = cap;
    }
    described_schema d = {id, NULL, NULL};
    policy_schema_info_t w;
    policy_string_t err;
    if (policy_describe_schema(id, &w, &err)) {
      d.info = schema_from_wit(&w);
      policy_schema_info_free(&w);
    } else {
      d.error = batch_cstr(&err);
      policy_string_free(&err);
    }
    g_described[g_described_len++] = d;
  }
  if (g_described[i].info == NULL && error) *error = g_described[i].error;
  return g_described[i].info;
}

const char *const *kp_schema_select(const kp_schema_info *schema,
                                    bool (*choose)(const kp_schema_field *field, void *ctx),
                                    void *ctx, size_t *n) {
  const char **paths = batch_alloc(schema->fields_len * sizeof *paths);
  size_t chosen = 0;
  for (size_t i = 0; i < schema->fields_len; i++) {
    const kp_schema_field *f = &schema->fields[i];
    if (f->kind != KP_FIELD_OTHER && choose(f, ctx)) paths[chosen++] = f->path;
  }
  *n = chosen;
  return paths;
}

bool kp_field_path_contains(const kp_schema_field *field, void *ctx) {
  return strstr(field->path, (const char *)ctx) != NULL;
}

bool kp_field_has_tag(const kp_schema_field *field, void *ctx) {
  for (size_t i = 0; i < field->tags_len; i++)
    if (strcmp(field->tags[i], (const char *)ctx) == 0) return true;
  return false;
}

// Forgets the schemas described and frees the memory of the decide call that returned.
static void end_decide(void) {
  for (size_t i = 0; i < g_batch_mem_len; i++) free(g_batch_mem[i]);
  g_batch_mem_len = 0;
  g_described_len = 0;
  g_in_decide = false;
}

static bool cstr_eq(const char *a, const char *b) {
  if (a == b) return true;
  if (a == NULL || b == NULL) return false;
  return strcmp(a, b) == 0;
}

static bool list_eq(const char *const *a, size_t an, const char *const *b, size_t bn) {
  if (an != bn) return false;
  for (size_t i = 0; i < an; i++)
    if (!cstr_eq(a[i], b[i])) return false;
  return true;
}

static bool encrypt_eq(const kp_encrypt *a, const kp_encrypt *b) {
  return cstr_eq(a->key_id, b->key_id) && a->value == b->value && a->record_key == b->record_key &&
         (a->value != KP_VALUE_JSON_FIELDS ||
          list_eq(a->json_fields, a->json_fields_len, b->json_fields, b->json_fields_len)) &&
         (a->value != KP_VALUE_SCHEMA_FIELDS ||
          (list_eq(a->schema_fields, a->schema_fields_len, b->schema_fields, b->schema_fields_len) &&
           list_eq(a->schema_tags, a->schema_tags_len, b->schema_tags, b->schema_tags_len))) &&
         list_eq(a->headers, a->headers_len, b->headers, b->headers_len);
}

static bool decision_eq(const kp_decision *a, const kp_decision *b) {
  if (a->kind != b->kind) return false;
  if (a->kind == KP_ENCRYPT) return encrypt_eq(&a->encrypt, &b->encrypt);
  if (a->kind == KP_REJECT) return cstr_eq(a->message, b->message);
  return true;
}

static void strings_to_wit(policy_list_string_t *out, const char *const *items, size_t n) {
  out->len = n;
  out->ptr = result_alloc(n * sizeof(policy_string_t));
  for (size_t i = 0; i < n; i++) set_str(&out->ptr[i], items[i]);
}

static void encrypt_to_wit(wit_encrypt *w, const kp_encrypt *e) {
  set_str(&w->key_id, e->key_id);
  switch (e->value) {
    case KP_VALUE_WHOLE:
      w->value.tag = KAPSULE_POLICY_TYPES_VALUE_PART_WHOLE;
      break;
    case KP_VALUE_JSON_FIELDS:
      w->value.tag = KAPSULE_POLICY_TYPES_VALUE_PART_JSON_FIELDS;
      strings_to_wit(&w->value.val.json_fields, e->json_fields, e->json_fields_len);
      break;
    case KP_VALUE_SCHEMA_FIELDS:
      w->value.tag = KAPSULE_POLICY_TYPES_VALUE_PART_SCHEMA_FIELDS;
      strings_to_wit(&w->value.val.schema_fields.fields, e->schema_fields, e->schema_fields_len);
      strings_to_wit(&w->value.val.schema_fields.tags, e->schema_tags, e->schema_tags_len);
      break;
    default:
      w->value.tag = KAPSULE_POLICY_TYPES_VALUE_PART_NONE;
  }
  w->record_key = e->record_key;
  strings_to_wit(&w->headers, e->headers, e->headers_len);
}

static void decision_to_wit(wit_decision *w, const kp_decision *d) {
  memset(w, 0, sizeof *w);
  if (d->kind == KP_ENCRYPT) {
    w->tag = KAPSULE_POLICY_TYPES_DECISION_ENCRYPT;
    encrypt_to_wit(&w->val.encrypt, &d->encrypt);
  } else if (d->kind == KP_REJECT) {
    w->tag = KAPSULE_POLICY_TYPES_DECISION_REJECT;
    set_str(&w->val.reject, d->message ? d->message : "rejected by policy");
  } else {
    w->tag = KAPSULE_POLICY_TYPES_DECISION_PASS;
  }
}

static kp_client client_from_wit(const policy_client_t *c) {
  kp_client out;
  memset(&out, 0, sizeof out);
  if (c->principal.is_some) {
    out.authenticated = true;
    out.name.ptr = (const char *)c->principal.val.name.ptr;
    out.name.len = c->principal.val.name.len;
    out.mechanism = (kp_auth_mechanism)c->principal.val.mechanism;
  } else {
    out.name.ptr = "";
  }
  return out;
}

// Why a KP_MEMO_HEADERS memo cannot be honoured (as Kapsule checks it), or NULL.
static const char *memo_headers_problem(const kp_memo *m) {
  size_t n = m->header_names_len;
  if (m->header_names == NULL || n == 0 || n > KP_MAX_MEMO_HEADERS)
    return "policy plan: kp_memo_headers needs 1 to 16 header names";
  for (size_t i = 0; i < n; i++) {
    const char *name = m->header_names[i];
    if (name == NULL || name[0] == 0) return "policy plan: kp_memo_headers: empty header name";
    for (size_t j = 0; j < i; j++)
      if (strcmp(m->header_names[j], name) == 0)
        return "policy plan: kp_memo_headers lists a header twice";
  }
  return NULL;
}

static bool g_ready = false;

bool exports_policy_init(policy_string_t *config, policy_string_t *err) {
  char *c = xmalloc(config->len + 1);
  memcpy(c, config->ptr, config->len);
  c[config->len] = 0;
  const char *e = kp_policy_init(c, config->len);
  free(c);
  policy_string_free(config);
  if (e != NULL) {
    set_str(err, e);
    return false;
  }
  g_ready = true;
  return true;
}

void exports_policy_plan(policy_string_t *topic, policy_client_t *client,
                         kapsule_policy_types_topic_plan_t *ret) {
  memset(ret, 0, sizeof *ret);
  if (!g_ready) {
    ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL;
    set_str(&ret->val.reject_all, "policy used before init");
    policy_client_free(client);
    policy_string_free(topic);
    return;
  }
  kp_str t = {(const char *)topic->ptr, topic->len};
  kp_client c = client_from_wit(client);
  kp_plan p = kp_policy_plan(t, &c);
  switch (p.kind) {
    case KP_PLAN_ENCRYPT_ALL:
      ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_ENCRYPT_ALL;
      encrypt_to_wit(&ret->val.encrypt_all, &p.encrypt);
      break;
    case KP_PLAN_PER_RECORD: {
      ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD;
      kapsule_policy_types_per_record_plan_t *pr = &ret->val.per_record;
      unsigned needs = p.needs;
      switch (p.memo.kind) {
        case KP_MEMO_HEADER:
          if (p.memo.header == NULL || p.memo.header[0] == 0) {
            // A memo on no header cannot be honoured: refuse the topic (fail closed).
            ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL;
            set_str(&ret->val.reject_all, "policy plan: kp_memo_header needs a header name");
            policy_client_free(client);
            policy_string_free(topic);
            return;
          }
          pr->memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_HEADER;
          set_str(&pr->memo.val.header, p.memo.header);
          needs |= KP_NEEDS_HEADERS;
          break;
        case KP_MEMO_HEADERS: {
          const char *bad = memo_headers_problem(&p.memo);
          if (bad != NULL) {
            // A memo Kapsule would refuse: refuse the topic here, saying why (fail closed).
            ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL;
            set_str(&ret->val.reject_all, bad);
            policy_client_free(client);
            policy_string_free(topic);
            return;
          }
          pr->memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_HEADERS;
          strings_to_wit(&pr->memo.val.headers, p.memo.header_names, p.memo.header_names_len);
          needs |= KP_NEEDS_HEADERS;
          break;
        }
        case KP_MEMO_RECORD_KEY:
          pr->memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_RECORD_KEY;
          needs |= KP_NEEDS_KEY;
          break;
        case KP_MEMO_KEY_PREFIX:
          pr->memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_KEY_PREFIX;
          pr->memo.val.key_prefix = p.memo.prefix_len;
          needs |= KP_NEEDS_KEY;
          break;
        default:
          pr->memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_NONE;
      }
      pr->needs = (needs & KP_NEEDS_KEY ? KAPSULE_POLICY_TYPES_NEEDS_KEY : 0) |
                  (needs & KP_NEEDS_VALUE ? KAPSULE_POLICY_TYPES_NEEDS_VALUE : 0) |
                  (needs & KP_NEEDS_HEADERS ? KAPSULE_POLICY_TYPES_NEEDS_HEADERS : 0);
      break;
    }
    case KP_PLAN_REJECT_ALL:
      ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL;
      set_str(&ret->val.reject_all, p.message ? p.message : "rejected by policy");
      break;
    default:
      ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_PASS_ALL;
  }
  policy_client_free(client);
  policy_string_free(topic);
}

void exports_policy_reveal(policy_string_t *topic, policy_client_t *client, policy_reveal_t *ret) {
  memset(ret, 0, sizeof *ret);
  kp_reveal r;
  if (g_ready) {
    kp_str t = {(const char *)topic->ptr, topic->len};
    kp_client c = client_from_wit(client);
    r = kp_policy_reveal(t, &c);
  } else {
    memset(&r, 0, sizeof r);
    r.kind = KP_REVEAL_DENY;
    r.message = "policy used before init";
  }
  switch (r.kind) {
    case KP_REVEAL_ALL:
      ret->tag = KAPSULE_POLICY_TYPES_REVEAL_ALL;
      break;
    case KP_REVEAL_PARTS:
      ret->tag = KAPSULE_POLICY_TYPES_REVEAL_PARTS;
      ret->val.parts.value = r.value;
      strings_to_wit(&ret->val.parts.json_fields, r.json_fields, r.json_fields_len);
      ret->val.parts.record_key = r.record_key;
      strings_to_wit(&ret->val.parts.headers, r.headers, r.headers_len);
      break;
    case KP_REVEAL_CIPHERTEXT:
      ret->tag = KAPSULE_POLICY_TYPES_REVEAL_CIPHERTEXT;
      break;
    default:
      // KP_REVEAL_DENY, or a value outside the enum: deny (fail closed).
      ret->tag = KAPSULE_POLICY_TYPES_REVEAL_DENY;
      set_str(&ret->val.deny, r.kind == KP_REVEAL_DENY && r.message ? r.message
                                                                      : "policy denies this reader");
  }
  policy_client_free(client);
  policy_string_free(topic);
}

// Layout of batch-view (wit/policy.wit): a 32-byte descriptor per record (key offset and length,
// value offset and length, first header index, header count, timestamp s64), a 16-byte one per
// header (key offset and length, value offset and length) and an 8-byte one per record in
// schema-ids (value schema id, key schema id), all little-endian. A length of KP_ABSENT is a null
// or not-asked-for part; a schema id of KP_ABSENT (= KP_NO_SCHEMA_ID) is not in the wire format.
#define KP_RECORD_DESCRIPTOR 32
#define KP_HEADER_DESCRIPTOR 16
#define KP_SCHEMA_IDS_DESCRIPTOR 8
#define KP_ABSENT 0xFFFFFFFFu

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// Resolves the (offset, length) pair at `d`; an absent or out-of-range part reads as absent.
static kp_bytes span(const policy_batch_view_t *b, const uint8_t *d) {
  kp_bytes out = {NULL, 0};
  uint32_t offset = le32(d), len = le32(d + 4);
  if (len != KP_ABSENT && (uint64_t)offset + len <= b->data.len) {
    out.ptr = b->data.len ? b->data.ptr + offset : (const uint8_t *)"";
    out.len = len;
  }
  return out;
}

void exports_policy_decide(policy_string_t *topic, policy_client_t *client,
                           policy_batch_view_t *batch, policy_decisions_t *ret) {
  size_t n = batch->records.len / KP_RECORD_DESCRIPTOR;
  size_t nh = batch->headers.len / KP_HEADER_DESCRIPTOR;
  kp_header *headers = xmalloc(nh * sizeof(kp_header));
  for (size_t i = 0; i < nh; i++) {
    const uint8_t *h = batch->headers.ptr + i * KP_HEADER_DESCRIPTOR;
    headers[i].key = span(batch, h);
    if (headers[i].key.ptr == NULL) headers[i].key = (kp_bytes){(const uint8_t *)"", 0};
    headers[i].value = span(batch, h + 8);
  }
  kp_record *records = xmalloc(n * sizeof(kp_record));
  for (size_t i = 0; i < n; i++) {
    const uint8_t *r = batch->records.ptr + i * KP_RECORD_DESCRIPTOR;
    records[i].key = span(batch, r);
    records[i].value = span(batch, r + 8);
    uint32_t headers_start = le32(r + 16), headers_len = le32(r + 20);
    bool ok = (uint64_t)headers_start + headers_len <= nh;
    records[i].headers = ok ? headers + headers_start : NULL;
    records[i].headers_len = ok ? headers_len : 0;
    records[i].timestamp = (int64_t)((uint64_t)le32(r + 24) | (uint64_t)le32(r + 28) << 32);
    // Kapsule sends one entry per record; a shorter list reads as "not in the wire format".
    records[i].value_schema_id = records[i].key_schema_id = KP_NO_SCHEMA_ID;
    if ((uint64_t)(i + 1) * KP_SCHEMA_IDS_DESCRIPTOR <= batch->schema_ids.len) {
      const uint8_t *ids = batch->schema_ids.ptr + i * KP_SCHEMA_IDS_DESCRIPTOR;
      records[i].value_schema_id = le32(ids);
      records[i].key_schema_id = le32(ids + 4);
    }
  }
  kp_decision *out = calloc(n ? n : 1, sizeof(kp_decision));
  if (out == NULL) abort();
  kp_str t = {(const char *)topic->ptr, topic->len};
  if (g_ready) {
    kp_client c = client_from_wit(client);
    g_in_decide = true;
    kp_policy_decide(t, &c, records, n, out);
  } else {
    for (size_t i = 0; i < n; i++) out[i] = kp_decide_reject("policy used before init");
  }

  // Pack: distinct decisions (compared with the previous record first, then the table) + indices.
  size_t *first = xmalloc(n * sizeof(size_t));  // record index of each distinct decision
  size_t nd = 0;
  ret->choices.len = n;
  ret->choices.ptr = result_alloc(n * sizeof(uint32_t));
  for (size_t i = 0; i < n; i++) {
    size_t j;
    if (i > 0 && decision_eq(&out[i], &out[first[ret->choices.ptr[i - 1]]])) {
      j = ret->choices.ptr[i - 1];
    } else {
      for (j = 0; j < nd; j++)
        if (decision_eq(&out[i], &out[first[j]])) break;
      if (j == nd) first[nd++] = i;
    }
    ret->choices.ptr[i] = (uint32_t)j;
  }
  ret->distinct.len = nd;
  ret->distinct.ptr = result_alloc(nd * sizeof(wit_decision));
  for (size_t j = 0; j < nd; j++) decision_to_wit(&ret->distinct.ptr[j], &out[first[j]]);

  end_decide();  // after the decisions, which may point at described paths, were copied
  free(first);
  free(out);
  free(records);
  free(headers);
  policy_batch_view_free(batch);
  policy_client_free(client);
  policy_string_free(topic);
}
