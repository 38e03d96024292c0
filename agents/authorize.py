"""faust wiring: the authorize and legs agents. Thin: batch, hand to the Processor, flush, ack.

Import this module to register the agents on ``streams.app.app``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, cast

import faust
from faust.types import TP

from agents.fraud import FraudStage
from agents.model_watch import ModelWatcher
from agents.offsets import RESEEK_AFTER_S, STALL_AFTER_S, OffsetGuard, Verdict
from agents.pipeline import (
    AccountStates,
    FxRatesView,
    HeldOutput,
    Message,
    OutputProducer,
    Processor,
)
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
BEGIN_RETRY_S = 0.5


def _rules_baseline() -> Any:
    from models.features import FEATURE_NAMES
    from models.scorer import RulesBaselineScorer

    return RulesBaselineScorer(FEATURE_NAMES)


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
fraud_stage = FraudStage(_rules_baseline())
model_watcher = ModelWatcher(settings, fraud_stage)
processor = Processor(
    settings,
    codec,
    account_states,
    producer,
    FxRatesView(lambda pair: fx_rates.get(pair), codec, names.FX_RATES),
    fraud=fraud_stage,
    worker_name=f"{socket.gethostname()}:{settings.web_port}",
)


@app.task
async def _watch_models() -> None:
    log.info(
        "fraud: no model promoted yet: serving with the rules baseline (%s); "
        "watching %s for promotions", fraud_stage.champion.describe(),
        settings.topic(names.FRAUD_MODELS),
    )  # fmt: skip
    model_watcher.start()


# The next offset to process per partition (agents/offsets.py); both agents share it.
offset_guard: OffsetGuard[TP] = OffsetGuard()


@app.on_partitions_revoked.connect
def _on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    account_states.invalidate()
    offset_guard.reset()
    for queue in _queues:  # unprocessed, unacked: redelivered to the partitions' new owner
        while not queue.empty():
            queue.get_nowait()


@app.on_partitions_assigned.connect
def _on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    account_states.invalidate()
    offset_guard.reset()


async def _committed_offset(tp: TP) -> int | None:
    """The group's committed offset of ``tp``, asked of the group coordinator.

    Not faust's own record of it: that is filled by a seek that can finish after
    the first events of an assignment are already flowing (seen in the kill -9 runs).
    Asked through the worker's own aiokafka consumer (which retries while the
    coordinator moves), not an AdminClient: librdkafka 2.16's offset fetch crashed
    the worker when the coordinator moved (RELIABILITY.md, bugs 5 and 6).
    """
    from aiokafka.structs import TopicPartition

    thread = cast(Any, app.consumer)._thread  # faust's thread running the aiokafka client
    committed = await thread.call_thread(
        thread._ensure_consumer().committed, TopicPartition(tp.topic, tp.partition)
    )
    return None if committed is None or committed < 0 else int(committed)


async def _begin(tp: TP) -> None:
    """Start ``tp`` in the guard at the group's committed offset, else the earliest.

    If the broker cannot say now, ``tp`` is left unbegun: its events are dropped
    unacked and the next one asks again (the guard then seeks back if needed).
    """
    generation = app.consumer_generation_id
    try:
        committed = await _committed_offset(tp)
        if committed is None:
            committed = int((await app.consumer.earliest_offsets(tp)).get(tp) or 0)
    except Exception as exc:  # coordinator moving, broker restarting...
        log.warning("%s: could not read the committed offset (%r); will ask again", tp, exc)
        await asyncio.sleep(BEGIN_RETRY_S)
        return
    if app.consumer_generation_id != generation:  # partitions moved while we asked
        return
    offset_guard.begin(tp, committed)
    log.info("%s: processing from offset %d", tp, committed)


async def _admitted(events: list[faust.EventT]) -> list[faust.EventT]:
    """The events to process now: for each partition we own, only its next offset."""
    consumer = app.consumer
    assignment = consumer.assignment()
    admitted = []
    for event in events:
        message = event.message
        tp = message.tp
        if message.generation_id != app.consumer_generation_id or tp not in assignment:
            log.info("%s@%d: dropped, read before the partitions moved", tp, message.offset)
            continue
        if offset_guard.expecting(tp) is None:
            await _begin(tp)
            if offset_guard.expecting(tp) is None:  # partitions moved while we asked
                continue
        verdict = offset_guard.admit(tp, message.offset)
        if verdict is Verdict.AHEAD:
            try:
                await _fill_gap(tp, message.offset)
            except Exception as exc:  # the agent's watchdog (_watch_partitions) tries again
                log.warning("%s: could not seek back (%r); will try again", tp, exc)
            verdict = offset_guard.admit(tp, message.offset)  # the log may start past the gap
        if verdict is Verdict.PROCESS:
            admitted.append(event)
        elif verdict is Verdict.BEHIND:
            log.info("%s@%d: dropped, already processed", tp, message.offset)
    return admitted


async def _fill_gap(tp: TP, offset: int) -> None:
    """An event arrived past the expected offset: seek back to it (or accept a trimmed log)."""
    expected = offset_guard.expecting(tp)
    assert expected is not None
    if not offset_guard.should_seek(tp, asyncio.get_running_loop().time()):
        return
    earliest = int((await app.consumer.earliest_offsets(tp)).get(tp) or 0)
    if earliest > expected:
        log.error(
            "%s: offsets %d..%d were deleted by retention before this worker processed them",
            tp, expected, earliest - 1,
        )  # fmt: skip
        offset_guard.skip_to(tp, earliest)
        return
    log.warning("%s: got offset %d while %d is next: seeking back to %d", tp, offset,
                expected, expected)  # fmt: skip
    await _seek(tp, expected)


def _messages(events: list[faust.EventT]) -> list[Message]:
    return [
        Message(
            e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value
        )
        for e in events
    ]


async def _run_batch(
    handle: Callable[[list[Message]], list[HeldOutput]], events: list[faust.EventT]
) -> None:
    try:
        held = handle(_messages(events))
    except Exception:
        # A bug, not bad input (bad input is declined or dead-lettered). faust would
        # ack the batch if we raised, so leave without acking instead.
        log.critical("internal error while processing a batch; exiting unacked", exc_info=True)
        logging.shutdown()
        os._exit(EXIT_INTERNAL_ERROR)
    await _flush_state_then_outputs(held)


async def _flush_state_then_outputs(held: list[HeldOutput]) -> None:
    """State records first, then the outputs of this batch only (see agents/pipeline.py).

    Each agent releases only its own batch's outputs: the other agent's state records
    may have been produced after this flush began, so its outputs must wait for its own.
    """
    await producer.flush()
    partition_store.mark_persisted(changelog_name, producer.take_acked())
    processor.release_outputs(held)
    await producer.flush()


# Queues of events read but not yet processed, one per batching agent; cleared when
# partitions move so a revoked partition's events are never applied here.
_queues: list[asyncio.Queue[faust.EventT]] = []


async def _watch_partitions(topic: str, queue: asyncio.Queue[faust.EventT]) -> None:
    """Every ``RESEEK_AFTER_S``, seek again the partitions of ``topic`` that stopped short.

    Run by each batching agent itself, not as a faust timer: faust starts app timers
    only once the worker is ready, while the agents take events before that, and the
    kill -9 test once stalled with a gap sought back over and never sought again.
    """
    loop = asyncio.get_running_loop()
    log.info("%s: re-seeking gaps and stalled partitions every %.0f s (stalled: no event "
             "for %.0f s)", topic, RESEEK_AFTER_S, STALL_AFTER_S)  # fmt: skip
    while True:
        await asyncio.sleep(RESEEK_AFTER_S)
        if queue.full():  # the agent is behind (or blocked): silence here is not a stall
            continue
        try:
            await _unstall(topic, loop.time())
        except Exception as exc:  # the consumer restarting, partitions moving: next tick
            log.warning("%s: could not check for stalled partitions (%r)", topic, exc)


async def _unstall(topic: str, now: float) -> None:
    """Seek over unfilled gaps (OffsetGuard.overdue) and stalled partitions (.stalled)."""
    consumer = app.consumer
    mine = {tp for tp in consumer.assignment() if tp.topic == topic}
    for tp, offset in offset_guard.overdue(now, mine):
        log.warning("%s: offset %d still missing: seeking back to it again", tp, offset)
        await _seek(tp, offset)
    ends = {tp: end for tp in mine if (end := consumer.highwater(tp)) is not None}
    for tp, offset in offset_guard.stalled(now, ends):
        log.warning(
            "%s: no event read for %.0f s while offsets %d..%d wait: seeking to %d",
            tp, STALL_AFTER_S, offset, ends[tp] - 1, offset,
        )  # fmt: skip
        await _seek(tp, offset)


async def _seek(tp: TP, offset: int) -> None:
    try:
        await app.consumer.seek(tp, offset)
    except Exception as exc:  # next tick
        log.warning("%s: could not seek to %d (%r); will try again", tp, offset, exc)


async def _batches(
    stream: Any, topic: str, handle: Callable[[list[Message]], list[HeldOutput]]
) -> None:
    """Read events one by one (acks off), process them in batches, ack after the flush.

    Not ``stream.take_events``: with a batch body that awaits (our flush), faust
    0.15.3 drops events that arrive meanwhile -- it clears its buffer and acks
    them unprocessed (seen as offset gaps, and lost refunds, in the kill -9 test).
    """
    loop = asyncio.get_running_loop()
    within_s = settings.batch_within_ms / 1000
    size_max = settings.batch_size_max
    queue: asyncio.Queue[faust.EventT] = asyncio.Queue(maxsize=4 * size_max)
    _queues.append(queue)

    async def pump() -> None:
        async for event in stream.noack().events():
            offset_guard.arrived(event.message.tp, loop.time())
            await queue.put(event)

    reader = asyncio.ensure_future(pump())
    watchdog = asyncio.ensure_future(_watch_partitions(topic, queue))
    try:
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + within_s
            while len(batch) < size_max:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            batch = await _admitted(batch)
            if not batch:
                continue
            await _run_batch(handle, batch)
            for event in batch:
                event.ack()
    finally:
        reader.cancel()
        watchdog.cancel()
        _queues.remove(queue)


@app.agent(requests_topic, name="authorize")
async def authorize(stream: Any) -> None:
    await _batches(stream, requests_topic.get_topic_name(), processor.process_requests)


@app.agent(legs_topic, name="legs")
async def credit_legs(stream: Any) -> None:
    await _batches(stream, legs_topic.get_topic_name(), processor.process_legs)


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
            await _flush_state_then_outputs(processor.take_held())
            continue
        fx_rates[message.key] = message.value
