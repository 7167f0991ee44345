"""Schemas of schema-encoded records, through the ``describe-schema`` import: a schema's format,
subject and version, and every field path with its tags and kind, so a policy can choose which
fields ``Encrypt(k).schema_fields(...)`` encrypts.

Kapsule fetches the schemas of a batch's schema ids from its registry before calling ``decide``;
:func:`describe_schema` only reads them and never waits on the network. It answers during
``decide`` only, for the ids in ``record.value_schema_id`` and ``key_schema_id``. Describing a
schema copies its field list into the guest: ask once per id and batch (:class:`Schemas` keeps
the answers). Nothing here calls the import until a policy asks for a schema::

    from kapsule_policy import Decision, Encrypt, SchemaError, Schemas

    def decide(self, topic, client, records):
        schemas = Schemas()                       # one per decide call
        out = []
        for r in records:
            if r.value_schema_id is None:         # not in the Confluent wire format
                out.append(Decision.encrypt(Encrypt("kek-orders").whole_value()))
                continue
            try:
                schema = schemas.describe(r.value_schema_id)
            except SchemaError:                   # registry down, unknown id: select by tag
                out.append(Decision.encrypt(Encrypt("kek-orders").schema_fields(tags=["PII"])))
                continue
            fields = schema.select(lambda f: "email" in f.path)
            out.append(Decision.encrypt(Encrypt("kek-orders").schema_fields(fields=fields))
                       if fields else Decision.PASS)
        return out
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

# `format` of a SchemaInfo and `kind` of a SchemaField, by the generated enums' values.
FORMATS = ("avro", "protobuf", "json")
KINDS = ("text", "bytes", "other")


class SchemaError(Exception):
    """Kapsule could not describe a schema: an id not in the batch being decided, a call outside
    ``decide``, no registry configured, the registry unavailable or not knowing the id, a schema
    Kapsule cannot parse. ``str(e)`` (and ``e.message``) is Kapsule's explanation; it quotes no
    record contents. Uncaught in ``decide``, it refuses the batch like any exception."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SchemaField:
    """One field of a schema.

    ``path`` is the dotted path exactly as ``schema_fields(fields=...)`` takes it (e.g.
    ``customer.email``; arrays, maps, unions/oneof and optional wrappers stepped through),
    ``tags`` its Confluent tags (e.g. ``PII``), ``kind`` what it can hold: ``"text"`` (a string;
    the ciphertext is written as text), ``"bytes"`` (written raw), or ``"other"`` (numbers,
    enums, records, messages, unions of several types: selecting it refuses the record; its own
    fields are listed under its path).
    """

    __slots__ = ("path", "tags", "kind")

    def __init__(self, path: str, tags: Tuple[str, ...] = (), kind: str = "other") -> None:
        if kind not in KINDS:
            raise ValueError(f"SchemaField kind must be one of {KINDS}, got {kind!r}")
        self.path = path
        self.tags = tuple(tags)
        self.kind = kind

    @property
    def is_encryptable(self) -> bool:
        """True for text and bytes fields: the ones ``schema_fields`` can encrypt."""
        return self.kind != "other"

    def has_tag(self, tag: str) -> bool:
        """True when the field carries ``tag``."""
        return tag in self.tags

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SchemaField) and self.path == other.path
                and self.tags == other.tags and self.kind == other.kind)

    def __hash__(self) -> int:
        return hash((self.path, self.tags, self.kind))

    def __repr__(self) -> str:
        return f"SchemaField({self.path!r}, {self.tags!r}, {self.kind!r})"


class SchemaInfo:
    """A registered schema as Kapsule describes it.

    ``format`` is ``"avro"``, ``"protobuf"`` or ``"json"``; ``subject`` the subject it is
    registered under (the batch topic's own subject when the schema is registered under it, else the first the registry lists) and ``version`` its version there, both
    ``None`` when the registry did not say; ``fields`` every field, depth-first (records and
    messages listed, then their fields below them); ``fields_truncated`` is True when the schema
    has more fields than were listed (over 1024 fields, 256 KiB of paths and tags, or 64 levels).
    """

    __slots__ = ("format", "subject", "version", "fields", "fields_truncated")

    def __init__(self, format: str, subject: Optional[str] = None, version: Optional[int] = None,
                 fields: Tuple[SchemaField, ...] = (), fields_truncated: bool = False) -> None:
        if format not in FORMATS:
            raise ValueError(f"SchemaInfo format must be one of {FORMATS}, got {format!r}")
        self.format = format
        self.subject = subject
        self.version = version
        self.fields = tuple(fields)
        self.fields_truncated = fields_truncated

    def select(self, choose: Callable[[SchemaField], bool]) -> List[str]:
        """The paths of the encryptable fields for which ``choose(field)`` is true, in schema
        order, for ``Encrypt(k).schema_fields(fields=...)``. Fields of kind ``"other"`` are never
        chosen, so the selection never refuses a record for its type. Empty when nothing is
        chosen (``schema_fields`` refuses an empty selection: decide what such a record gets)."""
        return [f.path for f in self.fields if f.kind != "other" and choose(f)]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SchemaInfo) and self.format == other.format
                and self.subject == other.subject and self.version == other.version
                and self.fields == other.fields
                and self.fields_truncated == other.fields_truncated)

    def __repr__(self) -> str:
        return (f"SchemaInfo({self.format!r}, subject={self.subject!r}, version={self.version!r}, "
                f"fields=<{len(self.fields)}>, fields_truncated={self.fields_truncated!r})")


def _from_wit(s: Any) -> SchemaInfo:
    return SchemaInfo(
        FORMATS[s.format.value],
        s.subject,
        s.version,
        tuple(SchemaField(f.path, tuple(f.tags), KINDS[f.kind.value]) for f in s.fields),
        bool(s.fields_truncated),
    )


def describe_schema(id: int) -> SchemaInfo:
    """The schema with this id (a value or key schema id of the batch being decided).

    Raises :class:`SchemaError` when Kapsule cannot describe it (see there). Each call copies
    the whole field list: prefer :meth:`Schemas.describe`, which asks once per id.
    """
    import wit_world  # generated by componentize-py at build time
    from componentize_py_types import Err

    try:
        answer = wit_world.describe_schema(id)
    except Err as e:
        raise SchemaError(str(e.value)) from None
    return _from_wit(answer)


class Schemas:
    """The schemas described during one ``decide`` call, each asked of Kapsule once. Create one
    per call: answers are valid for the batch they were asked for. Creating one calls nothing."""

    __slots__ = ("_described",)

    def __init__(self) -> None:
        self._described: Dict[int, Union[SchemaInfo, SchemaError]] = {}

    def describe(self, id: int) -> SchemaInfo:
        """:func:`describe_schema`, asked once per id: a failure is remembered too and raised
        again as the same :class:`SchemaError`."""
        answer = self._described.get(id)
        if answer is None:
            try:
                answer = describe_schema(id)
            except SchemaError as e:
                answer = e
            self._described[id] = answer
        if isinstance(answer, SchemaError):
            raise SchemaError(answer.message)
        return answer
