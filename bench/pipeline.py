"""``paystream bench pipeline``: the whole pipeline measured from the outside, beside peers.

One invocation measures one mode on a real broker (a private one on free loopback
ports, or ``--external``'s PAYSTREAM_BROKERS), for each peer implementation, on
the same pre-generated load (:mod:`bench.load`, identical bytes for every peer):

- ``--rate max``: the load is produced into a fresh requests topic first, then the
  peer starts and drains it. Throughput is the valid requests decided divided by
  the time from the first decision to the last (Kafka timestamps).
- ``--rate N``: the peer starts on fresh topics and is caught up (a probe request per
  partition decided), then the harness sends the load at N messages per second.
  Latency per request is its decision's timestamp minus its own (matched by
  request_id); throughput runs from the first request sent to the last decision.

A peer's run ends when every valid request of the load has an output; a peer that
exits, stalls (no new decision and next to no CPU for ``STALL_S``) or runs past the
timeout fails that run, and a failed run is reported as such, never as a figure. Per
run and peer the harness also takes the CPU seconds the peer's processes used over
the measured window (``/proc``), their peak resident memory, and the size of their
state directory after they stopped.

A refund is decided only after a round trip through the payee's partition
(payments.legs), behind the payee credits the load queued there; at max rate its
decision can therefore come long after the others. The drain runs to the last
decision all the same (the pipeline is not done before), and
``decisions_per_s_to_99pct`` with ``last_1pct_s`` show how much the tail took.

Peers run in turns, one at a time, on the same broker; each run rotates the order so
that no peer always goes first (cold caches) or last. ``--runs N`` repeats everything;
the median of each figure is quoted and every run goes to the JSON.

Back of the envelope (2 cores shared with the broker and the harness): a request is
~110 bytes of Avro; the broker appends and serves 50-100 MB/s on one core, so the
transport allows several hundred thousand messages/s and the ceiling peer (a Python
loop, ~5 µs per message through librdkafka) 100,000-200,000/s; measured: ~125,000/s
on a 30,000-request drain (4.8 µs of CPU per message). A paystream decision costs
tens of µs of Python (decode, rules, state encode, four to five output records) plus
flushes with acks=all per batch, so one worker lands at a few thousand per second at
best: the ratio to the ceiling is the price of the work itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import measure
from bench.load import INVALID, MALFORMED_EVERY, VALID, Load, LoadSpec, prepare
from bench.peers import PEERS, Peer
from bench.processes import PeerProcess, Sampler, directory_bytes, start_process
from bench.report import summarize, table, write_json
from bench.watch import TIMESTAMP_LOG_APPEND, OutputWatch, check_leading_request_id
from streams import topics as names
from streams.errors import CommandError
from streams.reporting import Progress
from streams.settings import Settings

READY_TIMEOUT_S = 180.0  # a peer answers its probes (fixed rate) within this
FIRST_DECISION_TIMEOUT_S = 180.0  # a peer decides something (max rate) within this
STALL_S = 60.0  # no new decision for this long after the first, and ...
STALL_CPU_SHARE = 0.1  # ... less than this share of a core used meanwhile: it failed
DRAIN_TIMEOUT_S_BASE = 300.0  # default --timeout-s: this plus the load at ...
DRAIN_RATE_PER_S_MIN = 200.0  # ... this many requests per second
PACE_SLEEP_MIN_S = 0.001  # the paced sender sleeps only when this far ahead
POLL_S = 0.2
BROKER_HEAP_MB_MIN = 512


class PeerRunFailed(Exception):
    """One peer's run produced no figures (it exited, stalled or timed out)."""


PEER_NAMES = tuple(p.name for p in PEERS)


def unavailable_reason(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here (its module or virtualenv is missing), or None."""
    import importlib.util

    if peer.venv is not None and not peer.python().exists():
        return f"its virtualenv {peer.venv} does not exist: run `make bench-quix`"

    try:
        found = importlib.util.find_spec(peer.module)
    except ModuleNotFoundError as exc:
        return f"module {peer.module} not found ({exc})"
    return None if found is not None else f"module {peer.module} does not exist yet"


@dataclass
class Options:
    accounts: int = 100_000
    payments: int = 300_000  # valid requests in the load
    rate_per_s: float | None = None  # None: as fast as the peer drains
    duration_s: float = 60.0
    runs: int = 3
    peers: tuple[str, ...] = ()  # empty: every available peer
    partitions: int = 12
    workers: int = 1
    seed: int = 7
    timeout_s: float | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    workdir: Path = Path(".paystream/bench/pipeline")
    keep: bool = False  # keep topics, state directories and the private broker's data
    malformed_every: int = MALFORMED_EVERY
    command: str = ""

    @property
    def mode(self) -> str:
        return "max" if self.rate_per_s is None else "fixed"

    def drain_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return DRAIN_TIMEOUT_S_BASE + self.payments / DRAIN_RATE_PER_S_MIN


def load_size(rate: str, payments: int | None, duration_s: float) -> tuple[float | None, int]:
    """(rate or None for max, valid requests in the load) from the command's options."""
    if rate == "max":
        return None, payments if payments is not None else Options.payments
    try:
        rate_per_s = float(rate)
    except ValueError:
        raise CommandError(
            f"--rate {rate!r}: give max or a number of requests per second"
        ) from None
    if rate_per_s <= 0 or duration_s <= 0:
        raise CommandError(f"--rate {rate} --duration-s {duration_s}: both must be positive")
    if payments is not None:
        raise CommandError(
            "--payments applies to --rate max; at a fixed rate the load is --rate x --duration-s"
        )
    return rate_per_s, max(1, round(rate_per_s * duration_s))


# --------------------------------------------------------------------------------------
# Broker, topics and the peer's environment
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def private_broker(directory: Path, settings: Settings, keep: bool) -> Iterator[str]:
    """A Kafka broker of the bench's own on free loopback ports; stopped (and wiped) on exit."""
    from streams.dev import free_loopback_ports
    from streams.dev.kafka import KafkaBroker

    port, controller_port = free_loopback_ports(2)
    broker = KafkaBroker(
        directory,
        version=settings.kafka_version,
        port=port,
        controller_port=controller_port,
        heap_mb=max(BROKER_HEAP_MB_MIN, settings.kafka_heap_mb),
    )
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.stop()
        if not keep:
            shutil.rmtree(broker.home, ignore_errors=True)


def prepare_topics(settings: Settings) -> None:
    """Fresh topics; the decisions topic stamped by the broker (see :mod:`bench.watch`)."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    from streams.topics import create_topics

    create_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.brokers})
    entry = ConfigEntry(
        "message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(
        ResourceType.TOPIC, settings.topic(names.DECISIONS), incremental_configs=[entry]
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=names.ADMIN_TIMEOUT_S)


def delete_topics(settings: Settings, marker: str) -> None:
    """Every topic whose name holds ``marker`` (the run's topics and the peer's own)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.brokers})
    doomed = [t for t in admin.list_topics(timeout=names.ADMIN_TIMEOUT_S).topics if marker in t]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort: the broker may be going away
                future.result(timeout=names.ADMIN_TIMEOUT_S)


def peer_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a peer process: this machine's, with exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update(settings.to_env())
    env.update(extra)
    return env


def start_peer(peer: Peer, settings: Settings, workers: int, directory: Path) -> list[PeerProcess]:
    from streams.dev import free_loopback_ports

    count = workers if peer.fleet else 1
    processes = []
    for i, port in enumerate(free_loopback_ports(count)):
        env = peer_env(settings, PAYSTREAM_WEB_PORT=str(port))
        processes.append(
            start_process(
                f"{peer.name}-{i + 1}", peer.command(), env, directory / f"{peer.name}-{i + 1}.log"
            )
        )
    return processes


# --------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------


def _stamp(sent_ms: Any, position: int, err: Any, msg: Any) -> None:
    if err is None:
        sent_ms[position] = msg.timestamp()[1]


def preload(settings: Settings, load: Load) -> float:
    """Every message of the load into the requests topic, acknowledged; returns seconds."""
    from streams.chaos import Sender

    sender = Sender(settings)
    bar = Progress("preload", len(load))
    started = time.monotonic()
    for position, message in enumerate(load.messages()):
        sender.send_raw(message.key, message.value)
        bar.update(position + 1)
    left = sender.flush()
    bar.finish(sender.delivered)
    if left or sender.failed or sender.delivered != len(load):
        raise PeerRunFailed(
            f"preload: {sender.delivered} of {len(load)} messages delivered, {left} left, "
            f"failures: {sender.failed[:3]}"
        )
    return time.monotonic() - started


def paced_send(sender: Any, load: Load, rate_per_s: float, alive: Callable[[], None]) -> Any:
    """The load at ``rate_per_s``; returns each message's Kafka CreateTime (ms) by position.

    ``sender`` has delivered before (the probes): its idempotent producer has its id and
    its connections, so the first requests do not wait for them.
    """
    from array import array

    sent_ms = array("q", [-1]) * len(load)
    delivered_before = sender.delivered
    bar = Progress("send", len(load))
    started = time.monotonic()
    for position, message in enumerate(load.messages()):
        ahead = started + position / rate_per_s - time.monotonic()
        if ahead >= PACE_SLEEP_MIN_S:
            time.sleep(ahead)
        sender.send_raw(message.key, message.value, functools.partial(_stamp, sent_ms, position))
        if position % 1000 == 0:
            bar.update(position)
            alive()
    left = sender.flush()
    delivered = sender.delivered - delivered_before
    bar.finish(delivered)
    if left or sender.failed or delivered != len(load):
        raise PeerRunFailed(
            f"send: {delivered} of {len(load)} messages delivered, {left} left, "
            f"failures: {sender.failed[:3]}"
        )
    return sent_ms


def send_probes(settings: Settings, sender: Any, watch: OutputWatch) -> list[bytes]:
    """A 1-minor-unit top-up to an account on each partition; their request ids.

    The watcher learns the ids before they are sent: a fast peer answers before
    ``send`` returns, and an answer to an id the watcher does not know is dropped.
    """
    from streams.chaos import probe_accounts
    from streams.client import new_request

    probes = [
        new_request("TOPUP", account, 1, "EUR", counterparty_id="bank:probe")
        for account in probe_accounts(settings.partitions)
    ]
    ids = [probe["request_id"].encode() for probe in probes]
    watch.track(ids)
    for probe in probes:
        sender.send(dict(probe))
    if sender.flush(60):
        raise PeerRunFailed("probes: not delivered within 60 s")
    return ids


# --------------------------------------------------------------------------------------
# One peer, one run
# --------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every peer's run shares: options, base settings, the load and the work dir."""

    options: Options
    base: Settings
    load: Load
    run_id: str
    directory: Path
    emit: Callable[[str], None] = print
    request_schema_ids: frozenset[int] = frozenset()
    decision_schema_ids: frozenset[int] = frozenset()
    valid_positions: list[int] = field(default_factory=list)
    invalid_positions: list[int] = field(default_factory=list)


def _watchdog(processes: Sequence[PeerProcess], watch: OutputWatch) -> Callable[[], None]:
    def alive() -> None:
        if watch.error is not None:
            raise PeerRunFailed(f"the output watcher failed: {watch.error!r}")
        for proc in processes:
            if not proc.alive():
                raise PeerRunFailed(
                    f"{proc.name} exited with code {proc.process.returncode}; its log "
                    f"({proc.log_path}) ends:\n{proc.log_tail()}"
                )

    return alive


def wait_decided(
    watch: OutputWatch,
    expected: int,
    timeout_s: float,
    alive: Callable[[], None],
    cpu_recent_s: Callable[[float], float],
) -> None:
    """Until ``expected`` valid requests have an output; PeerRunFailed if it does not come.

    No new decision for ``STALL_S`` is a stall only if the peer is idle meanwhile: a
    paystream worker crediting a backlog of payee legs decides nothing for a while (the
    refunds waiting behind them come last) but is busy.
    """
    bar = Progress("decided", expected)
    started = time.monotonic()
    progressed_at = started
    seen = 0
    while True:
        count = watch.required_decided
        now = time.monotonic()
        if count >= expected:
            bar.finish(count)
            return
        alive()
        if count > seen:
            seen, progressed_at = count, now
        if seen == 0 and now - started > FIRST_DECISION_TIMEOUT_S:
            reason = f"no decision within {FIRST_DECISION_TIMEOUT_S:.0f} s"
        elif (
            seen
            and now - progressed_at > STALL_S
            and cpu_recent_s(STALL_S) < STALL_CPU_SHARE * STALL_S
        ):
            reason = f"no new decision and next to no CPU used for {STALL_S:.0f} s"
        elif now - started > timeout_s:
            reason = f"not done within the timeout of {timeout_s:.0f} s"
        else:
            bar.update(count)
            time.sleep(POLL_S)
            continue
        bar.finish(count)
        raise PeerRunFailed(f"{reason}: {count} of {expected} valid requests decided")


def run_peer(bench: Bench, peer: Peer, run: int) -> dict[str, Any]:
    """One peer's measured run on fresh topics; its figures, or ``ok: False`` and why."""
    options = bench.options
    tag = f"{bench.run_id}-{run}-{peer.name}"
    directory = bench.directory / f"run-{run}" / peer.name
    state_dir = directory / "state"
    settings = bench.base.replace(
        topic_prefix=f"bench-{tag}.",
        app_id=f"bench-{tag}",
        partitions=options.partitions,
        state_dir=state_dir,
    )
    bench.emit(f"run {run}: {peer.name} on {settings.topic(names.REQUESTS)}")
    processes: list[PeerProcess] = []
    sampler: Sampler | None = None
    watch: OutputWatch | None = None
    try:
        prepare_topics(settings)
        outputs = bench.request_schema_ids if peer.outputs_are_requests else None
        watch = OutputWatch(
            settings,
            settings.topic(names.DECISIONS),
            outputs or bench.decision_schema_ids,
            bench.load.index_of,
            bench.load.flags,
        )
        preload_s = preload(settings, bench.load) if options.rate_per_s is None else None
        watch.start()
        processes = start_peer(peer, settings, options.workers, directory)
        sampler = Sampler(processes)
        sampler.start()
        alive = _watchdog(processes, watch)
        sent_ms = None
        ready_s = None
        if options.rate_per_s is not None:
            started = time.monotonic()
            sender = catch_up(settings, len(processes), watch, alive)
            ready_s = time.monotonic() - started
            sent_ms = paced_send(sender, bench.load, options.rate_per_s, alive)
        wait_decided(
            watch,
            len(bench.valid_positions),
            options.drain_timeout_s(),
            alive,
            sampler.cpu_recent_s,
        )
        stopped_cleanly = all([proc.stop() for proc in processes])
        sampler.stop()
        watch.stop()
        figures = _figures(bench, watch, sampler, sent_ms, directory_bytes(state_dir))
        figures.update(
            ok=True, preload_s=preload_s, ready_s=ready_s, stopped_cleanly=stopped_cleanly
        )
        return figures
    except PeerRunFailed as exc:
        bench.emit(f"  {peer.name} FAILED: {exc}")
        return {"ok": False, "error": str(exc)}
    finally:
        _stop(processes)
        for thread in (sampler, watch):
            if thread is not None:
                thread.stop()
        if not options.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
            with contextlib.suppress(Exception):
                delete_topics(settings, f"bench-{tag}")


def catch_up(
    settings: Settings, members: int, watch: OutputWatch, alive: Callable[[], None]
) -> Any:
    """Until the peer answers a probe on every partition; the warmed-up sender to go on with.

    A fleet first settles its consumer group: workers joining one by one under the
    load would be rebalances the fixed rate should not meet.
    """
    from streams.chaos import Sender

    if members > 1:
        wait_group_stable(settings, members, READY_TIMEOUT_S, alive)
    sender = Sender(settings)
    probes = send_probes(settings, sender, watch)
    if not _wait(lambda: watch.seen(probes), READY_TIMEOUT_S, alive):
        raise PeerRunFailed(f"no answer to the probes within {READY_TIMEOUT_S:.0f} s")
    return sender


def _wait(done: Callable[[], bool], timeout_s: float, alive: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        alive()
        time.sleep(POLL_S)
    return True


def wait_group_stable(
    settings: Settings, members: int, timeout_s: float, alive: Callable[[], None]
) -> None:
    """Until the peer's consumer group (its app id) is stable with ``members`` members."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    group = settings.app_id
    admin = AdminClient({"bootstrap.servers": settings.brokers})
    state = "not described yet"

    def stable() -> bool:
        nonlocal state
        try:
            found = admin.describe_consumer_groups([group])[group].result(timeout=10)
        except Exception as exc:  # not coordinated yet: ask again
            state = str(exc)
            return False
        state = f"{found.state}, {len(found.members)} member(s)"
        return found.state == ConsumerGroupState.STABLE and len(found.members) == members

    if not _wait(stable, timeout_s, alive):
        raise PeerRunFailed(
            f"consumer group {group} not stable with {members} members within "
            f"{timeout_s:.0f} s (last seen: {state})"
        )


def _stop(processes: Sequence[PeerProcess]) -> None:
    for proc in processes:
        proc.stop()


def _figures(
    bench: Bench, watch: OutputWatch, sampler: Sampler, sent_ms: Any, state_bytes: int
) -> dict[str, Any]:
    """Every figure of one peer's run (None where the mode has none)."""
    load = bench.load
    decided_ms = watch.decided_ms
    stamps = [decided_ms[i] for i in bench.valid_positions]
    first_ms, last_ms = min(stamps), max(stamps)
    start_ms = first_ms
    figures: dict[str, Any] = {}
    if sent_ms is not None:
        start_ms = min(sent_ms[i] for i in bench.valid_positions)
        latencies = [decided_ms[i] - sent_ms[i] for i in bench.valid_positions]
        figures.update(measure.latency_summary(latencies))
        figures["latency_quantiles_ms"] = measure.latency_quantiles(latencies)
        last_sent_ms = max(sent_ms[i] for i in bench.valid_positions)
        figures["sent_per_s"] = measure.rate_per_s(len(stamps), start_ms, last_sent_ms)
        figures["send_s"] = (last_sent_ms - start_ms) / 1000.0
        figures["lag_at_end_s"] = (last_ms - last_sent_ms) / 1000.0
    decided = len(stamps)
    rate_99, at_99_ms = measure.rate_to_fraction(stamps, start_ms, 0.99)
    cpu_s = measure.cpu_between(sampler.samples, start_ms, last_ms)
    bucket_ms = measure.bucket_ms_for(last_ms - start_ms)
    figures.update(
        decided=decided,
        decisions_per_s=measure.rate_per_s(decided, start_ms, last_ms),
        measured_s=(last_ms - start_ms) / 1000.0,
        decisions_per_s_to_99pct=rate_99,
        last_1pct_s=(last_ms - at_99_ms) / 1000.0,
        cpu_s=cpu_s,
        cpu_s_per_1000=measure.per_thousand(cpu_s, decided),
        cpu_s_total=sampler.samples[-1].cpu_s if sampler.samples else None,
        rss_peak_bytes=sampler.peak_rss_bytes,
        processes=len(sampler.pids_seen),
        state_bytes=state_bytes,
        state_bytes_per_million_accounts=measure.per_million(state_bytes, load.info.accounts_held),
        invalid_decided=sum(1 for i in bench.invalid_positions if decided_ms[i] >= 0),
        outputs=watch.outputs,
        unreadable_outputs=watch.unreadable,
        decision_timestamps=(
            "LogAppendTime" if watch.timestamp_types == {TIMESTAMP_LOG_APPEND} else "CreateTime"
        ),
        throughput_bucket_ms=bucket_ms,
        throughput_per_s=measure.throughput_buckets(stamps, bucket_ms, origin_ms=start_ms),
    )
    return figures


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def choose_peers(asked: Sequence[str], emit: Callable[[str], None]) -> tuple[list[Peer], dict]:
    """The peers to run (asked for, or every one available) and why others are skipped."""
    by_name = {p.name: p for p in PEERS}
    unknown = [name for name in asked if name not in by_name]
    if unknown:
        raise CommandError(f"--peer {', '.join(unknown)}: choose from {', '.join(PEER_NAMES)}")
    wanted = [by_name[name] for name in dict.fromkeys(asked)] if asked else list(PEERS)
    chosen, skipped = [], {}
    for peer in wanted:
        reason = unavailable_reason(peer)
        if reason is None:
            chosen.append(peer)
        else:
            skipped[peer.name] = reason
            emit(f"peer {peer.name}: skipped, {reason}")
    if not chosen:
        raise CommandError("no peer to run: every one asked for is unavailable")
    return chosen, skipped


def bench_pipeline(
    settings: Settings, options: Options, external: bool, emit: Callable[[str], None] = print
) -> dict[str, Any]:
    """The whole benchmark; returns (and writes, with ``json_path``) the summary."""
    peers, skipped = choose_peers(options.peers, emit)
    run_id = uuid.uuid4().hex[:6]
    directory = options.workdir / time.strftime("%Y%m%dT%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    spec = LoadSpec(
        accounts=options.accounts,
        requests=options.payments,
        seed=options.seed,
        malformed_every=options.malformed_every,
    )
    load = prepare(spec, settings.state_dir / "bench" / "loads", emit)
    emit(_describe_load(load))
    with contextlib.ExitStack() as stack:
        if not external:
            bootstrap = stack.enter_context(
                private_broker(directory / "broker", settings, options.keep)
            )
            emit(f"kafka: private broker {bootstrap} (files in {directory / 'broker'})")
            settings = settings.replace(brokers=bootstrap)
        else:
            emit(f"kafka: external broker {settings.brokers}")
        bench = _bench(options, settings, load, run_id, directory, emit)
        summary = _summary(options, load, peers, skipped, external)
        for run in range(1, options.runs + 1):
            turn = (run - 1) % len(peers)
            order = peers[turn:] + peers[:turn]
            results = {peer.name: run_peer(bench, peer, run) for peer in order}
            summary["runs"].append({"run": run, "order": [p.name for p in order], "peers": results})
            summarize(summary, [p.name for p in peers])
            if options.json_path is not None:
                write_json(options.json_path, summary)
    for line in table(summary):
        emit(line)
    if options.json_path is not None:
        emit(f"wrote {options.json_path}")
    if options.plot_path is not None:
        from bench.plot import plot_summary

        if plot_summary(summary, options.plot_path):
            emit(f"wrote {options.plot_path}")
        else:
            emit("plot: matplotlib is not installed (pip install matplotlib); no plot drawn")
    return summary


def _bench(
    options: Options,
    settings: Settings,
    load: Load,
    run_id: str,
    directory: Path,
    emit: Callable[[str], None],
) -> Bench:
    from schemas.codec import load_codec
    from streams.client import new_request

    codec = load_codec(settings.schema_registry_url)
    sample: dict[str, Any] = dict(new_request("TOPUP", "bench", 1, "EUR", counterparty_id="bank:x"))
    request_ids = check_leading_request_id(codec, names.REQUESTS, sample)
    decision = codec.for_topic(names.DECISIONS)
    if decision.parsed_schema["fields"][0]["name"] != "request_id":
        raise AssertionError("payment decisions no longer start with request_id")
    return Bench(
        options,
        settings,
        load,
        run_id,
        directory,
        emit,
        request_schema_ids=request_ids,
        decision_schema_ids=frozenset(decision.known_schema_ids),
        valid_positions=list(load.positions(VALID)),
        invalid_positions=list(load.positions(INVALID)),
    )


def _describe_load(load: Load) -> str:
    info = load.info
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in info.by_kind.items())
    return (
        f"load: {info.valid:,} requests ({kinds}) over {info.accounts_held:,} accounts "
        f"({info.accounts:,} customers, {info.simulated_days} simulated day(s)); "
        f"+{info.undecodable} undecodable and {info.invalid} invalid messages; "
        f"{info.value_bytes / 1e6:,.1f} MB"
    )


def _summary(
    options: Options, load: Load, peers: Sequence[Peer], skipped: dict, external: bool
) -> dict[str, Any]:
    return {
        "benchmark": "pipeline",
        "command": options.command,
        "mode": options.mode,
        "rate_per_s": options.rate_per_s,
        "duration_s": options.duration_s if options.rate_per_s is not None else None,
        "partitions": options.partitions,
        "workers": options.workers,
        "peers": [p.name for p in peers],
        "skipped_peers": skipped,
        "load": load.info.to_dict(),
        "broker": "external" if external else "private",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": [],
        "median": {},
        "failures": {},
        "ratios": {},
    }
