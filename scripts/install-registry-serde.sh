#!/usr/bin/env bash
# Idempotent installer for Apicurio Registry's Avro serde for Kafka (Maven Central), used by the
# Java schema client (tests/clients/java-serde). Prints the directory holding its jars:
#   ${KAPSULE_APICURIO_SERDE_HOME:-$HOME/.cache/kapsule/apicurio-serde-<version>}
# The version comes from deps/apicurio-serde/pom.xml; a completed install leaves a `.complete`
# marker. Needs `mvn`.
set -euo pipefail
log() { printf '[install-registry-serde] %s\n' "$*" >&2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
pom="$here/deps/apicurio-serde/pom.xml"
version="$(sed -n 's:.*<apicurio.serde.version>\(.*\)</apicurio.serde.version>.*:\1:p' "$pom")"
home="${KAPSULE_APICURIO_SERDE_HOME:-$HOME/.cache/kapsule/apicurio-serde-$version}"
# The marker holds the pom's checksum: a fresh clone (new mtimes) of the same pom skips the fetch.
stamp="$(sha256sum < "$pom" | cut -d' ' -f1)"
if [ "$(cat "$home/.complete" 2>/dev/null)" != "$stamp" ]; then
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  log "fetching Apicurio Registry Avro serde $version from Maven Central into $home (about 14 MB)"
  rm -rf "$home.tmp"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$home.tmp" >&2
  ls "$home.tmp"/apicurio-registry-avro-serde-kafka-*.jar >/dev/null \
    || { log "no apicurio-registry-avro-serde-kafka jar was copied"; exit 1; }
  rm -rf "$home" && mv "$home.tmp" "$home"
  echo "$stamp" > "$home/.complete"
fi
echo "$home"
