"""A fresh, migrated database per test on the session's real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from streams.ledger.db import create_database, drop_database, migrate


def fresh_database(server_dsn: str) -> tuple[str, str]:
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    return name, create_database(server_dsn, name, migrated=False)


@pytest.fixture
def empty_dsn(postgres_server: object) -> Iterator[str]:
    """A new empty database (no migrations)."""
    server_dsn = postgres_server.dsn  # type: ignore[attr-defined]
    name, dsn = fresh_database(server_dsn)
    yield dsn
    drop_database(server_dsn, name)


@pytest.fixture
def ledger_dsn(empty_dsn: str) -> str:
    """A new database with every migration applied."""
    migrate(empty_dsn)
    return empty_dsn


@pytest.fixture
def own_postgres(request: pytest.FixtureRequest) -> Any:
    """A PostgreSQL server of this test's own, so the test may stop and restart it."""
    import os

    from streams.dev import free_loopback_ports
    from streams.dev.postgres import PostgresServer

    if os.environ.get("PAYSTREAM_TEST_DATABASE_URL", "").strip():
        pytest.skip("stops its own PostgreSQL; not possible with an external database")
    session = request.getfixturevalue("_dev_session")
    (port,) = free_loopback_ports(1)
    server = PostgresServer(session.state_dir / f"own-pg-{port}", port=port)
    stop = session.cleanup.add(server.stop)
    server.start()
    migrate(server.dsn)
    yield server
    stop()
