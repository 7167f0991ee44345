"""Shared helpers for the Kapsule test client scripts.

Records are exchanged as JSON with bytes in hex so every byte is compared exactly:
{"key": hex|null, "value": hex|null, "headers": [[str, hex|null], ...], "timestamp": ms|null,
 "partition": int|null}. Consumed records add "offset" and "timestamp_type".
Each script prints exactly one JSON object as its last stdout line; diagnostics go to stderr.
"""
import json
import sys


def unhex(v):
    return None if v is None else bytes.fromhex(v)


def tohex(b):
    if b is None:
        return None
    if isinstance(b, str):
        b = b.encode()
    return bytes(b).hex()


def load_records(path):
    """Reads {"records": [...]} written by the Rust harness; returns dicts with bytes fields."""
    with open(path) as f:
        doc = json.load(f)
    out = []
    for r in doc["records"]:
        out.append({
            "key": unhex(r.get("key")),
            "value": unhex(r.get("value")),
            "headers": [(h[0], unhex(h[1])) for h in (r.get("headers") or [])],
            "timestamp": r.get("timestamp"),
            "partition": r.get("partition"),
        })
    return out


TS_TYPES = {0: "none", 1: "create", 2: "log_append"}


def msg_json(m):
    """A consumed confluent-kafka Message as a record dict (exact bytes in hex)."""
    ts_type, ts = m.timestamp()
    return {
        "partition": m.partition(),
        "offset": m.offset(),
        "key": tohex(m.key()),
        "value": tohex(m.value()),
        "headers": [[k, tohex(v)] for k, v in (m.headers() or [])],
        "timestamp": ts if ts_type != 0 else None,
        "timestamp_type": TS_TYPES.get(ts_type, str(ts_type)),
    }


def parse_config(pairs):
    """Turns ["k=v", ...] into a dict; integer-looking values become ints."""
    conf = {}
    for p in pairs or []:
        if "=" not in p:
            die(f"--config expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        if v.lstrip("-").isdigit():
            v = int(v)
        elif v in ("true", "false"):
            v = v == "true"
        conf[k] = v
    return conf


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg, **extra):
    emit({"error": msg, **extra})
    log("error:", msg)
    sys.exit(1)
