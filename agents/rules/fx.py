"""Foreign exchange with exact arithmetic.

Rounding rule (documented in the README): a conversion is computed exactly (as a
fraction) and rounded once, to the minor unit of the target currency, always in
the house's favour -- the payer is charged rounded UP, a payer receiving money
back is credited rounded DOWN. The payee always receives exactly the amount it
asked for. The sub-minor residue stays in the FX clearing accounts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Context, Decimal
from fractions import Fraction

from agents.rules.money import exponent

# Enough digits for a 19-digit amount times a rate with 18 significant digits.
_DECIMAL = Context(prec=60)
BPS_PER_UNIT = 10_000


@dataclass(frozen=True, slots=True)
class FxQuote:
    """One unit of ``base`` buys ``rate`` units of ``quote``; the spread is charged on top."""

    base: str
    quote: str
    rate: Decimal
    spread_bps: int
    as_of_ms: int

    def inverse(self) -> FxQuote:
        return FxQuote(
            self.quote,
            self.base,
            _DECIMAL.divide(Decimal(1), self.rate),
            self.spread_bps,
            self.as_of_ms,
        )


def pair_key(base: str, quote: str) -> str:
    """Key of a rate on fx.rates and in the GlobalTable."""
    return f"{base}/{quote}"


def effective_rate(quote: FxQuote) -> Decimal:
    """Rate including the spread: what the payer pays per unit of the requested currency."""
    return _DECIMAL.multiply(
        quote.rate, _DECIMAL.divide(Decimal(BPS_PER_UNIT + quote.spread_bps), Decimal(BPS_PER_UNIT))
    )


def effective_rate_exact(quote: FxQuote, *, inverted: bool = False) -> Fraction:
    """``effective_rate`` as an exact fraction; ``inverted``: the reverse pair's rate.

    The reverse pair's rate is 1/rate, which a Decimal cannot hold exactly (1/150);
    converting at a rounded inverse and then rounding up can overcharge a unit.
    """
    rate = Fraction(quote.rate)
    if inverted:
        rate = 1 / rate
    return rate * Fraction(BPS_PER_UNIT + quote.spread_bps, BPS_PER_UNIT)


def convert_minor(
    amount_minor: int, source: str, target: str, rate: Decimal | Fraction, *, round_up: bool
) -> int:
    """Convert minor units of ``source`` to minor units of ``target`` at ``rate`` (target/source).

    Exact rational arithmetic, then one rounding step. (Decimal would round the
    product to the context precision first: 28 digits by default, too few for a
    19-digit amount times a precise rate.)
    """
    exact = (
        Fraction(amount_minor)
        * Fraction(rate)
        * Fraction(10) ** (exponent(target) - exponent(source))
    )
    return math.ceil(exact) if round_up else math.floor(exact)


def pro_rata_minor(total_minor: int, part: int, whole: int, *, round_up: bool) -> int:
    """``total * part / whole`` in integers, rounded up or down; exact for any size."""
    if whole <= 0:
        raise ValueError("whole must be positive")
    quotient, remainder = divmod(total_minor * part, whole)
    return quotient + (1 if round_up and remainder else 0)
