#!/usr/bin/env bash
# Native unit tests of the C SDK with the C examples (tenant_keys.c, pii_fields.c) and its own test
# policy (sdk_policy.c): the bindings
# `wit-bindgen c` generates from the SDK's wit/ are compiled for this machine (no Wasm) and the exports are
# called as the component glue calls them. Usage: guest-sdk/c/tests/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sdk="$(dirname "$here")"
repo="$(cd "$sdk/../.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wit-bindgen c "$sdk/wit" --world kapsule:policy/policy --out-dir "$work" >/dev/null
cflags=(-O1 -g -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unknown-attributes -fsanitize=address,undefined -I "$work" -I "$sdk")
for example in tenant_keys pii_fields; do
  clang "${cflags[@]}" "$here/test_sdk.c" "$work/policy.c" "$sdk/kapsule_policy.c" \
    "$repo/policies/${example//_/-}/c/$example.c" -o "$work/$example"
  "$work/$example" "$example"
done
# The SDK's own helpers (schema ids, schema-fields decisions, describe-schema over a faked import,
# memo on several headers).
clang "${cflags[@]}" -DKP_TEST_SDK_POLICY "$here/test_sdk.c" "$work/policy.c" "$sdk/kapsule_policy.c" \
  "$here/sdk_policy.c" -o "$work/sdk"
"$work/sdk" sdk
