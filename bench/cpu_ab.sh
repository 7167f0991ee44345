#!/usr/bin/env bash
# Kapsule CPU per MB/s, two binaries alternated in one sitting (BENCHMARKS.md, "Frame buffers").
# Usage: bench/cpu_ab.sh RUNS RECORDS CONFIG BIN_A BIN_B [PERF_DIR]
# CONFIG: `passthrough` or a file appended to the proxy config (e.g. bench/configs/encrypt.yaml).
# Per run and binary: a fresh in-memory tansu, Kapsule in front of it, bench/load.py producing
# RECORDS records of 1 KiB (acks=all, linger 5 ms, no compression) and consuming them back.
# Kapsule's CPU (utime+stime from /proc/<pid>/stat, 100 Hz ticks) over GB moved (produced +
# consumed value bytes) = millicores per MB/s, as kapsule-bench computes it. Prints one line per
# run and the medians. With PERF_DIR, each run is also sampled with `perf record -e cpu-clock -g`.
# CPU_AB_LOAD=java (needs CPU_AB_BROKER=kafka): Kafka's own ProducerPerformance (acks=all, its
# other defaults: 16 KiB batches) and ConsumerPerformance instead of bench/load.py, as
# kapsule-bench's `--load java` runs them: many small requests, so per-request costs weigh more.
# CPU_AB_BROKER=kafka: one Apache Kafka node (scripts/install-kafka.sh, kafka-server-start.sh's JVM
# options) for the whole invocation instead, a fresh topic per run (tansu's fetch path is slow:
# ~15 MB/s consumed even directly, so its per-MB figures weigh per-request costs heavily).
set -eu
runs=$1; records=$2; config=$3; bins=("$4" "$5"); perfdir=${6:-}
here=$(cd "$(dirname "$0")" && pwd)
export KAPSULE_BENCH_MASTER_KEY=${KAPSULE_BENCH_MASTER_KEY:-$(openssl rand -base64 32)}
. "$here/common.sh"
kafka_pid=
if [ "${CPU_AB_BROKER:-tansu}" = kafka ]; then
  start_kafka_node
fi
load=${CPU_AB_LOAD:-python}
if [ "$load" = java ]; then
  [ -n "$kafka_pid" ] || { echo "CPU_AB_LOAD=java needs CPU_AB_BROKER=kafka" >&2; exit 2; }
  kafka_libs=$("$here/../scripts/install-kafka.sh")
fi
# produce BOOTSTRAP TOPIC / consume BOOTSTRAP TOPIC: RECORDS records of 1 KiB; print {"mb_s": ...}.
produce() {
  if [ "$load" = java ]; then
    java -Xmx512M -cp "$kafka_libs/*" org.apache.kafka.tools.ProducerPerformance --topic $2 \
      --num-records $records --record-size 1024 --throughput -1 \
      --producer-props bootstrap.servers=$1 acks=all |
      awk -F', *' '/records sent/ && /50th/ { split($2, r, " "); printf "{\"mb_s\": %f}\n", r[1] * 1024 / 1e6 }'
  else
    python3 $here/load.py produce --bootstrap $1 --topic $2 --count $records --size 1024
  fi
}
consume() {
  if [ "$load" = java ]; then
    java_consume_perf $1 $2 $records
  else
    python3 $here/load.py consume --bootstrap $1 --topic $2 --count $records --size 1024
  fi
}
one_run() { # bin label run
  local bin=$1 label=$2 run=$3 work bp kp tpid kpid ticks0 ticks1 topic kapsule_port kapsule_pid
  work=$(mktemp -d /tmp/kapsule-ab-XXXXXX)
  topic=ab-$run-$label-$$
  if [ -n "$kafka_pid" ]; then
    bp=$kafka_port; tpid=
    python3 $here/load.py create --bootstrap 127.0.0.1:$bp --topic $topic --count 1 > /dev/null
  else
    bp=$(free_port)
    ~/.cargo/bin/tansu broker --listener-url tcp://127.0.0.1:$bp --advertised-listener-url tcp://127.0.0.1:$bp \
      --storage-engine memory://tansu/ --cluster-id ab-$bp > $work/tansu.log 2>&1 &
    tpid=$!; wait_port $bp; sleep 0.5
    ~/.cargo/bin/tansu topic create $topic --partitions 1 --broker tcp://127.0.0.1:$bp > /dev/null
  fi
  start_kapsule "$bin" "$config" $work $bp
  kp=$kapsule_port; kpid=$kapsule_pid
  if [ -n "$perfdir" ]; then
    perf record -q -e cpu-clock --call-graph ${PERF_CALLGRAPH:-fp} -p $kpid -o $perfdir/$label-$run.data > /dev/null 2>&1 & ppid=$!
  fi
  ticks0=$(awk '{print $14+$15}' /proc/$kpid/stat)
  p=$(produce 127.0.0.1:$kp $topic)
  c=$(consume 127.0.0.1:$kp $topic)
  ticks1=$(awk '{print $14+$15}' /proc/$kpid/stat)
  rss=$(awk '/^VmRSS:/ {print $2}' /proc/$kpid/status)
  if [ -n "$perfdir" ]; then kill -INT $ppid; wait $ppid 2>/dev/null || true; fi
  kill $kpid $tpid; wait $kpid $tpid 2>/dev/null || true
  python3 - "$label" "$run" "$ticks0" "$ticks1" "$records" "$rss" "$p" "$c" <<'EOP'
import json, sys
label, run, t0, t1, n, rss, p, c = sys.argv[1:]
cpu = (int(t1) - int(t0)) / 100.0
gb = 2 * int(n) * 1024 / 1e9
p, c = json.loads(p), json.loads(c)
print(f"{label} run={run} millicores_per_MBps={cpu / gb:.3f} cpu_s={cpu:.2f} produce_MBps={round(p['mb_s'], 1)} consume_MBps={round(c['mb_s'], 1)} rss_kib={rss}")
EOP
  rm -rf $work
}
out=$(mktemp)
for run in $(seq $runs); do
  one_run "${bins[0]}" A $run | tee -a $out
  one_run "${bins[1]}" B $run | tee -a $out
done
python3 - $out <<'EOP'
import re, statistics, sys
v = {"A": [], "B": []}
for l in open(sys.argv[1]):
    m = re.match(r"(\w) run=\d+ millicores_per_MBps=([\d.]+)", l)
    if m: v[m.group(1)].append(float(m.group(2)))
a, b = statistics.median(v["A"]), statistics.median(v["B"])
print(f"median A={a:.3f} B={b:.3f} B/A={b / a:.2f} (millicores per MB/s; A runs {v['A']}, B runs {v['B']})")
EOP
rm -f $out
