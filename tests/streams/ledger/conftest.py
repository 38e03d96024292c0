"""A fresh, migrated database per test on the session's real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streams.ledger.db import migrate


def fresh_database(server_dsn: str) -> tuple[str, str]:
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    params = conninfo_to_dict(server_dsn)
    params["dbname"] = name
    return name, make_conninfo(**params)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
