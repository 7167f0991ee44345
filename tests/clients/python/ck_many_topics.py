#!/usr/bin/env python3
"""Produce one record to each of many topics with one confluent-kafka producer.

Usage: ck_many_topics.py --bootstrap HOST:PORT --topic T [--topic T ...] [--timeout SECONDS]
Each record's value is "secret-<topic>". Undelivered records are reported, not fatal: the caller
decides what the proxy should have done.
Output: {"delivered": n, "errors": [{"topic": t, "error": "..."}]}
"""
import argparse

from confluent_kafka import Producer

from common import emit, log

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", action="append", required=True)
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

producer = Producer({
    "bootstrap.servers": args.bootstrap,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": int(args.timeout * 1000),
})
results = {}


def on_delivery(topic):
    def cb(err, msg):
        results[topic] = None if err is None else str(err)
    return cb


for t in args.topic:
    producer.produce(t, value=f"secret-{t}".encode(), on_delivery=on_delivery(t))
    producer.poll(0)
left = producer.flush(args.timeout)
log(f"{left} undelivered after flush")
errors = [{"topic": t, "error": results.get(t, "no delivery report")}
          for t in args.topic if results.get(t, "missing") is not None]
emit({"delivered": len(args.topic) - len(errors), "errors": errors})
