"""Training data: replay history in event-time order through the rules and the features.

The worker computes a request's feature vector from the payer's feature state and
its available balance *before* deciding it, and only for a request it has not seen
(a retry or redelivery of a known idempotency key gets no new vector). This module
replays history the same way, through the same pure functions -- ``decide`` and
``apply_leg`` of agents/rules for the balances, ``observe`` of models/features.py
for the vectors -- so a model is trained on the vectors it will be served:

- requests in ``created_at_ms`` order (ties keep their order), all on one virtual
  partition; each approved payment's credit leg (and a refund's legs) is applied at
  once, as the legs agent would a moment later;
- every request is decided as if fraud scoring approved it (``NO_FRAUD``): the
  history used for training is what customers asked for, not what an older model
  let through;
- :func:`is_new_request` and :func:`feature_balance` are the two rules the worker
  must share with this replay (import them rather than re-deriving them).

Labels (fraud.labels) are kept as events with their ``labeled_at_ms``:
:meth:`Dataset.labels_as_of` gives, per row, the latest verdict known at a time
(no label yet = legitimate), which is how training respects label maturity.

Amount-weighted metrics need one unit across currencies: :func:`reference_value`
converts at fixed, approximate rates to :data:`REFERENCE_CURRENCY`. They weight
evaluation metrics and threshold costs only; money never goes through them.

Sources of history: :func:`read_history_dir` (``requests.jsonl`` and
``labels.jsonl``, one JSON object per line, e.g. a saved simulation),
:func:`read_history_kafka` (payments.requests and fraud.labels) and the simulator.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from agents.rules import AccountState, Context, apply_leg, decide
from agents.rules.decide import NO_FRAUD, RESERVED_PREFIXES, Policy, Position
from agents.rules.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS
from agents.rules.records import Leg, Request
from models.errors import TrainingDataError

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

REFERENCE_CURRENCY = "EUR"
# Approximate units of each currency per EUR (late 2025). Evaluation weights only.
UNITS_PER_REFERENCE: dict[str, float] = {
    "EUR": 1.0,
    "USD": 1.16,
    "GBP": 0.88,
    "CHF": 0.93,
    "JPY": 180.0,
    "KWD": 0.356,
    "BHD": 0.437,
    "SEK": 10.9,
    "NOK": 11.7,
    "DKK": 7.47,
    "PLN": 4.23,
    "CZK": 24.2,
    "HUF": 385.0,
}
REQUESTS_FILE = "requests.jsonl"
LABELS_FILE = "labels.jsonl"
REPLAY_PARTITION = 0
_REQUEST_FIELDS = ("request_id", "kind", "account_id", "amount_minor", "currency", "created_at_ms")
_LABEL_FIELDS = ("request_id", "is_fraud", "labeled_at_ms")
NEVER_MS = np.iinfo(np.int64).max


def reference_value(amount_minor: int, currency: str) -> float:
    """The amount in :data:`REFERENCE_CURRENCY` major units (approximate, for weighting)."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    rate = UNITS_PER_REFERENCE.get(currency, 1.0)
    return max(amount_minor, 0) / 10**exponent / rate


def is_new_request(state: AccountState | None, request: Request) -> bool:
    """False for a retry or redelivery: its idempotency key already has a record."""
    if state is None:
        return True
    return (request["idempotency_key"] or request["request_id"]) not in state.idempotency


def feature_balance(state: AccountState | None, request: Request) -> int:
    """The payer's available balance in the request's currency, before the request."""
    if state is None:
        return 0
    balance = state.balances.get(request["currency"])
    return balance.available_minor if balance is not None else 0


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """One row per scored request (in time order) and the label events about them."""

    feature_names: tuple[str, ...]
    X: FloatArray  # (rows, features)
    times: IntArray  # created_at_ms
    values: FloatArray  # amount in REFERENCE_CURRENCY
    request_ids: list[str]
    label_rows: IntArray  # per label event (sorted by time): its row
    label_times: IntArray  # labeled_at_ms
    label_fraud: NDArray[np.bool_]
    requests_replayed: int = 0
    labels_unmatched: int = 0  # labels naming no scored request of the history

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def first_ms(self) -> int:
        return int(self.times[0]) if len(self) else 0

    @property
    def end_ms(self) -> int:
        """Just after the last row."""
        return int(self.times[-1]) + 1 if len(self) else 0

    @property
    def latest_event_ms(self) -> int:
        """The newest thing the history knows: a request or a label."""
        latest = self.end_ms - 1
        if self.label_times.size:
            latest = max(latest, int(self.label_times.max()))
        return latest

    def labels_as_of(self, as_of_ms: int | None = None) -> NDArray[np.int8]:
        """Per row: 1 if the latest label known at ``as_of_ms`` says fraud, else 0.

        ``None`` uses every label (the ground truth as far as the history knows it).
        """
        y = np.zeros(len(self), dtype=np.int8)
        known = (
            np.ones(self.label_times.size, dtype=bool)
            if as_of_ms is None
            else self.label_times <= as_of_ms
        )
        rows = self.label_rows[known]
        verdicts = self.label_fraud[known]
        if rows.size:
            # Labels are in time order: the last occurrence of a row is its latest verdict.
            reversed_rows = rows[::-1]
            unique, first_in_reversed = np.unique(reversed_rows, return_index=True)
            y[unique] = verdicts[::-1][first_in_reversed]
        return y

    def window(self, start_ms: int, end_ms: int) -> NDArray[np.int64]:
        """Row indexes created in ``[start_ms, end_ms)`` (times are sorted)."""
        lo = int(np.searchsorted(self.times, start_ms, side="left"))
        hi = int(np.searchsorted(self.times, end_ms, side="left"))
        return np.arange(lo, hi, dtype=np.int64)


class _Replay:
    """The rules and the features, fed one request at a time."""

    def __init__(self, policy: Policy, fx_rates: Mapping[str, Any] | None) -> None:
        from models.features import observe

        self.observe = observe
        self.policy = policy
        self.fx_rates = dict(fx_rates or {})
        self.states: dict[str, AccountState] = {}
        self.features: dict[str, Any] = {}
        self.offset = 0
        self.leg_offset = 0
        self._source = f"payments.requests:{REPLAY_PARTITION}"

    def step(self, request: Request) -> tuple[float, ...] | None:
        payer = request["account_id"]
        state = self.states.get(payer)
        vector = None
        if is_new_request(state, request):
            fstate, vector = self.observe(
                self.features.get(payer), request, feature_balance(state, request)
            )
            self.features[payer] = fstate
        t = request["created_at_ms"]
        context = Context(self.policy, self.fx_rates, t, {self._source: self.offset})
        position = Position("payments.requests", REPLAY_PARTITION, self.offset)
        self.offset += 1
        new_state, outcomes = decide(state, request, context, position, NO_FRAUD)
        self.states[payer] = new_state
        pending: list[Leg] = list(outcomes.legs)
        while pending:
            leg = pending.pop(0)
            target = leg["account_id"]
            leg_context = Context(self.policy, self.fx_rates, t)
            where = Position("payments.legs", REPLAY_PARTITION, self.leg_offset)
            self.leg_offset += 1
            leg_state, leg_out = apply_leg(self.states.get(target), leg, leg_context, where)
            self.states[target] = leg_state
            pending.extend(leg_out.legs)
        return vector


class _Payment:
    __slots__ = (
        "amount",
        "captured",
        "created",
        "currency",
        "expires",
        "payee",
        "refunded",
        "status",
    )

    def __init__(
        self, payee: str, currency: str, amount: int, status: str, created: int, expires: int
    ) -> None:
        self.payee = payee
        self.currency = currency
        self.amount = amount
        self.status = status
        self.created = created
        self.expires = expires
        self.captured = amount if status == "CAPTURED" else 0
        self.refunded = 0


class _Account:
    __slots__ = ("available", "clock", "expiries", "held", "home", "keys", "payments")

    def __init__(self) -> None:
        self.available: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.home: str | None = None
        self.clock = 0
        self.keys: dict[str, int] = {}  # idempotency key -> created_at_ms
        self.payments: dict[str, _Payment] = {}
        self.expiries: list[tuple[int, str]] = []  # heap of (expires_at_ms, payment id)


class _LedgerReplay:
    """Balances only: the part of the rules the features read, ~50x faster than ``decide``.

    Mirrors agents/rules/decide.py for what moves ``available`` -- validation,
    idempotency keys (pruned after the idempotency window), funding in the payer's
    currency, holds and their expiry (released at the account's next event, as
    ``_housekeep`` does), captures, voids, refunds (the payee pays them back if it
    can), payouts and the payee's credit -- with an empty FX table (a payment in a
    currency the payer does not hold declines, as it would without rates).
    tests/models/test_dataset.py checks it gives the vectors of :class:`_Replay`.
    """

    def __init__(self, policy: Policy, fx_rates: Mapping[str, Any] | None) -> None:
        from models.features import observe

        if fx_rates:
            raise ValueError("the fast replay has no FX: use exact=True with fx_rates")
        self.observe = observe
        self.policy = policy
        self.accounts: dict[str, _Account] = {}
        self.features: dict[str, Any] = {}
        self.offset = 0

    def _account(self, account_id: str, t: int) -> _Account:
        account = self.accounts.get(account_id)
        if account is None:
            account = self.accounts[account_id] = _Account()
        if t > account.clock:
            account.clock = t
        expiries = account.expiries
        while expiries and expiries[0][0] <= account.clock:
            _, payment_id = heapq.heappop(expiries)
            payment = account.payments.get(payment_id)
            if payment is not None and payment.status == "AUTHORIZED":
                payment.status = "EXPIRED"
                self._release(account, payment)
        return account

    @staticmethod
    def _release(account: _Account, payment: _Payment) -> None:
        account.held[payment.currency] -= payment.amount
        account.available[payment.currency] += payment.amount

    def _valid(self, r: Request) -> bool:
        kind, amount, currency, payer = (
            r["kind"], r["amount_minor"], r["currency"], r["account_id"]
        )  # fmt: skip
        if not payer or payer.startswith(RESERVED_PREFIXES):
            return False
        if currency not in CURRENCY_EXPONENTS or currency not in self.policy.currencies:
            return False
        if amount < 0 or (amount == 0 and kind not in ("CAPTURE", "VOID")):
            return False
        if amount > AMOUNT_MINOR_MAX:
            return False
        if kind in ("PAYMENT", "AUTHORIZE"):
            payee = r["counterparty_id"]
            if not payee or payee.startswith(RESERVED_PREFIXES) or payee == payer:
                return False
        return not (kind in ("CAPTURE", "VOID", "REFUND") and not r["payment_id"])

    @staticmethod
    def _can_fund(account: _Account, currency: str, amount: int) -> bool:
        direct = currency == account.home or (
            account.available.get(currency, 0) + account.held.get(currency, 0) > 0
        )
        return direct and account.available.get(currency, 0) >= amount

    def step(self, r: Request) -> tuple[float, ...] | None:
        payer_id, t = r["account_id"], r["created_at_ms"]
        payer = self.accounts.get(payer_id)
        key = r["idempotency_key"] or r["request_id"]
        window = self.policy.idempotency_window_ms
        self.offset += 1
        vector = None
        seen = payer.keys.get(key) if payer is not None else None
        if seen is None or seen + window <= payer.clock:  # type: ignore[union-attr]
            available = payer.available.get(r["currency"], 0) if payer is not None else 0
            fstate, vector = self.observe(self.features.get(payer_id), r, available)
            self.features[payer_id] = fstate
        payer = self._account(payer_id, t)
        if seen is not None and seen + window > payer.clock:
            payer.keys[key] = max(seen, t)  # a retry: answered from the record
            return vector
        if t <= payer.clock - window:
            return vector  # request_expired, not recorded
        payer.keys[key] = t
        if self._valid(r):
            self._apply(payer, r, t)
        return vector

    def _apply(self, payer: _Account, r: Request, t: int) -> None:
        kind, amount, currency = r["kind"], r["amount_minor"], r["currency"]
        available, held = payer.available, payer.held
        if kind == "TOPUP":
            available[currency] = available.get(currency, 0) + amount
            if payer.home is None:
                payer.home = currency
        elif kind in ("PAYMENT", "AUTHORIZE"):
            payment_id = r["request_id"]
            if payment_id in payer.payments or not self._can_fund(payer, currency, amount):
                return
            payee = r["counterparty_id"]
            assert payee is not None
            if kind == "AUTHORIZE":
                expires = r["expires_at_ms"]
                if expires is None:
                    expires = t + self.policy.hold_default_ms
                if expires <= payer.clock:
                    return
                available[currency] -= amount
                held[currency] = held.get(currency, 0) + amount
                payer.payments[payment_id] = _Payment(
                    payee, currency, amount, "AUTHORIZED", t, expires
                )
                heapq.heappush(payer.expiries, (expires, payment_id))
            else:
                available[currency] -= amount
                payer.payments[payment_id] = _Payment(payee, currency, amount, "CAPTURED", t, 0)
                self._credit(payee, currency, amount, t)
        elif kind in ("CAPTURE", "VOID"):
            payment = payer.payments.get(r["payment_id"] or "")
            if payment is None or payment.status != "AUTHORIZED":
                return
            if kind == "VOID":
                payment.status = "VOIDED"
                self._release(payer, payment)
                return
            captured = amount or payment.amount
            if currency != payment.currency or captured > payment.amount:
                return
            held[currency] -= payment.amount
            available[currency] += payment.amount - captured
            payment.status = "CAPTURED"
            payment.captured = captured
            self._credit(payment.payee, currency, captured, t)
        elif kind == "REFUND":
            payment = payer.payments.get(r["payment_id"] or "")
            if payment is None or payment.status != "CAPTURED" or currency != payment.currency:
                return
            if payment.created + self.policy.refund_window_ms <= payer.clock:
                return  # pruned: original_not_found
            if amount > payment.captured - payment.refunded:
                return
            payee_account = self._account(payment.payee, t)
            if payee_account.available.get(currency, 0) < amount:
                return
            payee_account.available[currency] -= amount
            self._account(r["account_id"], t)
            payment.refunded += amount
            available[currency] += amount
        elif kind == "PAYOUT" and self._can_fund(payer, currency, amount):
            available[currency] -= amount

    def _credit(self, account_id: str, currency: str, amount: int, t: int) -> None:
        account = self._account(account_id, t)
        account.available[currency] = account.available.get(currency, 0) + amount


def default_policy() -> Policy:
    """The rules' configuration of a worker with default settings."""
    from agents.pipeline import policy_from
    from streams.settings import Settings

    return policy_from(Settings())


def build_dataset(
    requests: Iterable[Request],
    labels: Iterable[Mapping[str, Any]],
    *,
    policy: Policy | None = None,
    fx_rates: Mapping[str, Any] | None = None,
    keep_from_ms: int | None = None,
    keep_to_ms: int | None = None,
    exact: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Replay ``requests`` (sorted here by ``created_at_ms``, stably) into feature rows.

    Every request feeds the state (the history before ``keep_from_ms`` warms it up);
    rows are kept for scored requests created in ``[keep_from_ms, keep_to_ms)``.
    ``exact`` replays through ``decide``/``apply_leg`` themselves (~100-200 µs per
    request on the dev VM) instead of the balance-only mirror (a few µs).
    """
    from models.features import FEATURE_NAMES

    ordered = sorted(requests, key=lambda r: r["created_at_ms"])
    replay: _Replay | _LedgerReplay
    if exact:
        replay = _Replay(policy or default_policy(), fx_rates)
    else:
        replay = _LedgerReplay(policy or default_policy(), fx_rates)
    lo = keep_from_ms if keep_from_ms is not None else -(2**62)
    hi = keep_to_ms if keep_to_ms is not None else 2**62
    rows: list[tuple[float, ...]] = []
    times: list[int] = []
    values: list[float] = []
    ids: list[str] = []
    for count, request in enumerate(ordered, 1):
        t = request["created_at_ms"]
        if t >= hi:
            break
        vector = replay.step(request)
        if vector is not None and t >= lo:
            rows.append(vector)
            times.append(t)
            values.append(reference_value(request["amount_minor"], request["currency"]))
            ids.append(request["request_id"])
        if progress is not None and count % 100_000 == 0:
            progress(count)
    width = len(FEATURE_NAMES)
    X = np.array(rows, dtype=np.float64) if rows else np.empty((0, width))
    row_of = {request_id: i for i, request_id in enumerate(ids)}
    events: list[tuple[int, int, bool]] = []
    unmatched = 0
    for label in labels:
        row = row_of.get(str(label["request_id"]))
        if row is None:
            unmatched += 1
            continue
        events.append((int(label["labeled_at_ms"]), row, bool(label["is_fraud"])))
    events.sort(key=lambda e: e[0])
    return Dataset(
        feature_names=tuple(FEATURE_NAMES),
        X=X,
        times=np.array(times, dtype=np.int64),
        values=np.array(values, dtype=np.float64),
        request_ids=ids,
        label_rows=np.array([e[1] for e in events], dtype=np.int64),
        label_times=np.array([e[0] for e in events], dtype=np.int64),
        label_fraud=np.array([e[2] for e in events], dtype=np.bool_),
        requests_replayed=replay.offset,
        labels_unmatched=unmatched,
    )


# --------------------------------------------------------------------------------------
# Sources of history
# --------------------------------------------------------------------------------------


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    records = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise TrainingDataError(f"{path}:{number}: not JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise TrainingDataError(f"{path}:{number}: not a JSON object")
                missing = [name for name in required if name not in record]
                if missing:
                    raise TrainingDataError(f"{path}:{number}: lacks {', '.join(missing)}")
                records.append(record)
    except FileNotFoundError as exc:
        raise TrainingDataError(f"{path} does not exist") from exc
    except OSError as exc:
        raise TrainingDataError(f"cannot read {path}: {exc}") from exc
    return records


_REQUEST_DEFAULTS: dict[str, Any] = {
    "idempotency_key": None,
    "counterparty_id": None,
    "payment_id": None,
    "expires_at_ms": None,
    "device_id": None,
    "country": None,
    "merchant_category": None,
    "metadata": {},
}


def read_history_dir(directory: Path | str) -> tuple[list[Request], list[dict[str, Any]]]:
    """``requests.jsonl`` and ``labels.jsonl`` of ``directory``."""
    directory = Path(directory)
    requests = []
    for record in _read_jsonl(directory / REQUESTS_FILE, _REQUEST_FIELDS):
        full = {**_REQUEST_DEFAULTS, **record}
        full["idempotency_key"] = full["idempotency_key"] or full["request_id"]
        requests.append(cast(Request, full))
    labels = _read_jsonl(directory / LABELS_FILE, _LABEL_FIELDS)
    return requests, labels


def write_history_dir(
    directory: Path | str, requests: Iterable[Request], labels: Iterable[Mapping[str, Any]]
) -> None:
    """The inverse of :func:`read_history_dir` (e.g. to save a simulation)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in ((REQUESTS_FILE, requests), (LABELS_FILE, labels)):
        with (directory / name).open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")))
                handle.write("\n")


def read_history_kafka(
    settings: Any, *, since_ms: int | None = None, timeout_s: float = 300.0
) -> tuple[list[Request], list[dict[str, Any]]]:
    """Every request on payments.requests and label on fraud.labels, up to now.

    Reads each partition from ``offsets_for_times(since_ms)`` (the beginning when
    None: features need the accounts' whole history) to its end offset as of the
    start. Messages that do not decode are skipped and counted in the log.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    from schemas.codec import SchemaError, load_codec
    from streams import topics

    codec = load_codec(settings.schema_registry_url, topic_prefix=settings.topic_prefix)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": f"paystream-model-train-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    out: dict[str, list[dict[str, Any]]] = {topics.REQUESTS: [], topics.FRAUD_LABELS: []}
    deadline = time.monotonic() + timeout_s
    try:
        assignment: list[Any] = []
        ends: dict[tuple[str, int], int] = {}
        logical: dict[str, str] = {}
        for name in out:
            topic = settings.topic(name)
            logical[topic] = name
            try:
                metadata = consumer.list_topics(topic, timeout=min(30.0, timeout_s))
            except KafkaException as exc:
                raise TrainingDataError(f"cannot reach Kafka at {settings.brokers}: {exc}") from exc
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise TrainingDataError(f"topic {topic} does not exist on {settings.brokers}")
            partitions = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            if since_ms is not None:
                for tp in partitions:
                    tp.offset = since_ms
                starts = consumer.offsets_for_times(partitions, timeout=30.0)
            else:
                starts = [
                    TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in partitions
                ]
            for tp in starts:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=30.0
                )
                start = low if tp.offset < 0 else max(tp.offset, low)
                if since_ms is not None and tp.offset < 0:
                    start = high  # nothing at or after since_ms
                if start < high:
                    ends[(topic, tp.partition)] = high
                    assignment.append(TopicPartition(topic, tp.partition, start))
        consumer.assign(assignment)
        skipped = 0
        while ends:
            if time.monotonic() > deadline:
                raise TrainingDataError(
                    f"reading history from {settings.brokers} took longer than {timeout_s:g} s"
                )
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error() is not None:
                    continue
                topic, partition = str(message.topic()), int(message.partition() or 0)
                offset = int(message.offset() or 0)
                end = ends.get((topic, partition))
                if end is None or offset >= end:
                    continue
                if offset >= end - 1:
                    ends.pop((topic, partition))
                name = logical[topic]
                try:
                    out[name].append(codec.decode(name, message.value() or b""))
                except (SchemaError, TypeError):
                    skipped += 1
        if skipped:
            log.warning("skipped %d messages that do not decode", skipped)
    finally:
        consumer.close()
    requests = [cast(Request, record) for record in out[topics.REQUESTS]]
    requests.sort(key=lambda r: r["created_at_ms"])
    labels = out[topics.FRAUD_LABELS]
    labels.sort(key=lambda label: label["labeled_at_ms"])
    return requests, labels


def simulated_rows(
    n: int, seed: int = 7, *, customers: int = 300, days: int = 45
) -> list[tuple[float, ...]]:
    """The last ``n`` feature vectors of a small simulation (for benchmarks).

    The first weeks of a simulation are unusual (every account and device is new);
    the last rows of a 45-day run look like steady-state traffic.
    """
    from models.simulate import SimulationSpec, simulate

    spec = SimulationSpec(
        customers=customers, merchants=max(60, customers // 10), days=days, seed=seed
    )
    sim = simulate(spec)
    data = build_dataset(sim.requests, [])
    return [tuple(row) for row in data.X[-n:].tolist()]
