"""Unit tests of the Python SDK and the Python example policies, run in plain CPython over the
bindings componentize-py generates (no Wasm needed): ``python3 guest-sdk/python/tests/test_sdk.py``.

They drive the exports (``init``, ``plan``, ``decide``, ``reveal``) exactly as Kapsule does, with
the generated WIT types, so a conversion mistake shows up here before a module is built.
"""

import importlib
import os
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))

_gen = tempfile.mkdtemp(prefix="kapsule-pybindings-")
subprocess.run(["componentize-py", "-d", os.path.join(SDK, "kapsule_policy", "wit"),
                "-w", "kapsule:policy/policy",
                "bindings", _gen], check=True, stdout=subprocess.DEVNULL)
sys.path[:0] = [_gen, SDK]

import wit_world  # noqa: E402
from wit_world.imports import types as wit  # noqa: E402

_logged = []
wit_world.log = lambda level, message: _logged.append((level, message))

# The host's `describe-schema`, faked: answers from `_schemas` (a generated SchemaInfo, or a
# string for an error) and records every id asked in `_described`.
_schemas = {}
_described = []


def _describe_schema(id):
    from componentize_py_types import Err
    _described.append(id)
    answer = _schemas.get(id, f"schema id {id} is not in the batch being decided")
    if isinstance(answer, str):
        raise Err(answer)
    return answer


wit_world.describe_schema = _describe_schema


def load_example(name):
    """The ``WitWorld`` of ``policies/<name with - for _>/python/app.py``, freshly imported."""
    path = os.path.join(REPO, "policies", name.replace("_", "-"), "python")
    sys.path.insert(0, path)
    try:
        sys.modules.pop("app", None)
        return importlib.import_module("app").WitWorld()
    finally:
        sys.path.remove(path)


def batch(records, schema_ids=None):
    """A generated ``BatchView`` in Kapsule's flat layout (wit/policy.wit) from
    ``[(key, value, [(hkey, hvalue), ...]), ...]``; timestamps are 1000 + the record's index.
    ``schema_ids`` (one ``(value id, key id)`` per record, ``None`` for absent) replaces the ids
    read from the values and keys, as when the plan did not ask for them."""
    data = bytearray()
    absent = 0xFFFFFFFF

    def span(b):
        if b is None:
            return struct.pack("<II", 0, absent)
        s = struct.pack("<II", len(data), len(b))
        data.extend(b)
        return s

    def schema_id(b):
        # The Confluent wire format: magic byte 0, then a big-endian 4-byte schema id.
        if b is None or len(b) < 5 or b[0] != 0:
            return absent
        return struct.unpack(">I", b[1:5])[0]

    descriptors, headers, ids = bytearray(), bytearray(), bytearray()
    for i, (key, value, hdrs) in enumerate(records):
        descriptors += span(key) + span(value)
        descriptors += struct.pack("<IIq", len(headers) // 16, len(hdrs), 1000 + i)
        if schema_ids is None:
            ids += struct.pack("<II", schema_id(value), schema_id(key))
        else:
            ids += struct.pack("<II", *(absent if x is None else x for x in schema_ids[i]))
        for hk, hv in hdrs:
            headers += span(hk) + span(hv)
    return wit.BatchView(bytes(data), bytes(descriptors), bytes(headers), bytes(ids))


ANON = wit.Client(None)
ANALYTICS = wit.Client(wit.Principal("analytics", wit.AuthMechanism.SASL_SCRAM_SHA512))
ALICE = wit.Client(wit.Principal("alice", wit.AuthMechanism.MTLS))


def choices(decisions):
    return [decisions.distinct[i] for i in decisions.choices]


class Sdk(unittest.TestCase):
    def world(self, cls, config=""):
        from kapsule_policy import export
        w = export(cls)()
        w.init(config)
        return w

    def test_client_memo_and_default_reveal(self):
        from kapsule_policy import Decision, Encrypt, Memo, Needs, Policy, TopicPlan
        seen = []

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                seen.append((client.name, client.mechanism))
                return TopicPlan.per_record(Needs(value=True), memo=Memo.header("tenant"))

            def decide(self, topic, client, records):
                return [Decision.encrypt(Encrypt("k-" + client.name).whole_value())] * len(records)

        w = self.world(P)
        plan = w.plan("t", ALICE)
        self.assertEqual(seen, [("alice", "mtls")])
        self.assertIsInstance(plan, wit.TopicPlan_PerRecord)
        self.assertEqual(plan.value.memo, wit.MemoKey_Header("tenant"))
        # The memo's header is shown to decide even though needs left headers out.
        self.assertEqual(plan.value.needs, wit.Needs.VALUE | wit.Needs.HEADERS)
        w.plan("t", ANON)
        self.assertEqual(seen[-1], (None, None))
        d = w.decide("t", ALICE, batch([(None, b"v", []), (None, b"w", [])]))
        self.assertEqual(d.choices, [0, 0])
        self.assertEqual(d.distinct[0].value.key_id, "k-alice")
        self.assertIsInstance(w.reveal("t", ANALYTICS), wit.Reveal_All)

    def test_record_views_read_the_flat_batch(self):
        from kapsule_policy import Decision, Needs, Policy, TopicPlan
        seen = []

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                return TopicPlan.per_record(Needs(key=True, value=True, headers=True))

            def decide(self, topic, client, records):
                for r in records:
                    seen.append((r.key, r.value, r.timestamp, r.headers, r.header("t"),
                                 r.header_str("t"), r.has_header("n"), r.header("n"),
                                 r.header("missing"), r.key_str(), r.value_str()))
                return [Decision.PASS] * len(records)

        w = self.world(P)
        d = w.decide("t", ANON, batch([
            (b"k1", b"v1", [(b"t", b"acme"), (b"n", None), (b"t", b"second")]),
            (None, None, []),
            (b"\xff", b"", [(b"tt", b"x"), (b"t", b"\xfe")]),
        ]))
        self.assertEqual(d.choices, [0, 0, 0])
        self.assertEqual(seen, [
            (b"k1", b"v1", 1000, [(b"t", b"acme"), (b"n", None), (b"t", b"second")], b"acme",
             "acme", True, None, None, "k1", "v1"),
            (None, None, 1001, [], None, None, False, None, None, None, None),
            (b"\xff", b"", 1002, [(b"tt", b"x"), (b"t", b"\xfe")], b"\xfe", None, False, None,
             None, None, ""),
        ])

    def test_memo_variants(self):
        from kapsule_policy import Memo, Needs, TopicPlan
        from kapsule_policy._bindings import plan_to_wit
        p = plan_to_wit(TopicPlan.per_record(Needs(), memo=Memo.key_prefix(4)))
        self.assertEqual(p.value.memo, wit.MemoKey_KeyPrefix(4))
        self.assertEqual(p.value.needs, wit.Needs.KEY)
        p = plan_to_wit(TopicPlan.per_record(Needs(headers=True), memo=Memo.RECORD_KEY))
        self.assertEqual(p.value.memo, wit.MemoKey_RecordKey())
        p = plan_to_wit(TopicPlan.per_record(Needs(headers=True)))
        self.assertEqual(p.value.memo, wit.MemoKey_None_())
        self.assertRaises(ValueError, Memo.header, "")
        self.assertRaises(ValueError, Memo.key_prefix, 0)

    def test_schema_ids_per_record(self):
        from kapsule_policy import Decision, Needs, Policy, TopicPlan
        seen = []

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                return TopicPlan.per_record(Needs(key=True, value=True))

            def decide(self, topic, client, records):
                seen.extend((r.value_schema_id, r.key_schema_id) for r in records)
                return [Decision.PASS] * len(records)

        w = self.world(P)
        w.decide("t", ANON, batch([
            (b"\x00\x00\x00\x01\x00\x07", b"\x00\x00\x00\x00\x2aavro body", []),
            (None, b"\x00\x00\x00\x2a", []),       # 4 bytes: too short for the wire format
            (b"\x01\x00\x00\x00\x2a", None, []),  # another magic byte; a tombstone
            (None, b"\x00\xff\xff\xff\xfe", []),  # the largest id that is not absent
        ]))
        self.assertEqual(seen, [(42, 256), (None, None), (None, None), (0xFFFFFFFE, None)])
        # The ids come with every batch, whatever `needs` asked for: values not shown, ids read.
        seen.clear()
        w.decide("t", ANON, batch([(None, None, []), (None, None, [])],
                                  schema_ids=[(7, None), (None, 9)]))
        self.assertEqual(seen, [(7, None), (None, 9)])
        # A short ids list (Kapsule never sends one) reads as "not in the wire format".
        seen.clear()
        b = batch([(None, b"\x00\x00\x00\x00\x01x", [])])
        w.decide("t", ANON, wit.BatchView(b.data, b.records, b.headers, b""))
        self.assertEqual(seen, [(None, None)])

    def test_schema_fields_decision(self):
        from kapsule_policy import (Decision, Encrypt, Needs, Policy, SchemaSelection, TopicPlan,
                                    ValuePart)
        from kapsule_policy._bindings import plan_to_wit

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                return TopicPlan.per_record(Needs(headers=True))

            def decide(self, topic, client, records):
                return [Decision.encrypt(Encrypt("kek-" + topic).schema_fields(
                    fields=["customer.email"] if r.has_header("email") else [], tags=["PII"]))
                    for r in records]

        w = self.world(P)
        d = w.decide("orders", ANON, batch([(None, b"v", []), (None, b"v", [(b"email", b"1")]),
                                            (None, b"v", [])]))
        # Equal selections built per record are sent once.
        self.assertEqual(d.choices, [0, 1, 0])
        self.assertEqual(d.distinct[0].value, wit.Encrypt(
            "kek-orders", wit.ValuePart_SchemaFields(wit.SchemaSelection([], ["PII"])), False, []))
        self.assertEqual(d.distinct[1].value.value, wit.ValuePart_SchemaFields(
            wit.SchemaSelection(["customer.email"], ["PII"])))
        # In a topic plan too, and with the other setters.
        e = Encrypt("k").with_record_key().schema_fields(fields=["a.b"]).with_header("h")
        p = plan_to_wit(TopicPlan.encrypt_all(e))
        self.assertEqual(p.value, wit.Encrypt(
            "k", wit.ValuePart_SchemaFields(wit.SchemaSelection(["a.b"], [])), True, ["h"]))
        self.assertEqual(ValuePart.schema_fields(SchemaSelection(tags=["PII"])),
                         Encrypt("k").schema_fields(tags=["PII"]).value)
        # Mistakes are caught where they are written, not as a refused module at run time.
        self.assertRaises(ValueError, SchemaSelection)
        self.assertRaises(TypeError, SchemaSelection, tags="PII")
        self.assertRaises(ValueError, SchemaSelection, tags=[""])
        self.assertRaises(ValueError, Encrypt("k").schema_fields, fields=[None])
        self.assertRaises(TypeError, ValuePart.schema_fields, ["PII"])

    def test_describe_schema_once_per_id_and_batch(self):
        from kapsule_policy import (Decision, Encrypt, Needs, Policy, SchemaError, SchemaField,
                                    SchemaInfo, Schemas, TopicPlan)
        _schemas.clear()
        _described.clear()
        _schemas[7] = wit.SchemaInfo(
            wit.SchemaFormat.AVRO, "orders-value", 3,
            [wit.SchemaField("email", [], wit.FieldKind.TEXT),
             wit.SchemaField("customer", [], wit.FieldKind.OTHER),
             wit.SchemaField("customer.email", ["PII"], wit.FieldKind.TEXT),
             wit.SchemaField("customer.email_count", [], wit.FieldKind.OTHER),
             wit.SchemaField("photo", ["PII"], wit.FieldKind.BYTES)],
            False)
        _schemas[8] = wit.SchemaInfo(wit.SchemaFormat.PROTOBUF, None, None,
                                     [wit.SchemaField("id", [], wit.FieldKind.OTHER)], True)
        _schemas[9] = "schema registry unavailable: connection refused"
        seen = []

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                return TopicPlan.per_record(Needs())

            def decide(self, topic, client, records):
                schemas = Schemas()
                out = []
                for r in records:
                    if r.value_schema_id is None:
                        out.append(Decision.encrypt(Encrypt("k").whole_value()))
                        continue
                    try:
                        s = schemas.describe(r.value_schema_id)
                    except SchemaError as e:
                        seen.append(e.message)
                        out.append(Decision.encrypt(Encrypt("k").schema_fields(tags=["PII"])))
                        continue
                    seen.append(s)
                    fields = s.select(lambda f: "email" in f.path)
                    out.append(Decision.encrypt(Encrypt("k").schema_fields(fields=fields))
                               if fields else Decision.PASS)
                return out

        w = self.world(P)
        ids = [(7, None), (9, None), (7, None), (None, None), (9, None), (8, None)]
        d = w.decide("t", ANON, batch([(None, None, [])] * 6, schema_ids=ids))
        self.assertEqual(_described, [7, 9, 8])
        by_name = wit.Decision_Encrypt(wit.Encrypt(
            "k", wit.ValuePart_SchemaFields(wit.SchemaSelection(["email", "customer.email"], [])),
            False, []))
        by_tag = wit.Decision_Encrypt(wit.Encrypt(
            "k", wit.ValuePart_SchemaFields(wit.SchemaSelection([], ["PII"])), False, []))
        whole = wit.Decision_Encrypt(wit.Encrypt("k", wit.ValuePart_Whole(), False, []))
        self.assertEqual(choices(d), [by_name, by_tag, by_name, whole, by_tag, wit.Decision_Pass()])
        # The generated types became the SDK's, the error its message.
        orders = SchemaInfo("avro", "orders-value", 3, (
            SchemaField("email", (), "text"), SchemaField("customer", (), "other"),
            SchemaField("customer.email", ("PII",), "text"),
            SchemaField("customer.email_count", (), "other"),
            SchemaField("photo", ("PII",), "bytes")))
        self.assertEqual(seen[0], orders)
        self.assertEqual(seen[1], "schema registry unavailable: connection refused")
        self.assertEqual(seen[-1], SchemaInfo("protobuf", None, None,
                                              (SchemaField("id", (), "other"),), True))
        # The next batch asks again: answers are valid for one batch.
        w.decide("t", ANON, batch([(None, None, [])], schema_ids=[(7, None)]))
        self.assertEqual(_described, [7, 9, 8, 7])

    def test_select_keeps_only_text_and_bytes_fields(self):
        from kapsule_policy import SchemaField, SchemaInfo, describe_schema, SchemaError
        info = SchemaInfo("avro", "orders-value", 3, (
            SchemaField("email", (), "text"), SchemaField("customer", (), "other"),
            SchemaField("customer.email", ("PII",), "text"),
            SchemaField("customer.email_count", (), "other"),
            SchemaField("photo", ("PII",), "bytes")))
        self.assertEqual(info.select(lambda f: "email" in f.path), ["email", "customer.email"])
        self.assertEqual(info.select(lambda f: f.has_tag("PII")), ["customer.email", "photo"])
        self.assertEqual(info.select(lambda f: f.path == "customer"), [])
        self.assertEqual([f.is_encryptable for f in info.fields], [True, False, True, False, True])
        self.assertRaises(ValueError, SchemaField, "a", (), "string")
        self.assertRaises(ValueError, SchemaInfo, "xml")
        _schemas.clear()
        with self.assertRaises(SchemaError) as e:
            describe_schema(5)
        self.assertEqual(str(e.exception), "schema id 5 is not in the batch being decided")

    def test_policies_that_do_not_describe_never_call_the_import(self):
        from kapsule_policy import Decision, Encrypt, Needs, Policy, Schemas, TopicPlan
        _described.clear()

        class P(Policy):
            def __init__(self, config):
                self.schemas = Schemas()  # created, never asked

            def plan(self, topic, client):
                return TopicPlan.per_record(Needs(value=True))

            def decide(self, topic, client, records):
                Schemas()
                return [Decision.encrypt(Encrypt("k").schema_fields(tags=["PII"]))
                        if r.value_schema_id is not None else Decision.PASS for r in records]

        w = self.world(P)
        w.plan("t", ANON)
        w.decide("t", ANON, batch([(None, b"\x00\x00\x00\x00\x07x", []), (None, b"v", [])]))
        w.reveal("t", ANON)
        self.assertEqual(_described, [])

    def test_memo_on_several_headers(self):
        from kapsule_policy import Memo, Needs, TopicPlan
        from kapsule_policy._bindings import plan_to_wit
        p = plan_to_wit(TopicPlan.per_record(Needs(value=True),
                                             memo=Memo.headers(["tenant", "class"])))
        self.assertEqual(p.value.memo, wit.MemoKey_Headers(["tenant", "class"]))
        # The memo's headers are shown to decide even though needs left them out.
        self.assertEqual(p.value.needs, wit.Needs.VALUE | wit.Needs.HEADERS)
        self.assertEqual(Memo.headers(("a", "b")), Memo.headers(["a", "b"]))
        self.assertNotEqual(Memo.headers(["a"]), Memo.header("a"))
        self.assertEqual(len(Memo.headers([f"h{i}" for i in range(16)]).header_names), 16)
        self.assertRaises(ValueError, Memo.headers, [])
        self.assertRaises(ValueError, Memo.headers, [f"h{i}" for i in range(17)])
        self.assertRaises(ValueError, Memo.headers, ["tenant", "tenant"])
        self.assertRaises(ValueError, Memo.headers, ["tenant", ""])
        self.assertRaises(TypeError, Memo.headers, "tenant")

    def test_exceptions_fail_closed_without_their_message(self):
        from kapsule_policy import Policy, Needs, TopicPlan

        class P(Policy):
            def __init__(self, config):
                self.mode = config

            def plan(self, topic, client):
                if self.mode == "plan":
                    raise KeyError("SECRET-acme")
                return TopicPlan.per_record(Needs(value=True))

            def decide(self, topic, client, records):
                raise ValueError("SECRET-" + records[0].value.decode())

            def reveal(self, topic, client):
                raise RuntimeError("SECRET")

        w = self.world(P)
        d = w.decide("t", ANON, batch([(None, b"plain", [])] * 3))
        self.assertEqual(d.choices, [0, 0, 0])
        self.assertEqual(d.distinct, [wit.Decision_Reject("policy decide() raised ValueError")])
        self.assertEqual(w.reveal("t", ANON), wit.Reveal_Deny("policy reveal() raised RuntimeError"))
        w = self.world(P, "plan")
        self.assertEqual(w.plan("t", ANON), wit.TopicPlan_RejectAll("policy plan() raised KeyError"))

    def test_v01_signatures_keep_working(self):
        from kapsule_policy import Decision, Needs, Policy, TopicPlan

        class Old(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic):
                return TopicPlan.per_record(Needs(headers=True))

            def decide(self, topic, records):
                return [Decision.PASS for _ in records]

        w = self.world(Old)
        self.assertIsInstance(w.plan("t", ANALYTICS), wit.TopicPlan_PerRecord)
        d = w.decide("t", ANALYTICS, batch([(b"k", None, [])]))
        self.assertEqual(choices(d), [wit.Decision_Pass()])

    def test_wrong_answers_are_refused(self):
        from kapsule_policy import Needs, Policy, TopicPlan

        class P(Policy):
            def __init__(self, config):
                pass

            def plan(self, topic, client):
                return "encrypt please"

            def decide(self, topic, client, records):
                return []

            def reveal(self, topic, client):
                return True

        w = self.world(P)
        self.assertIsInstance(w.plan("t", ANON), wit.TopicPlan_RejectAll)
        d = w.decide("t", ANON, batch([(None, b"x", [])] * 2))
        self.assertEqual(d.distinct,
                         [wit.Decision_Reject("policy decide() returned 0 decisions for 2 records")])
        self.assertIsInstance(w.reveal("t", ANON), wit.Reveal_Deny)

    def test_reveal_parts(self):
        from kapsule_policy import Reveal
        from kapsule_policy._bindings import reveal_to_wit
        r = reveal_to_wit(Reveal.parts(json_fields=["/a"], headers=["pii"]))
        self.assertEqual(r, wit.Reveal_Parts(wit.RevealParts(False, ["/a"], False, ["pii"])))
        self.assertEqual(reveal_to_wit(Reveal.CIPHERTEXT), wit.Reveal_Ciphertext())
        self.assertEqual(reveal_to_wit(Reveal.deny("no")), wit.Reveal_Deny("no"))
        self.assertRaises(TypeError, Reveal.parts, json_fields="/a")


class Examples(unittest.TestCase):
    def test_tenant_keys_declares_memo(self):
        w = load_example("tenant_keys")
        w.init("")
        p = w.plan("orders", ANON)
        self.assertEqual(p.value.memo, wit.MemoKey_Header("tenant"))
        d = w.decide("orders", ANON, batch([(None, None, [(b"tenant", b"acme")]),
                                            (None, None, [])]))
        got = choices(d)
        self.assertEqual(got[0].value.key_id, "tenant-acme")
        self.assertIsInstance(got[1], wit.Decision_Reject)
        w = load_example("tenant_keys")
        w.init('{"header": "org"}')
        self.assertEqual(w.plan("orders", ANON).value.memo, wit.MemoKey_Header("org"))

    def test_header_gate_declares_memo(self):
        w = load_example("header_gate")
        w.init("kek-")
        self.assertEqual(w.plan("t", ANON).value.memo, wit.MemoKey_Header("classification"))

    def test_pii_fields_reveal(self):
        w = load_example("pii_fields")
        w.init("")
        self.assertEqual(w.reveal("t", ANALYTICS),
                         wit.Reveal_Parts(wit.RevealParts(False, [], False, [])))
        self.assertIsInstance(w.reveal("t", ALICE), wit.Reveal_All)
        self.assertIsInstance(w.reveal("t", ANON), wit.Reveal_All)
        d = w.decide("t", ANON, batch([(None, b'{"customer": {"email": "x"}, "a": 1}', [])]))
        self.assertEqual(choices(d)[0].value.value, wit.ValuePart_JsonFields(["/customer/email"]))
        w = load_example("pii_fields")
        w.init('{"pii_hidden_from": ["bi"]}')
        self.assertIsInstance(w.reveal("t", ANALYTICS), wit.Reveal_All)
        self.assertIsInstance(w.reveal("t", wit.Client(wit.Principal("bi", wit.AuthMechanism.SASL_PLAIN))),
                              wit.Reveal_Parts)


    def test_schema_pii_mirrors_the_rust_example(self):
        w = load_example("schema_pii")
        w.init('{"whole_value_tenants": ["x"]}')
        p = w.plan("orders", ANON)
        self.assertEqual(p.value.memo, wit.MemoKey_Headers(["tenant", "class"]))
        self.assertEqual(p.value.needs, wit.Needs.HEADERS)
        d = w.decide("orders", ANON, batch([
            (None, None, [(b"tenant", b"x")]),
            (None, None, [(b"tenant", b"y")]),
            (None, None, [(b"tenant", b"y"), (b"class", b"public")]),
            (None, None, [(b"tenant", b"x"), (b"class", b"public")]),  # tenant x wins
            (None, None, []),
        ]))
        whole = wit.Decision_Encrypt(wit.Encrypt("kek-orders", wit.ValuePart_Whole(), False, []))
        pii = wit.Decision_Encrypt(wit.Encrypt(
            "kek-orders", wit.ValuePart_SchemaFields(wit.SchemaSelection([], ["PII"])), False, []))
        self.assertEqual(choices(d), [whole, pii, wit.Decision_Pass(), whole, pii])
        self.assertEqual(len(d.distinct), 3)
        w = load_example("schema_pii")
        w.init('{"key_id": "k", "tags": ["PII", "SECRET"], "tenant_header": "org"}')
        self.assertEqual(w.plan("t", ANON).value.memo, wit.MemoKey_Headers(["org", "class"]))
        d = w.decide("t", ANON, batch([(None, None, [(b"org", b"x")])]))
        self.assertEqual(d.distinct[0].value.value,
                         wit.ValuePart_SchemaFields(wit.SchemaSelection([], ["PII", "SECRET"])))
        for bad in ('{"tags": []}', '{"tags": "PII"}', '{"tenant_header": "class"}',
                    '{"public_header": ""}', '{"nope": 1}', '[]'):
            w = load_example("schema_pii")
            with self.assertRaises(Exception, msg=bad) as e:
                w.init(bad)
            self.assertIn("schema-pii config", str(e.exception), bad)

    def test_schema_by_name_mirrors_the_rust_example(self):
        _schemas.clear()
        _described.clear()
        _schemas[7] = wit.SchemaInfo(
            wit.SchemaFormat.AVRO, "orders-value", 1,
            [wit.SchemaField("id", [], wit.FieldKind.OTHER),
             wit.SchemaField("email", [], wit.FieldKind.TEXT),
             wit.SchemaField("customer", [], wit.FieldKind.OTHER),
             wit.SchemaField("customer.email", [], wit.FieldKind.TEXT),
             wit.SchemaField("customer.email_verified", [], wit.FieldKind.OTHER)], False)
        _schemas[8] = wit.SchemaInfo(wit.SchemaFormat.JSON, "payments-value", 2,
                                     [wit.SchemaField("amount", [], wit.FieldKind.OTHER)], False)
        _schemas[9] = "schema registry unavailable"
        w = load_example("schema_by_name")
        w.init("")
        p = w.plan("orders", ANON)
        self.assertEqual(p.value.memo, wit.MemoKey_None_())
        ids = [(7, None), (8, None), (9, None), (None, None), (7, None)]
        d = w.decide("orders", ANON, batch([(None, None, [])] * 5, schema_ids=ids))
        self.assertEqual(_described, [7, 8, 9])
        enc = lambda part: wit.Decision_Encrypt(wit.Encrypt("kek-orders", part, False, []))
        by_name = enc(wit.ValuePart_SchemaFields(
            wit.SchemaSelection(["email", "customer.email"], [])))
        self.assertEqual(choices(d), [
            by_name, wit.Decision_Pass(),
            enc(wit.ValuePart_SchemaFields(wit.SchemaSelection([], ["PII"]))),
            enc(wit.ValuePart_Whole()), by_name])
        # With `subject`, a schema registered under another subject is refused.
        w = load_example("schema_by_name")
        w.init('{"subject": "${topic}-value", "words": ["amount", "mail"], "key_id": "k"}')
        d = w.decide("payments", ANON, batch([(None, None, [])] * 2, schema_ids=[(8, None), (7, None)]))
        got = choices(d)
        self.assertEqual(got[0], wit.Decision_Pass())  # `amount` is not text or bytes
        self.assertIsInstance(got[1], wit.Decision_Reject)
        self.assertIn("orders-value", got[1].value)
        for bad in ('{"words": []}', '{"words": "email"}', '{"fallback_tags": [""]}',
                    '{"subject": 3}', '{"nope": 1}', '[]'):
            w = load_example("schema_by_name")
            with self.assertRaises(Exception, msg=bad) as e:
                w.init(bad)
            self.assertIn("schema-by-name config", str(e.exception), bad)

if __name__ == "__main__":
    unittest.main()
