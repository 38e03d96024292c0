"""The textbook peer: paystream's pipeline written the way faust's documentation teaches.

What a team would build with faust-streaming without paystream's batching: the same
work (paystream's rules, features, fraud model, Avro codec and account values, see
:mod:`bench.peers._work`), done the textbook way, deliberately:

- one event at a time (``async for event in stream.events()``), in two agents: the
  requests (score, decide) and the legs (payee credits, refund debits and results);
- the account value read and written per event through a normal faust ``app.Table``
  (RocksDB store with faust's default options, values the bytes of an AccountState),
  so every write also sends its changelog record through faust's ``send_soon``;
- every output sent with ``await topic.send(...)`` as soon as it exists;
- FX rates copied from fx.rates into a ``GlobalTable`` by a third agent, as the
  paystream worker does;
- faust's at-least-once defaults (auto-acked events, offsets committed on faust's
  interval, ``stream_publish_on_commit`` off): there is no ordering of state before
  outputs before offsets and no offset guard, which the paystream worker has.

A malformed message becomes a dead letter (and so does an event whose processing
raises: the usual faust advice, since faust acks an event even when its agent raises).

Configured only by ``PAYSTREAM_*`` (:func:`streams.settings.load_settings`); its faust
app id (consumer group, changelog prefix) is ``<PAYSTREAM_APP_ID>-textbook``; RocksDB
lives under ``PAYSTREAM_STATE_DIR/textbook``; the web port is ``PAYSTREAM_WEB_PORT``.
It creates no topic but its own changelogs (and faust's leader topic)::

    PAYSTREAM_BROKERS=... PAYSTREAM_TOPIC_PREFIX=... python -m bench.peers.textbook
"""

from __future__ import annotations

import functools
import logging
import socket
import sys
from typing import Any

import faust

from agents.pipeline import Message
from bench.peers._work import (
    ADMIN_TIMEOUT_S,
    EXIT_TOPICS_MISSING,
    EventWork,
    FxRateCheck,
    Step,
    missing_topics,
)
from streams import topics as names
from streams.settings import Settings, load_settings

log = logging.getLogger("bench.peers.textbook")

PEER = "textbook"


def _brokers(settings: Settings) -> list[str]:
    return [f"kafka://{hostport.strip()}" for hostport in settings.brokers.split(",")]


settings = load_settings()
app_id = f"{settings.app_id}-{PEER}"
worker_name = f"{socket.gethostname()}:{settings.web_port}"
datadir = settings.state_dir / PEER / f"{app_id}-{settings.web_port}"
datadir.parent.mkdir(parents=True, exist_ok=True)

app = faust.App(
    app_id,
    broker=_brokers(settings),
    store="rocksdb://",
    datadir=str(datadir),
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    consumer_auto_offset_reset="earliest",
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=settings.web_port,
)


def _topic(logical: str) -> faust.TopicT:
    return app.topic(settings.topic(logical), key_type=bytes, value_type=bytes)


requests_topic = _topic(names.REQUESTS)
legs_topic = _topic(names.LEGS)
fx_rates_topic = _topic(names.FX_RATES)
# Every output topic by full name: EventWork names its outputs' topics that way.
output_topics = {
    topic.get_topic_name(): topic
    for topic in (
        _topic(names.DECISIONS),
        _topic(names.LEDGER),
        legs_topic,
        _topic(names.NOTIFICATIONS),
        _topic(names.DLQ),
    )
}

accounts = app.Table(
    "accounts",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    help="One value per account: the bytes of an AccountState.",
)
fx_rates = app.GlobalTable(
    "fx-rates",
    key_type=bytes,
    value_type=bytes,
    partitions=1,
    help="Latest rate per currency pair, copied from fx.rates.",
)

work = EventWork(settings, PEER, lambda pair: fx_rates.get(pair), worker_name)
rate_check = FxRateCheck(settings, worker_name)


def _message(event: faust.EventT) -> Message:
    m = event.message
    return Message(m.topic, m.partition, m.offset, m.key, m.value)


async def _apply(key: bytes | None, step: Step) -> None:
    """The event's state write, then its outputs: one table write, one send each."""
    if step.state is not None:
        accounts[key] = step.state
    for topic, output_key, value in step.outputs:
        await output_topics[topic].send(key=output_key, value=value)


@app.agent(requests_topic, name="authorize")
async def authorize(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = _message(event)
        # The payer's value is read only once the request decoded with a matching key.
        step = work.on_request(message, functools.partial(accounts.get, message.key))
        await _apply(message.key, step)


@app.agent(legs_topic, name="legs")
async def credit_legs(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = _message(event)
        step = work.on_leg(message, functools.partial(accounts.get, message.key))
        await _apply(message.key, step)


@app.agent(fx_rates_topic, name="fx")
async def copy_fx_rates(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = _message(event)
        letters = rate_check.check(message)
        if not letters:
            fx_rates[message.key] = message.value
        for topic, key, value in letters:
            await output_topics[topic].send(key=key, value=value)


@app.task
async def _watch_models() -> None:
    work.start_model_watch()


@app.on_before_shutdown.connect
async def _stop_model_watch(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    work.stop_model_watch()


def create_changelogs() -> list[str]:
    """This app's table changelogs, compacted, before the worker starts (names created).

    faust would create them itself, but a worker that does can run its first partition
    assignment before they show in metadata and hang (see streams/topics.py).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    wanted = [
        (accounts.changelog_topic.get_topic_name(), settings.partitions),
        (fx_rates.changelog_topic.get_topic_name(), 1),
    ]
    admin = AdminClient({"bootstrap.servers": settings.brokers})
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    config = {"cleanup.policy": "compact", "max.message.bytes": str(names.MESSAGE_BYTES_MAX)}
    new = [
        NewTopic(name, partitions, settings.replication_factor, config=config)
        for name, partitions in wanted
        if name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=ADMIN_TIMEOUT_S).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker won the race
                raise
    return created


def main() -> int:
    from faust import Worker

    missing = missing_topics(settings)
    if missing:
        logging.basicConfig(level=settings.log_level)
        log.error("%s: topics missing: %s; create them first (paystream topics create)",
                  PEER, ", ".join(missing))  # fmt: skip
        return EXIT_TOPICS_MISSING
    created = create_changelogs()
    if created:
        log.info("%s: created its changelogs %s", PEER, ", ".join(created))
    worker = Worker(app, loglevel=settings.log_level.lower())
    worker.execute_from_commandline()  # returns only by raising SystemExit
    return 0


if __name__ == "__main__":
    sys.exit(main())
