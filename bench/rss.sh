#!/usr/bin/env bash
# Memory of Kapsule after loading one policy module (BENCHMARKS.md, "Policy start-up memory").
# Usage: bench/rss.sh KAPSULE_BIN MODULE.wasm CACHE_DIR [CONFIG_STRING]
# Starts `kapsule run` with MODULE bound to every topic and policy.module_cache_dir=CACHE_DIR (an
# empty or new directory: cold compile; the same directory again: warm), waits for "policy module
# loaded" (or a load failure), then prints the load time and VmRSS/VmHWM 3 s later, and stops it.
set -u
work=$(mktemp -d /tmp/kapsule-rss-XXXXXX)
trap 'rm -rf "$work"' EXIT
bin=$1; module=$(realpath "$2"); cache=$3; conf=${4:-'{"key_prefix": "bench-"}'}
cfg=$work/config.yaml
port=$((20000 + RANDOM % 20000)); admin=$((port+1))
cat > $cfg <<EOC
proxy: { listen: "127.0.0.1:$port", upstream: "127.0.0.1:9" }
admin: { listen: "127.0.0.1:$admin" }
kms: { type: local, key_file: $work/keks.json, master_key_env: RSS_MK, auto_create_keys: true }
policy:
  watch: false
  module_cache_dir: "$cache"
  limits: { init_timeout_ms: 20000 }
  bindings:
    - topics: "*"
      module: "$module"
      config: '$conf'
      allowed_key_ids: ["*"]
EOC
export RSS_MK=$(python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')
start=$(date +%s.%N)
$bin run --config $cfg > $work/log.txt 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q "policy module loaded\|failed to load" $work/log.txt && break; sleep 0.2; done
end=$(date +%s.%N)
sleep 3
echo "load_s=$(echo "$end - $start" | bc) $(grep -E 'VmRSS|VmHWM' /proc/$pid/status | tr -s ' \n' ' ')"
echo "compiled by a worker process: $(grep -c "compiled by a worker process" $work/log.txt)"
kill $pid; wait $pid 2>/dev/null
