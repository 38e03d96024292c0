"""Session fixtures: a real Kafka broker and a real PostgreSQL server, started on demand.

``kafka_broker`` (has ``.bootstrap``) and ``postgres_server`` (has ``.dsn``) start the
same servers as ``paystream dev up``, on free loopback ports in a fresh temporary state
directory, the first time a test asks for them; tests using them are marked
``@pytest.mark.integration``. They are stopped at session end, also when tests fail,
and on abnormal exit (atexit, SIGTERM, SIGHUP). A session killed outright (SIGKILL,
pytest-timeout's thread method) leaves its directory behind with a dead owner pid; the
next session that starts servers stops and removes such leftovers first.

Escape hatch: with ``PAYSTREAM_TEST_BROKERS`` / ``PAYSTREAM_TEST_DATABASE_URL`` set,
the fixtures hand out those endpoints and start nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from streams.dev import free_loopback_ports, pid_alive, read_pid_file
from streams.dev.kafka import KafkaBroker
from streams.dev.postgres import PostgresServer
from streams.errors import InfraError
from streams.settings import Settings, load_settings

TEST_BROKERS_ENV = "PAYSTREAM_TEST_BROKERS"
TEST_DATABASE_URL_ENV = "PAYSTREAM_TEST_DATABASE_URL"
TEST_ENV_PREFIX = "PAYSTREAM_TEST_"
TEST_STATE_PREFIX = "paystream-test-"
OWNER_FILE = "owner.pid"
TEST_KAFKA_HEAP_MB = 512
"""Tests move little data; half the dev default leaves memory for parallel sessions."""

CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExternalKafka:
    """A broker named by ``PAYSTREAM_TEST_BROKERS``; the session does not manage it."""

    bootstrap: str


@dataclass(frozen=True)
class ExternalPostgres:
    """A database named by ``PAYSTREAM_TEST_DATABASE_URL``; the session does not manage it."""

    dsn: str


class _Cleanup:
    """Stop actions run once each, last registered first: at fixture teardown, at
    interpreter exit, or when the session is terminated by a signal."""

    def __init__(self) -> None:
        self._actions: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._previous_handlers: dict[int, Any] = {}

    def add(self, action: Callable[[], object]) -> Callable[[], object]:
        """Register ``action``; the returned callable runs it now (and unregisters it)."""
        with self._lock:
            self._actions.append(action)

        def run_now() -> None:
            with self._lock:
                if action not in self._actions:
                    return
                self._actions.remove(action)
            _run_logged(action)

        return run_now

    def run_all(self) -> None:
        """Run every registered action, newest first; failures are logged, not raised."""
        while True:
            with self._lock:
                if not self._actions:
                    return
                action = self._actions.pop()
            _run_logged(action)

    def install(self) -> None:
        """Run ``run_all`` at exit and before SIGTERM/SIGHUP take the process down."""
        atexit.register(self.run_all)
        if threading.current_thread() is not threading.main_thread():
            return  # Signal handlers can only be set from the main thread.
        for signum in CLEANUP_SIGNALS:
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.run_all()
        previous = self._previous_handlers.get(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # Now die (or run the previous handler) as intended.


def _run_logged(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # Cleanup must go on with the other servers.
        _logger.exception("test infrastructure cleanup step %r failed", action)


@dataclass(frozen=True)
class _DevSession:
    state_dir: Path
    cleanup: _Cleanup


def _test_settings() -> Settings:
    """Settings from the environment, minus the ``PAYSTREAM_TEST_*`` escape-hatch variables."""
    return load_settings(
        {key: value for key, value in os.environ.items() if not key.startswith(TEST_ENV_PREFIX)}
    )


def _reap_stale_sessions() -> None:
    """Stop servers left by test sessions that died without cleaning up, and remove their dirs."""
    for directory in Path(tempfile.gettempdir()).glob(f"{TEST_STATE_PREFIX}*"):
        owner = read_pid_file(directory / OWNER_FILE)
        if owner is None or owner == os.getpid() or pid_alive(owner):
            continue
        _logger.warning("cleaning up %s left by dead test session pid %d", directory, owner)
        for stop in (KafkaBroker(directory).stop, PostgresServer(directory).stop):
            with contextlib.suppress(InfraError):
                stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def _dev_session() -> Iterator[_DevSession]:
    """A temporary state directory owned by this session, and its cleanup registry."""
    _reap_stale_sessions()
    state_dir = Path(tempfile.mkdtemp(prefix=TEST_STATE_PREFIX))
    (state_dir / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
    cleanup = _Cleanup()
    cleanup.install()
    cleanup.add(lambda: shutil.rmtree(state_dir, ignore_errors=True))  # Runs last.
    yield _DevSession(state_dir, cleanup)
    cleanup.run_all()


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker | ExternalKafka]:
    """A real Kafka broker for the whole session; ``.bootstrap`` is ``127.0.0.1:PORT``."""
    external = os.environ.get(TEST_BROKERS_ENV, "").strip()
    if external:
        yield ExternalKafka(external)
        return
    session: _DevSession = request.getfixturevalue("_dev_session")
    port, controller_port = free_loopback_ports(2)
    broker = KafkaBroker(
        session.state_dir,
        version=_test_settings().kafka_version,
        port=port,
        controller_port=controller_port,
        heap_mb=TEST_KAFKA_HEAP_MB,
    )
    stop = session.cleanup.add(broker.stop)  # Registered first: a half-started broker too.
    broker.start()
    yield broker
    stop()


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer | ExternalPostgres]:
    """A real PostgreSQL server for the whole session; ``.dsn`` names database ``paystream``."""
    external = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if external:
        yield ExternalPostgres(external)
        return
    session: _DevSession = request.getfixturevalue("_dev_session")
    (port,) = free_loopback_ports(1)
    server = PostgresServer(session.state_dir, port=port)
    stop = session.cleanup.add(server.stop)
    server.start()
    yield server
    stop()
