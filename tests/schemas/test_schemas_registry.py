"""The Schema Registry path, against a fake client: ids from the registry, writer schemas
fetched once per unknown id, failures translated. Pure unit tests: no server exists here."""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import fastavro
import pytest

from schemas.catalog import SCHEMAS_DIR, TOPIC_SCHEMA_FILES
from schemas.codec import (
    REGISTRY_SCHEMA_CACHE_MAX,
    build_codecs,
    load_codec,
    sample_payment_request,
)
from schemas.errors import DecodeError, RegistryError

FIRST_REGISTRY_ID = 100


class FakeNotFound(Exception):
    """Shaped like confluent's SchemaRegistryError for an unknown id."""

    http_status_code = 404


@dataclass
class Registered:
    schema_id: int
    version: int


@dataclass
class FakeRegistry:
    """Just enough of SchemaRegistryClient: subjects, ids, and a log of calls."""

    schemas: dict[int, Any] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None

    def register_schema(self, subject_name: str, schema: Any) -> int:
        self.calls.append(("register", subject_name))
        if self.fail_with is not None:
            raise self.fail_with
        for schema_id in self.subjects.get(subject_name, []):
            if self.schemas[schema_id].schema_str == schema.schema_str:
                return schema_id
        schema_id = FIRST_REGISTRY_ID + len(self.schemas)
        self.schemas[schema_id] = schema
        self.subjects.setdefault(subject_name, []).append(schema_id)
        return schema_id

    def lookup_schema(self, subject_name: str, schema: Any) -> Registered:
        self.calls.append(("lookup", subject_name))
        for version, schema_id in enumerate(self.subjects.get(subject_name, []), start=1):
            if self.schemas[schema_id].schema_str == schema.schema_str:
                return Registered(schema_id, version)
        raise FakeNotFound(f"schema not found in {subject_name}")

    def get_schema(self, schema_id: int) -> Any:
        self.calls.append(("get", schema_id))
        if self.fail_with is not None:
            raise self.fail_with
        if schema_id not in self.schemas:
            raise FakeNotFound(f"schema {schema_id} not found")
        return self.schemas[schema_id]

    def gets(self, schema_id: int) -> int:
        return self.calls.count(("get", schema_id))


@dataclass
class StoredSchema:
    schema_str: str
    schema_type: str = "AVRO"
    references: list[Any] = field(default_factory=list)


def current_schema(topic: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS_DIR / TOPIC_SCHEMA_FILES[topic]).read_text())
    return loaded


def frame(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">BI", 0, schema_id) + body


def test_registers_every_topic_under_its_prefixed_subject() -> None:
    registry = FakeRegistry()
    codecs = build_codecs("http://registry:8081", topic_prefix="t9.", registry_client=registry)
    assert [c for c in registry.calls if c[0] == "register"] == [
        ("register", f"t9.{topic}-value") for topic in TOPIC_SCHEMA_FILES
    ]
    codec = codecs.for_topic("payments.requests")
    assert codec.subject == "t9.payments.requests-value"
    assert codec.schema_id == registry.subjects["t9.payments.requests-value"][0]
    registered = json.loads(registry.schemas[codec.schema_id].schema_str)
    assert registered == current_schema("payments.requests")  # docs and logical types kept


def test_encodes_with_the_registry_id_and_round_trips() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    data = codec.encode(sample_payment_request())
    assert struct.unpack(">I", data[1:5])[0] == codec.schema_id
    assert codec.decode(data) == sample_payment_request()
    assert registry.gets(codec.schema_id) == 0  # its own id needs no lookup


def test_without_auto_register_ids_are_looked_up() -> None:
    registry = FakeRegistry()
    build_codecs(registry_client=registry)  # someone (CI) registered them
    registry.calls.clear()
    codecs = build_codecs(registry_client=registry, auto_register_schemas=False)
    assert {c[0] for c in registry.calls} == {"lookup"}
    assert codecs.for_topic("fx.rates").schema_id == registry.subjects["fx.rates-value"][0]


def test_lookup_of_an_unregistered_schema_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="could not find the current schema of"):
        build_codecs(registry_client=FakeRegistry(), auto_register_schemas=False)


def test_registration_failure_names_the_registry_without_credentials() -> None:
    registry = FakeRegistry(fail_with=ConnectionError("connection refused"))
    with pytest.raises(RegistryError) as caught:
        build_codecs("https://svc:s3cret@registry.example:8081", registry_client=registry)
    message = str(caught.value)
    assert "https://***@registry.example:8081" in message
    assert "s3cret" not in message
    assert "payments.requests-value" in message
    assert "connection refused" in message


def test_older_writer_schema_is_fetched_once_and_resolved() -> None:
    """A producer still on an older schema (without ``metadata``) registered it as
    another version; the consumer fetches it once and reads with the current schema."""
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    old = copy.deepcopy(current_schema("payments.requests"))
    old["fields"] = [f for f in old["fields"] if f["name"] != "metadata"]
    old_id = registry.register_schema("payments.requests-value", StoredSchema(json.dumps(old)))

    record = {k: v for k, v in sample_payment_request().items() if k != "metadata"}
    body = BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), record)
    data = frame(old_id, body.getvalue())

    for offset in range(3):
        assert codec.decode(data, 0, offset) == {**record, "metadata": {}}
    assert registry.gets(old_id) == 1


def test_unknown_id_is_a_decode_error_and_is_not_fetched_again() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    for offset in (10, 11):
        with pytest.raises(DecodeError, match=rf"partition 1 offset {offset}: schema id 4242"):
            codec.decode(frame(4242, b"\x00"), 1, offset)
    assert registry.gets(4242) == 1


def test_registry_outage_is_a_decode_error_and_is_retried() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    registry.fail_with = TimeoutError("read timed out")
    for _ in range(2):
        with pytest.raises(DecodeError, match=r"could not be fetched.*read timed out"):
            codec.decode(frame(555, b"\x00"))
    assert registry.gets(555) == 2


def test_writer_schema_of_another_topic_is_refused_with_the_reason() -> None:
    registry = FakeRegistry()
    codecs = build_codecs(registry_client=registry)
    label_id = codecs.for_topic("fraud.labels").schema_id
    data = codecs.encode(
        "fraud.labels",
        {
            "label_id": "l",
            "account_id": "a",
            "request_id": "r",
            "is_fraud": False,
            "source": "REVIEW",
            "labeled_at_ms": 1,
        },
    )
    with pytest.raises(DecodeError, match=rf"schema id {label_id} cannot be read as payments"):
        codecs.decode("payments.requests", data)


def test_non_avro_schema_is_refused() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    registry.schemas[777] = StoredSchema('{"type": "object"}', schema_type="JSON")
    with pytest.raises(DecodeError, match="schema id 777 is JSON"):
        codec.decode(frame(777, b""))


def test_cache_of_fetched_ids_is_bounded() -> None:
    registry = FakeRegistry()
    codec = build_codecs(registry_client=registry).for_topic("payments.requests")
    for schema_id in range(1, REGISTRY_SCHEMA_CACHE_MAX + 2):
        with pytest.raises(DecodeError):
            codec.decode(frame(schema_id + 10_000, b""))
    with pytest.raises(DecodeError):
        codec.decode(frame(10_001, b""))  # the oldest entry was dropped: fetched again
    assert registry.gets(10_001) == 2
    assert registry.gets(10_000 + REGISTRY_SCHEMA_CACHE_MAX + 1) == 1


def test_load_codec_is_build_codecs() -> None:
    registry = FakeRegistry()
    codecs = load_codec("http://registry:8081", registry_client=registry)
    assert codecs.for_topic("payments.dlq").schema_id == registry.subjects["payments.dlq-value"][0]


def test_confluent_mock_client_through_a_mock_url() -> None:
    """The real client library, in-process (``mock://``), where its extra is installed."""
    pytest.importorskip("confluent_kafka.schema_registry", exc_type=ImportError)
    codecs = build_codecs("mock://paystream-codec-test")
    codec = codecs.for_topic("payments.requests")
    assert codec.decode(codec.encode(sample_payment_request())) == sample_payment_request()


def test_missing_registry_extra_is_a_clear_registry_error() -> None:
    try:
        import confluent_kafka.schema_registry  # noqa: F401
    except ImportError:
        with pytest.raises(RegistryError, match=r"confluent-kafka\[schemaregistry\]"):
            build_codecs("http://registry:8081")
    else:
        pytest.skip("the schema registry client is installed")
