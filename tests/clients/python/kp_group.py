#!/usr/bin/env python3
"""kafka-python producer and consumer-group member with explicitly committed offsets.

Known limit: kafka-python 3.x defaults to an idempotent producer that hangs against tansu 0.6.0
(InitProducerId handling), so the producer always sets enable_idempotence=False.

Usage:
  kp_group.py produce --bootstrap B --topic T --input FILE
      -> {"produced": n, "deliveries": [{"partition": p, "offset": o}, ...]}
  kp_group.py consume --bootstrap B --topic T --group G --max N [--timeout S]
      Joins group G, reads until it holds N records (or the timeout), commits exactly the offsets
      after the records it returns, and leaves the group.
      -> {"records": [...], "committed": {"<partition>": offset}, "assignment": [p, ...]}
"""
import argparse
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from common import die, emit, load_records, log, tohex

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["produce", "consume"])
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--input")
ap.add_argument("--group")
ap.add_argument("--max", type=int, default=0)
ap.add_argument("--timeout", type=float, default=60.0)
ap.add_argument("--flush-each", action="store_true", help="one record per batch (flush after each send)")
args = ap.parse_args()


def offset_and_metadata(offset):
    try:
        return OffsetAndMetadata(offset, "", -1)  # kafka-python >= 2.1: (offset, metadata, leader_epoch)
    except TypeError:
        return OffsetAndMetadata(offset, "")


if args.mode == "produce":
    records = load_records(args.input)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False,
                             request_timeout_ms=int(args.timeout * 1000))
    futures = []
    for r in records:
        futures.append(producer.send(args.topic, value=r["value"], key=r["key"], headers=r["headers"],
                                     partition=r["partition"], timestamp_ms=r["timestamp"]))
        if args.flush_each:
            producer.flush(timeout=args.timeout)
    producer.flush(timeout=args.timeout)
    deliveries = []
    for f in futures:
        md = f.get(timeout=args.timeout)
        deliveries.append({"partition": md.partition, "offset": md.offset})
    producer.close(timeout=10)
    emit({"produced": len(records), "deliveries": deliveries})
else:
    if not args.group or args.max <= 0:
        die("consume needs --group and --max > 0")
    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, group_id=args.group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=min(args.max, 100))
    consumer.subscribe([args.topic])
    records = []
    next_offsets = {}
    deadline = time.time() + args.timeout
    while len(records) < args.max and time.time() < deadline:
        batch = consumer.poll(timeout_ms=500)
        for tp in sorted(batch, key=lambda t: t.partition):
            for m in batch[tp]:
                if len(records) >= args.max:
                    break
                records.append({
                    "partition": m.partition,
                    "offset": m.offset,
                    "key": tohex(m.key),
                    "value": tohex(m.value),
                    "headers": [[k, tohex(v)] for k, v in (m.headers or [])],
                    "timestamp": m.timestamp,
                })
                next_offsets[m.partition] = m.offset + 1
    if len(records) < args.max:
        log(f"timed out with {len(records)} of {args.max} records")
    assignment = sorted(tp.partition for tp in consumer.assignment())
    if next_offsets:
        consumer.commit({TopicPartition(args.topic, p): offset_and_metadata(o) for p, o in next_offsets.items()})
    committed = {str(p): consumer.committed(TopicPartition(args.topic, p)) for p in assignment}
    consumer.close()
    emit({"records": records, "committed": committed, "assignment": assignment,
          "timed_out": len(records) < args.max})
