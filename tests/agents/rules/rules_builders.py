"""Builders for rule tests: requests, contexts, FX quotes, and a tiny in-memory "world".

The world plays the part of Kafka and the agents for the pure rules: it keeps one
log per partition of payments.requests and payments.legs, hands each message to
``decide``/``apply_leg`` with its position, routes emitted legs to the partition of
the account they name (in production order, like a Kafka partition), and records
every decision, ledger transaction and notification so tests can check the
invariants. Redelivery is re-processing a message at the position it was read.

Tests import it as ``tests.agents.rules.rules_builders`` (pytest runs with
``--import-mode=importlib`` and ``pythonpath = ["."]``; tests/ is a namespace package).
"""

from __future__ import annotations

import itertools
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents.rules.decide import (
    NO_FRAUD,
    Context,
    FraudAssessment,
    Outcomes,
    Policy,
    Position,
    apply_leg,
    decide,
    is_customer_account,
)
from agents.rules.fx import FxQuote
from agents.rules.records import Decision, Leg, Notification, Request, RequestKind, Transaction
from agents.rules.state import AccountState

REQUESTS_TOPIC = "payments.requests"
LEGS_TOPIC = "payments.legs"
CURRENCIES = frozenset({"EUR", "JPY", "KWD", "USD"})
AMOUNT_MAX = 2**63 - 1
SECOND_MS = 1000
DAY_MS = 24 * 3600 * SECOND_MS

_ids = itertools.count(1)


def new_id(prefix: str = "req") -> str:
    """A fresh, deterministic-per-run id."""
    return f"{prefix}-{next(_ids)}"


def make_policy(**overrides: Any) -> Policy:
    return Policy(currencies=overrides.pop("currencies", CURRENCIES), **overrides)


def make_context(
    rates: Mapping[str, FxQuote] | None = None, now_ms: int = 0, **policy_overrides: Any
) -> Context:
    return Context(make_policy(**policy_overrides), dict(rates or {}), now_ms)


def make_quote(pair: str, rate: str, spread_bps: int = 0, as_of_ms: int = 0) -> FxQuote:
    base, quote = pair.split("/")
    return FxQuote(base, quote, Decimal(rate), spread_bps, as_of_ms)


def rates(*quotes: FxQuote) -> dict[str, FxQuote]:
    return {f"{q.base}/{q.quote}": q for q in quotes}


def position(offset: int = 0, partition: int = 0, topic: str = REQUESTS_TOPIC) -> Position:
    return Position(topic, partition, offset)


def make_request(
    kind: RequestKind,
    account_id: str,
    amount_minor: int,
    currency: str = "EUR",
    *,
    request_id: str | None = None,
    idempotency_key: str = "",
    counterparty_id: str | None = None,
    payment_id: str | None = None,
    created_at_ms: int = 0,
    expires_at_ms: int | None = None,
) -> Request:
    return {
        "request_id": request_id or new_id(kind.lower()),
        "idempotency_key": idempotency_key,
        "kind": kind,
        "account_id": account_id,
        "counterparty_id": counterparty_id,
        "payment_id": payment_id,
        "amount_minor": amount_minor,
        "currency": currency,
        "created_at_ms": created_at_ms,
        "expires_at_ms": expires_at_ms,
        "device_id": None,
        "country": None,
        "merchant_category": None,
        "metadata": {},
    }


def topup(account: str, amount: int, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("TOPUP", account, amount, currency, **kw)


def payment(payer: str, payee: str, amount: int, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("PAYMENT", payer, amount, currency, counterparty_id=payee, **kw)


def authorize(payer: str, payee: str, amount: int, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("AUTHORIZE", payer, amount, currency, counterparty_id=payee, **kw)


def capture(
    payer: str, payment_id: str, amount: int = 0, currency: str = "EUR", **kw: Any
) -> Request:
    return make_request("CAPTURE", payer, amount, currency, payment_id=payment_id, **kw)


def void(payer: str, payment_id: str, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("VOID", payer, 0, currency, payment_id=payment_id, **kw)


def refund(payer: str, payment_id: str, amount: int, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("REFUND", payer, amount, currency, payment_id=payment_id, **kw)


def payout(account: str, amount: int, currency: str = "EUR", **kw: Any) -> Request:
    return make_request("PAYOUT", account, amount, currency, **kw)


def retry_of(request: Request, **changes: Any) -> Request:
    """The same request sent again by its producer: new request_id, same key (defaulted)."""
    again: Request = dict(request)  # type: ignore[assignment]
    again["idempotency_key"] = request["idempotency_key"] or request["request_id"]
    again["request_id"] = changes.pop("request_id", new_id("retry"))
    again.update(changes)  # type: ignore[typeddict-item]
    return again


def only_decision(outcomes: Outcomes) -> Decision:
    assert len(outcomes.decisions) == 1, outcomes.decisions
    return outcomes.decisions[0]


def fresh_state(account_id: str, **overdraft_minor: int) -> AccountState:
    return AccountState(account_id=account_id, overdraft_minor=dict(overdraft_minor))


def balances_of(state: AccountState) -> dict[str, tuple[int, int]]:
    return {c: (b.available_minor, b.held_minor) for c, b in state.balances.items()}


# --------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Distinct transactions by id (a sink that dedupes on transaction_id)."""

    transactions: dict[str, Transaction] = field(default_factory=dict)

    def post(self, transaction: Transaction) -> None:
        seen = self.transactions.get(transaction["transaction_id"])
        if seen is not None:
            assert seen == transaction, ("transaction id reused", seen, transaction)
            return
        self.transactions[transaction["transaction_id"]] = transaction

    def balances(self) -> dict[tuple[str, str], int]:
        """(account, currency) -> credits - debits over all distinct transactions."""
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for transaction in self.transactions.values():
            for entry in transaction["entries"]:
                sign = 1 if entry["direction"] == "CREDIT" else -1
                totals[entry["account_id"], entry["currency"]] += sign * entry["amount_minor"]
        return dict(totals)

    def balance(self, account: str, currency: str) -> int:
        return self.balances().get((account, currency), 0)


def transaction_is_balanced(transaction: Transaction) -> bool:
    per_currency: dict[str, int] = defaultdict(int)
    for entry in transaction["entries"]:
        sign = 1 if entry["direction"] == "CREDIT" else -1
        per_currency[entry["currency"]] += sign * entry["amount_minor"]
    return all(total == 0 for total in per_currency.values())


# --------------------------------------------------------------------------------------
# World: partitions, logs, routing
# --------------------------------------------------------------------------------------


@dataclass
class _Logged:
    request: Request
    fraud: FraudAssessment


class World:
    """Accounts on partitions, with request and leg logs, driving the pure rules."""

    def __init__(
        self,
        context: Context,
        partitions: int = 3,
        states: Iterable[AccountState] = (),
    ) -> None:
        self.context = context
        self.partitions = partitions
        self.states: dict[str, AccountState] = {s.account_id: s for s in states}
        self.request_log: list[list[_Logged]] = [[] for _ in range(partitions)]
        self.leg_log: list[list[Leg]] = [[] for _ in range(partitions)]
        self.leg_next: list[int] = [0] * partitions
        self.ledger = Ledger()
        # request_id -> the first (effective) decision emitted for it.
        self.decisions: dict[str, Decision] = {}
        # Decisions that differed from the effective one: (effective, later).
        self.mismatches: list[tuple[Decision, Decision]] = []
        self.notifications: dict[str, Notification] = {}
        self.notification_mismatches: list[tuple[Notification, Notification]] = []
        self.emitted: list[Outcomes] = []

    # -- plumbing -----------------------------------------------------------------
    def partition_of(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode()) % self.partitions

    def state(self, account_id: str) -> AccountState:
        found = self.states.get(account_id)
        if found is None:
            found = self.states[account_id] = AccountState(account_id=account_id)
        return found

    def _record(self, outcomes: Outcomes) -> None:
        self.emitted.append(outcomes)
        for decision in outcomes.decisions:
            first = self.decisions.setdefault(decision["request_id"], decision)
            if first != decision:
                self.mismatches.append((first, decision))
        for transaction in outcomes.transactions:
            self.ledger.post(transaction)
        for note in outcomes.notifications:
            seen = self.notifications.setdefault(note["notification_id"], note)
            if seen != note:
                self.notification_mismatches.append((seen, note))
        for leg in outcomes.legs:
            assert is_customer_account(leg["account_id"]), leg
            self.leg_log[self.partition_of(leg["account_id"])].append(leg)

    # -- requests -------------------------------------------------------------------
    def send(self, request: Request, fraud: FraudAssessment = NO_FRAUD) -> Outcomes:
        """Produce a request to its payer's partition and process it."""
        partition = self.partition_of(request["account_id"])
        self.request_log[partition].append(_Logged(request, fraud))
        return self.process(partition, len(self.request_log[partition]) - 1)

    def process(self, partition: int, offset: int) -> Outcomes:
        """(Re)process the request at a position: a redelivery when it was processed before."""
        logged = self.request_log[partition][offset]
        account = logged.request["account_id"]
        state, outcomes = decide(
            self.states.get(account),
            logged.request,
            self.context,
            Position(REQUESTS_TOPIC, partition, offset),
            logged.fraud,
        )
        self.states[account] = state
        self._record(outcomes)
        return outcomes

    def positions_of(self, request_id: str) -> list[tuple[int, int]]:
        return [
            (p, o)
            for p, log in enumerate(self.request_log)
            for o, logged in enumerate(log)
            if logged.request["request_id"] == request_id
        ]

    # -- legs -----------------------------------------------------------------------
    def pending_legs(self) -> int:
        return sum(len(log) - nxt for log, nxt in zip(self.leg_log, self.leg_next, strict=True))

    def deliver(self, partition: int) -> Outcomes | None:
        """Apply the next unread leg of a legs partition, if any."""
        offset = self.leg_next[partition]
        if offset >= len(self.leg_log[partition]):
            return None
        self.leg_next[partition] += 1
        return self.apply_leg_at(partition, offset)

    def apply_leg_at(self, partition: int, offset: int) -> Outcomes:
        leg = self.leg_log[partition][offset]
        account = leg["account_id"]
        state, outcomes = apply_leg(
            self.states.get(account), leg, self.context, Position(LEGS_TOPIC, partition, offset)
        )
        self.states[account] = state
        self._record(outcomes)
        return outcomes

    def settle(self, limit: int = 10_000) -> None:
        """Deliver every pending leg (and the legs they produce)."""
        for _ in range(limit):
            for partition in range(self.partitions):
                if self.deliver(partition) is not None:
                    break
            else:
                return
        raise AssertionError("legs keep producing legs")

    def run(self, request: Request, fraud: FraudAssessment = NO_FRAUD) -> Outcomes:
        """Send a request and settle its legs; all outcomes together."""
        before = len(self.emitted)
        self.send(request, fraud)
        self.settle()
        total = Outcomes()
        for outcomes in self.emitted[before:]:
            total.extend(outcomes)
        return total

    def clone(self) -> World:
        """An independent copy (states through their serialized form, as a restart would)."""
        twin = World(self.context, self.partitions)
        for account, state in self.states.items():
            restored = AccountState.from_bytes(state.to_bytes())
            assert restored == state, f"{account}: state does not survive serialization"
            twin.states[account] = restored
        twin.request_log = [list(log) for log in self.request_log]
        twin.leg_log = [list(log) for log in self.leg_log]
        twin.leg_next = list(self.leg_next)
        twin.ledger = Ledger(dict(self.ledger.transactions))
        twin.decisions = dict(self.decisions)
        twin.mismatches = list(self.mismatches)
        twin.notifications = dict(self.notifications)
        twin.notification_mismatches = list(self.notification_mismatches)
        return twin

    # -- views ----------------------------------------------------------------------
    def available(self, account: str, currency: str = "EUR") -> int:
        balance = self.state(account).balances.get(currency)
        return balance.available_minor if balance else 0

    def held(self, account: str, currency: str = "EUR") -> int:
        balance = self.state(account).balances.get(currency)
        return balance.held_minor if balance else 0

    def total(self, account: str, currency: str = "EUR") -> int:
        return self.available(account, currency) + self.held(account, currency)
