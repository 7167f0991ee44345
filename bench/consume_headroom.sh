#!/usr/bin/env bash
# How much CPU the machine has left while a consumer reads from Apache Kafka, directly and through
# Kapsule (issue 16's "consume >= 0.9 of direct": on a machine where broker, client and proxy share
# the cores, every cycle the proxy spends is taken from the other two).
# Usage: bench/consume_headroom.sh RUNS RECORDS KAPSULE_BIN [CONFIG...]
# CONFIG: `passthrough` or a file appended to the proxy config (e.g. bench/configs/encrypt.yaml);
# `BIN@CONFIG` runs that path with another Kapsule binary (two builds compared in one sitting).
# One Kafka node (bench/common.sh); per run and path a fresh topic: RECORDS 1 KiB records
# produced (bench/load.py, through the path), then consumed back through the same path while
# /proc/stat is sampled. With BENCH_KAPSULE_CPUS=1 BENCH_BROKER_CPUS=0 BENCH_CLIENT_CPUS=0 Kapsule
# has a core of its own and the broker and clients share the other, directly and through Kapsule
# alike (Kapsule as deployed on hosts of its own, scaled down to two cores). BENCH_CONSUMER=java
# consumes with Kafka's ConsumerPerformance (fetch sessions) instead of bench/load.py (librdkafka);
# its machine-busy figure then includes the JVM's start. Prints per path: consume MB/s, machine CPU busy (of all cores) during the
# consume, and Kapsule's share (its utime+stime over the same interval); then medians.
set -eu
runs=$1; records=$2; bin=$3; shift 3
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(passthrough)
here=$(cd "$(dirname "$0")" && pwd)
export KAPSULE_BENCH_MASTER_KEY=${KAPSULE_BENCH_MASTER_KEY:-$(openssl rand -base64 32)}
. "$here/common.sh"
start_kafka_node
# consume BOOTSTRAP TOPIC: reads the RECORDS records back; prints {"mb_s": ...} (bench/load.py, or
# Kafka's ConsumerPerformance with BENCH_CONSUMER=java: its fetch MB/s, MiB recomputed as MB).
consume() {
  if [ "${BENCH_CONSUMER:-python}" = java ]; then
    java_consume_perf $1 $2 $records "${BENCH_CLIENT_CPUS:-}"
  else
    pinned "${BENCH_CLIENT_CPUS:-}" python3 $here/load.py consume --bootstrap $1 --topic $2 --count $records --size 1024
  fi
}
kafka_libs=$("$here/../scripts/install-kafka.sh")
cpu_ticks() { awk '/^cpu / {busy=$2+$3+$4+$7+$8; print busy, busy+$5+$6}' /proc/stat; }
out=$(mktemp)
one_path() { # label config run
  local label=$1 config=$2 run=$3 bin=$bin work kpid="" boot topic t0 t1 k0 k1 c kapsule_port kapsule_pid
  work=$(mktemp -d /tmp/kapsule-headroom-XXXXXX)
  topic=headroom-$run-$label-$$-$RANDOM
  (pinned "${BENCH_CLIENT_CPUS:-}" python3 $here/load.py create --bootstrap 127.0.0.1:$kafka_port --topic $topic --count 1) > /dev/null
  boot=127.0.0.1:$kafka_port
  if [ "$label" != direct ]; then
    start_kapsule "$bin" "$config" $work $kafka_port
    kpid=$kapsule_pid; boot=127.0.0.1:$kapsule_port
  fi
  (pinned "${BENCH_CLIENT_CPUS:-}" python3 $here/load.py produce --bootstrap $boot --topic $topic --count $records --size 1024) > /dev/null
  t0=$(cpu_ticks); k0=0; [ -n "$kpid" ] && k0=$(awk '{print $14+$15}' /proc/$kpid/stat)
  c=$(consume $boot $topic)
  t1=$(cpu_ticks); k1=0; [ -n "$kpid" ] && k1=$(awk '{print $14+$15}' /proc/$kpid/stat)
  if [ -n "$kpid" ]; then kill $kpid; wait $kpid 2>/dev/null || true; fi
  python3 - "$label" "$run" "$t0" "$t1" "$k0" "$k1" "$c" <<'EOP'
import json, sys
label, run, t0, t1, k0, k1, c = sys.argv[1], sys.argv[2], *map(lambda s: s.split(), sys.argv[3:5]), sys.argv[5], sys.argv[6], sys.argv[7]
busy, total = int(t1[0]) - int(t0[0]), int(t1[1]) - int(t0[1])
print(f"{label} run={run} consume_MBps={json.loads(c)['mb_s']:.1f} machine_busy={100 * busy / total:.0f}% "
      f"kapsule_share={100 * (int(k1) - int(k0)) / total:.0f}%")
EOP
  rm -rf $work
}
for run in $(seq $runs); do
  one_path direct passthrough $run | tee -a $out
  for config in "${configs[@]}"; do
    if [[ $config == *@* ]]; then
      bin=${config%%@*} one_path "$(basename "${config%%@*}")-$(basename "${config#*@}" .yaml)" \
        "${config#*@}" $run | tee -a $out
    else
      one_path "$(basename "$config" .yaml)" "$config" $run | tee -a $out
    fi
  done
  # Direct again after the proxied paths: the first path of a run is often slowed by the
  # broker's own work (log flushes after the produce), and its median then spans both places.
  one_path direct passthrough $run | tee -a $out
done
python3 - $out <<'EOP'
import re, statistics, sys
rows = {}
for l in open(sys.argv[1]):
    m = re.match(r"(\S+) run=\d+ consume_MBps=([\d.]+) machine_busy=(\d+)% kapsule_share=(\d+)%", l)
    if m: rows.setdefault(m.group(1), []).append(tuple(map(float, m.groups()[1:])))
direct = statistics.median(r[0] for r in rows["direct"])
for label, rs in rows.items():
    mb = statistics.median(r[0] for r in rs)
    print(f"median {label}: consume {mb:.1f} MB/s ({mb / direct:.2f} of direct), machine busy "
          f"{statistics.median(r[1] for r in rs):.0f}%, Kapsule {statistics.median(r[2] for r in rs):.0f}% of all cores")
EOP
rm -f $out
