#!/usr/bin/env bash
# Kapsule end-to-end demo: a tansu broker, Kapsule with the embedded local KMS (or OpenBao with
# --vault), one record produced and consumed through Kapsule, and the same record read straight
# from the broker: ciphertext at rest.
#
#   scripts/demo.sh            local KMS (KEKs in a file, wrapped by a master key from the env)
#   scripts/demo.sh --vault    OpenBao transit (a dev server started for the demo)
#
# Installs what is missing first (scripts/install-deps.sh); stops everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
use_vault=false
[ "${1:-}" = "--vault" ] && use_vault=true

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing what is missing (idempotent)"
scripts/install-deps.sh

say "building kapsule"
cargo build -q -p kapsule --bin kapsule
KAPSULE="${CARGO_TARGET_DIR:-$PWD/target}/debug/kapsule"

work=$(mktemp -d)
pids=()
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "demo failed (exit $status); last lines of the logs:" >&2
    for f in "$work"/*.log; do echo "--- $f" >&2; tail -n 25 "$f" >&2; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 150); do
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$1)))" && return 0
    sleep 0.2
  done
  echo "timed out waiting for port $1" >&2; return 1
}

broker_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
say "starting tansu broker on 127.0.0.1:$broker_port (in-memory storage)"
tansu broker --listener-url "tcp://127.0.0.1:$broker_port" --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
  --storage-engine memory://tansu/ --cluster-id kapsule-demo >"$work/tansu.log" 2>&1 &
pids+=($!)
wait_port "$broker_port"
sleep 1
tansu topic create payments --partitions 1 --broker "tcp://127.0.0.1:$broker_port" >/dev/null

if $use_vault; then
  bao_port=$(free_port)
  say "starting OpenBao dev server on 127.0.0.1:$bao_port (transit engine, key kek-payments)"
  bao server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.log" 2>&1 &
  pids+=($!)
  wait_port "$bao_port"
  export VAULT_ADDR="http://127.0.0.1:$bao_port" VAULT_TOKEN=root
  for _ in $(seq 1 50); do bao status >/dev/null 2>&1 && break; sleep 0.2; done
  bao secrets enable transit >/dev/null
  bao write -f transit/keys/kek-payments >/dev/null
  kms="kms: { type: vault, address: \"http://127.0.0.1:$bao_port\", token_env: VAULT_TOKEN }"
else
  export KAPSULE_MASTER_KEY
  KAPSULE_MASTER_KEY=$(python3 -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())')
  kms="kms: { type: local, key_file: \"$work/keks.json\", master_key_env: KAPSULE_MASTER_KEY, auto_create_keys: true }"
fi

cat >"$work/kapsule.yaml" <<YAML
proxy:
  listen: 127.0.0.1:$proxy_port
  upstream: 127.0.0.1:$broker_port
admin:
  listen: 127.0.0.1:$admin_port
$kms
policy:
  unmatched_topics: pass
  rules:
    - topics: payments
      key_id: "kek-\${topic}"
      value: whole          # AES-256-GCM under a per-topic DEK
      record_key: true      # deterministic (AES-SIV): compaction and partitioning still work
      headers: [card-holder]
YAML
say "starting kapsule on 127.0.0.1:$proxy_port (config: $work/kapsule.yaml)"
"$KAPSULE" run --config "$work/kapsule.yaml" >"$work/kapsule.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port"

python3 - "$proxy_port" "$broker_port" <<'PY'
import sys, json
from confluent_kafka import Producer, Consumer, TopicPartition

proxy, broker = f"127.0.0.1:{sys.argv[1]}", f"127.0.0.1:{sys.argv[2]}"
value = json.dumps({"card": "4111-1111-1111-1111", "amount": 42.5}).encode()

print("\n== producing through Kapsule:", value.decode())
p = Producer({"bootstrap.servers": proxy})
p.produce("payments", key=b"customer-7", value=value, headers=[("card-holder", b"Ada Lovelace")])
assert p.flush(30) == 0, "produce did not complete"

def read(bootstrap):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-" + bootstrap, "enable.auto.commit": False})
    c.assign([TopicPartition("payments", 0, 0)])
    msg = None
    for _ in range(60):
        msg = c.poll(1.0)
        if msg is not None and not msg.error():
            break
    c.close()
    assert msg is not None and not msg.error(), f"nothing consumed from {bootstrap}"
    return msg

m = read(proxy)
print("\n== consumed through Kapsule (clear):")
print("   key    :", m.key())
print("   value  :", m.value().decode())
print("   headers:", m.headers())
assert m.value() == value

m = read(broker)
print("\n== the same record read straight from the broker (what is at rest):")
print("   key    :", m.key()[:48].hex(), "...")
print("   value  :", m.value()[:48].hex(), f"... ({len(m.value())} bytes)")
for k, v in m.headers() or []:
    print(f"   header : {k} = {v[:32].hex()}... ({len(v)} bytes)")
assert b"4111" not in m.value() and b"Ada" not in b"".join(v for _, v in m.headers()), "plaintext at rest!"
print("\n   no plaintext at rest: the card number, holder and key are ciphertext on the broker.")
PY

say "Kapsule metrics (encryption counters)"
python3 - "$admin_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for line in text.splitlines():
    if line.startswith(("kapsule_records_encrypted", "kapsule_records_decrypted", "kapsule_kms_calls")):
        print("  ", line)
PY
say "demo finished; logs were in $work (removed on exit)"
