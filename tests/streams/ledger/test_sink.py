"""The sink's loop with a fake consumer and a fake batch writer (no Kafka, no database):
how batches form, and the order in which their offsets are committed."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

from streams.ledger.sink import LedgerSink, SinkStats
from streams.settings import Settings, load_settings

JOIN_TIMEOUT_S = 20


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "ledger.entries"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return b""


class FakeConsumer:
    """One partition; ``feed`` adds messages; commits are recorded as (partition, offset)."""

    def __init__(self) -> None:
        self.queue: deque[FakeMessage] = deque()
        self.commits: list[list[tuple[int, int]]] = []
        self.next_offset = 0

    def feed(self, count: int) -> None:
        for _ in range(count):
            self.queue.append(FakeMessage(self.next_offset))
            self.next_offset += 1

    def subscribe(self, topics: list[str]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        if not self.queue:
            time.sleep(min(timeout, 0.01))
        out: list[FakeMessage] = []
        while self.queue and len(out) < num_messages:
            out.append(self.queue.popleft())
        return out

    def assignment(self) -> list[Any]:
        return [SimpleNamespace(partition=0)]

    def pause(self, partitions: list[Any]) -> None:
        pass

    def resume(self, partitions: list[Any]) -> None:
        pass

    def poll(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        pass


class FakeBatches:
    """Writes by recording the batch's offsets; a batch starting at an offset in
    ``gates`` waits for that event, then returns ``outcome`` (False: stopped unwritten)."""

    def __init__(self) -> None:
        self.stats = SinkStats()
        self.gates: dict[int, threading.Event] = {}
        self.outcome: dict[int, bool] = {}
        self.written: list[list[int]] = []
        self.lock = threading.Lock()

    def check_schema(self, wait: Any) -> None:
        pass

    def prepare(self, messages: list[FakeMessage]) -> list[FakeMessage]:
        return messages

    def write(self, prepared: list[FakeMessage], wait: Any) -> bool:
        first = prepared[0].offset()
        gate = self.gates.get(first)
        if gate is not None:
            assert gate.wait(JOIN_TIMEOUT_S)
        if not self.outcome.get(first, True):
            return False
        with self.lock:
            self.written.append([m.offset() for m in prepared])
            self.stats.entries += 2 * len(prepared)
        return True

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def sink_settings(**env: str) -> Settings:
    return load_settings({f"PAYSTREAM_{k.upper()}": v for k, v in env.items()})


def start(sink: LedgerSink, until_entries: int) -> threading.Thread:
    thread = threading.Thread(target=sink.run, kwargs={"until_entries": until_entries})
    thread.start()
    return thread


def wait_until(condition: Any) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_later_batch_written_first_is_committed_only_after_the_earlier_one() -> None:
    consumer, batches = FakeConsumer(), FakeBatches()
    batches.gates[0] = threading.Event()
    consumer.feed(4)  # two batches of two messages (four entries each)
    settings = sink_settings(ledger_batch_entries_max="4", ledger_writers="2")
    sink = LedgerSink(settings, consumer=consumer, batches=batches)  # type: ignore[arg-type]
    thread = start(sink, until_entries=8)
    wait_until(lambda: batches.written == [[2, 3]])
    time.sleep(0.3)  # the loop goes round many times meanwhile
    assert consumer.commits == []  # offset 4 would also cover the unwritten 0 and 1
    batches.gates[0].set()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    assert batches.written == [[2, 3], [0, 1]]
    assert consumer.commits == [[(0, 2)], [(0, 4)]]


def test_when_an_earlier_batch_is_not_written_no_later_offset_is_committed() -> None:
    consumer, batches = FakeConsumer(), FakeBatches()
    batches.gates[0] = threading.Event()
    batches.outcome[0] = False  # e.g. stopped while PostgreSQL was down
    consumer.feed(4)
    settings = sink_settings(ledger_batch_entries_max="4", ledger_writers="2")
    sink = LedgerSink(settings, consumer=consumer, batches=batches)  # type: ignore[arg-type]
    thread = start(sink, until_entries=8)
    wait_until(lambda: batches.written == [[2, 3]])
    sink.stop.set()
    batches.gates[0].set()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    assert consumer.commits == []


def test_a_free_writer_takes_what_has_arrived_and_a_busy_one_lets_a_batch_grow() -> None:
    consumer, batches = FakeConsumer(), FakeBatches()
    batches.gates[0] = threading.Event()
    consumer.feed(3)
    # A batch time far longer than the test may take: nothing here waits for it.
    settings = sink_settings(
        ledger_batch_entries_max="1000", ledger_batch_within_ms="600000", ledger_writers="1"
    )
    sink = LedgerSink(settings, consumer=consumer, batches=batches)  # type: ignore[arg-type]
    thread = start(sink, until_entries=18)
    time.sleep(0.3)  # the first batch is at its (blocked) writer
    consumer.feed(6)  # these arrive while the only writer is busy
    time.sleep(0.3)
    batches.gates[0].set()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive()
    assert batches.written == [[0, 1, 2], [3, 4, 5, 6, 7, 8]]
    assert consumer.commits == [[(0, 3)], [(0, 9)]]
