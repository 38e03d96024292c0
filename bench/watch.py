"""Reads a peer's output topic from the outside: which request was decided, and when.

The watcher shares the machine with the peer it measures, so it does as little as
it can per message: it checks the Confluent header (magic byte and a schema id of
the expected subject) and reads the record's first field, ``request_id``, which
both the request and the decision schemas start with (checked when it starts). A
full Avro decode would cost ten times more CPU.

Times are the output messages' Kafka timestamps. The harness sets the output topic
to ``LogAppendTime``, so they are the moment the broker appended the decision, not
a timestamp the peer chose: stream libraries that copy the input's timestamp to
their outputs (Quix Streams does by default) would otherwise show zero latency.
"""

from __future__ import annotations

import threading
import uuid
from array import array
from collections.abc import Iterable
from typing import Any

from streams.settings import Settings

MAGIC_BYTE = 0
HEADER_SIZE = 5
CONSUME_BATCH_MAX = 10_000
CONSUME_WAIT_S = 0.2
CLIENT_LOG_LEVEL = 2  # librdkafka syslog level: critical only
TIMESTAMP_LOG_APPEND = 2  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME


def leading_string(value: bytes, schema_ids: frozenset[int]) -> bytes | None:
    """The first field of a Confluent-framed Avro record if it is a string, else None.

    None for anything without the magic byte, with another subject's schema id, or
    too short for the string its length announces.
    """
    if len(value) < HEADER_SIZE + 1 or value[0] != MAGIC_BYTE:
        return None
    if int.from_bytes(value[1:HEADER_SIZE], "big") not in schema_ids:
        return None
    # Avro long: zigzag varint.
    shift = 0
    encoded = 0
    position = HEADER_SIZE
    while True:
        if position >= len(value) or shift > 63:
            return None
        byte = value[position]
        position += 1
        encoded |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    length = (encoded >> 1) ^ -(encoded & 1)
    if length < 0 or position + length > len(value):
        return None
    return value[position : position + length]


def check_leading_request_id(codec: Any, topic: str, record: dict[str, Any]) -> frozenset[int]:
    """The schema ids of ``topic``, after checking that its records start with request_id."""
    subject = codec.for_topic(topic)
    encoded = subject.encode(record)
    found = leading_string(encoded, frozenset(subject.known_schema_ids))
    if found is None or found.decode() != record["request_id"]:
        raise AssertionError(
            f"{topic} records do not start with request_id: the bench watcher cannot read them"
        )
    return frozenset(subject.known_schema_ids)


class OutputWatch(threading.Thread):
    """Follows one output topic from its beginning; records each request's first output."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        schema_ids: frozenset[int],
        index_of: dict[bytes, int],
        flags: bytes,
    ) -> None:
        """``flags`` per load position: those with 0 (valid) are the ones waited for."""
        from confluent_kafka import Consumer, TopicPartition

        super().__init__(daemon=True, name="bench-watch")
        self.topic = topic
        self.schema_ids = schema_ids
        self.index_of = index_of
        self.flags = flags
        # Kafka timestamp (ms) of each position's first output; -1 until there is one.
        self.decided_ms = array("q", [-1]) * len(flags)
        self.decided = 0  # positions with an output
        self.required_decided = 0  # valid positions with an output
        self.outputs = 0  # every message read, duplicates and unreadable ones included
        self.unreadable = 0
        self.timestamp_types: set[int] = set()
        self.extra_seen: dict[bytes, int] = {}  # tracked ids outside the load (probes)
        self._extra: set[bytes] = set()
        self._halt = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.brokers,
                "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": CLIENT_LOG_LEVEL,
            }
        )
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        if meta.error is not None or not meta.partitions:
            raise RuntimeError(f"bench: cannot read topic {topic}: {meta.error}")
        self._consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])

    def track(self, request_ids: Iterable[bytes]) -> None:
        """Also note outputs for these ids (readiness probes, not part of the load)."""
        with self._lock:
            self._extra.update(request_ids)

    def seen(self, request_ids: Iterable[bytes]) -> bool:
        with self._lock:
            return all(rid in self.extra_seen for rid in request_ids)

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._take(self._consumer.consume(CONSUME_BATCH_MAX, CONSUME_WAIT_S))
        except BaseException as exc:  # reported by the harness, not lost in a thread
            self.error = exc
        finally:
            self._consumer.close()

    def _take(self, messages: list[Any]) -> None:
        index_of, decided_ms, schema_ids = self.index_of, self.decided_ms, self.schema_ids
        flags = self.flags
        for msg in messages:
            if msg.error() is not None:
                continue
            self.outputs += 1
            value = msg.value()
            request_id = leading_string(value, schema_ids) if value else None
            if request_id is None:
                self.unreadable += 1
                continue
            kind, stamp = msg.timestamp()
            position = index_of.get(request_id)
            if position is not None:
                if decided_ms[position] < 0:
                    decided_ms[position] = stamp
                    self.decided += 1
                    if flags[position] == 0:
                        self.required_decided += 1
                    self.timestamp_types.add(kind)
            elif self._extra:
                with self._lock:
                    if request_id in self._extra:
                        self.extra_seen.setdefault(request_id, stamp)

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(30)
        elif not self._closed:  # never started: nobody else closes the consumer
            self._closed = True
            self._consumer.close()
