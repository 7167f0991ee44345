#!/usr/bin/env bash
# Idempotent installer for Apache Kafka (broker, tools and Java client) from Maven Central.
# The jars land in one directory, printed on stdout when done:
#   ${KAPSULE_KAFKA_HOME:-$HOME/.cache/kapsule/kafka-<version>}/libs
# The version comes from deps/kafka/pom.xml; a completed install leaves a `.complete` marker, so a
# second run only checks it. Needs `mvn` and a Java 17+ runtime.
set -euo pipefail
log() { printf '[install-kafka] %s\n' "$*" >&2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
pom="$here/deps/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
home="${KAPSULE_KAFKA_HOME:-$HOME/.cache/kapsule/kafka-$version}"
# The marker holds the pom's checksum: a fresh clone (new mtimes) of the same pom skips the fetch.
stamp="$(sha256sum < "$pom" | cut -d' ' -f1)"
if [ "$(cat "$home/.complete" 2>/dev/null)" != "$stamp" ]; then
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  log "fetching Apache Kafka $version and its dependencies from Maven Central into $home/libs"
  rm -rf "$home/libs.tmp"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$home/libs.tmp" >&2
  rm -rf "$home/libs" && mv "$home/libs.tmp" "$home/libs"
  echo "$stamp" > "$home/.complete"
fi
echo "$home/libs"
