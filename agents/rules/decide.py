"""Deciding payment requests and applying legs: the whole of the money rules.

``decide`` runs on the payer's partition for every request; ``apply_leg`` runs on
the partition of the account a leg names (the payee's credit, a refund's debit
of the payee, and the refund's result back on the payer). Both mutate and return
the ``AccountState`` they are given together with what happened (``Outcomes``);
neither does I/O.

Effects are idempotent by construction:
- a request's outcomes are stored in its idempotency record, and a redelivery of
  the same request_id re-emits them verbatim (identical decision, same ids);
- every output id is derived from the request id and its role;
- a leg carries the position of the request that produced it, and an account
  applies a leg only when that position is past the last one it applied from the
  same source partition; a refund's result is applied once per refund request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from agents.rules.fx import (
    FxQuote,
    convert_minor,
    effective_rate,
    effective_rate_exact,
    pair_key,
    pro_rata_minor,
)
from agents.rules.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS
from agents.rules.records import (
    Decision,
    DecisionStatus,
    Direction,
    Entry,
    Leg,
    Notification,
    Request,
    Transaction,
)
from agents.rules.state import AccountState, IdempotencyRecord, PaymentRecord

# Decline codes (in the style of the big processors).
INSUFFICIENT_FUNDS = "insufficient_funds"
INVALID_AMOUNT = "invalid_amount"
INVALID_REQUEST = "invalid_request"
CURRENCY_NOT_SUPPORTED = "currency_not_supported"
ACCOUNT_CLOSED = "account_closed"
ORIGINAL_NOT_FOUND = "original_not_found"
CAPTURE_EXCEEDS_AUTHORIZATION = "capture_exceeds_authorization"
REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
AUTHORIZATION_EXPIRED = "authorization_expired"
ALREADY_CAPTURED = "already_captured"
ALREADY_VOIDED = "already_voided"
FX_RATE_UNAVAILABLE = "fx_rate_unavailable"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
REQUEST_EXPIRED = "request_expired"
TOO_MANY_REQUESTS = "too_many_requests"
FRAUDULENT = "fraudulent"

DECLINE_CODES = (
    INSUFFICIENT_FUNDS,
    INVALID_AMOUNT,
    INVALID_REQUEST,
    CURRENCY_NOT_SUPPORTED,
    ACCOUNT_CLOSED,
    ORIGINAL_NOT_FOUND,
    CAPTURE_EXCEEDS_AUTHORIZATION,
    REFUND_EXCEEDS_PAYMENT,
    AUTHORIZATION_EXPIRED,
    ALREADY_CAPTURED,
    ALREADY_VOIDED,
    FX_RATE_UNAVAILABLE,
    IDEMPOTENCY_CONFLICT,
    REQUEST_EXPIRED,
    TOO_MANY_REQUESTS,
    FRAUDULENT,
)

# Ledger account naming: customer accounts are the ids producers use; the house's
# accounts carry a reserved prefix that producers may not use.
EXTERNAL_PREFIX = "external:"
CLEARING_PREFIX = "fx-clearing:"
RESERVED_PREFIXES = (EXTERNAL_PREFIX, CLEARING_PREFIX)
DEFAULT_FUNDING_ACCOUNT = "funding"
DEFAULT_PAYOUT_ACCOUNT = "payout"


def clearing_account(currency: str) -> str:
    return f"{CLEARING_PREFIX}{currency}"


def external_account(reference: str | None, default: str) -> str:
    return f"{EXTERNAL_PREFIX}{reference or default}"


def is_customer_account(account_id: str) -> bool:
    return not account_id.startswith(RESERVED_PREFIXES)


@dataclass(frozen=True, slots=True)
class FraudAssessment:
    """The fraud seam: what scoring said about a request before the rules decide."""

    score: float = 0.0
    model_version: str | None = None
    action: Literal["APPROVE", "REVIEW", "DECLINE"] = "APPROVE"
    reasons: tuple[str, ...] = ()


NO_FRAUD = FraudAssessment()


@dataclass(frozen=True, slots=True)
class Policy:
    """Configuration the rules need (from Settings), in milliseconds of the request clock."""

    currencies: frozenset[str]
    fx_rate_max_age_ms: int = 3600 * 1000
    idempotency_window_ms: int = 7 * 24 * 3600 * 1000
    hold_default_ms: int = 7 * 24 * 3600 * 1000
    refund_window_ms: int = 180 * 24 * 3600 * 1000
    idempotency_keys_max: int = 100_000


@dataclass(frozen=True, slots=True)
class Context:
    """Per-batch inputs: policy, the FX rates known now, and the wall clock for decided_at."""

    policy: Policy
    fx_rates: Mapping[str, FxQuote]
    now_ms: int
    # "topic:partition" -> offset below which every message's outputs are durable (the
    # first offset of the batch being processed: the previous batch was flushed first).
    flushed_below: Mapping[str, int] = field(default_factory=dict)


class Position(NamedTuple):
    """Where a message was read: legs carry their request's position for dedupe."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Outcomes:
    decisions: list[Decision] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "transactions": self.transactions,
            "legs": self.legs,
            "notifications": self.notifications,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcomes:
        return cls(
            list(data["decisions"]),
            list(data["transactions"]),
            list(data["legs"]),
            list(data["notifications"]),
        )

    def extend(self, other: Outcomes) -> None:
        self.decisions.extend(other.decisions)
        self.transactions.extend(other.transactions)
        self.legs.extend(other.legs)
        self.notifications.extend(other.notifications)


class _Settlement(NamedTuple):
    """How a request amount is funded on the payer's balance."""

    currency: str
    amount_minor: int
    fx_rate: str | None
    spread_bps: int | None


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


def decide(
    state: AccountState | None,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment = NO_FRAUD,
) -> tuple[AccountState, Outcomes]:
    """Decide one request on its payer's state. Never raises for bad input: it declines."""
    if state is None:
        state = AccountState(account_id=request["account_id"])
    if request["created_at_ms"] > state.clock_ms:
        state.clock_ms = request["created_at_ms"]
    out = Outcomes()
    _housekeep(state, context, out)
    _forget_flushed(state, context)

    key = request["idempotency_key"] or request["request_id"]
    fingerprint = request_fingerprint(request)
    record = state.idempotency.get(key)
    if record is not None:
        out.extend(_repeat(record, request, fingerprint, state))
        return state, out
    # The two declines below are not stored: they are stamped with the request's own
    # time (not the wall clock) so that a redelivery derives the identical decision.
    if request["created_at_ms"] <= state.clock_ms - context.policy.idempotency_window_ms:
        # Its idempotency record may already be pruned (_housekeep prunes records created
        # at or before this horizon): applying it could move money twice.
        out.decisions.append(
            _decision(request, "DECLINED", REQUEST_EXPIRED, request["created_at_ms"])
        )
        return state, out
    if len(state.idempotency) >= context.policy.idempotency_keys_max:
        out.decisions.append(
            _decision(request, "DECLINED", TOO_MANY_REQUESTS, request["created_at_ms"])
        )
        return state, out

    result = _apply_request(state, request, context, position, fraud)
    for decision in result.decisions:
        if decision["status"] == "DECLINED":
            result.notifications.append(_declined_notification(request, decision))
    state.idempotency[key] = IdempotencyRecord(
        fingerprint, request["request_id"], request["created_at_ms"], result.to_dict()
    )
    _remember_unflushed(state, key, position)
    _note_expiry(state, request["created_at_ms"] + context.policy.idempotency_window_ms)
    out.extend(result)
    return state, out


def request_fingerprint(request: Request) -> str:
    """What makes two requests "the same payload": everything but ids, clock and metadata."""
    material = "\x1f".join(
        str(request[name])
        for name in (
            "kind",
            "account_id",
            "counterparty_id",
            "payment_id",
            "amount_minor",
            "currency",
            "expires_at_ms",
        )
    )
    return hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


def _repeat(
    record: IdempotencyRecord, request: Request, fingerprint: str, state: AccountState
) -> Outcomes:
    """A key seen before: the same message again, a retry, or a conflicting reuse."""
    if record.request_id == request["request_id"]:
        # Redelivery or replay of the very same request: re-emit what it produced.
        return Outcomes.from_dict(record.outcomes)
    # A retry or conflicting reuse is answered from this record, so keep the record for a
    # window after the latest such request too: were it pruned earlier, a redelivery of
    # that request would be applied as new (moving money twice, or approving a request
    # already declined as a conflict). Pruning is lazy; _housekeep finds the new deadline.
    record.created_at_ms = max(record.created_at_ms, request["created_at_ms"])
    if record.fingerprint != fingerprint:
        # Derived, not stored: decided_at is the request's own time so redeliveries match.
        decision = _decision(request, "DECLINED", IDEMPOTENCY_CONFLICT, request["created_at_ms"])
        decision["reasons"] = [f"key used by {record.request_id} with another payload"]
        return Outcomes(decisions=[decision])
    original = record.outcomes["decisions"]
    if not original:
        # The original is still pending (a refund waiting for its payee).
        waiting = (request["request_id"], request["created_at_ms"])
        if waiting not in record.waiting:
            record.waiting.append(waiting)
        return Outcomes()
    return Outcomes(
        decisions=[
            _duplicate_decision(original[0], request["request_id"], request["created_at_ms"])
        ]
    )


def _duplicate_decision(original: Decision, request_id: str, created_at_ms: int) -> Decision:
    copy: Decision = dict(original)  # type: ignore[assignment]
    copy["request_id"] = request_id
    copy["duplicate_of"] = original["request_id"]
    copy["created_at_ms"] = created_at_ms
    return copy


def _apply_request(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    code = _validate(request, context.policy)
    if code is not None:
        return _declined(request, context, code[0], code[1])
    if state.status == "CLOSED":
        return _declined(request, context, ACCOUNT_CLOSED)
    handler = _HANDLERS[request["kind"]]
    return handler(state, request, context, position, fraud)


def _validate(request: Request, policy: Policy) -> tuple[str, str] | None:
    """Shape checks every kind shares; returns (code, reason) or None."""
    kind = request["kind"]
    amount = request["amount_minor"]
    currency = request["currency"]
    if not request["account_id"] or not is_customer_account(request["account_id"]):
        return INVALID_REQUEST, f"account_id {request['account_id']!r} is empty or reserved"
    if currency not in CURRENCY_EXPONENTS or currency not in policy.currencies:
        return CURRENCY_NOT_SUPPORTED, f"currency {currency!r} is not supported"
    if kind in ("CAPTURE", "VOID"):
        if amount < 0:
            return INVALID_AMOUNT, f"amount_minor {amount} is negative"
    elif amount <= 0:
        return INVALID_AMOUNT, f"amount_minor {amount} must be positive"
    if amount > AMOUNT_MINOR_MAX:
        return INVALID_AMOUNT, f"amount_minor {amount} exceeds the largest amount"
    if kind in ("PAYMENT", "AUTHORIZE"):
        payee = request["counterparty_id"]
        if not payee or not is_customer_account(payee):
            return INVALID_REQUEST, f"payee {payee!r} is missing or reserved"
        if payee == request["account_id"]:
            return INVALID_REQUEST, "payer and payee are the same account"
    if kind in ("CAPTURE", "VOID", "REFUND") and not request["payment_id"]:
        return INVALID_REQUEST, f"{kind} needs payment_id"
    return None


def _settle(
    state: AccountState, amount_minor: int, currency: str, context: Context
) -> _Settlement | str:
    """Fund ``amount_minor currency`` from the payer: directly, or converted from its home currency.

    The payer "holds" a currency when it has a non-zero balance in it or it is its
    home currency (the currency of its first top-up). Otherwise the amount is
    converted at the latest rate, rounded up (see agents/rules/fx.py).
    """
    held = state.balances.get(currency)
    if currency == state.home_currency or (held is not None and held.total_minor > 0):
        return _Settlement(currency, amount_minor, None, None)
    home = state.home_currency
    if home is None:
        return INSUFFICIENT_FUNDS
    direct = context.fx_rates.get(pair_key(currency, home))
    quote = direct if direct is not None else context.fx_rates.get(pair_key(home, currency))
    if (
        quote is None
        or not _usable_quote(quote)
        or state.clock_ms - quote.as_of_ms > context.policy.fx_rate_max_age_ms
    ):
        return FX_RATE_UNAVAILABLE
    inverted = direct is None
    exact = effective_rate_exact(quote, inverted=inverted)
    settled = convert_minor(amount_minor, currency, home, exact, round_up=True)
    if settled > AMOUNT_MINOR_MAX:
        return INVALID_AMOUNT
    shown = effective_rate(quote.inverse() if inverted else quote)
    return _Settlement(home, settled, _rate_text(shown), quote.spread_bps)


def _usable_quote(quote: FxQuote) -> bool:
    """A rate from fx.rates is data, not trusted code: zero, negative or NaN is unusable."""
    return quote.rate.is_finite() and quote.rate > 0 and quote.spread_bps >= 0


def _rate_text(rate: Any) -> str:
    return format(rate.normalize(), "f")


def _fund(
    state: AccountState, request: Request, context: Context, fraud: FraudAssessment
) -> _Settlement | Outcomes:
    """How the payer pays for a request that spends money, or the decline saying why not."""
    if fraud.action == "DECLINE":
        # _decision_for already lists the fraud reasons.
        return _declined(request, context, FRAUDULENT, fraud=fraud)
    settlement = _settle(state, request["amount_minor"], request["currency"], context)
    if isinstance(settlement, str):
        return _declined(request, context, settlement, fraud=fraud)
    if not _can_spend(state, settlement):
        decline = _decline(request, context, INSUFFICIENT_FUNDS, fraud=fraud, settlement=settlement)
        return Outcomes(decisions=[decline])
    return settlement


def _can_spend(state: AccountState, settlement: _Settlement) -> bool:
    balance = state.balances.get(settlement.currency)
    available = balance.available_minor if balance is not None else 0
    return available + state.overdraft_minor.get(settlement.currency, 0) >= settlement.amount_minor


def _topup(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    currency, amount = request["currency"], request["amount_minor"]
    balance = state.balance(currency)
    if balance.total_minor + amount > AMOUNT_MINOR_MAX:
        return _declined(
            request, context, INVALID_AMOUNT, "balance would exceed the largest amount"
        )
    balance.available_minor += amount
    if state.home_currency is None:
        state.home_currency = currency
    txid = f"{request['request_id']}:topup"
    source = external_account(request["counterparty_id"], DEFAULT_FUNDING_ACCOUNT)
    return Outcomes(
        decisions=[_approve(request, context, fraud, payment_id=request["request_id"])],
        transactions=[
            _transaction(
                txid,
                request,
                "topup",
                _transfer(txid, source, currency, amount, state.account_id, currency, amount, None),
            )
        ],
        notifications=[_notify(request, "topup.succeeded", state.account_id, amount, currency)],
    )


def _payment(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    """PAYMENT moves money now; AUTHORIZE (and a PAYMENT sent to review) holds it."""
    kind = request["kind"]
    if request["request_id"] in state.payments:
        # The request id is the payment id: reusing it under another idempotency key
        # would overwrite the record (orphaning its hold) and reuse its transaction ids.
        reason = f"request_id {request['request_id']!r} already names a payment"
        return _declined(request, context, INVALID_REQUEST, reason)
    settlement = _fund(state, request, context, fraud)
    if isinstance(settlement, Outcomes):
        return settlement
    hold = kind == "AUTHORIZE" or fraud.action == "REVIEW"
    expires_at = None
    if hold:
        expires_at = request["expires_at_ms"]
        if expires_at is None:  # not `or`: 0 is a time (long past), not "no expiry given"
            expires_at = request["created_at_ms"] + context.policy.hold_default_ms
        if expires_at <= state.clock_ms:
            return _declined(request, context, INVALID_REQUEST, "expires_at_ms is in the past")
    payment_id = request["request_id"]
    payee = request["counterparty_id"]
    assert payee is not None  # _validate checked it
    record = PaymentRecord(
        payment_id=payment_id,
        kind="AUTHORIZE" if kind == "AUTHORIZE" else "PAYMENT",
        payee_id=payee,
        currency=request["currency"],
        amount_minor=request["amount_minor"],
        settled_currency=settlement.currency,
        settled_amount_minor=settlement.amount_minor,
        fx_rate=settlement.fx_rate,
        status="AUTHORIZED",
        created_at_ms=request["created_at_ms"],
        expires_at_ms=expires_at,
    )
    balance = state.balance(settlement.currency)
    balance.available_minor -= settlement.amount_minor
    state.payments[payment_id] = record
    if hold:
        balance.held_minor += settlement.amount_minor
        record.status = "REVIEW" if fraud.action == "REVIEW" else "AUTHORIZED"
        assert expires_at is not None
        _note_expiry(state, expires_at)
        status: DecisionStatus = "REVIEW" if fraud.action == "REVIEW" else "APPROVED"
        decision = _decision_for(request, context, status, fraud, payment_id, settlement)
        event = "payment.review" if status == "REVIEW" else "authorization.held"
        return Outcomes(
            decisions=[decision],
            notifications=[
                _notify(
                    request, event, state.account_id, request["amount_minor"], request["currency"]
                )
            ],
        )
    record.status = "CAPTURED"
    record.captured_minor = request["amount_minor"]
    record.settled_captured_minor = settlement.amount_minor
    _note_expiry(state, request["created_at_ms"] + context.policy.refund_window_ms)
    return _money_moved(
        state,
        request,
        context,
        record,
        request["amount_minor"],
        settlement.amount_minor,
        position,
        fraud,
        "payment.succeeded",
        settlement.spread_bps,
    )


def _money_moved(
    state: AccountState,
    request: Request,
    context: Context,
    record: PaymentRecord,
    amount_minor: int,
    settled_minor: int,
    position: Position,
    fraud: FraudAssessment,
    event: str,
    spread_bps: int | None = None,
) -> Outcomes:
    """Postings, the payee's credit leg, the decision and the payer's notification of a transfer."""
    kind = "payment" if request["kind"] == "PAYMENT" else "capture"
    txid = f"{request['request_id']}:{kind}"
    entries = _transfer(
        txid,
        state.account_id,
        record.settled_currency,
        settled_minor,
        record.payee_id,
        record.currency,
        amount_minor,
        record.fx_rate,
    )
    settlement = _Settlement(record.settled_currency, settled_minor, record.fx_rate, spread_bps)
    return Outcomes(
        decisions=[
            _decision_for(request, context, "APPROVED", fraud, record.payment_id, settlement)
        ],
        transactions=[_transaction(txid, request, kind, entries, record.payment_id)],
        legs=[
            _leg(
                f"{request['request_id']}:credit",
                "CREDIT",
                record.payee_id,
                state.account_id,
                request,
                record.payment_id,
                amount_minor,
                record.currency,
                position,
            )
        ],
        notifications=[
            _notify(
                request, event, state.account_id, amount_minor, record.currency, record.payment_id
            )
        ],
    )


def _open_authorization(
    state: AccountState, request: Request, context: Context
) -> PaymentRecord | Outcomes:
    """The authorization a CAPTURE or VOID names, or the decline that says why not."""
    payment_id = request["payment_id"]
    assert payment_id is not None
    record = state.payments.get(payment_id)
    if record is None:
        return Outcomes(
            decisions=[_decline(request, context, ORIGINAL_NOT_FOUND, f"no payment {payment_id}")]
        )
    if record.status == "EXPIRED":
        return _declined(request, context, AUTHORIZATION_EXPIRED)
    if record.status == "CAPTURED":
        return _declined(request, context, ALREADY_CAPTURED)
    if record.status == "VOIDED":
        return _declined(request, context, ALREADY_VOIDED)
    if request["kind"] == "CAPTURE" and request["currency"] != record.currency:
        return _declined(
            request, context, INVALID_REQUEST, f"authorization is in {record.currency}"
        )
    return record


def _capture(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    found = _open_authorization(state, request, context)
    if isinstance(found, Outcomes):
        return found
    record = found
    amount = request["amount_minor"] or record.amount_minor
    if amount > record.amount_minor:
        return _declined(
            request,
            context,
            CAPTURE_EXCEEDS_AUTHORIZATION,
            f"authorized {record.amount_minor}",
        )
    settled = pro_rata_minor(
        record.settled_amount_minor, amount, record.amount_minor, round_up=True
    )
    balance = state.balance(record.settled_currency)
    balance.held_minor -= record.settled_amount_minor
    balance.available_minor += record.settled_amount_minor - settled
    record.status = "CAPTURED"
    record.captured_minor = amount
    record.settled_captured_minor = settled
    _note_expiry(state, record.created_at_ms + context.policy.refund_window_ms)
    return _money_moved(
        state, request, context, record, amount, settled, position, fraud, "payment.captured"
    )


def _void(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    found = _open_authorization(state, request, context)
    if isinstance(found, Outcomes):
        return found
    record = found
    _release(state, record, "VOIDED")
    return Outcomes(
        decisions=[_approve(request, context, fraud, payment_id=record.payment_id)],
        notifications=[
            _notify(
                request,
                "authorization.voided",
                state.account_id,
                record.amount_minor,
                record.currency,
                record.payment_id,
            )
        ],
    )


def _release(
    state: AccountState, record: PaymentRecord, status: Literal["VOIDED", "EXPIRED"]
) -> None:
    balance = state.balance(record.settled_currency)
    balance.held_minor -= record.settled_amount_minor
    balance.available_minor += record.settled_amount_minor
    record.status = status


def _refund(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    """Reserve the refund on the payment and ask the payee's partition to return the money.

    The decision comes back with the REFUND_RESULT leg: the payee's balance lives on
    another partition and must never go below zero.
    """
    payment_id = request["payment_id"]
    assert payment_id is not None
    record = state.payments.get(payment_id)
    if record is None:
        return Outcomes(
            decisions=[_decline(request, context, ORIGINAL_NOT_FOUND, f"no payment {payment_id}")]
        )
    if record.status != "CAPTURED":
        return _declined(
            request, context, INVALID_REQUEST, f"payment is {record.status}, not captured"
        )
    if request["currency"] != record.currency:
        return _declined(request, context, INVALID_REQUEST, f"payment is in {record.currency}")
    refundable = record.captured_minor - record.refunded_minor - record.refund_pending_minor
    if request["amount_minor"] > refundable:
        return _declined(request, context, REFUND_EXCEEDS_PAYMENT, f"refundable {refundable}")
    record.refund_pending_minor += request["amount_minor"]
    record.refund_keys[request["request_id"]] = request["idempotency_key"] or request["request_id"]
    leg = _leg(
        f"{request['request_id']}:refund-debit",
        "REFUND_DEBIT",
        record.payee_id,
        state.account_id,
        request,
        payment_id,
        request["amount_minor"],
        record.currency,
        position,
    )
    return Outcomes(legs=[leg])


def _payout(
    state: AccountState,
    request: Request,
    context: Context,
    position: Position,
    fraud: FraudAssessment,
) -> Outcomes:
    settlement = _fund(state, request, context, fraud)
    if isinstance(settlement, Outcomes):
        return settlement
    state.balance(settlement.currency).available_minor -= settlement.amount_minor
    txid = f"{request['request_id']}:payout"
    target = external_account(request["counterparty_id"], DEFAULT_PAYOUT_ACCOUNT)
    entries = _transfer(
        txid,
        state.account_id,
        settlement.currency,
        settlement.amount_minor,
        target,
        request["currency"],
        request["amount_minor"],
        settlement.fx_rate,
    )
    return Outcomes(
        decisions=[
            _decision_for(request, context, "APPROVED", fraud, request["request_id"], settlement)
        ],
        transactions=[_transaction(txid, request, "payout", entries)],
        notifications=[
            _notify(
                request,
                "payout.succeeded",
                state.account_id,
                request["amount_minor"],
                request["currency"],
            )
        ],
    )


_HANDLERS = {
    "TOPUP": _topup,
    "PAYMENT": _payment,
    "AUTHORIZE": _payment,
    "CAPTURE": _capture,
    "VOID": _void,
    "REFUND": _refund,
    "PAYOUT": _payout,
}


# --------------------------------------------------------------------------------------
# Legs
# --------------------------------------------------------------------------------------


def apply_leg(
    state: AccountState | None, leg: Leg, context: Context, position: Position
) -> tuple[AccountState, Outcomes]:
    """Apply an internal leg to the account it names (``leg['account_id']``)."""
    if state is None:
        state = AccountState(account_id=leg["account_id"])
    if leg["created_at_ms"] > state.clock_ms:
        state.clock_ms = leg["created_at_ms"]
    out = Outcomes()
    _housekeep(state, context, out)
    _forget_flushed(state, context)
    if leg["kind"] == "REFUND_RESULT":
        out.extend(_refund_result(state, leg, context, position))
        return state, out
    source = f"{leg['source_topic']}:{leg['source_partition']}"
    if leg["source_offset"] <= state.positions.get(source, -1):
        return state, _leg_replay(state, leg, position)
    state.positions[source] = leg["source_offset"]
    if leg["kind"] == "CREDIT":
        state.balance(leg["currency"]).available_minor += leg["amount_minor"]
        out.notifications.append(_leg_notification(leg, "payment.received"))
        return state, out
    # REFUND_DEBIT: the payee returns money if it has it; the answer goes back to the payer.
    balance = state.balance(leg["currency"])
    approved = (
        balance.available_minor + state.overdraft_minor.get(leg["currency"], 0)
        >= leg["amount_minor"]
    )
    if approved:
        balance.available_minor -= leg["amount_minor"]
        out.notifications.append(_leg_notification(leg, "refund.sent"))
    state.refund_results[leg["leg_id"]] = (approved, position.offset, leg["created_at_ms"])
    _note_expiry(state, leg["created_at_ms"] + context.policy.idempotency_window_ms)
    out.legs.append(_refund_result_leg(leg, approved, position))
    return state, out


def _leg_replay(state: AccountState, leg: Leg, position: Position) -> Outcomes:
    """A leg this account already applied: re-emit what applying it produced."""
    if leg["kind"] == "CREDIT":
        return Outcomes(notifications=[_leg_notification(leg, "payment.received")])
    result = state.refund_results.get(leg["leg_id"])
    if result is None:  # pruned long ago: nothing can still be waiting for it
        return Outcomes()
    approved, offset, _ = result
    out = Outcomes(legs=[_refund_result_leg(leg, approved, position._replace(offset=offset))])
    if approved:
        out.notifications.append(_leg_notification(leg, "refund.sent"))
    return out


def _refund_result_leg(debit: Leg, approved: bool, position: Position) -> Leg:
    return {
        "leg_id": f"{debit['request_id']}:refund-result",
        "kind": "REFUND_RESULT",
        "account_id": debit["counterparty_id"],
        "counterparty_id": debit["account_id"],
        "request_id": debit["request_id"],
        "payment_id": debit["payment_id"],
        "amount_minor": debit["amount_minor"],
        "currency": debit["currency"],
        "approved": approved,
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
        "created_at_ms": debit["created_at_ms"],
    }


def _refund_result(state: AccountState, leg: Leg, context: Context, position: Position) -> Outcomes:
    """Finish a refund on the payer: credit it back (or release the reservation) and decide."""
    payment_id = leg["payment_id"]
    record = state.payments.get(payment_id) if payment_id else None
    key = record.refund_keys.get(leg["request_id"]) if record is not None else None
    idem = state.idempotency.get(key) if key is not None else None
    if record is None or key is None or idem is None:
        return Outcomes()  # applied and pruned long ago
    if idem.outcomes["decisions"]:
        return Outcomes.from_dict(idem.outcomes)  # applied already: re-emit
    request = _request_of_refund(state, leg, key)
    amount = leg["amount_minor"]
    record.refund_pending_minor -= amount
    out = Outcomes()
    if not leg["approved"]:
        decision = _decline(
            request, context, INSUFFICIENT_FUNDS, "payee balance cannot cover the refund"
        )
        out.decisions.append(decision)
        out.notifications.append(
            _notify(
                request,
                "refund.failed",
                state.account_id,
                amount,
                leg["currency"],
                payment_id,
                INSUFFICIENT_FUNDS,
            )
        )
    else:
        record.refunded_minor += amount
        if record.refunded_minor == record.captured_minor:
            credited = record.settled_captured_minor - record.settled_refunded_minor
        else:
            credited = pro_rata_minor(
                record.settled_captured_minor, amount, record.captured_minor, round_up=False
            )
        record.settled_refunded_minor += credited
        state.balance(record.settled_currency).available_minor += credited
        txid = f"{leg['request_id']}:refund"
        entries = _transfer(
            txid,
            record.payee_id,
            record.currency,
            amount,
            state.account_id,
            record.settled_currency,
            credited,
            record.fx_rate,
        )
        settlement = _Settlement(record.settled_currency, credited, record.fx_rate, None)
        out.decisions.append(
            _decision_for(request, context, "APPROVED", NO_FRAUD, payment_id, settlement)
        )
        out.transactions.append(_transaction(txid, request, "refund", entries, payment_id))
        out.notifications.append(
            _notify(
                request, "refund.succeeded", state.account_id, amount, leg["currency"], payment_id
            )
        )
    original = out.decisions[0]
    for request_id, created_at_ms in idem.waiting:
        out.decisions.append(_duplicate_decision(original, request_id, created_at_ms))
    idem.outcomes = out.to_dict()
    _remember_unflushed(state, key, position)
    return out


def _remember_unflushed(state: AccountState, key: str, position: Position) -> None:
    """Full outcomes of ``key`` are kept until the batch that produced them is flushed."""
    state.unflushed[key] = (position.topic, position.partition, position.offset)


def _forget_flushed(state: AccountState, context: Context) -> None:
    """Drop stored outputs that are durable: only the decisions are needed after that.

    Outputs are stored for one reason: a crash between the state write and the
    flush of the outputs. Once a later batch of the same source partition runs,
    that flush has happened, so keeping them would only grow every account value.
    """
    if not state.unflushed or not context.flushed_below:
        return
    for key in list(state.unflushed):
        topic, partition, offset = state.unflushed[key]
        below = context.flushed_below.get(f"{topic}:{partition}")
        if below is None or offset >= below:
            continue
        del state.unflushed[key]
        idem = state.idempotency.get(key)
        if idem is not None:
            idem.outcomes = {
                "decisions": idem.outcomes["decisions"],
                "transactions": [],
                "legs": [],
                "notifications": [],
            }


def _request_of_refund(state: AccountState, leg: Leg, key: str) -> Request:
    """Rebuild the refund request's decision-relevant fields from its leg."""
    return {
        "request_id": leg["request_id"],
        "idempotency_key": key,
        "kind": "REFUND",
        "account_id": state.account_id,
        "counterparty_id": None,
        "payment_id": leg["payment_id"],
        "amount_minor": leg["amount_minor"],
        "currency": leg["currency"],
        "created_at_ms": leg["created_at_ms"],
        "expires_at_ms": None,
        "device_id": None,
        "country": None,
        "merchant_category": None,
        "metadata": {},
    }


def _declined_notification(request: Request, decision: Decision) -> Notification:
    event = f"{request['kind'].lower()}.declined"
    return _notify(
        request,
        event,
        request["account_id"],
        request["amount_minor"],
        request["currency"],
        request["payment_id"],
        decision["decline_code"],
    )


def _leg_notification(leg: Leg, event: str) -> Notification:
    return {
        "notification_id": f"{leg['request_id']}:{event}:{leg['account_id']}",
        "event_type": event,
        "account_id": leg["account_id"],
        "request_id": leg["request_id"],
        "payment_id": leg["payment_id"],
        "amount_minor": leg["amount_minor"],
        "currency": leg["currency"],
        "decline_code": None,
        "created_at_ms": leg["created_at_ms"],
    }


# --------------------------------------------------------------------------------------
# Housekeeping: holds expire, records age out -- lazily, by the request clock
# --------------------------------------------------------------------------------------


def _note_expiry(state: AccountState, at_ms: int) -> None:
    if state.next_expiry_ms is None or at_ms < state.next_expiry_ms:
        state.next_expiry_ms = at_ms


def _housekeep(state: AccountState, context: Context, out: Outcomes) -> None:
    """Release expired holds and prune aged records once the clock passes the next deadline."""
    if state.next_expiry_ms is None or state.clock_ms < state.next_expiry_ms:
        return
    clock, policy = state.clock_ms, context.policy
    deadlines: list[int] = []
    for payment_id in list(state.payments):
        record = state.payments[payment_id]
        if record.status in ("AUTHORIZED", "REVIEW"):
            assert record.expires_at_ms is not None
            if record.expires_at_ms <= clock:
                _release(state, record, "EXPIRED")
                out.notifications.append(
                    {
                        "notification_id": f"{payment_id}:authorization.expired:{state.account_id}",
                        "event_type": "authorization.expired",
                        "account_id": state.account_id,
                        "request_id": payment_id,
                        "payment_id": payment_id,
                        "amount_minor": record.amount_minor,
                        "currency": record.currency,
                        "decline_code": None,
                        "created_at_ms": record.expires_at_ms,
                    }
                )
                deadlines.append(record.created_at_ms + policy.idempotency_window_ms)
            else:
                deadlines.append(record.expires_at_ms)
            continue
        keep_until = record.created_at_ms + (
            policy.refund_window_ms if record.status == "CAPTURED" else policy.idempotency_window_ms
        )
        if keep_until <= clock and record.refund_pending_minor == 0:
            del state.payments[payment_id]
        else:
            deadlines.append(keep_until)
    horizon = clock - policy.idempotency_window_ms
    for key in list(state.idempotency):
        idem = state.idempotency[key]
        if idem.created_at_ms <= horizon and idem.outcomes["decisions"]:
            del state.idempotency[key]
            state.unflushed.pop(key, None)
        else:
            deadlines.append(idem.created_at_ms + policy.idempotency_window_ms)
    for leg_id in list(state.refund_results):
        created = state.refund_results[leg_id][2]
        if created <= horizon:
            del state.refund_results[leg_id]
        else:
            deadlines.append(created + policy.idempotency_window_ms)
    state.next_expiry_ms = min(deadlines) if deadlines else None


# --------------------------------------------------------------------------------------
# Builders of outputs
# --------------------------------------------------------------------------------------


def _decision(
    request: Request, status: DecisionStatus, code: str | None, decided_at_ms: int
) -> Decision:
    return {
        "request_id": request["request_id"],
        "idempotency_key": request["idempotency_key"] or request["request_id"],
        "kind": request["kind"],
        "account_id": request["account_id"],
        "payment_id": request["payment_id"],
        "status": status,
        "decline_code": code,
        "amount_minor": request["amount_minor"],
        "currency": request["currency"],
        "settled_amount_minor": None,
        "settled_currency": None,
        "fx_rate": None,
        "fx_spread_bps": None,
        "fraud_score": 0.0,
        "model_version": None,
        "reasons": [],
        "duplicate_of": None,
        "created_at_ms": request["created_at_ms"],
        "decided_at_ms": decided_at_ms,
    }


def _declined(
    request: Request,
    context: Context,
    code: str,
    *reasons: str,
    fraud: FraudAssessment = NO_FRAUD,
    settlement: _Settlement | None = None,
) -> Outcomes:
    """Outcomes of a declined request: its decision and nothing else."""
    return Outcomes(
        decisions=[_decline(request, context, code, *reasons, fraud=fraud, settlement=settlement)]
    )


def _decline(
    request: Request,
    context: Context,
    code: str,
    *reasons: str,
    fraud: FraudAssessment = NO_FRAUD,
    settlement: _Settlement | None = None,
) -> Decision:
    decision = _decision_for(request, context, "DECLINED", fraud, request["payment_id"], settlement)
    decision["decline_code"] = code
    decision["reasons"] = list(reasons) + decision["reasons"]
    return decision


def _approve(
    request: Request, context: Context, fraud: FraudAssessment, *, payment_id: str | None
) -> Decision:
    return _decision_for(request, context, "APPROVED", fraud, payment_id, None)


def _decision_for(
    request: Request,
    context: Context,
    status: DecisionStatus,
    fraud: FraudAssessment,
    payment_id: str | None,
    settlement: _Settlement | None,
) -> Decision:
    decision = _decision(request, status, None, context.now_ms)
    decision["payment_id"] = payment_id
    decision["fraud_score"] = fraud.score
    decision["model_version"] = fraud.model_version
    if fraud.action != "APPROVE":
        decision["reasons"] = list(fraud.reasons)
    if settlement is not None and settlement.currency != request["currency"]:
        decision["settled_amount_minor"] = settlement.amount_minor
        decision["settled_currency"] = settlement.currency
        decision["fx_rate"] = settlement.fx_rate
        decision["fx_spread_bps"] = settlement.spread_bps
    return decision


def _entry(
    entry_id: str, account: str, direction: Direction, amount: int, currency: str, rate: str | None
) -> Entry:
    return {
        "entry_id": entry_id,
        "account_id": account,
        "direction": direction,
        "amount_minor": amount,
        "currency": currency,
        "fx_rate": rate,
    }


def _transfer(
    txid: str,
    debit_account: str,
    debit_currency: str,
    debit_minor: int,
    credit_account: str,
    credit_currency: str,
    credit_minor: int,
    rate: str | None,
) -> list[Entry]:
    """Postings moving money between two accounts, through FX clearing when currencies differ.

    Debits and credits balance per currency: the clearing account of each currency
    takes the other side of the conversion.
    """
    if debit_currency == credit_currency:
        return [
            _entry(f"{txid}:0", debit_account, "DEBIT", debit_minor, debit_currency, None),
            _entry(f"{txid}:1", credit_account, "CREDIT", credit_minor, credit_currency, None),
        ]
    return [
        _entry(f"{txid}:0", debit_account, "DEBIT", debit_minor, debit_currency, rate),
        _entry(
            f"{txid}:1",
            clearing_account(debit_currency),
            "CREDIT",
            debit_minor,
            debit_currency,
            rate,
        ),
        _entry(
            f"{txid}:2",
            clearing_account(credit_currency),
            "DEBIT",
            credit_minor,
            credit_currency,
            rate,
        ),
        _entry(f"{txid}:3", credit_account, "CREDIT", credit_minor, credit_currency, rate),
    ]


def _transaction(
    txid: str, request: Request, kind: str, entries: list[Entry], payment_id: str | None = None
) -> Transaction:
    return {
        "transaction_id": txid,
        "request_id": request["request_id"],
        "payment_id": payment_id if payment_id is not None else request["payment_id"],
        "kind": kind,
        "posted_at_ms": request["created_at_ms"],
        "entries": entries,
    }


def _leg(
    leg_id: str,
    kind: Literal["CREDIT", "REFUND_DEBIT"],
    account: str,
    counterparty: str,
    request: Request,
    payment_id: str | None,
    amount: int,
    currency: str,
    position: Position,
) -> Leg:
    return {
        "leg_id": leg_id,
        "kind": kind,
        "account_id": account,
        "counterparty_id": counterparty,
        "request_id": request["request_id"],
        "payment_id": payment_id,
        "amount_minor": amount,
        "currency": currency,
        "approved": True,
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
        "created_at_ms": request["created_at_ms"],
    }


def _notify(
    request: Request,
    event: str,
    account: str,
    amount: int,
    currency: str,
    payment_id: str | None = None,
    code: str | None = None,
) -> Notification:
    return {
        "notification_id": f"{request['request_id']}:{event}:{account}",
        "event_type": event,
        "account_id": account,
        "request_id": request["request_id"],
        "payment_id": payment_id,
        "amount_minor": amount,
        "currency": currency,
        "decline_code": code,
        "created_at_ms": request["created_at_ms"],
    }
