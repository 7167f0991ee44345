#!/usr/bin/env bash
# Builds a C Kapsule policy written against kapsule_policy.h into a WebAssembly component.
# Usage: guest-sdk/c/build.sh POLICY.c [MORE.c ...] OUT.wasm
#   1. wit-bindgen c (0.60.0) generates policy.h/policy.c/policy_component_type.o from wit/
#   2. clang compiles the policy, this SDK and the bindings for wasm32-wasi (Debian wasi-libc)
#   3. wasm-component-ld (ships with the Rust toolchain; embeds the WASI preview1 reactor adapter)
#      links the component.
# Tools: scripts/install-policy-toolchains.sh.
set -euo pipefail
sdk="$(cd "$(dirname "$0")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
die() { echo "kapsule c build: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 POLICY.c [MORE.c ...] OUT.wasm"
srcs=("${@:1:$#-1}")
out="${!#}"
command -v wit-bindgen >/dev/null || die "wit-bindgen not found (cargo install wit-bindgen-cli --version 0.60.0 --locked)"
command -v clang >/dev/null || die "clang not found (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
sysroot_lib=/usr/lib/wasm32-wasi
[ -f "$sysroot_lib/libc.a" ] || die "wasi-libc not found in $sysroot_lib (apt-get install wasi-libc)"
builtins="$(ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a 2>/dev/null | head -1)"
[ -n "$builtins" ] || die "compiler-rt for wasm32 not found (apt-get install libclang-rt-14-dev-wasm32)"
wasm_ld="$(command -v wasm-ld || true)"
[ -n "$wasm_ld" ] || die "wasm-ld not found (apt-get install lld)"
wcl="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/host: //p')/bin/wasm-component-ld"
[ -x "$wcl" ] || die "wasm-component-ld not found at $wcl (comes with rustup's Rust toolchain)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wit-bindgen c "$sdk/../../wit" --world kapsule:policy/policy --out-dir "$work" >/dev/null
cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror -Wno-unused-parameter -I "$work" -I "$sdk")
objs=()
for f in "$work/policy.c" "$sdk/kapsule_policy.c" "${srcs[@]}"; do
  o="$work/$(basename "$f" .c)-${#objs[@]}.o"
  clang "${cflags[@]}" -c "$f" -o "$o"
  objs+=("$o")
done
mkdir -p "$(dirname "$out")"
"$wcl" --wasm-ld-path "$wasm_ld" --wasi-adapter reactor \
  -m wasm32 -L"$sysroot_lib" "$sysroot_lib/crt1-reactor.o" --entry _initialize \
  "${objs[@]}" "$work/policy_component_type.o" -lc "$builtins" -o "$out"
