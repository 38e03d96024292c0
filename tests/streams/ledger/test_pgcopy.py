"""The hand-written binary COPY fields equal what psycopg's own binary dumpers send."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.datetime import DatetimeBinaryDumper
from psycopg.types.numeric import DecimalBinaryDumper, Int8BinaryDumper

from streams.ledger import pgcopy

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def field(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def psycopg_numeric(value: str) -> bytes:
    return field(bytes(DecimalBinaryDumper(Decimal).dump(Decimal(value))))


@pytest.mark.parametrize(
    "value",
    ["1.08", "0.05", "0.00001", "123.456", "1E+5", "100000", "0", "0.000", "-2.5", "9999.9999",
     "10000", "0.0001", "1234567890.0987654321", "7"],
)  # fmt: skip
def test_numeric_matches_psycopg(value: str) -> None:
    assert pgcopy.numeric(value) == psycopg_numeric(value)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: len(d.as_tuple().digits) + abs(int(d.as_tuple().exponent)) < 200))  # fmt: skip
def test_any_decimal_matches_psycopg(value: Decimal) -> None:
    assert pgcopy.numeric(str(value)) == psycopg_numeric(str(value))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "abc", "", "1e999999999"])
def test_numeric_refuses_what_the_column_cannot_hold(value: str) -> None:
    with pytest.raises(ValueError):
        pgcopy.numeric(value)


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_timestamptz_matches_psycopg(ms: int) -> None:
    moment = EPOCH + dt.timedelta(milliseconds=ms)
    assert pgcopy.timestamptz_ms(ms) == field(DatetimeBinaryDumper(dt.datetime).dump(moment))


def test_timestamps_outside_years_1_to_9999_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        pgcopy.timestamptz_ms(253_402_300_800_000)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int8_matches_psycopg(value: int) -> None:
    assert pgcopy.int8(value) == field(bytes(Int8BinaryDumper(int).dump(value)))


def test_integers_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError):
        pgcopy.int8(2**63)
    with pytest.raises(ValueError):
        pgcopy.int4(2**31)


def test_text_is_utf8_and_refuses_nul() -> None:
    assert pgcopy.text("é") == b"\x00\x00\x00\x02\xc3\xa9"
    with pytest.raises(ValueError, match="NUL"):
        pgcopy.text("a\x00b")
