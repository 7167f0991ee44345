#!/usr/bin/env python3
"""Produce or consume schema-encoded records with confluent-kafka's Schema Registry serdes.

produce: serializes each object of --input ({"objects": [...], optional "headers": [[[k, v], ..], ..]
  one list per object}, bytes as {"hex": ..}) with AvroSerializer or
  JSONSerializer against --registry (subject <topic>-value, registered automatically), produces
  the serialized bytes and reports each delivery. Each --reference NAME=SUBJECT=FILE (Avro,
  JSON Schema) registers FILE under SUBJECT first and makes the schema reference it as NAME (an
  Avro full type name, the URI a JSON Schema `$ref` names), as a schema split over subjects is
  registered.
  Output: {"serialized": [hex...], "results": [{"partition","offset"} | {"error","name","code",
           "retriable"}], "schema_id": int}
consume: reads --count records from the beginning and deserializes each value with
  AvroDeserializer or JSONDeserializer (writer schema fetched from the registry by id).
  Output: {"records": [{"value": hex, "headers": [[k, hex]], "object": obj|null,
           "deserialize_error": str|null}], "errors": [str]}

Usage: ck_schema.py produce|consume --bootstrap B --registry URL --topic T --format avro|json|protobuf
       [--schema FILE] [--input FILE] [--count N] [--config k=v ...] [--timeout S]
       [--reference NAME=SUBJECT=FILE ...]
"""
import argparse
import json
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from common import emit, log, parse_config, tohex

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["produce", "consume"])
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--registry", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--format", choices=["avro", "json", "protobuf"], default="avro")
ap.add_argument("--schema")
ap.add_argument("--input")
ap.add_argument("--count", type=int, default=0)
ap.add_argument("--config", action="append", default=[])
ap.add_argument("--reference", action="append", default=[])
ap.add_argument("--timeout", type=float, default=30.0)
args = ap.parse_args()

# The client's default is no timeout at all: one registry request that is never answered hung
# a produce until the harness killed it (twice in CI, both in the schema-references tests). With
# a timeout, a stalled request is retried (max.retries, 2 by default) and otherwise fails with a
# message.
registry = SchemaRegistryClient({"url": args.registry, "timeout": 10})
ctx = SerializationContext(args.topic, MessageField.VALUE)


def say(message):
    """A stderr line with the wall-clock time, to line up with the proxy's log."""
    log(time.strftime("%H:%M:%S ", time.gmtime()) + message)


def to_dict(obj, _ctx):
    return obj


def from_jsonable(v):
    """Input objects from JSON: {"hex": ...} becomes bytes (Avro `bytes` fields)."""
    if isinstance(v, dict):
        if set(v) == {"hex"}:
            return bytes.fromhex(v["hex"])
        return {k: from_jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_jsonable(x) for x in v]
    return v


def jsonable(v):
    """Deserialized objects as JSON: bytes as {"hex": ...}."""
    if isinstance(v, (bytes, bytearray)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def protobuf_class(spec_text):
    """A message class from a small JSON spec (no protoc needed):
    {"package": "shop", "message": "Order", "fields": [[name, type, number, "repeated"?, [tag..]?], ...]}
    with scalar types only (string, bytes, int64, int32, bool, double); a list after the number
    tags the field with Confluent's `(confluent.field_meta).tags` option (confluent/meta.proto,
    which the serializer does not register as a reference: it is a known type)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from confluent_kafka.schema_registry.confluent import meta_pb2
    spec = json.loads(spec_text)
    F = descriptor_pb2.FieldDescriptorProto
    types = {"string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "int64": F.TYPE_INT64,
             "int32": F.TYPE_INT32, "bool": F.TYPE_BOOL, "double": F.TYPE_DOUBLE}
    fdp = descriptor_pb2.FileDescriptorProto(name=spec["message"].lower() + ".proto",
                                             package=spec["package"], syntax="proto3")
    m = fdp.message_type.add(name=spec["message"])
    for f in spec["fields"]:
        label = F.LABEL_REPEATED if "repeated" in f[3:] else F.LABEL_OPTIONAL
        field = m.field.add(name=f[0], type=types[f[1]], number=f[2], label=label)
        for tags in (x for x in f[3:] if isinstance(x, list)):
            field.options.Extensions[meta_pb2.field_meta].tags.extend(tags)
            if meta_pb2.DESCRIPTOR.name not in fdp.dependency:
                fdp.dependency.append(meta_pb2.DESCRIPTOR.name)
    pool = descriptor_pool.DescriptorPool()
    if fdp.dependency:
        pool.AddSerializedFile(descriptor_pb2.DESCRIPTOR.serialized_pb)
        pool.AddSerializedFile(meta_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(spec["package"] + "." + spec["message"]))


if args.mode == "produce":
    with open(args.schema) as f:
        schema = f.read()
    with open(args.input) as f:
        data = json.load(f)
    objects = [from_jsonable(o) for o in data["objects"]]
    headers = data.get("headers") or [[] for _ in objects]
    from confluent_kafka.schema_registry import Schema, SchemaReference
    schema_type = {"avro": "AVRO", "json": "JSON", "protobuf": "PROTOBUF"}[args.format]
    refs = []
    if args.reference:
        say(f"registering {len(args.reference)} referenced schemas")
    for ref in args.reference:
        name, subject, path = ref.split("=", 2)
        with open(path) as f:
            registry.register_schema(subject, Schema(f.read(), schema_type))
        version = registry.get_latest_version(subject).version
        refs.append(SchemaReference(name, subject, version))
    if args.format == "avro":
        from confluent_kafka.schema_registry.avro import AvroSerializer
        if refs:
            schema = Schema(schema, "AVRO", refs)
        ser = AvroSerializer(registry, schema, to_dict)
    elif args.format == "json":
        from confluent_kafka.schema_registry.json_schema import JSONSerializer
        if refs:
            schema = Schema(schema, "JSON", refs)
        ser = JSONSerializer(schema, registry, to_dict)
    else:
        from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
        cls = protobuf_class(schema)
        pser = ProtobufSerializer(cls, registry, {"use.deprecated.format": False})
        ser = lambda o, c: pser(cls(**o), c)  # noqa: E731
    say(f"serializing {len(objects)} objects (registry lookups)")
    serialized = [ser(o, ctx) for o in objects]
    say("serialized; producing")
    conf = {"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": int(args.timeout * 1000)}
    conf.update(parse_config(args.config))
    producer = Producer(conf)
    results = [None] * len(serialized)

    def cb(i):
        def f(err, msg):
            results[i] = ({"error": str(err), "name": err.name(), "code": err.code(),
                           "retriable": err.retriable()} if err is not None
                          else {"partition": msg.partition(), "offset": msg.offset()})
        return f

    for i, v in enumerate(serialized):
        producer.produce(args.topic, value=v, headers=[(k, h.encode()) for k, h in headers[i]],
                         on_delivery=cb(i))
    left = producer.flush(args.timeout + 5)
    say(f"flushed, {left} undelivered")
    schema_id = int.from_bytes(serialized[0][1:5], "big") if serialized else None
    emit({"serialized": [tohex(v) for v in serialized], "results": results,
          "schema_id": schema_id})
else:
    if args.format == "avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        de = AvroDeserializer(registry)
    elif args.format == "json":
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer
        # The writer schema is fetched by id; validation against it stays on.
        de = JSONDeserializer(None, schema_registry_client=registry)
    else:
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        from google.protobuf.json_format import MessageToDict
        cls = protobuf_class(open(args.schema).read())
        pde = ProtobufDeserializer(cls, {"use.deprecated.format": False})
        de = lambda v, c: MessageToDict(pde(v, c), preserving_proto_field_name=True)  # noqa: E731
    # Milestones and client errors go to stderr, so a consumer that stalls says where.
    conf = {"bootstrap.servers": args.bootstrap, "group.id": f"ck-schema-{time.time_ns()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "error_cb": lambda e: say(f"client error: {e}")}
    conf.update(parse_config(args.config))
    consumer = Consumer(conf)
    consumer.subscribe([args.topic], on_assign=lambda _c, ps: say(
        "assigned " + ", ".join(f"{p.topic}[{p.partition}]" for p in ps)))
    records, errors = [], []
    deadline = time.time() + args.timeout
    while len(records) < args.count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            errors.append(str(msg.error()))
            if len(errors) > 5:
                break
            continue
        obj, derr = None, None
        try:
            obj = de(msg.value(), ctx)
        except Exception as e:  # the test asserts on what failed
            derr = f"{type(e).__name__}: {e}"
        say(f"record at {msg.topic()}[{msg.partition()}]@{msg.offset()}")
        records.append({"value": tohex(msg.value()),
                        "headers": [[k, tohex(v)] for k, v in (msg.headers() or [])],
                        "object": jsonable(obj), "deserialize_error": derr})
    say(f"closing the consumer after {len(records)} records")
    consumer.close()
    log(f"consumed {len(records)} records, {len(errors)} errors")
    emit({"records": records, "errors": errors})
