"""The short form of ``paystream chaos --scenario cluster``: a broker crash under load.

A private three-node KRaft cluster (one JVM per node; replication factor 3,
min.insync.replicas 2) and PostgreSQL run a real pipeline of two workers and the
ledger sink. Under a small load the workers' group coordinator is SIGKILLed, and
restarted once the pipeline has failed over without it; the independent verifier
must then find every invariant held, and the scenario must show that the node
really died and came back, that decisions went on while it was down and that the
pipeline answered on every partition afterwards.

No worker may exit: this is the regression test of pipeline bugs 5 and 6
(RELIABILITY.md), a worker crashing, and legs lost, when the coordinator moved.

The servers live in a ``paystream-cluster-test-*`` directory with an owner pid; a
session killed outright leaves them behind, and the next run of this module stops
them (tests/conftest.py reaps only the single-broker layout, under another prefix).
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

from streams.chaos import ScenarioResult, Size, private_cluster_infra, run_scenario
from streams.dev import pid_alive, read_pid_file
from streams.dev.kafka import KafkaCluster
from streams.dev.postgres import PostgresServer
from streams.errors import InfraError
from streams.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

STATE_PREFIX = "paystream-cluster-test-"
OWNER_FILE = "owner.pid"
SIZE = Size(
    payments=300,
    accounts=40,
    rate_per_s=30.0,  # ten seconds of load: the node dies and is fenced while it runs
    partitions=4,
    outage_s=2.0,
    settle_s=60.0,
    seed=7,
)

log = logging.getLogger(__name__)


def _reap_stale_clusters() -> None:
    """Stop the servers of earlier runs whose owner died without cleaning up."""
    for directory in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        owner = read_pid_file(directory / OWNER_FILE)
        if owner is None or owner == os.getpid() or pid_alive(owner):
            continue
        log.warning("cleaning up %s left by dead test run pid %d", directory, owner)
        for where in (directory, directory / "infra"):
            for stop in (KafkaCluster(where).stop, PostgresServer(where).stop):
                with contextlib.suppress(InfraError):
                    stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _own_state_dir(keep: list[bool]) -> Iterator[Path]:
    """A fresh directory, removed on exit unless ``keep[0]`` was set (logs of a failure)."""
    _reap_stale_clusters()
    directory = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    (directory / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        yield directory
    finally:
        if keep[0]:
            print(f"logs of the failed run kept in {directory} (removed by the next run)")
        else:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def outcome() -> tuple[ScenarioResult, list[int]]:
    """The cluster scenario, run once; and the broker processes left after teardown."""
    if os.environ.get("PAYSTREAM_TEST_BROKERS", "").strip():
        pytest.skip("the cluster scenario kills brokers: it needs a private cluster")
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        log.info("%s", line)

    settings = load_settings(
        {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_TEST_")}
    )
    keep = [True]
    try:
        with _own_state_dir(keep) as work:
            with private_cluster_infra(work / "infra", settings) as infra:
                result = run_scenario("cluster", infra, work, SIZE, emit)
            emit(f"  unexpected worker exits: {result.worker_exits or 'none'}")
            leftovers = infra.cluster.leftover_pids()
            keep[0] = not result.ok or bool(result.worker_exits)
    finally:
        print("\n".join(lines))  # shown by pytest when a test of this module fails
    return result, leftovers


def _describe(result: ScenarioResult) -> str:
    return (
        f"violations {result.violations[:5]}, expectations failed "
        f"{result.expectations_failed[:5]}, unexpected exits {result.worker_exits[:3]}, "
        f"faults {result.faults}, notes {result.notes}"
    )


def test_every_invariant_holds_across_a_broker_crash(
    outcome: tuple[ScenarioResult, list[int]],
) -> None:
    result, _ = outcome

    assert result.violations == [], _describe(result)
    assert result.expectations_failed == [], _describe(result)
    assert result.worker_exits == [], _describe(result)
    assert result.payments_sent == SIZE.payments
    assert result.decided >= SIZE.payments


def test_a_broker_was_killed_and_restarted(outcome: tuple[ScenarioResult, list[int]]) -> None:
    result, _ = outcome
    notes = result.notes

    assert notes["replication_factor"] == 3
    assert notes["min_insync_replicas"] == 2
    (fault,) = result.faults
    assert fault.kind == "broker kill -9, restart", _describe(result)
    assert isinstance(notes["killed_pid"], int)
    assert isinstance(notes["restarted_pid"], int)
    assert notes["restarted_pid"] != notes["killed_pid"]
    assert not pid_alive(notes["killed_pid"])
    assert notes["in_sync_after_restart_s"] is not None, _describe(result)


def test_the_pipeline_went_on_while_the_broker_was_down(
    outcome: tuple[ScenarioResult, list[int]],
) -> None:
    result, _ = outcome
    notes = result.notes

    assert notes["decided_while_down"] > 0, _describe(result)
    # Every partition decided a probe sent after the kill while the node was still
    # down (it is restarted only then), and again after the restart.
    assert notes["every_partition_answered_while_down"], _describe(result)
    assert notes["failover_s"] is not None, _describe(result)
    assert result.faults[0].recovery_s is not None, _describe(result)


def test_no_broker_is_left_running(outcome: tuple[ScenarioResult, list[int]]) -> None:
    _, leftovers = outcome

    assert leftovers == []
