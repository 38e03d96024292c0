"""``paystream ledger-sink``: ledger.entries -> PostgreSQL, batched, idempotent, outage-proof.

One loop collects a batch (up to ``ledger_batch_entries_max`` entries, held at most
``ledger_batch_within_ms``, shipped at once when a writer is free), decodes and
checks it (a bad message becomes a dead letter with its reason), and hands it to
one of ``ledger_writers`` writer threads, each writing a batch in one database
transaction on its own connection (:class:`~streams.ledger.writer.LedgerWriter`).
Batches in flight at once share hot balance rows; PostgreSQL's row locks order
those updates; rows are locked in sorted order, so writers do not deadlock (a
deadlock PostgreSQL did report would roll the batch back, and it is retried).
Dead letters are flushed and offsets committed in batch order, each only after its
batch and every earlier one are in the database. A crash anywhere before the
commit re-reads the batch, and rewriting it changes nothing (transaction ids are
the primary key and a redelivery must match the stored fingerprint).

While PostgreSQL is unreachable the sink keeps the batch it holds, pauses its
partitions (still polling, so it stays in the consumer group), logs, and retries
with capped exponential backoff; when the database is back it writes the held
batch and carries on.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agents.pipeline import producer_config
from agents.rules.ledger import fingerprint, transaction_problem
from schemas.codec import Codecs, SchemaError, load_codec
from streams import topics as names
from streams.errors import InfraError
from streams.ledger.db import database_dsn
from streams.ledger.writer import BatchPlan, LedgerWriter, SourcedTransaction, WriteResult, plan
from streams.settings import Settings

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.25
POOL_CHECKOUT_TIMEOUT_S = 2.0
REPORT_EVERY_S = 10.0
DLQ_FLUSH_TIMEOUT_S = 30.0
CONSUME_MESSAGES_MAX = 10_000
AWAIT_POLL_S = 0.5
# How often collecting looks at whether the writer has become free.
COLLECT_SLICE_S = 0.02
# Longest a collect waits when nothing arrives (then the loop checks stop and idleness).
IDLE_POLL_S = 0.2


@dataclass
class SinkStats:
    batches: int = 0
    transactions: int = 0
    entries: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    outages: int = 0
    outage_s: float = 0.0
    retries: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)
    # time.monotonic() of the first message read and of the last offset commit.
    first_message_at: float | None = None
    last_commit_at: float | None = None

    def add(self, result: WriteResult) -> None:
        self.transactions += result.written
        self.entries += result.entries
        self.duplicates += result.duplicates


class InterpreterTuning:
    """Interpreter settings for the sink loop; :meth:`restore` puts the previous ones back.

    - The cycle collector: a batch is tens of thousands of small dicts, lists and bytes
      that reference counting frees, yet the default thresholds had the collector walk
      every live object over and over. Objects alive before the loop are frozen out of
      collections and the young generation is collected 100x less often; cycles are
      still collected.
    - The GIL switch interval: the writer thread wakes from each database round trip
      wanting the GIL while the reading thread runs pure Python, and by default waits up
      to 5 ms for it, with PostgreSQL idle meanwhile; 0.5 ms keeps the database busy.
    """

    GEN0_THRESHOLD = 70_000
    SWITCH_INTERVAL_S = 0.0005

    def __init__(self) -> None:
        self._thresholds = gc.get_threshold()
        self._switch_interval = sys.getswitchinterval()
        gc.collect()
        gc.freeze()
        gc.set_threshold(self.GEN0_THRESHOLD, self._thresholds[1], self._thresholds[2])
        sys.setswitchinterval(self.SWITCH_INTERVAL_S)

    def restore(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch decoded, checked and planned; ``origin`` maps id(item) to its message."""

    plan: BatchPlan
    origin: dict[int, Any]


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the database cannot take this now": wait and retry the same batch."""
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


class BatchWriter:
    """Decode, check, write with retry, dead-letter: everything between Kafka and PostgreSQL.

    Shared by the sink and ``paystream replay --sink ledger``; the caller owns the
    source (a consumer group, or an offset range) and what to do while waiting.
    """

    def __init__(self, settings: Settings, dsn: str | None = None) -> None:
        from confluent_kafka import Producer
        from psycopg_pool import ConnectionPool

        self.settings = settings
        self.codec: Codecs = load_codec(settings.schema_registry_url)
        # One writer (and its caches) per writing thread: a writer's caches may run
        # ahead of its own open database transaction, which only its thread sees.
        self._writers = threading.local()
        self.stats = SinkStats()
        self.dsn = dsn or database_dsn(settings)
        self.pool = ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=settings.ledger_writers,
            open=False,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            reconnect_timeout=0,  # never give up: the sink waits for the database
            name="ledger-sink",
        )
        self.pool.open(wait=False)
        self._dlq = Producer(producer_config(settings))
        self._dlq_failures: list[str] = []
        self._t_dlq = settings.topic(names.DLQ)
        self._lock = threading.Lock()  # the sink writes on threads while it decodes
        self._down_since: float | None = None  # PostgreSQL unreachable since (any writer saw it)

    @property
    def writer(self) -> LedgerWriter:
        """This thread's writer."""
        writer: LedgerWriter | None = getattr(self._writers, "writer", None)
        if writer is None:
            writer = self._writers.writer = LedgerWriter()
        return writer

    def close(self) -> None:
        self.pool.close()
        self._dlq.flush(DLQ_FLUSH_TIMEOUT_S)

    def check_schema(self, wait: Callable[[float], bool]) -> None:
        """Wait for the database, then refuse to run against an unmigrated one."""
        from streams.ledger.db import load_migrations

        expected = len(load_migrations())

        def version(conn: Any) -> int:
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM paystream_migrations"
            ).fetchone()
            return int(row[0])

        import psycopg

        try:
            applied = self._with_retry(lambda conn: version(conn), wait, "checking the schema")
        except psycopg.errors.UndefinedTable:
            applied = 0
        if applied is None:
            return
        if applied < expected:
            raise InfraError(
                f"the ledger database is at migration {applied}, this sink needs {expected}: "
                "run `paystream db migrate` first"
            )

    def handle(self, messages: list[Any], wait: Callable[[float], bool]) -> bool:
        """Write one batch of consumed messages; False if ``wait`` said to stop before it was."""
        if not self.write(self.prepare(messages), wait):
            return False
        self.finish()
        return True

    def prepare(self, messages: list[Any]) -> PreparedBatch:
        """Decode, check and plan (no database needed); what cannot enter the ledger
        becomes a dead letter now."""
        items = []
        origin = {}
        for msg in messages:
            item = self._decode(msg)
            if item is not None:
                items.append(item)
                origin[id(item)] = msg
        return PreparedBatch(plan(items), origin)

    def write(self, prepared: PreparedBatch, wait: Callable[[float], bool]) -> bool:
        """Write a prepared batch (retrying while the database is down); False if stopped."""
        planned, origin = prepared.plan, prepared.origin
        if not origin:
            return True
        result = self._with_retry(
            lambda conn: self.writer.write_plan(conn, planned), wait,
            f"writing {len(planned.unique)} txs",
        )  # fmt: skip
        if result is None:
            return False
        with self._lock:
            self.stats.add(result)
        for item, reason in result.rejected:
            error_class = "conflicting_duplicate" if "duplicate" in reason else (
                "constraint_violation"
            )  # fmt: skip
            self._dead_letter(origin[id(item)], error_class, reason)
        return True

    def finish(self) -> None:
        """After a batch is written: its dead letters are made durable."""
        self.stats.batches += 1
        self._flush_dead_letters()

    def _decode(self, msg: Any) -> SourcedTransaction | None:
        value = msg.value()
        if value is None:
            self._dead_letter(msg, "schema_error", "message has no value")
            return None
        try:
            tx: Any = self.codec.decode(names.LEDGER, value, msg.partition(), msg.offset())
        except SchemaError as exc:
            self._dead_letter(msg, "schema_error", str(exc))
            return None
        problem = transaction_problem(tx)
        if problem is not None:
            self._dead_letter(msg, "constraint_violation", problem)
            return None
        try:
            return SourcedTransaction(
                tx, fingerprint(tx), msg.topic(), msg.partition(), msg.offset()
            )
        except ValueError as exc:  # a value no ledger column can hold
            self._dead_letter(msg, "constraint_violation", f"{tx['transaction_id']}: {exc}")
            return None

    def _with_retry(self, action: Callable[[Any], Any], wait: Callable[[float], bool],
                    what: str) -> Any:  # fmt: skip
        """Run ``action(conn)``; while the database is unavailable, back off and retry."""
        errors = unavailable_errors()
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                with self.pool.connection(timeout=POOL_CHECKOUT_TIMEOUT_S) as conn:
                    result = action(conn)
            except errors as exc:
                self.writer.forget()
                with self._lock:  # one outage, however many writers run into it
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        self.stats.outages += 1
                    self.stats.retries += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                log.warning(
                    "ledger sink: PostgreSQL unavailable while %s (%s); retrying in %.1f s",
                    what, reason, delay,
                )  # fmt: skip
                if not wait(delay):
                    self._back_up(stopping=True)
                    return None
                delay = min(delay * 2, float(self.settings.ledger_backoff_max_s))
                continue
            if self._down_since is not None:
                self._back_up(stopping=False)
            return result

    def _back_up(self, stopping: bool) -> None:
        """End the outage in progress (if another writer has not already)."""
        with self._lock:
            if self._down_since is None:
                return
            outage = time.monotonic() - self._down_since
            self._down_since = None
            self.stats.outage_s += outage
        if not stopping:
            log.warning("ledger sink: PostgreSQL is back after %.1f s; resuming", outage)

    def _dead_letter(self, msg: Any, error_class: str, error: str) -> None:
        log.warning(
            "ledger sink: dead letter %s[%d]@%d: %s: %s",
            msg.topic(), msg.partition(), msg.offset(), error_class, error,
        )  # fmt: skip
        record = {
            "original_topic": msg.topic(),
            "original_partition": msg.partition(),
            "original_offset": msg.offset(),
            "original_key": msg.key(),
            "original_value": msg.value(),
            "error_class": error_class,
            "error": error,
            "first_seen_ms": int(time.time() * 1000),
            "worker": "ledger-sink",
        }
        value = self.codec.encode(names.DLQ, record)
        while True:
            try:
                self._dlq.produce(self._t_dlq, value, msg.key(), on_delivery=self._delivered)
                break
            except BufferError:
                self._dlq.poll(0.05)
        with self._lock:
            self.stats.dead_letters += 1
            if len(self.stats.dead_letter_reasons) < 100:
                self.stats.dead_letter_reasons.append(f"{error_class}: {error}")

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._dlq_failures.append(f"{msg.topic()}: {err}")

    def _flush_dead_letters(self) -> None:
        """Dead letters are durable before the offsets of their originals are committed."""
        if self._dlq.flush(DLQ_FLUSH_TIMEOUT_S) or self._dlq_failures:
            failures, self._dlq_failures = self._dlq_failures, []
            raise InfraError(f"dead letters could not be written to {self._t_dlq}: {failures}")


class LedgerSink:
    """The consumer-group loop around :class:`BatchWriter`."""

    def __init__(
        self, settings: Settings, dsn: str | None = None, group_id: str | None = None,
        *, consumer: Any = None, batches: BatchWriter | None = None,
    ) -> None:  # fmt: skip
        """``consumer`` and ``batches`` replace the real ones in unit tests."""
        from confluent_kafka import Consumer

        self.settings = settings
        self.topic = settings.topic(names.LEDGER)
        self.group_id = group_id or f"{settings.app_id}-ledger-sink"
        self.batches = batches or BatchWriter(settings, dsn)
        self.stop = threading.Event()
        self.consumer = consumer or Consumer(
            {
                "bootstrap.servers": settings.brokers,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "max.poll.interval.ms": 300_000,
                "fetch.max.bytes": 64 * 1024 * 1024,
            }
        )

    @property
    def stats(self) -> SinkStats:
        return self.batches.stats

    def run(self, idle_exit_s: float | None = None, until_entries: int | None = None) -> SinkStats:
        """Consume until ``stop`` is set, nothing arrives for ``idle_exit_s``, or
        ``until_entries`` entries have been written (the benchmark)."""
        from concurrent.futures import ThreadPoolExecutor

        self.batches.check_schema(self._wait)
        self.consumer.subscribe([self.topic])
        tuning = InterpreterTuning()
        log.info("ledger sink: consuming %s as group %s", self.topic, self.group_id)
        last_report = last_data = time.monotonic()
        reported = 0
        # Pipelined: up to ``ledger_writers`` batches are written at once, each on its
        # own thread and connection (psycopg releases the GIL while the database works),
        # while the next is read and decoded. Offsets are committed in batch order and
        # only after the batch is in the database: a later batch's offsets would also
        # cover an earlier one's messages in the same partitions.
        writers = self.settings.ledger_writers
        executor = ThreadPoolExecutor(writers, thread_name_prefix="ledger-writer")
        inflight: deque[tuple[Future[bool], list[Any]]] = deque()
        settled = True
        try:
            while settled and not self.stop.is_set():
                messages = self._collect(inflight)
                prepared = self.batches.prepare(messages) if messages else None
                now = time.monotonic()
                while (
                    settled
                    and inflight
                    and (inflight[0][0].done() or (messages and len(inflight) >= writers))
                ):
                    settled = self._settle(*inflight.popleft())
                if not settled or (
                    until_entries is not None and self.stats.entries >= until_entries
                ):
                    break
                if messages:
                    last_data = now
                    assert prepared is not None
                    future = executor.submit(self.batches.write, prepared, self._sleep)
                    inflight.append((future, messages))
                elif not inflight and idle_exit_s is not None and now - last_data > idle_exit_s:
                    break
                if now - last_report > REPORT_EVERY_S and self.stats.entries != reported:
                    rate = (self.stats.entries - reported) / (now - last_report)
                    log.info(
                        "ledger sink: %d transactions, %d entries (%.0f entries/s), "
                        "%d duplicates, %d dead letters",
                        self.stats.transactions, self.stats.entries, rate,
                        self.stats.duplicates, self.stats.dead_letters,
                    )  # fmt: skip
                    last_report, reported = now, self.stats.entries
            while settled and inflight:
                settled = self._settle(*inflight.popleft())
        finally:
            executor.shutdown(wait=True)
            tuning.restore()
            self.consumer.close()
            self.batches.close()
        return self.stats

    def _settle(self, future: Future[bool], messages: list[Any]) -> bool:
        """Wait for a batch's write, then make its dead letters durable and commit it."""
        if not self._await(future):
            return False
        self.batches.finish()
        self._commit(messages)
        self.stats.last_commit_at = time.monotonic()
        return True

    def _sleep(self, delay_s: float) -> bool:
        """The writer thread's back-off: False when the sink is stopping."""
        return not self.stop.wait(delay_s)

    def _await(self, future: Future[bool]) -> bool:
        """The write's result; meanwhile our partitions are paused and the group kept."""
        from concurrent.futures import TimeoutError as FutureTimeout

        paused = False
        try:
            while True:
                try:
                    return future.result(timeout=AWAIT_POLL_S)
                except FutureTimeout:
                    if not paused:
                        paused = self._pause()
                    self._poll_paused(0)
        finally:
            if paused:
                self._resume()

    def _collect(self, inflight: deque[tuple[Future[bool], list[Any]]]) -> list[Any]:
        """The next batch: up to the batch bound of entries, held no longer than the
        batch time, and shipped at once when a writer is free.

        While every writer is busy with a batch in ``inflight``, messages pile up towards
        a full batch; when one is free there is no reason to wait, so what has arrived
        goes now. Under load batches grow to the bound; when traffic is light each goes
        out at once (group commit). With nothing to read, this returns as soon as the
        oldest batch in flight is written, so that its offsets are committed promptly.
        """
        writers = self.settings.ledger_writers
        entries_max = self.settings.ledger_batch_entries_max
        within_s = self.settings.ledger_batch_within_ms / 1000
        messages: list[Any] = []
        entries_estimate = 0
        started = time.monotonic()
        deadline = 0.0  # the batch time counts from its first message
        while entries_estimate < entries_max and not self.stop.is_set():
            oldest_done = bool(inflight) and inflight[0][0].done()
            now = time.monotonic()
            if messages:
                # A writer is free: take what is already here and go.
                free = oldest_done or len(inflight) < writers
                timeout = 0.0 if free else min(COLLECT_SLICE_S, deadline - now)
            elif oldest_done:
                break  # a written batch is waiting for its offsets to be committed
            else:
                timeout = min(COLLECT_SLICE_S, started + IDLE_POLL_S - now)
            if timeout < 0:
                break
            room = max(1, min(CONSUME_MESSAGES_MAX, (entries_max - entries_estimate) // 2))
            first = not messages
            for msg in self.consumer.consume(room, timeout):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise InfraError(f"ledger sink consumer failed: {error}")
                    log.warning("ledger sink: consumer: %s", error)
                    continue
                messages.append(msg)
                if self.stats.first_message_at is None:
                    self.stats.first_message_at = time.monotonic()
                # Most transactions carry two entries; the exact count is known after decoding.
                entries_estimate += 2
            if first and messages:
                deadline = time.monotonic() + within_s
            if messages and timeout == 0.0:
                break
        return messages

    def _commit(self, messages: list[Any]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        upto: dict[int, int] = {}
        for msg in messages:
            if msg.offset() >= upto.get(msg.partition(), -1):
                upto[msg.partition()] = msg.offset()
        owned = {tp.partition for tp in self.consumer.assignment()}
        offsets = [TopicPartition(self.topic, p, o + 1) for p, o in upto.items() if p in owned]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Lost the partitions in a rebalance: their new owner rewrites, which is harmless.
            log.warning("ledger sink: offset commit failed (%s); the batch will be re-read", exc)

    def _wait(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` with our partitions paused but the group membership alive."""
        paused = self._pause()
        deadline = time.monotonic() + delay_s
        try:
            while not self.stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._poll_paused(min(left, AWAIT_POLL_S))
            return False
        finally:
            if paused:
                self._resume()

    def _pause(self) -> bool:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        return bool(assignment)

    def _resume(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)

    def _poll_paused(self, timeout_s: float) -> None:
        """Serve the group protocol; a message from a partition assigned meanwhile is put back."""
        from confluent_kafka import TopicPartition

        msg = self.consumer.poll(timeout_s)
        if msg is not None and msg.error() is None:
            tp = TopicPartition(str(msg.topic()), int(msg.partition() or 0),
                                int(msg.offset() or 0))  # fmt: skip
            self.consumer.pause([tp])
            self.consumer.seek(tp)
