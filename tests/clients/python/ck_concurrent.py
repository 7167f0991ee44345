#!/usr/bin/env python3
"""N concurrent confluent-kafka clients, each with its own producer and consumer connections.

Every client produces --per-client records keyed "<tag>-c<i>-r<j>" with a value derived from the
key, then reads the whole topic from the beginning (assigned partitions, no group) until it has seen
all of its own records, and checks each value byte for byte.

Usage: ck_concurrent.py --bootstrap B --topic T --clients N --per-client M --tag TAG [--timeout S]
Output: {"clients": N, "ok": k, "failures": [{"client": i, "error": "..."}]}
"""
import argparse
import hashlib
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from common import emit

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--clients", type=int, default=50)
ap.add_argument("--per-client", type=int, default=20)
ap.add_argument("--tag", required=True)
ap.add_argument("--timeout", type=float, default=120.0)
args = ap.parse_args()


def value_for(key):
    # Deterministic, binary, variable-length value.
    h = hashlib.sha256(key).digest()
    return h * (1 + h[0] % 8)


def client(i, failures, ok):
    try:
        deadline = time.time() + args.timeout
        p = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5,
                      "client.id": f"rig-{i}", "message.timeout.ms": int(args.timeout * 1000)})
        errors = []
        keys = [f"{args.tag}-c{i}-r{j}".encode() for j in range(args.per_client)]
        for k in keys:
            p.produce(args.topic, key=k, value=value_for(k),
                      on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
        left = p.flush(args.timeout)
        if left or errors:
            raise RuntimeError(f"{left} undelivered, errors {errors[:3]}")
        c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.tag}-unused-{i}",
                      "enable.auto.commit": False, "client.id": f"rig-{i}"})
        md = c.list_topics(args.topic, timeout=30)
        parts = md.topics[args.topic].partitions
        c.assign([TopicPartition(args.topic, p_, OFFSET_BEGINNING) for p_ in parts])
        want = set(keys)
        seen = {}
        while want - seen.keys() and time.time() < deadline:
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error():
                    if m.error().retriable():
                        continue
                    raise RuntimeError(f"consume error {m.error()}")
                k = m.key()
                if k in want:
                    if k in seen:
                        raise RuntimeError(f"record {k!r} read twice")
                    if m.value() != value_for(k):
                        raise RuntimeError(f"record {k!r} came back with different value bytes")
                    seen[k] = m.offset()
        c.close()
        missing = want - seen.keys()
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(want)} own records never read back")
        ok.append(i)
    except Exception as e:  # noqa: BLE001 - every failure is reported per client
        failures.append({"client": i, "error": repr(e)})


failures, ok = [], []
threads = [threading.Thread(target=client, args=(i, failures, ok)) for i in range(args.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join(args.timeout + 30)
emit({"clients": args.clients, "ok": len(ok), "failures": failures})
