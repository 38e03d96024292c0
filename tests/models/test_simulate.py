"""The fraud-data simulator: determinism, valid records, fraud rate, labels, money sense, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import pytest

from agents.rules.records import Request
from models.simulate import (
    DAY_MS,
    FRAUD_SCENARIOS,
    LEGIT,
    SCENARIOS,
    SCORED_KINDS,
    Simulation,
    SimulationSpec,
    Simulator,
    iter_requests,
    simulate,
)
from models.simulate_cli import register
from schemas.codec import load_codec
from streams.errors import CommandError
from streams.settings import load_settings

# Small enough to run in half a second; a high fraud rate so every scenario occurs.
SMALL = SimulationSpec(customers=400, merchants=60, days=21, fraud_rate=0.03, seed=3)


@cache
def small() -> Simulation:
    return simulate(SMALL)


def _digest(requests: list[Request]) -> str:
    text = json.dumps(requests, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- determinism ----------------------------------------------------------------------------


def test_the_same_spec_gives_the_same_simulation() -> None:
    again = simulate(SMALL)
    assert again.requests == small().requests
    assert again.labels == small().labels
    assert again.is_fraud == small().is_fraud
    assert again.scenario == small().scenario


def test_iter_requests_streams_the_same_sequence_as_simulate() -> None:
    assert list(iter_requests(SMALL)) == small().requests


def test_another_seed_gives_other_traffic_and_other_ids() -> None:
    other = simulate(SimulationSpec(customers=400, merchants=60, days=21, seed=4))
    ids = {r["request_id"] for r in small().requests}
    assert not ids & {r["request_id"] for r in other.requests}
    assert [r["amount_minor"] for r in other.requests[:500]] != [
        r["amount_minor"] for r in small().requests[:500]
    ]


def test_output_does_not_depend_on_the_interpreter_hash_seed() -> None:
    spec = SimulationSpec(customers=100, merchants=40, days=5, fraud_rate=0.01)
    code = (
        "import hashlib, json\n"
        "from models.simulate import SimulationSpec, iter_requests\n"
        "spec = SimulationSpec(customers=100, merchants=40, days=5, fraud_rate=0.01)\n"
        "text = json.dumps(list(iter_requests(spec)), sort_keys=True, separators=(',', ':'))\n"
        "print(hashlib.sha256(text.encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _digest(list(iter_requests(spec)))


def test_a_simulator_runs_once() -> None:
    simulator = Simulator(SimulationSpec(customers=20, merchants=30, days=1))
    list(simulator.requests())
    with pytest.raises(RuntimeError, match="runs once"):
        list(simulator.requests())


# -- valid records --------------------------------------------------------------------------


def test_every_request_and_label_encodes_and_decodes_with_the_topic_schemas() -> None:
    codec = load_codec()
    sim = small()
    for request in sim.requests:
        data = codec.encode("payments.requests", request)
        assert codec.decode("payments.requests", data) == request
    for label in sim.labels:
        assert codec.decode("fraud.labels", codec.encode("fraud.labels", label)) == label


def test_requests_are_ordered_with_unique_deterministic_ids() -> None:
    requests = small().requests
    times = [r["created_at_ms"] for r in requests]
    assert times == sorted(times)
    assert SMALL.start_ms <= times[0] and times[-1] < SMALL.end_ms
    ids = [r["request_id"] for r in requests]
    assert len(set(ids)) == len(ids)
    assert all(r["idempotency_key"] == r["request_id"] for r in requests)
    assert all(re.fullmatch(r"r-[0-9a-f]{8}-\d{9}", i) for i in ids)


def test_amounts_are_positive_integer_minor_units() -> None:
    for r in small().requests:
        amount = r["amount_minor"]
        assert type(amount) is int, r
        # VOID carries 0; a CAPTURE of 0 means the full authorized amount.
        assert amount > 0 or (r["kind"] in ("VOID", "CAPTURE") and amount == 0), r
        assert r["currency"] == "EUR"


def test_fields_are_filled_like_real_traffic() -> None:
    requests = small().requests
    kinds = Counter(r["kind"] for r in requests)
    assert set(kinds) == {"TOPUP", "PAYMENT", "AUTHORIZE", "CAPTURE", "VOID", "REFUND", "PAYOUT"}
    assert kinds["PAYMENT"] > 0.6 * len(requests)
    for r in requests:
        assert re.fullmatch(r"[cm]-\d+", r["account_id"]), r
        assert r["country"] is None or re.fullmatch(r"[A-Z]{2}", r["country"]), r
        assert r["metadata"] == {}
        if r["kind"] in ("PAYMENT", "AUTHORIZE"):
            payee = r["counterparty_id"] or ""
            assert re.fullmatch(r"[cm]-\d+", payee) and payee != r["account_id"], r
            merchant = payee.startswith("m-")
            assert (r["merchant_category"] is not None) == merchant, r
        elif r["kind"] in ("TOPUP", "PAYOUT"):
            # A reference; the rules prefix it with "external:" for the ledger.
            assert re.fullmatch(r"(bank|employer|sender):[0-9a-f]{10}", r["counterparty_id"] or "")
        else:
            assert r["payment_id"] is not None and r["counterparty_id"] is None


def test_captures_voids_and_refunds_name_an_earlier_payment_of_the_same_payer() -> None:
    seen: dict[str, Request] = {}
    for r in small().requests:
        if r["kind"] in ("CAPTURE", "VOID", "REFUND"):
            original = seen[r["payment_id"] or ""]
            assert original["account_id"] == r["account_id"]
            assert original["created_at_ms"] <= r["created_at_ms"]
            assert r["amount_minor"] <= original["amount_minor"]
            expected = "PAYMENT" if r["kind"] == "REFUND" else "AUTHORIZE"
            assert original["kind"] == expected, r
        seen[r["request_id"]] = r


def test_fraud_looks_like_traffic_not_like_a_marker() -> None:
    """No id, reference or field format tells fraud from legit: models must learn behaviour."""
    sim = small()
    shapes: dict[bool, set[tuple[str, ...]]] = defaultdict(set)
    for r in sim.requests:
        if r["kind"] not in SCORED_KINDS:
            continue
        shape = (
            r["kind"],
            re.sub(r"[0-9a-f]", "x", r["device_id"] or "-"),
            re.sub(r"[0-9a-f]", "x", (r["counterparty_id"] or "-").split(":")[0]),
        )
        shapes[sim.is_fraud[r["request_id"]]].add(shape)
    assert shapes[True] <= shapes[False]


# -- fraud and labels -----------------------------------------------------------------------


def test_truth_covers_exactly_the_scored_requests_and_every_scenario() -> None:
    sim = small()
    scored = {r["request_id"] for r in sim.requests if r["kind"] in SCORED_KINDS}
    assert set(sim.is_fraud) == scored == set(sim.scenario)
    assert set(sim.scenario.values()) == set(SCENARIOS)
    for request_id, name in sim.scenario.items():
        assert sim.is_fraud[request_id] == (name != LEGIT)


@pytest.mark.parametrize("fraud_rate", [0.002, 0.004, 0.01])
def test_fraud_rate_follows_the_spec(fraud_rate: float) -> None:
    spec = SimulationSpec(customers=1000, merchants=100, days=30, fraud_rate=fraud_rate)
    simulator = Simulator(spec, record_truth=False)
    for _ in simulator.requests():
        pass
    summary = simulator.summary()
    assert 0.8 * fraud_rate <= summary["fraud_rate"] <= 1.2 * fraud_rate
    assert all(summary["by_scenario"][name] > 0 for name in FRAUD_SCENARIOS)


def test_no_fraud_when_the_rate_is_zero() -> None:
    sim = simulate(SimulationSpec(customers=200, merchants=40, days=7, fraud_rate=0.0))
    assert sim.is_fraud and not any(sim.is_fraud.values())
    assert sim.summary["fraud"] == 0


def test_labels_arrive_days_to_weeks_later_with_some_noise() -> None:
    sim = small()
    by_id = {r["request_id"]: r for r in sim.requests}
    times = [label["labeled_at_ms"] for label in sim.labels]
    assert times == sorted(times)
    assert len({label["label_id"] for label in sim.labels}) == len(sim.labels)
    for label in sim.labels:
        request = by_id[label["request_id"]]
        assert label["account_id"] == request["account_id"]
        delay_ms = label["labeled_at_ms"] - request["created_at_ms"]
        assert (
            SMALL.label_delay_min_days * DAY_MS <= delay_ms <= SMALL.label_delay_max_days * DAY_MS
        )
    fraud = {i for i, f in sim.is_fraud.items() if f}
    labelled_fraud = {x["request_id"] for x in sim.labels if x["is_fraud"]}
    assert 0.75 <= len(labelled_fraud & fraud) / len(fraud) <= 0.95  # some never labelled
    assert labelled_fraud - fraud  # friendly fraud: legit payments charged back
    assert Counter(x["source"] for x in sim.labels).most_common(1)[0][0] == "CHARGEBACK"


def test_summary_counts_add_up() -> None:
    sim = small()
    summary = sim.summary
    assert summary["requests"] == len(sim.requests)
    assert summary["by_kind"] == dict(Counter(r["kind"] for r in sim.requests))
    assert summary["by_scenario"] == {n: Counter(sim.scenario.values())[n] for n in SCENARIOS}
    assert summary["labels"]["total"] == len(sim.labels)


# -- money sense ----------------------------------------------------------------------------


def test_legit_payments_are_affordable_on_a_running_balance() -> None:
    """Replays the balance rules roughly: top-ups fund customers, payees get credited."""
    sim = small()
    available: defaultdict[str, int] = defaultdict(int)
    holds: dict[str, tuple[int, str]] = {}  # authorization -> (amount, payee)
    captured: dict[str, str] = {}  # payment -> payee
    unaffordable = legit = 0
    for r in sim.requests:
        kind, payer, amount = r["kind"], r["account_id"], r["amount_minor"]
        if kind == "TOPUP":
            available[payer] += amount
        elif kind in SCORED_KINDS:
            affordable = available[payer] >= amount
            if not sim.is_fraud[r["request_id"]]:
                legit += 1
                unaffordable += not affordable
            if not affordable:
                continue
            available[payer] -= amount
            payee = r["counterparty_id"] or ""
            if kind == "AUTHORIZE":
                holds[r["request_id"]] = (amount, payee)
            elif kind == "PAYMENT":
                available[payee] += amount
                captured[r["request_id"]] = payee
        elif kind in ("CAPTURE", "VOID"):
            held, payee = holds.pop(r["payment_id"] or "")
            taken = 0 if kind == "VOID" else amount or held
            available[payer] += held - taken
            available[payee] += taken
        elif kind == "REFUND":
            payee = captured[r["payment_id"] or ""]
            assert available[payee] >= amount, r
            available[payee] -= amount
            available[payer] += amount
    assert unaffordable <= 0.001 * legit
    assert min(available.values()) >= 0


# -- spec validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"customers": 5}, "customers=5"),
        ({"fraud_rate": 0.5}, "fraud_rate=0.5"),
        ({"currency": "XXX"}, "currency='XXX'"),
        ({"scenario_shares": (("phishing", 1.0),)}, "scenario_shares"),
        ({"label_delay_min_days": 50}, "label delays 50..45"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_value(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        SimulationSpec(**fields)  # type: ignore[arg-type]


def test_other_currencies_get_amounts_in_their_own_minor_units() -> None:
    spec = SimulationSpec(customers=50, merchants=30, days=3, currency="JPY")
    payments = [r for r in iter_requests(spec) if r["kind"] == "PAYMENT"]
    assert {r["currency"] for r in payments} == {"JPY"}
    median = sorted(r["amount_minor"] for r in payments)[len(payments) // 2]
    assert 500 <= median <= 20_000  # yen, not cents of a euro


# -- the CLI --------------------------------------------------------------------------------


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="paystream")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args, load_settings({}))
    return code


def test_cli_writes_requests_labels_truth_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim"
    argv = ["simulate", "--customers", "400", "--merchants", "60", "--days", "21"]
    assert _run_cli(*argv, "--seed", "3", "--fraud-rate", "0.03", "--out", str(out)) == 0
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert requests == small().requests
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert labels == small().labels
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    assert {t["request_id"]: t["is_fraud"] for t in truth} == small().is_fraud
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == len(requests)
    assert summary["by_scenario"] == small().summary["by_scenario"]
    printed = capsys.readouterr().out
    assert "fraud" in printed and "requests.jsonl" in printed


def test_cli_refuses_a_bad_spec_in_one_line() -> None:
    with pytest.raises(CommandError, match=re.escape("fraud_rate=0.9")):
        _run_cli("simulate", "--fraud-rate", "0.9")
