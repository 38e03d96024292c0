"""Property tests: random valid records round-trip on every topic; random bytes only ever
raise SchemaError; every registered version's records read with the current schema."""

from __future__ import annotations

import contextlib
import struct
from io import BytesIO
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalog import SCHEMAS_DIR, TOPIC_SCHEMA_FILES, Catalog, load_schema_file, wire_schema
from schemas.codec import Codecs, TopicCodec, build_codecs, sample_payment_request
from schemas.errors import EncodeError, SchemaError
from tests.schemas.avro_strategies import avro_values

CODECS: Codecs = build_codecs()
CATALOG = Catalog.load()
TOPICS = list(TOPIC_SCHEMA_FILES)
TEXT = st.text(max_size=24)
COLLECTION_SIZE_MAX = 4

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def records_of(parsed: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a fastavro-parsed schema (integers in range, no NaN)."""
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": TEXT,
        "bytes": st.binary(max_size=24),
    }
    return avro_values(parsed, primitives, TEXT, COLLECTION_SIZE_MAX)


def strategy_for_topic(topic: str) -> st.SearchStrategy[Any]:
    return records_of(CODECS.for_topic(topic).parsed_schema)


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_random_valid_records_round_trip(topic: str, data: st.DataObject) -> None:
    codec = CODECS.for_topic(topic)
    record = data.draw(strategy_for_topic(topic))
    assert codec.decode(codec.encode(record), 0, 0) == record


@PROPERTY_SETTINGS
@given(amount=st.floats(allow_nan=True) | st.booleans() | st.decimals(allow_nan=False))
def test_non_integer_amounts_are_always_refused(amount: Any) -> None:
    record = {**sample_payment_request(), "amount_minor": amount}
    with pytest.raises(EncodeError) as caught:
        CODECS.encode("payments.requests", record)
    assert caught.value.field == "amount_minor"


# ---------------------------------------------------------------------------
# Decoding hostile bytes


def assert_only_schema_errors(codec: TopicCodec, data: bytes) -> None:
    with contextlib.suppress(SchemaError):
        codec.decode(data, 0, 0)


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.binary(max_size=256))
def test_random_bytes_raise_only_schema_errors(topic: str, data: bytes) -> None:
    assert_only_schema_errors(CODECS.for_topic(topic), data)


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(body=st.binary(max_size=256))
def test_random_bodies_behind_a_valid_header_raise_only_schema_errors(
    topic: str, body: bytes
) -> None:
    codec = CODECS.for_topic(topic)
    assert_only_schema_errors(codec, struct.pack(">BI", 0, codec.schema_id) + body)


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_damaged_valid_messages_raise_only_schema_errors(topic: str, data: st.DataObject) -> None:
    codec = CODECS.for_topic(topic)
    message = bytearray(codec.encode(data.draw(strategy_for_topic(topic))))
    cut = data.draw(st.integers(0, len(message)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(message) - 1), st.integers(0, 255))))
    for index, value in flips:
        message[index] = value
    assert_only_schema_errors(codec, bytes(message[:cut]))
    assert_only_schema_errors(codec, bytes(message))


# ---------------------------------------------------------------------------
# Every registered version is readable by the current schema


VERSIONS = [(t, v.version) for t in TOPICS for v in CATALOG.subject(t).versions]


@pytest.mark.parametrize(("topic", "version"), VERSIONS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_records_of_every_registered_version_decode_with_the_current_schema(
    topic: str, version: int, data: st.DataObject
) -> None:
    """Writes a random record with version ``version``'s schema, framed with its catalog
    id, and decodes it with the current codec: fields the old version lacks get their
    defaults, and the fields both have come through unchanged."""
    registered = CATALOG.subject(topic).versions[version - 1]
    writer = wire_schema(load_schema_file(SCHEMAS_DIR / registered.file))
    record = data.draw(records_of(writer))
    body = BytesIO()
    fastavro.schemaless_writer(body, writer, record)
    message = struct.pack(">BI", 0, registered.schema_id) + body.getvalue()

    decoded = CODECS.for_topic(topic).decode(message, 0, 0)
    reader_fields = {f["name"]: f for f in CODECS.for_topic(topic).parsed_schema["fields"]}
    for name, reader_field in reader_fields.items():
        if name in record:
            assert decoded[name] == record[name]
        else:
            assert decoded[name] == reader_field["default"]
