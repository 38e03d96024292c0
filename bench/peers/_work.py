"""What the textbook and Quix peers do per event: paystream's own rules, features, model
and codec, called one message at a time.

Both peers differ from the paystream worker in *how* they run the work (per event,
through their framework's state store and producer), never in *what* the work is:

- decoding, key checks and dead letters are the worker's own (``Processor._decode``,
  ``Processor.dead_letter``), and so is the encoding of every outcome
  (``Processor._emit``): the :class:`agents.pipeline.Processor` here serves those per
  message and is never given a batch, a store or a producer;
- a request is scored and decided as ``Processor.process_requests`` does for a round
  of one: features from the account's state *before* the request, one model call,
  ``decide`` with the Position it was read at, the new feature state stored in the
  account's value; a leg goes through ``apply_leg`` as in ``process_legs``;
- the fraud stage is the worker's: the champion announced on ``fraud.models``
  (followed by the worker's :class:`agents.model_watch.ModelWatcher`), else the
  rules baseline built as ``agents/authorize.py`` builds it;
- the state value is an :class:`agents.rules.AccountState` as bytes, decoded on every
  event and encoded after it (the worker keeps decoded values cached across batches:
  that saving is part of what the benchmark compares).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, cast

from agents.fraud import FraudStage
from agents.model_watch import ModelWatcher
from agents.pipeline import FxRatesView, HeldOutput, Message, Processor
from agents.rules import AccountState, Context, apply_leg, decide
from agents.rules.decide import Position
from agents.rules.fx import FxQuote
from agents.rules.records import Leg, Request
from schemas.codec import SchemaError, load_codec
from streams import topics as names
from streams.settings import Settings

log = logging.getLogger("bench.peers")

PROGRESS_EVERY_S = 10.0  # throughput is logged at most this often, and only when busy
INTERNAL_ERROR = "internal_error"  # error_class of a dead letter for a bug, not bad input
ADMIN_TIMEOUT_S = 30.0
EXIT_TOPICS_MISSING = 78  # EX_CONFIG: a peer's topics were not created by the harness

# Topics the harness creates and a peer reads or writes: a peer refuses to start without
# them rather than have its framework or the broker create them with default settings.
PEER_TOPICS: tuple[str, ...] = (
    names.REQUESTS,
    names.LEGS,
    names.DECISIONS,
    names.LEDGER,
    names.NOTIFICATIONS,
    names.DLQ,
    names.FX_RATES,
    names.FRAUD_MODELS,
)


class Step(NamedTuple):
    """What one event did: the account's new value (None: unchanged) and the outputs."""

    state: bytes | None
    outputs: list[HeldOutput]


def rules_baseline() -> Any:
    """The scorer of a worker with no promoted model, built as agents/authorize.py does."""
    from models.features import FEATURE_NAMES
    from models.scorer import RulesBaselineScorer

    return RulesBaselineScorer(FEATURE_NAMES)


def _per_message_processor(
    settings: Settings, fx_rates: Mapping[str, FxQuote], fraud: FraudStage | None, worker: str
) -> Processor:
    """A Processor used per message only: it gets no store and no producer, because the
    peers keep the state and produce the outputs themselves."""
    codec = load_codec(settings.schema_registry_url)
    unused: Any = None
    return Processor(settings, codec, unused, unused, fx_rates, fraud=fraud, worker_name=worker)


class EventWork:
    """Requests and legs, one event at a time, with the paystream worker's semantics.

    Not thread-safe: one instance per processing thread (the Processor holds the
    outputs of the event being handled).
    """

    def __init__(
        self, settings: Settings, peer: str, fx_lookup: Callable[[bytes], bytes | None], worker: str
    ) -> None:
        self.peer = peer
        self.fraud = FraudStage(rules_baseline())
        self.model_watcher = ModelWatcher(settings, self.fraud)
        codec = load_codec(settings.schema_registry_url)
        rates = FxRatesView(fx_lookup, codec, names.FX_RATES)
        self.processor = _per_message_processor(settings, rates, self.fraud, worker)
        self.requests = 0
        self.legs = 0
        self._reported_at = time.monotonic()
        self._reported_events = 0

    def start_model_watch(self) -> None:
        log.info(
            "%s fraud: %s; watching %s for promotions", self.peer,
            self.fraud.champion.describe(), self.model_watcher.settings.topic(names.FRAUD_MODELS),
        )  # fmt: skip
        self.model_watcher.start()

    def stop_model_watch(self) -> None:
        self.model_watcher.stop.set()

    # -- per event ----------------------------------------------------------------------
    def on_request(self, message: Message, load: Callable[[], bytes | None]) -> Step:
        """Decide one request; ``load`` reads the payer's value (called only if decodable)."""
        self.requests += 1
        try:
            return self._request(message, load)
        except Exception as exc:
            return self._internal_error(message, exc)
        finally:
            self._maybe_report()

    def on_leg(self, message: Message, load: Callable[[], bytes | None]) -> Step:
        """Apply one leg; ``load`` reads the value of the account it names."""
        self.legs += 1
        try:
            return self._leg(message, load)
        except Exception as exc:
            return self._internal_error(message, exc)
        finally:
            self._maybe_report()

    def _request(self, message: Message, load: Callable[[], bytes | None]) -> Step:
        processor = self.processor
        context = self._context(message)
        record = processor._decode(message, names.REQUESTS)
        if record is None:
            return Step(None, processor.take_held())
        request = cast(Request, record)
        account = request["account_id"]
        state = _account_state(load())
        # A round of one (Processor.process_requests): features from the state before
        # the request, one model call, then the decision.
        observed, assessments = processor._assess([(message, request)], {account: state})
        position = Position(message.topic, message.partition, message.offset)
        state, outcomes = decide(state, request, context, position, assessments[0])
        if observed[0] is not None:
            state.features = observed[0][0]
        processor._emit(account, outcomes)
        return Step(state.to_bytes(), processor.take_held())

    def _leg(self, message: Message, load: Callable[[], bytes | None]) -> Step:
        processor = self.processor
        context = self._context(message)
        record = processor._decode(message, names.LEGS)
        if record is None:
            return Step(None, processor.take_held())
        leg = cast(Leg, record)
        position = Position(message.topic, message.partition, message.offset)
        state, outcomes = apply_leg(_account_state(load()), leg, context, position)
        if leg["kind"] == "REFUND_DEBIT" and not outcomes.legs:
            log.error("%s: refund debit %s at %s dropped: its source position was already "
                      "applied but no result is recorded", self.peer, leg["leg_id"],
                      position)  # fmt: skip
        processor._emit(leg["account_id"], outcomes)
        return Step(state.to_bytes(), processor.take_held())

    def _context(self, message: Message) -> Context:
        """The Context of a batch of this one message.

        ``flushed_below[topic:partition]`` tells the rules below which offset every
        message's outputs are durable, so that the outputs kept in an account's value
        for re-emission after a crash can be dropped (only the decision is kept). The
        worker sets it to the first offset of the batch being processed, because the
        batch before was flushed first. Per event the equivalent is the offset of the
        event itself: the peers treat the outputs of the events before it as sent.
        That holds for Quix (state, outputs and offsets are committed together at a
        checkpoint, outputs flushed first); for the textbook faust agent it is what the
        textbook assumes of ``await topic.send`` (the record is queued, not yet
        acknowledged). It changes only how long stored outputs stay in a value, never
        a decision.
        """
        return self.processor._context([message])

    def _internal_error(self, message: Message, exc: Exception) -> Step:
        """A bug, not bad input (bad input is declined or dead-lettered by the rules):
        the textbook answer is a dead letter with the original bytes, and carry on."""
        processor = self.processor
        processor.take_held()  # whatever the failed event had encoded is dropped
        log.exception("%s: %s[%d]@%d failed", self.peer, message.topic, message.partition,
                      message.offset)  # fmt: skip
        processor.dead_letter(message, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        return Step(None, processor.take_held())

    # -- progress -----------------------------------------------------------------------
    def _maybe_report(self) -> None:
        now = time.monotonic()
        elapsed_s = now - self._reported_at
        if elapsed_s < PROGRESS_EVERY_S:
            return
        events = self.requests + self.legs
        if events > self._reported_events:
            stats = self.processor.stats
            log.info(
                "%s: %d requests, %d legs, %d decisions, %d dead letters; %.0f events/s "
                "over the last %.0f s", self.peer, self.requests, self.legs, stats.decisions,
                stats.dead_letters, (events - self._reported_events) / elapsed_s, elapsed_s,
            )  # fmt: skip
        self._reported_at = now
        self._reported_events = events


class FxRateCheck:
    """The paystream fx agent's check of an fx.rates record: decodable, or a dead letter.

    Its own Processor, so that a peer may check rates on another thread than the one
    running :class:`EventWork`.
    """

    def __init__(self, settings: Settings, worker: str) -> None:
        self.processor = _per_message_processor(settings, {}, None, worker)

    def check(self, message: Message) -> list[HeldOutput]:
        """No outputs: the rate may be stored. Otherwise its dead letter."""
        processor = self.processor
        if message.value is None:
            processor.dead_letter(message, "invalid_message", "message has no value (tombstone)")
            return processor.take_held()
        try:
            processor.codec.decode(names.FX_RATES, message.value, message.partition, message.offset)
        except SchemaError as exc:
            processor.dead_letter(message, "schema_error", str(exc))
        return processor.take_held()


def _account_state(raw: bytes | None) -> AccountState | None:
    return AccountState.from_bytes(raw) if raw is not None else None


def missing_topics(settings: Settings, logical: Iterable[str] = PEER_TOPICS) -> list[str]:
    """The full names of the topics a peer needs that do not exist on the broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.brokers})
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    return [settings.topic(name) for name in logical if settings.topic(name) not in existing]
