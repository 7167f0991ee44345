#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds release binaries, then runs kapsule-bench (direct vs
# tansu proxy vs Kapsule passthrough/reencode [+ --kapsule-config NAME=FILE ...] [+ --vault]
# [+ --kroxylicious passthrough,record-encryption], on tansu or --broker kafka).
#   scripts/bench.sh [--runs 5] [--records 100000] [--out bench/results.md] [--no-kapsule] ...
# Apache Kafka's jars come from scripts/install-deps.sh (scripts/install-kafka.sh); Kroxylicious
# (Java 21+) is installed by scripts/install-kroxylicious.sh when --kroxylicious is given.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
if [[ " $* " == *" --kroxylicious"* ]]; then
  export KAPSULE_KROXYLICIOUS_HOME="$(scripts/install-kroxylicious.sh)"
fi
if [[ " $* " != *" --no-kapsule "* ]]; then
  cargo build --release -p kapsule --bin kapsule
  # Policy modules for bench/configs/*.yaml, into bench/modules/ (Rust always; other languages
  # with BENCH_POLICY_LANGS="c python js", toolchains from scripts/install-policy-toolchains.sh).
  bench/build-policies.sh rust ${BENCH_POLICY_LANGS:-} >/dev/null
  export KAPSULE_BIN="${KAPSULE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/kapsule}"
fi
# Master key for the local KMS of bench/configs/*.yaml (fresh per run unless given).
export KAPSULE_BENCH_MASTER_KEY="${KAPSULE_BENCH_MASTER_KEY:-$(python3 -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())')}"
rm -f /tmp/kapsule-bench-keks.json
exec cargo run -p kapsule-bench --release -- "$@"
