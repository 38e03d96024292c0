"""AccountState: one value per account, serialized as one table write."""

from __future__ import annotations

import json

import pytest

from agents.rules.decide import Outcomes, decide
from agents.rules.state import STATE_FORMAT_VERSION, AccountState, Balance
from tests.agents.rules.rules_builders import (
    World,
    authorize,
    capture,
    make_context,
    make_quote,
    payment,
    position,
    rates,
    refund,
    retry_of,
    topup,
)


def test_balance_total_is_available_plus_held() -> None:
    assert Balance(70, 30).total_minor == 100
    assert Balance(-5, 0).total_minor == -5


def test_balance_is_created_empty_on_first_use() -> None:
    state = AccountState("A")
    assert state.balances == {}
    state.balance("KWD").available_minor += 1
    assert state.balances == {"KWD": Balance(1, 0)}


def busy_world() -> World:
    """States with every kind of record: holds, FX payments, pending and done refunds,
    waiting retries, leg positions and refund results."""
    ctx = make_context(rates(make_quote("JPY/EUR", "0.006123", 35, 0)))
    w = World(ctx, partitions=2)
    w.run(topup("A", 100_000))
    w.run(payment("A", "B", 12345, "JPY", request_id="fx"))
    w.run(authorize("A", "C", 500, request_id="auth", expires_at_ms=10**9))
    w.run(authorize("A", "C", 100, request_id="auth-2"))
    w.run(capture("A", "auth-2", 40))
    w.run(refund("A", "fx", 100, "JPY"))
    pending = refund("A", "fx", 200, "JPY", request_id="pending", idempotency_key="pk")
    w.send(pending)
    w.send(retry_of(pending, created_at_ms=5))
    w.state("A").overdraft_minor["EUR"] = 250
    return w


def test_round_trip_of_a_busy_state() -> None:
    w = busy_world()
    for state in w.states.values():
        raw = state.to_bytes()
        assert AccountState.from_bytes(raw) == state
        assert AccountState.from_bytes(raw).to_bytes() == raw
    a = w.state("A")
    assert a.idempotency["pk"].waiting and a.payments["fx"].refund_pending_minor == 200
    assert a.payments["auth"].status == "AUTHORIZED"


def test_state_is_plain_json_with_integer_money() -> None:
    data = json.loads(busy_world().state("A").to_bytes())
    assert data["v"] == STATE_FORMAT_VERSION
    for available, held in data["balances"].values():
        assert type(available) is int and type(held) is int


@pytest.mark.parametrize("amount_minor", [2**63 - 1, 2**63, 2**70, -(2**64)])
def test_integers_beyond_64_bits_survive_exactly(amount_minor: int) -> None:
    # The fast encoder refuses them and its parser would return floats: never money as float.
    state = AccountState("A")
    state.balance("EUR").available_minor = amount_minor
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored.balances["EUR"].available_minor == amount_minor
    assert type(restored.balances["EUR"].available_minor) is int


def test_a_restored_state_decides_like_the_original() -> None:
    """Nothing lives outside the serialized value: a restored copy gives the same answers."""
    w = busy_world()
    restored = {k: AccountState.from_bytes(s.to_bytes()) for k, s in w.states.items()}
    for offset, request in enumerate(
        [
            capture("A", "auth", 200, request_id="c-1"),
            payment("A", "B", 10, request_id="p-9"),
            refund("A", "fx", 50, "JPY", request_id="r-9"),
            topup("A", 1, created_at_ms=10**10),  # expires everything expirable
        ]
    ):
        original_state, original_out = decide(w.state("A"), request, w.context, position(offset))
        copy_state, copy_out = decide(restored["A"], request, w.context, position(offset))
        assert copy_out == original_out
        assert copy_state == original_state


def test_legs_on_a_restored_state() -> None:
    w = busy_world()
    pending_before = w.pending_legs()
    assert pending_before > 0
    clone = World(
        w.context, w.partitions, [AccountState.from_bytes(s.to_bytes()) for s in w.states.values()]
    )
    clone.leg_log = [list(log) for log in w.leg_log]
    clone.leg_next = list(w.leg_next)
    w.settle()
    clone.settle()
    assert clone.states == w.states
    assert [Outcomes.to_dict(o) for o in clone.emitted] == [
        Outcomes.to_dict(o) for o in w.emitted[-len(clone.emitted) :]
    ]


def test_unknown_state_format_is_refused() -> None:
    data = AccountState("A").to_dict()
    data["v"] = STATE_FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="format"):
        AccountState.from_dict(data)
