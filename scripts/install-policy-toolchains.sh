#!/usr/bin/env bash
# Idempotent installer for the toolchains that build Kapsule policies:
#   - Rust target wasm32-wasip2 (Rust policies; cargo emits components directly)
#   - clang + lld + wasi-libc + compiler-rt for wasm32 (C policies, Debian/Ubuntu packages)
#   - wit-bindgen CLI 0.60.0 (C bindings; the same generation as the wit-bindgen crate the SDK uses)
#   - componentize-py 0.25.1 (Python policies; pip, into the current Python environment)
#   - the JS SDK's npm dependencies (componentize-js 0.23, rolldown; jco 1.35 and typescript for its
#     tests), project-local in guest-sdk/js/node_modules, which guest-sdk/js/build.mjs uses when
#     the repository's examples are built from the checkout. A policy outside the repository gets
#     them from its own `npm install` (kapsule policy new --lang js).
# The C policy is linked into a component by `wasm-component-ld`, which ships with the Rust
# toolchain (it embeds the wasi_snapshot_preview1 reactor adapter), so no adapter download is needed.
# Each step is skipped when already present. Usage: scripts/install-policy-toolchains.sh
set -euo pipefail

log() { printf '[install-policy-toolchains] %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"
have() { command -v "$1" >/dev/null 2>&1; }

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding rust target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

need_apt=()
have clang || need_apt+=(clang)
have wasm-ld || need_apt+=(lld)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need_apt+=(wasi-libc)
ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 || {
  clang_major="$( (clang --version 2>/dev/null || echo 'version 14') | sed -n 's/.*version \([0-9]*\).*/\1/p' | head -1)"
  need_apt+=("libclang-rt-${clang_major:-14}-dev-wasm32")
}
if [ ${#need_apt[@]} -gt 0 ]; then
  if have apt-get; then
    log "apt installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 || {
      apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
    }
  else
    log "please install: ${need_apt[*]} (no apt-get here); C policies will not build"
  fi
fi

if ! (have wit-bindgen && wit-bindgen --version 2>/dev/null | grep -q '0\.60\.0'); then
  log "installing wit-bindgen-cli 0.60.0 (a few minutes)"
  cargo install wit-bindgen-cli --version 0.60.0 --locked
fi

# --- Python policies: componentize-py ------------------------------------------------------------
if ! (have componentize-py && componentize-py --version 2>/dev/null | grep -q '0\.25\.1'); then
  log "pip installing componentize-py 0.25.1"
  python3 -m pip install --quiet 'componentize-py==0.25.1'
  hash -r
  if have pyenv; then pyenv rehash || true; fi
fi

# --- JavaScript policies: componentize-js + jco, project-local ----------------------------------
here="$(cd "$(dirname "$0")/.." && pwd)"
js_sdk="$here/guest-sdk/js"
js_ok() {
  node -e '
    const v = (p) => JSON.parse(require("fs").readFileSync("node_modules/" + p + "/package.json", "utf8")).version;
    const ok = v("@bytecodealliance/jco").startsWith("1.35.") &&
               v("@bytecodealliance/componentize-js").startsWith("0.23.") &&
               v("@bytecodealliance/preview2-shim").startsWith("0.25.") &&
               v("rolldown").startsWith("1.3.") && v("typescript").startsWith("7.");
    process.exit(ok ? 0 : 1);' 2>/dev/null
}
if ! (cd "$js_sdk" && js_ok); then
  if have npm; then
    log "npm installing the JS SDK's dependencies (componentize-js 0.23, rolldown, jco 1.35) into $js_sdk"
    (cd "$js_sdk" && npm install --no-audit --no-fund --silent)
  else
    log "npm not found: JavaScript policies will not build (install Node.js 20+)"
  fi
fi

log "policy toolchains present"
