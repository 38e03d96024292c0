"""Avro codec for every topic's values: fastavro schemaless bodies in the Confluent wire format.

A message value is ``0x00`` (magic byte), a 4-byte big-endian schema id, then
the schemaless Avro body. Keys are plain UTF-8 strings (:func:`encode_key`).

Control plane and data plane are kept apart: :func:`build_codecs` loads, checks
and parses every schema once (from ``schemas/catalog.json``, or by registering
with a Confluent Schema Registry) and builds one :class:`TopicCodec` per
logical topic; :meth:`TopicCodec.encode` and :meth:`TopicCodec.decode` then do
only the per-message work: a header, a dict lookup, one call of a reader or writer
specialised for the schema (:mod:`schemas.fastdecode`, :mod:`schemas.fastencode`),
with fastavro behind both for anything they do not handle exactly.

Back of the envelope (``python -m schemas.codec`` prints the measurement, next
to bare fastavro calls on the same schema): fastavro's generic reader and writer
cost about 0.7-1 µs per field on the development VM, ~20 µs per payment request or
two-entry ledger transaction; the specialised ones about half that or less. At 20,000
requests/s on 2 cores the budget is 100 µs of CPU per request for everything, so
emitting fewer or smaller messages per request remains the bigger lever.

Two decisions the agents rely on:

* Timestamps (``*_ms``, logical type ``timestamp-millis``) decode to ``int``
  milliseconds, not ``datetime``: the bytes are identical and conversion would
  cost time on every message (see :func:`schemas.catalog.wire_schema`).
* An ``int``/``long`` field never accepts a ``float`` or ``bool``: fastavro
  would silently truncate ``12.5`` to ``12``, which for ``amount_minor`` means
  moving the wrong amount of money. The check is a cheap type test on the
  integer fields only; the full validator runs only when it or fastavro fails.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import sys
import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Final, Protocol

from fastavro import schemaless_reader, schemaless_writer

from schemas.catalog import (
    SCHEMAS_DIR,
    TOPIC_SCHEMA_FILES,
    Catalog,
    Schema,
    compatibility_problems,
    fingerprint,
    load_schema_file,
    subject_for,
    wire_schema,
)
from schemas.errors import CatalogError, DecodeError, EncodeError, RegistryError, SchemaError
from schemas.fastdecode import Decoder, compile_decoder
from schemas.fastencode import Unsupported, compile_encoder

__all__ = [
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "Codecs",
    "DecodeError",
    "EncodeError",
    "RegistryClient",
    "RegistrySchema",
    "SchemaError",
    "TopicCodec",
    "build_codecs",
    "decode_key",
    "encode_key",
    "find_problem",
    "load_codec",
]

MAGIC_BYTE: Final[int] = 0
HEADER_SIZE: Final[int] = 5
_HEADER: Final[struct.Struct] = struct.Struct(">BI")

REGISTRY_SCHEMA_CACHE_MAX: Final[int] = 256
"""Writer schemas fetched from the registry by id, kept per topic (bounds memory when
garbage with random ids arrives; the oldest entry is dropped when full)."""

ERROR_VALUE_CHARS_MAX: Final[int] = 60
"""How much of an offending value an error message shows."""

_INT_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "int": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}

Record = dict[str, Any]
_Reader = tuple[dict[str, Any], dict[str, Any] | None]
"""(writer schema, reader schema or None when the writer is the current schema)."""


class RegistryClient(Protocol):
    """The part of ``confluent_kafka.schema_registry.SchemaRegistryClient`` the codec uses."""

    def register_schema(self, subject_name: str, schema: Any) -> int:
        """Register ``schema`` under the subject and return its id."""
        ...

    def lookup_schema(self, subject_name: str, schema: Any) -> Any:
        """The registered version of ``schema`` (has ``schema_id``), or raise."""
        ...

    def get_schema(self, schema_id: int) -> Any:
        """The schema with that id (has ``schema_str``, ``schema_type``, ``references``)."""
        ...


# ---------------------------------------------------------------------------
# Data plane


class TopicCodec:
    """Encodes and decodes the values of one logical topic.

    ``schema_id`` is what :meth:`encode` writes; :meth:`decode` accepts that id
    and every other id of the topic's subject, resolving older writer schemas to
    the current one so callers always see the current record shape.
    """

    __slots__ = (
        "_fast_decoders",
        "_fast_encode",
        "_guard",
        "_header",
        "_readers",
        "_resolve_unknown",
        "_schema",
        "schema_id",
        "subject",
        "topic",
    )

    def __init__(
        self,
        *,
        topic: str,
        subject: str,
        schema_id: int,
        readers: dict[int, _Reader],
        resolve_unknown: Callable[[int], _Reader | str] | None = None,
    ) -> None:
        self.topic = topic
        self.subject = subject
        self.schema_id = schema_id
        self._readers = readers
        self._schema = readers[schema_id][0]
        self._header = _HEADER.pack(MAGIC_BYTE, schema_id)
        self._guard = _compile_integer_guard(self._schema, _named(self._schema), set())
        self._fast_encode = compile_encoder(self._schema)
        self._fast_decoders: dict[int, Decoder | None] = {
            known_id: _compile_fast_decoder(reader) for known_id, reader in readers.items()
        }
        self._resolve_unknown = resolve_unknown

    def __repr__(self) -> str:
        return f"TopicCodec({self.topic!r}, subject={self.subject!r}, schema_id={self.schema_id})"

    @property
    def parsed_schema(self) -> dict[str, Any]:
        """The fastavro-parsed current schema :meth:`encode` writes (temporal logical types
        removed, see :func:`schemas.catalog.wire_schema`). Do not modify it."""
        return self._schema

    @property
    def known_schema_ids(self) -> tuple[int, ...]:
        """Ids :meth:`decode` resolves without asking anyone."""
        return tuple(sorted(self._readers))

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Header plus schemaless Avro body; :class:`EncodeError` if ``record`` does not fit."""
        fast = self._fast_encode
        if fast is not None:
            try:
                return self._header + fast(record)
            except Unsupported:
                pass  # fastavro writes it, or says why it cannot
        guard = self._guard
        if guard is not None and not _passes(guard, record):
            self._raise_if_invalid(record, None)
        buffer = BytesIO()
        buffer.write(self._header)
        try:
            schemaless_writer(buffer, self._schema, record)
        except Exception as exc:
            self._raise_if_invalid(record, exc)
            raise EncodeError(
                f"cannot encode {self.topic} record: {exc}", topic=self.topic, field=None
            ) from exc
        return buffer.getvalue()

    def decode(
        self, data: bytes, partition: int | None = None, offset: int | None = None
    ) -> Record:
        """The record in ``data``; :class:`DecodeError` naming topic, partition, offset if none.

        A body that needs no schema resolution is read by its schema's specialised decoder
        (:mod:`schemas.fastdecode`); anything that decoder refuses, and every other body, by
        fastavro, whose errors are the ones raised.
        """
        try:
            magic, schema_id = _HEADER.unpack_from(data)
        except (struct.error, TypeError) as exc:
            raise self._decode_error(partition, offset, _short_reason(data)) from exc
        if magic != MAGIC_BYTE:
            raise self._decode_error(partition, offset, _magic_reason(magic))
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._unknown_id(schema_id, partition, offset)
            fast = self._resolved_decoder(schema_id, reader)
        else:
            fast = self._fast_decoders.get(schema_id)
        if fast is not None and data.__class__ is bytes:
            try:
                fast_record, end = fast(data, HEADER_SIZE)
            except Exception:
                pass  # fastavro reads it, or says why it cannot
            else:
                if end != len(data):
                    raise self._left_over_error(data, end, partition, offset, schema_id)
                return fast_record
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record: Any = schemaless_reader(buffer, reader[0], reader[1])
        except Exception as exc:
            reason = (
                f"body does not match schema id {schema_id} "
                f"({type(exc).__name__}: {_without_addresses(str(exc))})"
            )
            raise self._decode_error(partition, offset, reason, schema_id) from exc
        if buffer.tell() != len(data):
            raise self._left_over_error(data, buffer.tell(), partition, offset, schema_id)
        return record

    def _left_over_error(
        self, data: bytes, end: int, partition: int | None, offset: int | None, schema_id: int
    ) -> DecodeError:
        reason = (
            f"{len(data) - end} byte(s) left over after a schema id {schema_id} "
            "record (corrupt, or not this topic's data)"
        )
        return self._decode_error(partition, offset, reason, schema_id)

    def _resolved_decoder(self, schema_id: int, reader: _Reader) -> Decoder | None:
        """The fast decoder of a writer schema met later (registry), compiled once per id."""
        decoders = self._fast_decoders
        if schema_id in decoders:
            return decoders[schema_id]
        if len(decoders) >= len(self._readers) + REGISTRY_SCHEMA_CACHE_MAX:
            oldest = next(known for known in decoders if known not in self._readers)
            del decoders[oldest]
        decoder = decoders[schema_id] = _compile_fast_decoder(reader)
        return decoder

    def _unknown_id(self, schema_id: int, partition: int | None, offset: int | None) -> _Reader:
        if self._resolve_unknown is None:
            reason = (
                f"unknown schema id {schema_id} for {self.subject} (known: "
                f"{', '.join(map(str, self.known_schema_ids))}): the producer uses a schema this "
                "worker does not know; deploy the catalog that registered it"
            )
            raise self._decode_error(partition, offset, reason, schema_id)
        found = self._resolve_unknown(schema_id)
        if isinstance(found, str):
            raise self._decode_error(partition, offset, found, schema_id)
        return found

    def _decode_error(
        self,
        partition: int | None,
        offset: int | None,
        reason: str,
        schema_id: int | None = None,
    ) -> DecodeError:
        where = f"partition {_or_unknown(partition)} offset {_or_unknown(offset)}"
        return DecodeError(
            f"cannot decode {self.topic} {where}: {reason}",
            topic=self.topic,
            partition=partition,
            offset=offset,
            reason=reason,
            schema_id=schema_id,
        )

    def _raise_if_invalid(self, record: Any, cause: Exception | None) -> None:
        problem = find_problem(self._schema, record)
        if problem is None:
            return
        path, message = problem
        where = f"field {path}" if path else "record"
        raise EncodeError(
            f"cannot encode {self.topic} record: {where}: {message}",
            topic=self.topic,
            field=path or None,
        ) from cause


def _compile_fast_decoder(reader: _Reader) -> Decoder | None:
    """The specialised decoder of a writer schema read without schema resolution (reader
    schema None, or equal to the writer's, which fastavro then ignores too), else None."""
    writer_schema, reader_schema = reader
    if reader_schema is not None and reader_schema != writer_schema:
        return None
    return compile_decoder(writer_schema)


def _passes(guard: Callable[[Any], bool], record: Any) -> bool:
    try:
        return guard(record)
    except Exception:  # not a mapping, not iterable, ...: let the validator say what
        return False


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _without_addresses(text: str) -> str:
    """fastavro's reader names its buffer ("cannot read double from <_io.BytesIO object at
    0x7f...>"): a memory address means nothing in a dead letter, and it differs per call."""
    return _OBJECT_REPR.sub("the message", text)


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _short_reason(data: Any) -> str:
    if data is None:
        return "no value (a tombstone?): expected a Confluent Avro record"
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"value is a {type(data).__name__}, not bytes"
    if len(data) == 0:
        return "empty value: expected a Confluent Avro record"
    return f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte Confluent header"


def _magic_reason(magic: int) -> str:
    hint = " (looks like JSON)" if magic in (0x7B, 0x5B) else ""
    return (
        f"magic byte 0x{magic:02x}{hint}, expected 0x00: not Confluent-framed Avro; was it "
        "produced without the paystream codec?"
    )


class Codecs:
    """The codec of every topic, looked up by logical (``payments.requests``) or real name."""

    def __init__(self, codecs: Mapping[str, TopicCodec], topic_prefix: str = "") -> None:
        self.topic_prefix = topic_prefix
        self._logical = dict(codecs)
        self._by_name = {**self._logical}
        self._by_name.update({f"{topic_prefix}{t}": c for t, c in self._logical.items()})

    def __repr__(self) -> str:
        return f"Codecs({sorted(self._logical)}, topic_prefix={self.topic_prefix!r})"

    @property
    def topics(self) -> tuple[str, ...]:
        """The logical topic names."""
        return tuple(self._logical)

    def for_topic(self, topic: str) -> TopicCodec:
        """The codec of a logical or prefixed topic name; :class:`SchemaError` if unknown."""
        codec = self._by_name.get(topic)
        if codec is None:
            raise SchemaError(
                f"no Avro schema for topic {topic!r} (prefix {self.topic_prefix!r}); "
                f"known topics: {', '.join(self._logical)}"
            )
        return codec

    def encode(self, topic: str, record: Mapping[str, Any]) -> bytes:
        """:meth:`TopicCodec.encode` of ``topic``'s codec."""
        return self.for_topic(topic).encode(record)

    def decode(
        self, topic: str, data: bytes, partition: int | None = None, offset: int | None = None
    ) -> Record:
        """:meth:`TopicCodec.decode` of ``topic``'s codec."""
        return self.for_topic(topic).decode(data, partition, offset)


def encode_key(key: str) -> bytes:
    """A message key: the UTF-8 bytes of an account id, currency pair or model name."""
    return key.encode("utf-8")


def decode_key(
    data: bytes | None, topic: str, partition: int | None = None, offset: int | None = None
) -> str:
    """The string key of a message; :class:`DecodeError` if it is missing or not UTF-8."""
    if data is None:
        reason = "message has no key; every paystream topic is keyed"
    else:
        try:
            return bytes(data).decode("utf-8")
        except (UnicodeDecodeError, TypeError) as exc:
            reason = f"key is not UTF-8 text ({exc})"
    where = f"partition {_or_unknown(partition)} offset {_or_unknown(offset)}"
    raise DecodeError(
        f"cannot decode key of {topic} {where}: {reason}",
        topic=topic,
        partition=partition,
        offset=offset,
        reason=reason,
    )


# ---------------------------------------------------------------------------
# Validation, off the hot path: which field is wrong, and why


def _named(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, dict):
        named: dict[str, Any] = parsed.get("__named_schemas", {})
        return named
    return {}


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > ERROR_VALUE_CHARS_MAX:
        text = text[: ERROR_VALUE_CHARS_MAX - 3] + "..."
    return f"{text} ({type(value).__name__})"


def find_problem(parsed_schema: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """The first ``(field path, what is wrong)`` of ``value`` against a fastavro-parsed
    schema, or ``None`` if it fits. Stricter than fastavro on integers: see the module doc."""
    return _problem(parsed_schema, value, _named(parsed_schema), "")


def _problem(
    schema: Any, value: Any, names: Mapping[str, Any], path: str
) -> tuple[str, str] | None:
    if isinstance(schema, str) and schema in names:
        schema = names[schema]
    kind = _kind(schema)
    if kind == "union":
        return _union_problem(schema, value, names, path)
    if kind in ("record", "error"):
        return _record_problem(schema, value, names, path)
    if kind == "array":
        if not isinstance(value, list | tuple):
            return path, f"{_show(value)}: expected a list"
        for index, item in enumerate(value):
            found = _problem(schema["items"], item, names, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if kind == "map":
        if not isinstance(value, Mapping):
            return path, f"{_show(value)}: expected a mapping of strings to values"
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]", "map keys must be strings"
            found = _problem(schema["values"], item, names, f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    message = _scalar_problem(kind, schema, value)
    return None if message is None else (path, message)


def _union_problem(
    branches: list[Any], value: Any, names: Mapping[str, Any], path: str
) -> tuple[str, str] | None:
    problems = [_problem(branch, value, names, path) for branch in branches]
    if any(problem is None for problem in problems):
        return None
    non_null = [b for b, p in zip(branches, problems, strict=True) if _kind(b) != "null"]
    if value is not None and len(non_null) == 1:
        return problems[branches.index(non_null[0])]
    kinds = [_kind(names.get(b, b) if isinstance(b, str) else b) for b in branches]
    return path, f"{_show(value)} matches none of the union's types {kinds}"


def _record_problem(
    schema: dict[str, Any], value: Any, names: Mapping[str, Any], path: str
) -> tuple[str, str] | None:
    if not isinstance(value, Mapping):
        return path, f"{_show(value)}: expected a mapping for {schema['name']}"
    for field in schema["fields"]:
        name = field["name"]
        field_path = f"{path}.{name}" if path else name
        if name not in value:
            nullable = isinstance(field["type"], list) and "null" in field["type"]
            if "default" in field or nullable:
                continue
            return field_path, "missing, and the field has no default"
        found = _problem(field["type"], value[name], names, field_path)
        if found is not None:
            return found
    return None


def _scalar_problem(kind: str, schema: Any, value: Any) -> str | None:
    if kind in _INT_RANGES:
        if isinstance(value, float):
            return (
                f"{_show(value)}: expected an integer ({kind}); amounts are integer minor "
                "units and times integer milliseconds, never floats"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{_show(value)}: expected an integer ({kind})"
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            return f"{_show(value)}: out of range for {kind}"
        return None
    if kind == "null":
        accepted, expected = value is None, "null (None)"
    elif kind == "boolean":
        accepted, expected = isinstance(value, bool), "a bool"
    elif kind in ("float", "double"):
        accepted = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif kind == "string":
        accepted, expected = isinstance(value, str), "a str"
    elif kind == "bytes":
        accepted, expected = isinstance(value, bytes | bytearray), "bytes"
    elif kind == "fixed":
        accepted = isinstance(value, bytes | bytearray) and len(value) == schema["size"]
        expected = f"{schema['size']} bytes"
    elif kind == "enum":
        accepted, expected = value in schema["symbols"], f"one of {schema['symbols']}"
    else:
        return f"unsupported schema type {kind!r}"
    return None if accepted else f"{_show(value)}: expected {expected}"


def _int_or_none(value: Any) -> bool:
    return value is None or value.__class__ is int


def _compile_integer_guard(
    schema: Any, names: Mapping[str, Any], seen: set[str]
) -> Callable[[Any], bool] | None:
    """A fast test that every ``int``/``long`` value in a record is a plain ``int``.

    ``True`` means fine; ``False`` means "look closer" (a float, a bool, an int
    subclass, a wrong shape), and the full validator decides. ``None`` means the
    schema has no integers to check.
    """
    if isinstance(schema, str) and schema in names:
        schema = names[schema]
    kind = _kind(schema)
    if kind in _INT_RANGES:
        return _int_or_none
    if kind == "union":
        guards = [g for b in schema if (g := _compile_integer_guard(b, names, seen)) is not None]
        if not guards:
            return None
        if len(guards) == 1:
            return guards[0]
        return lambda value: any(guard(value) for guard in guards)
    if kind == "array":
        item_guard = _compile_integer_guard(schema["items"], names, seen)
        if item_guard is None:
            return None
        return lambda value: value is None or all(map(item_guard, value))
    if kind == "map":
        value_guard = _compile_integer_guard(schema["values"], names, seen)
        if value_guard is None:
            return None
        return lambda value: value is None or all(map(value_guard, value.values()))
    if kind in ("record", "error"):
        return _compile_record_guard(schema, names, seen)
    return None


def _compile_record_guard(
    schema: dict[str, Any], names: Mapping[str, Any], seen: set[str]
) -> Callable[[Any], bool] | None:
    if schema["name"] in seen:  # a recursive type: checked by the validator only
        return None
    seen = {*seen, schema["name"]}
    integer_fields: list[str] = []
    nested: list[tuple[str, Callable[[Any], bool]]] = []
    for field in schema["fields"]:
        field_type = field["type"]
        if isinstance(field_type, str) and field_type in names:
            field_type = names[field_type]
        guard = _compile_integer_guard(field_type, names, seen)
        if guard is _int_or_none:
            integer_fields.append(field["name"])
        elif guard is not None:
            nested.append((field["name"], guard))
    if not integer_fields and not nested:
        return None
    integer_names = tuple(integer_fields)
    nested_guards = tuple(nested)

    def integers_only(value: Any) -> bool:
        if value is None:
            return True
        get = value.get
        for name in integer_names:
            item = get(name)
            if item is not None and item.__class__ is not int:
                return False
        return True

    if not nested_guards:
        return integers_only

    def with_nested(value: Any) -> bool:
        if not integers_only(value):
            return False
        get = value.get
        return all(guard(get(name)) for name, guard in nested_guards)

    return with_nested


# ---------------------------------------------------------------------------
# Control plane: building the codecs


def build_codecs(
    schema_registry_url: str | None = None,
    *,
    topic_prefix: str = "",
    registry_client: RegistryClient | None = None,
    auto_register_schemas: bool = True,
    schemas_dir: Path = SCHEMAS_DIR,
) -> Codecs:
    """The codecs of every topic in :data:`schemas.catalog.TOPIC_SCHEMA_FILES`.

    Without a registry (``schema_registry_url`` and ``registry_client`` both
    ``None``) ids come from ``schemas_dir/catalog.json``, and a schema file that
    differs from its newest registered version is refused (:class:`CatalogError`)
    so nothing is ever written under the wrong id.

    With a registry, each current schema is registered (or, with
    ``auto_register_schemas=False``, looked up) under ``<prefix><topic>-value``
    and unknown ids met while decoding are fetched once and cached.
    ``registry_client`` replaces the client built from the URL (tests, custom auth).
    """
    if registry_client is None and schema_registry_url is None:
        codecs = {
            topic: _catalog_codec(Catalog.load(schemas_dir), topic) for topic in TOPIC_SCHEMA_FILES
        }
        return Codecs(codecs, topic_prefix)
    url = _redact_url(schema_registry_url or "<client>")
    client = registry_client or _new_registry_client(schema_registry_url or "")
    codecs = {
        topic: _registry_codec(
            client,
            url,
            topic,
            f"{topic_prefix}{subject_for(topic)}",
            schemas_dir,
            auto_register_schemas,
        )
        for topic in TOPIC_SCHEMA_FILES
    }
    return Codecs(codecs, topic_prefix)


def load_codec(
    schema_registry_url: str | None = None,
    *,
    topic_prefix: str = "",
    registry_client: RegistryClient | None = None,
) -> Codecs:
    """:func:`build_codecs` under the name the agents and clients use."""
    return build_codecs(
        schema_registry_url, topic_prefix=topic_prefix, registry_client=registry_client
    )


def _catalog_codec(catalog: Catalog, topic: str) -> TopicCodec:
    subject = catalog.subject(topic)
    current = load_schema_file(catalog.current_file(topic))
    latest = subject.latest
    if fingerprint(current) != latest.fingerprint:
        raise CatalogError(
            f"{catalog.current_file(topic)} differs from {subject.name} v{latest.version} "
            f"(id {latest.schema_id}) in {catalog.root / 'catalog.json'}: run "
            f"`python -m schemas.catalog register {topic}` before writing with it"
        )
    current_wire = wire_schema(current)
    readers: dict[int, _Reader] = {latest.schema_id: (current_wire, None)}
    for version in subject.versions[:-1]:
        path = catalog.path(version.file)
        if not path.exists():
            raise CatalogError(
                f"{path} ({subject.name} v{version.version}, id {version.schema_id}) is missing; "
                "the package must ship schemas/avro/history/*/*.avsc to read older messages"
            )
        readers[version.schema_id] = (wire_schema(load_schema_file(path)), current_wire)
    return TopicCodec(
        topic=topic, subject=subject.name, schema_id=latest.schema_id, readers=readers
    )


def _new_registry_client(url: str) -> RegistryClient:
    """The confluent client (``mock://`` URLs give its in-process mock)."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:
        raise RegistryError(
            f"a Schema Registry URL is set ({_redact_url(url)}) but its client cannot be "
            f"imported ({exc}): install `confluent-kafka[schemaregistry]`, or unset "
            "PAYSTREAM_SCHEMA_REGISTRY_URL to use schemas/catalog.json"
        ) from exc
    try:
        client: RegistryClient = SchemaRegistryClient.new_client({"url": url})
    except Exception as exc:
        raise RegistryError(f"Schema Registry URL {_redact_url(url)} is not usable: {exc}") from exc
    return client


@dataclass(frozen=True)
class RegistrySchema:
    """What ``register_schema``/``lookup_schema`` receive when confluent's own ``Schema``
    class cannot be imported (an injected client without ``confluent-kafka[schemaregistry]``)."""

    schema_str: str
    schema_type: str = "AVRO"
    references: tuple[Any, ...] = ()


@functools.cache
def _confluent_schema_class() -> Any:
    try:
        from confluent_kafka.schema_registry import Schema as ConfluentSchema
    except ImportError:
        return None
    return ConfluentSchema


def _registry_schema(schema_text: str) -> Any:
    confluent_schema = _confluent_schema_class()
    if confluent_schema is None:
        return RegistrySchema(schema_text)
    return confluent_schema(schema_text, "AVRO")


def _redact_url(url: str) -> str:
    """The URL without any ``user:password@``: error messages must not carry secrets."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _registry_codec(
    client: RegistryClient,
    url: str,
    topic: str,
    subject: str,
    schemas_dir: Path,
    auto_register: bool,
) -> TopicCodec:
    current = load_schema_file(schemas_dir / TOPIC_SCHEMA_FILES[topic])
    schema_text = json.dumps(current, separators=(",", ":"))
    try:
        if auto_register:
            schema_id = int(client.register_schema(subject, _registry_schema(schema_text)))
        else:
            found = client.lookup_schema(subject, _registry_schema(schema_text))
            schema_id = int(found.schema_id)
    except Exception as exc:
        action = "register" if auto_register else "find"
        raise RegistryError(
            f"Schema Registry {url} could not {action} the current schema of {subject}: {exc}; "
            "check the URL and credentials, and that the change is compatible with the "
            "subject's compatibility level"
        ) from exc
    current_wire = wire_schema(current)
    resolver = _RegistryResolver(client, url, subject, current, current_wire)
    return TopicCodec(
        topic=topic,
        subject=subject,
        schema_id=schema_id,
        readers={schema_id: (current_wire, None)},
        resolve_unknown=resolver,
    )


class _RegistryResolver:
    """Fetches writer schemas for ids a topic's codec has not seen, once per id.

    Runs on the consumer's thread (a blocking HTTP call, once per new id). Ids the
    registry does not have, or whose schema the current one cannot read, are
    remembered as failures so garbage does not turn into a registry request per
    message; transport errors are not remembered.
    """

    def __init__(
        self,
        client: RegistryClient,
        url: str,
        subject: str,
        reader: Schema,
        reader_wire: dict[str, Any],
    ) -> None:
        self._client = client
        self._url = url
        self._subject = subject
        self._reader = reader
        self._reader_wire = reader_wire
        self._cache: dict[int, _Reader | str] = {}

    def __call__(self, schema_id: int) -> _Reader | str:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        try:
            registered = self._client.get_schema(schema_id)
        except Exception as exc:
            reason = f"schema id {schema_id} could not be fetched from {self._url}: {exc}"
            if getattr(exc, "http_status_code", None) == 404:
                self._remember(schema_id, reason + " (no such id)")
            return reason
        result = self._resolve(schema_id, registered)
        self._remember(schema_id, result)
        return result

    def _resolve(self, schema_id: int, registered: Any) -> _Reader | str:
        schema_type = getattr(registered, "schema_type", "AVRO") or "AVRO"
        if schema_type != "AVRO" or getattr(registered, "references", None):
            return f"schema id {schema_id} is {schema_type} with references; expected plain Avro"
        try:
            writer = json.loads(registered.schema_str)
            writer_wire = wire_schema(writer)
            problems = compatibility_problems(writer, self._reader)
        except Exception as exc:
            return f"schema id {schema_id} from {self._url} is not a usable Avro schema: {exc}"
        if problems:
            return f"schema id {schema_id} cannot be read as {self._subject}: " + "; ".join(
                problems
            )
        return (writer_wire, self._reader_wire)

    def _remember(self, schema_id: int, result: _Reader | str) -> None:
        if len(self._cache) >= REGISTRY_SCHEMA_CACHE_MAX:
            del self._cache[next(iter(self._cache))]
        self._cache[schema_id] = result


# ---------------------------------------------------------------------------
# Benchmark: `python -m schemas.codec`

BENCH_REPEAT: Final[int] = 5
BENCH_NUMBER: Final[int] = 20_000


def sample_payment_request() -> Record:
    """A realistic PAYMENT request (the benchmark's and the tests' reference record)."""
    return {
        "request_id": "5b0c6a2e-8f4d-4c1a-9e37-2d6f1b8a9c01",
        "idempotency_key": "5b0c6a2e-8f4d-4c1a-9e37-2d6f1b8a9c01",
        "kind": "PAYMENT",
        "account_id": "acct-000123",
        "counterparty_id": "acct-004567",
        "payment_id": None,
        "amount_minor": 12_345,
        "currency": "EUR",
        "created_at_ms": 1_732_233_600_000,
        "expires_at_ms": None,
        "device_id": "dev-7f3a",
        "country": "DE",
        "merchant_category": "5411",
        "metadata": {"channel": "app"},
    }


def benchmark(number: int = BENCH_NUMBER, repeat: int = BENCH_REPEAT) -> dict[str, float]:
    """Best-of-``repeat`` µs per encode/decode of :func:`sample_payment_request`, with bare
    fastavro calls on the same schema as the baseline the codec's own work adds to."""
    codec = build_codecs().for_topic("payments.requests")
    record = sample_payment_request()
    data = codec.encode(record)
    schema = codec.parsed_schema

    def bare_encode() -> bytes:
        buffer = BytesIO()
        schemaless_writer(buffer, schema, record)
        return buffer.getvalue()

    def bare_decode() -> Any:
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        return schemaless_reader(buffer, schema, None)

    candidates: dict[str, Callable[[], Any]] = {
        "encode_us": lambda: codec.encode(record),
        "decode_us": lambda: codec.decode(data, 0, 0),
        "fastavro_encode_us": bare_encode,
        "fastavro_decode_us": bare_decode,
    }
    # Interleaved rounds, best round kept: this machine's speed drifts, and a fair
    # codec-versus-bare comparison needs both measured under the same conditions.
    best_s = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):
        for name, function in candidates.items():
            best_s[name] = min(best_s[name], timeit.timeit(function, number=number))
    result = {name: seconds / number * 1e6 for name, seconds in best_s.items()}
    result["bytes"] = float(len(data))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Print µs per encode/decode of a payment request on this machine."""
    del argv
    result = benchmark()
    print(
        f"payments.requests, {result['bytes']:.0f} bytes, "
        f"best of {BENCH_REPEAT} x {BENCH_NUMBER}:\n"
        f"  codec     encode {result['encode_us']:6.2f} µs   decode {result['decode_us']:6.2f} µs\n"
        f"  fastavro  encode {result['fastavro_encode_us']:6.2f} µs   "
        f"decode {result['fastavro_decode_us']:6.2f} µs   (bare calls, same schema)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
