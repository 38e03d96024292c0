"""Training data: replaying history through the rules and the features, labels by time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.rules.records import Request
from models.dataset import (
    build_dataset,
    feature_balance,
    is_new_request,
    read_history_dir,
    reference_value,
    write_history_dir,
)
from models.errors import TrainingDataError
from models.features import FEATURE_NAMES
from models.simulate import SimulationSpec, simulate

T0 = 1_767_225_600_000
MIN = 60_000
RATIO = FEATURE_NAMES.index("amount_to_balance")


def req(n: int, kind: str, account: str, amount: int, t_min: float, **extra: Any) -> Request:
    request: dict[str, Any] = {
        "request_id": f"r{n}",
        "idempotency_key": f"r{n}",
        "kind": kind,
        "account_id": account,
        "counterparty_id": "shop" if kind in ("PAYMENT", "AUTHORIZE") else None,
        "payment_id": None,
        "amount_minor": amount,
        "currency": "EUR",
        "created_at_ms": T0 + int(t_min * MIN),
        "expires_at_ms": None,
        "device_id": "d1",
        "country": "DE",
        "merchant_category": None,
        "metadata": {},
    }
    request.update(extra)
    return request  # type: ignore[return-value]


def ratios(requests: list[Request]) -> dict[str, float]:
    fast = build_dataset(requests, [])
    exact = build_dataset(requests, [], exact=True)
    assert fast.request_ids == exact.request_ids
    assert np.array_equal(fast.X, exact.X), "the fast replay must match the rules"
    return dict(zip(fast.request_ids, fast.X[:, RATIO].tolist(), strict=True))


def test_balance_before_each_payment() -> None:
    history = [
        req(1, "TOPUP", "alice", 10_000, 0),
        req(2, "PAYMENT", "alice", 5_000, 1),
        req(3, "PAYMENT", "alice", 3_000, 2),
        req(4, "PAYMENT", "alice", 9_000, 3),  # insufficient funds: declined, nothing moves
        req(5, "PAYOUT", "alice", 1_000, 4, counterparty_id="bank"),
    ]
    r = ratios(history)
    assert r == {"r2": 0.5, "r3": 0.6, "r4": 4.5, "r5": 0.5}


def test_retries_get_no_vector_and_move_nothing() -> None:
    history = [
        req(1, "TOPUP", "alice", 10_000, 0),
        req(2, "PAYMENT", "alice", 5_000, 1),
        req(3, "PAYMENT", "alice", 5_000, 2, idempotency_key="r2"),  # a retry of r2
        req(4, "PAYMENT", "alice", 2_500, 3),
    ]
    assert ratios(history) == {"r2": 0.5, "r4": 0.5}


def test_holds_voids_captures_and_the_payees_credit() -> None:
    history = [
        req(1, "TOPUP", "alice", 10_000, 0),
        req(2, "AUTHORIZE", "alice", 6_000, 1, counterparty_id="bob"),
        req(3, "PAYMENT", "alice", 2_000, 2),  # 4,000 available
        req(4, "VOID", "alice", 0, 3, payment_id="r2", device_id=None),
        req(5, "PAYMENT", "alice", 4_000, 4),  # 8,000 available again
        req(6, "AUTHORIZE", "alice", 2_000, 5, counterparty_id="bob"),
        req(7, "CAPTURE", "alice", 1_500, 6, payment_id="r6", device_id=None),
        req(8, "PAYMENT", "alice", 2_250, 7),  # 4,000 - 2,000 + 500 = 2,500 ... minus nothing
        req(9, "PAYMENT", "bob", 750, 8),  # bob was credited 1,500 by the capture
    ]
    r = ratios(history)
    assert r["r3"] == 0.5 and r["r5"] == 0.5
    assert r["r8"] == pytest.approx(2_250 / 2_500)
    assert r["r9"] == 0.5


def test_expired_holds_and_refunds_match_the_rules() -> None:
    history = [
        req(1, "TOPUP", "alice", 10_000, 0),
        req(2, "AUTHORIZE", "alice", 6_000, 1, expires_at_ms=T0 + 30 * MIN),
        req(3, "PAYMENT", "alice", 1_000, 60),  # the hold expired: released at this event
        req(4, "PAYMENT", "alice", 1_000, 61, counterparty_id="bob"),
        req(5, "REFUND", "alice", 500, 62, payment_id="r4"),
        req(6, "PAYMENT", "alice", 1_000, 63),
        req(7, "PAYMENT", "bob", 250, 64),
    ]
    r = ratios(history)  # the values are whatever the rules say; both replays agree
    assert r["r3"] == pytest.approx(1_000 / 4_000)  # balance read before the release
    assert r["r4"] == pytest.approx(1_000 / 9_000)
    assert r["r6"] == pytest.approx(1_000 / 8_500)  # 9,000 - 1,000 + 500 refunded
    assert r["r7"] == pytest.approx(250 / 500)


def test_fast_replay_equals_the_rules_on_a_simulation() -> None:
    sim = simulate(SimulationSpec(customers=300, merchants=60, days=12, seed=5))
    fast = build_dataset(sim.requests, sim.labels)
    exact = build_dataset(sim.requests, sim.labels, exact=True)
    assert len(fast) > 5000
    assert fast.request_ids == exact.request_ids
    assert np.array_equal(fast.X, exact.X)
    scored = [r["request_id"] for r in sim.requests if r["kind"] in sim_scored()]
    assert fast.request_ids == scored
    assert fast.X.shape[1] == len(FEATURE_NAMES) and np.all(np.isfinite(fast.X))


def sim_scored() -> set[str]:
    return {"PAYMENT", "AUTHORIZE", "PAYOUT"}


def test_labels_as_of_take_the_latest_known_verdict() -> None:
    history = [req(1, "TOPUP", "alice", 10_000, 0)] + [
        req(n, "PAYMENT", "alice", 100, n) for n in range(2, 6)
    ]
    labels = [
        {"request_id": "r2", "is_fraud": True, "labeled_at_ms": T0 + 100 * MIN},
        {"request_id": "r3", "is_fraud": True, "labeled_at_ms": T0 + 100 * MIN},
        {"request_id": "r3", "is_fraud": False, "labeled_at_ms": T0 + 200 * MIN},  # cleared
        {"request_id": "r4", "is_fraud": True, "labeled_at_ms": T0 + 300 * MIN},
        {"request_id": "nope", "is_fraud": True, "labeled_at_ms": T0},
    ]
    data = build_dataset(history, labels)
    assert data.request_ids == ["r2", "r3", "r4", "r5"]
    assert data.labels_unmatched == 1
    assert data.labels_as_of(T0 + 50 * MIN).tolist() == [0, 0, 0, 0]
    assert data.labels_as_of(T0 + 150 * MIN).tolist() == [1, 1, 0, 0]
    assert data.labels_as_of(T0 + 250 * MIN).tolist() == [1, 0, 0, 0]
    assert data.labels_as_of(None).tolist() == [1, 0, 1, 0]
    assert data.window(T0 + 3 * MIN, T0 + 5 * MIN).tolist() == [1, 2]
    assert data.first_ms == T0 + 2 * MIN and data.end_ms == T0 + 5 * MIN + 1
    assert data.latest_event_ms == T0 + 300 * MIN


def test_history_directory_round_trip(tmp_path: Path) -> None:
    history = [req(1, "TOPUP", "alice", 10_000, 0), req(2, "PAYMENT", "alice", 100, 1)]
    labels = [{"request_id": "r2", "is_fraud": True, "labeled_at_ms": T0 + 9 * MIN}]
    write_history_dir(tmp_path, history, labels)
    requests, read_labels = read_history_dir(tmp_path)
    assert requests == history and read_labels == labels
    # Optional request fields may be left out of the files.
    (tmp_path / "requests.jsonl").write_text(
        '{"request_id": "x", "kind": "TOPUP", "account_id": "a", "amount_minor": 5, '
        '"currency": "EUR", "created_at_ms": 1}\n'
    )
    (request,) = read_history_dir(tmp_path)[0]
    assert request["idempotency_key"] == "x" and request["device_id"] is None
    (tmp_path / "labels.jsonl").write_text('{"request_id": "x"}\n')
    with pytest.raises(TrainingDataError, match=r"labels\.jsonl:1: lacks is_fraud"):
        read_history_dir(tmp_path)
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_history_dir(tmp_path / "missing")


def test_shared_helpers_and_reference_value() -> None:
    assert is_new_request(None, req(1, "TOPUP", "a", 1, 0))
    assert feature_balance(None, req(1, "TOPUP", "a", 1, 0)) == 0
    assert reference_value(12_345, "EUR") == pytest.approx(123.45)
    assert reference_value(1_000, "JPY") == pytest.approx(1000 / 180)
    assert reference_value(1_000, "KWD") == pytest.approx(1.0 / 0.356)
    assert math.isfinite(reference_value(-5, "XXX")) and reference_value(-5, "XXX") == 0
