#!/usr/bin/env bash
# Bounded fuzzing: the record-batch codec (decode), the kapsule.enc descriptor parser
# (descriptor), the Fetch decryption path (fetch) and a structure-aware Produce round trip
# (produce). The oracles live in kapsule::fuzzing (feature `fuzzing`); see docs/codec.md.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 30 s per target, every target)
#   With cargo-fuzz and a nightly toolchain: libFuzzer runs each target for SECONDS
#     (cargo +nightly fuzz run T corpus/T seeds/T -- -max_total_time=SECONDS), one after the
#     other; corpus in fuzz/corpus/T (git-ignored), seeded from fuzz/seeds/T. A crash leaves its
#     input in fuzz/artifacts/T/ and fails the script. FUZZ_SANITIZER (default none: the proxy
#     forbids unsafe code) is passed to cargo fuzz -s. Each target's execs are printed.
#   Otherwise (or with FUZZ_FALLBACK=1): the same oracles on proptest-generated inputs for
#     SECONDS, all targets at once in one test run (kapsule fuzzing::tests::fuzz_fallback_*,
#     FUZZ_FALLBACK_SECONDS); this is what CI runs.
# The script always prints which of the two ran (MODE=...). Exit status is non-zero on any failure.
set -euo pipefail

secs="${1:-30}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(decode descriptor fetch produce)
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

have_libfuzzer() {
    command -v cargo-fuzz >/dev/null 2>&1 &&
        rustup toolchain list 2>/dev/null | grep -q '^nightly'
}

if [[ "${FUZZ_FALLBACK:-0}" != "1" ]] && have_libfuzzer; then
    echo "fuzz.sh: MODE=libfuzzer (cargo-fuzz + nightly found), ${secs}s per target: ${targets[*]}" >&2
    cd "$root/fuzz"
    sanitizer="${FUZZ_SANITIZER:-none}"
    cargo +nightly fuzz build -s "$sanitizer" >&2
    for t in "${targets[@]}"; do
        mkdir -p "corpus/$t" "seeds/$t"
        log="$(mktemp)"
        status=0
        cargo +nightly fuzz run -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
            >"$log" 2>&1 || status=$?
        runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)"
        echo "fuzz.sh: $t: ${runs:-no summary} (exit $status)" >&2
        if [[ $status -ne 0 ]]; then
            tail -60 "$log" >&2
            rm -f "$log"
            exit "$status"
        fi
        rm -f "$log"
    done
else
    echo "fuzz.sh: MODE=stable-fallback (cargo-fuzz or nightly missing, or FUZZ_FALLBACK=1):" \
        "proptest-generated inputs through the same oracles, ${secs}s: ${targets[*]}" >&2
    cd "$root"
    filters=()
    for t in "${targets[@]}"; do
        filters+=("fuzzing::tests::fuzz_fallback_$t")
    done
    FUZZ_FALLBACK_SECONDS="$secs" exec cargo test -p kapsule --lib -- --exact --nocapture \
        "${filters[@]}"
fi
