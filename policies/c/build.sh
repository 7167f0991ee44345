#!/usr/bin/env bash
# Builds the C policy `header-gate` into a WebAssembly component: target/header_gate.wasm.
#   1. wit-bindgen c (0.60.0) generates policy.h/policy.c/policy_component_type.o from ../../wit
#   2. clang compiles for wasm32-wasi against wasi-libc (Debian: clang, wasi-libc, libclang-rt-*-dev-wasm32)
#   3. wasm-component-ld (ships with the Rust toolchain, embeds the WASI preview1 reactor adapter)
#      links a reactor module and turns it into a component.
# Tools are installed by scripts/install-policy-toolchains.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export PATH="$HOME/.cargo/bin:$PATH"

die() { echo "build.sh: $*" >&2; exit 1; }
command -v wit-bindgen >/dev/null || die "wit-bindgen not found (cargo install wit-bindgen-cli --version 0.60.0 --locked)"
command -v clang >/dev/null || die "clang not found (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
sysroot_lib=/usr/lib/wasm32-wasi
[ -f "$sysroot_lib/libc.a" ] || die "wasi-libc not found in $sysroot_lib (apt-get install wasi-libc)"
builtins="$(ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a 2>/dev/null | head -1)"
[ -n "$builtins" ] || die "compiler-rt for wasm32 not found (apt-get install libclang-rt-14-dev-wasm32)"
wasm_ld="$(command -v wasm-ld || true)"
[ -n "$wasm_ld" ] || die "wasm-ld not found (apt-get install lld)"
sysroot_rustc="$(rustc --print sysroot)"
wcl="$sysroot_rustc/lib/rustlib/$(rustc -vV | sed -n 's/host: //p')/bin/wasm-component-ld"
[ -x "$wcl" ] || die "wasm-component-ld not found at $wcl (comes with rustup's Rust toolchain)"

out="$here/target"
gen="$out/gen"
mkdir -p "$gen"
wit-bindgen c ../../wit --world kapsule:policy/policy --out-dir "$gen" >/dev/null
cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror -Wno-unused-parameter -I "$gen")
clang "${cflags[@]}" -c "$gen/policy.c" -o "$out/policy.o"
clang "${cflags[@]}" -c header_gate.c -o "$out/header_gate.o"
"$wcl" --wasm-ld-path "$wasm_ld" --wasi-adapter reactor \
  -m wasm32 -L"$sysroot_lib" "$sysroot_lib/crt1-reactor.o" --entry _initialize \
  "$out/header_gate.o" "$out/policy.o" "$gen/policy_component_type.o" \
  -lc "$builtins" -o "$out/header_gate.wasm"
echo "$out/header_gate.wasm"
