"""``paystream demo``: the main job on embedded defaults, start to finish.

Brings up Kafka and PostgreSQL (unless they already run), creates a fresh set of
topics, starts a real worker, sends a simulated load and prints a report:
decisions by status and decline code, throughput, latency percentiles, and a
check that the ledger postings balance. It leaves nothing running that it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from streams.dev.infra import start_infra
from streams.reporting import PROGRESS_EVERY_S, percentile, progress
from streams.settings import Settings

WORKER_STOP_TIMEOUT_S = 30.0
DECISIONS_TIMEOUT_S = 300.0
LEDGER_CATCH_UP_S = 60.0
SIMULATED_DAYS = 30


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update(settings.replace(log_level="INFO").to_env())
    return env


def demo_load(load_kind: str, requests: int, accounts: int) -> tuple[list[Any], dict[str, bool]]:
    """The requests to send and, for the simulated load, which are fraud (ground truth)."""
    if load_kind == "synthetic":
        from streams.loadgen import LoadSpec, generate

        spec = LoadSpec(
            requests=requests, accounts=accounts, start_ms=int(time.time() * 1000), step_ms=1
        )
        return list(generate(spec)), {}
    from models.simulate import SimulationSpec, simulate

    sim = simulate(SimulationSpec(customers=accounts, merchants=max(20, accounts // 10),
                                  days=SIMULATED_DAYS, fraud_rate=0.01, seed=7))  # fmt: skip
    return sim.requests[:requests], sim.is_fraud


def run_demo(
    settings: Settings,
    requests: int,
    accounts: int,
    external: bool = False,
    load_kind: str = "simulated",
) -> int:
    """Run the demo; ``external`` uses the configured brokers and already-running workers."""
    from streams.client import PaymentClient
    from streams.loadgen import DEFAULT_CURRENCIES, fx_rates
    from streams.topics import create_topics

    started: list[Any] = []
    worker = sink = None
    ledger_db: tuple[str, str] | None = None
    log_path = settings.state_dir / "demo-worker.log"
    if not external:
        settings, started = start_infra(settings)
        run = uuid.uuid4().hex[:6]
        settings = settings.replace(topic_prefix=f"demo-{run}.", app_id=f"paystream-demo-{run}")
    try:
        create_topics(settings)
        if not external:
            log_path = settings.state_dir / f"demo-worker-{settings.app_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("wb") as log_file:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker"],
                    env=_worker_env(settings), stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            print(f"worker    pid {worker.pid}, log {log_path}")
            ledger_db = _ledger_database(settings)
            sink_log = settings.state_dir / f"demo-sink-{settings.app_id}.log"
            with sink_log.open("wb") as log_file:
                sink = subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "ledger-sink"],
                    env=_worker_env(settings.replace(database_url=ledger_db[1])),
                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            print(f"sink      pid {sink.pid}, database {ledger_db[0]}, log {sink_log}")
        load, truth = demo_load(load_kind, requests, accounts)
        distinct = {r["request_id"] for r in load}
        with PaymentClient(settings) as client:
            first_ms = min(r["created_at_ms"] for r in load)
            for rate in fx_rates(DEFAULT_CURRENCIES, first_ms):
                client.publish_fx_rate(
                    rate["base"], rate["quote"], rate["rate"], rate["spread_bps"], rate["as_of_ms"]
                )
            client.flush()
            sent_at: dict[str, float] = {}
            t0 = time.monotonic()
            last = 0.0
            for i, request in enumerate(load, 1):
                sent_at.setdefault(request["request_id"], time.monotonic())
                client.submit_request(request)
                if time.monotonic() - last > PROGRESS_EVERY_S:
                    progress("sending", i, len(load), t0)
                    last = time.monotonic()
            client.flush()
            progress("sending", len(load), len(load), t0, final=True)
            decided: dict[str, dict[str, Any]] = {}
            latencies_ms: list[float] = []
            deadline = time.monotonic() + DECISIONS_TIMEOUT_S
            pending = set(distinct)
            while pending and time.monotonic() < deadline:
                if worker is not None and worker.poll() is not None:
                    print(f"\nworker exited with {worker.returncode}; see {log_path}")
                    return 1
                arrived = client.decided(pending, wait_s=0.2)
                decided.update(arrived)  # type: ignore[arg-type]
                now = time.monotonic()
                for rid in arrived:
                    pending.discard(rid)
                    latencies_ms.append((now - sent_at[rid]) * 1000)
                if now - last > PROGRESS_EVERY_S:
                    progress("deciding", len(decided), len(distinct), t0)
                    last = now
            elapsed = time.monotonic() - t0
            progress("deciding", len(decided), len(distinct), t0, final=True)
        _report(load, distinct, decided, latencies_ms, elapsed)
        if truth:
            _report_fraud(decided, truth)
        reconciled = True
        if ledger_db is not None:
            reconciled = _report_ledger(settings.replace(database_url=ledger_db[1]))
        return 0 if not pending and reconciled else 1
    finally:
        for process in (worker, sink):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(WORKER_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
        if ledger_db is not None:
            _drop_database(settings, ledger_db[0])
        for server in reversed(started):
            server.stop()


def _report_fraud(decided: dict[str, dict[str, Any]], truth: dict[str, bool]) -> None:
    """How the serving model did against the simulator's ground truth."""
    fraud = [d for rid, d in decided.items() if truth.get(rid)]
    legit = [d for rid, d in decided.items() if rid in truth and not truth[rid]]

    def flagged(d: dict[str, Any]) -> bool:
        return d["status"] == "REVIEW" or d["decline_code"] == "fraudulent"

    versions = Counter(d["model_version"] for d in decided.values() if d["model_version"])
    caught = sum(map(flagged, fraud))
    false_flags = sum(map(flagged, legit))
    print(f"  fraud (simulated)    {caught} of {len(fraud)} fraudulent payments declined or "
          f"held for review; {false_flags} of {len(legit)} legitimate ones flagged")  # fmt: skip
    print(f"  scored by            {dict(versions)} (rules-v1: no model promoted yet)")


def _ledger_database(settings: Settings) -> tuple[str, str]:
    """A fresh, migrated database for this demo run's ledger (dropped at the end)."""
    from streams.ledger.db import create_database, database_dsn

    name = f"demo_{settings.app_id.rsplit('-', 1)[-1]}"
    return name, create_database(database_dsn(settings), name)


def _drop_database(settings: Settings, name: str) -> None:
    from streams.ledger.db import database_dsn, drop_database

    drop_database(database_dsn(settings), name)


def _report_ledger(settings: Settings) -> bool:
    """Reconcile PostgreSQL with itself and the workers, once the last legs have landed."""
    from streams.ledger.reconcile import reconcile

    assert settings.database_url is not None
    started = time.monotonic()
    while True:
        report = reconcile(settings, settings.database_url, wait_s=LEDGER_CATCH_UP_S)
        if report.ok or time.monotonic() - started > LEDGER_CATCH_UP_S:
            break
        time.sleep(1)  # legs may still be crediting payees: the workers settle shortly
    waited = time.monotonic() - started
    print(f"  ledger (PostgreSQL)  {report.transactions:>8} transactions, {report.entries} entries")
    if report.ok:
        print(f"  ledger reconciled    0 discrepancies, workers included ({waited:.1f} s)")
        return True
    print(f"  ledger NOT reconciled: {len(report.discrepancies)} discrepancies, e.g.")
    for discrepancy in report.discrepancies[:5]:
        print(f"    {discrepancy.line()}")
    return False


def _report(
    load: list[Any], distinct: set[str], decided: dict[str, dict[str, Any]],
    latencies_ms: list[float], elapsed_s: float,
) -> None:  # fmt: skip
    by_outcome = Counter(d["decline_code"] or d["status"] for d in decided.values())
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for d in decided.values():
        by_kind[d["kind"]][d["status"]] += 1
    latencies_ms.sort()
    print()
    print("paystream demo report")
    retries = len(load) - len(distinct)
    print(f"  requests sent        {len(load):>8}  ({len(distinct)} distinct, {retries} retries)")
    print(f"  decisions            {len(decided):>8}  ({len(distinct) - len(decided)} missing)")
    rate = len(decided) / max(elapsed_s, 1e-9)
    print(
        f"  throughput           {rate:>8,.0f} decisions/s over {elapsed_s:.1f} s (send + decide)"
    )
    print(
        f"  latency send->seen   p50 {percentile(latencies_ms, 0.5):.0f} ms  "
        f"p95 {percentile(latencies_ms, 0.95):.0f} ms  "
        f"p99 {percentile(latencies_ms, 0.99):.0f} ms  "
        "(everything is sent at once, so this includes queueing)"
    )
    print("  by outcome:")
    for outcome, count in by_outcome.most_common():
        print(f"    {outcome:<32} {count:>7}")
    print("  by kind:")
    for kind, counts in sorted(by_kind.items()):
        line = "  ".join(f"{status.lower()} {n}" for status, n in sorted(counts.items()))
        print(f"    {kind:<10} {line}")


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    return run_demo(
        settings, args.requests, args.accounts, external=args.external, load_kind=args.load
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the whole pipeline on a simulated load and report"
    )
    demo.add_argument("--requests", type=int, default=5000)
    demo.add_argument("--accounts", type=int, default=500)
    demo.add_argument(
        "--load", choices=("simulated", "synthetic"), default="simulated",
        help="simulated: customers, merchants and fraud (models/simulate.py); synthetic: every "
        "request kind and decline code, several currencies (streams/loadgen.py)",
    )  # fmt: skip
    demo.add_argument(
        "--external",
        action="store_true",
        help="use PAYSTREAM_BROKERS and running workers instead of starting them (docker compose)",
    )
    demo.set_defaults(func=_cmd_demo)
