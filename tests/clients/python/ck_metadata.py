#!/usr/bin/env python3
"""Print the brokers a confluent-kafka client learns from the cluster metadata.

Usage: ck_metadata.py --bootstrap B [--topic T] [--config key=value ...]
Output: {"brokers": [{"id": n, "host": h, "port": p}, ...]}, with --topic also
{"leaders": {"<partition>": <leader id>, ...}}
"""
import argparse

from confluent_kafka.admin import AdminClient

from common import emit, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic")
ap.add_argument("--config", action="append")
args = ap.parse_args()

admin = AdminClient({"bootstrap.servers": args.bootstrap, **parse_config(args.config)})
md = admin.list_topics(topic=args.topic, timeout=30)
out = {"brokers": [{"id": b.id, "host": b.host, "port": b.port} for b in md.brokers.values()]}
if args.topic:
    partitions = md.topics[args.topic].partitions
    out["leaders"] = {str(p.id): p.leader for p in partitions.values()}
emit(out)
