#!/usr/bin/env python3
"""Read a topic from the beginning with kafka-python over TLS, reporting records and errors.

Usage: kp_consume_tls.py --bootstrap HOST:PORT --topic T --count N --cafile CA.pem
                         [--certfile C.pem --keyfile K.pem] [--timeout SECONDS]
Stops after N records, the first error, or the timeout.
Output: {"records": [...], "errors": [{"name": ExceptionClass, "error": str}], "timed_out": bool}
"""
import argparse
import time

from kafka import KafkaConsumer, TopicPartition

from common import emit, log, tohex

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--count", type=int, required=True)
ap.add_argument("--cafile", required=True)
ap.add_argument("--certfile", default=None)
ap.add_argument("--keyfile", default=None)
ap.add_argument("--timeout", type=float, default=30.0)
args = ap.parse_args()

ssl = {"security_protocol": "SSL", "ssl_cafile": args.cafile, "ssl_check_hostname": True}
if args.certfile:
    ssl.update(ssl_certfile=args.certfile, ssl_keyfile=args.keyfile)

consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False, **ssl)
tps = [TopicPartition(args.topic, p)
       for p in sorted(consumer.partitions_for_topic(args.topic) or [0])]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
records, errors = [], []
deadline = time.time() + args.timeout
while len(records) < args.count and time.time() < deadline and not errors:
    try:
        batches = consumer.poll(timeout_ms=500)
    except Exception as e:  # kafka-python raises fetch errors from poll
        log("consumer error:", repr(e))
        errors.append({"name": type(e).__name__, "error": str(e)})
        break
    for tp, msgs in batches.items():
        for m in msgs:
            records.append({
                "partition": tp.partition, "offset": m.offset, "key": tohex(m.key),
                "value": tohex(m.value),
                "headers": [[k, tohex(v)] for k, v in (m.headers or [])],
                "timestamp": None, "timestamp_type": "none",
            })
consumer.close()
emit({"records": records, "errors": errors, "timed_out": len(records) < args.count})
