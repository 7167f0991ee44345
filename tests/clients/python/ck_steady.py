#!/usr/bin/env python3
"""Produce small records at a steady rate for a fixed time and report every delivery outcome.

For hot-swap tests: the test changes something in Kapsule while this runs and then checks that
no produce failed. Records are `<prefix>-<i>` values, keyed `k<i>`.

Usage: ck_steady.py --bootstrap B --topic T --seconds S [--rate PER_SECOND] [--prefix P] [--stop-file F]
                    [--config k=v ...]
--seconds is the longest run; with --stop-file the run ends as soon as that file exists. --config
adds librdkafka properties (security.protocol, sasl.*, ...).
Output: {"sent": n, "delivered": n, "failed": n, "errors": [first 20 errors]}
"""
import argparse
import os
import time

from confluent_kafka import Producer

from common import emit, log, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--seconds", type=float, required=True)
ap.add_argument("--rate", type=float, default=200.0)
ap.add_argument("--prefix", default="steady")
ap.add_argument("--stop-file", default=None)
ap.add_argument("--config", action="append", default=[])
args = ap.parse_args()

# No retries: a refused or failed produce request is reported, not hidden by a retry.
conf = {"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 2,
        "retries": 0, "message.timeout.ms": 20000}
conf.update(parse_config(args.config))
producer = Producer(conf)
delivered, errors = [0], []


def cb(err, msg):
    if err is None:
        delivered[0] += 1
    else:
        errors.append(str(err))


sent = 0
start = time.time()
while time.time() - start < args.seconds:
    if args.stop_file and os.path.exists(args.stop_file):
        break
    target = int((time.time() - start) * args.rate)
    while sent < target:
        producer.produce(args.topic, key=f"k{sent}".encode(), value=f"{args.prefix}-{sent}".encode(),
                         on_delivery=cb)
        sent += 1
    producer.poll(0.01)
left = producer.flush(30)
log(f"sent {sent}, delivered {delivered[0]}, failed {len(errors)}, undelivered {left}")
emit({"sent": sent, "delivered": delivered[0], "failed": sent - delivered[0], "errors": errors[:20]})
