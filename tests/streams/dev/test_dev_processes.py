"""Unit tests of the process and file helpers shared by the dev servers."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.dev import (
    find_pids,
    free_loopback_ports,
    log_tail,
    pid_alive,
    pid_is_ours,
    port_in_use,
    read_json_state,
    read_pid_file,
    terminate,
    user_cache_dir,
    write_json_state,
)

SLEEPER_LIFETIME_S = 30
IGNORE_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    f"time.sleep({SLEEPER_LIFETIME_S})\n"
)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process carrying a state-directory-like path among its arguments."""
    marker = str(tmp_path / "state" / "kafka" / "server.properties")
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORE_SIGTERM, marker], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    yield process, marker
    process.kill()
    process.wait()


def test_a_process_is_recognised_by_a_whole_argument(
    sleeper: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, marker = sleeper

    assert pid_alive(process.pid)
    assert pid_is_ours(process.pid, marker)
    assert process.pid in find_pids(marker)
    # A path that merely contains, or is contained in, the argument is someone else's.
    assert not pid_is_ours(process.pid, str(tmp_path))
    assert not pid_is_ours(process.pid, "/elsewhere" + marker)
    assert process.pid not in find_pids(str(tmp_path / "state"))


def test_terminate_escalates_to_sigkill(sleeper: tuple[subprocess.Popen[str], str]) -> None:
    process, marker = sleeper

    assert terminate(process.pid, grace_s=0.3)

    assert not pid_alive(process.pid)
    assert find_pids(marker) == []


def test_terminate_of_a_gone_pid_is_fine(sleeper: tuple[subprocess.Popen[str], str]) -> None:
    process, _marker = sleeper
    process.kill()
    process.wait()

    assert terminate(process.pid, grace_s=0.1)


def test_port_in_use_sees_listeners_only() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_in_use(listener.getsockname()[1])
    (free,) = free_loopback_ports(1)
    assert not port_in_use(free)


def test_free_ports_are_distinct() -> None:
    ports = free_loopback_ports(5)

    assert len(set(ports)) == 5


def test_state_files_round_trip_and_reject_garbage(tmp_path: Path) -> None:
    write_json_state(tmp_path / "state.json", {"pid": 42, "port": 9092})
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{not json")

    assert read_json_state(tmp_path / "state.json") == {"pid": 42, "port": 9092}
    assert read_json_state(tmp_path / "list.json") is None
    assert read_json_state(tmp_path / "broken.json") is None
    assert read_json_state(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    ("content", "pid"), [("123\n", 123), ("123\n/data\n5433\n", 123), ("x\n", None), ("-5", None)]
)
def test_pid_files_are_read_defensively(tmp_path: Path, content: str, pid: int | None) -> None:
    (tmp_path / "pid").write_text(content)

    assert read_pid_file(tmp_path / "pid") == pid


def test_log_tail_quotes_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("".join(f"line {index}\n" for index in range(100)))

    assert log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert "no log" in log_tail(tmp_path / "missing.log")


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == tmp_path

    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert user_cache_dir() == Path.home() / ".cache"
