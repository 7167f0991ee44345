// header-gate: a Kapsule policy written in C.
//
// Config: the key-id prefix (default "kek-"); the key id is prefix + topic.
// Plan: per record, seeing only headers. For each record, the `classification` header decides:
//   "public"     -> pass in clear
//   "restricted" -> reject the record
//   anything else, or no header -> encrypt the whole value and every `pii` header (fail closed).
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

void exports_policy_plan(policy_string_t *topic, kapsule_policy_types_topic_plan_t *ret) {
  ret->tag = KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD;
  ret->val.per_record = KAPSULE_POLICY_TYPES_NEEDS_HEADERS;
  policy_string_free(topic);
}

static bool header_is(const kapsule_policy_types_record_view_t *r, const char *name,
                      const char *value) {
  size_t nlen = strlen(name), vlen = strlen(value);
  for (size_t i = 0; i < r->headers.len; i++) {
    const kapsule_policy_types_header_t *h = &r->headers.ptr[i];
    if (h->key.len == nlen && memcmp(h->key.ptr, name, nlen) == 0) {
      return h->value.is_some && h->value.val.len == vlen &&
             memcmp(h->value.val.ptr, value, vlen) == 0;
    }
  }
  return false;
}

void exports_policy_decide(policy_string_t *topic, policy_list_record_view_t *records,
                           policy_list_decision_t *ret) {
  size_t n = records->len;
  ret->len = n;
  ret->ptr = n ? calloc(n, sizeof(kapsule_policy_types_decision_t)) : NULL;
  if (n && ret->ptr == NULL) abort();
  for (size_t i = 0; i < n; i++) {
    const kapsule_policy_types_record_view_t *r = &records->ptr[i];
    kapsule_policy_types_decision_t *d = &ret->ptr[i];
    if (header_is(r, "classification", "public")) {
      d->tag = KAPSULE_POLICY_TYPES_DECISION_PASS;
    } else if (header_is(r, "classification", "restricted")) {
      const char *m = "restricted records may not be produced to this topic";
      d->tag = KAPSULE_POLICY_TYPES_DECISION_REJECT;
      set_string(&d->val.reject, m, strlen(m));
    } else {
      d->tag = KAPSULE_POLICY_TYPES_DECISION_ENCRYPT;
      kapsule_policy_types_encrypt_t *e = &d->val.encrypt;
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
    }
  }
  policy_list_record_view_free(records);
  policy_string_free(topic);
}
