"""The batch processors the agents call: decode, apply the rules, write state, emit.

No faust import here: the agents (agents/authorize.py) hand in plain message
tuples and a store; that keeps this module testable against the real broker
without a running faust worker, and the hot path free of per-event awaits.

Durability order per batch (see README, "Exactly one effect"):
1. every account touched is decided in offset order, its value updated once;
2. each new value goes to the local RocksDB partition AND, as a changelog record,
   to Kafka; the caller awaits ``OutputProducer.flush()`` (acks=all);
3. only then are the outputs produced (``release_outputs``) and flushed, and only
   then may faust ack the batch's offsets.
A crash anywhere redelivers the batch. If any output of a request reached Kafka,
its state did too: the redelivered request finds its idempotency record and
re-emits the same outputs with the same ids. If the state did not, no output did
either, and deciding again is safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, cast

from agents.fraud import FraudStage, split_rounds
from agents.rules import AccountState, Context, FraudAssessment, Outcomes, apply_leg, decide
from agents.rules.decide import NO_FRAUD, Policy, Position
from agents.rules.fx import FxQuote
from agents.rules.records import Leg, Request
from streams import topics as names
from streams.settings import Settings

log = logging.getLogger(__name__)

# Longest the producer retries one message before the worker gives up and exits
# (without acking): a broker outage shorter than this is ridden out.
DELIVERY_TIMEOUT_MS = 300_000
FLUSH_POLL_S = 0.05
ACCOUNTS_CACHED_MAX = 200_000
EXIT_DELIVERY_FAILED = 70


class Codec(Protocol):
    def encode(self, topic: str, record: Mapping[str, Any]) -> bytes: ...

    def decode(
        self, topic: str, data: bytes, partition: int | None = None, offset: int | None = None
    ) -> dict[str, Any]: ...


HeldOutput = tuple[str, bytes | None, bytes]  # (topic, key, value) not yet produced


class Message(NamedTuple):
    """What the processors need of a consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all, murmur2 keys (the partitioner Java clients and faust use)."""
    return {
        "bootstrap.servers": settings.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": names.DEAD_LETTER_BYTES_MAX,
    }


class OutputProducer:
    """One producer for outputs and changelog records, flushed before offsets are acked.

    ``flush`` waits for the messages produced *before* it was called, not for an
    empty queue: two agents share this producer, and under steady load the queue
    is never empty, so waiting for that starved the other agent indefinitely.
    """

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(producer_config(settings))
        self._failures: list[str] = []
        # (topic, partition) -> highest offset acknowledged since the last take.
        self._acked: dict[tuple[str, int], int] = {}
        # Messages are numbered as produced; every number <= _done_upto is delivered
        # (or failed); numbers above it that are done wait in _done_ahead.
        self._produced = 0
        self._done_upto = 0
        self._done_ahead: set[int] = set()
        self._lock = threading.Lock()

    def _delivered(self, number: int, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")
        else:
            key = (msg.topic(), msg.partition())
            offset = msg.offset()
            if offset > self._acked.get(key, -1):
                self._acked[key] = offset
        with self._lock:
            if number == self._done_upto + 1:
                self._done_upto = number
                while self._done_upto + 1 in self._done_ahead:
                    self._done_upto += 1
                    self._done_ahead.discard(self._done_upto)
            else:
                self._done_ahead.add(number)

    def produce(self, topic: str, key: bytes | None, value: bytes, partition: int = -1) -> None:
        self._produced += 1
        number = self._produced
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    on_delivery=lambda err, msg: self._delivered(number, err, msg),
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    async def flush(self) -> None:
        """Wait until every message produced so far is acknowledged; exit if one failed.

        Exiting (rather than raising) matters: faust acks a batch's offsets even when
        the agent raises, and an acked request whose outputs were lost is money lost.
        """
        target = self._produced
        loop = asyncio.get_running_loop()
        while self._done_upto < target:
            await loop.run_in_executor(None, self._producer.poll, FLUSH_POLL_S)
        if self._failures:
            log.critical(
                "output delivery failed, exiting without acking the batch: %s",
                "; ".join(self._failures[:5]),
            )
            logging.shutdown()
            os._exit(EXIT_DELIVERY_FAILED)

    def take_acked(self) -> dict[tuple[str, int], int]:
        acked, self._acked = self._acked, {}
        return acked

    def close(self) -> None:
        self._producer.flush(30)


class PartitionStore(Protocol):
    """Raw access to one table's RocksDB partitions (implemented over faust's store)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put(self, partition: int, key: bytes, value: bytes) -> None: ...


class AccountStates:
    """Account values: decoded once and cached, written once per batch per account.

    The cache holds the values this worker owns; it is cleared whenever partitions
    move (``invalidate``), since another worker may have written them meanwhile.
    """

    def __init__(
        self,
        store: PartitionStore,
        producer: OutputProducer,
        changelog: str,
        cached_max: int = ACCOUNTS_CACHED_MAX,
    ) -> None:
        self._store = store
        self._producer = producer
        self._changelog = changelog
        self._cache: OrderedDict[str, AccountState] = OrderedDict()
        self._cached_max = cached_max

    def load(self, partition: int, account_id: str) -> AccountState | None:
        cached = self._cache.get(account_id)
        if cached is not None:
            self._cache.move_to_end(account_id)
            return cached
        raw = self._store.get(partition, account_id.encode())
        return AccountState.from_bytes(raw) if raw is not None else None

    def save(self, partition: int, state: AccountState) -> None:
        key = state.account_id.encode()
        value = state.to_bytes()
        self._store.put(partition, key, value)
        self._producer.produce(self._changelog, key, value, partition)
        self._cache[state.account_id] = state
        self._cache.move_to_end(state.account_id)
        while len(self._cache) > self._cached_max:
            self._cache.popitem(last=False)

    def invalidate(self) -> None:
        self._cache.clear()


class FxRatesView(Mapping[str, FxQuote]):
    """FX quotes by pair ("EUR/USD"), decoded from the fx.rates GlobalTable on demand."""

    def __init__(self, lookup: Callable[[bytes], bytes | None], codec: Codec, topic: str) -> None:
        self._lookup = lookup
        self._codec = codec
        self._topic = topic
        self._decoded: dict[bytes, FxQuote] = {}

    def __getitem__(self, pair: str) -> FxQuote:
        raw = self._lookup(pair.encode())
        if raw is None:
            raise KeyError(pair)
        quote = self._decoded.get(raw)
        if quote is None:
            rec = self._codec.decode(self._topic, raw)
            quote = FxQuote(
                rec["base"], rec["quote"], Decimal(rec["rate"]), rec["spread_bps"], rec["as_of_ms"]
            )
            if len(self._decoded) > 10_000:
                self._decoded.clear()
            self._decoded[raw] = quote
        return quote

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass
class BatchStats:
    requests: int = 0
    legs: int = 0
    decisions: int = 0
    dead_letters: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        currencies=frozenset(settings.currencies),
        fx_rate_max_age_ms=settings.fx_rate_max_age_s * 1000,
        idempotency_window_ms=settings.idempotency_window_s * 1000,
        hold_default_ms=settings.hold_default_s * 1000,
        refund_window_ms=settings.refund_window_s * 1000,
    )


class Processor:
    """Turns batches of requests and legs into state writes and outputs."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        states: AccountStates,
        producer: OutputProducer,
        fx_rates: Mapping[str, FxQuote],
        fraud: FraudStage | None = None,
        worker_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.states = states
        self.producer = producer
        self.fx_rates = fx_rates
        # None: no fraud scoring at all (every request is assessed NO_FRAUD).
        self.fraud = fraud
        self.policy = policy_from(settings)
        self.worker_name = worker_name
        self.stats = BatchStats()
        # "topic:partition" -> first offset of the latest batch started: the batch before
        # it was flushed, so stored outputs of lower offsets are durable.
        self.flushed_below: dict[str, int] = {}
        self._pending_outputs: list[HeldOutput] = []
        # "topic:partition" -> the offset expected next: gaps and rewinds are logged.
        self._next_offset: dict[str, int] = {}
        self.t_decisions = settings.topic(names.DECISIONS)
        self.t_ledger = settings.topic(names.LEDGER)
        self.t_legs = settings.topic(names.LEGS)
        self.t_notifications = settings.topic(names.NOTIFICATIONS)
        self.t_dlq = settings.topic(names.DLQ)

    # -- requests ---------------------------------------------------------------------
    def _context(self, messages: list[Message]) -> Context:
        batch_first: dict[str, int] = {}
        for message in messages:
            source = f"{message.topic}:{message.partition}"
            expected = self._next_offset.get(source)
            if expected is not None and message.offset != expected:
                log.info("%s: read offset %d after %d", source, message.offset, expected - 1)
            elif expected is None:
                log.info("%s: first offset read %d", source, message.offset)
            self._next_offset[source] = message.offset + 1
            if message.offset < batch_first.get(source, message.offset + 1):
                batch_first[source] = message.offset
        self.flushed_below.update(batch_first)
        return Context(
            self.policy, self.fx_rates, int(time.time() * 1000), dict(self.flushed_below)
        )

    def process_requests(self, messages: list[Message]) -> list[HeldOutput]:
        """Decide a batch; returns its outputs, to release once its state is durable.

        Fraud scoring runs per round (see agents/fraud.py): each account at most once
        per round, features from the state before the request, one model call per round.
        """
        context = self._context(messages)
        decoded: list[tuple[Message, Request]] = []
        for message in messages:
            record = self._decode(message, names.REQUESTS)
            if record is not None:
                decoded.append((message, cast(Request, record)))
        cache: dict[str, AccountState | None] = {}
        touched: dict[str, tuple[int, AccountState]] = {}
        decided: list[tuple[int, str, Outcomes]] = []
        indexed = list(enumerate(decoded))
        for round_items in split_rounds(indexed, lambda item: item[1][1]["account_id"]):
            for _, (message, request) in round_items:
                if request["account_id"] not in cache:
                    cache[request["account_id"]] = self.states.load(
                        message.partition, request["account_id"]
                    )
            observed, assessments = self._assess([item for _, item in round_items], cache)
            for (index, (message, request)), fraud, features in zip(
                round_items, assessments, observed, strict=True
            ):
                account = request["account_id"]
                position = Position(message.topic, message.partition, message.offset)
                state, outcomes = decide(cache[account], request, context, position, fraud)
                if features is not None:
                    state.features = features[0]
                cache[account] = state
                touched[account] = (message.partition, state)
                decided.append((index, account, outcomes))
        # Outputs in offset order, whatever the rounds' order: a payee applies the legs of
        # one source partition in offset order and skips any at or below the highest it
        # has applied (agents/rules/decide.py, apply_leg), so a leg emitted after a
        # later-offset one from the same partition would be lost.
        decided.sort(key=lambda item: item[0])
        for _, account, outcomes in decided:
            self._emit(account, outcomes)
        self.stats.requests += len(messages)
        self._save(touched)
        return self.take_held()

    def _assess(
        self, round_items: list[tuple[Message, Request]], cache: dict[str, AccountState | None]
    ) -> tuple[list[Any], list[FraudAssessment]]:
        """Feature states and assessments of one round (NO_FRAUD for unscored requests)."""
        fraud = self.fraud
        if fraud is None:
            return [None] * len(round_items), [NO_FRAUD] * len(round_items)
        observed = [fraud.features_for(cache[r["account_id"]], r) for _, r in round_items]
        rows = [item[1] for item in observed if item is not None and item[1] is not None]
        scored = iter(fraud.assess(rows))
        assessments = [
            next(scored) if item is not None and item[1] is not None else NO_FRAUD
            for item in observed
        ]
        return observed, assessments

    # -- legs -------------------------------------------------------------------------
    def process_legs(self, messages: list[Message]) -> list[HeldOutput]:
        """Apply a batch of legs; returns its outputs, to release once its state is durable."""
        context = self._context(messages)
        cache: dict[str, AccountState | None] = {}
        touched: dict[str, tuple[int, AccountState]] = {}
        for message in messages:
            record = self._decode(message, names.LEGS)
            if record is None:
                continue
            leg = cast(Leg, record)
            account = leg["account_id"]
            if account not in cache:
                cache[account] = self.states.load(message.partition, account)
            position = Position(message.topic, message.partition, message.offset)
            state, outcomes = apply_leg(cache[account], leg, context, position)
            if leg["kind"] == "REFUND_DEBIT" and not outcomes.legs:
                log.error(
                    "refund debit %s at %s dropped: source position %s:%d already applied "
                    "(positions %s) but no result is recorded",
                    leg["leg_id"], position, leg["source_partition"], leg["source_offset"],
                    state.positions,
                )  # fmt: skip
            cache[account] = state
            touched[account] = (message.partition, state)
            self._emit(account, outcomes)
        self.stats.legs += len(messages)
        self._save(touched)
        return self.take_held()

    # -- helpers ----------------------------------------------------------------------
    def _decode(self, message: Message, logical_topic: str) -> dict[str, Any] | None:
        """Decode one message or turn it into a dead letter (returns None)."""
        from schemas.codec import SchemaError

        if message.value is None:
            self.dead_letter(message, "invalid_message", "message has no value (tombstone)")
            return None
        try:
            record = self.codec.decode(
                logical_topic, message.value, message.partition, message.offset
            )
        except SchemaError as exc:
            self.dead_letter(message, "schema_error", str(exc))
            return None
        account = record.get("account_id")
        if message.key is None or message.key.decode("utf-8", "replace") != account:
            self.dead_letter(
                message,
                "invalid_key",
                f"key {message.key!r} does not match account_id {account!r}: "
                "state is partitioned by account, so the key must be the account id",
            )
            return None
        return record

    def _emit(self, account: str, outcomes: Outcomes) -> None:
        """Encode outputs now; they are produced by ``release_outputs`` after the state."""
        encode = self.codec.encode
        produce = self._hold_output
        key = account.encode()
        for decision in outcomes.decisions:
            produce(self.t_decisions, key, encode(names.DECISIONS, decision))
            status = decision["decline_code"] or decision["status"]
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        self.stats.decisions += len(outcomes.decisions)
        for transaction in outcomes.transactions:
            produce(self.t_ledger, key, encode(names.LEDGER, transaction))
        for leg in outcomes.legs:
            produce(self.t_legs, leg["account_id"].encode(), encode(names.LEGS, leg))
        for note in outcomes.notifications:
            produce(
                self.t_notifications, note["account_id"].encode(), encode(names.NOTIFICATIONS, note)
            )

    def _hold_output(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._pending_outputs.append((topic, key, value))

    def take_held(self) -> list[HeldOutput]:
        """The outputs held since the last take (each batch takes its own)."""
        held, self._pending_outputs = self._pending_outputs, []
        return held

    def release_outputs(self, held: list[HeldOutput]) -> int:
        """Produce the outputs of the batch; call only once its state records are durable.

        The order is what makes a crash safe: an output that reached Kafka implies the
        state that produced it did too, so a redelivered request finds its record and
        re-emits the same outputs instead of deciding again (possibly differently).
        """
        for topic, key, value in held:
            self.producer.produce(topic, key, value)
        self.producer.poll()
        return len(held)

    def _save(self, touched: dict[str, tuple[int, AccountState]]) -> None:
        for partition, state in touched.values():
            self.states.save(partition, state)
        self.producer.poll()

    def dead_letter(self, message: Message, error_class: str, error: str) -> None:
        log.warning(
            "dead letter %s[%d]@%d: %s: %s",
            message.topic, message.partition, message.offset, error_class, error,
        )  # fmt: skip
        record = {
            "original_topic": message.topic,
            "original_partition": message.partition,
            "original_offset": message.offset,
            "original_key": message.key,
            "original_value": message.value,
            "error_class": error_class,
            "error": error,
            "first_seen_ms": int(time.time() * 1000),
            "worker": self.worker_name,
        }
        self._hold_output(self.t_dlq, message.key, self.codec.encode(names.DLQ, record))
        self.stats.dead_letters += 1
