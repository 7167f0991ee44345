// header-gate: a Kapsule policy written in C.
//
// Config: the key-id prefix (default "kek-"); the key id is prefix + topic.
// Plan: per record, seeing only headers. For each record, the `classification` header decides:
//   "public"     -> pass in clear
//   "restricted" -> reject the record
//   anything else, or no header -> encrypt the whole value and every `pii` header (fail closed).
// The decision depends only on that header, which the plan declares (memo) so Kapsule decides once
// per distinct value. Every reader may read everything (reveal: all).
//
// Written directly on the bindings `wit-bindgen c` generates (kapsule:policy@0.3.0), without the
// C SDK: every export frees its arguments and fills its result as the canonical ABI requires.
//
// Built by build.sh: wit-bindgen c + clang (wasm32-wasi, wasi-libc) + wasm-component-ld.
#include <stdlib.h>
#include <string.h>

#include "policy.h"

static char *g_prefix = NULL;
static size_t g_prefix_len = 0;

static void set_string(policy_string_t *s, const char *bytes, size_t len) {
  uint8_t *p = malloc(len ? len : 1);
  if (p == NULL) abort();
  memcpy(p, bytes, len);
  s->ptr = p;
  s->len = len;
}

static void log_info(const char *msg) {
  policy_string_t m;
  policy_string_set(&m, msg);
  policy_log(KAPSULE_POLICY_TYPES_LEVEL_INFO, &m);
}

bool exports_policy_init(policy_string_t *config, policy_string_t *err) {
  const char *def = "kek-";
  const uint8_t *src = config->len ? config->ptr : (const uint8_t *)def;
  size_t len = config->len ? config->len : strlen(def);
  for (size_t i = 0; i < len; i++) {
    if (src[i] <= ' ') {
      const char *e = "header-gate: key prefix must not contain spaces or control characters";
      set_string(err, e, strlen(e));
      policy_string_free(config);
      return false;
    }
  }
  free(g_prefix);
  g_prefix = malloc(len + 1);
  if (g_prefix == NULL) abort();
  memcpy(g_prefix, src, len);
  g_prefix[len] = 0;
  g_prefix_len = len;
  policy_string_free(config);
  log_info("header-gate initialized");
  return true;
}

void exports_policy_plan(policy_string_t *topic, policy_client_t *client,
                         kapsule_policy_types_topic_plan_t *ret) {
  ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD;
  ret->val.per_record.needs = KAPSULE_POLICY_TYPES_NEEDS_HEADERS;
  ret->val.per_record.memo.tag = KAPSULE_POLICY_TYPES_MEMO_KEY_HEADER;
  set_string(&ret->val.per_record.memo.val.header, "classification", strlen("classification"));
  policy_client_free(client);
  policy_string_free(topic);
}

void exports_policy_reveal(policy_string_t *topic, policy_client_t *client, policy_reveal_t *ret) {
  ret->tag = KAPSULE_POLICY_TYPES_REVEAL_ALL;
  policy_client_free(client);
  policy_string_free(topic);
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// True if the record's first `name` header has exactly `value`. `r` is the record's 32-byte
// descriptor (bytes 16 and 20: index of its first header and header count); each header has a
// 16-byte descriptor (key offset, key length, value offset, value length; 0xFFFFFFFF: null).
static bool header_is(const policy_batch_view_t *b, const uint8_t *r, const char *name,
                      const char *value) {
  size_t nlen = strlen(name), vlen = strlen(value);
  const uint8_t *data = b->data.ptr;
  uint32_t start = le32(r + 16), count = le32(r + 20);
  for (uint32_t i = 0; i < count; i++) {
    size_t at = ((size_t)start + i) * 16;
    if (at + 16 > b->headers.len) return false;
    const uint8_t *h = b->headers.ptr + at;
    uint32_t koff = le32(h), klen = le32(h + 4), voff = le32(h + 8), vl = le32(h + 12);
    if (klen == nlen && (uint64_t)koff + klen <= b->data.len && memcmp(data + koff, name, nlen) == 0) {
      return vl == vlen && (uint64_t)voff + vl <= b->data.len && memcmp(data + voff, value, vlen) == 0;
    }
  }
  return false;
}

// The answer is a table of three distinct decisions and one index per record.
enum { CHOICE_PASS = 0, CHOICE_REJECT = 1, CHOICE_ENCRYPT = 2 };

void exports_policy_decide(policy_string_t *topic, policy_client_t *client,
                           policy_batch_view_t *batch, policy_decisions_t *ret) {
  kapsule_policy_types_decision_t *d = calloc(3, sizeof(kapsule_policy_types_decision_t));
  if (d == NULL) abort();
  d[CHOICE_PASS].tag = KAPSULE_POLICY_TYPES_DECISION_PASS;
  const char *m = "restricted records may not be produced to this topic";
  d[CHOICE_REJECT].tag = KAPSULE_POLICY_TYPES_DECISION_REJECT;
  set_string(&d[CHOICE_REJECT].val.reject, m, strlen(m));
  d[CHOICE_ENCRYPT].tag = KAPSULE_POLICY_TYPES_DECISION_ENCRYPT;
  kapsule_policy_types_encrypt_t *e = &d[CHOICE_ENCRYPT].val.encrypt;
  size_t klen = g_prefix_len + topic->len;
  char *key = malloc(klen ? klen : 1);
  if (key == NULL) abort();
  memcpy(key, g_prefix, g_prefix_len);
  memcpy(key + g_prefix_len, topic->ptr, topic->len);
  e->key_id.ptr = (uint8_t *)key;
  e->key_id.len = klen;
  e->value.tag = KAPSULE_POLICY_TYPES_VALUE_PART_WHOLE;
  e->record_key = false;
  e->headers.len = 1;
  e->headers.ptr = malloc(sizeof(policy_string_t));
  if (e->headers.ptr == NULL) abort();
  set_string(&e->headers.ptr[0], "pii", 3);
  ret->distinct.ptr = d;
  ret->distinct.len = 3;

  size_t n = batch->records.len / 32;  // one 32-byte descriptor per record
  ret->choices.len = n;
  ret->choices.ptr = n ? calloc(n, sizeof(uint32_t)) : NULL;
  if (n && ret->choices.ptr == NULL) abort();
  for (size_t i = 0; i < n; i++) {
    const uint8_t *r = batch->records.ptr + i * 32;
    if (header_is(batch, r, "classification", "public")) {
      ret->choices.ptr[i] = CHOICE_PASS;
    } else if (header_is(batch, r, "classification", "restricted")) {
      ret->choices.ptr[i] = CHOICE_REJECT;
    } else {
      ret->choices.ptr[i] = CHOICE_ENCRYPT;
    }
  }
  policy_batch_view_free(batch);
  policy_client_free(client);
  policy_string_free(topic);
}
