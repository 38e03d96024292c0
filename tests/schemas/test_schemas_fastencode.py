"""The specialised encoder writes exactly fastavro's bytes, or hands the record back."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.catalog import TOPIC_SCHEMA_FILES
from schemas.errors import EncodeError
from schemas.fastencode import Unsupported, compile_encoder
from tests.schemas.test_schemas_properties import CODECS, PROPERTY_SETTINGS, strategy_for_topic

TOPICS = list(TOPIC_SCHEMA_FILES)
HOT_PATH_TOPICS = (
    "payments.decisions",
    "ledger.entries",
    "payments.legs",
    "notifications",
    "payments.dlq",
)


def fastavro_body(topic: str, record: Any) -> bytes:
    buffer = BytesIO()
    fastavro.schemaless_writer(buffer, CODECS.for_topic(topic).parsed_schema, record)
    return buffer.getvalue()


@pytest.mark.parametrize("topic", HOT_PATH_TOPICS)
def test_every_hot_path_schema_compiles(topic: str) -> None:
    assert compile_encoder(CODECS.for_topic(topic).parsed_schema) is not None


@pytest.mark.parametrize("topic", TOPICS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_same_bytes_as_fastavro(topic: str, data: st.DataObject) -> None:
    encode = compile_encoder(CODECS.for_topic(topic).parsed_schema)
    if encode is None:
        pytest.skip(f"{topic} uses a type the fast path leaves to fastavro")
    record = data.draw(strategy_for_topic(topic))
    try:
        body = encode(record)
    except Unsupported:
        return  # e.g. an integral float for a double: the codec falls back (tested below)
    assert body == fastavro_body(topic, record)


def sample_decision() -> dict[str, Any]:
    return {
        "request_id": "r-1", "idempotency_key": "k", "kind": "PAYMENT", "account_id": "a",
        "payment_id": None, "status": "APPROVED", "decline_code": None, "amount_minor": 1250,
        "currency": "EUR", "settled_amount_minor": 1250, "settled_currency": "EUR",
        "fx_rate": None, "fx_spread_bps": None, "fraud_score": 0.25, "model_version": "m",
        "reasons": ["é", "x" * 200], "duplicate_of": None, "created_at_ms": 1,
        "decided_at_ms": 2**40,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fraud_score", 1),  # an int for a double: fastavro writes it as 1.0
        ("amount_minor", True),  # a bool for a long: fastavro's decision, not ours
        ("amount_minor", 2**63),  # beyond a long
        ("kind", "NOT_A_KIND"),  # unknown enum symbol
        ("reasons", ("a", "b")),  # a tuple for an array
        ("payment_id", 5),  # neither branch of ["null", "string"]
    ],
)
def test_values_off_the_fast_path_get_fastavros_answer(field: str, value: Any) -> None:
    record = {**sample_decision(), field: value}
    encode = compile_encoder(CODECS.for_topic("payments.decisions").parsed_schema)
    assert encode is not None
    with pytest.raises(Unsupported):
        encode(record)
    assert _outcome(record, fast=True) == _outcome(record, fast=False)


def _outcome(record: dict[str, Any], fast: bool) -> bytes | str:
    """What the codec makes of ``record``: its bytes, or the error it raises."""
    codec = CODECS.for_topic("payments.decisions")
    saved = codec._fast_encode
    if not fast:
        codec._fast_encode = None
    try:
        return codec.encode(record)
    except EncodeError as exc:
        return f"EncodeError: {exc}"
    finally:
        codec._fast_encode = saved


def test_a_missing_field_is_left_to_fastavro() -> None:
    record = sample_decision()
    del record["duplicate_of"]
    encode = compile_encoder(CODECS.for_topic("payments.decisions").parsed_schema)
    assert encode is not None
    with pytest.raises(Unsupported):
        encode(record)


def test_numpy_scores_take_the_fast_path() -> None:
    np = pytest.importorskip("numpy")
    record = {**sample_decision(), "fraud_score": np.float64(0.125)}
    encode = compile_encoder(CODECS.for_topic("payments.decisions").parsed_schema)
    assert encode is not None
    assert encode(record) == fastavro_body("payments.decisions", record)
