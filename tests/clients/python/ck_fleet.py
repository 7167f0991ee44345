#!/usr/bin/env python3
"""confluent-kafka clients for the many-instances test: they run until a stop file appears.

Usage:
  ck_fleet.py produce --bootstrap B --topic T --stop-file F [--rate PER_SECOND] [--prefix P]
      Idempotent producer (enable.idempotence, acks=all, retries until message.timeout.ms) sending
      `<prefix>-<i>` values keyed `k<i>` at a steady rate until F exists, then flushes.
      -> {"sent": n, "acked": [value, ...], "failed": n, "errors": [first 20]}
  ck_fleet.py group --bootstrap B --topic T --group G --stop-file F
      Consumer-group member reading from the earliest offset until F exists.
      -> {"values": [value, ...], "errors": [first 20]}
  ck_fleet.py drain --bootstrap B --topic T --group G --min N [--timeout S] [--idle S]
      Fresh group: reads until it holds at least N records and then nothing new came for --idle
      seconds (so duplicates beyond N are seen too), or the timeout.
      -> {"values": [value, ...]}
"""
import argparse
import os
import time

from confluent_kafka import Consumer, KafkaError, Producer

from common import emit, log, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["produce", "group", "drain"])
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--stop-file")
ap.add_argument("--rate", type=float, default=100.0)
ap.add_argument("--prefix", default="fleet")
ap.add_argument("--group")
ap.add_argument("--min", type=int, default=0)
ap.add_argument("--timeout", type=float, default=90.0)
ap.add_argument("--idle", type=float, default=5.0)
ap.add_argument("--config", action="append", help="extra librdkafka key=value")
args = ap.parse_args()
extra = parse_config(args.config)


def stopped():
    return args.stop_file is not None and os.path.exists(args.stop_file)


if args.mode == "produce":
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "message.timeout.ms": 90000,
                         "reconnect.backoff.max.ms": 1000, **extra})
    acked, errors = [], []

    def cb(err, msg):
        if err is None:
            acked.append(msg.value().decode())
        else:
            errors.append(str(err))

    sent, start = 0, time.time()
    while not stopped():
        target = int((time.time() - start) * args.rate)
        while sent < target:
            producer.produce(args.topic, key=f"k{sent}".encode(), value=f"{args.prefix}-{sent}".encode(),
                             on_delivery=cb)
            sent += 1
        producer.poll(0.01)
    left = producer.flush(120)
    log(f"sent {sent}, acked {len(acked)}, failed {len(errors)}, undelivered {left}")
    emit({"sent": sent, "acked": acked, "failed": len(errors), "undelivered": left, "errors": errors[:20]})
else:
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True,
                         "session.timeout.ms": 10000, "reconnect.backoff.max.ms": 1000, **extra})
    consumer.subscribe([args.topic])
    values, errors = [], []
    deadline = time.time() + args.timeout
    last_new = time.time()
    while time.time() < deadline:
        if args.mode == "group" and stopped():
            break
        if args.mode == "drain" and len(values) >= args.min and time.time() - last_new > args.idle:
            break
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                errors.append(str(m.error()))
            continue
        values.append(m.value().decode() if m.value() is not None else None)
        last_new = time.time()
    consumer.close()
    log(f"{args.mode}: {len(values)} records, {len(errors)} errors")
    emit({"values": values, "errors": errors[:20]})
