#!/usr/bin/env bash
# Memory per idle client connection (BENCHMARKS.md, "Idle connections").
# Usage: bench/idle_connections.sh KAPSULE_BIN [CONNECTIONS] [UPSTREAM]
# Starts `kapsule run` (passthrough) in front of UPSTREAM (default: a fresh tansu on a free port),
# opens CONNECTIONS (default 1000) client connections through it, sends one ApiVersions request
# on each (so both sockets, client and broker, are open and have carried a frame), waits 3 s and
# prints Kapsule's VmRSS before and after and the difference per connection (KiB), then closes.
set -eu
bin=$1; n=${2:-1000}; upstream=${3:-}
work=$(mktemp -d /tmp/kapsule-idle-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
if [ -z "$upstream" ]; then
  bp=$(free_port)
  ~/.cargo/bin/tansu broker --listener-url "tcp://127.0.0.1:$bp" --advertised-listener-url "tcp://127.0.0.1:$bp" \
    --storage-engine "memory://tansu/" > "$work/tansu.log" 2>&1 &
  pids+=($!)
  upstream=127.0.0.1:$bp
  wait_port $bp 100 || true
fi
port=$(free_port); admin=$(free_port)
cat > "$work/config.yaml" <<EOC
proxy: { listen: "127.0.0.1:$port", upstream: "$upstream" }
admin: { listen: "127.0.0.1:$admin" }
records: passthrough
EOC
"$bin" run --config "$work/config.yaml" > "$work/kapsule.log" 2>&1 &
kpid=$!; pids+=($kpid)
wait_port $port 100 || true
sleep 1
rss() { awk '/^VmRSS:/ {print $2}' /proc/$kpid/status; }
python3 - "$port" "$n" "$kpid" <<'EOP'
import socket, struct, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
# One connection first, so one-off state (listener, broker metadata) is not counted.
def api_versions(s, cid):
    body = struct.pack(">hhih", 18, 0, cid, 4) + b"idle"
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
    s.recv(size, socket.MSG_WAITALL)
warm = socket.create_connection(("127.0.0.1", port)); api_versions(warm, 0)
time.sleep(2)
before = rss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    api_versions(s, i + 1)
    conns.append(s)
time.sleep(3)
after = rss()
print(f"connections={n} rss_before_kib={before} rss_after_kib={after} per_connection_kib={(after - before) / n:.1f}")
EOP
