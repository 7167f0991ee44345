#!/usr/bin/env bash
# Bounded fuzzing of the record-batch codec (fuzz target `decode`).
#
# Usage: scripts/fuzz.sh [SECONDS]        (default 60)
#   With cargo-fuzz and a nightly toolchain: runs libFuzzer for SECONDS
#     (cargo +nightly fuzz run decode -- -max_total_time=SECONDS), corpus in fuzz/corpus/decode
#     (git-ignored), seeded from fuzz/seeds/decode. A crash leaves its input in fuzz/artifacts/.
#   Otherwise (or with FUZZ_FALLBACK=1): runs the same oracle on stable for SECONDS as the
#     proptest-driven test kafka::records::tests::fuzz_fallback_decode (FUZZ_FALLBACK_SECONDS).
# The script always prints which of the two ran. Exit status is non-zero on any failure.
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"

have_libfuzzer() {
    command -v cargo-fuzz >/dev/null 2>&1 &&
        rustup toolchain list 2>/dev/null | grep -q '^nightly'
}

if [[ "${FUZZ_FALLBACK:-0}" != "1" ]] && have_libfuzzer; then
    echo "fuzz.sh: MODE=libfuzzer (cargo-fuzz + nightly found), target decode, ${secs}s" >&2
    cd "$root/fuzz"
    mkdir -p corpus/decode
    exec cargo +nightly fuzz run decode corpus/decode seeds/decode -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048
else
    echo "fuzz.sh: MODE=stable-fallback (cargo-fuzz or nightly missing, or FUZZ_FALLBACK=1):" \
        "proptest-generated inputs through the same oracle, ${secs}s" >&2
    cd "$root"
    FUZZ_FALLBACK_SECONDS="$secs" exec cargo test -p kapsule --lib \
        kafka::records::tests::fuzz_fallback_decode -- --exact --nocapture
fi
