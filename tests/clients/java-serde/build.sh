#!/usr/bin/env bash
# Compiles the Java schema client (src/*.java: Apicurio Registry's Avro serde with the Apache
# Kafka client) into build/classes. Idempotent: skips when the classes are newer than every source
# and were built against the same jars. Usage: build.sh SERDE_JARS_DIR KAFKA_LIBS_DIR (what
# scripts/install-registry-serde.sh and scripts/install-kafka.sh print). Prints the classes dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
serde="$1"
libs="$2"
out="$here/build/classes"
stamp="$here/build/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$serde:$libs" ] \
   && [ -z "$(find "$here/src" -name '*.java' -newer "$stamp")" ]; then
  echo "$out"; exit 0
fi
printf '[java-serde-client] compiling %s\n' "$here/src" >&2
rm -rf "$out" && mkdir -p "$out"
javac -nowarn -d "$out" -cp "$serde/*:$libs/*" "$here"/src/*.java
echo "$serde:$libs" > "$stamp"
echo "$out"
