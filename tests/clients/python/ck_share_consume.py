#!/usr/bin/env python3
"""Consume records with confluent-kafka's (librdkafka's) KIP-932 share consumer and print them
with exact bytes.

Usage: ck_share_consume.py --bootstrap HOST:PORT --topic T --count N --group G
                           [--timeout SECONDS] [--config key=value ...]
First sets the share group's share.auto.offset.reset to earliest (AdminClient, same bootstrap)
so records produced before it joined are delivered; records are acknowledged implicitly (accepted
on the next poll and on close).
Output: {"records": [...], "timed_out": bool}. Stops after N records or the timeout.
"""
import argparse
import time

from confluent_kafka import ShareConsumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from common import die, emit, log, msg_json, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, required=True)
ap.add_argument("--group", required=True)
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

extra = parse_config(args.config)
admin = AdminClient({"bootstrap.servers": args.bootstrap, **extra})
earliest = ConfigEntry(
    "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
)
group = ConfigResource(ResourceType.GROUP, args.group, incremental_configs=[earliest])
for future in admin.incremental_alter_configs([group]).values():
    future.result(timeout=args.timeout)

consumer = ShareConsumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, **extra})
consumer.subscribe([args.topic])
records = []
deadline = time.time() + args.timeout
while len(records) < args.count and time.time() < deadline:
    for m in consumer.poll(0.5):
        err = m.error()
        if err is not None:
            if err.retriable():
                log("share consumer event:", err)
                continue
            die(f"share consume error: {err}", records=records)
        records.append(msg_json(m))
timed_out = len(records) < args.count
if timed_out:
    log(f"timed out with {len(records)} of {args.count} records")
consumer.close()
emit({"records": records, "timed_out": timed_out})
