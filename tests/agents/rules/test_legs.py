"""apply_leg(): payee credits, the refund saga, dedupe by source position, redelivery."""

from __future__ import annotations

from fractions import Fraction
from math import floor

import pytest

from agents.rules.decide import (
    Outcomes,
    Position,
    apply_leg,
    clearing_account,
    external_account,
    is_customer_account,
)
from agents.rules.records import Leg
from agents.rules.state import AccountState
from tests.agents.rules.rules_builders import (
    AMOUNT_MAX,
    DAY_MS,
    LEGS_TOPIC,
    REQUESTS_TOPIC,
    World,
    authorize,
    balances_of,
    capture,
    fresh_state,
    make_context,
    make_quote,
    only_decision,
    payment,
    payout,
    rates,
    refund,
    retry_of,
    topup,
)

CTX = make_context()


def credit_leg(
    account: str = "B",
    amount: int = 100,
    offset: int = 0,
    partition: int = 0,
    request_id: str | None = None,
    currency: str = "EUR",
    created_at_ms: int = 0,
) -> Leg:
    rid = request_id or f"p-{partition}-{offset}"
    return {
        "leg_id": f"{rid}:credit",
        "kind": "CREDIT",
        "account_id": account,
        "counterparty_id": "A",
        "request_id": rid,
        "payment_id": rid,
        "amount_minor": amount,
        "currency": currency,
        "approved": True,
        "source_topic": REQUESTS_TOPIC,
        "source_partition": partition,
        "source_offset": offset,
        "created_at_ms": created_at_ms,
    }


def legs_position(offset: int, partition: int = 0) -> Position:
    return Position(LEGS_TOPIC, partition, offset)


def world(*states: AccountState, ctx: object = CTX, partitions: int = 3) -> World:
    return World(ctx, partitions, states)  # type: ignore[arg-type]


def paid_world(amount: int = 500, payee_keeps: int | None = None) -> World:
    """A paid B `amount` EUR (payment id "pay"), legs delivered."""
    w = world()
    w.run(topup("A", 1000))
    only_decision(w.run(payment("A", "B", amount, request_id="pay")))
    if payee_keeps is not None:
        w.run(payout("B", w.available("B") - payee_keeps))
    return w


def test_house_account_names() -> None:
    assert clearing_account("KWD") == "fx-clearing:KWD"
    assert external_account(None, "funding") == "external:funding"
    assert external_account("bank-1", "funding") == "external:bank-1"
    assert not is_customer_account("fx-clearing:EUR")
    assert not is_customer_account("external:x")
    assert is_customer_account("A")


# --------------------------------------------------------------------------------------
# CREDIT
# --------------------------------------------------------------------------------------


def test_credit_reaches_the_payee_when_its_leg_is_applied() -> None:
    w = world()
    w.run(topup("A", 1000))
    w.send(payment("A", "B", 300, request_id="p-1"))
    assert w.total("B") == 0 and w.pending_legs() == 1
    w.settle()
    assert balances_of(w.state("B")) == {"EUR": (300, 0)}
    assert w.notifications["p-1:payment.received:B"]["amount_minor"] == 300


def test_credit_on_a_new_account() -> None:
    state, out = apply_leg(None, credit_leg("B", 100), CTX, legs_position(0))
    assert state.account_id == "B"
    assert balances_of(state) == {"EUR": (100, 0)}
    assert state.home_currency is None  # only a top-up sets it
    assert [n["event_type"] for n in out.notifications] == ["payment.received"]


def test_credit_redelivered_is_applied_once() -> None:
    leg = credit_leg("B", 100, offset=7)
    state, first = apply_leg(None, leg, CTX, legs_position(0))
    state, again = apply_leg(state, leg, CTX, legs_position(0))
    assert balances_of(state) == {"EUR": (100, 0)}
    assert again == first  # the notification again, nothing else
    # The same leg produced again (new legs offset) is the same source position.
    state, _ = apply_leg(state, leg, CTX, legs_position(1))
    assert balances_of(state) == {"EUR": (100, 0)}


def test_legs_are_deduped_per_source_partition() -> None:
    state, _ = apply_leg(None, credit_leg("B", 1, offset=10, partition=0), CTX, legs_position(0))
    state, _ = apply_leg(state, credit_leg("B", 2, offset=3, partition=1), CTX, legs_position(1))
    state, _ = apply_leg(state, credit_leg("B", 4, offset=11, partition=0), CTX, legs_position(2))
    assert balances_of(state) == {"EUR": (7, 0)}
    assert state.positions == {f"{REQUESTS_TOPIC}:0": 11, f"{REQUESTS_TOPIC}:1": 3}


def test_legs_must_arrive_in_source_order() -> None:
    """Design assumption made explicit: a position at or below the last applied one from
    the same source partition is taken for a redelivery. Kafka keeps a partition's order,
    so a leg can only be seen late as a duplicate."""
    state, _ = apply_leg(None, credit_leg("B", 1, offset=10), CTX, legs_position(0))
    state, _out = apply_leg(state, credit_leg("B", 2, offset=9), CTX, legs_position(1))
    assert balances_of(state) == {"EUR": (1, 0)}


def test_credit_in_a_currency_the_payee_does_not_hold() -> None:
    state, _ = apply_leg(
        fresh_state("B"), credit_leg("B", 7, currency="KWD"), CTX, legs_position(0)
    )
    assert balances_of(state) == {"KWD": (7, 0)}


def test_a_leg_advances_the_clock_and_releases_expired_holds() -> None:
    w = world()
    w.run(topup("B", 100))
    w.run(authorize("B", "C", 60, request_id="auth", expires_at_ms=1_000))
    assert balances_of(w.state("B")) == {"EUR": (40, 60)}
    w.run(topup("A", 10, created_at_ms=1_000))
    out = w.run(payment("A", "B", 10, created_at_ms=1_000))
    assert balances_of(w.state("B")) == {"EUR": (110, 0)}
    assert w.state("B").payments["auth"].status == "EXPIRED"
    assert "authorization.expired" in [n["event_type"] for n in out.notifications]


# --------------------------------------------------------------------------------------
# The refund saga
# --------------------------------------------------------------------------------------


def test_refund_saga_approved() -> None:
    w = paid_world(500)
    out = w.run(refund("A", "pay", 200, request_id="r-1"))
    decision = only_decision(out)
    assert (decision["status"], decision["kind"], decision["payment_id"]) == (
        "APPROVED",
        "REFUND",
        "pay",
    )
    assert (decision["amount_minor"], decision["request_id"]) == (200, "r-1")
    assert balances_of(w.state("A")) == {"EUR": (700, 0)}
    assert balances_of(w.state("B")) == {"EUR": (300, 0)}
    [tx] = out.transactions
    assert tx["transaction_id"] == "r-1:refund"
    assert [(e["account_id"], e["direction"], e["amount_minor"]) for e in tx["entries"]] == [
        ("B", "DEBIT", 200),
        ("A", "CREDIT", 200),
    ]
    record = w.state("A").payments["pay"]
    assert (record.refunded_minor, record.settled_refunded_minor, record.refund_pending_minor) == (
        200,
        200,
        0,
    )
    events = sorted(n["notification_id"] for n in out.notifications)
    assert events == ["r-1:refund.sent:B", "r-1:refund.succeeded:A"]
    assert [leg["kind"] for leg in out.legs] == ["REFUND_DEBIT", "REFUND_RESULT"]


def test_refund_result_leg_is_addressed_back_to_the_payer() -> None:
    w = paid_world(500)
    w.send(refund("A", "pay", 200, request_id="r-1"))
    partition = w.partition_of("B")
    offset = w.leg_next[partition]
    out = w.deliver(partition)
    assert out is not None
    [result] = out.legs
    assert result == {
        "leg_id": "r-1:refund-result",
        "kind": "REFUND_RESULT",
        "account_id": "A",
        "counterparty_id": "B",
        "request_id": "r-1",
        "payment_id": "pay",
        "amount_minor": 200,
        "currency": "EUR",
        "approved": True,
        "source_topic": LEGS_TOPIC,
        "source_partition": partition,
        "source_offset": offset,
        "created_at_ms": 0,
    }
    assert w.state("B").refund_results["r-1:refund-debit"] == (True, offset, 0)


def test_refund_declined_when_the_payee_lacks_funds() -> None:
    w = paid_world(500, payee_keeps=199)
    out = w.run(refund("A", "pay", 200, request_id="r-1"))
    decision = only_decision(out)
    assert (decision["status"], decision["decline_code"]) == ("DECLINED", "insufficient_funds")
    assert decision["reasons"] == ["payee balance cannot cover the refund"]
    assert not out.transactions
    assert balances_of(w.state("A")) == {"EUR": (500, 0)}
    assert balances_of(w.state("B")) == {"EUR": (199, 0)}
    assert "r-1:refund.failed:A" in w.notifications
    record = w.state("A").payments["pay"]
    assert (record.refunded_minor, record.refund_pending_minor) == (0, 0)
    # The reservation is released: the payee's exact balance can still be refunded.
    assert only_decision(w.run(refund("A", "pay", 199)))["status"] == "APPROVED"
    assert balances_of(w.state("B")) == {"EUR": (0, 0)}


def test_refund_may_use_the_payee_overdraft() -> None:
    w = world(fresh_state("B", EUR=100))
    w.run(topup("A", 1000))
    w.run(payment("A", "B", 500, request_id="pay"))
    w.run(payout("B", 500))
    assert only_decision(w.run(refund("A", "pay", 100)))["status"] == "APPROVED"
    assert balances_of(w.state("B")) == {"EUR": (-100, 0)}
    assert only_decision(w.run(refund("A", "pay", 1)))["decline_code"] == "insufficient_funds"


def test_partial_and_repeated_refunds_up_to_the_payment() -> None:
    w = paid_world(500)
    for amount in (100, 150, 250):
        assert only_decision(w.run(refund("A", "pay", amount)))["status"] == "APPROVED"
    decision = only_decision(w.run(refund("A", "pay", 1)))
    assert decision["decline_code"] == "refund_exceeds_payment"
    assert balances_of(w.state("A")) == {"EUR": (1000, 0)}
    assert balances_of(w.state("B")) == {"EUR": (0, 0)}


def test_concurrent_pending_refunds() -> None:
    w = paid_world(500)
    w.send(refund("A", "pay", 300, request_id="r-1"))
    w.send(refund("A", "pay", 200, request_id="r-2"))
    out = w.send(refund("A", "pay", 1, request_id="r-3"))
    assert only_decision(out)["decline_code"] == "refund_exceeds_payment"
    w.settle()
    assert w.decisions["r-1"]["status"] == w.decisions["r-2"]["status"] == "APPROVED"
    assert balances_of(w.state("A")) == {"EUR": (1000, 0)}


def test_refund_of_a_partially_captured_authorization() -> None:
    w = world()
    w.run(topup("A", 1000))
    w.run(authorize("A", "B", 400, request_id="auth"))
    w.run(capture("A", "auth", 150))
    assert only_decision(w.run(refund("A", "auth", 150)))["status"] == "APPROVED"
    assert balances_of(w.state("A")) == {"EUR": (1000, 0)}


# -- redelivery in the saga -------------------------------------------------------------


def test_refund_debit_redelivery_reemits_the_identical_result() -> None:
    w = paid_world(500)
    w.send(refund("A", "pay", 200, request_id="r-1"))
    partition = w.partition_of("B")
    offset = w.leg_next[partition]
    first = w.deliver(partition)
    # Meanwhile the payee spends everything: re-deciding would now decline.
    w.run(payout("B", 300))
    assert w.total("B") == 0
    again = w.apply_leg_at(partition, offset)
    assert again == first
    assert w.total("B") == 0
    w.settle()
    assert w.decisions["r-1"]["status"] == "APPROVED"
    assert balances_of(w.state("A")) == {"EUR": (700, 0)}
    assert not w.mismatches


def test_refund_debit_produced_twice_gives_the_identical_result() -> None:
    """The refund request is redelivered while pending: its stored REFUND_DEBIT is sent
    again, lands at a later legs offset, and must yield the same REFUND_RESULT."""
    w = paid_world(500)
    w.send(refund("A", "pay", 200, request_id="r-1"))
    [(partition, offset)] = w.positions_of("r-1")
    again = w.process(partition, offset)
    assert [leg["leg_id"] for leg in again.legs] == ["r-1:refund-debit"]
    assert again.decisions == []
    w.settle()
    results = [leg for leg in w.leg_log[w.partition_of("A")] if leg["kind"] == "REFUND_RESULT"]
    assert len(results) == 2 and results[0] == results[1]
    assert balances_of(w.state("B")) == {"EUR": (300, 0)}
    assert balances_of(w.state("A")) == {"EUR": (700, 0)}
    assert not w.mismatches


def test_refund_result_redelivery_reemits_identical_outcomes() -> None:
    w = paid_world(500)
    w.send(refund("A", "pay", 200, request_id="r-1"))
    w.settle()
    partition = w.partition_of("A")
    offset = next(i for i, leg in enumerate(w.leg_log[partition]) if leg["kind"] == "REFUND_RESULT")
    first = w.emitted[-1]
    before = balances_of(w.state("A"))
    again = w.apply_leg_at(partition, offset)
    assert again == first
    assert balances_of(w.state("A")) == before
    assert only_decision(again)["status"] == "APPROVED"


def test_refund_request_redelivered_after_completion() -> None:
    w = paid_world(500)
    out = w.run(refund("A", "pay", 200, request_id="r-1"))
    [(partition, offset)] = w.positions_of("r-1")
    again = w.process(partition, offset)
    assert again.decisions == out.decisions
    assert again.transactions == out.transactions
    assert again.legs == []  # the debit is done; the stored outcomes are the final ones
    assert balances_of(w.state("A")) == {"EUR": (700, 0)}


def test_refund_result_for_an_unknown_refund_is_ignored() -> None:
    leg: Leg = {
        **credit_leg("A", 5, request_id="ghost"),
        "kind": "REFUND_RESULT",
        "leg_id": "ghost:refund-result",
    }
    state, out = apply_leg(fresh_state("A"), leg, CTX, legs_position(0))
    assert out == Outcomes()
    assert balances_of(state) == {}


def test_retries_of_a_pending_refund_get_their_decision_when_it_completes() -> None:
    w = paid_world(500)
    original = refund("A", "pay", 200, request_id="r-1", idempotency_key="rk")
    w.send(original)
    retry = retry_of(original, request_id="r-2", created_at_ms=10)
    assert w.send(retry).decisions == []  # nothing to copy yet
    assert w.send(retry).decisions == []  # its redelivery: still waiting, listed once
    assert w.state("A").idempotency["rk"].waiting == [("r-2", 10)]
    w.settle()
    assert w.decisions["r-1"]["status"] == "APPROVED"
    copy = w.decisions["r-2"]
    assert copy == {
        **w.decisions["r-1"],
        "request_id": "r-2",
        "duplicate_of": "r-1",
        "created_at_ms": 10,
    }
    # Money moved once.
    assert balances_of(w.state("A")) == {"EUR": (700, 0)}
    # The retry redelivered after completion: the identical copy.
    [(partition, offset), *_] = w.positions_of("r-2")
    assert w.process(partition, offset).decisions == [copy]
    # A retry arriving after completion.
    late = w.send(retry_of(original, request_id="r-3", created_at_ms=20))
    assert only_decision(late)["duplicate_of"] == "r-1"
    assert not w.mismatches


def test_conflicting_reuse_of_a_pending_refund_key() -> None:
    w = paid_world(500)
    w.send(refund("A", "pay", 200, request_id="r-1", idempotency_key="rk"))
    out = w.send(refund("A", "pay", 201, request_id="r-2", idempotency_key="rk"))
    assert only_decision(out)["decline_code"] == "idempotency_conflict"
    w.settle()
    assert w.decisions["r-1"]["status"] == "APPROVED"
    assert w.state("A").payments["pay"].refunded_minor == 200


# -- FX refunds ------------------------------------------------------------------------

FX = make_context(rates(make_quote("JPY/EUR", "0.006123", 35, 0)))


def fx_paid_world() -> World:
    """A (home EUR) paid B 12345 JPY, settled as 7586 EUR cents (see test_decide)."""
    w = world(ctx=FX)
    w.run(topup("A", 100_000))
    decision = only_decision(w.run(payment("A", "B", 12345, "JPY", request_id="fx")))
    assert decision["settled_amount_minor"] == 7586
    return w


def test_fx_refunds_credit_pro_rata_down_and_the_last_the_remainder() -> None:
    w = fx_paid_world()
    first = only_decision(w.run(refund("A", "fx", 5000, "JPY", request_id="r-1")))
    by_hand = floor(Fraction(7586 * 5000, 12345))  # 3072.49... -> 3072, down: the house keeps
    assert by_hand == 3072
    assert (first["settled_amount_minor"], first["settled_currency"]) == (3072, "EUR")
    assert w.available("A") == 100_000 - 7586 + 3072
    tx = w.ledger.transactions["r-1:refund"]
    assert [
        (e["account_id"], e["direction"], e["amount_minor"], e["currency"]) for e in tx["entries"]
    ] == [
        ("B", "DEBIT", 5000, "JPY"),
        ("fx-clearing:JPY", "CREDIT", 5000, "JPY"),
        ("fx-clearing:EUR", "DEBIT", 3072, "EUR"),
        ("A", "CREDIT", 3072, "EUR"),
    ]
    second = only_decision(w.run(refund("A", "fx", 1, "JPY", request_id="r-2")))
    assert second["settled_amount_minor"] == floor(Fraction(7586, 12345)) == 0
    last = only_decision(w.run(refund("A", "fx", 7344, "JPY", request_id="r-3")))
    assert last["settled_amount_minor"] == 7586 - 3072 - 0 == 4514
    # The whole payment is back, to the cent; the payee is back to zero.
    assert w.available("A") == 100_000
    assert balances_of(w.state("B")) == {"JPY": (0, 0)}


def test_fx_refund_when_a_partial_refund_was_declined() -> None:
    w = fx_paid_world()
    w.run(payout("B", 12345 - 100, "JPY"))
    declined_refund = only_decision(w.run(refund("A", "fx", 5000, "JPY")))
    assert declined_refund["decline_code"] == "insufficient_funds"
    ok = only_decision(w.run(refund("A", "fx", 100, "JPY")))
    assert ok["settled_amount_minor"] == floor(Fraction(7586 * 100, 12345)) == 61
    record = w.state("A").payments["fx"]
    assert (record.refunded_minor, record.settled_refunded_minor) == (100, 61)


@pytest.mark.parametrize("parts", [[12345], [1, 12344], [4000, 4000, 4345], [12344, 1]])
def test_fx_refunds_in_parts_return_exactly_what_was_paid(parts: list[int]) -> None:
    w = fx_paid_world()
    for amount in parts:
        assert only_decision(w.run(refund("A", "fx", amount, "JPY")))["status"] == "APPROVED"
    assert w.available("A") == 100_000


def test_ledger_matches_the_states_after_a_saga() -> None:
    w = fx_paid_world()
    w.run(refund("A", "fx", 5000, "JPY"))
    w.run(payout("B", 1000, "JPY"))
    for account in ("A", "B"):
        for currency, balance in w.state(account).balances.items():
            assert w.ledger.balance(account, currency) == balance.total_minor


def test_refund_saga_survives_the_request_window() -> None:
    """A pending refund's records are kept past every window until the payee answers."""
    ctx = make_context(idempotency_window_ms=DAY_MS, refund_window_ms=2 * DAY_MS)
    w = world(ctx=ctx)
    w.run(topup("A", 1000))
    w.run(payment("A", "B", 500, request_id="pay"))
    w.send(refund("A", "pay", 200, request_id="r-1"))
    # The payer's clock moves far past every window before the debit is delivered.
    w.send(topup("A", 1, created_at_ms=10 * DAY_MS))
    w.settle()
    assert w.decisions["r-1"]["status"] == "APPROVED"
    assert w.available("A") == 701


@pytest.mark.parametrize("currency", ["JPY", "EUR", "KWD"])
def test_refund_of_exactly_the_payee_balance_vs_one_unit_more(currency: str) -> None:
    w = world()
    w.run(topup("A", 10_000, currency))
    w.run(payment("A", "B", 5_000, currency, request_id="pay"))
    w.run(payout("B", 5_000 - 1_234, currency))  # B keeps exactly 1234 minor units
    over = only_decision(w.run(refund("A", "pay", 1_235, currency)))
    assert over["decline_code"] == "insufficient_funds"
    exact = only_decision(w.run(refund("A", "pay", 1_234, currency)))
    assert exact["status"] == "APPROVED"
    assert balances_of(w.state("B")) == {currency: (0, 0)}
    assert w.available("A", currency) == 5_000 + 1_234


def test_saga_with_the_largest_long() -> None:
    w = world()
    w.run(topup("A", AMOUNT_MAX, "JPY"))
    w.run(authorize("A", "B", AMOUNT_MAX, "JPY", request_id="auth"))
    assert only_decision(w.run(capture("A", "auth", 0, "JPY")))["status"] == "APPROVED"
    assert balances_of(w.state("B")) == {"JPY": (AMOUNT_MAX, 0)}
    assert only_decision(w.run(refund("A", "auth", AMOUNT_MAX, "JPY")))["status"] == "APPROVED"
    assert balances_of(w.state("A")) == {"JPY": (AMOUNT_MAX, 0)}
    assert balances_of(w.state("B")) == {"JPY": (0, 0)}
    assert w.ledger.balance("A", "JPY") == AMOUNT_MAX
