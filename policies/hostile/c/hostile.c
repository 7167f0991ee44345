// TEST ONLY: a C policy (on the C SDK) that misbehaves the way its config names, to prove Kapsule
// contains C guests. Never bind it to real topics.
//
// Config (one word): `ok` (per record: encrypts the whole value under `kek-ok`), `loop-decide`
// (never returns), `alloc-decide` (allocates 1 MiB after 1 MiB until malloc fails, then the SDK's
// allocation aborts), `print-init` and `print-decide` (5000 printf lines, then behave like `ok`),
// `raise-decide` (refuses the batch: C's way of reporting an error), `trap-decide` (abort()),
// `bad-key` (a key id outside the binding's `allowed_key_ids`). The malformed answers of the
// Python and JS hostile modules (`wrong-count`, `bad-index`) cannot be written on the C SDK.
// Build (from the repository root): guest-sdk/c/build.sh policies/hostile/c/hostile.c hostile.wasm
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kapsule_policy.h"

static char g_mode[32] = "ok";
static volatile unsigned long g_spin;
static void *volatile g_hoard;

static void storm(const char *where) {
  for (int i = 0; i < 5000; i++) printf("hostile print storm in %s %d\n", where, i);
  fflush(stdout);
}

static bool mode_is(const char *m) { return strcmp(g_mode, m) == 0; }

const char *kp_policy_init(const char *config, size_t len) {
  static const char *modes[] = {"ok", "loop-decide", "alloc-decide", "print-init", "print-decide",
                                "raise-decide", "trap-decide", "bad-key"};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    if (strlen(modes[i]) == len && memcmp(modes[i], config, len) == 0) {
      memcpy(g_mode, config, len + 1);
      if (mode_is("print-init")) storm("init");
      return NULL;
    }
  }
  return "hostile: unknown mode";
}

kp_plan kp_policy_plan(kp_str topic, const kp_client *client) {
  kp_plan p = {.kind = KP_PLAN_PER_RECORD, .needs = KP_NEEDS_VALUE};
  return p;
}

void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out) {
  if (mode_is("loop-decide")) {
    for (;;) g_spin++;
  }
  if (mode_is("alloc-decide")) {
    for (;;) {
      void **block = malloc(1 << 20);
      if (block == NULL) abort();
      memset(block, 1, 1 << 20);
      block[0] = g_hoard;  // keep every block reachable
      g_hoard = block;
    }
  }
  if (mode_is("print-decide")) storm("decide");
  if (mode_is("trap-decide")) abort();
  kp_decision d = mode_is("raise-decide") ? kp_decide_reject("hostile policy refuses the batch")
                                          : kp_decide_encrypt(kp_encrypt_whole(
                                                mode_is("bad-key") ? "kek-not-allowed" : "kek-ok"));
  for (size_t i = 0; i < n; i++) out[i] = d;
}
