#!/usr/bin/env python3
"""Load generator for Kapsule's benchmark (confluent-kafka / librdkafka).

Modes:
  produce  --count N --size S : N records of S bytes (keys "k<i>"), acks=all, linger 5 ms,
                                 compression --compression (default none); reports MB/s and
                                 records/s (payload bytes = N*S). Values are random bytes, or with
                                 --json a JSON object of about S bytes (name, email, ssn, ... fields
                                 for the PII-field policies; compressible, unlike random bytes).
  consume  --count N          : reads N records from the beginning of every partition (assigned,
                                 no group); reports MB/s and records/s of value bytes.
  latency  --count N --size S : N sequential produce+flush round trips (one record each, linger 0);
                                 reports p50/p99 in ms.
  create   --count P          : creates the topic with P partitions (replication factor 1) and waits
                                 until metadata lists it with P partitions (AdminClient).
  peek                        : reads the first record of partition 0 and reports its value size and
                                 header names (to check what the broker stores).
--ssl-ca FILE: connect with TLS (security.protocol=SSL) trusting that CA.
Prints one JSON object on stdout.
"""
import argparse
import json
import os
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

ap = argparse.ArgumentParser()
# Every produced record carries a `tenant` header (t0..t4), as multi-tenant producers do; the
# per-record policy benchmark (tenant-keys) keys on it, every other path just carries it.
TENANT_HEADERS = [[("tenant", b"t%d" % t)] for t in range(5)]

ap.add_argument("mode", choices=["produce", "consume", "latency", "create", "peek"])
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, default=1)
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--timeout", type=float, default=300)
ap.add_argument("--compression", default="none", choices=["none", "gzip", "snappy", "lz4", "zstd"])
ap.add_argument("--json", action="store_true")
ap.add_argument("--ssl-ca")
args = ap.parse_args()
COMMON = {"bootstrap.servers": args.bootstrap}
if args.ssl_ca:
    COMMON.update({"security.protocol": "SSL", "ssl.ca.location": args.ssl_ca})


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def out(**kw):
    print(json.dumps(kw), flush=True)


def json_value(i):
    """A JSON object of about args.size bytes with PII fields and a padding note."""
    rnd = os.urandom(8).hex()
    v = {"id": i, "name": f"user {rnd}", "email": f"{rnd}@example.com", "ssn": f"{i % 1000:03d}-{rnd[:2]}-{rnd[2:6]}",
         "phone": f"+1-555-{i % 10000:04d}", "address": f"{i} Main St", "plan": "pro", "note": ""}
    pad = args.size - len(json.dumps(v, separators=(",", ":")).encode())
    v["note"] = (rnd * (pad // 16 + 1))[:max(pad, 0)]
    return json.dumps(v, separators=(",", ":")).encode()


payloads = [json_value(i) if args.json else os.urandom(args.size) for i in range(64)]

if args.mode == "create":
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(COMMON)
    for topic, fut in admin.create_topics([NewTopic(args.topic, args.count, 1)]).items():
        fut.result(timeout=60)
    deadline = time.time() + 60
    while True:
        md = admin.list_topics(args.topic, timeout=10).topics.get(args.topic)
        if md is not None and md.error is None and len(md.partitions) == args.count:
            break
        if time.time() > deadline:
            raise SystemExit(f"topic {args.topic} not in metadata with {args.count} partitions after 60 s")
        time.sleep(0.1)
    out(mode="create", topic=args.topic, partitions=args.count)

elif args.mode == "peek":
    c = Consumer({**COMMON, "group.id": "kapsule-bench-unused", "enable.auto.commit": False})
    c.assign([TopicPartition(args.topic, 0, OFFSET_BEGINNING)])
    deadline = time.time() + 30
    m = None
    while (m is None or m.error()) and time.time() < deadline:
        m = c.poll(1.0)
    c.close()
    if m is None or m.error():
        raise SystemExit(f"no record in {args.topic}[0] after 30 s")
    out(mode="peek", value_len=len(m.value() or b""), headers=[k for k, _ in (m.headers() or [])])

elif args.mode == "produce":
    p = Producer({**COMMON, "acks": "all", "linger.ms": 5,
                  "batch.size": 1000000, "queue.buffering.max.messages": 200000,
                  "compression.type": args.compression, "enable.idempotence": False})
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))

    start = time.perf_counter()
    for i in range(args.count):
        while True:
            try:
                p.produce(args.topic, key=b"k%d" % i, value=payloads[i & 63], headers=TENANT_HEADERS[i % 5], on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
        if i & 1023 == 0:
            p.poll(0)
    left = p.flush(args.timeout)
    elapsed = time.perf_counter() - start
    if left or errors:
        raise SystemExit(f"{left} undelivered, errors: {errors[:5]}")
    nbytes = sum(len(payloads[i & 63]) for i in range(args.count))
    mb = nbytes / 1e6
    out(mode="produce", records=args.count, bytes=nbytes, seconds=elapsed,
        mb_s=mb / elapsed, rec_s=args.count / elapsed)

elif args.mode == "consume":
    c = Consumer({**COMMON, "group.id": "kapsule-bench-unused",
                  "enable.auto.commit": False, "fetch.max.bytes": 52428800,
                  "queued.max.messages.kbytes": 262144})
    md = c.list_topics(args.topic, timeout=30)
    parts = md.topics[args.topic].partitions
    c.assign([TopicPartition(args.topic, q, OFFSET_BEGINNING) for q in parts])
    n = 0
    nbytes = 0
    start = time.perf_counter()
    deadline = time.time() + args.timeout
    last_progress = time.time()
    while n < args.count and time.time() < deadline:
        if time.time() - last_progress > 20:
            raise SystemExit(f"no records for 20 s after {n} of {args.count}: consumer stalled")
        for m in c.consume(num_messages=10000, timeout=0.5):
            if m.error():
                continue
            n += 1
            nbytes += len(m.value() or b"")
            last_progress = time.time()
    elapsed = time.perf_counter() - start
    c.close()
    if n < args.count:
        raise SystemExit(f"consumed only {n} of {args.count} records")
    out(mode="consume", records=n, bytes=nbytes, seconds=elapsed, mb_s=nbytes / 1e6 / elapsed,
        rec_s=n / elapsed)

else:
    p = Producer({**COMMON, "acks": "all", "linger.ms": 0,
                  "enable.idempotence": False})
    # Warm up connections and metadata.
    p.produce(args.topic, value=payloads[0], headers=TENANT_HEADERS[0])
    p.flush(30)
    lat = []
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(str(err))

    for i in range(args.count):
        t = time.perf_counter()
        # The same records as the produce load (tenant header included): a refused record is
        # answered sooner than a stored one and must not count as a latency sample.
        p.produce(args.topic, key=b"l%d" % i, value=payloads[i & 63],
                  headers=TENANT_HEADERS[i % 5], on_delivery=delivered)
        if p.flush(30) != 0:
            raise SystemExit("latency probe record not delivered")
        if failed:
            raise SystemExit(f"latency probe record refused: {failed[0]}")
        lat.append((time.perf_counter() - t) * 1000.0)
    lat.sort()
    out(mode="latency", records=args.count, p50_ms=pct(lat, 50), p99_ms=pct(lat, 99))
