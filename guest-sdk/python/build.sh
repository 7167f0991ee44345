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

# A syntax error is found in a second by the local Python and shown as file:line: message,
# instead of after half a minute of componentize-py and its Rust backtrace.
if command -v python3 >/dev/null; then
  python3 - "$app_dir" <<'PY' || exit 1
import os, sys
app_dir = sys.argv[1]
failed = False
for name in sorted(os.listdir(app_dir)):
    if not name.endswith(".py"):
        continue
    path = os.path.join(app_dir, name)
    with open(path, "rb") as f:
        source = f.read()
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        failed = True
        print(f"kapsule python build: {path}:{e.lineno}: {type(e).__name__}: {e.msg}", file=sys.stderr)
        if e.text:
            print("    " + e.text.rstrip("\n"), file=sys.stderr)
            if e.offset:
                print("    " + " " * (e.offset - 1) + "^", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
fi

# componentize-py runs the policy module at build time. On failure show the Python error first,
# with the real file paths (it maps -p directories to /0, /1), and no Rust backtrace unless
# KAPSULE_BUILD_BACKTRACE=1.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
backtrace=0
[ "${KAPSULE_BUILD_BACKTRACE:-0}" = 1 ] && backtrace=1
if ! RUST_BACKTRACE="$backtrace" componentize-py -d "$sdk/wit" -w kapsule:policy/policy componentize \
  -p "$app_dir" -p "$sdk" "$module" -o "$out" >"$log" 2>&1; then
  if [ "$backtrace" = 1 ] || ! command -v python3 >/dev/null; then
    cat "$log" >&2
  else
    python3 - "$log" "$app_dir" "$sdk" "$app" <<'PY' >&2
import sys
log, app_dir, sdk, app = sys.argv[1:]
text = open(log, encoding="utf-8", errors="replace").read()
# The Python error componentize-py reports follows its own launcher's traceback.
marker = "AssertionError: "
cause = text.split(marker, 1)[1] if marker in text else text
for end in ("\n\nCaused by:", "\nStack backtrace:"):
    cause = cause.split(end, 1)[0]
cause = cause.replace('"/0/', f'"{app_dir}/').replace('"/1/', f'"{sdk}/').strip("\n")
print(f"kapsule python build: {app} failed:")
print(cause)
print("(set KAPSULE_BUILD_BACKTRACE=1 for componentize-py's full output)")
PY
  fi
  exit 1
fi
cat "$log"
