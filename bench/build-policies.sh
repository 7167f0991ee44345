#!/usr/bin/env bash
# Builds the policy modules the benchmark configs (bench/configs/*.yaml) load into bench/modules/:
#   - Rust examples (policies/<example>/rust, cargo --target wasm32-wasip2 --release): encrypt_all,
#     tenant_keys, pii_fields
#   - C tenant-keys (guest-sdk/c/build.sh), Python and JavaScript tenant-keys and pii-fields
#     (the SDKs' build commands run from the checkout: python3 -m kapsule_policy._build,
#     guest-sdk/js/build.mjs)
# Toolchains: scripts/install-policy-toolchains.sh. Languages whose toolchain is missing are skipped
# with a message (their benchmark paths then fail to start and are reported as failed).
# Usage: bench/build-policies.sh [rust] [c] [python] [js]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out="$PWD/bench/modules"
mkdir -p "$out"
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(rust c python js)
for lang in "${langs[@]}"; do
  case "$lang" in
    rust)
      (cd policies && cargo build --release --target wasm32-wasip2 --quiet)
      rdir="${CARGO_TARGET_DIR:-$PWD/policies/target}/wasm32-wasip2/release"
      for m in encrypt_all tenant_keys pii_fields; do cp "$rdir/$m.wasm" "$out/rust_$m.wasm"; done ;;
    c)
      guest-sdk/c/build.sh policies/tenant-keys/c/tenant_keys.c "$out/c_tenant_keys.wasm" >/dev/null ;;
    python)
      for m in tenant-keys pii-fields; do
        PYTHONPATH="$PWD/guest-sdk/python" python3 -m kapsule_policy._build \
          "policies/$m/python/app.py" "$out/python_${m//-/_}.wasm" >/dev/null
      done ;;
    js)
      for m in tenant-keys pii-fields; do
        node guest-sdk/js/build.mjs "policies/$m/js/policy.js" -o "$out/js_${m//-/_}.wasm" >/dev/null
      done ;;
    *) echo "unknown language $lang (rust|c|python|js)" >&2; exit 2 ;;
  esac
  echo "built $lang policies into $out" >&2
done
ls -l "$out"
