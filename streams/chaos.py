"""``paystream chaos``: faults under a realistic load, then the independent verifier.

Every scenario runs real processes: faust workers (``paystream worker``), the
ledger sink (``paystream ledger-sink``), Kafka and PostgreSQL. By default the
command starts a private broker and PostgreSQL (free loopback ports, in its own
directory) so it may stop them freely; nothing else on the machine is touched.

A scenario is: fresh topics and a fresh database; workers and the sink, waited for
until their consumer group is stable with every worker in it and recovered (the
joining of a second worker is a rebalance, not a fault the load should meet); a load
from :mod:`streams.loadgen` sent at a steady rate; the scenario's faults while it
runs; then :class:`streams.verify.LiveVerifier` until the system is consistent.

Recovery is measured with probes: every ``PROBE_EVERY_S`` a 1-minor-unit top-up
is sent to an account on each partition of payments.requests. For a fault,

- ``recovery_s`` is the time from the fault being over (a killed worker restarted,
  the broker or database back) until a probe sent after that moment was decided
  on every partition: the pipeline answers new requests everywhere again;
- ``stall_s`` is the longest any probe sent between the fault and the next one
  waited for its decision: the worst delay a client saw.

The ledger's recovery after a database outage is measured on the sink instead:
``recovery_s`` is from the database being back until the sink has committed
everything that was on ledger.entries at that moment.

Scenarios (``SCENARIOS``): worker-kill, worker-restart, broker-restart,
postgres-outage, poison, duplicates on a single broker, and cluster on a private
three-node KRaft cluster (replication factor 3, min.insync.replicas 2) whose
broker is killed and revived. Each can also run as a *phase* of a shared
pipeline (``run_phases``), which is what the short form in the test suite does.

Measurements (``MEASUREMENTS``, :mod:`streams.restore`; not part of ``all``):
restore (a fresh worker restoring a large accounts table) and failover (kill -9 of
an active worker, with and without a standby replica).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streams import topics as names
from streams.dev import pid_alive
from streams.errors import CommandError
from streams.settings import Settings, load_settings
from streams.verify import LiveVerifier, Violation, sink_lag

log = logging.getLogger(__name__)

SCENARIOS = (
    "worker-kill",
    "worker-restart",
    "broker-restart",
    "postgres-outage",
    "poison",
    "duplicates",
    "cluster",
)
CLUSTER_SCENARIOS = ("cluster",)  # run on a private multi-node cluster, not the single broker
MEASUREMENTS = ("restore", "failover")  # streams/restore.py; named explicitly, not in "all"
PROBE_EVERY_S = 0.5
PROBE_ACCOUNT = "chaos-probe"
READY_TIMEOUT_S = 180.0
DECIDED_TIMEOUT_S = 300.0
WORKER_STOP_TIMEOUT_S = 30.0
SUPERVISOR_POLL_S = 0.5
RESTART_DELAY_S = 1.0
DELIVERY_FLUSH_S = 330.0
CHAOS_BROKER_HEAP_MB = 768
CHAOS_CLUSTER_HEAP_MB = 512  # per node: three JVMs share the machine with the pipeline
OVERSIZED_BYTES = 3 * names.MESSAGE_BYTES_MAX // 2
LARGE_METADATA_BYTES = 600 * 1024
FX_CURRENCIES = ("EUR", "USD", "JPY", "KWD")
CLIENT_LOG_LEVEL = 2  # librdkafka (syslog levels): critical only, not every refused connect
BROKER_BACK_TIMEOUT_S = 120.0  # a restarted broker serves its partitions again within this
CLUSTER_IN_SYNC_TIMEOUT_S = 120.0  # a restarted node catches up with the others within this
CLUSTER_MIN_ISR = 2  # what the cluster scenario expects of every topic
CLUSTER_FAILOVER_TIMEOUT_S = 120.0  # cluster: longest the killed node stays down awaiting failover


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class Size:
    """How big and how fast a scenario runs (the short form uses small values)."""

    payments: int = 5000
    accounts: int | None = None  # default: payments // 10, at least 50
    rate_per_s: float = 200.0
    partitions: int = 8
    fault_every_s: float = 20.0  # worker-kill: seconds between kills
    outage_s: float = 15.0  # broker-restart, postgres-outage: how long it is down
    settle_s: float = 120.0  # verifier: longest wait for the system to become consistent
    seed: int = 1

    def account_count(self) -> int:
        return self.accounts or max(50, self.payments // 10)


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float  # since the scenario started
    over_at_s: float  # when the fault was over (restarted, back up)
    down_s: float  # over_at_s - at_s
    recovery_s: float | None = None
    stall_s: float | None = None
    detail: str = ""


@dataclass
class ScenarioResult:
    scenario: str
    payments_sent: int = 0  # load requests delivered to Kafka (retries included)
    injected: int = 0  # extra messages the scenario sent (poison, duplicates, replays)
    probes: int = 0
    decided: int = 0  # distinct requests with a decision, at verification
    dead_letters: int = 0
    faults: list[Fault] = field(default_factory=list)
    violations: list[dict[str, str]] = field(default_factory=list)
    expectations_failed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    worker_exits: list[str] = field(default_factory=list)  # exits nobody asked for
    elapsed_s: float = 0.0
    load_s: float = 0.0
    decisions_per_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.expectations_failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


# --------------------------------------------------------------------------------------
# Infrastructure and the pipeline's processes
# --------------------------------------------------------------------------------------


@dataclass
class Infra:
    """Where a scenario runs. ``broker``/``cluster``/``postgres`` are set when it may stop them."""

    bootstrap: str
    server_dsn: str  # a database on the server that may CREATE DATABASE
    broker: Any = None  # streams.dev.kafka.KafkaBroker
    postgres: Any = None  # streams.dev.postgres.PostgresServer
    cluster: Any = None  # streams.dev.kafka.KafkaCluster
    replication_factor: int = 1  # of the topics the pipeline creates


@contextlib.contextmanager
def private_infra(directory: Path, base: Settings) -> Iterator[Infra]:
    """A broker and a PostgreSQL of our own on free loopback ports; stopped on exit."""
    from streams.dev import free_loopback_ports
    from streams.dev.kafka import KafkaBroker
    from streams.dev.postgres import PostgresServer

    kafka_port, controller_port, pg_port = free_loopback_ports(3)
    broker = KafkaBroker(
        directory,
        version=base.kafka_version,
        port=kafka_port,
        controller_port=controller_port,
        heap_mb=CHAOS_BROKER_HEAP_MB,
    )
    server = PostgresServer(directory, port=pg_port)
    try:
        broker.start()
        server.start()
        yield Infra(broker.bootstrap, server.dsn, broker, server)
    finally:
        for stop in (broker.stop, server.stop):
            try:
                stop()
            except Exception:  # the other one must still be stopped
                log.exception("chaos: stopping private infrastructure failed")


@contextlib.contextmanager
def private_cluster_infra(directory: Path, base: Settings) -> Iterator[Infra]:
    """A three-node Kafka cluster and a PostgreSQL of our own; stopped on exit.

    Topics are created with replication factor 3; the nodes set min.insync.replicas 2.
    """
    from streams.dev import free_loopback_ports
    from streams.dev.kafka import KafkaCluster
    from streams.dev.postgres import PostgresServer

    (pg_port,) = free_loopback_ports(1)
    cluster = KafkaCluster(directory, version=base.kafka_version, heap_mb=CHAOS_CLUSTER_HEAP_MB)
    server = PostgresServer(directory, port=pg_port)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # both take seconds: overlap
            postgres_started = pool.submit(server.start)
            cluster.start()
            postgres_started.result()
        yield Infra(
            cluster.bootstrap,
            server.dsn,
            postgres=server,
            cluster=cluster,
            replication_factor=cluster.replication_factor,
        )
    finally:
        for stop in (cluster.stop, server.stop):
            try:
                stop()
            except Exception:  # the other one must still be stopped
                log.exception("chaos: stopping private infrastructure failed")


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 hash of ``key`` (a signed 32-bit int, as Java returns it)."""
    mask = 0xFFFFFFFF
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= key[tail + 2] << 16
    if rest >= 2:
        h ^= key[tail + 1] << 8
    if rest >= 1:
        h ^= key[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def probe_accounts(partitions: int) -> list[str]:
    """One account id per partition of payments.requests, in partition order."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        account = f"{PROBE_ACCOUNT}-{i}"
        found.setdefault(murmur2_partition(account.encode(), partitions), account)
        i += 1
    return [found[p] for p in range(partitions)]


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int | None = None
    expected_exit: bool = False

    def alive(self) -> bool:
        return self.process.poll() is None


def _child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update(settings.to_env())
    env.update(extra)
    return env


class Pipeline:
    """Fresh topics, a fresh database, workers and the sink of one scenario (or phases)."""

    def __init__(
        self,
        infra: Infra,
        directory: Path,
        size: Size,
        label: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from streams.topics import create_topics

        run = uuid.uuid4().hex[:8]
        self.infra = infra
        self.size = size
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.db_name = f"chaos_{run}"
        self.dsn = _create_database(infra.server_dsn, self.db_name)
        env = {
            "PAYSTREAM_BROKERS": infra.bootstrap,
            "PAYSTREAM_TOPIC_PREFIX": f"chaos-{run}.",
            "PAYSTREAM_APP_ID": f"paystream-chaos-{run}",
            "PAYSTREAM_PARTITIONS": str(size.partitions),
            "PAYSTREAM_REPLICATION_FACTOR": str(infra.replication_factor),
            "PAYSTREAM_STATE_DIR": str(directory),
            "PAYSTREAM_DATABASE_URL": self.dsn,
            "PAYSTREAM_LOG_LEVEL": "INFO",
            # The sink retries a lost database every <= 5 s instead of 30 s (documented).
            "PAYSTREAM_LEDGER_BACKOFF_MAX_S": "5",
            **(extra_env or {}),
        }
        self.settings = load_settings(env)
        self.label = label
        create_topics(self.settings)
        self.workers: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.sink: Proc | None = None
        self.exits: list[str] = []  # unexpected exits, described
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise, daemon=True, name="chaos-supervisor"
        )
        self._supervisor.start()
        self.verifier: LiveVerifier | None = None

    # -- processes ----------------------------------------------------------------------
    def start_worker(self, name: str) -> Proc:
        from streams.dev import free_loopback_ports

        with self._lock:
            port = self.ports.get(name) or free_loopback_ports(1)[0]
            self.ports[name] = port
            log_path = self.directory / f"{name}.log"
            with log_path.open("ab") as handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker"],
                    env=_child_env(self.settings, PAYSTREAM_WEB_PORT=str(port)),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            proc = Proc(name, process, log_path, port)
            self.workers[name] = proc
            return proc

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: no chance to clean up."""
        with self._lock:
            proc = self.workers[name]
            proc.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait(30)

    def stop_worker(self, name: str, forget: bool = False) -> bool:
        """SIGTERM and wait: a graceful shutdown (partitions handed over, offsets committed).

        Returns False when the worker did not exit within ``WORKER_STOP_TIMEOUT_S`` and
        had to be killed: the shutdown was not graceful after all.
        """
        with self._lock:
            proc = self.workers[name]
            proc.expected_exit = True
        graceful = _terminate(proc.process)
        if forget:
            with self._lock:
                del self.workers[name]
        return graceful

    def start_sink(self) -> Proc:
        log_path = self.directory / "sink.log"
        with log_path.open("ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "ledger-sink"],
                env=_child_env(self.settings),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sink = Proc("sink", process, log_path)
        return self.sink

    def worker_urls(self) -> list[str]:
        with self._lock:
            return [f"http://127.0.0.1:{p.web_port}" for p in self.workers.values() if p.alive()]

    def _supervise(self) -> None:
        """Restart a worker or the sink that exited on its own (as systemd would), noting it."""
        while not self._closing.wait(SUPERVISOR_POLL_S):
            with self._lock:
                procs = list(self.workers.values()) + ([self.sink] if self.sink else [])
            for proc in procs:
                code = proc.process.poll()
                if code is None or proc.expected_exit or self._closing.is_set():
                    continue
                proc.expected_exit = True
                tail = _log_tail(proc.log_path, 5)
                self.exits.append(f"{proc.name} exited with code {code}: {tail}")
                log.warning("chaos: %s exited with code %s; restarting it", proc.name, code)
                time.sleep(RESTART_DELAY_S)
                if self._closing.is_set():
                    return
                if proc.name == "sink":
                    self.start_sink()
                else:
                    self.start_worker(proc.name)

    def close(self, keep_database: bool = False) -> None:
        self._closing.set()
        self._supervisor.join(10)
        if self.verifier is not None:
            self.verifier.close()
        with self._lock:
            procs = list(self.workers.values()) + ([self.sink] if self.sink else [])
        for proc in procs:
            proc.expected_exit = True
            _terminate(proc.process)
        if not keep_database:
            with contextlib.suppress(Exception):
                _drop_database(self.infra.server_dsn, self.db_name)


def _terminate(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, then SIGKILL after ``WORKER_STOP_TIMEOUT_S``; False if it came to that."""
    if process.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        return False
    return True


def _log_tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _create_database(server_dsn: str, name: str) -> str:
    from streams.ledger.db import create_database

    return create_database(server_dsn, name)


def _drop_database(server_dsn: str, name: str) -> None:
    from streams.ledger.db import drop_database

    drop_database(server_dsn, name)


# --------------------------------------------------------------------------------------
# Load, probes and the decision watch
# --------------------------------------------------------------------------------------


class Sender:
    """A thread-safe producer of requests (Avro) and raw bytes, counting deliveries."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        from agents.pipeline import producer_config
        from schemas.codec import load_codec

        self.topic = settings.topic(names.REQUESTS)
        self.codec = load_codec(settings.schema_registry_url)
        # Connection errors while the broker is down are the point, not news: critical only.
        self._producer = Producer({**producer_config(settings), "log_level": CLIENT_LOG_LEVEL})
        self.delivered = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def send(
        self, request: dict[str, Any], on_delivered: Callable[[Any, Any], None] | None = None
    ) -> None:
        value = self.codec.encode(names.REQUESTS, request)
        self.send_raw(request["account_id"].encode(), value, on_delivered)

    def send_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[Any, Any], None] | None = None,
    ) -> None:
        def delivered(err: Any, msg: Any) -> None:
            with self._lock:
                if err is None:
                    self.delivered += 1
                else:
                    self.failed.append(str(err))
            if on_delivered is not None:
                on_delivered(err, msg)

        while True:
            try:
                self._producer.produce(self.topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = DELIVERY_FLUSH_S) -> int:
        return int(self._producer.flush(timeout_s))


class Load(threading.Thread):
    """Sends the requests at a steady rate; ``extra`` may add messages after each one."""

    def __init__(
        self,
        sender: Sender,
        requests: list[dict[str, Any]],
        rate_per_s: float,
        extra: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(daemon=True, name="chaos-load")
        self.sender = sender
        self.requests = requests
        self.rate_per_s = rate_per_s
        self.extra = extra
        self.sent = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            for i, request in enumerate(self.requests):
                self.sender.send(request)
                self.sent += 1
                if self.extra is not None:
                    self.extra(i, request)
                ahead = (i + 1) / self.rate_per_s - (time.monotonic() - self.started_at)
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # reported by the scenario, not lost in a thread
            self.error = exc
        self.finished_at = time.monotonic()

    def progress(self) -> float:
        return self.sent / max(1, len(self.requests))


class DecisionWatch(threading.Thread):
    """Reads payments.decisions from the beginning: when each request was first decided."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from schemas.codec import load_codec

        super().__init__(daemon=True, name="chaos-decisions")
        self.codec = load_codec(settings.schema_registry_url)
        topic = settings.topic(names.DECISIONS)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.brokers,
                "group.id": f"chaos-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": CLIENT_LOG_LEVEL,
            }
        )
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        self._consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])
        self.first_seen: dict[str, float] = {}
        self.decisions: dict[str, dict[str, Any]] = {}
        self._halt = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                messages = self._consumer.consume(5000, 0.2)
                now = time.monotonic()
                fresh = False
                for msg in messages:
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    try:
                        decision = self.codec.decode(names.DECISIONS, value)
                    except Exception:  # the verifier reports undecodable outputs
                        continue
                    rid = decision["request_id"]
                    if rid not in self.first_seen:
                        self.first_seen[rid] = now
                        self.decisions[rid] = decision
                        fresh = True
                if fresh:
                    with self._changed:
                        self._changed.notify_all()
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def wait_for(
        self, request_ids: set[str], timeout_s: float, alive: Callable[[], None] | None = None
    ) -> set[str]:
        """Wait until every id is decided; returns those still undecided at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = {rid for rid in request_ids if rid not in self.first_seen}
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            if alive is not None:
                alive()
            with self._changed:
                self._changed.wait(min(left, 1.0))


class Prober(threading.Thread):
    """A 1-minor-unit top-up per partition every ``PROBE_EVERY_S``: availability, measured."""

    def __init__(self, sender: Sender, partitions: int) -> None:
        from streams.client import new_request

        super().__init__(daemon=True, name="chaos-probes")
        self.sender = sender
        self.accounts = probe_accounts(partitions)
        self._new_request = new_request
        self.sent: list[tuple[str, int, float]] = []  # (request_id, partition, sent at)
        self.misrouted: list[str] = []  # probes Kafka put on another partition than computed
        self._halt = threading.Event()
        self._running = threading.Event()
        self._idle = threading.Event()
        self._idle.set()

    def probe_once(self) -> list[str]:
        ids = []
        for partition, account in enumerate(self.accounts):
            request = self._new_request("TOPUP", account, 1, "EUR", counterparty_id="probe")
            self.sent.append((request["request_id"], partition, time.monotonic()))
            self.sender.send(dict(request), self._check_partition(account, partition))
            ids.append(request["request_id"])
        return ids

    def _check_partition(self, account: str, partition: int) -> Callable[[Any, Any], None]:
        def check(err: Any, msg: Any) -> None:
            if err is None and msg.partition() != partition:
                self.misrouted.append(f"{account}: partition {msg.partition()}, not {partition}")

        return check

    def run(self) -> None:
        self._running.set()
        while not self._halt.wait(PROBE_EVERY_S):
            self._idle.clear()
            try:
                if self._running.is_set():
                    self.probe_once()
            finally:
                self._idle.set()

    def pause(self) -> None:
        """No more probes until ``resume`` (the verifier needs a quiet system)."""
        self._running.clear()
        self._idle.wait(10)

    def resume(self) -> None:
        self._running.set()

    def ids(self) -> set[str]:
        return {rid for rid, _, _ in self.sent}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def recovery(
        self, since: float, decided: dict[str, float], partitions: Sequence[int] | None = None
    ) -> float | None:
        """Seconds from ``since`` until every partition (or each of ``partitions``) decided
        a probe sent after it."""
        worst = 0.0
        for partition in range(len(self.accounts)) if partitions is None else partitions:
            times = [
                decided[rid]
                for rid, p, at in self.sent
                if p == partition and at >= since and rid in decided
            ]
            if not times:
                return None
            worst = max(worst, min(times) - since)
        return worst

    def stall(self, start: float, end: float, decided: dict[str, float]) -> float | None:
        """The longest wait of a probe sent in [start, end) (None if none was sent)."""
        waits = [
            decided.get(rid, float("inf")) - at for rid, _, at in self.sent if start <= at < end
        ]
        return max(waits) if waits else None


# --------------------------------------------------------------------------------------
# A scenario's run: the common frame
# --------------------------------------------------------------------------------------


class Phase:
    """One scenario running on a pipeline: its load, faults and expectations."""

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        size: Size,
        watch: DecisionWatch,
        emit: Callable[[str], None],
    ) -> None:
        self.pipeline = pipeline
        self.name = name
        self.size = size
        self.watch = watch
        self.emit = emit
        self.result = ScenarioResult(name)
        self.started = time.monotonic()
        self.sender = Sender(pipeline.settings)
        self.extra_ids: set[str] = set()  # injected requests that must get a decision
        self.faults: list[tuple[Fault, float, float]] = []  # (fault, at, over) monotonic
        self.load_requests: list[dict[str, Any]] = []
        self.active_load: Load | None = None
        # Checks a scenario leaves for after the verifier has read everything.
        self.pending_checks: list[Callable[[], None]] = []
        # Delivery failures the scenario provoked on purpose (poison: oversized messages).
        self.expected_failures = 0
        # The runner's availability probes (set by Runner.run_phase).
        self.prober: Prober | None = None

    # -- helpers for scenarios ------------------------------------------------------------
    def requests(self, seed_offset: int = 0) -> list[dict[str, Any]]:
        from streams.loadgen import LoadSpec, generate

        spec = LoadSpec(
            requests=self.size.payments,
            accounts=self.size.account_count(),
            currencies=FX_CURRENCIES,
            seed=self.size.seed * 1000 + seed_offset,
            start_ms=int(time.time() * 1000),
            step_ms=1,
        )
        return [dict(r) for r in generate(spec)]

    def load(
        self,
        requests: list[dict[str, Any]] | None = None,
        extra: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> Load:
        self.load_requests = requests if requests is not None else self.requests()
        load = Load(self.sender, self.load_requests, self.size.rate_per_s, extra)
        load.start()
        self.active_load = load
        return load

    def wait_progress(self, load: Load, fraction: float) -> None:
        while load.is_alive() and load.progress() < fraction:
            time.sleep(0.1)

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def fault(self, kind: str, target: str, at: float, over: float, detail: str = "") -> Fault:
        made = Fault(
            kind,
            target,
            round(at - self.started, 2),
            round(over - self.started, 2),
            round(over - at, 2),
            detail=detail,
        )
        self.faults.append((made, at, over))
        self.emit(
            f"  fault: {kind} {target} at {made.at_s:.1f} s (down {made.down_s:.1f} s)"
            + (f" {detail}" if detail else "")
        )
        return made

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.result.expectations_failed.append(what)
            self.emit(f"  EXPECTATION FAILED: {what}")


Scenario = Callable[[Phase], None]


def _scenario_worker_kill(phase: Phase) -> None:
    """kill -9 a worker every few seconds under load; each comes straight back."""
    load = phase.load()
    names_ = sorted(phase.pipeline.workers)
    kills = 0
    while load.is_alive() or kills == 0:
        time.sleep(min(phase.size.fault_every_s, 5.0) if kills == 0 else phase.size.fault_every_s)
        target = names_[kills % len(names_)]
        at = time.monotonic()
        phase.pipeline.kill_worker(target)
        phase.pipeline.start_worker(target)
        phase.fault("kill -9", target, at, time.monotonic(), "restarted at once, same state dir")
        kills += 1
    load.join()


def _scenario_worker_restart(phase: Phase) -> None:
    """A graceful restart, then a third worker added and removed, all under load."""
    load = phase.load()
    target = sorted(phase.pipeline.workers)[0]
    phase.wait_progress(load, 0.2)
    at = time.monotonic()
    graceful = phase.pipeline.stop_worker(target)
    phase.pipeline.start_worker(target)
    phase.fault("graceful restart", target, at, time.monotonic())
    phase.expect(graceful, f"{target} stopped on SIGTERM within {WORKER_STOP_TIMEOUT_S:.0f} s")
    phase.wait_progress(load, 0.45)
    extra = "worker-extra"
    at = time.monotonic()
    phase.pipeline.start_worker(extra)
    phase.fault("worker added", extra, at, at)
    # Leave it time to join the group and take partitions before removing it.
    _wait_joined(phase.pipeline.workers[extra], READY_TIMEOUT_S)
    phase.wait_progress(load, 0.75)
    at = time.monotonic()
    graceful = phase.pipeline.stop_worker(extra, forget=True)
    phase.fault("worker removed", extra, at, time.monotonic())
    phase.expect(graceful, f"{extra} stopped on SIGTERM within {WORKER_STOP_TIMEOUT_S:.0f} s")
    load.join()


def _wait_group_stable(pipeline: Pipeline, members: int, timeout_s: float) -> None:
    """Until the workers' consumer group is Stable with ``members`` members."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    group = pipeline.settings.app_id
    admin = AdminClient(
        {"bootstrap.servers": pipeline.settings.brokers, "log_level": CLIENT_LOG_LEVEL}
    )
    deadline = time.monotonic() + timeout_s
    seen = "not described"
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group])[group].result(timeout=10)
            seen = f"{described.state}, {len(described.members)} member(s)"
            if described.state == ConsumerGroupState.STABLE and len(described.members) == members:
                return
        except Exception as exc:  # not yet coordinated: ask again
            seen = str(exc)
        time.sleep(0.5)
    raise CommandError(
        f"the consumer group {group} did not become stable with {members} member(s) within "
        f"{timeout_s:.0f} s (last seen: {seen}); see the logs in {pipeline.directory}"
    )


def _wait_recovered(proc: Proc, timeout_s: float) -> None:
    """Until the worker's log shows it ready after its latest join (faust's recovery done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(OSError):
            text = proc.log_path.read_text(errors="replace")
            if text.rfind("Worker ready") > text.rfind("Joined group") >= 0:
                return
        time.sleep(0.2)


def _wait_joined(proc: Proc, timeout_s: float) -> None:
    """Until the worker's log says it was assigned partitions (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(OSError):
            if "Worker]: Ready" in proc.log_path.read_text(errors="replace"):
                return
        time.sleep(0.5)


def _scenario_broker_restart(phase: Phase) -> None:
    """The broker stopped and started again under load; everyone reconnects by themselves."""
    broker = phase.pipeline.infra.broker
    if broker is None:
        raise CommandError(
            "broker-restart needs a broker it may stop: run it on private "
            "infrastructure (the default of `paystream chaos`)"
        )
    load = phase.load()
    phase.wait_progress(load, 0.3)
    at = time.monotonic()
    broker.stop()
    time.sleep(phase.size.outage_s)
    broker.start()
    back = time.monotonic()
    high = _ledger_ends(phase.pipeline.settings)
    phase.fault("broker stop/start", broker.bootstrap, at, back)
    load.join()
    caught_up = _sink_caught_up(phase.pipeline.settings, high, DECIDED_TIMEOUT_S)
    phase.result.notes["sink_caught_up_after_broker_s"] = (
        None if caught_up is None else round(caught_up - back, 2)
    )


def _scenario_postgres_outage(phase: Phase) -> None:
    """PostgreSQL down for a stretch while the sink runs; it waits, then catches up."""
    server = phase.pipeline.infra.postgres
    if server is None:
        raise CommandError(
            "postgres-outage needs a PostgreSQL it may stop: run it on private "
            "infrastructure (the default of `paystream chaos`)"
        )
    load = phase.load()
    phase.wait_progress(load, 0.3)
    sink = phase.pipeline.sink
    at = time.monotonic()
    server.stop()
    time.sleep(phase.size.outage_s)
    server.start()
    back = time.monotonic()
    high = _ledger_ends(phase.pipeline.settings)
    fault = phase.fault("postgres stop/start", f"127.0.0.1:{server.port}", at, back)
    load.join()
    caught_up = _sink_caught_up(phase.pipeline.settings, high, DECIDED_TIMEOUT_S)
    fault.recovery_s = None if caught_up is None else round(caught_up - back, 2)
    fault.detail = "recovery: sink committed everything on ledger.entries at restart"
    phase.expect(
        sink is not None and sink.alive() and sink is phase.pipeline.sink,
        "the ledger sink kept running through the database outage",
    )


def _scenario_cluster(phase: Phase) -> None:
    """One node of a three-node cluster SIGKILLed under load, restarted after failover.

    The victim is the workers' group coordinator, which also leads about a third of
    every topic's partitions: the controllers fence it (broker.session.timeout.ms, 9 s
    by default), its partitions get new leaders from their in-sync replicas, the group
    a new coordinator. With replication factor 3 and min.insync.replicas 2, every
    acks=all write goes on to the two survivors, so decisions keep flowing while it
    is down. It is restarted once every partition decided a probe sent after the kill
    (and at least ``outage_s`` after it; at most ``CLUSTER_FAILOVER_TIMEOUT_S``). The
    verifier then checks that nothing acknowledged was lost.
    """
    cluster = phase.pipeline.infra.cluster
    if cluster is None:
        raise CommandError(
            "cluster needs a multi-node Kafka cluster it may kill: run it with "
            "`paystream chaos --scenario cluster` (a private three-node cluster)"
        )
    settings = phase.pipeline.settings
    _expect_replicated(phase, cluster)
    load = phase.load()
    phase.wait_progress(load, 0.3)
    victim, roles = _cluster_victim(settings)
    bootstrap = cluster.node(victim).bootstrap
    at = time.monotonic()
    killed_pid = cluster.kill(victim)
    time.sleep(phase.size.outage_s)
    # The node stays down until the pipeline served every partition without it: how
    # long that takes is the measurement (fencing alone is 9 s), so restarting after a
    # fixed time would make "decisions kept flowing while it was down" a race.
    _wait_probes_after(phase, at, CLUSTER_FAILOVER_TIMEOUT_S)
    restart_started = time.monotonic()
    restarted = cluster.start_node(victim)
    back = time.monotonic()
    phase.fault("broker kill -9, restart", f"node {victim} {bootstrap}", at, back, roles)
    topics = [name for name, _, _ in names.planned_topics(settings)]
    in_sync_s = cluster.wait_in_sync(topics, CLUSTER_IN_SYNC_TIMEOUT_S)
    load.join()
    _wait_probes_after(phase, back, DECIDED_TIMEOUT_S)
    notes = phase.result.notes
    notes.update(
        killed_node=victim,
        killed_node_roles=roles,
        killed_pid=killed_pid,
        restarted_pid=restarted.pid,
        node_restart_s=round(back - restart_started, 2),
        in_sync_after_restart_s=None if in_sync_s is None else round(in_sync_s, 2),
    )
    phase.expect(killed_pid is not None, f"node {victim} was running and was killed")
    phase.expect(
        killed_pid is not None and not pid_alive(killed_pid) and restarted.pid != killed_pid,
        f"node {victim} came back as a new process (killed pid {killed_pid}, now {restarted.pid})",
    )
    if in_sync_s is None:
        lagging = cluster.under_replicated(topics)[:5]
        phase.expect(
            False,
            f"every partition in sync again within {CLUSTER_IN_SYNC_TIMEOUT_S:.0f} s of node "
            f"{victim}'s restart: still lagging {lagging}",
        )

    def check() -> None:
        decided = phase.watch.first_seen
        while_down = sum(1 for when in decided.values() if at < when < back)
        prober = phase.prober
        failover = None if prober is None else prober.recovery(at, decided)
        notes.update(
            decided_while_down=while_down,
            failover_s=None if failover is None else round(failover, 2),
            every_partition_answered_while_down=failover is not None and at + failover < back,
        )
        phase.expect(
            while_down > 0,
            f"decisions kept flowing while node {victim} was down ({back - at:.1f} s)",
        )
        phase.expect(
            failover is not None,
            f"every partition decided a probe sent after node {victim} was killed",
        )

    phase.pending_checks.append(check)


def _wait_probes_after(phase: Phase, since: float, timeout_s: float) -> None:
    """Until every partition decided a probe sent after ``since`` (recovery is measurable)."""
    prober = phase.prober
    deadline = time.monotonic() + timeout_s
    while prober is not None and time.monotonic() < deadline:
        if prober.recovery(since, phase.watch.first_seen) is not None:
            return
        time.sleep(PROBE_EVERY_S)


def _cluster_victim(settings: Settings) -> tuple[int, str]:
    """The node to kill: the workers' group coordinator; and what it was doing."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.brokers, "log_level": CLIENT_LOG_LEVEL})
    group = settings.app_id
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    coordinator = int(described.coordinator.id)
    topic = settings.topic(names.REQUESTS)
    partitions = admin.list_topics(topic, timeout=30).topics[topic].partitions
    led = sorted(p for p, meta in partitions.items() if meta.leader == coordinator)
    return coordinator, f"coordinator of group {group}, leader of {topic} partitions {led}"


def _expect_replicated(phase: Phase, cluster: Any) -> None:
    """Every topic of the pipeline has a replica on each node and min.insync.replicas 2."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    settings = phase.pipeline.settings
    admin = AdminClient({"bootstrap.servers": settings.brokers, "log_level": CLIENT_LOG_LEVEL})
    topics = [name for name, _, _ in names.planned_topics(settings)]
    metadata = admin.list_topics(timeout=30).topics
    short = sorted(
        f"{name}[{p}]: replicas {meta.replicas}"
        for name in topics
        for p, meta in metadata[name].partitions.items()
        if len(meta.replicas) != cluster.replication_factor
    )
    phase.expect(
        not short, f"every partition has {cluster.replication_factor} replicas: {short[:5]}"
    )
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    min_isr = {
        resource.name: future.result(timeout=30)["min.insync.replicas"].value
        for resource, future in admin.describe_configs(resources).items()
    }
    wrong = {name: value for name, value in min_isr.items() if value != str(CLUSTER_MIN_ISR)}
    phase.expect(not wrong, f"every topic has min.insync.replicas {CLUSTER_MIN_ISR}: {wrong}")
    phase.result.notes.update(
        replication_factor=cluster.replication_factor, min_insync_replicas=CLUSTER_MIN_ISR
    )


def _ledger_ends(settings: Settings, timeout_s: float = BROKER_BACK_TIMEOUT_S) -> dict[int, int]:
    """The end offsets of ledger.entries; retried while a restarted broker elects leaders."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = settings.topic(names.LEDGER)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": "chaos-ends",
            "log_level": CLIENT_LOG_LEVEL,
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=30).topics[topic]
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                    for p in meta.partitions
                }
            except KafkaException as exc:  # NOT_LEADER_FOR_PARTITION just after a restart
                if time.monotonic() >= deadline:
                    raise CommandError(
                        f"the end offsets of {topic} stayed unreadable: {exc}"
                    ) from exc
                time.sleep(0.5)
    finally:
        consumer.close()


def _sink_caught_up(settings: Settings, ends: dict[int, int], timeout_s: float) -> float | None:
    """When the sink's committed offsets reached ``ends`` (monotonic time), or None."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(names.LEDGER)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": f"{settings.app_id}-ledger-sink",
            "log_level": CLIENT_LOG_LEVEL,
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            if all(tp.offset >= ends[tp.partition] for tp in committed):
                return time.monotonic()
            time.sleep(0.2)
    finally:
        consumer.close()
    return None


# -- poison ------------------------------------------------------------------------------


def _poison_catalog(partner: str) -> list[tuple[str, Any, str]]:
    """(name, builder, expectation): expectation is a decline code, ``dlq:<class>`` or
    ``rejected`` (the broker refuses it at the door)."""
    from streams.client import new_request

    def req(kind: Any, account: str, amount: int, currency: str = "EUR", **kw: Any) -> Any:
        return dict(new_request(kind, account, amount, currency, **kw))

    return [
        (
            "negative amount",
            lambda a: req("PAYMENT", a, -500, counterparty_id=partner),
            "invalid_amount",
        ),
        ("zero amount", lambda a: req("PAYMENT", a, 0, counterparty_id=partner), "invalid_amount"),
        (
            "unknown currency",
            lambda a: req("PAYMENT", a, 100, "XXX", counterparty_id=partner),
            "currency_not_supported",
        ),
        (
            "refund of unknown payment",
            lambda a: req("REFUND", a, 100, payment_id=f"no-such-{uuid.uuid4().hex[:8]}"),
            "original_not_found",
        ),
        (
            "capture of unknown authorization",
            lambda a: req("CAPTURE", a, 100, payment_id=f"no-such-{uuid.uuid4().hex[:8]}"),
            "original_not_found",
        ),
        (
            "payment to oneself",
            lambda a: req("PAYMENT", a, 100, counterparty_id=a),
            "invalid_request",
        ),
        (
            "payment to a house account",
            lambda a: req("PAYMENT", a, 100, counterparty_id="external:bank"),
            "invalid_request",
        ),
        ("garbage bytes", lambda a: os.urandom(64), "dlq:schema_error"),
        ("wrong magic byte", lambda a: b"\x07" + os.urandom(40), "dlq:schema_error"),
        (
            "unknown schema id",
            lambda a: b"\x00\x00\x00\x27\x0f" + os.urandom(30),
            "dlq:schema_error",
        ),
        ("truncated record", "truncated", "dlq:schema_error"),
        ("trailing bytes", "trailing", "dlq:schema_error"),
        ("empty value", lambda a: b"", "dlq:schema_error"),
        ("tombstone", lambda a: None, "dlq:invalid_message"),
        ("key is not the account", "wrong-key", "dlq:invalid_key"),
        # Random bytes: lz4 cannot shrink them below the topic's message size limit.
        ("oversized message", lambda a: os.urandom(OVERSIZED_BYTES), "rejected"),
        ("large metadata (accepted size)", "large", "decided"),
    ]


def _scenario_poison(phase: Phase) -> None:
    """Malformed bytes, invalid requests and oversized messages mixed into a normal load."""
    from streams.client import new_request

    requests = phase.requests()
    accounts = sorted({r["account_id"] for r in requests if r["kind"] == "TOPUP"})
    catalog = _poison_catalog(accounts[-1])
    every = max(3, len(requests) // (3 * len(catalog)))
    expected_codes: dict[str, tuple[str, str]] = {}  # request id -> (name, code)
    expected_dlq: dict[tuple[int, int], tuple[str, str]] = {}  # (p, o) -> (name, class)
    rejected: dict[str, list[str]] = {}
    delivered_at: dict[str, list[tuple[int, int]]] = {}
    sender = phase.sender
    rng = random.Random(phase.size.seed)
    lock = threading.Lock()
    injected = 0

    def on_delivery(name: str, expectation: str) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            with lock:
                if err is not None:
                    rejected.setdefault(name, []).append(str(err))
                elif expectation.startswith("dlq:"):
                    expected_dlq[(msg.partition(), msg.offset())] = (name, expectation[4:])
                    delivered_at.setdefault(name, []).append((msg.partition(), msg.offset()))
                else:
                    delivered_at.setdefault(name, []).append((msg.partition(), msg.offset()))

        return done

    def inject(i: int, _request: dict[str, Any]) -> None:
        nonlocal injected
        if i % every or i < len(accounts):
            return
        name, build, expectation = catalog[(i // every) % len(catalog)]
        account = rng.choice(accounts)
        callback = on_delivery(name, expectation)
        injected += 1
        if build == "wrong-key":
            request = dict(new_request("TOPUP", account, 100, "EUR", counterparty_id="bank-1"))
            sender.send_raw(b"someone-else", sender.codec.encode(names.REQUESTS, request), callback)
        elif build in ("truncated", "trailing"):
            request = dict(new_request("TOPUP", account, 100, "EUR", counterparty_id="bank-1"))
            encoded = sender.codec.encode(names.REQUESTS, request)
            value = encoded[: len(encoded) // 2] if build == "truncated" else encoded + b"\x01\x02"
            sender.send_raw(account.encode(), value, callback)
        elif build == "large":
            blob = os.urandom(LARGE_METADATA_BYTES // 2).hex()
            large: dict[str, Any] = dict(
                new_request(
                    "TOPUP", account, 100, "EUR", counterparty_id="bank-1", metadata={"blob": blob}
                )
            )
            phase.extra_ids.add(large["request_id"])
            sender.send(large, callback)
        else:
            built = build(account)
            if isinstance(built, dict):
                expected_codes[built["request_id"]] = (name, expectation)
                phase.extra_ids.add(built["request_id"])
                sender.send(built, callback)
            else:
                sender.send_raw(account.encode(), built, callback)

    load = phase.load(requests, inject)
    load.join()
    sender.flush()
    phase.result.injected = injected
    phase.expected_failures = sum(len(errors) for errors in rejected.values())
    phase.pending_checks.append(
        lambda: _check_poison(phase, expected_codes, expected_dlq, rejected, catalog)
    )


def _check_poison(
    phase: Phase,
    expected_codes: dict[str, tuple[str, str]],
    expected_dlq: dict[tuple[int, int], tuple[str, str]],
    rejected: dict[str, list[str]],
    catalog: list[tuple[str, Any, str]],
) -> None:
    verifier = phase.pipeline.verifier
    assert verifier is not None
    topic = phase.pipeline.settings.topic(names.REQUESTS)
    letters = {
        (int(d["original_partition"]), int(d["original_offset"])): d
        for d in verifier.observed.dead_letters
        if d["original_topic"] == topic
    }
    decided = phase.watch.decisions
    outcome: dict[str, dict[str, int]] = {}
    for rid, (name, code) in expected_codes.items():
        got = decided.get(rid)
        found = (got or {}).get("decline_code") or (got or {}).get("status") or "undecided"
        outcome.setdefault(name, {}).setdefault(found, 0)
        outcome[name][found] += 1
        phase.expect(found == code, f"poison '{name}' {rid}: expected {code}, got {found}")
    for where, (name, error_class) in expected_dlq.items():
        letter = letters.get(where)
        found = letter["error_class"] if letter else "no dead letter"
        outcome.setdefault(name, {}).setdefault(found, 0)
        outcome[name][found] += 1
        phase.expect(
            letter is not None and letter["error_class"] == error_class and bool(letter["error"]),
            f"poison '{name}' at {topic}[{where[0]}]@{where[1]}: expected a {error_class} "
            f"dead letter with its reason, got {found}",
        )
    for name, _, expectation in catalog:
        if expectation == "rejected":
            errors = rejected.get(name, [])
            outcome[name] = {"rejected by the broker": len(errors)}
            phase.expect(
                bool(errors) and all("SIZE" in e.upper() for e in errors),
                f"poison '{name}': expected the broker to refuse it, got {errors}",
            )
    phase.result.notes["poison_outcomes"] = outcome
    phase.expect(not phase.pipeline.exits, "no worker crashed on poison input")


# -- duplicates and replays -----------------------------------------------------------------


def _scenario_duplicates(phase: Phase) -> None:
    """Producer retries, one key resent with the same and another payload, a replayed range."""
    from streams.replay import Bound, ReplaySpec, replay

    requests = phase.requests()
    sender = phase.sender
    retried: list[str] = []  # same key, same payload, new request id: duplicate_of expected
    conflicting: list[str] = []  # same key, other payload: idempotency_conflict expected
    resent = 0

    def inject(i: int, request: dict[str, Any]) -> None:
        nonlocal resent
        if i % 7 == 3:  # a producer retry: the very same message again
            sender.send(request)
            resent += 1
        elif i % 11 == 5 and request["kind"] in ("PAYMENT", "PAYOUT", "TOPUP"):
            retry = dict(
                request, request_id=str(uuid.uuid4()), created_at_ms=request["created_at_ms"] + 1
            )
            sender.send(retry)
            retried.append(retry["request_id"])
            phase.extra_ids.add(retry["request_id"])
        elif i % 13 == 7 and request["kind"] in ("PAYMENT", "PAYOUT", "TOPUP"):
            other = dict(
                request,
                request_id=str(uuid.uuid4()),
                amount_minor=request["amount_minor"] + 1,
                created_at_ms=request["created_at_ms"] + 1,
            )
            sender.send(other)
            conflicting.append(other["request_id"])
            phase.extra_ids.add(other["request_id"])

    start_ms = int(time.time() * 1000)
    load = phase.load(requests, inject)
    phase.wait_progress(load, 0.3)
    end_ms = int(time.time() * 1000)
    phase.wait_progress(load, 0.6)
    at = time.monotonic()
    report = replay(
        phase.pipeline.settings,
        ReplaySpec(
            names.REQUESTS, Bound(time_ms=start_ms), Bound(time_ms=end_ms), into=names.REQUESTS
        ),
    )
    phase.fault(
        "replay of a time range",
        names.REQUESTS,
        at,
        time.monotonic(),
        f"{report.messages} requests re-sent",
    )
    load.join()
    sender.flush()
    at = time.monotonic()
    ledger = replay(
        phase.pipeline.settings,
        ReplaySpec(names.LEDGER, Bound(edge="earliest"), Bound(edge="latest"), sink="ledger"),
    )
    phase.fault(
        "replay of the ledger into PostgreSQL",
        names.LEDGER,
        at,
        time.monotonic(),
        f"{ledger.messages} transactions, {ledger.written} written, "
        f"{ledger.duplicates} already there",
    )
    phase.result.injected = resent + len(retried) + len(conflicting) + report.messages
    phase.result.notes.update(
        producer_retries=resent,
        same_key_same_payload=len(retried),
        same_key_other_payload=len(conflicting),
        replayed_requests=report.messages,
        replayed_ledger_written=ledger.written,
        replayed_ledger_duplicates=ledger.duplicates,
    )

    def check() -> None:
        decided = phase.watch.decisions
        for rid in retried:
            d = decided.get(rid, {})
            phase.expect(
                bool(d.get("duplicate_of")) or d.get("decline_code") in ("idempotency_conflict",),
                f"retry {rid} was answered as a duplicate: {d}",
            )
        for rid in conflicting:
            d = decided.get(rid, {})
            phase.expect(
                d.get("decline_code") == "idempotency_conflict" or bool(d.get("duplicate_of")),
                f"reuse {rid} with another payload was declined as a conflict: {d}",
            )

    phase.pending_checks.append(check)


SCENARIO_FUNCS: dict[str, Scenario] = {
    "worker-kill": _scenario_worker_kill,
    "worker-restart": _scenario_worker_restart,
    "broker-restart": _scenario_broker_restart,
    "postgres-outage": _scenario_postgres_outage,
    "poison": _scenario_poison,
    "duplicates": _scenario_duplicates,
    "cluster": _scenario_cluster,
}
WORKERS_NEEDED = {"broker-restart": 1, "poison": 1}


# --------------------------------------------------------------------------------------
# Running scenarios
# --------------------------------------------------------------------------------------


def publish_fx(settings: Settings) -> None:
    from streams.client import PaymentClient
    from streams.loadgen import fx_rates

    now_ms = int(time.time() * 1000)
    with PaymentClient(settings, watch_decisions=False) as client:
        for rate in fx_rates(FX_CURRENCIES, now_ms):
            client.publish_fx_rate(
                rate["base"], rate["quote"], rate["rate"], rate["spread_bps"], rate["as_of_ms"]
            )
        client.flush()


class Runner:
    """A pipeline with its watch and probes, hosting one scenario or several phases."""

    def __init__(
        self,
        infra: Infra,
        directory: Path,
        size: Size,
        workers: int,
        emit: Callable[[str], None] = print,
    ) -> None:
        self.emit = emit
        self.size = size
        self.pipeline = Pipeline(infra, directory, size, directory.name)
        try:
            publish_fx(self.pipeline.settings)
            self.pipeline.start_sink()
            started = time.monotonic()
            for i in range(workers):
                self.pipeline.start_worker(f"worker-{chr(ord('a') + i)}")
            self.watch = DecisionWatch(self.pipeline.settings)
            self.watch.start()
            self.sender = Sender(self.pipeline.settings)
            self.prober = Prober(self.sender, size.partitions)
            self._probes_before = 0
            ready = self._wait_ready(READY_TIMEOUT_S)
            self.startup_s = round(ready - started, 2)
            emit(
                f"  pipeline ready: {workers} worker(s) answering on every partition "
                f"after {self.startup_s:.1f} s"
            )
            self.prober.start()
        except BaseException:
            self.pipeline.close()
            raise

    def _wait_ready(self, timeout_s: float) -> float:
        return wait_pipeline_ready(self.pipeline, self.prober, self.watch, timeout_s)

    def run_phase(self, name: str) -> ScenarioResult:
        self.emit(
            f"scenario {name}: {self.size.payments} payments at "
            f"{self.size.rate_per_s:.0f}/s on {len(self.pipeline.workers)} worker(s)"
        )
        phase = Phase(self.pipeline, name, self.size, self.watch, self.emit)
        phase.prober = self.prober
        exits_before = len(self.pipeline.exits)
        try:
            SCENARIO_FUNCS[name](phase)
        finally:
            load = phase.active_load
            if load is not None:
                load.join()
        if load is not None and load.error is not None:
            raise CommandError(f"the {name} load failed: {load.error}")
        undelivered = phase.sender.flush()
        result = phase.result
        result.payments_sent = load.sent if load is not None else 0
        result.load_s = round(load.finished_at - load.started_at, 2) if load else 0.0
        expected = {r["request_id"] for r in phase.load_requests} | phase.extra_ids
        missing = self.watch.wait_for(expected, DECIDED_TIMEOUT_S)
        decided_at = time.monotonic()
        self.prober.pause()
        self.sender.flush()
        self.watch.wait_for(self.prober.ids(), DECIDED_TIMEOUT_S)
        failed = len(phase.sender.failed) - phase.expected_failures
        phase.expect(
            undelivered == 0 and failed == 0,
            f"every request reached Kafka ({undelivered} undelivered, {failed} failed: "
            f"{phase.sender.failed[:3]})",
        )
        if load is not None:
            span = decided_at - load.started_at
            result.decisions_per_s = round(len(expected - missing) / max(span, 1e-9), 1)
        self._verify(phase)
        for check in phase.pending_checks:
            check()
        self._measure(phase, decided_at)
        result.worker_exits = self.pipeline.exits[exits_before:]
        result.probes = len(self.prober.sent) - self._probes_before
        self._probes_before = len(self.prober.sent)
        phase.expect(
            not self.prober.misrouted,
            f"probes on the computed partitions: {self.prober.misrouted[:3]}",
        )
        self.prober.resume()
        result.elapsed_s = round(time.monotonic() - phase.started, 2)
        result.notes.setdefault("startup_s", self.startup_s)
        return result

    def _verify(self, phase: Phase) -> None:
        pipeline = self.pipeline
        if pipeline.verifier is None:
            pipeline.verifier = LiveVerifier(pipeline.settings, pipeline.dsn)
        pipeline.verifier.view_urls = pipeline.worker_urls()
        report = pipeline.verifier.verify(self.size.settle_s)
        result = phase.result
        result.counts = report.counts
        result.violations = [v.to_dict() for v in report.violations]
        result.decided = report.counts.get("decided", 0)
        result.dead_letters = report.counts.get("dead_letters", 0)
        for violation in report.violations[:50]:
            self.emit(f"  VIOLATION {violation.line()}")
        if len(report.violations) > 50:
            self.emit(f"  ... and {len(report.violations) - 50} more (see the JSON report)")

    def _measure(self, phase: Phase, end: float) -> None:
        decided = self.watch.first_seen
        spans = phase.faults
        for i, (fault, at, over) in enumerate(spans):
            following = spans[i + 1][1] if i + 1 < len(spans) else end
            if fault.recovery_s is None and fault.kind not in ("worker added",):
                recovery = self.prober.recovery(over, decided)
                fault.recovery_s = None if recovery is None else round(recovery, 2)
            stall = self.prober.stall(at, max(following, over + PROBE_EVERY_S), decided)
            fault.stall_s = None if stall is None else round(stall, 2)
            phase.result.faults.append(fault)

    def close(self) -> None:
        import gc

        try:
            for part in ("prober", "watch"):
                thing = getattr(self, part, None)
                if thing is not None:
                    thing.stop()
        finally:
            self.pipeline.close()  # the processes go even if a thread would not stop
            gc.collect()  # producers of finished phases go now, not when the broker is gone


def wait_pipeline_ready(
    pipeline: Pipeline, prober: Prober, watch: DecisionWatch, timeout_s: float
) -> float:
    """Until every worker is in the group, it is stable, and all partitions answer.

    Answering alone is not enough: the first worker up answers on every partition
    before the others join, and their joining is a rebalance the load would meet.
    Returns the monotonic time it was ready.
    """
    deadline = time.monotonic() + timeout_s
    _wait_group_stable(pipeline, len(pipeline.workers), timeout_s)
    for proc in list(pipeline.workers.values()):
        _wait_recovered(proc, max(1.0, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        ids = prober.probe_once()
        prober.sender.flush(30)
        missing = watch.wait_for(set(ids), min(5.0, deadline - time.monotonic()))
        if not missing:
            return time.monotonic()
    raise CommandError(
        f"the workers did not answer on every partition within {timeout_s:.0f} s; see the "
        f"logs in {pipeline.directory}"
    )


def run_scenario(
    name: str, infra: Infra, directory: Path, size: Size, emit: Callable[[str], None] = print
) -> ScenarioResult:
    """One scenario (or measurement) on a pipeline of its own."""
    if name in MEASUREMENTS:
        from streams.restore import run_measurement

        return run_measurement(name, infra, directory / name, size, emit)
    if name not in SCENARIO_FUNCS:
        raise CommandError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")
    runner = Runner(infra, directory / name, size, WORKERS_NEEDED.get(name, 2), emit)
    try:
        return runner.run_phase(name)
    finally:
        runner.close()


def run_phases(
    names_: Sequence[str],
    infra: Infra,
    directory: Path,
    size: Size,
    workers: int = 2,
    emit: Callable[[str], None] = print,
) -> list[ScenarioResult]:
    """Several scenarios one after the other on one pipeline (the short form)."""
    unknown = [n for n in names_ if n not in SCENARIO_FUNCS]
    if unknown:
        raise CommandError(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}")
    runner = Runner(infra, directory / "phases", size, workers, emit)
    try:
        return [runner.run_phase(name) for name in names_]
    finally:
        runner.close()


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def result_table(results: Sequence[ScenarioResult]) -> list[str]:
    """The per-scenario table RELIABILITY.md shows (markdown)."""
    lines = [
        "| scenario | payments sent | injected | decided | dead letters | faults | violations "
        "| expectations failed | worker exits | recovery after each fault (s) | worst stall (s) "
        "| decisions/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        recov = ", ".join("-" if f.recovery_s is None else f"{f.recovery_s:.1f}" for f in r.faults)
        stall = ", ".join("-" if f.stall_s is None else f"{f.stall_s:.1f}" for f in r.faults)
        lines.append(
            f"| {r.scenario} | {r.payments_sent} | {r.injected} | {r.decided} | "
            f"{r.dead_letters} | {len(r.faults)} | {len(r.violations)} | "
            f"{len(r.expectations_failed)} | {len(r.worker_exits)} | {recov or '-'} | "
            f"{stall or '-'} | {r.decisions_per_s:.0f} |"
        )
    return lines


def _cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    chosen = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in chosen:
        if name not in SCENARIO_FUNCS and name not in MEASUREMENTS:
            raise CommandError(
                f"unknown scenario {name!r}: choose one of "
                f"{', '.join((*SCENARIOS, *MEASUREMENTS))} or all"
            )
    if args.payments < 10:
        raise CommandError(f"--payments {args.payments}: give at least 10")
    if args.rate <= 0:
        raise CommandError(f"--rate {args.rate}: give a positive number of requests per second")
    size = Size(
        payments=args.payments,
        accounts=args.accounts,
        rate_per_s=args.rate,
        partitions=args.partitions,
        fault_every_s=args.fault_every_s,
        outage_s=args.outage_s,
        settle_s=args.settle_s,
        seed=args.seed,
    )
    run_id = time.strftime("%Y%m%dT%H%M%S")
    directory = Path(args.workdir) if args.workdir else settings.state_dir / "chaos" / run_id
    directory.mkdir(parents=True, exist_ok=True)
    print(f"chaos: scenarios {', '.join(chosen)}; files in {directory}")
    results: list[ScenarioResult] = []
    started = time.monotonic()
    on_broker = [name for name in chosen if name not in CLUSTER_SCENARIOS]
    on_cluster = [name for name in chosen if name in CLUSTER_SCENARIOS]
    for group, make_infra, where in (
        (on_broker, private_infra, "infra"),
        (on_cluster, private_cluster_infra, "cluster-infra"),
    ):
        if not group:
            continue
        with make_infra(directory / where, settings) as infra:
            print(f"chaos: private kafka {infra.bootstrap}, postgres {infra.server_dsn}")
            for name in group:
                results.append(run_scenario(name, infra, directory, size))
                _print_result(results[-1])
                if args.json:
                    _write_json(args.json, args, results, time.monotonic() - started)
    print()
    for line in result_table(results):
        print(line)
    failed = [r.scenario for r in results if not r.ok]
    print(
        f"chaos: {len(results)} scenario(s), "
        + (f"FAILED: {', '.join(failed)}" if failed else "all invariants held")
    )
    return 1 if failed else 0


def _print_result(r: ScenarioResult) -> None:
    print(
        f"  {r.scenario}: sent {r.payments_sent} (+{r.injected} injected, {r.probes} probes), "
        f"decided {r.decided}, dead letters {r.dead_letters}, {len(r.violations)} violations, "
        f"{len(r.expectations_failed)} expectations failed, {len(r.worker_exits)} unexpected "
        f"exits, {r.elapsed_s:.0f} s"
    )
    for f in r.faults:
        print(
            f"    {f.kind:<38} {f.target:<22} at {f.at_s:>6.1f} s  recovery "
            f"{'-' if f.recovery_s is None else f'{f.recovery_s:.1f} s':>8}  worst stall "
            f"{'-' if f.stall_s is None else f'{f.stall_s:.1f} s':>8}"
        )


def _write_json(
    path: str, args: argparse.Namespace, results: Sequence[ScenarioResult], elapsed_s: float
) -> None:
    command = "paystream chaos " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("func", "command") and v is not None
    )
    data = {
        "command": command,
        "elapsed_s": round(elapsed_s, 1),
        "machine": {"cpus": os.cpu_count()},
        "scenarios": [r.to_dict() for r in results],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chaos", help="run fault scenarios under load on private Kafka/PostgreSQL, then verify"
    )
    parser.add_argument(
        "--scenario",
        required=True,
        help=f"one of {', '.join(SCENARIOS)}, or all; or a measurement: {', '.join(MEASUREMENTS)}",
    )
    parser.add_argument("--payments", type=int, default=5000, help="load requests per scenario")
    parser.add_argument(
        "--accounts",
        type=int,
        default=None,
        help="accounts in the load (default: payments / 10); restore, failover: accounts "
        "written to the changelog (default: 1,000,000 and 200,000)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="load requests per second")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--fault-every-s", type=float, default=20.0, help="worker-kill: seconds between kills"
    )
    parser.add_argument(
        "--outage-s",
        type=float,
        default=15.0,
        help=(
            "broker-restart, postgres-outage: seconds down; cluster: least seconds down "
            "(the node stays down until every partition answered without it)"
        ),
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=120.0,
        help="longest wait for the system to become consistent",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="where logs and state go (default: under state dir)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.set_defaults(func=_cmd_chaos)


__all__ = [
    "MEASUREMENTS",
    "SCENARIOS",
    "Fault",
    "Infra",
    "ScenarioResult",
    "Size",
    "Violation",
    "private_cluster_infra",
    "private_infra",
    "result_table",
    "run_phases",
    "run_scenario",
    "sink_lag",
]
