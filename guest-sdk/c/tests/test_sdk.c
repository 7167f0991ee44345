// Native unit tests of the C SDK (kapsule_policy.c) with the C examples and with sdk_policy.c, over the bindings
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

// The component's `describe-schema` import, faked: answers g_fake_schema(id) (fills `info` and
// returns true, or returns an error message), lowered into the return area exactly as the
// canonical-ABI glue does, and records every id asked in g_asked.
static bool (*g_fake_schema)(uint32_t id, policy_schema_info_t *info, const char **error) = NULL;
static uint32_t g_asked[64];
static size_t g_asked_len = 0;
void __wasm_import_policy_describe_schema(int32_t id, uint8_t *ret) {
  if (g_asked_len < sizeof g_asked / sizeof g_asked[0]) g_asked[g_asked_len++] = (uint32_t)id;
  policy_schema_info_t info;
  memset(&info, 0, sizeof info);
  const char *error = "no registry in this test";
  if (g_fake_schema && g_fake_schema((uint32_t)id, &info, &error)) {
    const size_t P = sizeof(void *);
    *(uint8_t *)ret = 0;
    *(uint8_t *)(ret + P) = info.format;
    *(uint8_t *)(ret + 2 * P) = info.subject.is_some;
    *(uint8_t **)(ret + 3 * P) = info.subject.val.ptr;
    *(size_t *)(ret + 4 * P) = info.subject.val.len;
    *(uint8_t *)(ret + 5 * P) = info.version.is_some;
    *(int32_t *)(ret + 4 + 5 * P) = (int32_t)info.version.val;
    *(void **)(ret + 8 + 5 * P) = info.fields.ptr;
    *(size_t *)(ret + 8 + 6 * P) = info.fields.len;
    *(uint8_t *)(ret + 8 + 7 * P) = info.fields_truncated;
  } else {
    policy_string_t e;
    policy_string_dup(&e, error);
    *(uint8_t *)ret = 1;
    *(uint8_t **)(ret + sizeof(void *)) = e.ptr;
    *(size_t *)(ret + 2 * sizeof(void *)) = e.len;
  }
}

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

#ifdef KP_TEST_SDK_POLICY
// The 0.3.0 helpers, driven through sdk_policy.c.
#include "kapsule_policy.h"

extern kp_plan kp_test_plan;
extern void (*kp_test_decide)(const kp_record *records, size_t n, kp_decision *out);

// `n` records without key, value or headers, and a schema-ids list of `ids_len` entries from
// `ids` (value id, key id per record).
static policy_batch_view_t batch_ids(size_t n, const uint32_t (*ids)[2], size_t ids_len) {
  policy_batch_view_t b;
  memset(&b, 0, sizeof b);
  b.records.len = 32 * n;
  b.records.ptr = calloc(n, 32);
  for (size_t i = 0; i < n; i++) {
    put32(b.records.ptr + 32 * i + 4, 0xFFFFFFFFu);
    put32(b.records.ptr + 32 * i + 12, 0xFFFFFFFFu);
  }
  b.schema_ids.len = 8 * ids_len;
  b.schema_ids.ptr = ids_len ? calloc(ids_len, 8) : NULL;
  for (size_t i = 0; i < ids_len; i++) {
    put32(b.schema_ids.ptr + 8 * i, ids[i][0]);
    put32(b.schema_ids.ptr + 8 * i + 4, ids[i][1]);
  }
  return b;
}

static policy_decisions_t decide(policy_batch_view_t b) {
  policy_string_t topic = str("orders");
  policy_client_t c = client(NULL);
  policy_decisions_t d;
  exports_policy_decide(&topic, &c, &b, &d);
  return d;
}

static int64_t g_seen[8][2];  // per record: value id, key id (-1: not in the wire format)

static void record_ids(const kp_record *records, size_t n, kp_decision *out) {
  for (size_t i = 0; i < n && i < 8; i++) {
    uint32_t id;
    g_seen[i][0] = kp_value_schema_id(&records[i], &id) ? (int64_t)id : -1;
    g_seen[i][1] = kp_key_schema_id(&records[i], &id) ? (int64_t)id : -1;
  }
}

static void test_schema_ids(void) {
  kp_test_decide = record_ids;
  const uint32_t ids[3][2] = {{42, 256}, {0xFFFFFFFFu, 0xFFFFFFFFu}, {0xFFFFFFFEu, 0xFFFFFFFFu}};
  policy_decisions_t d = decide(batch_ids(3, ids, 3));
  CHECK(g_seen[0][0] == 42 && g_seen[0][1] == 256);
  CHECK(g_seen[1][0] == -1 && g_seen[1][1] == -1);
  CHECK(g_seen[2][0] == 0xFFFFFFFEll && g_seen[2][1] == -1);
  CHECK(d.choices.len == 3 && d.distinct.len == 1);
  policy_decisions_free(&d);
  // A list shorter than the batch (Kapsule never sends one) reads as "not in the wire format".
  d = decide(batch_ids(2, ids, 1));
  CHECK(g_seen[0][0] == 42 && g_seen[1][0] == -1 && g_seen[1][1] == -1);
  policy_decisions_free(&d);
}

static void pii_or_email(const kp_record *records, size_t n, kp_decision *out) {
  // Equal lists in different arrays, as a policy building them per record would have.
  static const char *const pii_a[] = {"PII"}, *const pii_b[] = {"PII"};
  static const char *const email[] = {"customer.email"};
  for (size_t i = 0; i < n; i++) {
    kp_encrypt e = i == 1 ? kp_encrypt_schema_fields("kek-orders", email, 1, pii_a, 1)
                          : kp_encrypt_schema_fields("kek-orders", NULL, 0, i ? pii_b : pii_a, 1);
    out[i] = kp_decide_encrypt(e);
  }
}

static void test_schema_fields(void) {
  kp_test_decide = pii_or_email;
  const uint32_t ids[3][2] = {{1, 0xFFFFFFFFu}, {1, 0xFFFFFFFFu}, {1, 0xFFFFFFFFu}};
  policy_decisions_t d = decide(batch_ids(3, ids, 3));
  CHECK(d.choices.len == 3 && d.distinct.len == 2);
  CHECK(d.choices.ptr[0] == 0 && d.choices.ptr[1] == 1 && d.choices.ptr[2] == 0);
  for (size_t j = 0; j < d.distinct.len; j++) {
    CHECK(d.distinct.ptr[j].tag == KAPSULE_POLICY_TYPES_DECISION_ENCRYPT);
    kapsule_policy_types_encrypt_t *e = &d.distinct.ptr[j].val.encrypt;
    CHECK(str_is(&e->key_id, "kek-orders"));
    CHECK(e->value.tag == KAPSULE_POLICY_TYPES_VALUE_PART_SCHEMA_FIELDS);
    kapsule_policy_types_schema_selection_t *sel = &e->value.val.schema_fields;
    CHECK(sel->tags.len == 1 && str_is(&sel->tags.ptr[0], "PII"));
    CHECK(sel->fields.len == j);
    if (j == 1) CHECK(str_is(&sel->fields.ptr[0], "customer.email"));
  }
  policy_decisions_free(&d);
}

// The fake registry: 7 an Avro schema with text, bytes and other fields, 8 a truncated Protobuf
// schema without subject, any other id an error.
static void fake_field(kapsule_policy_types_schema_field_t *f, const char *path, const char *tag,
                       kapsule_policy_types_field_kind_t kind) {
  policy_string_dup(&f->path, path);
  f->tags.len = tag ? 1 : 0;
  f->tags.ptr = tag ? malloc(sizeof(policy_string_t)) : NULL;
  if (tag) policy_string_dup(&f->tags.ptr[0], tag);
  f->kind = kind;
}

static bool fake_registry(uint32_t id, policy_schema_info_t *info, const char **error) {
  if (id == 7) {
    info->format = KAPSULE_POLICY_TYPES_SCHEMA_FORMAT_AVRO;
    info->subject.is_some = true;
    policy_string_dup(&info->subject.val, "orders-value");
    info->version.is_some = true;
    info->version.val = 3;
    info->fields.len = 5;
    info->fields.ptr = calloc(5, sizeof(kapsule_policy_types_schema_field_t));
    fake_field(&info->fields.ptr[0], "email", NULL, KAPSULE_POLICY_TYPES_FIELD_KIND_TEXT);
    fake_field(&info->fields.ptr[1], "customer", NULL, KAPSULE_POLICY_TYPES_FIELD_KIND_OTHER);
    fake_field(&info->fields.ptr[2], "customer.email", "PII", KAPSULE_POLICY_TYPES_FIELD_KIND_TEXT);
    fake_field(&info->fields.ptr[3], "customer.email_count", NULL, KAPSULE_POLICY_TYPES_FIELD_KIND_OTHER);
    fake_field(&info->fields.ptr[4], "photo", "PII", KAPSULE_POLICY_TYPES_FIELD_KIND_BYTES);
    return true;
  }
  if (id == 8) {
    info->format = KAPSULE_POLICY_TYPES_SCHEMA_FORMAT_PROTOBUF;
    info->fields.len = 1;
    info->fields.ptr = calloc(1, sizeof(kapsule_policy_types_schema_field_t));
    fake_field(&info->fields.ptr[0], "id", NULL, KAPSULE_POLICY_TYPES_FIELD_KIND_OTHER);
    info->fields_truncated = true;
    return true;
  }
  *error = "schema registry unavailable: connection refused";
  return false;
}

// Copied: the error message lives only until kp_policy_decide returns.
static char g_schema_error[128];
static const kp_schema_info *g_orders = NULL, *g_proto = NULL;

static void by_email(const kp_record *records, size_t n, kp_decision *out) {
  static const char *const pii[] = {"PII"};
  for (size_t i = 0; i < n; i++) {
    uint32_t id;
    if (!kp_value_schema_id(&records[i], &id)) {
      out[i] = kp_decide_encrypt(kp_encrypt_whole("k"));
      continue;
    }
    const char *error = NULL;
    const kp_schema_info *s = kp_describe_schema(id, &error);
    if (s == NULL) {
      snprintf(g_schema_error, sizeof g_schema_error, "%s", error);
      out[i] = kp_decide_encrypt(kp_encrypt_schema_fields("k", NULL, 0, pii, 1));
      continue;
    }
    if (id == 7) {
      g_orders = s;
      CHECK(s->format == KP_SCHEMA_AVRO && strcmp(s->subject, "orders-value") == 0);
      CHECK(s->has_version && s->version == 3 && !s->fields_truncated && s->fields_len == 5);
      CHECK(s->fields[2].tags_len == 1 && strcmp(s->fields[2].tags[0], "PII") == 0);
      CHECK(s->fields[4].kind == KP_FIELD_BYTES && s->fields[1].kind == KP_FIELD_OTHER);
      size_t m;
      const char *const *tagged = kp_schema_select(s, kp_field_has_tag, "PII", &m);
      CHECK(m == 2 && strcmp(tagged[0], "customer.email") == 0 && strcmp(tagged[1], "photo") == 0);
      kp_schema_select(s, kp_field_path_contains, "customer", &m);
      CHECK(m == 1);  // customer and customer.email_count are not encryptable
    } else {
      g_proto = s;
      CHECK(s->format == KP_SCHEMA_PROTOBUF && s->subject == NULL && !s->has_version);
      CHECK(s->fields_truncated);
    }
    size_t m;
    const char *const *paths = kp_schema_select(s, kp_field_path_contains, "email", &m);
    out[i] = m ? kp_decide_encrypt(kp_encrypt_schema_fields("k", paths, m, NULL, 0))
               : (kp_decision){.kind = KP_PASS};
  }
}

static void test_describe_schema(void) {
  // The helpers above decided schema-encoded records without describing: nothing was asked.
  CHECK(g_asked_len == 0);
  g_fake_schema = fake_registry;
  kp_test_decide = by_email;
  const uint32_t N = 0xFFFFFFFFu;
  const uint32_t ids[6][2] = {{7, N}, {9, N}, {7, N}, {N, N}, {9, N}, {8, N}};
  policy_decisions_t d = decide(batch_ids(6, ids, 6));
  CHECK(g_asked_len == 3 && g_asked[0] == 7 && g_asked[1] == 9 && g_asked[2] == 8);
  CHECK(g_orders != NULL && g_proto != NULL);
  CHECK(strcmp(g_schema_error, "schema registry unavailable: connection refused") == 0);
  // by name, by tag, by name, whole, by tag, pass
  const uint32_t want[6] = {0, 1, 0, 2, 1, 3};
  CHECK(d.choices.len == 6 && d.distinct.len == 4);
  for (size_t i = 0; i < 6 && i < d.choices.len; i++) CHECK(d.choices.ptr[i] == want[i]);
  if (d.distinct.len == 4) {
    kapsule_policy_types_schema_selection_t *sel = &d.distinct.ptr[0].val.encrypt.value.val.schema_fields;
    CHECK(d.distinct.ptr[0].val.encrypt.value.tag == KAPSULE_POLICY_TYPES_VALUE_PART_SCHEMA_FIELDS);
    CHECK(sel->fields.len == 2 && sel->tags.len == 0);
    CHECK(str_is(&sel->fields.ptr[0], "email") && str_is(&sel->fields.ptr[1], "customer.email"));
    sel = &d.distinct.ptr[1].val.encrypt.value.val.schema_fields;
    CHECK(sel->fields.len == 0 && sel->tags.len == 1 && str_is(&sel->tags.ptr[0], "PII"));
    CHECK(d.distinct.ptr[2].val.encrypt.value.tag == KAPSULE_POLICY_TYPES_VALUE_PART_WHOLE);
    CHECK(d.distinct.ptr[3].tag == KAPSULE_POLICY_TYPES_DECISION_PASS);
  }
  policy_decisions_free(&d);
  // The next batch asks again: answers are valid for one decide call.
  const uint32_t again[1][2] = {{7, N}};
  d = decide(batch_ids(1, again, 1));
  CHECK(g_asked_len == 4 && g_asked[3] == 7);
  policy_decisions_free(&d);
  // Outside decide it answers an error without asking Kapsule.
  const char *error = NULL;
  CHECK(kp_describe_schema(7, &error) == NULL && error && strstr(error, "only during"));
  CHECK(g_asked_len == 4);
  kp_test_decide = NULL;
}

static policy_topic_plan_t plan_with(kp_memo memo) {
  kp_plan p = {.kind = KP_PLAN_PER_RECORD, .needs = KP_NEEDS_VALUE, .memo = memo};
  kp_test_plan = p;
  policy_string_t topic = str("orders");
  policy_client_t c = client(NULL);
  policy_topic_plan_t out;
  exports_policy_plan(&topic, &c, &out);
  return out;
}

static void test_memo_headers(void) {
  static const char *const two[] = {"tenant", "class"};
  policy_topic_plan_t p = plan_with(kp_memo_headers(two, 2));
  CHECK(p.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD);
  CHECK(p.val.per_record.memo.tag == KAPSULE_POLICY_TYPES_MEMO_KEY_HEADERS);
  CHECK(p.val.per_record.memo.val.headers.len == 2);
  CHECK(str_is(&p.val.per_record.memo.val.headers.ptr[1], "class"));
  // The memo's headers are shown to decide even though needs left them out.
  CHECK(p.val.per_record.needs == (KAPSULE_POLICY_TYPES_NEEDS_VALUE | KAPSULE_POLICY_TYPES_NEEDS_HEADERS));
  policy_topic_plan_free(&p);

  static const char *const twice[] = {"tenant", "tenant"}, *const empty[] = {"tenant", ""};
  static const char *const seventeen[17] = {"a", "b", "c", "d", "e", "f", "g", "h", "i",
                                            "j", "k", "l", "m", "n", "o", "p", "q"};
  const kp_memo bad[] = {kp_memo_headers(twice, 2), kp_memo_headers(empty, 2),
                         kp_memo_headers(seventeen, 17), kp_memo_headers(NULL, 2),
                         kp_memo_headers(two, 0)};
  const char *why[] = {"twice", "empty header name", "1 to 16", "1 to 16", "1 to 16"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    p = plan_with(bad[i]);
    CHECK(p.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL);
    if (p.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_REJECT_ALL) {
      char msg[256] = {0};
      memcpy(msg, p.val.reject_all.ptr, p.val.reject_all.len < 255 ? p.val.reject_all.len : 255);
      CHECK(strstr(msg, why[i]) != NULL);
    }
    policy_topic_plan_free(&p);
  }
  p = plan_with(kp_memo_headers(seventeen, 16));
  CHECK(p.tag == KAPSULE_POLICY_TYPES_TOPIC_PLAN_PER_RECORD);
  policy_topic_plan_free(&p);
}

static void test_sdk(void) {
  CHECK(init(""));
  test_schema_ids();
  test_schema_fields();
  test_describe_schema();
  test_memo_headers();
}
#endif

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  if (strcmp(argv[1], "tenant_keys") == 0) test_tenant_keys();
  else if (strcmp(argv[1], "pii_fields") == 0) test_pii_fields();
#ifdef KP_TEST_SDK_POLICY
  else if (strcmp(argv[1], "sdk") == 0) test_sdk();
#endif
  else return 2;
  if (failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", argv[1], failures);
    return 1;
  }
  printf("%s: ok\n", argv[1]);
  return 0;
}
