#!/usr/bin/env bash
# Idempotent installer for Apicurio Registry (the test rig's Schema Registry) from Maven Central.
# Prints the application directory (holding quarkus-run.jar) on stdout when done:
#   ${KAPSULE_APICURIO_HOME:-$HOME/.cache/kapsule/apicurio-registry-<version>}
# The version comes from deps/apicurio/pom.xml; a completed install leaves a `.complete` marker,
# so a second run only checks it. Needs `mvn`; running the registry needs Java 21+.
set -euo pipefail
log() { printf '[install-registry] %s\n' "$*" >&2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
pom="$here/deps/apicurio/pom.xml"
version="$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$pom")"
home="${KAPSULE_APICURIO_HOME:-$HOME/.cache/kapsule/apicurio-registry-$version}"
# The marker holds the pom's checksum: a fresh clone (new mtimes) of the same pom skips the fetch.
stamp="$(sha256sum < "$pom" | cut -d' ' -f1)"
if [ "$(cat "$home/.complete" 2>/dev/null)" != "$stamp" ]; then
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  log "fetching Apicurio Registry $version from Maven Central into $home (about 160 MB)"
  rm -rf "$home.tmp"
  # Markers in the fresh directory: with the plugin's default (deps/apicurio/target) a second
  # install from the same checkout unpacks nothing.
  mvn -q -B -f "$pom" dependency:unpack-dependencies -DoutputDirectory="$home.tmp" \
    -DmarkersDirectory="$home.tmp.markers" >&2
  rm -rf "$home.tmp.markers"
  [ -f "$home.tmp/quarkus-run.jar" ] || { log "the archive holds no quarkus-run.jar"; exit 1; }
  rm -rf "$home" && mv "$home.tmp" "$home"
  echo "$stamp" > "$home/.complete"
fi
echo "$home"
