#!/usr/bin/env bash
# Builds the C policy `header-gate` into a WebAssembly component: target/header_gate.wasm. It is
# written directly on the bindings `wit-bindgen c` generates (no SDK), so the C SDK's build runs
# with --no-sdk; see guest-sdk/c/build.sh for the toolchain it finds (wasi-sdk or clang + wasi-libc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../../../guest-sdk/c/build.sh" --no-sdk "$here/header_gate.c" "$here/target/header_gate.wasm"
echo "$here/target/header_gate.wasm"
