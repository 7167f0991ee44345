// A policy for the C SDK's own unit tests (test_sdk.c built with -DKP_TEST_SDK_POLICY): `plan`
// answers what the test put in kp_test_plan, `decide` hands the records to kp_test_decide.
#include <stddef.h>

#include "kapsule_policy.h"

kp_plan kp_test_plan;
void (*kp_test_decide)(const kp_record *records, size_t n, kp_decision *out);

const char *kp_policy_init(const char *config, size_t len) {
  return NULL;
}

kp_plan kp_policy_plan(kp_str topic, const kp_client *client) {
  return kp_test_plan;
}

void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out) {
  if (kp_test_decide) kp_test_decide(records, n, out);
}
