"""Payments through real workers -> ledger.entries -> the sink -> PostgreSQL, reconciled;
then every replay is shown to change nothing, and a lost database is rebuilt from the topic."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.rules.decide import is_customer_account
from streams import topics as names
from streams.ledger.db import drop_database
from streams.loadgen import LoadSpec, fx_rates, generate
from streams.settings import Settings
from tests.streams.ledger.conftest import fresh_database
from tests.streams.ledger.test_writer import stored_balances
from tests.support.pipeline import (
    isolated_settings,
    ledger_balances,
    publish_fx_rates,
    read_topic,
    running_worker,
    send_requests,
    settings_env,
    worker_balances,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMMAND_TIMEOUT_S = 180


def paystream(settings: Settings, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings)
    env["PAYSTREAM_DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def start_sink(settings: Settings, dsn: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = settings_env(settings)
    env["PAYSTREAM_DATABASE_URL"] = dsn
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "ledger-sink"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_until_workers_match_topic(settings: Settings) -> dict[tuple[str, str], int]:
    """Legs may be in flight after the last decision: wait until the workers are quiet."""
    deadline = time.monotonic() + 90
    while True:
        ledger = ledger_balances(read_topic(settings, names.LEDGER, timeout_s=6))
        customer = {k: v for k, v in ledger.items() if is_customer_account(k[0]) and v}
        if customer == worker_balances(settings) or time.monotonic() > deadline:
            return ledger
        time.sleep(2)


def counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM ledger_entries)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_payments_reach_postgres_reconciled_and_replays_change_nothing(
    kafka_broker: Any, postgres_server: Any, ledger_dsn: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    spec = LoadSpec(requests=3000, accounts=300, seed=5, start_ms=int(time.time() * 1000))
    requests = list(generate(spec))
    distinct = {r["request_id"] for r in requests}
    publish_fx_rates(settings, fx_rates(spec.currencies, spec.start_ms))
    sink = start_sink(settings, ledger_dsn, tmp_path / "sink.log")
    try:
        with running_worker(settings) as worker:
            send_requests(settings, requests)
            decisions = read_topic(
                settings, names.DECISIONS, timeout_s=240, worker=worker,
                until=lambda ds: distinct <= {d["request_id"] for d in ds},
            )  # fmt: skip
            assert distinct <= {d["request_id"] for d in decisions}
            ledger = wait_until_workers_match_topic(settings)

            # 1. The sink caught up and everything reconciles, workers included.
            done = paystream(settings, ledger_dsn, "ledger", "reconcile", "--wait-s", "90")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "ledger reconciled: 0 discrepancies" in done.stdout
            with psycopg.connect(ledger_dsn) as conn:
                assert stored_balances(conn) == {k: v for k, v in ledger.items()}
            before = counts(ledger_dsn)
            assert before[0] > 1000

            # 2. Replaying the whole ledger topic into the sink changes nothing.
            again = paystream(settings, ledger_dsn, "replay", "--topic", names.LEDGER,
                              "--sink", "ledger")  # fmt: skip
            assert again.returncode == 0, again.stderr
            assert "ledger: 0 transactions written" in again.stdout
            assert counts(ledger_dsn) == before

            # 3. Replaying every request changes nothing either: each one is answered from
            #    its idempotency record with its original decision.
            dry = paystream(settings, ledger_dsn, "replay", "--topic", names.REQUESTS,
                            "--into", names.REQUESTS, "--dry-run")  # fmt: skip
            assert f"would replay {len(requests)} messages" in dry.stdout, dry.stdout + dry.stderr
            rerun = paystream(settings, ledger_dsn, "replay", "--topic", names.REQUESTS,
                              "--into", names.REQUESTS, "--rate", "20000")  # fmt: skip
            assert rerun.returncode == 0, rerun.stderr
            assert f"replayed {len(requests)} messages" in rerun.stdout
            decisions = read_topic(
                settings, names.DECISIONS, timeout_s=240, worker=worker,
                until=lambda ds: len(ds) >= len(decisions) + len(requests),
            )  # fmt: skip
            by_request: dict[str, dict[str, Any]] = {}
            for decision in decisions:
                first = by_request.setdefault(decision["request_id"], decision)
                assert first == decision, f"two different decisions for {decision['request_id']}"
            done = paystream(settings, ledger_dsn, "ledger", "reconcile", "--wait-s", "90")
            assert done.returncode == 0, done.stdout + done.stderr
            assert counts(ledger_dsn) == before

            # 4. A lost database is rebuilt from the topic and reconciles.
            name, rebuilt = fresh_database(postgres_server.dsn)
            try:
                assert paystream(settings, rebuilt, "db", "migrate").returncode == 0
                rebuild = paystream(settings, rebuilt, "replay", "--topic", names.LEDGER,
                                    "--sink", "ledger")  # fmt: skip
                assert rebuild.returncode == 0, rebuild.stderr
                assert counts(rebuilt) == before
                done = paystream(settings, rebuilt, "ledger", "reconcile")
                assert done.returncode == 0, done.stdout + done.stderr
                with psycopg.connect(rebuilt) as conn:
                    assert stored_balances(conn) == {k: v for k, v in ledger.items()}
            finally:
                drop_database(postgres_server.dsn, name)

            # 5. Reconcile does fail: a balance changed behind the ledger's back is reported.
            account = next(a for (a, _), v in sorted(ledger.items()) if is_customer_account(a))
            with psycopg.connect(ledger_dsn, autocommit=True) as conn:
                conn.execute(
                    "UPDATE account_balances SET balance_minor = balance_minor + 1, "
                    "credits_minor = credits_minor + 1 WHERE account_id = %s",
                    (account,),
                )
            broken = paystream(settings, ledger_dsn, "ledger", "reconcile")
            assert broken.returncode == 1
            assert f"balance_vs_entries     {account}" in broken.stdout
            assert f"postgres_vs_workers    {account}" in broken.stdout

            # Reads: balance and history of a customer.
            shown = paystream(settings, ledger_dsn, "ledger", "history", account, "--limit", "3")
            assert shown.returncode == 0 and len(shown.stdout.splitlines()) <= 3
            shown = paystream(settings, ledger_dsn, "ledger", "balance", account)
            assert shown.returncode == 0 and account in shown.stdout
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
    log = (tmp_path / "sink.log").read_text()
    assert sink.returncode == 0, log[-3000:]
    assert "ledger sink stopped:" in log
    kinds = Counter(d["kind"] for d in by_request.values())
    print(f"\nledger e2e: {before[0]} transactions, {before[1]} entries; {dict(kinds)}")
