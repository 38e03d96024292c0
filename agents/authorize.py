"""faust wiring: the authorize and legs agents. Thin: batch, hand to the Processor, flush, ack.

Import this module to register the agents on ``streams.app.app``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from agents.pipeline import AccountStates, FxRatesView, Message, OutputProducer, Processor
from schemas.codec import load_codec
from streams import topics as names
from streams.app import (
    accounts,
    app,
    fx_rates,
    fx_rates_topic,
    legs_topic,
    requests_topic,
    settings,
)

log = logging.getLogger(__name__)
EXIT_INTERNAL_ERROR = 71


class FaustPartitionStore:
    """Raw reads and writes of one faust RocksDB table by partition, without faust's
    per-write changelog (the Processor writes the changelog with its outputs)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def _store(self) -> Any:
        return self._table.data

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._store()._db_for_partition(partition).get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        store = self._store()
        store._db_for_partition(partition).put(key, value)
        store._key_index[key] = partition

    def mark_persisted(self, changelog: str, acked: dict[tuple[str, int], int]) -> None:
        """Record the changelog offsets now durable, so a restart only replays the tail."""
        store = self._store()
        for (topic, partition), offset in acked.items():
            if topic == changelog:
                store.set_persisted_offset(TP(topic, partition), offset)


codec = load_codec(settings.schema_registry_url)
producer = OutputProducer(settings)
partition_store = FaustPartitionStore(accounts)
changelog_name = accounts.changelog_topic.get_topic_name()
account_states = AccountStates(partition_store, producer, changelog_name)
processor = Processor(
    settings,
    codec,
    account_states,
    producer,
    FxRatesView(lambda pair: fx_rates.get(pair), codec, names.FX_RATES),
    worker_name=f"{socket.gethostname()}:{settings.web_port}",
)


@app.on_partitions_revoked.connect
def _on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    account_states.invalidate()


@app.on_partitions_assigned.connect
def _on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    account_states.invalidate()


def _messages(events: list[faust.EventT]) -> list[Message]:
    return [
        Message(
            e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value
        )
        for e in events
    ]


async def _run_batch(handle: Callable[[list[Message]], None], events: list[faust.EventT]) -> None:
    try:
        handle(_messages(events))
    except Exception:
        # A bug, not bad input (bad input is declined or dead-lettered). faust would
        # ack the batch if we raised, so leave without acking instead.
        log.critical("internal error while processing a batch; exiting unacked", exc_info=True)
        logging.shutdown()
        os._exit(EXIT_INTERNAL_ERROR)
    await _flush_state_then_outputs()


async def _flush_state_then_outputs() -> None:
    """State records first, then the outputs they produced (see agents/pipeline.py).

    Outputs held by another agent's batch may be released here too: that is safe,
    because their state records were produced before this flush began.
    """
    await producer.flush()
    partition_store.mark_persisted(changelog_name, producer.take_acked())
    processor.release_outputs()
    await producer.flush()


@app.agent(requests_topic, name="authorize")
async def authorize(stream: Any) -> None:
    within = settings.batch_within_ms / 1000
    async for events in stream.take_events(settings.batch_size_max, within=within):
        await _run_batch(processor.process_requests, list(events))


@app.agent(legs_topic, name="legs")
async def credit_legs(stream: Any) -> None:
    within = settings.batch_within_ms / 1000
    async for events in stream.take_events(settings.batch_size_max, within=within):
        await _run_batch(processor.process_legs, list(events))


@app.agent(fx_rates_topic, name="fx")
async def copy_fx_rates(stream: faust.StreamT) -> None:
    """fx.rates -> the fx-rates GlobalTable (low volume: one event at a time is fine).

    Rates are checked here once, so the hot path can trust the table: an
    undecodable rate becomes a dead letter and never reaches a decision.
    """
    from schemas.codec import SchemaError

    async for event in stream.events():
        message = event.message
        try:
            codec.decode(names.FX_RATES, message.value, message.partition, message.offset)
        except SchemaError as exc:
            processor.dead_letter(_messages([event])[0], "schema_error", str(exc))
            await _flush_state_then_outputs()
            continue
        fx_rates[message.key] = message.value
