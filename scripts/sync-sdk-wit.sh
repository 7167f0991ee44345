#!/usr/bin/env bash
# Copies the policy contract (wit/policy.wit, the one source) into each guest SDK package, which
# ships it so it builds outside this repository: guest-sdk/rust/wit, guest-sdk/python/kapsule_policy/wit,
# guest-sdk/js/wit, guest-sdk/c/wit. Run after editing wit/policy.wit; the host's unit test
# `policy::scaffold` fails while a copy differs. Usage: scripts/sync-sdk-wit.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
for dir in rust/wit python/kapsule_policy/wit js/wit c/wit; do
  mkdir -p "$repo/guest-sdk/$dir"
  cp "$repo/wit/policy.wit" "$repo/guest-sdk/$dir/policy.wit"
done
