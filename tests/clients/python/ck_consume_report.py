#!/usr/bin/env python3
"""Read a topic from the beginning (assign, no group) with confluent-kafka, reporting errors.

Unlike ck_consume.py, consume errors do not end the script with a failure: every error event is
collected, and the script stops after --count records, after --max-errors non-retriable errors, or
at the timeout (--timeout; --idle stops earlier once nothing arrived for that long).

Usage: ck_consume_report.py --bootstrap B --topic T [--count N] [--timeout S] [--idle S]
                            [--max-errors N] [--isolation read_committed|read_uncommitted]
                            [--config k=v ...]
Output: {"records": [...], "errors": [{"error", "code", "name", "retriable", "fatal"}], "timed_out": bool}
"""
import argparse
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from common import die, emit, log, parse_config, tohex

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, default=1 << 30)
ap.add_argument("--timeout", type=float, default=20.0)
ap.add_argument("--idle", type=float, default=None)
ap.add_argument("--max-errors", type=int, default=3)
ap.add_argument("--isolation", default="read_uncommitted")
ap.add_argument("--config", action="append", default=[])
args = ap.parse_args()

conf = {
    "bootstrap.servers": args.bootstrap,
    "group.id": "kapsule-rig-unused",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "enable.partition.eof": False,
    "isolation.level": args.isolation,
    "fetch.error.backoff.ms": 100,
}
conf.update(parse_config(args.config))
consumer = Consumer(conf)
md = consumer.list_topics(args.topic, timeout=30)
t = md.topics.get(args.topic)
if t is None or t.error is not None or not t.partitions:
    die(f"topic {args.topic} not found: {t.error if t else 'missing'}")
consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in t.partitions])

records, errors = [], []
start = time.time()
deadline = start + args.timeout
last_activity = start
hard_errors = 0
while len(records) < args.count and time.time() < deadline and hard_errors < args.max_errors:
    if args.idle is not None and time.time() - last_activity > args.idle:
        break
    for m in consumer.consume(num_messages=500, timeout=0.3):
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            log("consumer error:", err)
            errors.append({"error": str(err), "code": err.code(), "name": err.name(),
                           "retriable": err.retriable(), "fatal": err.fatal()})
            if not err.retriable():
                hard_errors += 1
            continue
        last_activity = time.time()
        records.append({
            "partition": m.partition(), "offset": m.offset(), "key": tohex(m.key()),
            "value": tohex(m.value()), "headers": [[k, tohex(v)] for k, v in (m.headers() or [])],
            "timestamp": m.timestamp()[1] if m.timestamp()[0] != 0 else None,
            "timestamp_type": str(m.timestamp()[0]),
        })
consumer.close()
emit({"records": records, "errors": errors, "timed_out": len(records) < args.count})
