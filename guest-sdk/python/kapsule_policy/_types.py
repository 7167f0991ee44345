"""Hand-written policy types. Pure Python: no generated bindings are imported here."""

from __future__ import annotations

import json as _json
from typing import Any, Iterable, List, Optional, Tuple


def expand_topic(template: str, topic: str) -> str:
    """Expands ``${topic}`` in a key-id template, as Kapsule's built-in rules do."""
    return template.replace("${topic}", topic)


def json_pointer(tokens: Iterable[Any]) -> str:
    """Builds an RFC 6901 pointer from path tokens: ``json_pointer(["a/b", 0]) == "/a~1b/0"``."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


class Needs:
    """Which parts of each record ``decide`` needs to see. Asking for less is faster."""

    __slots__ = ("key", "value", "headers")

    def __init__(self, key: bool = False, value: bool = False, headers: bool = False) -> None:
        self.key = bool(key)
        self.value = bool(value)
        self.headers = bool(headers)

    def __repr__(self) -> str:
        return f"Needs(key={self.key}, value={self.value}, headers={self.headers})"


def _names(what: str, names: Iterable[str]) -> Tuple[str, ...]:
    """``names`` as a tuple of non-empty strings; a lone string (an easy slip for a list of one)
    or anything else raises ``TypeError``/``ValueError`` naming ``what``."""
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{what}: pass a list of strings, not one string")
    out = tuple(names)
    for n in out:
        if not isinstance(n, str) or not n:
            raise ValueError(f"{what}: every entry must be a non-empty string, got {n!r}")
    return out


class SchemaSelection:
    """Which fields of a schema-encoded value (Avro, Protobuf or JSON Schema in the Confluent
    wire format) to encrypt: the union of explicit dotted ``fields`` (``customer.email``; arrays,
    maps, unions/oneof and optional wrappers are stepped through) and of every field the writer
    schema tags with one of ``tags`` (``confluent:tags``, ``(confluent.field_meta).tags``; e.g.
    ``PII``). Kapsule reads the schema from its registry. Names at least one field or tag::

        SchemaSelection(tags=["PII"])
        SchemaSelection(fields=["customer.email"], tags=["PII"])
    """

    __slots__ = ("fields", "tags")

    def __init__(self, fields: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        self.fields = _names("SchemaSelection fields", fields)
        self.tags = _names("SchemaSelection tags", tags)
        if not self.fields and not self.tags:
            raise ValueError("SchemaSelection names no field and no tag; use ValuePart.NONE "
                             "to leave values in clear")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SchemaSelection)
                and (self.fields, self.tags) == (other.fields, other.tags))

    def __hash__(self) -> int:
        return hash((self.fields, self.tags))

    def __repr__(self) -> str:
        return f"SchemaSelection(fields={list(self.fields)!r}, tags={list(self.tags)!r})"


class ValuePart:
    """Which part of a record value to encrypt: ``ValuePart.NONE``, ``ValuePart.WHOLE``,
    ``ValuePart.json_fields([...RFC 6901 pointers...])`` or
    ``ValuePart.schema_fields(SchemaSelection(...))``."""

    __slots__ = ("kind", "pointers", "selection")
    NONE: "ValuePart"
    WHOLE: "ValuePart"

    def __init__(self, kind: str, pointers: Tuple[str, ...] = (),
                 selection: Optional[SchemaSelection] = None) -> None:
        self.kind = kind
        self.pointers = tuple(pointers)
        self.selection = selection

    @staticmethod
    def json_fields(pointers: Iterable[str]) -> "ValuePart":
        """Encrypt the JSON members at these pointers (each starts with ``/``)."""
        return ValuePart("json-fields", tuple(pointers))

    @staticmethod
    def schema_fields(selection: SchemaSelection) -> "ValuePart":
        """Encrypt these fields of a schema-encoded value; it stays valid under its schema id."""
        if not isinstance(selection, SchemaSelection):
            raise TypeError("ValuePart.schema_fields needs a SchemaSelection, not "
                            f"{type(selection).__name__}")
        return ValuePart("schema-fields", selection=selection)

    def _key(self) -> tuple:
        sel = self.selection
        return (self.kind, self.pointers, None if sel is None else (sel.fields, sel.tags))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValuePart) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.kind == "schema-fields":
            return f"ValuePart.schema_fields({self.selection!r})"
        return f"ValuePart({self.kind!r}, {list(self.pointers)!r})"


ValuePart.NONE = ValuePart("none")
ValuePart.WHOLE = ValuePart("whole")


class Encrypt:
    """How to encrypt a record. Immutable; the setters return a new value::

        Encrypt("kek-orders").whole_value().with_record_key().with_header("pii")

    ``key_id`` must match the binding's ``allowed_key_ids`` or Kapsule refuses the decision.
    """

    __slots__ = ("key_id", "value", "record_key", "headers", "_k")

    def __init__(
        self,
        key_id: str,
        value: ValuePart = ValuePart.NONE,
        record_key: bool = False,
        headers: Iterable[str] = (),
    ) -> None:
        if not isinstance(key_id, str):
            raise TypeError(f"key_id must be a str, not {type(key_id).__name__}")
        self.key_id = key_id
        self.value = value
        self.record_key = bool(record_key)
        self.headers = tuple(headers)
        self._k = (key_id, value._key(), self.record_key, self.headers)

    def whole_value(self) -> "Encrypt":
        """Also encrypt the whole value (tombstones stay null)."""
        return Encrypt(self.key_id, ValuePart.WHOLE, self.record_key, self.headers)

    def json_fields(self, pointers: Iterable[str]) -> "Encrypt":
        """Encrypt these JSON pointers of the value (the value stays JSON)."""
        return Encrypt(self.key_id, ValuePart.json_fields(pointers), self.record_key, self.headers)

    def schema_fields(self, fields: Iterable[str] = (), tags: Iterable[str] = ()) -> "Encrypt":
        """Encrypt fields of a schema-encoded value (Avro, Protobuf, JSON Schema in the Confluent
        wire format) by dotted path and by schema tag (see :class:`SchemaSelection`); the value
        stays valid under its schema id. A value not in the wire format is refused by Kapsule,
        never passed in clear::

            Encrypt("kek-orders").schema_fields(tags=["PII"])
        """
        return Encrypt(self.key_id, ValuePart.schema_fields(SchemaSelection(fields, tags)),
                       self.record_key, self.headers)

    def with_record_key(self) -> "Encrypt":
        """Also encrypt the record key, deterministically (partitioning keeps working)."""
        return Encrypt(self.key_id, self.value, True, self.headers)

    def with_header(self, name: str) -> "Encrypt":
        """Also encrypt every header named ``name``."""
        return Encrypt(self.key_id, self.value, self.record_key, self.headers + (name,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Encrypt) and self._k == other._k

    def __hash__(self) -> int:
        return hash(self._k)

    def __repr__(self) -> str:
        return (f"Encrypt({self.key_id!r}, value={self.value!r}, record_key={self.record_key}, "
                f"headers={list(self.headers)!r})")


class Decision:
    """What to do with one record: ``Decision.PASS``, ``Decision.encrypt(Encrypt(...))`` or
    ``Decision.reject(message)``. Equal decisions are sent to Kapsule once per batch."""

    __slots__ = ("kind", "encryption", "message", "_k")
    PASS: "Decision"

    def __init__(self, kind: str, encryption: Optional[Encrypt] = None, message: str = "") -> None:
        self.kind = kind
        self.encryption = encryption
        self.message = message
        self._k = (kind, encryption._k if encryption is not None else None, message)

    @staticmethod
    def encrypt(e: Encrypt) -> "Decision":
        """Encrypt the record as ``e`` describes."""
        if not isinstance(e, Encrypt):
            raise TypeError(f"Decision.encrypt needs an Encrypt, not {type(e).__name__}")
        return Decision("encrypt", e)

    @staticmethod
    def reject(message: str) -> "Decision":
        """Refuse the record, and with it its whole partition batch, with this message."""
        return Decision("reject", None, str(message))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._k == other._k

    def __hash__(self) -> int:
        return hash(self._k)

    def __repr__(self) -> str:
        if self.kind == "encrypt":
            return f"Decision.encrypt({self.encryption!r})"
        if self.kind == "reject":
            return f"Decision.reject({self.message!r})"
        return "Decision.PASS"


Decision.PASS = Decision("pass")


MAX_MEMO_HEADERS = 16
"""Most header names one :meth:`Memo.headers` may list (Kapsule refuses more)."""


class Memo:
    """What a per-record decision depends on (the plan's ``memo``): ``Memo.NONE``,
    ``Memo.header("tenant")``, ``Memo.headers(["tenant", "class"])``, ``Memo.RECORD_KEY`` or
    ``Memo.key_prefix(n)``.

    Declaring it lets Kapsule call ``decide`` once per distinct value instead of once per record
    and cache the answers (per topic and client principal, bounded, dropped when the module is
    replaced). It is a promise: two records with the same value must get the same decision, since
    Kapsule reuses one answer for both. ``decide`` then sees one record per value not cached yet.
    """

    __slots__ = ("kind", "header_name", "prefix_len", "header_names")
    NONE: "Memo"
    RECORD_KEY: "Memo"

    def __init__(self, kind: str, header_name: str = "", prefix_len: int = 0,
                 header_names: Tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.header_name = header_name
        self.prefix_len = prefix_len
        self.header_names = tuple(header_names)

    @staticmethod
    def header(name: str) -> "Memo":
        """The decision depends only on the first header named ``name`` (absent and null are
        values too)."""
        if not isinstance(name, str) or not name:
            raise ValueError("Memo.header needs a non-empty header name")
        return Memo("header", header_name=name)

    @staticmethod
    def headers(names: Iterable[str]) -> "Memo":
        """The decision depends only on the first header with each of these names, together
        (absent and null are values too): the memo of "tenant + exception" policies, e.g.
        ``Memo.headers(["tenant", "class"])``. 1 to 16 distinct, non-empty names."""
        got = _names("Memo.headers", names)
        if not 0 < len(got) <= MAX_MEMO_HEADERS:
            raise ValueError(f"Memo.headers needs 1 to {MAX_MEMO_HEADERS} header names, "
                             f"got {len(got)}")
        if len(set(got)) != len(got):
            raise ValueError(f"Memo.headers lists a header twice: {list(got)!r}")
        return Memo("headers", header_names=got)

    @staticmethod
    def key_prefix(n: int) -> "Memo":
        """The decision depends only on the first ``n`` bytes of the record key."""
        if not isinstance(n, int) or not 0 < n < 2**32:
            raise ValueError("Memo.key_prefix needs a byte count between 1 and 2^32-1")
        return Memo("key-prefix", prefix_len=n)

    def _key(self) -> tuple:
        return (self.kind, self.header_name, self.prefix_len, self.header_names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Memo) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.kind == "header":
            return f"Memo.header({self.header_name!r})"
        if self.kind == "headers":
            return f"Memo.headers({list(self.header_names)!r})"
        if self.kind == "key-prefix":
            return f"Memo.key_prefix({self.prefix_len})"
        return "Memo.RECORD_KEY" if self.kind == "record-key" else "Memo.NONE"


Memo.NONE = Memo("none")
Memo.RECORD_KEY = Memo("record-key")


class TopicPlan:
    """The answer for a whole topic, computed once per (topic, client principal) and cached by
    Kapsule: ``TopicPlan.PASS_ALL``, ``TopicPlan.encrypt_all(Encrypt(...))``,
    ``TopicPlan.per_record(Needs(...), memo=Memo...)`` or ``TopicPlan.reject_all(message)``."""

    __slots__ = ("kind", "encryption", "needs", "memo", "message")
    PASS_ALL: "TopicPlan"

    def __init__(self, kind: str, encryption: Optional[Encrypt] = None,
                 needs: Optional[Needs] = None, message: str = "",
                 memo: Optional[Memo] = None) -> None:
        self.kind = kind
        self.encryption = encryption
        self.needs = needs
        self.memo = memo if memo is not None else Memo.NONE
        self.message = message

    @staticmethod
    def encrypt_all(e: Encrypt) -> "TopicPlan":
        """Every record is encrypted the same way; ``decide`` is never called."""
        if not isinstance(e, Encrypt):
            raise TypeError(f"TopicPlan.encrypt_all needs an Encrypt, not {type(e).__name__}")
        return TopicPlan("encrypt-all", encryption=e)

    @staticmethod
    def per_record(needs: Needs, memo: Memo = None) -> "TopicPlan":  # type: ignore[assignment]
        """Batches go to ``decide``, showing these parts of each record.

        ``memo`` (default ``Memo.NONE``: every record is decided) declares what the decision
        depends on. The part it names is shown to ``decide`` even if ``needs`` leaves it out
        (``Memo.header`` and ``Memo.headers`` add headers, ``Memo.RECORD_KEY`` and
        ``Memo.key_prefix`` add the key).
        """
        if not isinstance(needs, Needs):
            raise TypeError(f"TopicPlan.per_record needs a Needs, not {type(needs).__name__}")
        if memo is None:
            memo = Memo.NONE
        if not isinstance(memo, Memo):
            raise TypeError(f"TopicPlan.per_record memo must be a Memo, not {type(memo).__name__}")
        if memo.kind in ("header", "headers") and not needs.headers:
            needs = Needs(key=needs.key, value=needs.value, headers=True)
        if memo.kind in ("record-key", "key-prefix") and not needs.key:
            needs = Needs(key=True, value=needs.value, headers=needs.headers)
        return TopicPlan("per-record", needs=needs, memo=memo)

    @staticmethod
    def reject_all(message: str) -> "TopicPlan":
        """Every record is refused with this message; ``decide`` is never called."""
        return TopicPlan("reject-all", message=str(message))

    def __repr__(self) -> str:
        if self.kind == "per-record":
            return f"TopicPlan.per_record({self.needs!r}, memo={self.memo!r})"
        return f"TopicPlan({self.kind!r})"


TopicPlan.PASS_ALL = TopicPlan("pass-all")

MECHANISMS = ("sasl-plain", "sasl-scram-sha256", "sasl-scram-sha512", "sasl-oauthbearer", "mtls")
"""The values of :attr:`Principal.mechanism`, in WIT order."""


class Principal:
    """An authenticated client: ``name`` (SASL user, OAuth subject or certificate subject) and
    ``mechanism`` (one of :data:`MECHANISMS`, e.g. ``"sasl-scram-sha512"`` or ``"mtls"``)."""

    __slots__ = ("name", "mechanism")

    def __init__(self, name: str, mechanism: str) -> None:
        self.name = name
        self.mechanism = mechanism

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Principal)
                and (self.name, self.mechanism) == (other.name, other.mechanism))

    def __hash__(self) -> int:
        return hash((self.name, self.mechanism))

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, {self.mechanism!r})"


class Client:
    """The client connection a call is made for. ``principal`` is ``None`` on a connection
    without authentication; :attr:`name` is the principal's name or ``None``."""

    __slots__ = ("principal",)
    ANONYMOUS: "Client"

    def __init__(self, principal: Optional[Principal] = None) -> None:
        self.principal = principal

    @property
    def name(self) -> Optional[str]:
        """The authenticated name, or ``None`` without authentication."""
        return None if self.principal is None else self.principal.name

    @property
    def mechanism(self) -> Optional[str]:
        """How the client authenticated (see :data:`MECHANISMS`), or ``None``."""
        return None if self.principal is None else self.principal.mechanism

    def __repr__(self) -> str:
        return f"Client({self.principal!r})"


Client.ANONYMOUS = Client(None)


class Reveal:
    """What a client may read in clear of a topic's encrypted records on Fetch:
    ``Reveal.ALL`` (the default), ``Reveal.parts(...)``, ``Reveal.CIPHERTEXT`` or
    ``Reveal.deny(message)``. Kapsule asks once per (topic, client principal) and caches it."""

    __slots__ = ("kind", "value", "json_fields", "record_key", "headers", "message")
    ALL: "Reveal"
    CIPHERTEXT: "Reveal"

    def __init__(self, kind: str, value: bool = False, json_fields: Iterable[str] = (),
                 record_key: bool = False, headers: Iterable[str] = (), message: str = "") -> None:
        self.kind = kind
        self.value = bool(value)
        self.json_fields = tuple(json_fields)
        self.record_key = bool(record_key)
        self.headers = tuple(headers)
        self.message = message

    @staticmethod
    def parts(value: bool = False, json_fields: Iterable[str] = (), record_key: bool = False,
              headers: Iterable[str] = ()) -> "Reveal":
        """Decrypt only these parts; the rest reaches the client as stored (ciphertext).

        ``value=True`` decrypts the whole value or every encrypted JSON field; otherwise only the
        encrypted JSON fields at ``json_fields`` (RFC 6901 pointers) are decrypted.
        ``Reveal.parts()`` decrypts nothing but keeps the records' clear parts readable.
        """
        if isinstance(json_fields, str) or isinstance(headers, str):
            raise TypeError("Reveal.parts: json_fields and headers are lists of strings")
        return Reveal("parts", value, json_fields, record_key, headers)

    @staticmethod
    def deny(message: str) -> "Reveal":
        """Refuse the fetch (TOPIC_AUTHORIZATION_FAILED) with this message."""
        return Reveal("deny", message=str(message))

    def __repr__(self) -> str:
        if self.kind == "parts":
            return (f"Reveal.parts(value={self.value}, json_fields={list(self.json_fields)!r}, "
                    f"record_key={self.record_key}, headers={list(self.headers)!r})")
        if self.kind == "deny":
            return f"Reveal.deny({self.message!r})"
        return "Reveal.ALL" if self.kind == "all" else "Reveal.CIPHERTEXT"


Reveal.ALL = Reveal("all")
Reveal.CIPHERTEXT = Reveal("ciphertext")


Header = Tuple[bytes, Optional[bytes]]
"""One Kafka header: ``(key, value)``; ``value`` is ``None`` for a null value."""


_ENCODED: dict = {}


def _encoded(name: str) -> bytes:
    """``name`` as UTF-8, cached: policies ask for the same few header names on every record."""
    b = _ENCODED.get(name)
    if b is None:
        b = name.encode()
        if len(_ENCODED) < 256:
            _ENCODED[name] = b
    return b


# Layout of ``batch-view`` (wit/policy.wit): per record eight little-endian u32 words (key offset
# and length, value offset and length, first header index, header count, timestamp as an s64),
# per header four (key offset and length, value offset and length), per record in ``schema-ids``
# two (schema id of the value, of the key). A length of _ABSENT is a null or not-asked-for part;
# a schema id of _ABSENT says the value or key is not in the Confluent wire format.
_ABSENT = 0xFFFFFFFF


class _Batch:
    """The descriptors of one batch as u32 (and s64) views over the bytes Kapsule passed: no
    per-record object exists until a policy asks for one."""

    __slots__ = ("data", "records", "timestamps", "headers", "schema_ids", "count")

    def __init__(self, batch: Any) -> None:
        self.data = batch.data
        raw = memoryview(batch.records)
        self.count = len(raw) // 32
        raw = raw[:self.count * 32]
        self.records = raw.cast("I")  # Wasm is little-endian, as the layout is
        self.timestamps = raw.cast("q")
        hraw = memoryview(batch.headers)
        self.headers = hraw[:len(hraw) // 16 * 16].cast("I")
        sraw = memoryview(batch.schema_ids)
        self.schema_ids = sraw[:len(sraw) // 8 * 8].cast("I")

    def schema_id(self, at: int) -> Optional[int]:
        ids = self.schema_ids
        if at >= len(ids):
            return None
        i = ids[at]
        return None if i == _ABSENT else i

    def part(self, w: Any, at: int) -> Optional[bytes]:
        n = w[at + 1]
        if n == _ABSENT:
            return None
        o = w[at]
        return self.data[o:o + n]


class RecordView:
    """The parts of one record the topic plan asked for, read lazily from the batch.

    Parts not asked for are ``None`` / empty whatever the record holds.
    """

    __slots__ = ("_b", "_i")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._b = batch
        self._i = index

    @staticmethod
    def _views(batch: Any) -> List["RecordView"]:
        b = _Batch(batch)
        return [RecordView(b, i) for i in range(b.count)]

    @property
    def key(self) -> Optional[bytes]:
        """Record key; ``None`` for a null key or when not asked for."""
        b = self._b
        return b.part(b.records, self._i << 3)

    @property
    def value(self) -> Optional[bytes]:
        """Record value; ``None`` for a tombstone or when not asked for."""
        b = self._b
        return b.part(b.records, (self._i << 3) + 2)

    @property
    def timestamp(self) -> int:
        """Timestamp in milliseconds since the Unix epoch, as the producer set it."""
        return self._b.timestamps[(self._i << 2) + 3]

    @property
    def value_schema_id(self) -> Optional[int]:
        """Schema id of the value when it is in the Confluent Schema Registry wire format
        (magic byte 0, 4-byte id, body), whatever ``Needs`` asked for; ``None`` otherwise. It
        says only what the bytes claim: Kapsule refuses a value that does not decode under it
        when its schema fields are encrypted."""
        return self._b.schema_id(self._i << 1)

    @property
    def key_schema_id(self) -> Optional[int]:
        """Schema id of the key when it is in the wire format, whatever ``Needs`` asked for;
        ``None`` otherwise."""
        return self._b.schema_id((self._i << 1) + 1)

    def _header_words(self) -> range:
        """Indexes (into the header words) of this record's header descriptors."""
        w = self._b.records
        at = self._i << 3
        start = w[at + 4]
        return range(start << 2, (start + w[at + 5]) << 2, 4)

    @property
    def headers(self) -> List[Header]:
        """Headers in wire order, as ``(key, value)`` pairs; empty when not asked for."""
        b = self._b
        hw = b.headers
        data = b.data
        return [(data[hw[j]:hw[j] + hw[j + 1]], b.part(hw, j + 2))
                for j in self._header_words() if j + 3 < len(hw)]

    def _find(self, name: str) -> int:
        """Index of the header words of the first header named ``name``, or -1."""
        b = self._b
        w = b.records
        at = self._i << 3
        count = w[at + 5]
        if not count:
            return -1
        want = _encoded(name)
        n = len(want)
        data = b.data
        hw = b.headers
        j = w[at + 4] << 2
        end = min(j + (count << 2), len(hw))
        while j < end:
            if hw[j + 1] == n and data.startswith(want, hw[j]):
                return j
            j += 4
        return -1

    def header(self, name: str) -> Optional[bytes]:
        """Value of the first header named ``name``, if present and not null."""
        j = self._find(name)
        if j < 0:
            return None
        b = self._b
        return b.part(b.headers, j + 2)

    def header_str(self, name: str) -> Optional[str]:
        """As :meth:`header`, decoded as UTF-8 (``None`` if absent, null or not UTF-8)."""
        v = self.header(name)
        if v is None:
            return None
        try:
            return v.decode()
        except UnicodeDecodeError:
            return None

    def has_header(self, name: str) -> bool:
        """Whether a header named ``name`` is present (even with a null value)."""
        return self._find(name) >= 0

    def key_str(self) -> Optional[str]:
        """The key as UTF-8 text, if present and valid."""
        k = self.key
        try:
            return None if k is None else k.decode()
        except UnicodeDecodeError:
            return None

    def value_str(self) -> Optional[str]:
        """The value as UTF-8 text, if present and valid."""
        v = self.value
        try:
            return None if v is None else v.decode()
        except UnicodeDecodeError:
            return None

    def value_json(self) -> Any:
        """The value parsed as JSON; raises ``ValueError`` if it is absent or not JSON."""
        v = self.value
        if v is None:
            raise ValueError("record has no value")
        return _json.loads(v)
