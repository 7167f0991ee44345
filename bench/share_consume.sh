#!/usr/bin/env bash
# KIP-932 share consumers, directly and through Kapsule (BENCHMARKS.md, "Share groups").
# Usage: bench/share_consume.sh RUNS RECORDS KAPSULE_BIN [CONFIG]
# CONFIG: `passthrough` or a file appended to the proxy config (default bench/configs/encrypt.yaml).
# One Apache Kafka node (bench/common.sh) and one Kapsule for the whole invocation. Per run: a
# fresh one-partition topic, RECORDS 1 KiB records produced through Kapsule with Kafka's
# ProducerPerformance, then read by Kafka's ShareConsumerPerformance in a new share group
# (share.auto.offset.reset=earliest) directly (ciphertext) and through Kapsule (decrypted).
# Prints per run and path ShareConsumerPerformance's MB/s and Kapsule's CPU seconds (utime+stime)
# over the consume, then medians: the consume ratio to direct and millicores per MB/s.
set -eu
runs=$1; records=$2; bin=$3; config=${4:-bench/configs/encrypt.yaml}
here=$(cd "$(dirname "$0")" && pwd)
export KAPSULE_BENCH_MASTER_KEY=${KAPSULE_BENCH_MASTER_KEY:-$(openssl rand -base64 32)}
. "$here/common.sh"
start_kafka_node
libs=$("$here/../scripts/install-kafka.sh")
work=$(mktemp -d /tmp/kapsule-share-XXXXXX)
start_kapsule "$bin" "$config" $work $kafka_port
trap 'kill $kapsule_pid $kafka_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$kafka_dir" $work' EXIT
kafka_tool() { java -cp "$libs/*" "$@"; }
ticks() { awk '{print $14+$15}' /proc/$kapsule_pid/stat; }
out=$(mktemp)
for run in $(seq $runs); do
  topic=share-$run-$$
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:$kafka_port \
    --create --topic $topic --partitions 1 > /dev/null
  kafka_tool org.apache.kafka.tools.ProducerPerformance --topic $topic --num-records $records \
    --record-size 1024 --throughput -1 \
    --producer-props bootstrap.servers=127.0.0.1:$kapsule_port acks=all > /dev/null
  for path in direct kapsule; do
    boot=127.0.0.1:$kafka_port; [ $path = kapsule ] && boot=127.0.0.1:$kapsule_port
    group=share-$run-$path-$$
    kafka_tool org.apache.kafka.tools.ConfigCommand --bootstrap-server 127.0.0.1:$kafka_port \
      --alter --entity-type groups --entity-name $group \
      --add-config share.auto.offset.reset=earliest > /dev/null
    t0=$(ticks)
    # start, end, MB, MB/s, records/s, records, elapsed ms
    line=$(kafka_tool org.apache.kafka.tools.ShareConsumerPerformance --bootstrap-server $boot \
      --topic $topic --group $group --num-records $records --timeout 120000 --hide-header \
      2>/dev/null | tail -1)
    t1=$(ticks)
    mbs=$(echo "$line" | awk -F', ' '{print $4}')
    echo "run=$run path=$path consume_MBps=$mbs kapsule_cpu_s=$(( t1 - t0 ))e-2" | tee -a $out
  done
done
python3 - "$out" "$records" <<'EOP'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(sys.argv[1])]
mb = int(sys.argv[2]) * 1024 / 1e6
direct = [float(r["consume_MBps"]) for r in rows if r["path"] == "direct"]
kap = [float(r["consume_MBps"]) for r in rows if r["path"] == "kapsule"]
cpu = [float(r["kapsule_cpu_s"]) for r in rows if r["path"] == "kapsule"]
ratios = [k / d for k, d in zip(kap, direct)]
print(f"median direct={statistics.median(direct):.1f} MB/s kapsule={statistics.median(kap):.1f} MB/s "
      f"ratio={statistics.median(ratios):.2f} (runs {[round(r, 2) for r in ratios]}) "
      f"kapsule millicores per MB/s={statistics.median(c / mb * 1000 for c in cpu):.2f}")
EOP
rm -f $out
