"""Money: integer minor units, exact parsing, 0/2/3-decimal currencies."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.rules.money import (
    AMOUNT_MINOR_MAX,
    CURRENCY_EXPONENTS,
    MoneyError,
    exponent,
    format_money,
    to_major,
    to_minor,
)

MAX = 2**63 - 1


def test_amount_max_is_avro_long() -> None:
    assert AMOUNT_MINOR_MAX == MAX


@pytest.mark.parametrize(("currency", "places"), [("JPY", 0), ("EUR", 2), ("USD", 2), ("KWD", 3)])
def test_exponent(currency: str, places: int) -> None:
    assert exponent(currency) == places


def test_exponent_unknown_currency() -> None:
    with pytest.raises(MoneyError, match="XXX"):
        exponent("XXX")


def test_exponent_table_only_has_0_2_3() -> None:
    assert set(CURRENCY_EXPONENTS.values()) == {0, 2, 3}
    assert all(len(code) == 3 and code.isupper() for code in CURRENCY_EXPONENTS)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.34", "EUR", 1234),
        ("12.3", "EUR", 1230),
        ("12.340", "EUR", 1234),  # trailing zeros are not precision
        ("0.01", "EUR", 1),
        ("0", "EUR", 0),
        ("-1.50", "EUR", -150),
        (5, "EUR", 500),
        (Decimal("7.25"), "USD", 725),
        ("100", "JPY", 100),
        ("100.0", "JPY", 100),
        ("1.234", "KWD", 1234),
        ("0.001", "KWD", 1),
        ("1E+2", "EUR", 10000),
        ("92233720368547758.07", "EUR", MAX),
        ("9223372036854775807", "JPY", MAX),
        ("9223372036854775.807", "KWD", MAX),
        ("-92233720368547758.07", "EUR", -MAX),
    ],
)
def test_to_minor(amount: str | int | Decimal, currency: str, minor: int) -> None:
    result = to_minor(amount, currency)
    assert result == minor
    assert type(result) is int


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("12.345", "EUR"),  # a payments API must not guess 1234 or 1235
        ("100.5", "JPY"),
        ("1.2345", "KWD"),
        ("0.001", "EUR"),
        ("92233720368547758.08", "EUR"),  # one minor unit above the largest long
        ("9223372036854775808", "JPY"),
        ("9223372036854775.808", "KWD"),
        ("-92233720368547758.08", "EUR"),
        ("abc", "EUR"),
        ("", "EUR"),
        ("NaN", "EUR"),
        ("Infinity", "EUR"),
        ("-Infinity", "EUR"),
        ("1", "XXX"),
    ],
)
def test_to_minor_refuses(amount: str, currency: str) -> None:
    with pytest.raises(MoneyError):
        to_minor(amount, currency)


def test_to_minor_refuses_lost_precision_beyond_28_digits() -> None:
    # BUG (fixed): scaleb ran in the default 28-digit context and rounded the
    # 29-digit value to an integral one, so a sub-minor tail was silently dropped.
    with pytest.raises(MoneyError):
        to_minor("92233720368547758.070000000001", "EUR")
    with pytest.raises(MoneyError):
        to_minor("1.0000000000000000000000000000001", "JPY")


@pytest.mark.parametrize("amount", ["1e999999999", "-1e999999999", "1e-999999999"])
def test_to_minor_extreme_exponents_are_money_errors(amount: str) -> None:
    # BUG (fixed): decimal.Overflow (not a MoneyError/ValueError) escaped for a huge exponent.
    with pytest.raises(MoneyError):
        to_minor(amount, "EUR")


def test_to_minor_accepts_long_trailing_zeros() -> None:
    assert to_minor("1." + "0" * 60, "EUR") == 100


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1234, "EUR", "12.34 EUR"),
        (1230, "EUR", "12.30 EUR"),
        (5, "EUR", "0.05 EUR"),
        (0, "EUR", "0.00 EUR"),
        (-150, "EUR", "-1.50 EUR"),
        (100, "JPY", "100 JPY"),
        (5, "KWD", "0.005 KWD"),
        (1234, "KWD", "1.234 KWD"),
        (MAX, "EUR", "92233720368547758.07 EUR"),
    ],
)
def test_format_money(minor: int, currency: str, text: str) -> None:
    assert format_money(minor, currency) == text


def test_to_major_is_exact() -> None:
    assert to_major(1234, "EUR") == Decimal("12.34")
    assert to_major(1, "KWD") == Decimal("0.001")
    assert to_major(MAX, "JPY") == Decimal(MAX)


currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
minor_amounts = st.integers(min_value=-MAX, max_value=MAX)


@given(minor_amounts, currencies)
def test_round_trip_major(minor: int, currency: str) -> None:
    assert to_minor(to_major(minor, currency), currency) == minor


@given(minor_amounts, currencies)
def test_round_trip_formatted(minor: int, currency: str) -> None:
    text, code = format_money(minor, currency).split(" ")
    assert code == currency
    assert to_minor(text, currency) == minor


@given(minor_amounts, currencies, st.integers(min_value=1, max_value=9))
def test_an_extra_nonzero_digit_is_refused(minor: int, currency: str, digit: int) -> None:
    places = exponent(currency)
    text = f"{to_major(minor, currency):.{places}f}"
    if places == 0:
        text += "."
    with pytest.raises(MoneyError):
        to_minor(f"{text}{digit}", currency)


@given(st.integers(min_value=MAX + 1, max_value=2**80), currencies)
def test_above_long_is_refused(minor: int, currency: str) -> None:
    with pytest.raises(MoneyError):
        to_minor(Decimal(minor).scaleb(-exponent(currency)), currency)


@pytest.mark.timeout(5)
def test_to_minor_huge_exponent_is_refused_quickly() -> None:
    # BUG (fixed): int() of a million-digit value ran ~50 s before the range check.
    with pytest.raises(MoneyError, match="largest"):
        to_minor("1e999990", "EUR")
