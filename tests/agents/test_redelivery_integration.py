"""A worker killed with SIGKILL mid-stream: its successor redelivers, nothing moves twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agents.rules.decide import is_customer_account
from streams import topics as names
from streams.dev import free_loopback_ports
from streams.loadgen import LoadSpec, fx_rates, generate
from tests.support.pipeline import (
    isolated_settings,
    ledger_balances,
    publish_fx_rates,
    read_topic,
    running_worker,
    send_requests,
    worker_balances,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_mid_stream_then_a_new_worker_finishes_with_every_invariant_intact(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    spec = LoadSpec(requests=6_000, accounts=600, seed=23, start_ms=int(time.time() * 1000))
    requests = list(generate(spec))
    distinct = {r["request_id"] for r in requests}
    publish_fx_rates(settings, fx_rates(spec.currencies, spec.start_ms))

    # Worker A decides part of the load and is killed without any chance to clean up.
    with running_worker(settings) as first:
        send_requests(settings, requests)
        partial = read_topic(
            settings, names.DECISIONS, until=lambda d: len(d) >= 1_500, timeout_s=120,
            worker=first,
        )  # fmt: skip
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    assert len(partial) >= 1_500

    # Worker B, with an empty local state dir (another machine), restores from the
    # changelog and finishes; everything after A's last commit is redelivered.
    second_port = free_loopback_ports(1)[0]
    with running_worker(settings, web_port=second_port) as second:
        decisions = read_topic(
            settings, names.DECISIONS, timeout_s=240, worker=second,
            until=lambda d: distinct <= {x["request_id"] for x in d},
        )  # fmt: skip
        missing = distinct - {d["request_id"] for d in decisions}
        kinds = Counter(r["kind"] for r in requests if r["request_id"] in missing)
        if missing:
            legs = read_topic(settings, names.LEGS, timeout_s=6)
            for rid in list(missing)[:3]:
                req = next(r for r in requests if r["request_id"] == rid)
                print("MISSING", req)
                for leg in legs:
                    if leg["request_id"] == rid:
                        print("  LEG", leg)
                for d in decisions:
                    if d["request_id"] == req["payment_id"]:
                        print("  ORIGINAL", d)
        assert not missing, f"{len(missing)} undecided {dict(kinds)}:\n{second.log_digest()}"

        # Invariant 3: one effective decision per request; duplicates are identical.
        first_seen: dict[str, dict[str, Any]] = {}
        for decision in decisions:
            earlier = first_seen.setdefault(decision["request_id"], decision)
            assert earlier == decision, f"conflicting decisions for {decision['request_id']}"
        redelivered = len(decisions) - len(first_seen)

        # Invariant 2 and 5: every posting is applied once; postings balance; the
        # workers' balances equal the postings once the legs are through.
        deadline = time.monotonic() + 90
        while True:
            transactions = read_topic(settings, names.LEDGER, timeout_s=6)
            ledger = ledger_balances(transactions)
            customers = {k: v for k, v in ledger.items() if is_customer_account(k[0]) and v}
            workers = worker_balances(settings)
            if customers == workers or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert customers == workers
        by_id: dict[str, dict[str, Any]] = {}
        for tx in transactions:
            assert by_id.setdefault(tx["transaction_id"], tx) == tx, "same id, other content"
        per_currency: Counter[str] = Counter()
        for (_account, currency), amount in ledger.items():
            per_currency[currency] += amount
        assert set(per_currency.values()) <= {0}
        # Invariant 4: no balance below zero.
        assert all(amount >= 0 for amount in workers.values())
    print(
        f"\nkill -9 after {len(partial)} decisions; {len(distinct)} requests decided once each;"
        f" {redelivered} redelivered duplicate decisions, all identical;"
        f" {len(by_id)} transactions, {len(transactions) - len(by_id)} re-emitted copies"
    )
