// pii-fields (C, on the C SDK guest-sdk/c/kapsule_policy.h): encrypts the JSON fields at configured
// RFC 6901 pointers, and keeps them ciphertext for listed readers.
//
// Config: `key=value` settings separated by `;` (every one optional), for example
//   fields=/customer/email,/customer/phone,/items/0/phone; key_prefix=pii-; hidden_from=analytics
//   fields       JSON pointers to encrypt (default /email,/phone,/ssn,/customer/email,
//                /customer/phone). Pointers absent from a record are skipped by Kapsule.
//   key_prefix   the key id is key_prefix + topic (default pii-).
//   hidden_from  principals that read the PII fields as ciphertext (default analytics).
// Per record: a tombstone passes; a JSON object value gets its PII fields encrypted (the value stays
// JSON); any other value is encrypted whole (fail closed). Every JSON record of a topic gets the
// same decision, so a batch costs one distinct decision however many records it has.
// Build (from the repository root): guest-sdk/c/build.sh policies/pii-fields/c/pii_fields.c pii_fields.wasm
#include <stdlib.h>
#include <string.h>

#include "kapsule_policy.h"

#define MAX_ITEMS 32
#define MAX_CONFIG 4096

static char g_config[MAX_CONFIG];  // the config, split in place into the strings below
static const char *g_fields[MAX_ITEMS] = {"/email", "/phone", "/ssn", "/customer/email", "/customer/phone"};
static size_t g_fields_len = 5;
static const char *g_hidden[MAX_ITEMS] = {"analytics"};
static size_t g_hidden_len = 1;
static const char *g_prefix = "pii-";
static char g_key[320];

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
  return s;
}

// Splits `list` at commas into `out`; returns NULL or an error message.
static const char *split_list(char *list, const char **out, size_t *len, const char *what) {
  *len = 0;
  for (char *item = list; item != NULL;) {
    char *comma = strchr(item, ',');
    if (comma) *comma = 0;
    char *t = trim(item);
    if (*t) {
      if (*len == MAX_ITEMS) return "pii-fields: at most 32 entries per list";
      out[(*len)++] = t;
    }
    item = comma ? comma + 1 : NULL;
  }
  return *len == 0 ? what : NULL;
}

const char *kp_policy_init(const char *config, size_t len) {
  if (len >= sizeof g_config) return "pii-fields: config longer than 4095 bytes";
  memcpy(g_config, config, len + 1);
  for (char *setting = g_config; setting != NULL;) {
    char *semi = strchr(setting, ';');
    if (semi) *semi = 0;
    char *s = trim(setting);
    setting = semi ? semi + 1 : NULL;
    if (!*s) continue;
    char *eq = strchr(s, '=');
    if (!eq) return "pii-fields: config settings are key=value, separated by `;`";
    *eq = 0;
    char *name = trim(s), *value = trim(eq + 1);
    const char *err = NULL;
    if (strcmp(name, "fields") == 0) {
      err = split_list(value, g_fields, &g_fields_len, "pii-fields: `fields` is empty");
      for (size_t i = 0; !err && i < g_fields_len; i++)
        if (g_fields[i][0] != '/') err = "pii-fields: every field is a JSON pointer starting with `/`";
    } else if (strcmp(name, "hidden_from") == 0) {
      err = split_list(value, g_hidden, &g_hidden_len, NULL);
    } else if (strcmp(name, "key_prefix") == 0) {
      if (!*value || strlen(value) > 64) err = "pii-fields: key_prefix must have 1 to 64 bytes";
      g_prefix = value;
    } else {
      err = "pii-fields: unknown setting (use fields, key_prefix, hidden_from)";
    }
    if (err) return err;
  }
  return NULL;
}

kp_plan kp_policy_plan(kp_str topic, const kp_client *client) {
  kp_plan p = {.kind = KP_PLAN_PER_RECORD, .needs = KP_NEEDS_VALUE};
  return p;
}

// True if the value's first and last non-blank bytes are `{` and `}` (Kapsule checks the rest).
static bool looks_like_json_object(kp_bytes v) {
  size_t a = 0, b = v.len;
  while (a < b && (v.ptr[a] == ' ' || v.ptr[a] == '\t' || v.ptr[a] == '\n' || v.ptr[a] == '\r')) a++;
  while (b > a && (v.ptr[b - 1] == ' ' || v.ptr[b - 1] == '\t' || v.ptr[b - 1] == '\n' || v.ptr[b - 1] == '\r')) b--;
  return b - a >= 2 && v.ptr[a] == '{' && v.ptr[b - 1] == '}';
}

void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out) {
  size_t p = strlen(g_prefix);
  size_t t = topic.len < sizeof g_key - p - 1 ? topic.len : sizeof g_key - p - 1;
  memcpy(g_key, g_prefix, p);
  memcpy(g_key + p, topic.ptr, t);
  g_key[p + t] = 0;
  kp_encrypt fields = {.key_id = g_key, .value = KP_VALUE_JSON_FIELDS, .json_fields = g_fields,
                       .json_fields_len = g_fields_len};
  kp_decision pii = kp_decide_encrypt(fields);
  kp_decision whole = kp_decide_encrypt(kp_encrypt_whole(g_key));
  for (size_t i = 0; i < n; i++) {
    if (records[i].value.ptr == NULL) continue;  // tombstone: a zeroed decision passes
    out[i] = looks_like_json_object(records[i].value) ? pii : whole;
  }
}

kp_reveal kp_policy_reveal(kp_str topic, const kp_client *client) {
  kp_reveal r = {.kind = KP_REVEAL_ALL};
  for (size_t i = 0; i < g_hidden_len; i++) {
    // Nothing decrypted: the PII fields stay ciphertext, the rest of the JSON is clear anyway.
    if (kp_client_is(client, g_hidden[i])) r.kind = KP_REVEAL_PARTS;
  }
  return r;
}
