#!/usr/bin/env python3
"""Produce N records, then consume them back, with kafka-python over SASL (SASL_SSL with --cafile,
SASL_PLAINTEXT without).

Usage: kp_sasl.py --bootstrap HOST:PORT --topic T --count N --mechanism M --username U --password P
                  [--cafile CA.pem] [--prefix P] [--timeout SECONDS]
Values are `<prefix>-<i>`, keys `k<i>`.
Output: {"produced": n, "values": [hex...]} (values read back, in offset order), or
{"error": "...", "error_type": "ExceptionClass"} with exit 1 (e.g. authentication failed).
"""
import argparse
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common import die, emit, log, tohex

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, required=True)
ap.add_argument("--mechanism", required=True)
ap.add_argument("--username", required=True)
ap.add_argument("--password", required=True)
ap.add_argument("--cafile", default=None)
ap.add_argument("--prefix", default="kp-sasl")
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

conf = {
    "security_protocol": "SASL_SSL" if args.cafile else "SASL_PLAINTEXT",
    "sasl_mechanism": args.mechanism,
    "sasl_plain_username": args.username,
    "sasl_plain_password": args.password,
}
if args.cafile:
    conf.update(ssl_cafile=args.cafile, ssl_check_hostname=True)

try:
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all",
                             max_block_ms=int(args.timeout * 1000), **conf)
    futures = [producer.send(args.topic, key=f"k{i}".encode(), value=f"{args.prefix}-{i}".encode())
               for i in range(args.count)]
    for f in futures:
        f.get(timeout=args.timeout)
    producer.close()
except Exception as e:  # reported to the test, which checks the kind of failure
    die(f"produce failed: {e!r}", error_type=type(e).__name__)
log(f"produced {args.count}")

consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                         consumer_timeout_ms=int(args.timeout * 1000), **conf)
tps = [TopicPartition(args.topic, p) for p in sorted(consumer.partitions_for_topic(args.topic) or [0])]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
values = []
deadline = time.time() + args.timeout
while len(values) < args.count and time.time() < deadline:
    for _, msgs in consumer.poll(timeout_ms=1000).items():
        values.extend(tohex(m.value) for m in msgs)
consumer.close()
if len(values) < args.count:
    die(f"read back {len(values)} of {args.count} records", values=values)
emit({"produced": args.count, "values": values})
