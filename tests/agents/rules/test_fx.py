"""FX: exact conversion, one rounding step in the house's favour, exact pro rata."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agents.rules.fx import (
    FxQuote,
    convert_minor,
    effective_rate,
    effective_rate_exact,
    pair_key,
    pro_rata_minor,
)
from agents.rules.money import exponent

MAX = 2**63 - 1


def exact_minor(amount_minor: int, source: str, target: str, rate: Decimal | Fraction) -> Fraction:
    """The unrounded conversion, by hand: minor -> major, times rate, -> target minor."""
    return (
        Fraction(amount_minor)
        * Fraction(rate)
        * Fraction(10) ** (exponent(target) - exponent(source))
    )


def test_pair_key() -> None:
    assert pair_key("JPY", "EUR") == "JPY/EUR"


def test_effective_rate_adds_the_spread() -> None:
    quote = FxQuote("EUR", "USD", Decimal("1.1"), 25, 0)
    assert effective_rate(quote) == Decimal("1.1") * Decimal("1.0025") == Decimal("1.10275")
    assert effective_rate(FxQuote("EUR", "USD", Decimal("1.1"), 0, 0)) == Decimal("1.1")


def test_effective_rate_exact() -> None:
    quote = FxQuote("EUR", "JPY", Decimal("150"), 50, 7)
    assert effective_rate_exact(quote) == Fraction(150) * Fraction(10050, 10000)
    # The inverse pair's rate without rounding 1/150 to a decimal.
    assert effective_rate_exact(quote, inverted=True) == Fraction(1, 150) * Fraction(10050, 10000)


def test_inverse_quote() -> None:
    quote = FxQuote("EUR", "KWD", Decimal("0.5"), 30, 123)
    inverse = quote.inverse()
    assert (inverse.base, inverse.quote) == ("KWD", "EUR")
    assert inverse.rate == Decimal(2)
    assert (inverse.spread_bps, inverse.as_of_ms) == (30, 123)


@pytest.mark.parametrize(
    ("amount", "source", "target", "rate", "up", "down"),
    [
        # 1000 JPY at 0.00615 EUR/JPY = 6.15 EUR exactly
        (1000, "JPY", "EUR", "0.00615", 615, 615),
        # 1001 JPY = 6.15615 EUR = 615.615 cents
        (1001, "JPY", "EUR", "0.00615", 616, 615),
        # 0.01 EUR at 0.3312 KWD/EUR = 0.003312 KWD = 3.312 fils
        (1, "EUR", "KWD", "0.3312", 4, 3),
        # 0.001 KWD at 480.5 JPY/KWD = 0.4805 JPY
        (1, "KWD", "JPY", "480.5", 1, 0),
        # 2 KWD at 480.5 = 961 JPY exactly
        (2000, "KWD", "JPY", "480.5", 961, 961),
        # 1 JPY at 162.7 per EUR inverse is not a decimal: use the fraction directly
        (0, "EUR", "JPY", "162.7", 0, 0),
        (MAX, "JPY", "JPY", "1", MAX, MAX),
    ],
)
def test_convert_minor_examples(
    amount: int, source: str, target: str, rate: str, up: int, down: int
) -> None:
    assert convert_minor(amount, source, target, Decimal(rate), round_up=True) == up
    assert convert_minor(amount, source, target, Decimal(rate), round_up=False) == down


def test_convert_minor_is_exact_for_large_amounts() -> None:
    # BUG (fixed): the product was rescaled in Python's default 28-digit context, which
    # rounded 10**18 + 1e-11 to 10**18 before the "round up": the payer paid one unit less.
    rate = Decimal("1.00000000000000000000000000001")
    assert convert_minor(10**18, "EUR", "USD", rate, round_up=True) == 10**18 + 1
    assert convert_minor(10**18, "EUR", "USD", rate, round_up=False) == 10**18
    rate = Decimal("1.0861586250001")  # realistic rate with spread, near-max amount
    amount = 10**18
    expected = exact_minor(amount, "EUR", "USD", rate)
    assert convert_minor(amount, "EUR", "USD", rate, round_up=True) == math.ceil(expected)


def test_convert_minor_with_an_exact_inverse_rate_does_not_overcharge() -> None:
    # 150 JPY at EUR/JPY = 150 is exactly 1 EUR: 100 cents, not 101.
    rate = effective_rate_exact(FxQuote("EUR", "JPY", Decimal(150), 0, 0), inverted=True)
    assert convert_minor(150, "JPY", "EUR", rate, round_up=True) == 100
    assert convert_minor(150 * 10**15, "JPY", "EUR", rate, round_up=True) == 100 * 10**15


def test_convert_minor_returns_int() -> None:
    assert type(convert_minor(1001, "JPY", "EUR", Decimal("0.00615"), round_up=True)) is int


currencies = st.sampled_from(["JPY", "EUR", "KWD", "USD", "BHD", "KRW"])
amounts = st.integers(min_value=0, max_value=MAX)
decimal_rates = st.builds(
    lambda mantissa, exp: Decimal(mantissa).scaleb(exp),
    st.integers(min_value=1, max_value=10**18),
    st.integers(min_value=-22, max_value=4),
)


@given(amounts, currencies, currencies, decimal_rates)
@example(10**18, "EUR", "USD", Decimal("1.00000000000000000000000000001"))
@example(MAX, "JPY", "KWD", Decimal("0.002081234567890123"))
def test_convert_minor_rounds_once_in_the_house_favour(
    amount: int, source: str, target: str, rate: Decimal
) -> None:
    exact = exact_minor(amount, source, target, rate)
    up = convert_minor(amount, source, target, rate, round_up=True)
    down = convert_minor(amount, source, target, rate, round_up=False)
    assert up == math.ceil(exact)
    assert down == math.floor(exact)
    assert down <= exact <= up
    assert up - down == (0 if exact.denominator == 1 else 1)


@given(
    amounts,
    currencies,
    currencies,
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=500),
)
def test_inverse_conversion_is_exact(
    amount: int, source: str, target: str, rate_micros: int, spread_bps: int
) -> None:
    """Paying ``source`` from ``target`` with only the ``target/source`` pair quoted."""
    rate = Decimal(rate_micros).scaleb(-6)
    quote = FxQuote(target, source, rate, spread_bps, 0)
    charged = convert_minor(
        amount, source, target, effective_rate_exact(quote, inverted=True), round_up=True
    )
    exact = (
        Fraction(amount)
        * Fraction(10) ** (exponent(target) - exponent(source))
        * Fraction(10_000 + spread_bps, 10_000)
        / Fraction(rate)
    )
    assert charged == math.ceil(exact)


@given(amounts, currencies, currencies, decimal_rates, st.integers(min_value=0, max_value=MAX))
def test_convert_minor_is_monotonic(
    amount: int, source: str, target: str, rate: Decimal, other: int
) -> None:
    low, high = sorted((amount, other))
    for round_up in (True, False):
        assert convert_minor(low, source, target, rate, round_up=round_up) <= convert_minor(
            high, source, target, rate, round_up=round_up
        )


# -- pro rata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "part", "whole", "up", "down"),
    [
        (101, 50, 100, 51, 50),  # 50.5
        (100, 50, 100, 50, 50),
        (101, 100, 100, 101, 101),
        (7, 1, 3, 3, 2),
        (0, 5, 10, 0, 0),
        (MAX, MAX, MAX, MAX, MAX),
        (MAX, 1, MAX, 1, 1),
        (MAX, MAX - 1, MAX, MAX - 1, MAX - 1),
    ],
)
def test_pro_rata_examples(total: int, part: int, whole: int, up: int, down: int) -> None:
    assert pro_rata_minor(total, part, whole, round_up=True) == up
    assert pro_rata_minor(total, part, whole, round_up=False) == down


@pytest.mark.parametrize("whole", [0, -1])
def test_pro_rata_needs_a_positive_whole(whole: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        pro_rata_minor(10, 1, whole, round_up=False)


@st.composite
def pro_rata_cases(draw: st.DrawFn) -> tuple[int, int, int]:
    whole = draw(st.integers(min_value=1, max_value=MAX))
    part = draw(st.integers(min_value=0, max_value=whole))
    total = draw(st.integers(min_value=0, max_value=MAX))
    return total, part, whole


@given(pro_rata_cases())
def test_pro_rata_is_exact(case: tuple[int, int, int]) -> None:
    total, part, whole = case
    exact = Fraction(total * part, whole)
    assert pro_rata_minor(total, part, whole, round_up=True) == math.ceil(exact)
    assert pro_rata_minor(total, part, whole, round_up=False) == math.floor(exact)
    assert 0 <= pro_rata_minor(total, part, whole, round_up=True) <= total


@given(
    st.integers(min_value=0, max_value=MAX),
    st.lists(st.integers(min_value=1, max_value=10**15), min_size=1, max_size=8),
)
def test_pro_rata_down_then_remainder_sums_to_total(total: int, parts: list[int]) -> None:
    """The refund rule: each partial refund credits its share rounded down, the last one
    credits what is left, so the whole comes back exactly and never more."""
    whole = sum(parts)
    credited = [pro_rata_minor(total, part, whole, round_up=False) for part in parts[:-1]]
    last = total - sum(credited)
    assert last >= pro_rata_minor(total, parts[-1], whole, round_up=False) >= 0
    assert sum(credited) + last == total
