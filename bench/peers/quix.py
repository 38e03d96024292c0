"""The Quix Streams peer: paystream's pipeline written the way Quix's documentation teaches.

The same work as the paystream worker (paystream's rules, features, fraud model, Avro
codec and account values, see :mod:`bench.peers._work`) on Quix Streams, deliberately
the Quix way:

- an ``Application`` with stateful RocksDB processing: the requests and the legs are
  two dataframes (co-partitioned topics) concatenated into one, so that a single
  stateful function sees both and one state store holds each account's value (two
  stateful functions would have two stores, one per topic, and a payee's credits
  would never meet its payments);
- one event at a time: ``state.get``/``state.set`` of the account value (the bytes of
  an AccountState, stored as they are: ``RocksDBOptions(dumps=..., loads=...)``);
- raw bytes in and out with Quix's bytes serializers, Avro through paystream's codec;
- several output topics: the function returns the event's outputs and ``expand=True``
  turns them into one row each; one ``to_topic`` routes every row to its topic with
  its key (``to_topic`` with a topic callback and a key callback, from Quix's docs).
  Outputs therefore go through the Application's own producer and are part of its
  checkpoint: flushed, with the state changelogs, before the offsets are committed.
  (``app.get_producer()`` inside the function would produce outside the checkpoint.)
- at-least-once, Quix's defaults otherwise (5 s checkpoints, 1 GiB block cache). An
  output keeps the timestamp of the message that caused it, as ``to_topic`` does: a
  decision's CreateTime is its request's (the harness stamps decisions LogAppendTime).

One thing Quix does not offer is done by hand: FX rates. There is no global table, so
a thread follows fx.rates from the start (every process sees every rate, as with the
worker's GlobalTable), checks each record as the worker's fx agent does (a bad one
becomes a dead letter) and keeps the latest per pair in a dict; the app starts once
it has read the rates present.

Co-partitioning holds because Quix's producer partitions keys with murmur2, as the
paystream producers, faust and the Java clients do: a payee's legs land on the
partition of its requests, and so in the same store.

Configured only by ``PAYSTREAM_*``; consumer group ``<PAYSTREAM_APP_ID>-quix``; state
under ``PAYSTREAM_STATE_DIR/quix``; it creates no topic but its changelog::

    PAYSTREAM_BROKERS=... PAYSTREAM_TOPIC_PREFIX=... python -m bench.peers.quix
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
from typing import Any

from agents.pipeline import HeldOutput, Message
from bench.peers._work import EXIT_TOPICS_MISSING, EventWork, FxRateCheck, missing_topics
from streams import topics as names
from streams.settings import Settings, load_settings

log = logging.getLogger("bench.peers.quix")

PEER = "quix"
STATE_KEY = b"account"  # the one state entry per message key (the account id)
FX_CATCH_UP_S = 30.0  # the app starts after reading the rates present, or after this
FX_POLL_S = 0.5


class Routed(bytes):
    """An encoded output that knows its topic and key.

    It is bytes, so Quix's bytes serializer hands it to the producer as it is; the
    ``to_topic`` callbacks read where it goes.
    """

    topic: str
    key: bytes | None

    @classmethod
    def of(cls, output: HeldOutput) -> Routed:
        topic, key, value = output
        routed = cls(value)
        routed.topic = topic
        routed.key = key
        return routed


def _stored_as_is(value: Any) -> Any:
    """State values are already bytes (AccountState.to_bytes): no JSON around them."""
    return value


class FxRates(threading.Thread):
    """The latest rate per pair from fx.rates, read from the start on a thread of its own.

    No consumer group (it never joins or commits): every process reads the whole
    compacted topic, like the ModelWatcher does for fraud.models.
    """

    def __init__(self, settings: Settings, worker: str) -> None:
        super().__init__(name="fx-rates", daemon=True)
        self.settings = settings
        self.rates: dict[bytes, bytes] = {}
        self.caught_up = threading.Event()
        self.halt = threading.Event()
        self._check = FxRateCheck(settings, worker)

    def run(self) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition

        from agents.pipeline import producer_config

        topic = self.settings.topic(names.FX_RATES)
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.brokers,
                "group.id": f"{self.settings.app_id}-{PEER}-fx",  # never joins or commits
                "enable.auto.commit": False,
            }
        )
        producer = Producer(producer_config(self.settings))  # dead letters only
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in partitions}  # fmt: skip
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        read = dict.fromkeys(partitions, 0)
        try:
            while not self.halt.is_set():
                if all(read[p] >= ends[p] for p in partitions):
                    self.caught_up.set()
                msg = consumer.poll(FX_POLL_S)
                if msg is None or msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                read[partition] = offset + 1
                message = Message(topic, partition, offset, msg.key(), msg.value())
                letters = self._check.check(message)
                if not letters and message.key is not None and message.value is not None:
                    self.rates[message.key] = message.value
                for out_topic, key, value in letters:
                    producer.produce(out_topic, value, key)
                producer.poll(0)
        finally:
            producer.flush(30)
            consumer.close()


def build_app(settings: Settings, work: EventWork) -> Any:
    """The Application and its dataframes: requests + legs -> one stateful function -> topics."""
    from quixstreams import Application, message_context
    from quixstreams.state.rocksdb import RocksDBOptions

    app = Application(
        broker_address=settings.brokers,
        consumer_group=f"{settings.app_id}-{PEER}",
        auto_offset_reset="earliest",
        state_dir=settings.state_dir / PEER,
        rocksdb_options=RocksDBOptions(dumps=_stored_as_is, loads=_stored_as_is),
        loglevel=logging.getLevelName(settings.log_level.upper()),
    )

    def raw_topic(logical: str) -> Any:
        return app.topic(
            settings.topic(logical),
            key_deserializer="bytes",
            value_deserializer="bytes",
            key_serializer="bytes",
            value_serializer="bytes",
        )

    requests, legs = raw_topic(names.REQUESTS), raw_topic(names.LEGS)
    outputs = {
        topic.name: topic
        for topic in (
            raw_topic(names.DECISIONS),
            raw_topic(names.LEDGER),
            legs,
            raw_topic(names.NOTIFICATIONS),
            raw_topic(names.DLQ),
        )
    }

    def process(
        value: bytes | None, key: bytes | None, _timestamp: int, _headers: Any, state: Any
    ) -> list[Routed]:
        context = message_context()
        message = Message(context.topic, context.partition, context.offset, key, value)
        handle = work.on_request if context.topic == requests.name else work.on_leg
        step = handle(message, functools.partial(state.get, STATE_KEY))
        if step.state is not None:
            state.set(STATE_KEY, step.state)
        return [Routed.of(output) for output in step.outputs]

    # One stateful function over both topics (one store), one row per output, each row to
    # its own topic and key through the Application's checkpointed producer.
    events = app.dataframe(requests).concat(app.dataframe(legs))
    routed = events.apply(process, stateful=True, expand=True, metadata=True)
    routed.to_topic(
        lambda value, _key, _timestamp, _headers: outputs[value.topic], key=lambda value: value.key
    )
    return app


def main() -> int:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    missing = missing_topics(settings)
    if missing:
        log.error("%s: topics missing: %s; create them first (paystream topics create)",
                  PEER, ", ".join(missing))  # fmt: skip
        return EXIT_TOPICS_MISSING
    worker = f"{socket.gethostname()}:{PEER}-{os.getpid()}"
    fx_rates = FxRates(settings, worker)
    fx_rates.start()
    if not fx_rates.caught_up.wait(FX_CATCH_UP_S):
        log.warning("%s: fx.rates not read within %.0f s; starting without", PEER, FX_CATCH_UP_S)
    work = EventWork(settings, PEER, fx_rates.rates.get, worker)
    app = build_app(settings, work)
    work.start_model_watch()
    try:
        app.run()  # until SIGTERM or SIGINT: Quix commits its checkpoint and returns
    finally:
        work.stop_model_watch()
        fx_rates.halt.set()
        fx_rates.join(10)
    log.info("%s: stopped after %d requests and %d legs", PEER, work.requests, work.legs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
