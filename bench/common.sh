# Sourced by the bench shell scripts (after setting `here` to bench/): free ports, waiting for a
# port, one Apache Kafka node, one Kapsule in front of a broker.

# A free TCP port on loopback.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# pinned CPUS CMD...: CMD on the CPUs listed in CPUS (taskset's list, e.g. `0` or `0,1`), or
# anywhere when CPUS is empty; CMD replaces the function's process, so `pinned ... &` leaves CMD's
# pid in $!. The rig's processes take their CPUs from BENCH_BROKER_CPUS (the Kafka node),
# BENCH_KAPSULE_CPUS (Kapsule) and BENCH_CLIENT_CPUS (the scripts' clients); all empty by default.
pinned() { local cpus=$1; shift; if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi; }

# Waits until 127.0.0.1:$1 accepts connections, at most ${2:-100} tenths of a second.
wait_port() { for _ in $(seq ${2:-100}); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# start_kapsule BIN CONFIG WORK UPSTREAM_PORT: Kapsule (records: passthrough, plus CONFIG unless it
# is `passthrough`, its key file kept in WORK) in front of 127.0.0.1:UPSTREAM_PORT; sets
# kapsule_port and kapsule_pid once it accepts connections. Its log is WORK/kapsule.log.
start_kapsule() {
  local bin=$1 config=$2 work=$3 upstream=$4 admin proxy_settings=""
  kapsule_port=$(free_port); admin=$(free_port)
  # A config's `# proxy-setting: key: value` lines go under `proxy:`, beside listen and upstream.
  if [ "$config" != passthrough ]; then
    proxy_settings=$(sed -n 's/^# proxy-setting: \(.*\)$/, \1/p' "$config" | tr -d '\n')
  fi
  { echo "proxy: { listen: \"127.0.0.1:$kapsule_port\", upstream: \"127.0.0.1:$upstream\"$proxy_settings }"
    echo "admin: { listen: \"127.0.0.1:$admin\" }"
    echo "records: passthrough"
    if [ "$config" != passthrough ]; then sed "s#/tmp/kapsule-bench-keks.json#$work/keks.json#" "$config"; fi
  } > "$work/config.yaml"
  (pinned "${BENCH_KAPSULE_CPUS:-}" "$bin" run --config "$work/config.yaml" > "$work/kapsule.log" 2>&1) &
  kapsule_pid=$!; wait_port $kapsule_port; sleep 0.5
}

# start_kafka_node: one Apache Kafka KRaft node (scripts/install-kafka.sh's jars,
# kafka-server-start.sh's JVM options) on free loopback ports; sets kafka_port, kafka_pid and
# kafka_dir, and stops it and removes its data on exit.
start_kafka_node() {
  local libs controller
  libs=$("$here/../scripts/install-kafka.sh")
  kafka_dir=$(mktemp -d /tmp/kapsule-bench-kafka-XXXXXX)
  kafka_port=$(free_port); controller=$(free_port)
  cat > "$kafka_dir/server.properties" <<EOK
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$kafka_dir/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=2097152
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOK
  java -cp "$libs/*" kafka.tools.StorageTool format \
    -t "$(python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')" \
    -c "$kafka_dir/server.properties" > "$kafka_dir/format.log" 2>&1
  (pinned "${BENCH_BROKER_CPUS:-}" java -Xmx1G -Xms1G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -cp "$libs/*" kafka.Kafka \
    "$kafka_dir/server.properties" > "$kafka_dir/kafka.log" 2>&1) &
  kafka_pid=$!
  trap 'kill $kafka_pid 2>/dev/null; wait $kafka_pid 2>/dev/null; rm -rf "$kafka_dir"' EXIT
  wait_port $kafka_port 600 || { tail -20 "$kafka_dir/kafka.log"; return 1; }
  sleep 2
}

# java_consume_perf BOOTSTRAP TOPIC RECORDS [CPUS]: Kafka's ConsumerPerformance (jars in
# $kafka_libs, from scripts/install-kafka.sh) reads RECORDS records of TOPIC, on CPUS if given
# (see `pinned`); prints {"mb_s": ...} over its fetch time, its MiB recomputed as MB.
java_consume_perf() {
  (pinned "${4:-}" java -cp "$kafka_libs/*" org.apache.kafka.tools.ConsumerPerformance \
    --bootstrap-server $1 --topic $2 --num-records $3 --timeout 120000) |
    awk -F', *' 'NF == 10 && $1 != "start.time" { printf "{\"mb_s\": %f}\n", $3 * 1.048576 / ($8 / 1000) }'
}
