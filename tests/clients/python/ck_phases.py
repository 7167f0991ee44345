#!/usr/bin/env python3
"""One long-lived confluent-kafka producer that produces in two phases, for broker-restart tests.

Phase 1 produces --input1 and prints {"phase": 1, "deliveries": [...]}; the script then waits for a
line on stdin (the test restarts the broker meanwhile) and produces --input2 with the same producer
instance, which must reconnect on its own, then prints {"phase": 2, "deliveries": [...]} and exits.
Non-idempotent on purpose: the restarted in-memory broker forgets producer ids.

Usage: ck_phases.py --bootstrap B --topic T --input1 F1 --input2 F2 [--timeout S]
"""
import argparse
import sys

from confluent_kafka import Producer

from common import die, emit, load_records, log

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--input1", required=True)
ap.add_argument("--input2", required=True)
ap.add_argument("--timeout", type=float, default=90.0)
args = ap.parse_args()

producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5,
                     "enable.idempotence": False, "message.timeout.ms": int(args.timeout * 1000),
                     "reconnect.backoff.max.ms": 1000})


def produce(path, phase):
    records = load_records(path)
    results = [None] * len(records)

    def cb(i):
        def f(err, msg):
            results[i] = {"error": str(err)} if err else {"partition": msg.partition(), "offset": msg.offset()}
        return f

    for i, r in enumerate(records):
        kw = {"key": r["key"], "value": r["value"], "headers": r["headers"], "on_delivery": cb(i)}
        if r["timestamp"] is not None:
            kw["timestamp"] = r["timestamp"]
        producer.produce(args.topic, **kw)
    producer.flush(args.timeout)
    bad = [d for d in results if d is None or "error" in d]
    if bad:
        die(f"phase {phase}: {len(bad)} records not delivered", errors=bad[:10])
    emit({"phase": phase, "deliveries": results})


produce(args.input1, 1)
log("phase 1 done; waiting for the go-ahead on stdin")
if not sys.stdin.readline():
    die("stdin closed before phase 2")
produce(args.input2, 2)
