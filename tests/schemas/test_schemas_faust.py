"""The Avro codec through faust's codec API: registered names, round trips, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.serializers import codecs as faust_codecs

from schemas.catalog import TOPIC_SCHEMA_FILES
from schemas.codec import build_codecs, sample_payment_request
from schemas.errors import DecodeError, EncodeError
from schemas.faust_codec import (
    KEY_CODEC_NAME,
    AvroCodec,
    Utf8KeyCodec,
    codec_name,
    register_faust_codecs,
)


@pytest.fixture(autouse=True)
def restore_faust_registry() -> Iterator[None]:
    """faust's codec registry is global: leave it as it was found."""
    before = dict(faust_codecs.codecs)
    yield
    faust_codecs.codecs.clear()
    faust_codecs.codecs.update(before)


def test_registers_one_codec_per_topic_and_a_key_codec() -> None:
    registered = register_faust_codecs()
    assert set(registered) == {f"avro:{t}" for t in TOPIC_SCHEMA_FILES} | {"utf8"}
    for name, codec in registered.items():
        assert faust_codecs.get_codec(name) is codec
    assert isinstance(registered["avro:payments.requests"], AvroCodec)
    assert isinstance(registered[KEY_CODEC_NAME], Utf8KeyCodec)
    assert codec_name("fx.rates") == "avro:fx.rates"


def test_round_trip_through_faust_dumps_and_loads() -> None:
    register_faust_codecs()
    record = sample_payment_request()
    data = faust_codecs.dumps("avro:payments.requests", record)
    assert data[:1] == b"\x00"
    assert faust_codecs.loads("avro:payments.requests", data) == record


def test_faust_codec_bytes_equal_the_codec_bytes() -> None:
    codecs = build_codecs(topic_prefix="t1.")
    register_faust_codecs(codecs)
    record = sample_payment_request()
    assert faust_codecs.dumps("avro:payments.requests", record) == codecs.encode(
        "t1.payments.requests", record
    )


def test_key_codec() -> None:
    register_faust_codecs()
    assert faust_codecs.dumps("utf8", "acct-ü") == "acct-ü".encode()
    assert faust_codecs.loads("utf8", "acct-ü".encode()) == "acct-ü"
    with pytest.raises(DecodeError, match="not UTF-8"):
        faust_codecs.loads("utf8", b"\xff")


def test_errors_come_through_as_schema_errors() -> None:
    register_faust_codecs()
    with pytest.raises(EncodeError, match="amount_minor"):
        faust_codecs.dumps(
            "avro:payments.requests", {**sample_payment_request(), "amount_minor": 1.5}
        )
    with pytest.raises(DecodeError, match=r"payments\.requests partition \? offset \?"):
        faust_codecs.loads("avro:payments.requests", b"garbage")


def test_chained_codec_clones_keep_the_topic() -> None:
    """faust builds ``a|b`` chains by cloning the first codec; the clone must still work."""
    register_faust_codecs()
    record = sample_payment_request()
    text = faust_codecs.dumps("avro:payments.requests|binary", record)
    assert text.isascii()
    assert faust_codecs.loads("avro:payments.requests|binary", text) == record


def test_faust_record_models_encode_by_their_fields() -> None:
    class FxRate(faust.Record, serializer="avro:fx.rates"):
        base: str
        quote: str
        rate: str
        spread_bps: int
        as_of_ms: int

    register_faust_codecs()
    rate = FxRate(base="EUR", quote="USD", rate="1.0832", spread_bps=5, as_of_ms=1)
    decoded: dict[str, Any] = faust_codecs.loads("avro:fx.rates", rate.dumps())
    assert decoded == {
        "base": "EUR",
        "quote": "USD",
        "rate": "1.0832",
        "spread_bps": 5,
        "as_of_ms": 1,
    }


def test_topic_declared_with_the_codec_name() -> None:
    register_faust_codecs()
    app = faust.App("paystream-codec-test", broker="memory://", store="memory://")
    topic = app.topic(
        "payments.requests", key_serializer="utf8", value_serializer="avro:payments.requests"
    )
    serializer = topic.value_serializer  # type: ignore[attr-defined]
    assert serializer == "avro:payments.requests"
    record = sample_payment_request()
    value = app.serializers.dumps_value(None, record, serializer=serializer)
    assert app.serializers.loads_value(None, value, serializer=serializer) == record
    key = app.serializers.dumps_key(None, "acct-1", serializer="utf8")
    assert (key, app.serializers.loads_key(None, key, serializer="utf8")) == (b"acct-1", "acct-1")
