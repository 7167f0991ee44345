// Native unit tests of the C SDK (kapsule_policy.c) with the C examples, over the bindings
// `wit-bindgen c` generates, compiled for the build machine (no Wasm): guest-sdk/c/tests/run.sh.
// The exports are called exactly as the component's canonical-ABI glue calls them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

// The component's `log` import and type-object anchor, stubbed for a native build.
void __wasm_import_policy_log(int32_t level, uint8_t *ptr, size_t len) {
  (void)level, (void)ptr, (void)len;
}
char __component_type_object_force_link_policy;

static int failures = 0;
#define CHECK(cond)                                                 \
  do {                                                              \
    if (!(cond)) {                                                  \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                   \
    }                                                               \
  } while (0)

static policy_string_t str(const char *s) {
  policy_string_t out;
  policy_string_dup(&out, s);
  return out;
}

static bool str_is(const policy_string_t *s, const char *text) {
  return s->len == strlen(text) && memcmp(s->ptr, text, s->len) == 0;
}

static policy_client_t client(const char *name) {
  policy_client_t c;
  memset(&c, 0, sizeof c);
  if (name) {
    c.principal.is_some = true;
    c.principal.val.name = str(name);
    c.principal.val.mechanism = KAPSULE_POLICY_TYPES_AUTH_MECHANISM_SASL_SCRAM_SHA512;
  }
  return c;
}

static bool init(const char *config) {
  policy_string_t c = str(config), err = {0};
  bool ok = exports_policy_init(&c, &err);
  if (!ok) policy_string_free(&err);  // as the component's post-return does
  return ok;
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// One record with `value` (NULL: tombstone) and at most one header, in Kapsule's flat layout
// (wit/policy.wit): 32-byte record and 16-byte header descriptors, little-endian.
static policy_batch_view_t batch1(const char *value, const char *hkey, const char *hval) {
  policy_batch_view_t b;
  memset(&b, 0, sizeof b);
  size_t vl = value ? strlen(value) : 0, kl = hkey ? strlen(hkey) : 0, hl = hval ? strlen(hval) : 0;
  b.data.len = vl + kl + hl;
  b.data.ptr = b.data.len ? malloc(b.data.len) : NULL;
  if (vl) memcpy(b.data.ptr, value, vl);
  if (kl) memcpy(b.data.ptr + vl, hkey, kl);
  if (hl) memcpy(b.data.ptr + vl + kl, hval, hl);
  b.records.len = 32;
  b.records.ptr = calloc(1, 32);
  uint8_t *r = b.records.ptr;
  put32(r + 4, 0xFFFFFFFFu);  // no key
  put32(r + 8, 0);
  put32(r + 12, value ? (uint32_t)vl : 0xFFFFFFFFu);
  if (hkey) {
    b.headers.len = 16;
    b.headers.ptr = calloc(1, 16);
    put32(b.headers.ptr, (uint32_t)vl);
    put32(b.headers.ptr + 4, (uint32_t)kl);
    put32(b.headers.ptr + 8, (uint32_t)(vl + kl));
    put32(b.headers.ptr + 12, (uint32_t)hl);
    put32(r + 20, 1);
  }
  return b;
}

static void test_tenant_keys(void) {
  CHECK(init(""));
  policy_string_t topic = str("orders");
  policy_client_t c = client(NULL);
  policy_topic_plan_t plan;
  exports_policy_plan(&topic, &c, &plan);
  CHECK(plan.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD);
  CHECK(plan.val.per_record.memo.tag == KAPSULE_POLICY_TYPES_MEMO_KEY_HEADER);
  CHECK(str_is(&plan.val.per_record.memo.val.header, "tenant"));
  CHECK(plan.val.per_record.needs == KAPSULE_POLICY_TYPES_NEEDS_HEADERS);
  policy_topic_plan_free(&plan);

  topic = str("orders");
  c = client("alice");
  policy_batch_view_t b = batch1("v", "tenant", "acme");
  policy_decisions_t d;
  exports_policy_decide(&topic, &c, &b, &d);
  CHECK(d.choices.len == 1 && d.distinct.len == 1);
  CHECK(d.distinct.ptr[0].tag == KAPSULE_POLICY_TYPES_DECISION_ENCRYPT);
  CHECK(str_is(&d.distinct.ptr[0].val.encrypt.key_id, "tenant-acme"));
  policy_decisions_free(&d);

  // ";memo=off": every record is decided; the prefix before it still applies.
  CHECK(init("bench-;memo=off"));
  topic = str("orders");
  c = client(NULL);
  exports_policy_plan(&topic, &c, &plan);
  CHECK(plan.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD);
  CHECK(plan.val.per_record.memo.tag == KAPSULE_POLICY_TYPES_MEMO_KEY_NONE);
  policy_topic_plan_free(&plan);
  topic = str("orders");
  c = client(NULL);
  b = batch1("v", "tenant", "acme");
  exports_policy_decide(&topic, &c, &b, &d);
  CHECK(d.choices.len == 1 && str_is(&d.distinct.ptr[0].val.encrypt.key_id, "bench-acme"));
  policy_decisions_free(&d);
  CHECK(init(""));

  // No kp_policy_reveal in tenant_keys.c: the SDK's weak default reveals everything.
  topic = str("orders");
  c = client("analytics");
  policy_reveal_t r;
  exports_policy_reveal(&topic, &c, &r);
  CHECK(r.tag == KAPSULE_POLICY_TYPES_REVEAL_ALL);
  policy_reveal_free(&r);
}

static void test_pii_fields(void) {
  CHECK(!init("nonsense"));
  CHECK(!init("fields=customer/email"));
  CHECK(init("fields=/customer/email, /items/0/phone; hidden_from=analytics,bi"));
  policy_string_t topic = str("orders");
  policy_client_t c = client("alice");
  policy_topic_plan_t plan;
  exports_policy_plan(&topic, &c, &plan);
  CHECK(plan.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD);
  CHECK(plan.val.per_record.memo.tag == KAPSULE_POLICY_TYPES_MEMO_KEY_NONE);
  CHECK(plan.val.per_record.needs == KAPSULE_POLICY_TYPES_NEEDS_VALUE);
  policy_topic_plan_free(&plan);

  const char *values[] = {"{\"customer\": {\"email\": \"x\"}}", "plain text", NULL};
  int want[] = {KAPSULE_POLICY_TYPES_VALUE_PART_JSON_FIELDS, KAPSULE_POLICY_TYPES_VALUE_PART_WHOLE, -1};
  for (int i = 0; i < 3; i++) {
    topic = str("orders");
    c = client("alice");
    policy_batch_view_t b = batch1(values[i], NULL, NULL);
    policy_decisions_t d;
    exports_policy_decide(&topic, &c, &b, &d);
    CHECK(d.choices.len == 1 && d.distinct.len == 1);
    if (want[i] < 0) {
      CHECK(d.distinct.ptr[0].tag == KAPSULE_POLICY_TYPES_DECISION_PASS);
    } else {
      kapsule_policy_types_encrypt_t *e = &d.distinct.ptr[0].val.encrypt;
      CHECK(d.distinct.ptr[0].tag == KAPSULE_POLICY_TYPES_DECISION_ENCRYPT);
      CHECK(str_is(&e->key_id, "pii-orders"));
      CHECK(e->value.tag == want[i]);
      if (want[i] == KAPSULE_POLICY_TYPES_VALUE_PART_JSON_FIELDS) {
        CHECK(e->value.val.json_fields.len == 2);
        CHECK(str_is(&e->value.val.json_fields.ptr[1], "/items/0/phone"));
      }
    }
    policy_decisions_free(&d);
  }

  const char *readers[] = {"analytics", "bi", "alice", NULL};
  int reveal[] = {KAPSULE_POLICY_TYPES_REVEAL_PARTS, KAPSULE_POLICY_TYPES_REVEAL_PARTS,
                  KAPSULE_POLICY_TYPES_REVEAL_ALL, KAPSULE_POLICY_TYPES_REVEAL_ALL};
  for (int i = 0; i < 4; i++) {
    topic = str("orders");
    c = client(readers[i]);
    policy_reveal_t r;
    exports_policy_reveal(&topic, &c, &r);
    CHECK(r.tag == reveal[i]);
    if (r.tag == KAPSULE_POLICY_TYPES_REVEAL_PARTS) {
      CHECK(!r.val.parts.value && r.val.parts.json_fields.len == 0 && r.val.parts.headers.len == 0);
    }
    policy_reveal_free(&r);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  if (strcmp(argv[1], "tenant_keys") == 0) test_tenant_keys();
  else if (strcmp(argv[1], "pii_fields") == 0) test_pii_fields();
  else return 2;
  if (failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", argv[1], failures);
    return 1;
  }
  printf("%s: ok\n", argv[1]);
  return 0;
}
