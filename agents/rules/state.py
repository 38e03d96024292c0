"""Per-account state, kept as ONE table value per account.

Everything a request changes lives in its payer's value -- balances, holds and
payments, idempotency records with the outcomes they produced, and the positions
of applied legs -- so applying a request is a single table write, i.e. a single
changelog record. A crash can then persist a request's effect entirely or not at
all, never half of it (see the README, "Why one value per account").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from agents.rules.records import Decision

PaymentStatus = Literal["AUTHORIZED", "REVIEW", "CAPTURED", "VOIDED", "EXPIRED"]
STATE_FORMAT_VERSION = 1


@dataclass(slots=True)
class Balance:
    """Funds in one currency, in minor units. ``held`` is reserved by open holds."""

    available_minor: int = 0
    held_minor: int = 0

    @property
    def total_minor(self) -> int:
        """What the ledger shows for the account: holds are reservations, not movements."""
        return self.available_minor + self.held_minor


@dataclass(slots=True)
class PaymentRecord:
    """A payment or authorization made by this account, kept for captures, voids, refunds.

    ``amount_minor``/``currency`` are what the payee asked for; ``settled_*`` are
    what moved on the payer's balance (different when FX converted it).
    """

    payment_id: str
    kind: Literal["PAYMENT", "AUTHORIZE"]
    payee_id: str
    currency: str
    amount_minor: int
    settled_currency: str
    settled_amount_minor: int
    fx_rate: str | None
    status: PaymentStatus
    created_at_ms: int
    expires_at_ms: int | None = None
    captured_minor: int = 0
    settled_captured_minor: int = 0
    refunded_minor: int = 0
    settled_refunded_minor: int = 0
    refund_pending_minor: int = 0
    # refund request_id -> its idempotency key, to finish the refund when the payee answers.
    refund_keys: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class IdempotencyRecord:
    """What a request key produced: replayed verbatim for a redelivery or a retry.

    ``outcomes`` is the serialized Outcomes; ``decision`` inside it is None while a
    refund waits for its payee. ``waiting`` lists retries (request_id,
    created_at_ms) that arrived meanwhile; they get their decision when it is made.
    """

    fingerprint: str
    request_id: str
    created_at_ms: int
    outcomes: dict[str, Any]
    waiting: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class AccountState:
    account_id: str
    status: Literal["OPEN", "CLOSED"] = "OPEN"
    home_currency: str | None = None
    overdraft_minor: dict[str, int] = field(default_factory=dict)
    balances: dict[str, Balance] = field(default_factory=dict)
    payments: dict[str, PaymentRecord] = field(default_factory=dict)
    idempotency: dict[str, IdempotencyRecord] = field(default_factory=dict)
    # "topic:partition" -> highest source offset whose leg this account applied.
    positions: dict[str, int] = field(default_factory=dict)
    # idempotency key -> (topic, partition, offset) that produced its stored outputs,
    # for records whose outputs may not be durable yet (see decide._forget_flushed).
    unflushed: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # REFUND_DEBIT leg_id -> (approved, legs offset it was read at, created_at_ms): to re-emit
    # the identical REFUND_RESULT when the debit is delivered again.
    refund_results: dict[str, tuple[bool, int, int]] = field(default_factory=dict)
    # Request clock: the latest created_at_ms seen (never goes back).
    clock_ms: int = 0
    # Earliest time at which a hold expires or a record may be pruned.
    next_expiry_ms: int | None = None
    # The account's fraud feature state (models/features.py encode_state), opaque here: it
    # rides in the same value so a request's features and its effect persist together.
    features: Any = None

    def balance(self, currency: str) -> Balance:
        """The balance in ``currency``, created empty on first use."""
        found = self.balances.get(currency)
        if found is None:
            found = self.balances[currency] = Balance()
        return found

    # -- serialization -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_FORMAT_VERSION,
            "account_id": self.account_id,
            "status": self.status,
            "home_currency": self.home_currency,
            "overdraft_minor": self.overdraft_minor,
            "balances": {c: [b.available_minor, b.held_minor] for c, b in self.balances.items()},
            "payments": {pid: _payment_to_list(p) for pid, p in self.payments.items()},
            "idempotency": {
                key: [r.fingerprint, r.request_id, r.created_at_ms, _pack(r.outcomes), r.waiting]
                for key, r in self.idempotency.items()
            },
            "positions": self.positions,
            "unflushed": {k: list(v) for k, v in self.unflushed.items()},
            "refund_results": {k: list(v) for k, v in self.refund_results.items()},
            "clock_ms": self.clock_ms,
            "next_expiry_ms": self.next_expiry_ms,
            "features": self.features,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountState:
        version = data.get("v")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"account state format {version!r} is not {STATE_FORMAT_VERSION}")
        return cls(
            account_id=data["account_id"],
            status=data["status"],
            home_currency=data["home_currency"],
            overdraft_minor=dict(data["overdraft_minor"]),
            balances={c: Balance(a, h) for c, (a, h) in data["balances"].items()},
            payments={pid: _payment_from_list(v) for pid, v in data["payments"].items()},
            idempotency={
                key: IdempotencyRecord(
                    fp, rid, created, _unpack(outcomes), [(w[0], w[1]) for w in waiting]
                )
                for key, (fp, rid, created, outcomes, waiting) in data["idempotency"].items()
            },
            positions=dict(data["positions"]),
            unflushed={k: (v[0], v[1], v[2]) for k, v in data["unflushed"].items()},
            refund_results={k: (v[0], v[1], v[2]) for k, v in data["refund_results"].items()},
            clock_ms=data["clock_ms"],
            next_expiry_ms=data["next_expiry_ms"],
            features=data.get("features"),  # absent in values written before fraud scoring
        )

    def to_bytes(self) -> bytes:
        # orjson: the value is written for every request, and the stdlib encoder was an
        # eighth of a worker's time. It refuses integers beyond 64 bits, which a balance
        # could only reach through absurd input: those take the slow, exact path.
        # (orjson would read such an integer back as a float: the prefix marks them.)
        data = self.to_dict()
        try:
            return orjson.dumps(data)
        except TypeError:
            return _EXACT_JSON + json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccountState:
        if raw.startswith(_EXACT_JSON):
            return cls.from_dict(json.loads(raw[len(_EXACT_JSON) :]))
        return cls.from_dict(orjson.loads(raw))


# Marks a value holding integers beyond 64 bits, to be read by the exact (stdlib) parser.
_EXACT_JSON = b"J"


_PAYMENT_FIELDS = tuple(PaymentRecord.__dataclass_fields__)
# Stored decisions are kept as value lists in this field order (keys are most of the bytes).
_DECISION_FIELDS = tuple(Decision.__annotations__)
_EMPTY_OUTPUTS = ("transactions", "legs", "notifications")


def _pack(outcomes: dict[str, Any]) -> Any:
    """Outcomes with only decisions (the common, long-lived case) as compact value lists."""
    if any(outcomes[name] for name in _EMPTY_OUTPUTS):
        return outcomes
    return [[d[name] for name in _DECISION_FIELDS] for d in outcomes["decisions"]]


def _unpack(packed: Any) -> dict[str, Any]:
    if isinstance(packed, dict):
        return packed
    decisions = [dict(zip(_DECISION_FIELDS, values, strict=True)) for values in packed]
    return {"decisions": decisions, "transactions": [], "legs": [], "notifications": []}


def _payment_to_list(payment: PaymentRecord) -> list[Any]:
    return [getattr(payment, name) for name in _PAYMENT_FIELDS]


def _payment_from_list(values: list[Any]) -> PaymentRecord:
    return PaymentRecord(*values)
