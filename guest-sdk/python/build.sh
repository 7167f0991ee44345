#!/usr/bin/env bash
# Builds a Python Kapsule policy into a WebAssembly component with componentize-py 0.25.1.
# Usage: guest-sdk/python/build.sh APP.py OUT.wasm
#   APP.py defines `WitWorld = kapsule_policy.export(MyPolicy)`; its directory is on the module path,
#   so it may import sibling modules. The kapsule_policy package and the WIT (wit/ of this repository)
#   come from this SDK directory. Install the tool with scripts/install-policy-toolchains.sh.
set -euo pipefail
die() { echo "kapsule python build: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 APP.py OUT.wasm"
sdk="$(cd "$(dirname "$0")" && pwd)"
app="$1"
out="$2"
[ -f "$app" ] || die "$app not found"
case "$app" in *.py) ;; *) die "$app: expected a .py file" ;; esac
command -v componentize-py >/dev/null || die "componentize-py not found (pip install componentize-py==0.25.1, or scripts/install-policy-toolchains.sh)"
app_dir="$(cd "$(dirname "$app")" && pwd)"
module="$(basename "$app" .py)"
mkdir -p "$(dirname "$out")"
componentize-py -d "$sdk/wit" -w kapsule:policy/policy componentize \
  -p "$app_dir" -p "$sdk" "$module" -o "$out"
