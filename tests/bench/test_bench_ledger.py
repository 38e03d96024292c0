"""``paystream bench ledger``: its generated load (pure) and a small run end to end.

The end-to-end run uses the session's real broker and PostgreSQL and asserts what
must hold whatever the machine's speed: every entry written through the real sink,
the naive writer measured in the same run, the figures and the JSON present. Timings
are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.rules.ledger import transaction_problem
from bench.ledger import bench_ledger, generate_transactions, postgres_cpu_s
from streams.settings import Settings

JAN_2026_MS = 1_767_225_600_000


def test_generated_transactions_are_valid_and_total_the_entries_asked() -> None:
    transactions = generate_transactions(5000, 200, seed=7, start_ms=JAN_2026_MS)
    assert sum(len(tx["entries"]) for tx in transactions) == 5000
    odd = generate_transactions(5001, 200, seed=7, start_ms=JAN_2026_MS)
    assert sum(len(tx["entries"]) for tx in odd) == 5002  # two or four per transaction
    assert all(transaction_problem(tx) is None for tx in transactions)
    assert len({tx["transaction_id"] for tx in transactions}) == len(transactions)
    fx = sum(1 for tx in transactions if len(tx["entries"]) == 4)
    assert 0.05 < fx / len(transactions) < 0.15  # about a tenth pay across currencies


def test_the_same_seed_generates_the_same_load() -> None:
    assert generate_transactions(300, 50, 1, JAN_2026_MS) == generate_transactions(
        300, 50, 1, JAN_2026_MS
    )


@pytest.mark.integration
def test_a_small_bench_writes_everything_and_reports_both_writers(
    kafka_broker: Any, postgres_server: Any, tmp_path: Path
) -> None:
    settings = Settings(
        brokers=kafka_broker.bootstrap,
        state_dir=tmp_path / "state",
        database_url=postgres_server.dsn,
    )
    out = tmp_path / "ledger.json"
    summary = bench_ledger(settings, 3001, runs=1, accounts=300, naive_seconds=0.5,
                           json_path=out)  # fmt: skip
    [run] = summary["runs"]
    assert summary["entries"] == run["sink"]["entries"] == 3002 and run["sink"]["entries_per_s"] > 0
    assert run["sink"]["sink_cpu_s"] > 0
    assert run["host_loop_s"] > 0 and summary["median_host_loop_s"] == run["host_loop_s"]
    assert run["naive"]["entries"] > 0 and run["ratio"] > 0
    assert json.loads(out.read_text()) == summary
    if not type(postgres_server).__name__.startswith("External"):
        used = postgres_cpu_s()  # the session's server runs here: its CPU is readable
        assert used is not None and used > 0
        assert run["sink"]["postgres_cpu_s"] is not None
