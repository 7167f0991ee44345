// tenant-keys (C, on the C SDK guest-sdk/c/kapsule_policy.h): encrypts each record's whole value
// under key <prefix><tenant>, the tenant from the `tenant` header. Config: the key prefix (default
// "tenant-"), optionally followed by ";memo=off". Records without the header, or with a tenant
// outside [A-Za-z0-9_-]{1,64}, are refused.
// The plan declares memo = header "tenant": Kapsule asks once per tenant it has not seen yet and
// reuses the answer for every other record of that tenant. ";memo=off" makes every record be
// decided (to compare).
// Build (from the repository root): guest-sdk/c/build.sh policies/tenant-keys/c/tenant_keys.c tenant_keys.wasm
#include <stdlib.h>
#include <string.h>

#include "kapsule_policy.h"

static char g_prefix[64] = "tenant-";
static bool g_memo = true;
static char *g_keys = NULL;  // one key-id buffer per record of the current batch

const char *kp_policy_init(const char *config, size_t len) {
  static const char memo_off[] = ";memo=off";
  size_t off_len = sizeof memo_off - 1;
  g_memo = true;
  if (len >= off_len && memcmp(config + len - off_len, memo_off, off_len) == 0) {
    g_memo = false;
    len -= off_len;
  }
  if (len == 0) return NULL;
  if (len >= sizeof g_prefix) return "tenant-keys: key prefix longer than 63 bytes";
  for (size_t i = 0; i < len; i++)
    if (config[i] <= ' ') return "tenant-keys: key prefix must not contain spaces or control characters";
  memcpy(g_prefix, config, len);
  g_prefix[len] = 0;
  return NULL;
}

kp_plan kp_policy_plan(kp_str topic, const kp_client *client) {
  kp_plan p = {.kind = KP_PLAN_PER_RECORD, .needs = KP_NEEDS_HEADERS,
               .memo = g_memo ? kp_memo_header("tenant") : (kp_memo){.kind = KP_MEMO_NONE}};
  return p;
}

static int valid_tenant(kp_bytes t) {
  if (t.ptr == NULL || t.len == 0 || t.len > 64) return 0;
  for (size_t i = 0; i < t.len; i++) {
    uint8_t c = t.ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return 0;
  }
  return 1;
}

void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out) {
  // Key ids must live until this function returns: one 128-byte slot per record.
  free(g_keys);
  g_keys = malloc(n * 128 + 1);
  if (g_keys == NULL) abort();
  size_t plen = strlen(g_prefix);
  for (size_t i = 0; i < n; i++) {
    kp_bytes t;
    if (!kp_find_header(&records[i], "tenant", &t)) {
      out[i] = kp_decide_reject("record has no `tenant` header");
    } else if (!valid_tenant(t)) {
      out[i] = kp_decide_reject("header `tenant` is not a valid tenant name ([A-Za-z0-9_-], 1 to 64)");
    } else {
      char *key = g_keys + i * 128;
      memcpy(key, g_prefix, plen);
      memcpy(key + plen, t.ptr, t.len);
      key[plen + t.len] = 0;
      out[i] = kp_decide_encrypt(kp_encrypt_whole(key));
    }
  }
}
