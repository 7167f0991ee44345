#!/usr/bin/env python3
"""Consume records with confluent-kafka as a consumer-group member and print them with exact bytes.

Usage: ck_consume.py --bootstrap HOST:PORT --topic T --count N --group G [--timeout SECONDS]
                     [--assign] [--config key=value ...]
--assign reads all partitions from the beginning without group membership.
Output: {"records": [...], "timed_out": bool}. Stops after N records or the timeout.
"""
import argparse
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from common import die, emit, log, msg_json, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, required=True)
ap.add_argument("--group", default=None)
ap.add_argument("--assign", action="store_true")
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

conf = {
    "bootstrap.servers": args.bootstrap,
    "group.id": args.group or "kapsule-rig-unused",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "enable.partition.eof": False,
}
conf.update(parse_config(args.config))
consumer = Consumer(conf)
if args.assign:
    md = consumer.list_topics(args.topic, timeout=30)
    t = md.topics.get(args.topic)
    if t is None or t.error is not None or not t.partitions:
        die(f"topic {args.topic} not found: {t.error if t else 'missing'}")
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in t.partitions])
else:
    consumer.subscribe([args.topic])

records = []
deadline = time.time() + args.timeout
while len(records) < args.count and time.time() < deadline:
    for m in consumer.consume(num_messages=min(500, args.count - len(records)), timeout=0.5):
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF or err.retriable():
                log("consumer event:", err)
                continue
            die(f"consume error: {err}", records=records)
        records.append(msg_json(m))
timed_out = len(records) < args.count
if timed_out:
    log(f"timed out with {len(records)} of {args.count} records")
consumer.close()
emit({"records": records, "timed_out": timed_out})
