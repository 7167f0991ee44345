#!/usr/bin/env python3
"""Produce records with confluent-kafka and report every delivery outcome, failures included.

Unlike ck_produce.py this never exits non-zero because records failed: tests that expect a refusal
read the per-record outcome (Kafka error name, code, retriable flag).

Usage: ck_produce_report.py --bootstrap B --topic T --input FILE [--compression C] [--idempotent]
                            [--transactional-id ID [--abort-input FILE]] [--config k=v ...]
                            [--timeout SECONDS]
With --transactional-id the records are produced in one committed transaction; records of
--abort-input (if given) are then produced in a second transaction that is aborted.
Output: {"delivered": n, "failed": n, "results": [{"partition", "offset"} | {"error", "code", "name",
         "retriable", "fatal"} ...], "transaction_error": str|null, "aborted": n}
"""
import argparse
import time

from confluent_kafka import KafkaException, Producer

from common import emit, load_records, log, parse_config

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--input", required=True)
ap.add_argument("--compression", default="none")
ap.add_argument("--idempotent", action="store_true")
ap.add_argument("--transactional-id", default=None)
ap.add_argument("--abort-input", default=None)
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--timeout", type=float, default=30.0)
args = ap.parse_args()

conf = {
    "bootstrap.servers": args.bootstrap,
    "compression.type": args.compression,
    "enable.idempotence": args.idempotent,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": int(args.timeout * 1000),
}
if args.transactional_id:
    conf["transactional.id"] = args.transactional_id
    conf["enable.idempotence"] = True
conf.update(parse_config(args.config))
producer = Producer(conf)


def error_json(err):
    return {"error": str(err), "code": err.code(), "name": err.name(),
            "retriable": err.retriable(), "fatal": err.fatal()}


def produce_all(records, results):
    def cb(i):
        def f(err, msg):
            results[i] = error_json(err) if err is not None else \
                {"partition": msg.partition(), "offset": msg.offset()}
        return f

    for i, r in enumerate(records):
        kw = {"value": r["value"], "key": r["key"], "headers": r["headers"], "on_delivery": cb(i)}
        if r["timestamp"] is not None:
            kw["timestamp"] = r["timestamp"]
        if r["partition"] is not None:
            kw["partition"] = r["partition"]
        while True:
            try:
                producer.produce(args.topic, **kw)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)


records = load_records(args.input)
results = [None] * len(records)
transaction_error = None
aborted = 0
start = time.time()
try:
    if args.transactional_id:
        producer.init_transactions(args.timeout)
        producer.begin_transaction()
        produce_all(records, results)
        producer.commit_transaction(args.timeout)
        if args.abort_input:
            extra = load_records(args.abort_input)
            extra_results = [None] * len(extra)
            producer.begin_transaction()
            produce_all(extra, extra_results)
            producer.flush(args.timeout)
            producer.abort_transaction(args.timeout)
            aborted = len(extra)
    else:
        produce_all(records, results)
        left = producer.flush(args.timeout)
        log(f"flushed in {time.time() - start:.2f}s, {left} undelivered")
except KafkaException as e:
    transaction_error = str(e.args[0]) if e.args else str(e)
    log("transaction error:", transaction_error)
    producer.flush(5)

results = [d if d is not None else {"error": "no delivery report", "code": None, "name": None,
                                    "retriable": None, "fatal": None} for d in results]
failed = sum(1 for d in results if "error" in d)
emit({"delivered": len(results) - failed, "failed": failed, "results": results,
      "transaction_error": transaction_error, "aborted": aborted})
