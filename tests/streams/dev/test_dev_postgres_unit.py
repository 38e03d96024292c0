"""Unit tests of the PostgreSQL dev server's pure parts (no server is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.dev.postgres import (
    UNIX_SOCKET_PATH_MAX,
    PostgresServer,
    make_dsn,
    postgres_bin_dir,
    render_include_conf,
)
from streams.errors import InfraError


def _conf(text: str) -> dict[str, str]:
    pairs = (
        line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def test_server_listens_on_loopback_only() -> None:
    conf = _conf(render_include_conf(25433, Path("/state/postgres/socket")))

    assert conf["listen_addresses"] == "'127.0.0.1'"
    assert conf["port"] == "25433"
    assert conf["unix_socket_directories"] == "'/state/postgres/socket'"
    assert conf["unix_socket_permissions"] == "0700"


def test_socket_directory_is_quoted_for_postgresql_conf() -> None:
    conf = _conf(render_include_conf(5433, Path("/tmp/it's here")))

    assert conf["unix_socket_directories"] == "'/tmp/it''s here'"


def test_no_socket_directory_means_tcp_only() -> None:
    assert _conf(render_include_conf(5433, None))["unix_socket_directories"] == "''"


def test_too_long_socket_path_falls_back_to_tcp_only(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * UNIX_SOCKET_PATH_MAX)

    assert PostgresServer(deep)._socket_dir_or_none is None
    assert PostgresServer(Path("/s"))._socket_dir_or_none == Path("/s/postgres/socket")


def test_dsn_names_superuser_loopback_port_and_database() -> None:
    assert make_dsn(5433) == "postgresql://postgres@127.0.0.1:5433/paystream"
    assert PostgresServer(Path("/s"), port=25433).dsn == (
        "postgresql://postgres@127.0.0.1:25433/paystream"
    )


def test_bad_port_is_named() -> None:
    with pytest.raises(InfraError, match="postgres port 0 is not a TCP port"):
        PostgresServer(Path("/s"), port=0)


def test_wheel_ships_the_server_binaries() -> None:
    bin_dir = postgres_bin_dir()

    for tool in ("initdb", "pg_ctl", "postgres"):
        assert (bin_dir / tool).is_file()


def test_status_and_stop_of_a_never_started_server(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path, port=25433)

    status = server.status()
    assert (status.running, status.healthy, status.pid) == (False, False, None)
    assert server.stop() == []
