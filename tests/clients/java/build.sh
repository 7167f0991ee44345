#!/usr/bin/env bash
# Compiles the Java test client (src/*.java) against the Apache Kafka jars into build/classes.
# Idempotent: skips when the classes are newer than every source and were built against the same
# libs directory. Usage: tests/clients/java/build.sh [KAFKA_LIBS_DIR]  (default: what
# scripts/install-kafka.sh prints). Prints the classes directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
libs="${1:-$("$here/../../../scripts/install-kafka.sh")}"
out="$here/build/classes"
stamp="$here/build/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$libs" ] \
   && [ -z "$(find "$here/src" -name '*.java' -newer "$stamp")" ]; then
  echo "$out"; exit 0
fi
printf '[java-client] compiling %s against %s\n' "$here/src" "$libs" >&2
rm -rf "$out" && mkdir -p "$out"
javac -nowarn -d "$out" -cp "$libs/*" "$here"/src/*.java
echo "$libs" > "$stamp"
echo "$out"
