#!/usr/bin/env python3
"""Produce N records, then consume them back, with kafka-python over TLS (security_protocol=SSL).

Usage: kp_tls.py --bootstrap HOST:PORT --topic T --count N --cafile CA.pem
                 [--certfile C.pem --keyfile K.pem] [--prefix P] [--timeout SECONDS]
Values are `<prefix>-<i>`, keys `k<i>`.
Output: {"produced": n, "values": [hex...]} (values read back, in offset order).
"""
import argparse
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common import die, emit, log, tohex

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, required=True)
ap.add_argument("--cafile", required=True)
ap.add_argument("--certfile", default=None)
ap.add_argument("--keyfile", default=None)
ap.add_argument("--prefix", default="kp-tls")
ap.add_argument("--timeout", type=float, default=60.0)
args = ap.parse_args()

ssl = {"security_protocol": "SSL", "ssl_cafile": args.cafile, "ssl_check_hostname": True}
if args.certfile:
    ssl.update(ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)

producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", **ssl)
futures = [producer.send(args.topic, key=f"k{i}".encode(), value=f"{args.prefix}-{i}".encode())
           for i in range(args.count)]
for f in futures:
    f.get(timeout=args.timeout)
producer.close()
log(f"produced {args.count}")

consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                         consumer_timeout_ms=int(args.timeout * 1000), **ssl)
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
