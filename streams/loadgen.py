"""A seeded generator of realistic request mixes for the demo, tests and benchmarks.

Accounts are topped up first; then payments, authorizations with captures and
voids, partial refunds, payouts, a share of cross-currency payments, duplicates
(producer retries, reused idempotency keys) and requests that must be declined.
Keys follow a skew (a few busy accounts, a long tail), as real traffic does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents.rules.fx import pair_key
from agents.rules.money import exponent
from agents.rules.records import Request
from streams.client import new_request

DEFAULT_CURRENCIES = ("EUR", "USD", "JPY", "KWD")
# Major units per 1 EUR, for generating rates and sensible amounts.
EUR_PRICE = {"EUR": Decimal("1"), "USD": Decimal("1.0842"), "JPY": Decimal("162.37"),
             "KWD": Decimal("0.3331"), "GBP": Decimal("0.8561")}  # fmt: skip


@dataclass(frozen=True)
class LoadSpec:
    requests: int = 5000
    accounts: int = 500
    currencies: tuple[str, ...] = DEFAULT_CURRENCIES
    seed: int = 7
    start_ms: int = 1_790_000_000_000
    step_ms: int = 5


def fx_rates(currencies: tuple[str, ...], as_of_ms: int) -> list[dict[str, Any]]:
    """Rates for every ordered pair, as fx.rates records."""
    records = []
    for base in currencies:
        for quote in currencies:
            if base == quote:
                continue
            rate = (EUR_PRICE[quote] / EUR_PRICE[base]).quantize(Decimal("0.000001"))
            records.append(
                {"base": base, "quote": quote, "rate": str(rate), "spread_bps": 25,
                 "as_of_ms": as_of_ms, "key": pair_key(base, quote)}
            )  # fmt: skip
    return records


def _amount(rng: random.Random, currency: str, eur_major: float) -> int:
    """A log-normal-ish amount around ``eur_major`` EUR, in minor units of currency."""
    major = Decimal(str(round(rng.lognormvariate(0, 0.8) * eur_major, 2))) * EUR_PRICE[currency]
    return max(1, int(major.scaleb(exponent(currency))))


def generate(spec: LoadSpec) -> Iterator[Request]:
    """Yield ``spec.requests`` requests in submission order (deterministic for a seed)."""
    rng = random.Random(spec.seed)
    accounts = [f"acct-{i:07d}" for i in range(spec.accounts)]
    home = {a: spec.currencies[i % len(spec.currencies)] for i, a in enumerate(accounts)}
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(accounts))]
    clock = spec.start_ms
    made = 0
    open_auths: list[tuple[str, str, int, str]] = []  # payer, payment_id, amount, currency
    captured: list[tuple[str, str, int, str]] = []
    sent: list[Request] = []

    def tick() -> int:
        nonlocal clock
        clock += spec.step_ms
        return clock

    for account in accounts:
        if made >= spec.requests:
            return
        currency = home[account]
        yield new_request("TOPUP", account, _amount(rng, currency, 500), currency,
                          counterparty_id="bank-1", created_at_ms=tick())  # fmt: skip
        made += 1
    while made < spec.requests:
        payer = rng.choices(accounts, weights)[0]
        payee = rng.choice(accounts)
        if payee == payer:
            continue
        currency = home[payer] if rng.random() < 0.85 else rng.choice(spec.currencies)
        roll = rng.random()
        request: Request
        if roll < 0.45:
            request = new_request("PAYMENT", payer, _amount(rng, currency, 40), currency,
                                  counterparty_id=payee, created_at_ms=tick())  # fmt: skip
            captured.append((payer, request["request_id"], request["amount_minor"], currency))
        elif roll < 0.60:
            request = new_request("AUTHORIZE", payer, _amount(rng, currency, 60), currency,
                                  counterparty_id=payee, created_at_ms=tick())  # fmt: skip
            open_auths.append((payer, request["request_id"], request["amount_minor"], currency))
        elif roll < 0.72 and open_auths:
            who, pid, amount, cur = open_auths.pop(rng.randrange(len(open_auths)))
            if rng.random() < 0.8:
                part = amount if rng.random() < 0.6 else max(1, amount // 2)
                request = new_request(
                    "CAPTURE", who, part, cur, payment_id=pid, created_at_ms=tick()
                )
                captured.append((who, pid, part, cur))
            else:
                request = new_request("VOID", who, 0, cur, payment_id=pid, created_at_ms=tick())
        elif roll < 0.80 and captured:
            who, pid, amount, cur = rng.choice(captured)
            request = new_request("REFUND", who, max(1, amount // rng.choice((1, 2, 3))), cur,
                                  payment_id=pid, created_at_ms=tick())  # fmt: skip
        elif roll < 0.86:
            request = new_request("TOPUP", payer, _amount(rng, home[payer], 200), home[payer],
                                  counterparty_id="bank-1", created_at_ms=tick())  # fmt: skip
        elif roll < 0.91:
            request = new_request("PAYOUT", payer, _amount(rng, home[payer], 80), home[payer],
                                  counterparty_id="iban-1", created_at_ms=tick())  # fmt: skip
        elif roll < 0.95 and sent:
            # A producer retry: the very same request again.
            request = rng.choice(sent[-200:])
        elif roll < 0.97 and sent:
            # The same idempotency key with a different payload: must conflict.
            original = rng.choice(sent[-200:])
            request = dict(original)  # type: ignore[assignment]
            request["request_id"] = new_request("TOPUP", payer, 1, "EUR")["request_id"]
            request["amount_minor"] = original["amount_minor"] + 1
            request["created_at_ms"] = tick()
        else:
            # Must be declined: bad amount, unknown currency or unknown payment.
            bad = rng.choice(("amount", "currency", "payment"))
            if bad == "amount":
                request = new_request("PAYMENT", payer, -rng.randint(1, 1000), currency,
                                      counterparty_id=payee, created_at_ms=tick())  # fmt: skip
            elif bad == "currency":
                request = new_request("PAYMENT", payer, 100, "XXX", counterparty_id=payee,
                                      created_at_ms=tick())  # fmt: skip
            else:
                request = new_request("REFUND", payer, 100, currency, payment_id="no-such-payment",
                                      created_at_ms=tick())  # fmt: skip
        sent.append(request)
        made += 1
        yield request
