"""Apache Kafka on loopback: a single KRaft node, or a cluster of several (one JVM each).

Every node is a combined broker and controller. ``KafkaBroker`` is one node: alone
(``paystream dev up``, the test session) it is its own one-voter quorum; given a
``ClusterMembership`` it is one node of a ``KafkaCluster``, whose nodes share a cluster
id and a static quorum of every node's controller (``controller.quorum.voters``).

Machines without Docker still get the real broker: its jars are published on Maven
Central, so ``ensure_jars`` renders a throwaway pom (``kafka.pom``) and lets Maven copy
the runtime dependencies into the user's cache directory once per Kafka version. Every
later start uses those jars and needs neither Maven nor the network.

A node's files live under ``<state_dir>/kafka/``: ``server.properties``, the
formatted log directory ``data/``, ``broker.log``, ``broker.pid`` and ``state.json``.
The log directory is formatted once and kept across ``down``/``up`` (like PostgreSQL's
data directory); ``paystream dev down --wipe`` removes it. A cluster keeps node ``N``
under ``<state_dir>/kafka-cluster/node-N/kafka/``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streams.dev import (
    KILL_WAIT_S,
    LOOPBACK_HOST,
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
    wait_for_exit,
    write_json_state,
    write_text_atomic,
)
from streams.errors import InfraError
from streams.settings import Settings

if TYPE_CHECKING:
    # confluent_kafka is imported lazily at run time: `paystream --help` must not pay for it.
    from confluent_kafka.admin import AdminClient

_DEFAULTS = Settings()
"""Constructor defaults come from the one place defaults are set."""

KAFKA_ARTIFACT = "kafka_2.13"
LOG4J_VERSION = "2.24.3"
JAVA_MAJOR_MIN = 17
BROKER_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
NODE_ID = 1
INSTALL_HINT = "install openjdk-17-jdk-headless and maven, or use `docker compose up`"

HEAP_INITIAL_MB = 256
"""-Xms of the broker JVM; also the smallest -Xmx accepted."""

JAVA_PROBE_TIMEOUT_S = 30.0
"""Longest `java -version` may take (a cold JVM on a loaded machine is slow, not this slow)."""

MAVEN_FETCH_TIMEOUT_S = 900.0
"""Longest the one-time jar download may take (~50 s measured on a fresh ~/.m2)."""

JAR_LOCK_TIMEOUT_S = MAVEN_FETCH_TIMEOUT_S + 60.0
"""Longest to wait for another process that is fetching the same version's jars."""

JAR_LOCK_POLL_INTERVAL_S = 0.5

FORMAT_TIMEOUT_S = 120.0
"""Longest `StorageTool format` may take (one JVM start, ~2 s measured)."""

READY_TIMEOUT_S = 60.0
"""Longest from spawning the JVM until the broker answers a metadata request (~7 s measured)."""

READY_POLL_INTERVAL_S = 0.25

ADMIN_REQUEST_TIMEOUT_S = 2.0
"""Timeout of one metadata request while waiting for readiness."""

HEALTH_TIMEOUT_S = 3.0
"""Timeout of the metadata request `status` uses to call a broker healthy."""

RECONNECT_BACKOFF_MS = 100
RECONNECT_BACKOFF_MAX_MS = 500
"""librdkafka's default backoff grows to 10 s, which would hide a broker that just came up."""

STOP_GRACE_S = 20.0
"""Time between SIGTERM and SIGKILL; a clean single-node shutdown takes a few seconds."""

CLUSTER_ID_ATTEMPTS_MAX = 16
"""Random cluster ids drawn before giving up (Kafka rejects ids starting with '-', p=1/64)."""

CLUSTER_NODES_DEFAULT = 3
"""Nodes of a local cluster: the smallest quorum that survives the loss of one node."""

CLUSTER_NODES_MIN = 3

CLUSTER_MIN_INSYNC_REPLICAS = 2
"""With replication factor 3 and acks=all, a write is on two nodes before it is
acknowledged, and one node may be down without stopping writes."""

CLUSTER_READY_TIMEOUT_S = 180.0
"""Longest for every node of a freshly spawned cluster to answer (three JVMs starting at
once on a loaded 2-core machine; ~20 s measured)."""

PORTS_RELEASE_WAIT_S = 15.0
"""How long a crashed node's loopback ports may stay taken before its restart fails
(seen: a few seconds after SIGKILL, with every client of the cluster reconnecting)."""

CLUSTER_STATUS_TIMEOUT_S = 10.0
"""Timeout of one metadata or describe request on a cluster."""

_VERSION_PATTERN = re.compile(r"\d+\.\d+\.\d+(?:[.-][A-Za-z0-9]+)*")
_JAVA_VERSION_PATTERN = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Pure pieces: version parsing and file rendering.


def parse_java_major_version(version_output: str) -> int | None:
    """The Java major version in ``java -version`` output (``1.8.0`` is 8), or None."""
    match = _JAVA_VERSION_PATTERN.search(version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


@dataclass(frozen=True)
class ClusterMembership:
    """What makes a node one of several: its id, every voter, the shared cluster id.

    ``voters`` holds ``(node id, controller port)`` of every controller of the static
    quorum (here: every node). Topics get replication factor ``len(voters)`` unless
    created with another, and ``min_insync_replicas``.
    """

    node_id: int
    voters: tuple[tuple[int, int], ...]
    cluster_id: str
    min_insync_replicas: int = CLUSTER_MIN_INSYNC_REPLICAS

    def __post_init__(self) -> None:
        ids = [node_id for node_id, _ in self.voters]
        ports = [port for _, port in self.voters]
        if len(set(ids)) != len(ids) or len(set(ports)) != len(ports):
            raise InfraError(f"cluster voters {self.voters} repeat a node id or a port")
        if self.node_id not in ids:
            raise InfraError(f"node {self.node_id} is not among the voters {self.voters}")
        if not 1 <= self.min_insync_replicas <= len(self.voters):
            raise InfraError(
                f"min.insync.replicas {self.min_insync_replicas} is not in 1..{len(self.voters)} "
                f"for a cluster of {len(self.voters)} nodes"
            )

    @property
    def replication_factor(self) -> int:
        return len(self.voters)

    @property
    def controller_port(self) -> int:
        return dict(self.voters)[self.node_id]

    def quorum_voters(self) -> str:
        """``controller.quorum.voters``: ``id@host:port`` of every voter, by node id."""
        return ",".join(
            f"{node_id}@{LOOPBACK_HOST}:{port}" for node_id, port in sorted(self.voters)
        )


def render_server_properties(
    port: int, controller_port: int, log_dir: Path, membership: ClusterMembership | None = None
) -> str:
    """``server.properties`` for one combined broker+controller node on 127.0.0.1.

    Alone (no ``membership``), internal topics get replication factor 1 and min ISR 1:
    their defaults (3 and 2) make group coordination and transactions impossible on a
    single node. In a cluster, internal topics and topics created without an explicit
    factor are replicated to every node, and ``min.insync.replicas`` is set broker-wide,
    so every topic inherits it. Topics are created explicitly, so auto-creation is off
    to surface misspelt names.
    """
    if membership is not None and membership.controller_port != controller_port:
        raise InfraError(
            f"node {membership.node_id}: controller port {controller_port} is not its "
            f"voter entry {membership.quorum_voters()}"
        )
    log_dir_text = str(log_dir).replace("\\", "\\\\")
    node_id = NODE_ID if membership is None else membership.node_id
    voters = (
        f"{NODE_ID}@{LOOPBACK_HOST}:{controller_port}"
        if membership is None
        else membership.quorum_voters()
    )
    replicas = 1 if membership is None else membership.replication_factor
    min_isr = 1 if membership is None else membership.min_insync_replicas
    properties = [
        ("process.roles", "broker,controller"),
        ("node.id", str(node_id)),
        ("controller.quorum.voters", voters),
        (
            "listeners",
            f"PLAINTEXT://{LOOPBACK_HOST}:{port},CONTROLLER://{LOOPBACK_HOST}:{controller_port}",
        ),
        ("advertised.listeners", f"PLAINTEXT://{LOOPBACK_HOST}:{port}"),
        ("controller.listener.names", "CONTROLLER"),
        ("inter.broker.listener.name", "PLAINTEXT"),
        ("listener.security.protocol.map", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
        ("log.dirs", log_dir_text),
        ("num.partitions", "1"),
        ("auto.create.topics.enable", "false"),
        ("offsets.topic.replication.factor", str(replicas)),
        ("transaction.state.log.replication.factor", str(replicas)),
        ("transaction.state.log.min.isr", str(min_isr)),
        ("share.coordinator.state.topic.replication.factor", str(replicas)),
        ("share.coordinator.state.topic.min.isr", str(min_isr)),
        ("group.initial.rebalance.delay.ms", "0"),
    ]
    if membership is not None:
        properties += [
            ("default.replication.factor", str(replicas)),
            ("min.insync.replicas", str(min_isr)),
            # A replica that was not in sync never becomes leader: no acknowledged write lost.
            ("unclean.leader.election.enable", "false"),
        ]
    header = "# Written by paystream (streams/dev/kafka.py) at every start; edits are lost.\n"
    return header + "".join(f"{key}={value}\n" for key, value in properties)


def render_pom(kafka_version: str) -> str:
    """The packaged ``kafka.pom`` template with the Kafka and log4j versions filled in."""
    template = (Path(__file__).parent / "kafka.pom").read_text(encoding="utf-8")
    rendered = template.replace("@KAFKA_VERSION@", kafka_version).replace(
        "@LOG4J_VERSION@", LOG4J_VERSION
    )
    leftover = re.search(r"@[A-Z0-9_]+@", rendered)
    assert leftover is None, f"kafka.pom has an unknown placeholder {leftover.group(0)}"
    return rendered


def new_cluster_id() -> str:
    """A random KRaft cluster id in Kafka's format (22 url-safe base64 chars, no leading '-')."""
    for _ in range(CLUSTER_ID_ATTEMPTS_MAX):
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text
    raise AssertionError(f"{CLUSTER_ID_ATTEMPTS_MAX} random cluster ids all started with '-'")


def log4j_config_path() -> Path:
    """The packaged log4j2 configuration the broker JVM logs with."""
    return Path(__file__).parent / "log4j2.xml"


# ---------------------------------------------------------------------------
# Java and Maven.


def find_java() -> Path | None:
    """The java executable: ``$JAVA_HOME/bin/java`` when set, else the first on PATH."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    return Path(found) if found else None


def check_java() -> Path:
    """The java executable, after checking it is Java 17 or newer; InfraError in one line if not."""
    java = find_java()
    if java is None:
        raise InfraError(f"Kafka needs Java {JAVA_MAJOR_MIN}+ (java not found): {INSTALL_HINT}")
    try:
        probe = subprocess.run(
            [str(java), "-version"],
            capture_output=True,
            text=True,
            timeout=JAVA_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(
            f"Kafka needs Java {JAVA_MAJOR_MIN}+ ({java} -version failed: {exc}): {INSTALL_HINT}"
        ) from exc
    major = parse_java_major_version(probe.stderr + probe.stdout)
    if major is None:
        first_line = (probe.stderr + probe.stdout).strip().splitlines()[:1]
        raise InfraError(
            f"Kafka needs Java {JAVA_MAJOR_MIN}+ (cannot read the version of {java}: "
            f"{first_line[0] if first_line else 'no output'!r}): {INSTALL_HINT}"
        )
    if major < JAVA_MAJOR_MIN:
        raise InfraError(f"Kafka needs Java {JAVA_MAJOR_MIN}+ (found {major}): {INSTALL_HINT}")
    return java


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (bounded wait), so two processes
    never fetch into the same cache directory at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with lock_path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InfraError(
                        f"{lock_path} stayed locked for {timeout_s:.0f} s (another process is "
                        "fetching Kafka jars): wait for it or remove the lock file"
                    ) from None
                time.sleep(JAR_LOCK_POLL_INTERVAL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class JarCache:
    """The broker classpath directory for one Kafka version, and how it was obtained."""

    directory: Path
    jars: tuple[str, ...]
    fetched: bool
    """True when Maven ran during this call; False when the cache was complete already."""
    fetch_s: float


def kafka_cache_dir(version: str) -> Path:
    """Where one Kafka version's pom, jars and completion marker are cached."""
    return user_cache_dir() / "paystream" / "kafka" / version


def ensure_jars(version: str) -> JarCache:
    """The cached broker jars of ``version``, fetched with Maven first if not complete.

    The marker ``jars.complete`` (a JSON list of the jar names) is written only after
    Maven succeeded and the jars were moved into place, so an interrupted download is
    redone. A complete cache never runs Maven and needs no network.
    """
    cache_dir = kafka_cache_dir(version)
    cached = _read_complete_cache(cache_dir, version)
    if cached is not None:
        return JarCache(cache_dir / "jars", cached, fetched=False, fetch_s=0.0)
    with _exclusive_lock(cache_dir / ".lock", JAR_LOCK_TIMEOUT_S):
        cached = _read_complete_cache(cache_dir, version)  # Another process may have finished.
        if cached is not None:
            return JarCache(cache_dir / "jars", cached, fetched=False, fetch_s=0.0)
        started = time.monotonic()
        jars = _fetch_jars(cache_dir, version)
        return JarCache(cache_dir / "jars", jars, fetched=True, fetch_s=time.monotonic() - started)


def _marker_path(cache_dir: Path) -> Path:
    return cache_dir / "jars.complete"


def _read_complete_cache(cache_dir: Path, version: str) -> tuple[str, ...] | None:
    """The jar names when the marker exists and every jar it lists is present, else None."""
    state = read_json_state(_marker_path(cache_dir))
    if state is None or state.get("kafka_version") != version:
        return None
    jars = state.get("jars")
    if not isinstance(jars, list) or f"{KAFKA_ARTIFACT}-{version}.jar" not in jars:
        return None
    jar_dir = cache_dir / "jars"
    if not all(isinstance(name, str) and (jar_dir / name).is_file() for name in jars):
        return None
    return tuple(jars)


def _fetch_jars(cache_dir: Path, version: str) -> tuple[str, ...]:
    """Run Maven into a staging directory, move it into place, then write the marker."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            f"Fetching Kafka {version} from Maven Central needs Maven (mvn not found): "
            f"{INSTALL_HINT}"
        )
    check_java()  # Maven needs a JVM too; say so in our words rather than Maven's.
    marker = _marker_path(cache_dir)
    marker.unlink(missing_ok=True)
    staging = cache_dir / "jars.partial"
    final = cache_dir / "jars"
    for stale in (staging, final):
        shutil.rmtree(stale, ignore_errors=True)
    pom = cache_dir / "pom.xml"
    write_text_atomic(pom, render_pom(version))
    mvn_log = cache_dir / "mvn.log"
    command = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    _logger.info("fetching Kafka %s jars: %s", version, " ".join(command))
    with mvn_log.open("wb") as log:
        try:
            result = subprocess.run(
                command,
                cwd=cache_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MAVEN_FETCH_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"mvn did not fetch Kafka {version} within {MAVEN_FETCH_TIMEOUT_S:.0f} s: check "
                f"access to Maven Central and retry; Maven's output is in {mvn_log}"
            ) from exc
    if result.returncode != 0:
        raise InfraError(
            f"mvn could not fetch Kafka {version} (exit {result.returncode}); check the version "
            f"and access to Maven Central, then retry. Maven said:\n{log_tail(mvn_log)}"
        )
    jars = tuple(sorted(path.name for path in staging.glob("*.jar")))
    if f"{KAFKA_ARTIFACT}-{version}.jar" not in jars:
        raise InfraError(
            f"mvn finished but {staging} has no {KAFKA_ARTIFACT}-{version}.jar "
            f"({len(jars)} jars): remove {cache_dir} and retry"
        )
    os.replace(staging, final)
    write_json_state(marker, {"kafka_version": version, "jars": list(jars)})
    return jars


# ---------------------------------------------------------------------------
# The broker.


@dataclass(frozen=True)
class KafkaStart:
    """What ``KafkaBroker.start`` did."""

    already_running: bool
    pid: int
    bootstrap: str
    elapsed_s: float
    """From the call until the broker answered (includes a jar fetch if one happened)."""
    jars: JarCache | None
    """None when the broker was already running."""


@dataclass(frozen=True)
class KafkaStatus:
    """What ``KafkaBroker.status`` found; ``healthy`` means it answered a metadata request."""

    version: str
    pid: int | None
    port: int
    controller_port: int
    bootstrap: str
    log_path: Path
    running: bool
    healthy: bool
    detail: str


class KafkaBroker:
    """One local Kafka node whose files live in ``<state_dir>/kafka/``.

    ``start`` is idempotent (a healthy broker is left alone) and ``stop`` leaves no
    broker process of this state directory behind, including strays whose pid file
    was lost. Processes are recognised by the absolute ``server.properties`` path on
    their command line, so a recycled pid is never signalled.

    Without ``membership`` the node is a cluster of its own; with it, one node of a
    ``KafkaCluster`` (which starts its nodes together: a node answers only once a
    quorum of controllers is up).
    """

    def __init__(
        self,
        state_dir: Path,
        version: str = _DEFAULTS.kafka_version,
        port: int = _DEFAULTS.kafka_port,
        controller_port: int = _DEFAULTS.kafka_controller_port,
        heap_mb: int = _DEFAULTS.kafka_heap_mb,
        membership: ClusterMembership | None = None,
    ) -> None:
        if not _VERSION_PATTERN.fullmatch(version):
            raise InfraError(
                f"Kafka version {version!r} is not a release number like 4.1.1: "
                "set PAYSTREAM_KAFKA_VERSION to one published on Maven Central"
            )
        for name, value in (("kafka port", port), ("kafka controller port", controller_port)):
            if not 1 <= value <= 65535:
                raise InfraError(f"{name} {value} is not a TCP port: pick one in 1..65535")
        if port == controller_port:
            raise InfraError(
                f"kafka port and controller port are both {port}: give them different values"
            )
        if heap_mb < HEAP_INITIAL_MB:
            raise InfraError(
                f"kafka heap {heap_mb} MB is below the {HEAP_INITIAL_MB} MB minimum: "
                f"set PAYSTREAM_KAFKA_HEAP_MB to at least {HEAP_INITIAL_MB}"
            )
        if membership is not None and membership.controller_port != controller_port:
            raise InfraError(
                f"node {membership.node_id}: controller port {controller_port} is not its "
                f"voter entry in {membership.quorum_voters()}"
            )
        self.version = version
        self.port = port
        self.controller_port = controller_port
        self.heap_mb = heap_mb
        self.membership = membership
        self.node_id = NODE_ID if membership is None else membership.node_id
        self.home = Path(state_dir).resolve() / "kafka"
        self.server_properties = self.home / "server.properties"
        self.log_dir = self.home / "data"
        self.log_path = self.home / "broker.log"
        self.pid_path = self.home / "broker.pid"
        self.state_path = self.home / "state.json"

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaBroker:
        """The broker ``paystream dev`` manages for these settings."""
        return cls(
            settings.state_dir,
            version=settings.kafka_version,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            heap_mb=settings.kafka_heap_mb,
        )

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{LOOPBACK_HOST}:{self.port}"

    @property
    def _marker(self) -> str:
        """The string that identifies this broker's processes on their command line."""
        return str(self.server_properties)

    def ensure_jars(self) -> JarCache:
        """The cached jars of this broker's version, fetched once with Maven if needed."""
        return ensure_jars(self.version)

    def running_pid(self) -> int | None:
        """The pid of this state directory's live broker, or None."""
        pid = read_pid_file(self.pid_path)
        if pid is not None and pid_is_ours(pid, self._marker):
            return pid
        strays = find_pids(self._marker)
        return strays[0] if strays else None

    def start(self, timeout_s: float = READY_TIMEOUT_S, ports_wait_s: float = 0.0) -> KafkaStart:
        """Start the broker and wait until it answers; a no-op when it already does.

        ``ports_wait_s`` is how long its ports may stay taken before that is an error
        (a node restarted right after a crash: its loopback ports can be busy briefly).
        """
        started = time.monotonic()
        pid = self.running_pid()
        if pid is not None:
            self._check_running_ports(pid)
            if self._wait_ready(pid, timeout_s, spawned=False):
                return KafkaStart(True, pid, self.bootstrap, time.monotonic() - started, None)
            _logger.warning(
                "kafka pid %d does not answer on %s; restarting it", pid, self.bootstrap
            )
            self.stop()
        pid, jars = self.spawn(ports_wait_s)
        self.wait_ready(pid, timeout_s)
        return KafkaStart(False, pid, self.bootstrap, time.monotonic() - started, jars)

    def spawn(self, ports_wait_s: float = 0.0) -> tuple[int, JarCache]:
        """Write the configuration, format a new log directory, launch the JVM; no waiting.

        ``start`` is spawn plus ``wait_ready``. A cluster spawns every node before it
        waits for any, since a node answers only once a quorum of controllers is up.
        """
        self._check_ports_free(ports_wait_s)
        java = check_java()
        jars = self.ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            self.server_properties,
            render_server_properties(
                self.port, self.controller_port, self.log_dir, self.membership
            ),
        )
        self._format_if_needed(java, jars.directory)
        return self._spawn(java, jars.directory), jars

    def wait_ready(self, pid: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the JVM ``spawn`` launched answers; InfraError (and stopped) if not."""
        self._wait_ready(pid, timeout_s, spawned=True)

    def kill(self) -> int | None:
        """SIGKILL the running broker, as a crash would (no controlled shutdown, no flush).

        Returns its pid, or None when none was running. The files stay: ``start``
        brings the node back, recovering its log as after a power cut.
        """
        pid = self.running_pid()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not wait_for_exit(pid, KILL_WAIT_S):
            raise InfraError(
                f"kafka pid {pid} survived SIGKILL: check `ps -p {pid}` (uninterruptible I/O?)"
            )
        return pid

    def stop(self) -> list[int]:
        """Stop every broker process of this state directory; the pids that were stopped."""
        pids = set(find_pids(self._marker))
        for candidate in (read_pid_file(self.pid_path), self._state_pid()):
            if candidate is not None and pid_is_ours(candidate, self._marker):
                pids.add(candidate)
        survivors = [pid for pid in sorted(pids) if not terminate(pid, STOP_GRACE_S)]
        if survivors:
            raise InfraError(
                f"kafka pid(s) {survivors} survived SIGKILL: check `ps -p "
                f"{','.join(map(str, survivors))}` (uninterruptible I/O?) and retry"
            )
        self.pid_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return sorted(pids)

    def leftover_pids(self) -> list[int]:
        """Live processes of this state directory's broker (empty after a clean ``stop``)."""
        return find_pids(self._marker)

    def wipe(self) -> None:
        """Delete the broker's files (topics included); the broker must be stopped."""
        pid = self.running_pid()
        if pid is not None:
            raise InfraError(f"kafka pid {pid} still runs in {self.home}: stop it before wiping")
        shutil.rmtree(self.home, ignore_errors=True)

    def status(self) -> KafkaStatus:
        """Pid, ports and health of this state directory's broker (changes nothing)."""
        state = read_json_state(self.state_path) or {}
        port = _int_or(state.get("port"), self.port)
        controller_port = _int_or(state.get("controller_port"), self.controller_port)
        bootstrap = f"{LOOPBACK_HOST}:{port}"
        pid = self.running_pid()
        healthy = pid is not None and _metadata_answers(bootstrap, HEALTH_TIMEOUT_S)
        if pid is None:
            stale = read_pid_file(self.pid_path)
            detail = f"not running (stale pid file names {stale})" if stale else "not running"
        elif healthy:
            detail = "healthy"
        else:
            detail = f"running but not answering on {bootstrap}; see {self.log_path}"
        return KafkaStatus(
            version=str(state.get("version", self.version)),
            pid=pid,
            port=port,
            controller_port=controller_port,
            bootstrap=bootstrap,
            log_path=self.log_path,
            running=pid is not None,
            healthy=healthy,
            detail=detail,
        )

    # -- start helpers -------------------------------------------------------

    def _state_pid(self) -> int | None:
        state = read_json_state(self.state_path) or {}
        pid = state.get("pid")
        return pid if isinstance(pid, int) and pid > 0 else None

    def _check_running_ports(self, pid: int) -> None:
        state = read_json_state(self.state_path) or {}
        running_port = state.get("port")
        if isinstance(running_port, int) and running_port != self.port:
            raise InfraError(
                f"kafka already runs on {LOOPBACK_HOST}:{running_port} (pid {pid}) from "
                f"{self.home}, not on port {self.port}: run `paystream dev down` first "
                "or use that port"
            )

    def _check_ports_free(self, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        for name, port in (("kafka", self.port), ("kafka controller", self.controller_port)):
            while port_in_use(port) and time.monotonic() < deadline:
                time.sleep(READY_POLL_INTERVAL_S)
            if port_in_use(port):
                raise InfraError(
                    f"{name} port {port} on {LOOPBACK_HOST} is taken by another process: "
                    "stop it or choose another port (--kafka-port, PAYSTREAM_KAFKA_PORT, "
                    "PAYSTREAM_KAFKA_CONTROLLER_PORT)"
                )

    def _java_command(self, java: Path, jar_dir: Path, main_class: str) -> list[str]:
        # The classpath wildcard is expanded by java itself (no shell is involved).
        return [
            str(java),
            f"-Dlog4j2.configurationFile={log4j_config_path()}",
            "-Djava.awt.headless=true",
            "-cp",
            str(jar_dir / "*"),
            main_class,
        ]

    def _format_if_needed(self, java: Path, jar_dir: Path) -> None:
        """Format the log directory with a new cluster id unless it holds a formatted one."""
        if (self.log_dir / "meta.properties").is_file():
            return
        shutil.rmtree(self.log_dir, ignore_errors=True)  # Half-formatted: start over.
        cluster_id = new_cluster_id() if self.membership is None else self.membership.cluster_id
        command = [
            *self._java_command(java, jar_dir, STORAGE_TOOL_CLASS),
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        ]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"formatting {self.log_dir} took over {FORMAT_TIMEOUT_S:.0f} s: "
                "check the machine's load and retry"
            ) from exc
        if result.returncode != 0 or not (self.log_dir / "meta.properties").is_file():
            output = (result.stdout + result.stderr).strip()
            raise InfraError(
                f"kafka StorageTool could not format {self.log_dir} (exit {result.returncode}); "
                f"remove {self.home} and retry. It said:\n{output}"
            )

    def _spawn(self, java: Path, jar_dir: Path) -> int:
        """Launch the broker JVM detached from our session; record its pid and state."""
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        command = [
            str(java),
            f"-Xms{HEAP_INITIAL_MB}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            *self._java_command(java, jar_dir, BROKER_MAIN_CLASS)[1:],
            str(self.server_properties),
        ]
        with self.log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        write_text_atomic(self.pid_path, f"{process.pid}\n")
        write_json_state(
            self.state_path,
            {
                "pid": process.pid,
                "node_id": self.node_id,
                "version": self.version,
                "port": self.port,
                "controller_port": self.controller_port,
                "bootstrap": self.bootstrap,
                "log_path": str(self.log_path),
                "server_properties": str(self.server_properties),
                "heap_mb": self.heap_mb,
                "started_at": time.time(),
            },
        )
        return process.pid

    def _wait_ready(self, pid: int, timeout_s: float, *, spawned: bool) -> bool:
        """Poll until the broker answers a metadata request (bounded by ``timeout_s``).

        For a broker ``spawned`` by this call, dying or staying silent is an InfraError
        quoting its log (a silent one is stopped first). Its pid cannot be recycled while
        it is our unreaped child, so liveness alone is checked. For a broker found
        running, the answer is just False.
        """
        deadline = time.monotonic() + timeout_s
        admin = _admin_client(self.bootstrap)
        while True:
            alive = pid_alive(pid) if spawned else pid_is_ours(pid, self._marker)
            if not alive:
                if not spawned:
                    return False
                self.pid_path.unlink(missing_ok=True)
                self.state_path.unlink(missing_ok=True)
                raise InfraError(
                    f"kafka {self.version} (pid {pid}) exited during startup; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            if _list_topics(admin, min(ADMIN_REQUEST_TIMEOUT_S, remaining_s)):
                return True
            time.sleep(READY_POLL_INTERVAL_S)
        if not spawned:
            return False
        self.stop()
        raise InfraError(
            f"kafka {self.version} did not answer on {self.bootstrap} within {timeout_s:.0f} s "
            f"and was stopped; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


class KafkaCluster:
    """Several local Kafka nodes forming one KRaft cluster, one JVM each, on loopback.

    Node ``N`` (1..nodes) lives in ``<state_dir>/kafka-cluster/node-N/`` with its own
    ports and log directory. Every node is broker and controller; the controllers form
    a static quorum of all nodes, so the cluster keeps working while a minority is
    down. Topics are replicated to every node (unless created with another factor)
    with ``min.insync.replicas`` 2: with acks=all a write is on two nodes before it is
    acknowledged, and one node may be down without stopping writes.

    ``kill`` and ``start_node`` crash and revive one node; ``stop`` stops them all.
    """

    def __init__(
        self,
        state_dir: Path,
        version: str = _DEFAULTS.kafka_version,
        ports: Sequence[tuple[int, int]] | None = None,
        heap_mb: int = _DEFAULTS.kafka_heap_mb,
        nodes: int = CLUSTER_NODES_DEFAULT,
        min_insync_replicas: int = CLUSTER_MIN_INSYNC_REPLICAS,
    ) -> None:
        """``ports`` holds (listener port, controller port) per node; free ones if None."""
        if ports is None:
            flat = free_loopback_ports(2 * nodes)
            ports = [(flat[2 * i], flat[2 * i + 1]) for i in range(nodes)]
        if len(ports) < CLUSTER_NODES_MIN:
            raise InfraError(
                f"a cluster of {len(ports)} node(s) cannot lose one and keep a quorum: "
                f"give at least {CLUSTER_NODES_MIN} (or use a single KafkaBroker)"
            )
        self.home = Path(state_dir).resolve() / "kafka-cluster"
        self.cluster_id = self._formatted_cluster_id() or new_cluster_id()
        voters = tuple(
            (node_id, controller_port) for node_id, (_, controller_port) in enumerate(ports, 1)
        )
        self.nodes: tuple[KafkaBroker, ...] = tuple(
            KafkaBroker(
                self.home / f"node-{node_id}",
                version=version,
                port=port,
                controller_port=controller_port,
                heap_mb=heap_mb,
                membership=ClusterMembership(node_id, voters, self.cluster_id, min_insync_replicas),
            )
            for node_id, (port, controller_port) in enumerate(ports, 1)
        )
        self.min_insync_replicas = min_insync_replicas
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """Every node's ``host:port``, comma-separated, for ``bootstrap.servers``."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def replication_factor(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        """Node ``node_id`` (1-based, as Kafka numbers them)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise InfraError(f"no node {node_id} in this cluster: nodes are 1..{len(self.nodes)}")

    def start(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> list[KafkaStart]:
        """Start every node not running, wait until all answer and are registered.

        A node answers only once a quorum of controllers is up, so all are spawned
        before any is waited for. On failure every node is stopped.
        """
        started = time.monotonic()
        spawned: dict[int, tuple[int, JarCache]] = {}
        try:
            for node in self.nodes:
                if node.running_pid() is None:
                    spawned[node.node_id] = node.spawn()
            results = []
            for node in self.nodes:
                if node.node_id in spawned:
                    pid, jars = spawned[node.node_id]
                    node.wait_ready(pid, max(1.0, started + timeout_s - time.monotonic()))
                    results.append(
                        KafkaStart(False, pid, node.bootstrap, time.monotonic() - started, jars)
                    )
                else:
                    remaining_s = max(1.0, started + timeout_s - time.monotonic())
                    results.append(node.start(remaining_s))
            self._wait_registered(max(1.0, started + timeout_s - time.monotonic()))
        except BaseException:
            self._stop_quietly()
            raise
        return results

    def start_node(self, node_id: int, timeout_s: float = READY_TIMEOUT_S) -> KafkaStart:
        """(Re)start one node while the others run (they hold the quorum it rejoins)."""
        return self.node(node_id).start(timeout_s, ports_wait_s=PORTS_RELEASE_WAIT_S)

    def kill(self, node_id: int) -> int | None:
        """SIGKILL one node's JVM: a crash. Its pid, or None when it was not running."""
        return self.node(node_id).kill()

    def stop(self) -> list[int]:
        """Stop every node, all at once (one by one, the last would wait for a quorum)."""
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            futures = [pool.submit(node.stop) for node in self.nodes]
        stopped: list[int] = []
        errors = []
        for future in futures:
            try:
                stopped += future.result()
            except InfraError as exc:
                errors.append(str(exc))
        if errors:
            raise InfraError("; ".join(errors))
        return sorted(stopped)

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except InfraError:
            _logger.exception("stopping kafka cluster %s after a failed start", self.home)

    def leftover_pids(self) -> list[int]:
        """Live broker processes of any node (empty after a clean ``stop``)."""
        return sorted(pid for node in self.nodes for pid in node.leftover_pids())

    def wipe(self) -> None:
        """Delete every node's files; the nodes must be stopped."""
        for node in self.nodes:
            node.wipe()
        shutil.rmtree(self.home, ignore_errors=True)

    def status(self) -> list[KafkaStatus]:
        return [node.status() for node in self.nodes]

    def under_replicated(self, topics: Sequence[str] | None = None) -> list[str]:
        """``topic[partition]`` whose in-sync replicas are fewer than its replicas.

        Asked of any live node; ``topics`` limits the answer (default: every topic).
        """
        if self._admin is None:
            self._admin = _admin_client(self.bootstrap)
        metadata = self._admin.list_topics(timeout=CLUSTER_STATUS_TIMEOUT_S)
        wanted = set(topics) if topics is not None else set(metadata.topics)
        lagging = []
        for name in sorted(wanted):
            topic = metadata.topics.get(name)
            if topic is None:
                lagging.append(f"{name}: unknown")
                continue
            for partition in sorted(topic.partitions):
                meta = topic.partitions[partition]
                if meta.error is not None or len(meta.isrs) < len(meta.replicas):
                    lagging.append(f"{name}[{partition}]")
        return lagging

    def wait_in_sync(self, topics: Sequence[str] | None, timeout_s: float) -> float | None:
        """Seconds until no partition of ``topics`` is under-replicated; None at the timeout."""
        from confluent_kafka import KafkaException

        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(KafkaException):
                if not self.under_replicated(topics):
                    return time.monotonic() - started
            time.sleep(READY_POLL_INTERVAL_S)
        return None

    def _wait_registered(self, timeout_s: float) -> None:
        """Until the metadata lists every node as a broker."""
        from confluent_kafka import KafkaException

        admin = _admin_client(self.bootstrap)
        deadline = time.monotonic() + timeout_s
        seen: list[int] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                seen = sorted(admin.list_topics(timeout=ADMIN_REQUEST_TIMEOUT_S).brokers)
                if len(seen) == len(self.nodes):
                    return
            time.sleep(READY_POLL_INTERVAL_S)
        raise InfraError(
            f"kafka cluster in {self.home}: only brokers {seen} of {len(self.nodes)} registered "
            f"within {timeout_s:.0f} s; see the broker.log of each node"
        )

    def _formatted_cluster_id(self) -> str | None:
        """The cluster id a node's log directory was formatted with, if any was."""
        for meta in sorted(self.home.glob("node-*/kafka/data/meta.properties")):
            with contextlib.suppress(OSError):
                for line in meta.read_text(encoding="utf-8").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "cluster.id" and value.strip():
                        return value.strip()
        return None


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) else default


def _admin_client(bootstrap: str) -> AdminClient:
    """A quiet AdminClient (librdkafka's connection-refused lines are expected while waiting)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "reconnect.backoff.ms": RECONNECT_BACKOFF_MS,
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            "log_level": 0,
        }
    )


def _list_topics(admin: AdminClient, timeout_s: float) -> bool:
    """Whether one metadata request through ``admin`` succeeded within ``timeout_s``."""
    from confluent_kafka import KafkaException

    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _metadata_answers(bootstrap: str, timeout_s: float) -> bool:
    """Whether a broker at ``bootstrap`` answers a metadata request within ``timeout_s``."""
    return _list_topics(_admin_client(bootstrap), timeout_s)
