"""The shapes of messages the rules read and write: TypedDicts mirroring the Avro schemas.

The codec decodes straight into these dicts and encodes them back, so the hot path
never converts between representations.
"""

from __future__ import annotations

from typing import Literal, TypedDict

RequestKind = Literal["TOPUP", "PAYMENT", "AUTHORIZE", "CAPTURE", "VOID", "REFUND", "PAYOUT"]
DecisionStatus = Literal["APPROVED", "DECLINED", "REVIEW"]
LegKind = Literal["CREDIT", "REFUND_DEBIT", "REFUND_RESULT"]
Direction = Literal["DEBIT", "CREDIT"]


class Request(TypedDict):
    request_id: str
    idempotency_key: str
    kind: RequestKind
    account_id: str
    counterparty_id: str | None
    payment_id: str | None
    amount_minor: int
    currency: str
    created_at_ms: int
    expires_at_ms: int | None
    device_id: str | None
    country: str | None
    merchant_category: str | None
    metadata: dict[str, str]


class Decision(TypedDict):
    request_id: str
    idempotency_key: str
    kind: RequestKind
    account_id: str
    payment_id: str | None
    status: DecisionStatus
    decline_code: str | None
    amount_minor: int
    currency: str
    settled_amount_minor: int | None
    settled_currency: str | None
    fx_rate: str | None
    fx_spread_bps: int | None
    fraud_score: float
    model_version: str | None
    reasons: list[str]
    duplicate_of: str | None
    created_at_ms: int
    decided_at_ms: int


class Leg(TypedDict):
    leg_id: str
    kind: LegKind
    account_id: str
    counterparty_id: str
    request_id: str
    payment_id: str | None
    amount_minor: int
    currency: str
    approved: bool
    source_topic: str
    source_partition: int
    source_offset: int
    created_at_ms: int


class Entry(TypedDict):
    entry_id: str
    account_id: str
    direction: Direction
    amount_minor: int
    currency: str
    fx_rate: str | None


class Transaction(TypedDict):
    transaction_id: str
    request_id: str
    payment_id: str | None
    kind: str
    posted_at_ms: int
    entries: list[Entry]


class Notification(TypedDict):
    notification_id: str
    event_type: str
    account_id: str
    request_id: str
    payment_id: str | None
    amount_minor: int
    currency: str
    decline_code: str | None
    created_at_ms: int
