"""The codec without a registry: wire format, every topic's round trip, errors that name things."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import SCHEMAS_DIR, TOPIC_SCHEMA_FILES, Catalog, register, subject_for
from schemas.codec import (
    HEADER_SIZE,
    Codecs,
    TopicCodec,
    build_codecs,
    decode_key,
    encode_key,
    find_problem,
    sample_payment_request,
)
from schemas.errors import CatalogError, DecodeError, EncodeError, SchemaError
from streams.errors import PaystreamError

NOW_MS = 1_732_233_600_000

SAMPLES: dict[str, dict[str, Any]] = {
    "payments.requests": sample_payment_request(),
    "payments.decisions": {
        "request_id": "req-1",
        "idempotency_key": "idem-1",
        "kind": "PAYMENT",
        "account_id": "acct-1",
        "payment_id": "req-1",
        "duplicate_of": None,
        "status": "DECLINED",
        "decline_code": "insufficient_funds",
        "amount_minor": 1_000,
        "currency": "JPY",
        "settled_amount_minor": 612,
        "settled_currency": "EUR",
        "fx_rate": "0.00612",
        "fx_spread_bps": 25,
        "fraud_score": 0.125,
        "model_version": "gbm-2024-11-01",
        "reasons": ["balance"],
        "created_at_ms": NOW_MS,
        "decided_at_ms": NOW_MS + 3,
    },
    "payments.legs": {
        "leg_id": "req-1:credit",
        "kind": "CREDIT",
        "account_id": "acct-2",
        "counterparty_id": "acct-1",
        "request_id": "req-1",
        "payment_id": "req-1",
        "amount_minor": 1_000,
        "currency": "EUR",
        "approved": True,
        "source_topic": "payments.requests",
        "source_partition": 7,
        "source_offset": 123_456,
        "created_at_ms": NOW_MS,
    },
    "ledger.entries": {
        "transaction_id": "req-1:payment",
        "request_id": "req-1",
        "payment_id": "req-1",
        "kind": "payment",
        "posted_at_ms": NOW_MS,
        "entries": [
            {
                "entry_id": "req-1:payment:0",
                "account_id": "acct-1",
                "direction": "DEBIT",
                "amount_minor": 1_000,
                "currency": "KWD",
                "fx_rate": None,
            },
            {
                "entry_id": "req-1:payment:1",
                "account_id": "acct-2",
                "direction": "CREDIT",
                "amount_minor": 1_000,
                "currency": "KWD",
                "fx_rate": None,
            },
        ],
    },
    "notifications": {
        "notification_id": "req-1:payment.succeeded:acct-1",
        "event_type": "payment.succeeded",
        "account_id": "acct-1",
        "request_id": "req-1",
        "payment_id": "req-1",
        "amount_minor": 1_000,
        "currency": "EUR",
        "decline_code": None,
        "created_at_ms": NOW_MS,
    },
    "fx.rates": {
        "base": "EUR",
        "quote": "JPY",
        "rate": "163.2150",
        "spread_bps": 20,
        "as_of_ms": NOW_MS,
    },
    "fraud.labels": {
        "label_id": "cb-1",
        "account_id": "acct-1",
        "request_id": "req-1",
        "is_fraud": True,
        "source": "CHARGEBACK",
        "labeled_at_ms": NOW_MS,
    },
    "fraud.models": {
        "model_name": "fraud",
        "version": "gbm-2024-11-01",
        "role": "CHAMPION",
        "sha256": "ab" * 32,
        "artifact_uri": "file:///models/fraud/gbm-2024-11-01.joblib",
        "announced_at_ms": NOW_MS,
    },
    "payments.dlq": {
        "original_topic": "payments.requests",
        "original_partition": 3,
        "original_offset": 42,
        "original_key": b"acct-1",
        "original_value": b"\x7b\x7d",
        "error_class": "schema_error",
        "error": "magic byte 0x7b",
        "first_seen_ms": NOW_MS,
        "worker": "worker-1",
    },
}


@pytest.fixture(scope="module")
def codecs() -> Codecs:
    return build_codecs(topic_prefix="t123.")


@pytest.fixture
def requests_codec(codecs: Codecs) -> TopicCodec:
    return codecs.for_topic("payments.requests")


def copy_schemas(tmp_path: Path) -> Path:
    """A private copy of schemas/ (data files only) that a test may change."""
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


# ---------------------------------------------------------------------------
# Wire format and round trips


def test_every_topic_has_a_sample() -> None:
    assert set(SAMPLES) == set(TOPIC_SCHEMA_FILES)


@pytest.mark.parametrize("topic", list(TOPIC_SCHEMA_FILES))
def test_round_trip_of_every_topic(codecs: Codecs, topic: str) -> None:
    codec = codecs.for_topic(topic)
    data = codec.encode(SAMPLES[topic])
    assert codec.decode(data, partition=0, offset=0) == SAMPLES[topic]


@pytest.mark.parametrize("topic", list(TOPIC_SCHEMA_FILES))
def test_header_is_magic_byte_and_catalog_id(codecs: Codecs, topic: str) -> None:
    codec = codecs.for_topic(topic)
    data = codec.encode(SAMPLES[topic])
    latest = Catalog.load().subject(topic).latest
    assert data[0] == 0
    assert struct.unpack(">I", data[1:HEADER_SIZE])[0] == latest.schema_id == codec.schema_id
    assert codec.subject == subject_for(topic)


def test_body_is_plain_schemaless_avro(requests_codec: TopicCodec) -> None:
    """The bytes after the header are what any Avro library writes for the record."""
    from io import BytesIO

    import fastavro

    schema = json.loads((SCHEMAS_DIR / TOPIC_SCHEMA_FILES["payments.requests"]).read_text())
    expected = BytesIO()
    fastavro.schemaless_writer(
        expected, fastavro.parse_schema(schema), SAMPLES["payments.requests"]
    )
    assert requests_codec.encode(SAMPLES["payments.requests"])[HEADER_SIZE:] == expected.getvalue()


def test_timestamps_decode_as_integer_milliseconds(requests_codec: TopicCodec) -> None:
    record = requests_codec.decode(requests_codec.encode(SAMPLES["payments.requests"]))
    assert type(record["created_at_ms"]) is int
    assert type(record["amount_minor"]) is int


def test_defaults_fill_omitted_optional_fields(requests_codec: TopicCodec) -> None:
    sparse = {k: v for k, v in SAMPLES["payments.requests"].items() if k != "metadata"}
    del sparse["device_id"]
    record = requests_codec.decode(requests_codec.encode(sparse))
    assert record["metadata"] == {}
    assert record["device_id"] is None


def test_lookup_by_logical_or_prefixed_name(codecs: Codecs) -> None:
    assert codecs.for_topic("t123.payments.requests") is codecs.for_topic("payments.requests")
    assert codecs.topics == tuple(TOPIC_SCHEMA_FILES)
    data = codecs.encode("t123.fx.rates", SAMPLES["fx.rates"])
    assert codecs.decode("fx.rates", data, 1, 2) == SAMPLES["fx.rates"]


def test_unknown_topic_is_a_schema_error(codecs: Codecs) -> None:
    with pytest.raises(SchemaError, match=r"payments\.refunds.*known topics"):
        codecs.for_topic("payments.refunds")


def test_keys_are_utf8_strings() -> None:
    assert encode_key("acct-ü") == "acct-ü".encode()
    assert decode_key("acct-ü".encode(), "payments.requests") == "acct-ü"
    with pytest.raises(DecodeError, match=r"key of payments\.requests partition 4 offset 9"):
        decode_key(b"\xff\xfe", "payments.requests", 4, 9)
    with pytest.raises(DecodeError, match="no key"):
        decode_key(None, "payments.requests")


# ---------------------------------------------------------------------------
# Decode errors


def test_errors_share_one_root() -> None:
    assert issubclass(SchemaError, PaystreamError)
    for error in (CatalogError, DecodeError, EncodeError):
        assert issubclass(error, SchemaError)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (None, "tombstone"),
        (b"\x00\x00\x01", "shorter than the 5-byte"),
        (b'{"amount_minor": 1}', r"magic byte 0x7b \(looks like JSON\)"),
        (b"\x01\x00\x00\x00\x01\x00", "magic byte 0x01"),
        (b"\x00\x00\x00\x03\xe7\x00", "unknown schema id 999"),
    ],
)
def test_undecodable_header_names_topic_partition_offset(
    requests_codec: TopicCodec, data: bytes | None, reason: str
) -> None:
    with pytest.raises(DecodeError, match=rf"payments\.requests partition 5 offset 77: .*{reason}"):
        requests_codec.decode(data, partition=5, offset=77)  # type: ignore[arg-type]


def test_truncated_body(requests_codec: TopicCodec) -> None:
    data = requests_codec.encode(SAMPLES["payments.requests"])
    with pytest.raises(DecodeError, match="body does not match schema id 1") as caught:
        requests_codec.decode(data[:-4], 2, 10)
    error = caught.value
    assert (error.topic, error.partition, error.offset, error.schema_id) == (
        "payments.requests",
        2,
        10,
        1,
    )


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_a_truncated_body_is_explained_without_memory_addresses(codecs: Codecs, topic: str) -> None:
    """fastavro names its buffer object in some errors; a dead letter's reason must not
    carry an address that changes from one call to the next."""
    codec = codecs.for_topic(topic)
    data = codec.encode(SAMPLES[topic])
    reasons = set()
    for cut in range(HEADER_SIZE, len(data)):
        with contextlib.suppress(DecodeError):
            codec.decode(data[:cut], 0, 0)
            continue
        for _ in range(2):
            with pytest.raises(DecodeError) as caught:
                codec.decode(data[:cut], 0, 0)
            reasons.add((cut, caught.value.reason))
    assert reasons
    assert not [reason for _, reason in reasons if " at 0x" in reason]
    assert len({cut for cut, _ in reasons}) == len(reasons)  # the same reason every time


def test_trailing_garbage(requests_codec: TopicCodec) -> None:
    data = requests_codec.encode(SAMPLES["payments.requests"])
    with pytest.raises(DecodeError, match=r"3 byte\(s\) left over"):
        requests_codec.decode(data + b"abc")


def test_another_topics_message(codecs: Codecs) -> None:
    """A fraud label on the requests topic has the wrong id, so it is refused up front."""
    data = codecs.encode("fraud.labels", SAMPLES["fraud.labels"])
    with pytest.raises(DecodeError, match="unknown schema id 7"):
        codecs.decode("payments.requests", data)


def test_unknown_partition_and_offset_are_marked(requests_codec: TopicCodec) -> None:
    with pytest.raises(DecodeError, match=r"partition \? offset \?"):
        requests_codec.decode(b"")


# ---------------------------------------------------------------------------
# Encode errors


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"amount_minor": 12.5}, "amount_minor", "never floats"),
        ({"amount_minor": 12.0}, "amount_minor", "never floats"),
        ({"amount_minor": True}, "amount_minor", "expected an integer"),
        ({"amount_minor": "125"}, "amount_minor", "expected an integer"),
        ({"amount_minor": 2**63}, "amount_minor", "out of range for long"),
        ({"created_at_ms": 1.7e12}, "created_at_ms", "never floats"),
        ({"expires_at_ms": 1.5}, "expires_at_ms", "never floats"),
        ({"kind": "CHARGEBACK"}, "kind", "expected one of"),
        ({"currency": None}, "currency", "expected a str"),
        ({"metadata": {"channel": 1}}, "metadata['channel']", "expected a str"),
        ({"country": 49}, "country", "expected a str"),
    ],
)
def test_bad_request_names_the_field(
    requests_codec: TopicCodec, change: dict[str, Any], field: str, message: str
) -> None:
    record = {**SAMPLES["payments.requests"], **change}
    with pytest.raises(EncodeError, match=message) as caught:
        requests_codec.encode(record)
    assert caught.value.field == field
    assert caught.value.topic == "payments.requests"
    assert f"payments.requests record: field {field}" in str(caught.value)


def test_missing_required_field(requests_codec: TopicCodec) -> None:
    record = {k: v for k, v in SAMPLES["payments.requests"].items() if k != "account_id"}
    with pytest.raises(EncodeError, match="account_id: missing, and the field has no default"):
        requests_codec.encode(record)


def test_float_amount_inside_a_ledger_entry(codecs: Codecs) -> None:
    transaction = json.loads(json.dumps(SAMPLES["ledger.entries"]))
    transaction["entries"][1]["amount_minor"] = 999.99
    with pytest.raises(EncodeError, match=r"entries\[1\]\.amount_minor: 999\.99 \(float\)"):
        codecs.encode("ledger.entries", transaction)


def test_not_a_mapping(requests_codec: TopicCodec) -> None:
    with pytest.raises(EncodeError, match="record: 7 \\(int\\): expected a mapping") as caught:
        requests_codec.encode(7)  # type: ignore[arg-type]
    assert caught.value.field is None


def test_int_subclass_is_accepted(requests_codec: TopicCodec) -> None:
    """The fast integer check sends int subclasses to the full validator, which allows them."""
    from enum import IntEnum

    class Amount(IntEnum):
        TEN = 10

    record = {**SAMPLES["payments.requests"], "amount_minor": Amount.TEN}
    assert requests_codec.decode(requests_codec.encode(record))["amount_minor"] == 10


def test_find_problem_accepts_valid_records(codecs: Codecs) -> None:
    for topic, record in SAMPLES.items():
        assert find_problem(codecs.for_topic(topic).parsed_schema, record) is None


# ---------------------------------------------------------------------------
# Catalog guards at build time, and old versions


def test_changed_schema_without_registration_refuses_to_build(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    path = root / TOPIC_SCHEMA_FILES["fx.rates"]
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "source", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    with pytest.raises(CatalogError, match=r"register fx\.rates"):
        build_codecs(schemas_dir=root)


def test_message_of_an_older_version_decodes_to_the_current_shape(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    old_producer = build_codecs(schemas_dir=root).for_topic("fx.rates")
    old_message = old_producer.encode(SAMPLES["fx.rates"])

    path = root / TOPIC_SCHEMA_FILES["fx.rates"]
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "source", "type": ["null", "string"], "default": None})
    schema["fields"].append({"name": "ttl_s", "type": "long", "default": 3600})
    path.write_text(json.dumps(schema, indent=2))
    new = register("fx.rates", root)
    assert new is not None and new.version == 2

    consumer = build_codecs(schemas_dir=root).for_topic("fx.rates")
    assert consumer.known_schema_ids == tuple(sorted((old_producer.schema_id, new.schema_id)))
    assert consumer.decode(old_message) == {**SAMPLES["fx.rates"], "source": None, "ttl_s": 3600}
    current = {**SAMPLES["fx.rates"], "source": "ecb", "ttl_s": 60}
    data = consumer.encode(current)
    assert struct.unpack(">I", data[1:5])[0] == new.schema_id
    assert consumer.decode(data) == current
    with pytest.raises(DecodeError, match="unknown schema id"):
        old_producer.decode(data)


def test_missing_history_file_refuses_to_build(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    path = root / TOPIC_SCHEMA_FILES["fraud.labels"]
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "note", "type": "string", "default": ""})
    path.write_text(json.dumps(schema))
    register("fraud.labels", root)
    (root / "avro/history/fraud.labels-value/v1.avsc").unlink()
    with pytest.raises(CatalogError, match=r"v1.*is missing"):
        build_codecs(schemas_dir=root)
