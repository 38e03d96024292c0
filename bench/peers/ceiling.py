"""The transport ceiling: consume requests, produce them unchanged as "decisions".

No state, no rules, no decoding: a raw confluent-kafka loop that takes requests in
batches (``consume(num_messages=...)``), produces each value with its key unchanged
to the decisions topic through a batching producer, and commits its offsets
periodically, after the producer has delivered everything consumed before them (at
least once, as the paystream worker). Whatever paystream does per request costs
throughput below this line; the harness prints each peer's share of it.

The producer has the durability and batching of the paystream worker's output
producer (idempotent, acks=all, lz4, 2 ms linger, murmur2 keys; a test keeps them in
step), so the comparison is between the work done, not between producer settings.

    PAYSTREAM_BROKERS=... PAYSTREAM_TOPIC_PREFIX=... python -m bench.peers.ceiling
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from agents.pipeline import producer_config  # the worker's output producer, same settings
from streams import topics as names
from streams.settings import Settings, load_settings

log = logging.getLogger("bench.peers.ceiling")

COMMIT_EVERY_S = 1.0  # as the worker's broker_commit_interval
FLUSH_TIMEOUT_S = 300.0
BUFFER_FULL_POLL_S = 0.05
EXIT_DELIVERY_FAILED = 70


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.brokers,
        "group.id": settings.app_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }


class Ceiling:
    """The loop, with its counters; ``stop`` (from a signal handler) ends it cleanly."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer, Producer

        # The worker's batching knobs: up to PAYSTREAM_BATCH_SIZE_MAX requests, waiting at
        # most PAYSTREAM_BATCH_WITHIN_MS to fill a batch (consume() waits that long when
        # fewer are there: a longer wait would show as latency at a low rate).
        self.batch_size_max = settings.batch_size_max
        self.batch_wait_s = settings.batch_within_ms / 1000.0
        self.source = settings.topic(names.REQUESTS)
        self.target = settings.topic(names.DECISIONS)
        self.consumer = Consumer(consumer_config(settings))
        self.producer = Producer(producer_config(settings))
        self.forwarded = 0
        self.failures: list[str] = []
        self._running = True

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None and len(self.failures) < 5:
            self.failures.append(str(err))

    def stop(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        self._running = False

    def run(self) -> int:
        self.consumer.subscribe([self.source])
        committed_at = time.monotonic()
        pending = False  # consumed since the last commit
        try:
            while self._running:
                batch = self.consumer.consume(
                    num_messages=self.batch_size_max, timeout=self.batch_wait_s
                )
                for msg in batch:
                    if msg.error() is not None:
                        log.warning("ceiling: consume error: %s", msg.error())
                        continue
                    self._forward(msg.key(), msg.value())
                    pending = True
                self.producer.poll(0)
                if pending and time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    if not self._commit():
                        return EXIT_DELIVERY_FAILED
                    committed_at = time.monotonic()
                    pending = False
            if pending and not self._commit():
                return EXIT_DELIVERY_FAILED
            return 0
        finally:
            self.consumer.close()
            log.info("ceiling: forwarded %d messages", self.forwarded)

    def _forward(self, key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.target, value, key, on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(BUFFER_FULL_POLL_S)
        self.forwarded += 1

    def _commit(self) -> bool:
        """Everything consumed so far is delivered, then its offsets are committed."""
        from confluent_kafka import KafkaException

        left = self.producer.flush(FLUSH_TIMEOUT_S)
        if left or self.failures:
            log.critical("ceiling: delivery failed (%d left): %s", left, self.failures[:3])
            return False
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:  # e.g. partitions revoked meanwhile: redelivered, fine
            log.warning("ceiling: commit failed: %s", exc)
        return True


def main() -> int:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ceiling = Ceiling(settings)
    signal.signal(signal.SIGTERM, ceiling.stop)
    signal.signal(signal.SIGINT, ceiling.stop)
    log.info("ceiling: %s -> %s on %s", ceiling.source, ceiling.target, settings.brokers)
    return ceiling.run()


if __name__ == "__main__":
    sys.exit(main())
