"""End to end through a real faust worker and the real broker."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agents.rules.decide import is_customer_account
from schemas.codec import load_codec
from streams import topics as names
from streams.client import PaymentClient, new_request
from streams.loadgen import LoadSpec, fx_rates, generate
from tests.support.pipeline import (
    isolated_settings,
    ledger_balances,
    produce_raw,
    publish_fx_rates,
    read_topic,
    running_worker,
    send_requests,
    worker_balances,
)

pytestmark = pytest.mark.integration


def test_walking_skeleton_a_request_gets_a_decision(kafka_broker: Any, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    with running_worker(settings) as worker, PaymentClient(settings) as client:
        request_id = client.submit("TOPUP", "alice", 12_345, "EUR", counterparty_id="bank")
        client.flush()
        try:
            decision = client.await_decision(request_id, timeout_s=90)
        except Exception:
            print(worker.log_tail())
            raise
        assert decision["status"] == "APPROVED"
        assert decision["amount_minor"] == 12_345
        assert decision["account_id"] == "alice"
        # The account view is routed to the owning worker and shows the balance.
        url = f"http://127.0.0.1:{worker.web_port}/accounts/alice/"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["balances"]["EUR"]["available_minor"] == 12_345


def test_malformed_bytes_become_a_dead_letter_and_the_worker_goes_on(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    with running_worker(settings), PaymentClient(settings) as client:
        produce_raw(settings, names.REQUESTS, b"bob", b"\x00\x00\x00\x00\x01garbage")
        produce_raw(settings, names.REQUESTS, b"bob", b"not avro at all")
        request_id = client.submit("TOPUP", "bob", 500, "USD")
        client.flush()
        assert client.await_decision(request_id, timeout_s=90)["status"] == "APPROVED"
    letters = read_topic(settings, names.DLQ, until=lambda r: len(r) >= 2, timeout_s=30)
    assert len(letters) == 2
    assert {letter["error_class"] for letter in letters} == {"schema_error"}
    assert {letter["original_value"] for letter in letters} == {
        b"\x00\x00\x00\x00\x01garbage",
        b"not avro at all",
    }
    assert all(letter["original_topic"] == settings.topic(names.REQUESTS) for letter in letters)


@pytest.mark.slow
def test_ten_thousand_requests_one_effective_decision_each_and_balances_match_postings(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    spec = LoadSpec(requests=10_000, accounts=1_000, seed=11, start_ms=int(time.time() * 1000))
    requests = list(generate(spec))
    publish_fx_rates(settings, fx_rates(spec.currencies, spec.start_ms))
    distinct = {r["request_id"] for r in requests}
    started = time.monotonic()
    with running_worker(settings) as worker:
        send_requests(settings, requests)

        def all_decided(decisions: list[dict[str, Any]]) -> bool:
            return distinct <= {d["request_id"] for d in decisions}

        decisions = read_topic(
            settings, names.DECISIONS, until=all_decided, timeout_s=240, worker=worker
        )
        elapsed = time.monotonic() - started
        missing = distinct - {d["request_id"] for d in decisions}
        assert not missing, f"{len(missing)} requests undecided; worker log:\n{worker.log_digest()}"

        # Exactly one effective decision per request: duplicates, if any, are identical.
        by_request: dict[str, dict[str, Any]] = {}
        for decision in decisions:
            first = by_request.setdefault(decision["request_id"], decision)
            assert first == decision, f"two different decisions for {decision['request_id']}"

        # Per account: the workers' balances equal the sum of the emitted postings, once
        # every leg has been applied (poll: legs may still be in flight).
        deadline = time.monotonic() + 60
        while True:
            ledger = ledger_balances(read_topic(settings, names.LEDGER, timeout_s=6))
            customer = {k: v for k, v in ledger.items() if is_customer_account(k[0]) and v}
            workers = worker_balances(settings)
            if customer == workers or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert customer == workers
        # Every transaction sums to zero per currency; money is conserved overall.
        per_currency: Counter[str] = Counter()
        for (_account, currency), amount in ledger.items():
            per_currency[currency] += amount
        assert all(v == 0 for v in per_currency.values())
        assert all(v >= 0 for v in workers.values())

    statuses = Counter(d["decline_code"] or d["status"] for d in by_request.values())
    print(f"\n10k run: {len(requests)} sent, {len(distinct)} distinct, decided in {elapsed:.1f} s;"
          f" {dict(statuses)}")  # fmt: skip
    assert statuses["APPROVED"] > 5_000
    assert statuses["idempotency_conflict"] > 0
    assert statuses["invalid_amount"] > 0 and statuses["currency_not_supported"] > 0


def test_codec_round_trip_smoke() -> None:
    codec = load_codec(None)
    request = new_request("TOPUP", "a", 1, "EUR")
    assert codec.decode(names.REQUESTS, codec.encode(names.REQUESTS, request))["amount_minor"] == 1
