"""The short form of ``paystream chaos``: fault scenarios on one real pipeline, verified.

One pipeline (real ``paystream worker`` processes, the ledger sink, Kafka and
PostgreSQL) runs the scenarios one after the other (``run_phases``); each phase is a
small load with its faults, then the independent verifier. Every phase must end
with no violation, no failed expectation, and its faults actually injected.

The broker and PostgreSQL are private to this module (broker-restart and
postgres-outage stop them), in a ``paystream-test-*`` directory with an owner pid,
so a session killed outright is cleaned up by the next one like the session
servers (tests/conftest.py). With external test servers configured
(``PAYSTREAM_TEST_BROKERS``) nothing local may be started or stopped: the phases
that need no stoppable server run on the session's servers instead.

Two workers, so partitions move: worker-kill (kill -9, the survivor takes over and
the victim comes back) and worker-restart (a graceful restart, a worker added and
removed) are the regression tests of the requests and refunds once lost across
rebalances (RELIABILITY.md, "Pipeline bugs found"; agents/offsets.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.chaos import Infra, ScenarioResult, Size, private_infra, run_phases
from streams.settings import load_settings

# The first test runs every phase (~5 minutes); the default 300 s would be too close.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

# Same names as tests/conftest.py, so a session killed outright is reaped by the next.
STATE_PREFIX = "paystream-test-"
OWNER_FILE = "owner.pid"

NEEDS_OWN_SERVERS = ("broker-restart", "postgres-outage")
SHORT_FORM = (
    "worker-kill",
    "worker-restart",
    "poison",
    "duplicates",
    "broker-restart",
    "postgres-outage",
)
WORKERS = 2
SIZE = Size(
    payments=300,
    accounts=40,
    rate_per_s=60.0,  # 5 s of load: worker-kill's kill (at 4 s) lands under load
    partitions=4,
    fault_every_s=4.0,
    outage_s=4.0,
    settle_s=60.0,
    seed=7,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _own_state_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    (directory / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, ScenarioResult]:
    """Every short-form phase, run once on one pipeline; results by scenario."""
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        log.info("%s", line)

    external = os.environ.get("PAYSTREAM_TEST_BROKERS", "").strip()
    try:
        if external:
            kafka = request.getfixturevalue("kafka_broker")
            postgres = request.getfixturevalue("postgres_server")
            chosen = [n for n in SHORT_FORM if n not in NEEDS_OWN_SERVERS]
            infra = Infra(kafka.bootstrap, postgres.dsn)
            with _own_state_dir() as work:
                done = run_phases(chosen, infra, work, SIZE, workers=WORKERS, emit=emit)
        else:
            # As tests/conftest.py: the environment minus the PAYSTREAM_TEST_* variables.
            settings = load_settings(
                {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_TEST_")}
            )
            with _own_state_dir() as work, private_infra(work, settings) as infra:
                done = run_phases(SHORT_FORM, infra, work, SIZE, workers=WORKERS, emit=emit)
    finally:
        print("\n".join(lines))  # shown by pytest when a test of this module fails
    return {r.scenario: r for r in done}


def _describe(result: ScenarioResult) -> str:
    return (
        f"{result.scenario}: violations {result.violations[:5]}, expectations failed "
        f"{result.expectations_failed[:5]}, unexpected exits {result.worker_exits[:3]}"
    )


@pytest.mark.parametrize("scenario", SHORT_FORM)
def test_scenario_holds_every_invariant(results: dict[str, ScenarioResult], scenario: str) -> None:
    if scenario not in results:
        pytest.skip(f"{scenario} stops the broker or PostgreSQL: not with external servers")
    result = results[scenario]
    assert result.violations == [], _describe(result)
    assert result.expectations_failed == [], _describe(result)
    assert result.worker_exits == [], _describe(result)
    assert result.payments_sent == SIZE.payments
    # Every request and every injected request that must be decided was decided.
    assert result.decided >= SIZE.payments


@pytest.mark.parametrize("scenario", SHORT_FORM)
def test_faults_were_injected(results: dict[str, ScenarioResult], scenario: str) -> None:
    if scenario not in results:
        pytest.skip(f"{scenario} stops the broker or PostgreSQL: not with external servers")
    result = results[scenario]
    if scenario == "poison":
        assert result.injected >= 10, _describe(result)
        assert result.dead_letters > 0
        outcomes = result.notes["poison_outcomes"]
        # Every kind of poison went in at least once (names as in streams/chaos.py).
        assert len(outcomes) >= 15, outcomes
        assert outcomes["oversized message"]["rejected by the broker"] > 0
    elif scenario == "duplicates":
        assert result.injected > 0
        assert result.notes["producer_retries"] > 0
        assert result.notes["same_key_same_payload"] > 0
        assert result.notes["same_key_other_payload"] > 0
        assert result.notes["replayed_requests"] > 0
        assert [f.kind for f in result.faults] == [
            "replay of a time range",
            "replay of the ledger into PostgreSQL",
        ]
    elif scenario == "worker-kill":
        kinds = [f.kind for f in result.faults]
        assert kinds and set(kinds) == {"kill -9"}, _describe(result)
        # Killed under load, and the survivor and the restarted worker decided again.
        assert result.faults[0].at_s < SIZE.payments / SIZE.rate_per_s
        assert result.faults[0].recovery_s is not None, result.faults[0]
    elif scenario == "worker-restart":
        kinds = [f.kind for f in result.faults]
        assert kinds == ["graceful restart", "worker added", "worker removed"], kinds
        assert result.faults[0].recovery_s is not None, result.faults[0]
    else:
        assert len(result.faults) == 1, _describe(result)
        fault = result.faults[0]
        assert fault.down_s >= SIZE.outage_s
        # The pipeline recovered: new requests decided everywhere / the sink caught up.
        assert fault.recovery_s is not None, fault
