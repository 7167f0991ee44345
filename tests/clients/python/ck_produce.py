#!/usr/bin/env python3
"""Produce records from a JSON file with confluent-kafka (librdkafka) and report deliveries.

Usage: ck_produce.py --bootstrap HOST:PORT --topic T --input FILE [--compression none|gzip|snappy|lz4|zstd]
                     [--idempotent] [--config key=value ...] [--timeout SECONDS]
Output: {"produced": n, "deliveries": [{"partition": p, "offset": o} ...], "errors": [...]}
Exit 1 if any record was not delivered.
"""
import argparse
import time

from confluent_kafka import Producer

from common import die, emit, load_records, log, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--input", required=True)
ap.add_argument("--compression", default="none")
ap.add_argument("--idempotent", action="store_true")
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

records = load_records(args.input)
conf = {
    "bootstrap.servers": args.bootstrap,
    "compression.type": args.compression,
    "enable.idempotence": args.idempotent,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": int(args.timeout * 1000),
}
conf.update(parse_config(args.config))
producer = Producer(conf)
results = [None] * len(records)


def on_delivery(i):
    def cb(err, msg):
        if err is not None:
            results[i] = {"error": str(err)}
        else:
            results[i] = {"partition": msg.partition(), "offset": msg.offset()}
    return cb


for i, r in enumerate(records):
    kwargs = {"value": r["value"], "key": r["key"], "headers": r["headers"], "on_delivery": on_delivery(i)}
    if r["timestamp"] is not None:
        kwargs["timestamp"] = r["timestamp"]
    if r["partition"] is not None:
        kwargs["partition"] = r["partition"]
    while True:
        try:
            producer.produce(args.topic, **kwargs)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)

start = time.time()
left = producer.flush(args.timeout)
log(f"flushed in {time.time() - start:.2f}s, {left} undelivered")
errors = [{"index": i, **(d or {"error": "no delivery report"})} for i, d in enumerate(results) if d is None or "error" in d]
if errors:
    die(f"{len(errors)} of {len(records)} records not delivered", errors=errors[:20])
emit({"produced": len(records), "deliveries": results, "errors": []})
