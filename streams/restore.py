"""Restore and failover, measured: ``paystream chaos --scenario restore|failover``.

**restore.** The accounts table's changelog is filled with N account values (default
1,000,000), then a worker with an empty state directory is started: it must restore
the whole table before it decides anything. Measured: the wall time from spawning it
until a probe on every partition was decided; the restore itself (faust's
"Restoring state from changelog topics" to "Done reading from changelog topics"),
the records it read and records/s; the worker's peak memory. Then the worker is
restarted gracefully with its state directory kept: it reads only the changelog's
tail.

**failover.** Two workers over a changelog of N accounts (default 200,000); kill -9
of one; measured: the time until probes on the partitions it owned are decided by
the survivor, split into detection (the group coordinator noticing the silent
member: ``PAYSTREAM_GROUP_SESSION_TIMEOUT_S``), the survivor's restore of those
partitions and the rest. Run twice in one command, on fresh pipelines: without a
standby replica, then with one (``PAYSTREAM_STANDBY_REPLICAS=1``).

Why the changelog is written directly: a restore depends only on what the
changelog holds, and a million accounts through the pipeline would take most of an
hour at the load's pace. The values are still real: a seeded load
(:mod:`streams.loadgen`) for ``TEMPLATE_ACCOUNTS`` accounts is decided in-process by
the payment rules (``decide``, ``apply_leg``, the fraud feature state), and each of
the N accounts gets one of those values under its own id -- the same bytes a worker
writes, with the same skew of busy and quiet accounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agents.rules.state import AccountState
from streams import topics as names
from streams.chaos import (
    CLIENT_LOG_LEVEL,
    FX_CURRENCIES,
    PROBE_EVERY_S,
    DecisionWatch,
    Fault,
    Infra,
    Pipeline,
    Prober,
    ScenarioResult,
    Sender,
    Size,
    publish_fx,
    wait_pipeline_ready,
)
from streams.errors import CommandError
from streams.settings import Settings

RESTORE_ACCOUNTS_DEFAULT = 1_000_000
FAILOVER_ACCOUNTS_DEFAULT = 200_000
TEMPLATE_ACCOUNTS = 200
"""Accounts decided in-process to make the values; each of the N gets one of them."""
TEMPLATE_REQUESTS_PER_ACCOUNT = 3
"""Requests per account in the template load (a top-up and a few payments, refunds...):
the idempotency records of a week at that pace are most of a value's bytes."""
TEMPLATE_SPAN_MS = 24 * 3600 * 1000
"""The template load's requests are spread over the last day (request clock)."""
ACCOUNT_ID_FORMAT = "acct-{:07d}"
"""As streams.loadgen names accounts."""

FILL_PROGRESS_EVERY = 200_000
FILL_FLUSH_TIMEOUT_S = 600.0
FILL_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "partitioner": "murmur2_random",  # the partitioner the workers and clients use
    "compression.type": "lz4",
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "message.max.bytes": names.MESSAGE_BYTES_MAX,
}

RESTORE_TIMEOUT_S = 3600.0
"""Longest a worker may take to restore and answer (1M accounts: minutes, not an hour)."""
STANDBY_IDLE_WINDOW_S = 5.0
STANDBY_IDLE_CPU_FRACTION = 0.2
"""A standby is caught up when its worker, which then only answers probes, uses less
than this share of a core over the window (faust logs no end of standby catch-up)."""
STANDBY_CATCH_UP_TIMEOUT_S = 1800.0
FAILOVER_TIMEOUT_S = 1800.0
WEB_TIMEOUT_S = 10.0
PROGRESS_POLL_S = PROBE_EVERY_S

_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*)$")
RESTORE_BEGIN = "Restoring state from changelog topics"
RESTORE_END = "Done reading from changelog topics"
WORKER_READY = "Worker ready"
HIGHWATER_ACTIVE = "Highwater for active changelog partitions"
OFFSETS_ACTIVE = "active offsets at start of reading"
REBALANCE_SEEN = ("Heartbeat failed for group", "Revoking previously assigned partitions")
ASSIGNMENT_TITLE = "Setting newly assigned partitions"
DITTO = "\u3003"


# --------------------------------------------------------------------------------------
# Filling the changelog
# --------------------------------------------------------------------------------------


def account_templates(
    accounts: int, requests_per_account: int, seed: int, now_ms: int, requests_topic: str
) -> list[AccountState]:
    """Account values made by the real rules from a seeded load (customer accounts only).

    Every request is decided on its payer's state; every leg (payee credits, refund
    debits and results) is applied to its account, as the workers would; the fraud
    feature state rides along. Requests are spread over the day before ``now_ms``.
    """
    from agents.fraud import FraudStage
    from agents.pipeline import policy_from
    from agents.rules import Context, apply_leg, decide
    from agents.rules.decide import NO_FRAUD, Position, is_customer_account
    from agents.rules.records import Leg
    from models.features import FEATURE_NAMES
    from models.scorer import RulesBaselineScorer
    from streams.loadgen import LoadSpec, generate

    total = accounts * requests_per_account
    step_ms = max(1, TEMPLATE_SPAN_MS // max(1, total))
    spec = LoadSpec(
        requests=total,
        accounts=accounts,
        currencies=FX_CURRENCIES,
        seed=seed,
        start_ms=now_ms - step_ms * total,
        step_ms=step_ms,
    )
    policy = policy_from(Settings())
    fraud = FraudStage(RulesBaselineScorer(FEATURE_NAMES))
    legs_topic = requests_topic.replace(names.REQUESTS, names.LEGS)
    states: dict[str, AccountState] = {}
    pending: deque[Leg] = deque()
    leg_offset = 0
    for offset, request in enumerate(generate(spec)):
        clock_ms = request["created_at_ms"]
        context = Context(
            policy,
            _fx_quotes(clock_ms),
            clock_ms,
            # Everything before this request was flushed: stored outputs are dropped.
            {f"{requests_topic}:0": offset, f"{legs_topic}:0": leg_offset},
        )
        account = request["account_id"]
        observed = fraud.features_for(states.get(account), request)
        state, outcomes = decide(
            states.get(account), request, context, Position(requests_topic, 0, offset), NO_FRAUD
        )
        if observed is not None:
            state.features = observed[0]
        states[account] = state
        pending.extend(outcomes.legs)
        while pending:
            leg = pending.popleft()
            payee = leg["account_id"]
            position = Position(legs_topic, 0, leg_offset)
            leg_offset += 1
            states[payee], leg_outcomes = apply_leg(states.get(payee), leg, context, position)
            pending.extend(leg_outcomes.legs)
    return [state for account, state in sorted(states.items()) if is_customer_account(account)]


def _fx_quotes(as_of_ms: int) -> dict[str, Any]:
    """The load generator's rates, quoted at ``as_of_ms`` (fresh for every request)."""
    from agents.rules.fx import FxQuote
    from streams.loadgen import fx_rates

    return {
        f"{rate['base']}/{rate['quote']}": FxQuote(
            rate["base"], rate["quote"], Decimal(rate["rate"]), rate["spread_bps"], as_of_ms
        )
        for rate in fx_rates(FX_CURRENCIES, as_of_ms)
    }


def clone_value(template: bytes, template_id: str, account_id: str) -> bytes:
    """A template account's serialized value as account ``account_id``'s.

    Replaces the id where it is a whole JSON string (the account and its decisions);
    ids of other accounts (payees) never equal it, so they stay.
    """
    return template.replace(json.dumps(template_id).encode(), json.dumps(account_id).encode())


@dataclass(frozen=True)
class FillReport:
    records: int
    value_bytes: int
    value_bytes_max: int
    seconds: float
    end_offsets: dict[int, int]

    @property
    def value_bytes_mean(self) -> float:
        return self.value_bytes / max(1, self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "value_bytes_mean": round(self.value_bytes_mean),
            "value_bytes_max": self.value_bytes_max,
            "value_mb_total": round(self.value_bytes / 1e6, 1),
            "seconds": round(self.seconds, 1),
            "records_per_s": round(self.records / max(self.seconds, 1e-9)),
        }


def fill_accounts_changelog(
    settings: Settings, accounts: int, seed: int, emit: Callable[[str], None] = print
) -> FillReport:
    """Write ``accounts`` account values to the (empty) accounts changelog, keyed by id."""
    from confluent_kafka import Producer

    topic = names.accounts_changelog(settings)
    templates = [
        (state.account_id, state.to_bytes())
        for state in account_templates(
            TEMPLATE_ACCOUNTS,
            TEMPLATE_REQUESTS_PER_ACCOUNT,
            seed,
            int(time.time() * 1000),
            settings.topic(names.REQUESTS),
        )
    ]
    producer = Producer(
        {
            **FILL_PRODUCER_CONFIG,
            "bootstrap.servers": settings.brokers,
            "log_level": CLIENT_LOG_LEVEL,
        }
    )
    failures: list[str] = []
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        elif msg.offset() >= ends.get(msg.partition(), -1):
            ends[msg.partition()] = msg.offset() + 1

    started = time.monotonic()
    value_bytes = value_bytes_max = 0
    for i in range(accounts):
        template_id, template = templates[i % len(templates)]
        account = ACCOUNT_ID_FORMAT.format(i)
        value = clone_value(template, template_id, account)
        value_bytes += len(value)
        value_bytes_max = max(value_bytes_max, len(value))
        while True:
            try:
                producer.produce(topic, value, account.encode(), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain
                producer.poll(0.05)
        if (i + 1) % FILL_PROGRESS_EVERY == 0:
            producer.poll(0)
            emit(
                f"  filled {i + 1:,} of {accounts:,} accounts ({time.monotonic() - started:.0f} s)"
            )
    undelivered = producer.flush(FILL_FLUSH_TIMEOUT_S)
    if undelivered or failures:
        raise CommandError(
            f"filling {topic}: {undelivered} undelivered, {len(failures)} failed "
            f"({failures[:3]}); is the broker healthy?"
        )
    return FillReport(
        accounts,
        value_bytes,
        value_bytes_max,
        time.monotonic() - started,
        dict(sorted(ends.items())),
    )


# --------------------------------------------------------------------------------------
# What a worker's log says
# --------------------------------------------------------------------------------------


def log_stamp(line: str) -> float | None:
    """The wall-clock time (epoch seconds) a faust log line was written, or None."""
    match = _LOG_LINE.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_lines(path: Path, offset: int) -> list[str]:
    """The lines of a log from byte ``offset`` on (a worker appends across restarts)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []


def first_stamp(lines: list[str], needles: tuple[str, ...], after: float = 0.0) -> float | None:
    """The time of the first stamped line at or after ``after`` containing any needle."""
    for line in lines:
        stamp = log_stamp(line)
        if stamp is not None and stamp >= after and any(n in line for n in needles):
            return stamp
    return None


def log_table(lines: list[str], title_index: int) -> list[list[str]]:
    """Rows of the table faust logs after line ``title_index`` (ditto marks resolved)."""
    rows: list[list[str]] = []
    header_seen = False
    for line in lines[title_index + 1 :]:
        text = line.strip()
        if text.startswith("+"):
            continue
        if not text.startswith("|"):
            break
        cells = [cell.strip() for cell in text.strip("|").split("|")]
        if not header_seen:  # the first row names the columns
            header_seen = True
            continue
        if cells and cells[0] == DITTO and rows:
            cells[0] = rows[-1][0]
        rows.append(cells)
    return rows


def restored_records(lines: list[str], topic: str, after: float = 0.0) -> int | None:
    """Records of ``topic`` the first restore at or after ``after`` had to read.

    From faust's "Highwater" (last offset per partition) and "offsets at start of
    reading" (last offset already in the local store) tables logged before it; 0 when
    the recovery had nothing to read; None when the log shows no recovery.
    """
    begin = end = None
    highwater_at = offsets_at = None
    for index, line in enumerate(lines):
        stamp = log_stamp(line)
        if stamp is None or stamp < after:
            continue
        if HIGHWATER_ACTIVE in line:
            highwater_at = index
        elif OFFSETS_ACTIVE in line:
            offsets_at = index
        elif RESTORE_BEGIN in line:
            begin = index
            break
        elif WORKER_READY in line and highwater_at is not None:
            end = index
            break
    if highwater_at is None or offsets_at is None:
        return None
    if begin is None and end is not None:
        return 0
    highwaters = {int(r[1]): int(r[2]) for r in log_table(lines, highwater_at) if r[0] == topic}
    starts = {int(r[1]): int(r[2]) for r in log_table(lines, offsets_at) if r[0] == topic}
    return sum(max(0, high - starts.get(p, -1)) for p, high in highwaters.items())


@dataclass
class RecoveryTimes:
    """One worker's way back, in seconds from ``since`` (None: not in its log)."""

    rebalance_s: float | None = None  # it learned of the rebalance
    restore_begin_s: float | None = None
    restore_end_s: float | None = None
    ready_s: float | None = None
    records: int | None = None  # read from the accounts changelog

    @property
    def restore_s(self) -> float | None:
        if self.restore_begin_s is None or self.restore_end_s is None:
            return None
        return self.restore_end_s - self.restore_begin_s

    def to_dict(self) -> dict[str, Any]:
        restore = self.restore_s
        return {
            "rebalance_seen_s": _round(self.rebalance_s),
            "restore_begin_s": _round(self.restore_begin_s),
            "restore_s": _round(restore),
            "ready_s": _round(self.ready_s),
            "restored_records": self.records,
            "restored_records_per_s": (
                round(self.records / restore) if self.records and restore else None
            ),
        }


def recovery_times(path: Path, offset: int, since_wall: float, changelog: str) -> RecoveryTimes:
    """When a worker saw a rebalance, restored and got ready, after ``since_wall``."""
    lines = log_lines(path, offset)

    def after(needles: tuple[str, ...], start: float) -> float | None:
        stamp = first_stamp(lines, needles, start)
        return None if stamp is None else stamp - since_wall

    times = RecoveryTimes(rebalance_s=after(REBALANCE_SEEN, since_wall))
    start = since_wall + (times.rebalance_s or 0.0)
    times.ready_s = after((WORKER_READY,), start)
    end_of_recovery = since_wall + times.ready_s if times.ready_s is not None else float("inf")
    begin = after((RESTORE_BEGIN,), start)
    if begin is not None and since_wall + begin <= end_of_recovery:
        times.restore_begin_s = begin
        times.restore_end_s = after((RESTORE_END,), since_wall + begin)
    times.records = restored_records(lines, changelog, start)
    return times


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory of a live process (VmHWM), in MB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pids: list[int], window_s: float, fraction_max: float, timeout_s: float) -> bool:
    """Until each process uses under ``fraction_max`` of a core over ``window_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(window_s)
        after = [cpu_seconds(pid) for pid in pids]
        if all(
            b is not None and a is not None and (a - b) / window_s < fraction_max
            for b, a in zip(before, after, strict=True)
        ):
            return True
    return False


def active_partitions(web_port: int, changelog: str) -> dict[int, list[int]]:
    """Active partitions of ``changelog`` per worker web port, from faust's ``/router/``.

    Table partitions are co-partitioned with the agents' topics: a worker active for
    changelog partition p owns payments.requests partition p.
    """
    url = f"http://127.0.0.1:{web_port}/router/"
    with urllib.request.urlopen(url, timeout=WEB_TIMEOUT_S) as response:
        routes: dict[str, dict[str, list[int]]] = json.loads(response.read())
    return {
        int(host.rsplit(":", 1)[1].strip("/")): sorted(topics.get(changelog, []))
        for host, topics in routes.items()
    }


def parse_partition_set(text: str) -> set[int]:
    """faust's compact partition sets: ``{0-3}``, ``{4, 6-7}``, ``{}``."""
    found: set[int] = set()
    for part in text.strip().strip("{}").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def assigned_partitions(lines: list[str], topic: str) -> set[int] | None:
    """``topic``'s partitions in the latest assignment a worker logged (active and standby)."""
    titles = [i for i, line in enumerate(lines) if ASSIGNMENT_TITLE in line]
    if not titles:
        return None
    rows = log_table(lines, titles[-1])
    return set().union(*(parse_partition_set(row[1]) for row in rows if row[0] == topic))


def _size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _probed(pipeline: Pipeline) -> Iterator[tuple[DecisionWatch, Prober]]:
    """A decision watch and running probes on the pipeline, stopped on exit."""
    watch = DecisionWatch(pipeline.settings)
    watch.start()
    prober = Prober(Sender(pipeline.settings), pipeline.size.partitions)
    prober.start()
    try:
        yield watch, prober
    finally:
        prober.stop()
        watch.stop()


def _wait_answered(
    pipeline: Pipeline,
    prober: Prober,
    watch: DecisionWatch,
    since: float,
    partitions: list[int] | None,
    timeout_s: float,
) -> float:
    """Seconds from ``since`` until each partition decided a probe sent after it."""
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        answered = prober.recovery(since, watch.first_seen, partitions)
        if answered is not None:
            return answered
        if not any(proc.alive() for proc in pipeline.workers.values()):
            raise CommandError(f"every worker exited; see the logs in {pipeline.directory}")
        time.sleep(PROGRESS_POLL_S)
    raise CommandError(
        f"probes were not decided within {timeout_s:.0f} s; see the logs in {pipeline.directory}"
    )


def _timed_start(
    pipeline: Pipeline, name: str, prober: Prober, watch: DecisionWatch, changelog: str
) -> dict[str, Any]:
    """Start worker ``name`` and time it until it answers on every partition."""
    log_path = pipeline.directory / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    since_wall, since = time.time(), time.monotonic()
    proc = pipeline.start_worker(name)
    answered = _wait_answered(pipeline, prober, watch, since, None, RESTORE_TIMEOUT_S)
    times = recovery_times(log_path, offset, since_wall, changelog)
    cpu_s = cpu_seconds(proc.process.pid)
    return {
        "answered_s": round(answered, 2),
        **times.to_dict(),
        # CPU time is what the restore costs; wall time also depends on the machine's load.
        "worker_cpu_s": None if cpu_s is None else round(cpu_s, 1),
        "peak_rss_mb": peak_rss_mb(proc.process.pid),
        "at": since,
    }


def run_restore(
    infra: Infra, directory: Path, size: Size, emit: Callable[[str], None] = print
) -> ScenarioResult:
    """A fresh worker restoring N accounts, then a restart that keeps its state dir."""
    accounts = size.accounts or RESTORE_ACCOUNTS_DEFAULT
    result = ScenarioResult("restore")
    started = time.monotonic()
    pipeline = Pipeline(infra, directory, size, "restore")
    try:
        changelog = names.accounts_changelog(pipeline.settings)
        publish_fx(pipeline.settings)
        emit(f"restore: filling {changelog} with {accounts:,} accounts")
        fill = fill_accounts_changelog(pipeline.settings, accounts, size.seed, emit)
        emit(
            f"  {fill.records:,} values, {fill.value_bytes_mean:.0f} bytes on average, in "
            f"{fill.seconds:.1f} s"
        )
        with _probed(pipeline) as (watch, prober):
            fresh = _timed_start(pipeline, "worker-a", prober, watch, changelog)
            state_mb = round(_size_of(pipeline.directory / "workers") / 1e6, 1)
            emit(f"  fresh worker: {_describe_start(fresh)}")
            pipeline.stop_worker("worker-a")
            kept = _timed_start(pipeline, "worker-a", prober, watch, changelog)
            emit(f"  restart, state kept: {_describe_start(kept)}")
        for kind, timing in (
            ("fresh worker, empty state dir", fresh),
            ("graceful restart, state dir kept", kept),
        ):
            at = timing.pop("at")
            result.faults.append(
                Fault(
                    kind,
                    "worker-a",
                    round(at - started, 2),
                    round(at - started, 2),
                    0.0,
                    recovery_s=timing["answered_s"],
                    detail=_describe_start(timing),
                )
            )
        result.notes.update(
            accounts=accounts,
            partitions=size.partitions,
            changelog=fill.to_dict(),
            fresh_worker=fresh,
            restart_state_kept=kept,
            state_dir_mb=state_mb,
        )
        written = sum(fill.end_offsets.values())
        if written != accounts or fresh["restored_records"] not in (None, written):
            result.expectations_failed.append(
                f"{accounts} accounts filled, {written} records on the changelog, "
                f"{fresh['restored_records']} restored by the fresh worker"
            )
    finally:
        pipeline.close()
    result.elapsed_s = round(time.monotonic() - started, 2)
    return result


def _describe_start(timing: dict[str, Any]) -> str:
    rate = timing.get("restored_records_per_s")
    return (
        f"answered on every partition after {timing['answered_s']} s; restore "
        f"{timing['restore_s']} s for {timing['restored_records']} records"
        + (f" ({rate:,}/s)" if rate else "")
        + f"; worker CPU {timing['worker_cpu_s']} s; peak RSS {timing['peak_rss_mb']} MB"
    )


def run_failover(
    infra: Infra, directory: Path, size: Size, emit: Callable[[str], None] = print
) -> ScenarioResult:
    """kill -9 of one of two workers, without and then with a standby replica."""
    accounts = size.accounts or FAILOVER_ACCOUNTS_DEFAULT
    result = ScenarioResult("failover")
    started = time.monotonic()
    runs: dict[str, Any] = {}
    for standby in (0, 1):
        fault, run = _failover_once(infra, directory, size, accounts, standby, started, emit)
        result.faults.append(fault)
        runs[f"standby_replicas_{standby}"] = run
        if run.get("expectation_failed"):
            result.expectations_failed.append(run["expectation_failed"])
    result.notes.update(accounts=accounts, partitions=size.partitions, **runs)
    result.elapsed_s = round(time.monotonic() - started, 2)
    return result


def _failover_once(
    infra: Infra,
    directory: Path,
    size: Size,
    accounts: int,
    standby: int,
    started: float,
    emit: Callable[[str], None],
) -> tuple[Fault, dict[str, Any]]:
    pipeline = Pipeline(
        infra,
        directory / f"standby-{standby}",
        size,
        f"failover-standby-{standby}",
        extra_env={"PAYSTREAM_STANDBY_REPLICAS": str(standby)},
    )
    try:
        settings = pipeline.settings
        changelog = names.accounts_changelog(settings)
        publish_fx(settings)
        emit(f"failover, standby replicas {standby}: filling {changelog} with {accounts:,}")
        fill = fill_accounts_changelog(settings, accounts, size.seed, emit)
        with _probed(pipeline) as (watch, prober):
            spawned = time.monotonic()
            for name in ("worker-a", "worker-b"):
                pipeline.start_worker(name)
            ready_at = wait_pipeline_ready(pipeline, prober, watch, RESTORE_TIMEOUT_S)
            victim, survivor = pipeline.workers["worker-a"], pipeline.workers["worker-b"]
            idle = wait_idle(
                [victim.process.pid, survivor.process.pid],
                STANDBY_IDLE_WINDOW_S,
                STANDBY_IDLE_CPU_FRACTION,
                STANDBY_CATCH_UP_TIMEOUT_S,
            )
            assert victim.web_port is not None and survivor.web_port is not None
            actives = active_partitions(survivor.web_port, changelog)
            owned = actives.get(victim.web_port, [])
            assigned = assigned_partitions(log_lines(survivor.log_path, 0), changelog) or set()
            standbys = sorted(assigned - set(actives.get(survivor.web_port, [])))
            emit(
                f"  ready (standbys caught up: {idle}); killing worker-a, owner of partitions "
                f"{owned}; worker-b holds standbys of {sorted(standbys)}"
            )
            offset = survivor.log_path.stat().st_size
            at_wall, at = time.time(), time.monotonic()
            pipeline.kill_worker("worker-a")
            failover = _wait_answered(pipeline, prober, watch, at, owned, FAILOVER_TIMEOUT_S)
            everywhere = _wait_answered(pipeline, prober, watch, at, None, FAILOVER_TIMEOUT_S)
            time.sleep(2 * PROBE_EVERY_S)
            stall = prober.stall(at, time.monotonic() - PROBE_EVERY_S, watch.first_seen)
        times = recovery_times(survivor.log_path, offset, at_wall, changelog)
        run = {
            "changelog": fill.to_dict(),
            "startup_s": round(ready_at - spawned, 2),
            "standbys_caught_up": idle,
            "victim_partitions": owned,
            "survivor_standby_partitions": sorted(standbys),
            "failover_s": round(failover, 2),
            "every_partition_s": round(everywhere, 2),
            "session_timeout_s": settings.group_session_timeout_s,
            "survivor": times.to_dict(),
        }
        emit(f"  failover: {_describe_failover(run)}")
        if not owned:
            run["expectation_failed"] = "worker-a owned no partition when it was killed"
        elif standby and not set(owned) <= set(standbys):
            run["expectation_failed"] = (
                f"worker-b held standbys of {sorted(standbys)}, not all of {owned}"
            )
        fault = Fault(
            f"kill -9 of a worker, standby replicas {standby}",
            "worker-a",
            round(at - started, 2),
            round(at - started, 2),
            0.0,
            recovery_s=round(failover, 2),
            stall_s=None if stall is None else round(stall, 2),
            detail=_describe_failover(run),
        )
        return fault, run
    finally:
        pipeline.close()


def _describe_failover(run: dict[str, Any]) -> str:
    survivor = run["survivor"]
    return (
        f"its partitions answered after {run['failover_s']} s (every partition "
        f"{run['every_partition_s']} s): rebalance seen after {survivor['rebalance_seen_s']} s "
        f"(session timeout {run['session_timeout_s']} s), restore {survivor['restore_s']} s "
        f"for {survivor['restored_records']} records, ready after {survivor['ready_s']} s"
    )


MEASUREMENT_FUNCS = {"restore": run_restore, "failover": run_failover}


def run_measurement(
    name: str, infra: Infra, directory: Path, size: Size, emit: Callable[[str], None] = print
) -> ScenarioResult:
    """One measurement (``restore`` or ``failover``) on fresh pipelines of its own."""
    if name not in MEASUREMENT_FUNCS:
        raise CommandError(f"unknown measurement {name!r}: choose {', '.join(MEASUREMENT_FUNCS)}")
    return MEASUREMENT_FUNCS[name](infra, directory, size, emit)


__all__ = [
    "FillReport",
    "RecoveryTimes",
    "account_templates",
    "clone_value",
    "fill_accounts_changelog",
    "log_table",
    "recovery_times",
    "restored_records",
    "run_measurement",
]
