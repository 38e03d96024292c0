"""The verifier's checks, pure: a clean run passes, and every kind of damage is named.

A realistic run comes from the real rules driven by the in-memory World of the rule
tests (loadgen traffic: payments, holds, captures, refunds, FX, retries, conflicts and
bad requests, plus redeliveries). Each test then breaks one thing the way a pipeline
bug would and checks the verifier reports exactly that, with the ids and amounts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from agents.rules.fx import FxQuote
from streams.loadgen import LoadSpec, fx_rates, generate
from streams.verify import (
    Observed,
    PostgresLedger,
    RequestMessage,
    StateVersion,
    Violation,
    check,
    check_state_version,
    ledger_balances,
)
from tests.agents.rules.rules_builders import World, make_context, retry_of

START_MS = 1_790_000_000_000


def simulated_run(requests: int = 1500, redeliver_every: int = 97) -> Observed:
    """What the topics, the changelog and PostgreSQL would hold after a clean run."""
    spec = LoadSpec(requests=requests, accounts=120, seed=11, start_ms=START_MS)
    quotes = {
        r["key"]: FxQuote(r["base"], r["quote"], Decimal(r["rate"]), r["spread_bps"], r["as_of_ms"])
        for r in fx_rates(spec.currencies, spec.start_ms)
    }
    world = World(make_context(quotes, now_ms=START_MS), partitions=4)
    for i, request in enumerate(generate(spec)):
        world.send(request)
        if i % 50 == 25:  # a client retry: a new request id under the same key
            world.send(retry_of(request, created_at_ms=request["created_at_ms"] + 1))
        if i % 5 == 0:
            world.settle()
        if i % redeliver_every == 0:  # a crash before the commit: processed again
            partition = world.partition_of(request["account_id"])
            world.process(partition, len(world.request_log[partition]) - 1)
    world.settle()
    observed = Observed()
    observed.requests = [
        RequestMessage(p, o, logged.request["account_id"], logged.request)
        for p, log in enumerate(world.request_log)
        for o, logged in enumerate(log)
    ]
    for outcomes in world.emitted:
        observed.decisions += [dict(d) for d in outcomes.decisions]
        observed.transactions += [copy.deepcopy(t) for t in outcomes.transactions]
    observed.states = {
        account: StateVersion(
            account,
            world.partition_of(account),
            0,
            {c: (b.available_minor, b.held_minor) for c, b in state.balances.items()},
            dict(state.overdraft_minor),
        )
        for account, state in world.states.items()
    }
    ledger = ledger_balances(observed.transactions)
    observed.postgres = PostgresLedger(
        balances=dict(ledger),
        entry_sums=dict(ledger),
        entry_counts={t["transaction_id"]: len(t["entries"]) for t in observed.transactions},
        unbalanced=[],
    )
    return observed


@pytest.fixture(scope="module")
def clean() -> Observed:
    return simulated_run()


@pytest.fixture
def run(clean: Observed) -> Observed:
    return copy.deepcopy(clean)


def invariants(observed: Observed) -> dict[str, list[Violation]]:
    violations, _ = check(observed)
    found: dict[str, list[Violation]] = {}
    for violation in violations:
        found.setdefault(violation.invariant, []).append(violation)
    return found


def first(observed: Observed, predicate: Callable[[Any], bool], of: str = "decisions") -> Any:
    return next(item for item in getattr(observed, of) if predicate(item))


def approved(kind: str) -> Callable[[Any], bool]:
    return lambda d: d["kind"] == kind and d["status"] == "APPROVED" and not d["duplicate_of"]


def test_a_clean_run_with_redeliveries_retries_and_conflicts_has_no_violation(
    clean: Observed,
) -> None:
    violations, counts = check(clean)
    assert violations == []
    # The run exercises what the checks are about.
    assert counts["decision_messages"] > counts["decided"]  # redelivered copies
    assert counts["duplicates_answered"] > 0
    assert any(d["decline_code"] == "idempotency_conflict" for d in clean.decisions)
    assert any(t["kind"] == "refund" for t in clean.transactions)
    assert any(len(t["entries"]) == 4 for t in clean.transactions)  # FX through clearing
    assert counts["transactions"] > 500


def test_a_request_without_a_decision_is_reported(run: Observed) -> None:
    victim = first(run, approved("AUTHORIZE"))
    run.decisions = [d for d in run.decisions if d["request_id"] != victim["request_id"]]
    found = invariants(run)
    assert set(found) == {"undecided_request"}
    assert found["undecided_request"][0].subject == victim["request_id"]
    assert str(victim["amount_minor"]) in found["undecided_request"][0].detail


def test_two_different_decisions_for_one_request_are_reported(run: Observed) -> None:
    victim = first(run, lambda d: d["status"] == "DECLINED" and not d["duplicate_of"])
    other = dict(victim, status="APPROVED", decline_code=None)
    run.decisions.append(other)
    found = invariants(run)
    assert "conflicting_decisions" in found
    assert found["conflicting_decisions"][0].subject == victim["request_id"]
    assert "status" in found["conflicting_decisions"][0].detail


def test_money_moved_twice_for_one_request_is_reported(run: Observed) -> None:
    tx = first(run, lambda t: t["kind"] == "payment", of="transactions")
    again = copy.deepcopy(tx)
    again["transaction_id"] = tx["transaction_id"] + "-again"
    for entry in again["entries"]:
        entry["entry_id"] = entry["entry_id"].replace(tx["transaction_id"], again["transaction_id"])
    run.transactions.append(again)
    found = invariants(run)
    assert found["request_moved_money_twice"][0].subject == tx["request_id"]
    assert found["captured_twice"][0].subject == tx["payment_id"]
    # The extra debit shows up against the workers and against PostgreSQL as well.
    assert "workers_vs_ledger" in found and "postgres_vs_ledger" in found
    assert "postgres_missing_transaction" in found


def test_one_transaction_id_with_two_contents_is_reported(run: Observed) -> None:
    tx = first(run, lambda t: t["kind"] == "topup", of="transactions")
    changed = copy.deepcopy(tx)
    for entry in changed["entries"]:
        entry["amount_minor"] += 1
    run.transactions.append(changed)
    found = invariants(run)
    assert found["conflicting_transaction"][0].subject == tx["transaction_id"]


def test_an_unbalanced_transaction_is_reported_with_its_net(run: Observed) -> None:
    tx = first(run, lambda t: t["kind"] == "payout", of="transactions")
    tx["entries"][0]["amount_minor"] += 5
    found = invariants(run)
    assert found["unbalanced_transaction"][0].subject == tx["transaction_id"]
    assert f"{tx['entries'][0]['currency']} -5" in found["unbalanced_transaction"][0].detail
    assert "money_not_conserved" in found


def test_a_posting_for_a_declined_request_is_reported(run: Observed) -> None:
    declined = first(run, lambda d: d["kind"] == "PAYMENT" and d["status"] == "DECLINED")
    tx = {
        "transaction_id": f"{declined['request_id']}:payment",
        "request_id": declined["request_id"],
        "payment_id": declined["request_id"],
        "kind": "payment",
        "posted_at_ms": declined["created_at_ms"],
        "entries": [
            {"entry_id": "x:0", "account_id": "acct-a", "direction": "DEBIT",
             "amount_minor": 10, "currency": "EUR", "fx_rate": None},
            {"entry_id": "x:1", "account_id": "acct-b", "direction": "CREDIT",
             "amount_minor": 10, "currency": "EUR", "fx_rate": None},
        ],
    }  # fmt: skip
    run.transactions.append(tx)
    found = invariants(run)
    assert found["posting_without_approval"][0].subject == tx["transaction_id"]
    assert "DECLINED" in found["posting_without_approval"][0].detail


def test_an_approval_whose_posting_is_missing_is_reported(run: Observed) -> None:
    decision = first(run, approved("TOPUP"))
    txid = f"{decision['request_id']}:topup"
    run.transactions = [t for t in run.transactions if t["transaction_id"] != txid]
    found = invariants(run)
    assert found["approval_without_posting"][0].subject == decision["request_id"]
    assert "workers_vs_ledger" in found  # the workers credited it, the ledger did not


def test_a_posting_of_another_amount_than_decided_is_reported(run: Observed) -> None:
    decision = first(run, approved("TOPUP"))
    decision_copies = [d for d in run.decisions if d["request_id"] == decision["request_id"]]
    for d in decision_copies:
        d["amount_minor"] += 1
    found = invariants(run)
    assert found["amount_mismatch"][0].subject == decision["request_id"]


def test_a_second_stored_decision_under_one_key_is_reported(run: Observed) -> None:
    decision = first(run, approved("PAYOUT"))
    original = first(
        run, lambda m: m.request["request_id"] == decision["request_id"], of="requests"
    )
    retry = dict(original.request, request_id="retry-applied-as-new")
    run.requests.append(RequestMessage(original.partition, 10**6, original.key, retry))
    run.decisions.append(dict(decision, request_id="retry-applied-as-new"))
    found = invariants(run)
    assert found["key_decided_twice"][0].subject.endswith(decision["idempotency_key"])
    assert "retry-applied-as-new" in found["key_decided_twice"][0].detail


def test_a_conflict_for_the_same_payload_and_a_wrong_duplicate_are_reported(
    run: Observed,
) -> None:
    decision = first(run, approved("PAYMENT"))
    original = first(
        run, lambda m: m.request["request_id"] == decision["request_id"], of="requests"
    )
    same = dict(original.request, request_id="same-payload")
    other = dict(original.request, request_id="other-payload", amount_minor=1)
    run.requests.append(RequestMessage(original.partition, 10**6, original.key, same))
    run.requests.append(RequestMessage(original.partition, 10**6 + 1, original.key, other))
    run.decisions.append(
        dict(decision, request_id="same-payload", status="DECLINED",
             decline_code="idempotency_conflict")
    )  # fmt: skip
    run.decisions.append(
        dict(decision, request_id="other-payload", amount_minor=1,
             duplicate_of=decision["request_id"])
    )  # fmt: skip
    found = invariants(run)
    assert [v.subject for v in found["false_conflict"]] == ["same-payload"]
    assert [v.subject for v in found["duplicate_mismatch"]] == ["other-payload"]


def test_a_balance_below_zero_in_any_changelog_version_is_reported() -> None:
    version = StateVersion("acct-1", 3, 42, {"EUR": (-1, 0), "USD": (5, -2)}, {})
    found = check_state_version(version)
    assert [(v.invariant, v.subject) for v in found] == [
        ("negative_balance", "acct-1 EUR"),
        ("negative_balance", "acct-1 USD"),
    ]
    assert "changelog[3]@42" in found[0].detail
    # An explicit overdraft limit allows it.
    allowed = StateVersion("acct-1", 3, 42, {"EUR": (-1, 0)}, {"EUR": 1})
    assert check_state_version(allowed) == []


def test_workers_holding_other_balances_than_the_ledger_are_reported(run: Observed) -> None:
    account = next(a for a, s in sorted(run.states.items()) if s.balances.get("EUR", (0, 0))[0])
    state = run.states[account]
    available, held = state.balances["EUR"]
    changed = {**state.balances, "EUR": (available + 7, held)}
    run.states[account] = StateVersion(account, state.partition, state.offset, changed)
    found = invariants(run)
    assert found["workers_vs_ledger"][0].subject == f"{account} EUR"
    assert "difference +7" in found["workers_vs_ledger"][0].detail
    assert found["money_not_conserved"][0].subject == "EUR"


def test_postgres_differences_are_reported(run: Observed) -> None:
    assert run.postgres is not None
    txid = next(iter(run.postgres.entry_counts))
    del run.postgres.entry_counts[txid]
    run.postgres.entry_counts["ghost:topup"] = 2
    key = next(iter(sorted(run.postgres.balances)))
    run.postgres.balances[key] += 3
    run.postgres.unbalanced.append(("bad:tx", "EUR", 4))
    found = invariants(run)
    assert [v.subject for v in found["postgres_missing_transaction"]] == [txid]
    assert [v.subject for v in found["postgres_unknown_transaction"]] == ["ghost:topup"]
    assert found["postgres_vs_ledger"][0].subject == f"{key[0]} {key[1]}"
    assert found["postgres_balance_vs_entries"][0].subject == f"{key[0]} {key[1]}"
    assert found["postgres_unbalanced"][0].subject == "bad:tx"


def test_undecodable_requests_need_a_dead_letter(run: Observed) -> None:
    run.requests.append(RequestMessage(1, 999, "acct-x", None, "bad magic byte"))
    found = invariants(run)
    assert found["silent_drop"][0].subject == "payments.requests[1]@999"
    run.dead_letters.append(
        {"original_topic": "payments.requests", "original_partition": 1, "original_offset": 999}
    )
    assert invariants(run) == {}


def test_a_refund_above_the_capture_is_reported(run: Observed) -> None:
    refund = first(run, lambda t: t["kind"] == "refund", of="transactions")
    extra = copy.deepcopy(refund)
    extra["transaction_id"] = "refund-extra:refund"
    extra["request_id"] = "refund-extra"
    captured = sum(
        e["amount_minor"]
        for t in run.transactions
        if t["payment_id"] == refund["payment_id"] and t["kind"] in ("payment", "capture")
        for e in t["entries"]
        if e["direction"] == "CREDIT" and not e["account_id"].startswith("fx-clearing:")
    )
    for entry in extra["entries"]:
        entry["amount_minor"] = captured + 1
        entry["currency"] = "EUR"
    run.transactions.append(extra)
    found = invariants(run)
    assert found["refund_exceeds_capture"][0].subject == refund["payment_id"]
    assert "posting_without_approval" in found


def test_float_money_and_phantom_decisions_are_reported(run: Observed) -> None:
    decision = first(run, approved("TOPUP"))
    run.decisions.append(dict(decision, request_id="nobody-sent-this", amount_minor=1.5))
    found = invariants(run)
    assert found["not_integer_money"][0].subject == "nobody-sent-this"
    assert found["decision_without_request"][0].subject == "nobody-sent-this"


def test_an_account_view_that_differs_from_the_changelog_is_reported(run: Observed) -> None:
    account, state = next((a, s) for a, s in sorted(run.states.items()) if s.balances)
    run.views = {account: dict(state.balances)}
    assert invariants(run) == {}
    currency = next(iter(state.balances))
    available, held = state.balances[currency]
    run.views = {account: {**state.balances, currency: (available - 1, held)}}
    found = invariants(run)
    assert found["view_vs_changelog"][0].subject == account
