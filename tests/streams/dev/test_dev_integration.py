"""Integration tests against the real processes: a Kafka broker (JVM) and PostgreSQL.

The first run on a machine downloads the Kafka jars from Maven Central (~50 s with an
empty ~/.m2); later runs use the cache.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.cli import build_parser
from streams.dev import child_pids, free_loopback_ports, kafka, pid_alive
from streams.dev.kafka import KafkaBroker, ensure_jars
from streams.dev.postgres import PostgresServer, read_dev_dsn
from streams.errors import InfraError
from streams.settings import Settings

pytestmark = pytest.mark.integration

ROUND_TRIP_MESSAGES = 20
KAFKA_CALL_TIMEOUT_S = 30.0
"""Bound on each client step (topic creation, flush, the consuming loop)."""

CONSUMER_POLL_S = 0.5


def round_trip(bootstrap: str, messages: int = ROUND_TRIP_MESSAGES) -> list[str]:
    """Create a fresh topic, produce ``messages`` values, read them back through a consumer
    group (committing offsets, which needs the internal offsets topic) and return them."""
    topic = f"dev-round-trip-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=KAFKA_CALL_TIMEOUT_S
    )
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for index in range(messages):
        producer.produce(topic, key=str(index).encode(), value=f"payment-{index}".encode())
    assert producer.flush(KAFKA_CALL_TIMEOUT_S) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dev-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + KAFKA_CALL_TIMEOUT_S
        while len(received) < messages and time.monotonic() < deadline:
            message = consumer.poll(CONSUMER_POLL_S)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert isinstance(value, bytes)
            received.append(value.decode())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return received


def _expected(messages: int = ROUND_TRIP_MESSAGES) -> list[str]:
    return [f"payment-{index}" for index in range(messages)]


def _run(*argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(["dev", *argv])
    code: int = args.func(args, Settings())
    return code


def _no_maven_allowed(version: str) -> tuple[str, ...]:
    raise AssertionError(f"Maven ran for Kafka {version} although its jars were cached")


def test_dev_up_status_round_trip_down_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    version = Settings().kafka_version
    ensure_jars(version)  # The one fetch a fresh machine needs; everything below is warm.
    monkeypatch.setattr(kafka, "_fetch_jars", _no_maven_allowed)
    kafka_port, controller_port, postgres_port = free_loopback_ports(3)
    options = (
        "--state-dir",
        str(tmp_path),
        "--kafka-port",
        str(kafka_port),
        "--kafka-controller-port",
        str(controller_port),
        "--postgres-port",
        str(postgres_port),
    )
    try:
        assert _run("up", *options) == 0
        out = capsys.readouterr().out
        assert f"kafka {version} ready on 127.0.0.1:{kafka_port} in " in out
        assert "jars fetched" not in out
        assert f"ready on 127.0.0.1:{postgres_port} in " in out
        dsn = f"postgresql://postgres@127.0.0.1:{postgres_port}/paystream"
        assert f"dsn {dsn}" in out
        assert (tmp_path / "postgres" / "dsn").read_text().strip() == dsn

        assert _run("status", *options) == 0
        assert capsys.readouterr().out.count("healthy") == 2

        assert _run("up", *options) == 0  # Idempotent: a healthy stack is left alone.
        assert capsys.readouterr().out.count("already running") == 2
        assert read_dev_dsn(tmp_path) == dsn
        (other_port,) = free_loopback_ports(1)
        with pytest.raises(InfraError, match=f"already runs on 127.0.0.1:{kafka_port}"):
            _run("up", *options, "--kafka-port", str(other_port))

        assert round_trip(f"127.0.0.1:{kafka_port}") == _expected()

        broker = KafkaBroker(tmp_path, port=kafka_port, controller_port=controller_port)
        server = PostgresServer(tmp_path, port=postgres_port)
        broker_pid = broker.running_pid()
        postmaster_pid = server.running_pid()
        assert broker_pid is not None and postmaster_pid is not None
        server_pids = [postmaster_pid, *child_pids(postmaster_pid)]
    finally:
        down_code = _run("down", *options)

    assert down_code == 0
    assert "stopped" in capsys.readouterr().out
    assert not pid_alive(broker_pid)
    assert [pid for pid in server_pids if pid_alive(pid)] == []
    assert broker.leftover_pids() == [] and server.leftover_pids() == []
    assert _run("status", *options) == 1
    assert read_dev_dsn(tmp_path) is None
    assert _run("down", "--wipe", *options) == 0  # Idempotent, and wipes the data.
    assert capsys.readouterr().out.count("was not running") == 2
    assert not (tmp_path / "kafka").exists() and not (tmp_path / "postgres").exists()


def test_second_start_reuses_cached_jars_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = Settings().kafka_version
    ensure_jars(version)
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))  # Neither mvn nor java.

    started = time.monotonic()
    cache = ensure_jars(version)
    took_s = time.monotonic() - started

    assert not cache.fetched
    assert cache.fetch_s == 0.0
    assert took_s < 1.0, f"reading the jar cache took {took_s:.2f} s"
    assert f"kafka_2.13-{version}.jar" in cache.jars


def test_broker_that_dies_at_startup_is_reported_with_its_log(tmp_path: Path) -> None:
    port, controller_port = free_loopback_ports(2)
    broker = KafkaBroker(tmp_path, port=port, controller_port=controller_port, heap_mb=512)
    # A log directory "formatted" for another node: the JVM comes up, then refuses it.
    (broker.home / "data").mkdir(parents=True)
    (broker.home / "data" / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAQ\n"
    )

    with pytest.raises(InfraError) as caught:
        broker.start()

    message = str(caught.value)
    assert "exited during startup" in message
    assert str(broker.log_path) in message
    assert "node" in message.split("\n", 1)[1]  # The log tail says what went wrong.
    assert broker.leftover_pids() == []
    assert not broker.pid_path.exists()


def test_postgres_start_sql_stop_leaves_no_process(tmp_path: Path) -> None:
    (port,) = free_loopback_ports(1)
    server = PostgresServer(tmp_path, port=port)
    try:
        first = server.start()
        assert not first.already_running and first.initialized
        with psycopg.connect(server.dsn) as connection:
            connection.execute("CREATE TABLE ledger (id integer PRIMARY KEY, amount_minor bigint)")
            connection.execute("INSERT INTO ledger VALUES (1, 12345), (2, -12345)")
        with psycopg.connect(server.dsn) as connection:
            rows = connection.execute("SELECT id, amount_minor FROM ledger ORDER BY id").fetchall()
        assert rows == [(1, 12345), (2, -12345)]
        assert server.start().already_running
        pids = [first.pid, *child_pids(first.pid)]
        assert len(pids) > 1
        server.stop()
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert server.leftover_pids() == []

        again = server.start()  # Data survives a restart; initdb does not run twice.
        assert not again.initialized
        with psycopg.connect(server.dsn) as connection:
            total = connection.execute("SELECT sum(amount_minor) FROM ledger").fetchone()
        assert total == (0,)
    finally:
        server.stop()
    assert server.leftover_pids() == []
    assert not (tmp_path / "postgres" / "dsn").exists()


def test_kafka_broker_fixture_round_trip(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.bootstrap.startswith("127.0.0.1:")
    assert round_trip(kafka_broker.bootstrap) == _expected()


def test_postgres_server_fixture_serves_the_paystream_database(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.dsn) as connection:
        row = connection.execute("SELECT current_database(), current_user").fetchone()
    assert row == ("paystream", "postgres")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as a service user")
def test_postgres_under_root_runs_as_service_user(postgres_server: PostgresServer) -> None:
    if not isinstance(postgres_server, PostgresServer):
        pytest.skip("PAYSTREAM_TEST_DATABASE_URL points at an external server")
    pid = postgres_server.running_pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid != 0
