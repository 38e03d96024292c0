"""The specialised decoder returns exactly fastavro's value, or raises and lets fastavro decide."""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec as codec_module
from schemas.catalog import SCHEMAS_DIR, load_schema_file, wire_schema
from schemas.codec import HEADER_SIZE, TopicCodec, build_codecs
from schemas.errors import DecodeError
from schemas.fastdecode import Decoder, compile_decoder, decoder_source
from tests.schemas.avro_strategies import avro_values
from tests.schemas.test_schemas_properties import (
    CATALOG,
    CODECS,
    PROPERTY_SETTINGS,
    TOPICS,
    VERSIONS,
    strategy_for_topic,
)
from tests.schemas.test_schemas_registry import FakeRegistry, StoredSchema, current_schema

FEW_EXAMPLES = settings(PROPERTY_SETTINGS, max_examples=25)

LONG_EDGES = [
    0, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, 2**31 - 1, -(2**31), 1_732_233_600_000,
    2**55, -(2**55) - 1, 2**62 - 1, -(2**62), 2**62, -(2**62) - 1, 2**63 - 1, -(2**63),
]  # fmt: skip
"""One- to ten-byte varints, and each side of every length change that matters here."""


# ---------------------------------------------------------------------------
# Helpers


def same(ours: Any, theirs: Any) -> bool:
    """Equal values of the same types, dict keys in the same order: ``==`` says 1 == 1.0 ==
    True, ignores key order and -0.0 and finds NaN unequal to itself; ``repr`` does not."""
    return type(ours) is type(theirs) and repr(ours) == repr(theirs)


def fastavro_read(schema: Any, body: bytes) -> tuple[Any, int]:
    buffer = BytesIO(body)
    value = fastavro.schemaless_reader(buffer, schema, None)
    return value, buffer.tell()


def fastavro_body(schema: Any, value: Any) -> bytes:
    buffer = BytesIO()
    fastavro.schemaless_writer(buffer, schema, value)
    return buffer.getvalue()


def assert_same_as_fastavro(decode: Decoder, schema: Any, body: bytes) -> None:
    """A valid body: the fast path reads it (no fallback), and exactly as fastavro does."""
    value, end = decode(body, 0)
    expected, expected_end = fastavro_read(schema, body)
    assert same(value, expected), (value, expected)
    assert end == expected_end


def assert_raises_or_agrees(decode: Decoder, schema: Any, body: bytes) -> None:
    """Any bytes: the fast path raises (the codec then asks fastavro), or returns exactly what
    fastavro returns. It must never return a value where fastavro raises."""
    try:
        value, end = decode(body, 0)
    except Exception:
        return
    expected, expected_end = fastavro_read(schema, body)  # raising here fails the test
    assert same(value, expected), (value, expected)
    assert end == expected_end


def decoder(schema: Any) -> Decoder:
    decode = compile_decoder(schema)
    assert decode is not None
    return decode


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def raw_varint(u: int, *, length: int | None = None) -> bytes:
    """``u`` in base-128 groups, low first; ``length`` pads with continuation bytes (a
    non-canonical, overlong encoding)."""
    out = bytearray()
    while u >= 0x80 or (length is not None and len(out) < length - 1):
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def long_bytes(n: int) -> bytes:
    return raw_varint(zigzag(n))


def string_bytes(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return long_bytes(len(data)) + data


def parsed_record(*fields: tuple[str, Any], name: str = "T") -> Any:
    return fastavro.parse_schema(
        {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}
    )


# ---------------------------------------------------------------------------
# Every schema in the catalogue compiles, and reads exactly as fastavro


@pytest.mark.parametrize("topic", TOPICS)
def test_every_topic_schema_compiles(topic: str) -> None:
    assert compile_decoder(CODECS.for_topic(topic).parsed_schema) is not None


@pytest.mark.parametrize(("topic", "version"), VERSIONS)
def test_every_registered_version_compiles(topic: str, version: int) -> None:
    registered = CATALOG.subject(topic).versions[version - 1]
    assert compile_decoder(wire_schema(load_schema_file(SCHEMAS_DIR / registered.file)))


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_same_value_as_fastavro(topic: str, data: st.DataObject) -> None:
    schema = CODECS.for_topic(topic).parsed_schema
    body = fastavro_body(schema, data.draw(strategy_for_topic(topic)))
    assert_same_as_fastavro(decoder(schema), schema, body)


@pytest.mark.parametrize("topic", TOPICS)
@FEW_EXAMPLES
@given(data=st.data())
def test_truncated_bodies_raise_at_every_byte(topic: str, data: st.DataObject) -> None:
    schema = CODECS.for_topic(topic).parsed_schema
    decode = decoder(schema)
    body = fastavro_body(schema, data.draw(strategy_for_topic(topic)))
    for cut in range(len(body)):
        with pytest.raises(Exception):  # noqa: B017 - any exception sends it to fastavro
            decode(body[:cut], 0)


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_corrupt_bodies_raise_or_read_as_fastavro(topic: str, data: st.DataObject) -> None:
    schema = CODECS.for_topic(topic).parsed_schema
    body = bytearray(fastavro_body(schema, data.draw(strategy_for_topic(topic))))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255))))
    for index, value in flips:
        body[index] = value
    extra = data.draw(st.binary(max_size=4))
    assert_raises_or_agrees(decoder(schema), schema, bytes(body) + extra)


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(body=st.binary(max_size=256))
def test_random_bodies_raise_or_read_as_fastavro(topic: str, body: bytes) -> None:
    schema = CODECS.for_topic(topic).parsed_schema
    assert_raises_or_agrees(decoder(schema), schema, body)


# ---------------------------------------------------------------------------
# Every supported type, in one schema


KITCHEN_SINK = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Sink",
        "namespace": "test",
        "fields": [
            {"name": "nothing", "type": "null"},
            {"name": "flag", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "raw", "type": "bytes"},
            {"name": "s", "type": "string"},
            {"name": "small", "type": {"type": "enum", "name": "Small", "symbols": ["A", "B"]}},
            {
                "name": "big",
                "type": {"type": "enum", "name": "Big", "symbols": [f"S{i}" for i in range(70)]},
            },
            {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
            {"name": "none", "type": {"type": "fixed", "name": "NoBytes", "size": 0}},
            {
                "name": "point",
                "type": {
                    "type": "record",
                    "name": "Point",
                    "fields": [
                        {"name": "y", "type": ["null", "double"]},
                        {"name": "x", "type": "long"},
                    ],
                },
            },
            {"name": "points", "type": {"type": "array", "items": "Point"}},
            {"name": "tags", "type": {"type": "map", "values": ["null", "string", "long"]}},
            {
                "name": "nested",
                "type": {
                    "type": "array",
                    "items": {"type": "map", "values": {"type": "array", "items": "int"}},
                },
            },
            {
                "name": "choice",
                "type": [
                    "null",
                    "boolean",
                    "int",
                    "long",
                    "float",
                    "double",
                    "string",
                    "bytes",
                    "Small",
                    "Point",
                    "Hash",
                    {"type": "array", "items": "string"},
                    {"type": "map", "values": "long"},
                ],
            },
            {"name": "last", "type": ["string", "null"]},
        ],
    }
)


def values_of(parsed: Any) -> st.SearchStrategy[Any]:
    """Valid values with long and non-ASCII strings, NaNs, and edge-of-range longs."""
    text = st.text(max_size=90)  # past 63 bytes: two-byte lengths
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.sampled_from(LONG_EDGES) | st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "string": text,
        "bytes": st.binary(max_size=90),
    }

    return avro_values(parsed, primitives, text, 5)


@PROPERTY_SETTINGS
@given(value=values_of(KITCHEN_SINK))
def test_every_type_reads_as_fastavro(value: Any) -> None:
    assert_same_as_fastavro(decoder(KITCHEN_SINK), KITCHEN_SINK, fastavro_body(KITCHEN_SINK, value))


@FEW_EXAMPLES
@given(value=values_of(KITCHEN_SINK), data=st.data())
def test_every_type_truncated_or_corrupt_raises_or_reads_as_fastavro(
    value: Any, data: st.DataObject
) -> None:
    decode = decoder(KITCHEN_SINK)
    body = fastavro_body(KITCHEN_SINK, value)
    for cut in range(len(body)):
        with pytest.raises(Exception):  # noqa: B017
            decode(body[:cut], 0)
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    assert_raises_or_agrees(decode, KITCHEN_SINK, bytes(damaged))


@pytest.mark.parametrize("number", LONG_EDGES)
def test_longs_of_every_length(number: int) -> None:
    schema = parsed_record(("l", "long"), ("after", "string"))
    body = fastavro_body(schema, {"l": number, "after": "x"})
    assert_same_as_fastavro(decoder(schema), schema, body)


@pytest.mark.parametrize("text", ["", "é", "日本語", "🙂" * 16, "x" * 63, "x" * 64, "ü" * 500])
def test_unicode_and_long_strings(text: str) -> None:
    schema = parsed_record(("s", "string"), ("b", "bytes"), ("m", {"type": "map", "values": "int"}))
    record = {"s": text, "b": text.encode(), "m": {text: 1, "k": 2}}
    assert_same_as_fastavro(decoder(schema), schema, fastavro_body(schema, record))


def test_empty_arrays_and_maps() -> None:
    schema = parsed_record(
        ("a", {"type": "array", "items": "long"}), ("m", {"type": "map", "values": "string"})
    )
    assert_same_as_fastavro(decoder(schema), schema, b"\x00\x00")
    assert decoder(schema)(b"\x00\x00", 0) == ({"a": [], "m": {}}, 2)


POINT_FIELDS = [
    {"name": "y", "type": ["null", "double"]},
    {"name": "x", "type": "long"},
]


def test_named_types_used_twice_are_read_the_same_way() -> None:
    record = {
        "point": {"y": None, "x": -3},
        "points": [{"y": 1.5, "x": 2**40}, {"y": None, "x": 0}],
        "choice": {"y": float("nan"), "x": 7},  # the Point branch of the union
    }
    schema = parsed_record(
        ("point", {"type": "record", "name": "P", "fields": POINT_FIELDS}),
        ("points", {"type": "array", "items": "P"}),
        ("choice", ["null", "P"]),
    )
    assert_same_as_fastavro(decoder(schema), schema, fastavro_body(schema, record))


# ---------------------------------------------------------------------------
# Hand-built bodies: what the fastavro writer never produces, the spec allows


ARRAY_OF_LONGS = parsed_record(("a", {"type": "array", "items": "long"}), ("z", "string"))
MAP_OF_INTS = parsed_record(("m", {"type": "map", "values": "int"}), ("z", "string"))


def test_array_blocks_with_negative_counts_and_byte_sizes() -> None:
    body = (
        long_bytes(-2) + long_bytes(2) + long_bytes(1) + long_bytes(-1)  # -2 items, 2 bytes
        + long_bytes(3) + long_bytes(5) + long_bytes(300) + long_bytes(-(2**40))  # 3 items
        + long_bytes(-1) + long_bytes(99) + long_bytes(7)  # a wrong block size: ignored
        + long_bytes(0) + string_bytes("end")
    )  # fmt: skip
    assert_same_as_fastavro(decoder(ARRAY_OF_LONGS), ARRAY_OF_LONGS, body)
    assert decoder(ARRAY_OF_LONGS)(body, 0)[0] == {
        "a": [1, -1, 5, 300, -(2**40), 7],
        "z": "end",
    }


def test_map_blocks_with_negative_counts_and_repeated_keys() -> None:
    body = (
        long_bytes(-2) + long_bytes(8) + string_bytes("b") + long_bytes(1)
        + string_bytes("a") + long_bytes(2)
        + long_bytes(2) + string_bytes("c") + long_bytes(3) + string_bytes("b") + long_bytes(4)
        + long_bytes(0) + string_bytes("")
    )  # fmt: skip
    assert_same_as_fastavro(decoder(MAP_OF_INTS), MAP_OF_INTS, body)
    assert list(decoder(MAP_OF_INTS)(body, 0)[0]["m"].items()) == [("b", 4), ("a", 2), ("c", 3)]


@pytest.mark.parametrize(
    "body",
    [
        long_bytes(-(2**63)) + long_bytes(0) + long_bytes(0) + string_bytes(""),  # -count overflows
        long_bytes(2**40) + long_bytes(1) + long_bytes(0) + string_bytes(""),  # more than bytes
        long_bytes(2) + long_bytes(1) + string_bytes(""),  # a block cut short
        long_bytes(-1) + raw_varint(1, length=11) + long_bytes(5) + long_bytes(0) + b"\x00",
    ],
)
def test_impossible_blocks_raise_or_read_as_fastavro(body: bytes) -> None:
    assert_raises_or_agrees(decoder(ARRAY_OF_LONGS), ARRAY_OF_LONGS, body)


def test_an_array_of_nulls_longer_than_its_bytes_is_left_to_fastavro() -> None:
    schema = parsed_record(("a", {"type": "array", "items": "null"}))
    body = long_bytes(5) + long_bytes(0)  # five items of no bytes each
    with pytest.raises(Exception):  # noqa: B017
        decoder(schema)(body, 0)
    assert fastavro_read(schema, body) == ({"a": [None] * 5}, 2)


LONG_AND_STRING = parsed_record(("l", "long"), ("s", "string"))


@pytest.mark.parametrize(
    ("varint", "fast_path"),
    [
        (raw_varint(0, length=2), True),  # zero in two bytes: non-canonical but valid
        (raw_varint(zigzag(-5), length=9), True),
        (raw_varint(zigzag(12345), length=10), True),
        (raw_varint(2**64 - 1), True),  # ten bytes, all 64 bits
        (raw_varint(2**64), False),  # 65 bits: fastavro keeps the low 64
        (raw_varint(2**70 + 6), False),
        (raw_varint(4, length=11), False),  # eleven bytes
    ],
)
def test_overlong_varints(varint: bytes, fast_path: bool) -> None:
    body = varint + string_bytes("s")
    decode = decoder(LONG_AND_STRING)
    if fast_path:
        assert_same_as_fastavro(decode, LONG_AND_STRING, body)
    else:
        with pytest.raises(Exception):  # noqa: B017
            decode(body, 0)
        fastavro_read(LONG_AND_STRING, body)  # which reads something: the codec returns that


@pytest.mark.parametrize(
    "body",
    [
        long_bytes(-1) + b"x",  # negative length
        long_bytes(-2) + b"a",  # negative, in one byte: not a length of 1
        long_bytes(-(2**62)) + b"x",
        long_bytes(5) + b"abc",  # runs past the end
        long_bytes(100) + b"abc",  # two-byte length, past the end
        raw_varint(zigzag(2), length=3) + b"ab",  # overlong length: valid
        string_bytes(b"\xff\xfe"),  # not UTF-8
        string_bytes(b"\xed\xa0\x80"),  # an encoded surrogate
        string_bytes(b"a\xc3"),  # a character cut in two
        string_bytes(b"\xc3\xa9" * 40),  # valid, two-byte length
    ],
)
def test_bad_lengths_and_text_raise_or_read_as_fastavro(body: bytes) -> None:
    schema = parsed_record(("s", "string"), ("b", ["null", "bytes"]))
    assert_raises_or_agrees(decoder(schema), schema, body + b"\x00")
    assert_raises_or_agrees(decoder(schema), schema, body)


UNION = parsed_record(
    ("u", ["null", "string", "long", {"type": "enum", "name": "E", "symbols": ["P", "Q"]}]),
    ("after", "boolean"),
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x00\x01", None),
        (b"\x02" + string_bytes("hé") + b"\x00", "hé"),
        (b"\x04" + long_bytes(-(2**50)) + b"\x01", -(2**50)),
        (b"\x06\x02\x01", "Q"),
    ],
)
def test_union_branches_read_as_their_values(body: bytes, expected: Any) -> None:
    assert_same_as_fastavro(decoder(UNION), UNION, body)
    assert decoder(UNION)(body, 0)[0]["u"] == expected


@pytest.mark.parametrize(
    "body",
    [
        b"\x08\x00",  # index 4 of 4 branches
        b"\x01\x00\x01",  # index -1: fastavro takes the last branch
        b"\x80\x00\x00",  # index 0 in two bytes: valid, but left to fastavro
        b"\x06\x04\x00",  # enum index 2 of 2
        b"\x06\x01\x00",  # enum index -1: fastavro takes the last symbol
        b"\x06\x80\x00\x00",  # enum index 0 in two bytes
        b"\x00\x07",  # a boolean byte other than 0 or 1: fastavro says True, so do we
    ],
)
def test_odd_indexes_raise_or_read_as_fastavro(body: bytes) -> None:
    assert_raises_or_agrees(decoder(UNION), UNION, body)


def test_enum_indexes_past_one_byte() -> None:
    schema = parsed_record(
        ("e", {"type": "enum", "name": "E", "symbols": [f"S{i}" for i in range(70)]})
    )
    for index in (0, 63, 64, 69):
        assert_same_as_fastavro(decoder(schema), schema, long_bytes(index))
    assert_raises_or_agrees(decoder(schema), schema, long_bytes(70))


# ---------------------------------------------------------------------------
# What it leaves to fastavro


RECURSIVE = {
    "type": "record",
    "name": "Node",
    "fields": [{"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"]}],
}


@pytest.mark.parametrize(
    "schema",
    [
        fastavro.parse_schema(RECURSIVE),
        parsed_record(("t", {"type": "long", "logicalType": "timestamp-millis"})),
        parsed_record(
            ("d", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2})
        ),
        parsed_record(("u", ["null", {"type": "string", "logicalType": "uuid"}])),
        {"type": "record", "name": "Unparsed", "fields": [{"name": "a", "type": "long"}]},
        fastavro.parse_schema("long"),
    ],
    ids=["recursive", "timestamp", "decimal", "uuid", "unparsed", "not-a-record"],
)
def test_unsupported_schemas_compile_to_none(schema: Any) -> None:
    assert compile_decoder(schema) is None
    assert decoder_source(schema) is None


def test_schemas_too_deep_for_python_compile_to_none_or_read_as_fastavro() -> None:
    items: Any = "long"
    for _ in range(40):
        items = {"type": "array", "items": items}
    schema = parsed_record(("deep", items))
    decode = compile_decoder(schema)
    if decode is not None:
        assert_same_as_fastavro(decode, schema, b"\x02" * 40 + b"\x04" + b"\x00" * 40)


# ---------------------------------------------------------------------------
# The codec: the fast path when it reads the record, fastavro's answer (or error) otherwise


LEDGER_RECORD: dict[str, Any] = {
    "transaction_id": "req-1:payment",
    "request_id": "req-1",
    "payment_id": "req-1",
    "kind": "payment",
    "posted_at_ms": 1_732_233_600_000,
    "entries": [
        {
            "entry_id": f"req-1:payment:{i}",
            "account_id": f"acct-{i}",
            "direction": "DEBIT" if i == 0 else "CREDIT",
            "amount_minor": 1_000,
            "currency": "KWD",
            "fx_rate": None,
        }
        for i in range(2)
    ],
}


def test_decodes_from_an_offset_and_reports_the_end() -> None:
    schema = CODECS.for_topic("ledger.entries").parsed_schema
    body = fastavro_body(schema, LEDGER_RECORD)
    value, end = decoder(schema)(b"\x00\x00\x00\x00\x04" + body + b"tail", HEADER_SIZE)
    assert value == LEDGER_RECORD
    assert end == HEADER_SIZE + len(body)


REQUEST_RECORD = {
    **{k: v for k, v in codec_module.sample_payment_request().items() if k != "metadata"},
    "metadata": {},
}


@contextmanager
def fast_path(codec: TopicCodec, enabled: bool) -> Iterator[None]:
    saved = codec._fast_decoders
    if not enabled:
        codec._fast_decoders = {}
    try:
        yield
    finally:
        codec._fast_decoders = saved


def _outcome(data: bytes, fast: bool, topic: str = "ledger.entries") -> str:
    """What the codec makes of ``data``: the record (repr: types and key order count), or
    the error it raises, with its fields."""
    codec = CODECS.for_topic(topic)
    with fast_path(codec, fast):
        try:
            return repr(codec.decode(data, 3, 7))
        except DecodeError as exc:
            return f"DecodeError: {exc} {exc.reason!r} {exc.schema_id} {exc.partition} {exc.offset}"


def ledger_message(**changes: Any) -> bytearray:
    return bytearray(CODECS.encode("ledger.entries", {**LEDGER_RECORD, **changes}))


def corrupt_ledger_messages() -> Iterator[tuple[str, bytes]]:
    message = ledger_message()
    for cut in (HEADER_SIZE, HEADER_SIZE + 1, 20, len(message) // 2, len(message) - 1):
        yield f"cut at {cut}", bytes(message[:cut])
    yield "left over", bytes(message) + b"\x00\x00"
    start = HEADER_SIZE + 1
    bad_utf8 = message.copy()
    bad_utf8[start] = 0xFF  # first byte of transaction_id
    yield "bad UTF-8", bytes(bad_utf8)
    union_at = start + len("req-1:payment") + 1 + len("req-1")
    for byte in (0x08, 0x01, 0x81):  # past the branches; -1 (fastavro: the last one); 2 bytes
        bad_union = message.copy()
        bad_union[union_at] = byte
        yield f"union index byte 0x{byte:02x}", bytes(bad_union)
    negative_length = message.copy()
    negative_length[HEADER_SIZE] = 0x03
    yield "negative length", bytes(negative_length)


@pytest.mark.parametrize(("name", "data"), list(corrupt_ledger_messages()))
def test_corrupt_ledger_messages_get_the_same_answer_as_before(name: str, data: bytes) -> None:
    assert _outcome(data, fast=True) == _outcome(data, fast=False)


def test_a_truncated_ledger_message_keeps_its_error_text() -> None:
    data = bytes(ledger_message()[:-3])
    schema_id = CODECS.for_topic("ledger.entries").schema_id
    outcome = _outcome(data, fast=True)
    assert outcome == _outcome(data, fast=False)
    assert outcome.startswith(
        f"DecodeError: cannot decode ledger.entries partition 3 offset 7: body does not "
        f"match schema id {schema_id} ("
    )


def test_left_over_bytes_keep_their_error_text() -> None:
    codec = CODECS.for_topic("ledger.entries")
    with pytest.raises(DecodeError, match=r"3 byte\(s\) left over after a schema id \d+ record"):
        codec.decode(bytes(ledger_message()) + b"abc")


@pytest.mark.parametrize("topic", TOPICS)
@FEW_EXAMPLES
@given(data=st.data())
def test_damaged_messages_get_the_same_answer_as_before(topic: str, data: st.DataObject) -> None:
    message = bytearray(CODECS.encode(topic, data.draw(strategy_for_topic(topic))))
    cut = data.draw(st.integers(0, len(message) + 2))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(message) - 1), st.integers(0, 255))))
    for index, value in flips:
        message[index] = value
    damaged = bytes(message[:cut]) + b"\x00" * max(0, cut - len(message))
    assert _outcome(damaged, fast=True, topic=topic) == _outcome(damaged, fast=False, topic=topic)


def test_valid_messages_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fastavro(*args: Any) -> Any:
        raise AssertionError("fastavro was asked")

    monkeypatch.setattr(codec_module, "schemaless_reader", no_fastavro)
    codec = CODECS.for_topic("ledger.entries")
    record = codec.decode(bytes(ledger_message()))
    assert same(record, fastavro_read(codec.parsed_schema, bytes(ledger_message())[5:])[0])


def test_bytearray_values_are_read_by_fastavro() -> None:
    codec = CODECS.for_topic("ledger.entries")
    assert codec.decode(ledger_message()) == LEDGER_RECORD  # type: ignore[arg-type]


def test_every_catalogue_id_has_its_decoder() -> None:
    for topic in TOPICS:
        codec = CODECS.for_topic(topic)
        assert codec._fast_decoders.keys() == set(codec.known_schema_ids)
        assert codec._fast_decoders[codec.schema_id] is not None


def test_registry_writer_schemas_get_a_decoder_when_not_resolved() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    same_schema = json.dumps(current_schema("payments.requests"))
    twin_id = registry.register_schema("elsewhere-value", StoredSchema(same_schema))
    older = copy.deepcopy(current_schema("payments.requests"))
    older["fields"] = [f for f in older["fields"] if f["name"] != "metadata"]
    older_id = registry.register_schema("payments.requests-value", StoredSchema(json.dumps(older)))
    record = codec.decode(codec.encode(REQUEST_RECORD))
    body = codec.encode(REQUEST_RECORD)[HEADER_SIZE:]
    old_body = fastavro_body(fastavro.parse_schema(older), REQUEST_RECORD)

    for _ in range(2):
        assert codec.decode(struct.pack(">BI", 0, twin_id) + body) == record
        assert codec.decode(struct.pack(">BI", 0, older_id) + old_body) == REQUEST_RECORD
    assert codec._fast_decoders[twin_id] is not None  # same schema: fastavro ignores the reader
    assert codec._fast_decoders[older_id] is None  # resolved by fastavro
    assert registry.gets(twin_id) == registry.gets(older_id) == 1
