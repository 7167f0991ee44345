#!/usr/bin/env bash
# Builds the franz-go test client into build/kapsule-franz (modules from the Go module proxy,
# pinned by go.sum). Idempotent: skips when the binary is newer than main.go, go.mod and go.sum.
# Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/build/kapsule-franz"
if [ -x "$bin" ] && [ -z "$(find "$here" -maxdepth 1 \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin")" ]; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { printf '[go-client] go not found: install Go 1.26+\n' >&2; exit 1; }
printf '[go-client] building %s\n' "$bin" >&2
(cd "$here" && GOFLAGS=-mod=mod go build -trimpath -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
echo "$bin"
