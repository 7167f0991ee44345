#!/usr/bin/env bash
# Builds a C Kapsule policy written against kapsule_policy.h into a WebAssembly component.
# Usage: build.sh [--sysroot DIR] [--no-sdk] POLICY.c [MORE.c ...] OUT.wasm
#   --no-sdk: the policy implements the generated exports itself (exports_kapsule_policy_*), without
#   kapsule_policy.h/.c.
#   1. wit-bindgen c (0.60.0) generates policy.h/policy.c/policy_component_type.o from wit/ (the
#      contract this SDK ships)
#   2. clang compiles the policy, this SDK and the bindings for wasm32-wasi against a WASI sysroot
#   3. wasm-component-ld (in wasi-sdk, and in rustup's Rust toolchain; it embeds the WASI preview1
#      reactor adapter) links the component.
# Works with any clang that targets wasm32 and any wasi-libc sysroot:
#   - wasi-sdk: WASI_SDK_PATH=/opt/wasi-sdk (its clang, sysroot, wasm-ld and wasm-component-ld);
#   - a system clang + wasi-libc: the sysroot is --sysroot DIR, else $WASI_SYSROOT, else
#     /opt/wasi-sdk/share/wasi-sysroot, else /usr (Debian/Ubuntu's wasi-libc package).
# CC, WASM_LD and WASM_COMPONENT_LD override the tools. scripts/install-policy-toolchains.sh of
# the Kapsule repository installs the Debian ones and wit-bindgen-cli.
set -euo pipefail
sdk="$(cd "$(dirname "$0")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
die() { echo "kapsule c build: $*" >&2; exit 1; }

sysroot="${WASI_SYSROOT:-}"
sdk_srcs=("$sdk/kapsule_policy.c")
while [ $# -gt 0 ]; do
  case "$1" in
    --sysroot) [ $# -ge 2 ] || die "--sysroot needs a directory"; sysroot="$2"; shift 2 ;;
    --no-sdk) sdk_srcs=(); shift ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "usage: $0 [--sysroot DIR] [--no-sdk] POLICY.c [MORE.c ...] OUT.wasm"
srcs=("${@:1:$#-1}")
out="${!#}"

wasi_sdk="${WASI_SDK_PATH:-}"
if [ -z "$wasi_sdk" ] && [ -z "$sysroot" ] && [ -x /opt/wasi-sdk/bin/clang ]; then wasi_sdk=/opt/wasi-sdk; fi
if [ -n "$wasi_sdk" ]; then
  [ -x "$wasi_sdk/bin/clang" ] || die "WASI_SDK_PATH=$wasi_sdk has no bin/clang"
  cc="${CC:-$wasi_sdk/bin/clang}"
  sysroot="${sysroot:-$wasi_sdk/share/wasi-sysroot}"
  export PATH="$wasi_sdk/bin:$PATH"
else
  cc="${CC:-clang}"
  if [ -z "$sysroot" ]; then
    for d in /opt/wasi-sdk/share/wasi-sysroot /usr; do
      if [ -f "$d/lib/wasm32-wasi/libc.a" ] || [ -f "$d/lib/wasm32-wasip1/libc.a" ]; then sysroot="$d"; break; fi
    done
  fi
fi
command -v wit-bindgen >/dev/null || die "wit-bindgen not found (cargo install wit-bindgen-cli --version 0.60.0 --locked)"
command -v "$cc" >/dev/null || die "$cc not found (wasi-sdk with WASI_SDK_PATH, or clang + lld + wasi-libc)"
[ -n "$sysroot" ] || die "no WASI sysroot found: pass --sysroot DIR or set WASI_SYSROOT (wasi-sdk's share/wasi-sysroot, or /usr with Debian's wasi-libc)"
libdir=""
for d in "$sysroot/lib/wasm32-wasip1" "$sysroot/lib/wasm32-wasi"; do
  if [ -f "$d/libc.a" ]; then libdir="$d"; break; fi
done
[ -n "$libdir" ] || die "no wasi-libc (lib/wasm32-wasi/libc.a) in sysroot $sysroot"
builtins="$("$cc" --target=wasm32-wasi --sysroot="$sysroot" -print-libgcc-file-name)"
[ -f "$builtins" ] || die "compiler-rt builtins for wasm32 not found at $builtins (Debian: libclang-rt-<version>-dev-wasm32)"
wasm_ld="${WASM_LD:-$(command -v wasm-ld || true)}"
[ -n "$wasm_ld" ] || die "wasm-ld not found (wasi-sdk's bin/, or Debian's lld)"
wcl="${WASM_COMPONENT_LD:-$(command -v wasm-component-ld || true)}"
if [ -z "$wcl" ] && command -v rustc >/dev/null; then
  wcl="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/host: //p')/bin/wasm-component-ld"
fi
[ -n "$wcl" ] && [ -x "$wcl" ] || die "wasm-component-ld not found (wasi-sdk's bin/, rustup's Rust toolchain, or cargo install wasm-component-ld)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wit-bindgen c "$sdk/wit" --world kapsule:policy/policy --out-dir "$work" >/dev/null 2>&1
cflags=(--target=wasm32-wasi --sysroot="$sysroot" -O2 -Wall -Wextra -Werror -Wno-unused-parameter -I "$work" -I "$sdk")
objs=()
for f in "$work/policy.c" "${sdk_srcs[@]}" "${srcs[@]}"; do
  o="$work/$(basename "$f" .c)-${#objs[@]}.o"
  "$cc" "${cflags[@]}" -c "$f" -o "$o"
  objs+=("$o")
done
mkdir -p "$(dirname "$out")"
"$wcl" --wasm-ld-path "$wasm_ld" --wasi-adapter reactor \
  -m wasm32 -L"$libdir" "$libdir/crt1-reactor.o" --entry _initialize \
  "${objs[@]}" "$work/policy_component_type.o" -lc "$builtins" -o "$out"
