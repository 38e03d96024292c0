"""What the sink accepts into the ledger, and what transactions do to balances (pure)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.rules.ledger import (
    account_type,
    balance_deltas,
    fingerprint,
    net_balances,
    transaction_problem,
)
from agents.rules.money import CURRENCY_EXPONENTS


def tx(txid: str = "r1:payment", *legs: tuple[str, str, int, str], **fields: Any) -> dict:
    legs = legs or (("alice", "DEBIT", 1250, "EUR"), ("bob", "CREDIT", 1250, "EUR"))
    return {
        "transaction_id": txid,
        "request_id": txid.split(":")[0],
        "payment_id": None,
        "kind": "payment",
        "posted_at_ms": 1_767_225_600_000,
        "entries": [
            {
                "entry_id": f"{txid}:{i}",
                "account_id": a,
                "direction": d,
                "amount_minor": m,
                "currency": c,
                "fx_rate": None,
            }
            for i, (a, d, m, c) in enumerate(legs)
        ],
        **fields,
    }


def test_a_balanced_transaction_has_no_problem() -> None:
    assert transaction_problem(tx()) is None


def test_fx_transactions_balance_per_currency() -> None:
    fx = tx(
        "r2:fx",
        ("alice", "DEBIT", 1000, "EUR"),
        ("fx-clearing:EUR", "CREDIT", 1000, "EUR"),
        ("fx-clearing:USD", "DEBIT", 1083, "USD"),
        ("bob", "CREDIT", 1083, "USD"),
    )
    fx["entries"][2]["fx_rate"] = "1.083"
    assert transaction_problem(fx) is None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t["entries"][1].update(amount_minor=1249), "do not sum to zero"),
        (lambda t: t["entries"][1].update(currency="USD"), "do not sum to zero"),
        (lambda t: t["entries"][0].update(amount_minor=-1250), "positive integer"),
        (lambda t: t["entries"][0].update(amount_minor=0), "positive integer"),
        (lambda t: t["entries"][0].update(amount_minor=12.5), "positive integer"),
        (lambda t: t["entries"][0].update(amount_minor=True), "positive integer"),
        (lambda t: t["entries"][0].update(currency="XXY"), "ISO 4217"),
        (lambda t: t["entries"][0].update(currency="eur"), "ISO 4217"),
        (lambda t: t["entries"][0].update(direction="UP"), "direction"),
        (lambda t: t["entries"][1].update(entry_id="r1:payment:0"), "appears twice"),
        (lambda t: t["entries"][1].update(entry_id="other:1"), "not derived"),
        (lambda t: t["entries"][1].update(account_id=""), "account"),
        (lambda t: t["entries"][1].update(account_id="b\x00b"), "NUL"),
        (lambda t: t["entries"][1].update(fx_rate="-1.2"), "fx_rate"),
        (lambda t: t["entries"][1].update(fx_rate="abc"), "fx_rate"),
        (lambda t: t.update(entries=t["entries"][:1]), "1 entries"),
        (lambda t: t.update(transaction_id=""), "transaction_id"),
        (lambda t: t.update(request_id=""), "request_id"),
    ],
)
def test_problems_name_the_transaction_and_the_reason(mutate: Any, reason: str) -> None:
    bad = tx()
    mutate(bad)
    problem = transaction_problem(bad)
    assert problem is not None and reason in problem


def test_fingerprint_changes_with_any_field_and_not_otherwise() -> None:
    base = fingerprint(tx())
    assert fingerprint(copy.deepcopy(tx())) == base
    for change in (
        lambda t: t["entries"][0].update(amount_minor=1251),
        lambda t: t["entries"][0].update(account_id="carol"),
        lambda t: t.update(posted_at_ms=1),
        lambda t: t.update(kind="refund"),
        lambda t: t["entries"][0].update(fx_rate="1.1"),
    ):
        other = tx()
        change(other)
        assert fingerprint(other) != base
    assert len(base) == 32


def test_account_types() -> None:
    assert account_type("alice") == "customer"
    assert account_type("external:bank-1") == "external"
    assert account_type("fx-clearing:EUR") == "fx_clearing"


amounts = st.integers(min_value=1, max_value=10**12)


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd"), amounts), max_size=30))
def test_balances_of_balanced_transactions_sum_to_zero(moves: list[tuple[str, str, int]]) -> None:
    transactions = [
        tx(f"r{i}:p", (payer, "DEBIT", amount, "EUR"), (payee, "CREDIT", amount, "EUR"))
        for i, (payer, payee, amount) in enumerate(moves)
    ]
    assert all(transaction_problem(t) is None for t in transactions)
    assert sum(net_balances(transactions).values()) == 0
    deltas = balance_deltas(transactions)
    assert sum(row[2] for row in deltas.values()) == 2 * len(moves)
    for (account, _), (debits, credits, _) in deltas.items():
        assert debits == sum(m for p, _, m in moves if p == account)
        assert credits == sum(m for _, q, m in moves if q == account)


def test_every_known_currency_code_is_three_capital_letters() -> None:
    # transaction_problem checks a currency by membership alone, relying on this.
    assert all(re.fullmatch("[A-Z]{3}", code) for code in CURRENCY_EXPONENTS)
