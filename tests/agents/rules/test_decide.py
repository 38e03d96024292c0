"""decide(): every request kind, every decline code, boundaries, FX and idempotency."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from math import ceil

import pytest

from agents.rules.decide import (
    DECLINE_CODES,
    NO_FRAUD,
    Context,
    FraudAssessment,
    Outcomes,
    decide,
    request_fingerprint,
)
from agents.rules.records import Decision, Request
from agents.rules.state import AccountState
from tests.agents.rules.rules_builders import (
    AMOUNT_MAX,
    DAY_MS,
    authorize,
    balances_of,
    capture,
    fresh_state,
    make_context,
    make_quote,
    make_request,
    only_decision,
    payment,
    payout,
    position,
    rates,
    refund,
    retry_of,
    topup,
    void,
)

CTX = make_context()
WINDOW_MS = CTX.policy.idempotency_window_ms
REVIEW = FraudAssessment(0.7, "m-1", "REVIEW", ("new_device",))
FRAUD = FraudAssessment(0.97, "m-1", "DECLINE", ("velocity", "new_country"))


def do(
    state: AccountState | None,
    request: Request,
    ctx: Context = CTX,
    fraud: FraudAssessment = NO_FRAUD,
    offset: int = 0,
) -> tuple[AccountState, Outcomes]:
    return decide(state, request, ctx, position(offset), fraud)


def funded(
    account: str = "A",
    amount: int = 1000,
    currency: str = "EUR",
    ctx: Context = CTX,
    **overdraft: int,
) -> AccountState:
    state, out = do(fresh_state(account, **overdraft), topup(account, amount, currency), ctx)
    assert only_decision(out)["status"] == "APPROVED"
    return state


def declined(out: Outcomes, code: str) -> Decision:
    decision = only_decision(out)
    assert decision["status"] == "DECLINED", decision
    assert decision["decline_code"] == code, decision
    assert not out.transactions and not out.legs
    return decision


def approved(out: Outcomes) -> Decision:
    decision = only_decision(out)
    assert decision["status"] == "APPROVED", decision
    assert decision["decline_code"] is None
    return decision


# --------------------------------------------------------------------------------------
# TOPUP
# --------------------------------------------------------------------------------------


def test_topup_credits_and_posts_from_the_funding_account() -> None:
    request = topup("A", 1234, request_id="t-1")
    state, out = do(None, request)
    decision = approved(out)
    assert decision["payment_id"] == "t-1"
    assert balances_of(state) == {"EUR": (1234, 0)}
    assert state.home_currency == "EUR"
    [tx] = out.transactions
    assert tx["transaction_id"] == "t-1:topup"
    assert [
        (e["entry_id"], e["account_id"], e["direction"], e["amount_minor"]) for e in tx["entries"]
    ] == [
        ("t-1:topup:0", "external:funding", "DEBIT", 1234),
        ("t-1:topup:1", "A", "CREDIT", 1234),
    ]
    assert [n["event_type"] for n in out.notifications] == ["topup.succeeded"]
    assert not out.legs


def test_topup_names_its_external_source() -> None:
    _, out = do(None, topup("A", 5, counterparty_id="bank-7"))
    assert out.transactions[0]["entries"][0]["account_id"] == "external:bank-7"


def test_home_currency_is_the_first_topup() -> None:
    state = funded("A", 100, "JPY")
    state, _ = do(state, topup("A", 100, "EUR"))
    assert state.home_currency == "JPY"


@pytest.mark.parametrize("currency", ["JPY", "EUR", "KWD"])
def test_topup_up_to_the_largest_long(currency: str) -> None:
    state, out = do(None, topup("A", AMOUNT_MAX, currency))
    approved(out)
    state, out = do(state, topup("A", 1, currency))
    declined(out, "invalid_amount")
    assert balances_of(state) == {currency: (AMOUNT_MAX, 0)}


def test_topup_cannot_push_the_balance_with_holds_over_the_largest_long() -> None:
    # BUG (fixed): only `available` was checked, so held funds let the ledger balance
    # (available + held) exceed 2**63-1 once the hold was released.
    state = funded("A", AMOUNT_MAX - 100)
    state, out = do(state, authorize("A", "B", 100))
    approved(out)
    state, out = do(state, topup("A", 101))
    declined(out, "invalid_amount")
    state, out = do(state, topup("A", 100))
    approved(out)
    assert state.balances["EUR"].total_minor == AMOUNT_MAX


@pytest.mark.parametrize("amount", [0, -1, AMOUNT_MAX + 1])
@pytest.mark.parametrize("kind", ["TOPUP", "PAYMENT", "AUTHORIZE", "REFUND", "PAYOUT"])
def test_amount_must_be_positive_and_a_long(kind: str, amount: int) -> None:
    state = funded()
    request = make_request(
        kind,  # type: ignore[arg-type]
        "A",
        amount,
        counterparty_id="B",
        payment_id="p" if kind == "REFUND" else None,
    )
    before = balances_of(state)
    state, out = do(state, request)
    declined(out, "invalid_amount")
    assert balances_of(state) == before
    assert [n["event_type"] for n in out.notifications] == [f"{kind.lower()}.declined"]
    assert out.notifications[0]["decline_code"] == "invalid_amount"


@pytest.mark.parametrize("kind", ["CAPTURE", "VOID"])
def test_capture_and_void_refuse_negative_amounts(kind: str) -> None:
    _state, out = do(funded(), make_request(kind, "A", -1, payment_id="p"))  # type: ignore[arg-type]
    declined(out, "invalid_amount")


@pytest.mark.parametrize("currency", ["XXX", "eur", "", "GBP"])
def test_currency_not_supported(currency: str) -> None:
    # GBP is a real currency but not in this deployment's policy.
    ctx = make_context(currencies=frozenset({"EUR", "JPY", "KWD"}))
    _, out = do(funded(ctx=ctx), payment("A", "B", 1, currency), ctx)
    declined(out, "currency_not_supported")


@pytest.mark.parametrize("account", ["", "external:bank", "fx-clearing:EUR"])
def test_invalid_account(account: str) -> None:
    _, out = do(None, topup(account, 100))
    declined(out, "invalid_request")


@pytest.mark.parametrize("payee", [None, "", "A", "external:x", "fx-clearing:JPY"])
@pytest.mark.parametrize("kind", ["PAYMENT", "AUTHORIZE"])
def test_invalid_payee(kind: str, payee: str | None) -> None:
    request = make_request(kind, "A", 1, counterparty_id=payee)  # type: ignore[arg-type]
    _, out = do(funded(), request)
    declined(out, "invalid_request")


@pytest.mark.parametrize("kind", ["CAPTURE", "VOID", "REFUND"])
def test_payment_id_required(kind: str) -> None:
    _, out = do(funded(), make_request(kind, "A", 1, payment_id=None))  # type: ignore[arg-type]
    declined(out, "invalid_request")


@pytest.mark.parametrize("kind", ["TOPUP", "PAYMENT", "AUTHORIZE", "PAYOUT", "VOID", "CAPTURE"])
def test_closed_account(kind: str) -> None:
    state = funded()
    state.status = "CLOSED"
    request = make_request(kind, "A", 1, counterparty_id="B", payment_id="p")  # type: ignore[arg-type]
    state, out = do(state, request)
    declined(out, "account_closed")
    assert balances_of(state) == {"EUR": (1000, 0)}


# --------------------------------------------------------------------------------------
# PAYMENT
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("currency", "amount"), [("JPY", 1500), ("EUR", 1999), ("KWD", 12345)])
def test_payment_of_exactly_the_balance_is_approved(currency: str, amount: int) -> None:
    state = funded("A", amount, currency)
    state, out = do(state, payment("A", "B", amount, currency))
    approved(out)
    assert balances_of(state) == {currency: (0, 0)}


@pytest.mark.parametrize(("currency", "amount"), [("JPY", 1500), ("EUR", 1999), ("KWD", 12345)])
def test_payment_of_one_minor_unit_more_is_declined(currency: str, amount: int) -> None:
    state = funded("A", amount, currency)
    state, out = do(state, payment("A", "B", amount + 1, currency))
    decision = declined(out, "insufficient_funds")
    assert decision["settled_amount_minor"] is None  # no conversion happened
    assert balances_of(state) == {currency: (amount, 0)}
    assert [n["event_type"] for n in out.notifications] == ["payment.declined"]
    assert state.payments == {}


def test_payment_of_the_largest_long() -> None:
    state = funded("A", AMOUNT_MAX, "JPY")
    state, out = do(state, payment("A", "B", AMOUNT_MAX, "JPY"))
    approved(out)
    assert out.legs[0]["amount_minor"] == AMOUNT_MAX
    assert balances_of(state) == {"JPY": (0, 0)}


def test_payment_moves_money_with_deterministic_ids() -> None:
    state = funded("A", 1000)
    state, out = do(state, payment("A", "B", 300, request_id="p-1"), offset=41)
    decision = approved(out)
    assert decision["payment_id"] == "p-1"
    assert decision["settled_amount_minor"] is None and decision["fx_rate"] is None
    assert balances_of(state) == {"EUR": (700, 0)}
    [tx] = out.transactions
    assert tx["transaction_id"] == "p-1:payment"
    assert tx["payment_id"] == "p-1"
    assert [
        (e["entry_id"], e["account_id"], e["direction"], e["amount_minor"]) for e in tx["entries"]
    ] == [
        ("p-1:payment:0", "A", "DEBIT", 300),
        ("p-1:payment:1", "B", "CREDIT", 300),
    ]
    [leg] = out.legs
    assert leg == {
        "leg_id": "p-1:credit",
        "kind": "CREDIT",
        "account_id": "B",
        "counterparty_id": "A",
        "request_id": "p-1",
        "payment_id": "p-1",
        "amount_minor": 300,
        "currency": "EUR",
        "approved": True,
        "source_topic": "payments.requests",
        "source_partition": 0,
        "source_offset": 41,
        "created_at_ms": 0,
    }
    assert [n["notification_id"] for n in out.notifications] == ["p-1:payment.succeeded:A"]
    record = state.payments["p-1"]
    assert (record.status, record.captured_minor, record.settled_captured_minor) == (
        "CAPTURED",
        300,
        300,
    )


def test_outcomes_are_deterministic() -> None:
    request = payment("A", "B", 300, request_id="p-det")
    _, first = do(funded(), request, offset=3)
    _, second = do(funded(), copy.deepcopy(request), offset=3)
    assert first == second


def test_overdraft_limit() -> None:
    state = funded("A", 100, EUR=50)
    state, out = do(state, payment("A", "B", 151))
    declined(out, "insufficient_funds")
    state, out = do(state, payment("A", "B", 150))
    approved(out)
    assert balances_of(state) == {"EUR": (-50, 0)}
    state, out = do(state, payment("A", "B", 1))
    declined(out, "insufficient_funds")


def test_overdraft_is_per_currency() -> None:
    state = funded("A", 100, JPY=1000)
    _, out = do(state, payment("A", "B", 101))
    declined(out, "insufficient_funds")


def test_account_without_money_cannot_pay() -> None:
    _, out = do(None, payment("A", "B", 1))
    declined(out, "insufficient_funds")


def test_fraud_decline() -> None:
    state = funded()
    state, out = do(state, payment("A", "B", 10), fraud=FRAUD)
    decision = declined(out, "fraudulent")
    assert decision["fraud_score"] == 0.97
    assert decision["model_version"] == "m-1"
    # BUG (fixed): the reasons were listed twice ([..., "velocity", "new_country"] * 2).
    assert decision["reasons"] == ["velocity", "new_country"]
    assert balances_of(state) == {"EUR": (1000, 0)}


def test_fraud_decline_on_payout() -> None:
    _, out = do(funded(), payout("A", 10), fraud=FRAUD)
    assert declined(out, "fraudulent")["reasons"] == ["velocity", "new_country"]


def test_fraud_decline_wins_over_insufficient_funds() -> None:
    _, out = do(funded("A", 1), payment("A", "B", 10), fraud=FRAUD)
    declined(out, "fraudulent")


def test_fraud_score_is_reported_on_approval() -> None:
    fraud = FraudAssessment(0.12, "m-2", "APPROVE", ("ignored",))
    _, out = do(funded(), payment("A", "B", 10), fraud=fraud)
    decision = approved(out)
    assert (decision["fraud_score"], decision["model_version"], decision["reasons"]) == (
        0.12,
        "m-2",
        [],
    )


def test_payment_sent_to_review_is_held() -> None:
    state = funded()
    state, out = do(state, payment("A", "B", 400, request_id="p-r"), fraud=REVIEW)
    decision = only_decision(out)
    assert decision["status"] == "REVIEW"
    assert decision["reasons"] == ["new_device"]
    assert balances_of(state) == {"EUR": (600, 400)}
    assert state.payments["p-r"].status == "REVIEW"
    assert not out.transactions and not out.legs
    assert [n["event_type"] for n in out.notifications] == ["payment.review"]
    # A reviewer's capture moves the money.
    state, out = do(state, capture("A", "p-r"))
    approved(out)
    assert balances_of(state) == {"EUR": (600, 0)}
    assert out.legs[0]["amount_minor"] == 400


# --------------------------------------------------------------------------------------
# AUTHORIZE / CAPTURE / VOID
# --------------------------------------------------------------------------------------


def authorized(
    amount: int = 400, balance: int = 1000, expires_at_ms: int | None = None
) -> AccountState:
    state = funded("A", balance)
    state, out = do(
        state, authorize("A", "B", amount, request_id="auth", expires_at_ms=expires_at_ms)
    )
    approved(out)
    return state


def test_authorize_holds_without_moving_money() -> None:
    state = funded()
    state, out = do(state, authorize("A", "B", 1000, request_id="auth"))
    decision = approved(out)
    assert decision["payment_id"] == "auth"
    assert balances_of(state) == {"EUR": (0, 1000)}
    assert not out.transactions and not out.legs
    assert [n["event_type"] for n in out.notifications] == ["authorization.held"]
    record = state.payments["auth"]
    assert record.status == "AUTHORIZED"
    assert record.expires_at_ms == CTX.policy.hold_default_ms


def test_authorize_of_one_unit_more_than_available() -> None:
    state, out = do(funded(), authorize("A", "B", 1001))
    declined(out, "insufficient_funds")
    assert balances_of(state) == {"EUR": (1000, 0)}


def test_held_funds_are_not_available() -> None:
    state = authorized(400)
    _, out = do(state, payment("A", "B", 601))
    declined(out, "insufficient_funds")
    _, out = do(state, payment("A", "B", 600))
    approved(out)


@pytest.mark.parametrize(("expires_at", "ok"), [(99, False), (100, False), (101, True)])
def test_authorize_expiry_must_be_in_the_future(expires_at: int, ok: bool) -> None:
    state = funded()
    request = authorize("A", "B", 10, expires_at_ms=expires_at, created_at_ms=100)
    state, out = do(state, request)
    if ok:
        approved(out)
    else:
        declined(out, "invalid_request")
        assert balances_of(state) == {"EUR": (1000, 0)}


def test_capture_full_amount_with_amount_zero() -> None:
    state = authorized(400)
    state, out = do(state, capture("A", "auth", 0, request_id="cap"), offset=9)
    decision = approved(out)
    assert decision["payment_id"] == "auth"
    assert balances_of(state) == {"EUR": (600, 0)}
    [tx] = out.transactions
    assert tx["transaction_id"] == "cap:capture"
    assert tx["payment_id"] == "auth"
    assert [e["amount_minor"] for e in tx["entries"]] == [400, 400]
    [leg] = out.legs
    assert (leg["leg_id"], leg["account_id"], leg["amount_minor"], leg["source_offset"]) == (
        "cap:credit",
        "B",
        400,
        9,
    )
    assert state.payments["auth"].status == "CAPTURED"
    assert state.payments["auth"].captured_minor == 400


def test_capture_exactly_the_authorized_amount() -> None:
    state, out = do(authorized(400), capture("A", "auth", 400))
    approved(out)
    assert balances_of(state) == {"EUR": (600, 0)}


def test_capture_one_unit_more_than_authorized() -> None:
    state, out = do(authorized(400), capture("A", "auth", 401))
    declined(out, "capture_exceeds_authorization")
    assert balances_of(state) == {"EUR": (600, 400)}
    assert state.payments["auth"].status == "AUTHORIZED"


def test_partial_capture_releases_the_rest() -> None:
    state, out = do(authorized(400), capture("A", "auth", 150))
    approved(out)
    assert balances_of(state) == {"EUR": (850, 0)}
    assert out.legs[0]["amount_minor"] == 150
    record = state.payments["auth"]
    assert (record.captured_minor, record.settled_captured_minor) == (150, 150)


def test_repeated_capture_is_already_captured() -> None:
    state, _ = do(authorized(400), capture("A", "auth", 150))
    state, out = do(state, capture("A", "auth", 100))
    declined(out, "already_captured")
    assert balances_of(state) == {"EUR": (850, 0)}


def test_capture_of_a_payment_is_already_captured() -> None:
    state, _ = do(funded(), payment("A", "B", 10, request_id="p"))
    _, out = do(state, capture("A", "p"))
    declined(out, "already_captured")


def test_capture_in_another_currency() -> None:
    _, out = do(authorized(), capture("A", "auth", 0, "JPY"))
    declined(out, "invalid_request")


@pytest.mark.parametrize("maker", [capture, void])
def test_capture_or_void_of_an_unknown_payment(maker: Callable[..., Request]) -> None:
    _, out = do(authorized(), maker("A", "nope"))
    declined(out, "original_not_found")


def test_capture_by_another_account_is_not_found() -> None:
    # Requests about a payment are keyed by its payer; another account does not know it.
    _, out = do(funded("B"), capture("B", "auth"))
    declined(out, "original_not_found")


def test_void_releases_the_hold() -> None:
    state, out = do(authorized(400), void("A", "auth", request_id="v"))
    decision = approved(out)
    assert decision["payment_id"] == "auth"
    assert balances_of(state) == {"EUR": (1000, 0)}
    assert state.payments["auth"].status == "VOIDED"
    assert not out.transactions and not out.legs
    assert [n["event_type"] for n in out.notifications] == ["authorization.voided"]
    state, out = do(state, void("A", "auth"))
    declined(out, "already_voided")
    state, out = do(state, capture("A", "auth"))
    declined(out, "already_voided")
    assert balances_of(state) == {"EUR": (1000, 0)}


def test_void_of_a_captured_payment() -> None:
    state, _ = do(authorized(400), capture("A", "auth"))
    _, out = do(state, void("A", "auth"))
    declined(out, "already_captured")


def test_authorize_expiring_at_the_epoch_is_in_the_past() -> None:
    # BUG (fixed): `expires_at_ms or default` read 0 as "no expiry given" and held for 7 days.
    _state, out = do(funded(), authorize("A", "B", 10, expires_at_ms=0))
    declined(out, "invalid_request")


def test_capture_just_before_the_hold_expires() -> None:
    state = authorized(400, expires_at_ms=10_000)
    state, out = do(state, capture("A", "auth", created_at_ms=9_999))
    approved(out)


def test_hold_expires_by_the_request_clock() -> None:
    state = authorized(400, expires_at_ms=10_000)
    # Nothing happens until a request moves the clock: expiry is lazy.
    assert balances_of(state) == {"EUR": (600, 400)}
    state, out = do(state, capture("A", "auth", created_at_ms=10_000))
    declined(out, "authorization_expired")
    assert balances_of(state) == {"EUR": (1000, 0)}
    assert state.payments["auth"].status == "EXPIRED"
    expired = [n for n in out.notifications if n["event_type"] == "authorization.expired"]
    assert [(n["notification_id"], n["created_at_ms"]) for n in expired] == [
        ("auth:authorization.expired:A", 10_000)
    ]
    _, out = do(state, void("A", "auth", created_at_ms=10_001))
    declined(out, "authorization_expired")


def test_any_request_releases_an_expired_hold() -> None:
    state = authorized(400, expires_at_ms=10_000)
    state, out = do(state, topup("A", 1, created_at_ms=20_000))
    assert balances_of(state) == {"EUR": (1001, 0)}
    assert "authorization.expired" in [n["event_type"] for n in out.notifications]
    # A capture created before expiry but arriving after the clock passed it: expired.
    _, out = do(state, capture("A", "auth", created_at_ms=5_000))
    declined(out, "authorization_expired")


def test_default_hold_expiry() -> None:
    state = authorized(400)
    hold_ms = CTX.policy.hold_default_ms
    state, out = do(state, capture("A", "auth", created_at_ms=hold_ms - 1))
    approved(out)
    state = authorized(400)
    state, out = do(state, capture("A", "auth", created_at_ms=hold_ms))
    declined(out, "authorization_expired")


# --------------------------------------------------------------------------------------
# REFUND (the payer's half; the saga is in test_legs.py)
# --------------------------------------------------------------------------------------


def paid(amount: int = 500) -> AccountState:
    state, out = do(funded("A", 1000), payment("A", "B", amount, request_id="pay"))
    approved(out)
    return state


def test_refund_reserves_and_asks_the_payee() -> None:
    state, out = do(paid(500), refund("A", "pay", 200, request_id="r-1"), offset=12)
    assert out.decisions == []  # decided when the payee answers
    [leg] = out.legs
    assert (leg["leg_id"], leg["kind"], leg["account_id"], leg["counterparty_id"]) == (
        "r-1:refund-debit",
        "REFUND_DEBIT",
        "B",
        "A",
    )
    assert (leg["amount_minor"], leg["payment_id"], leg["source_offset"]) == (200, "pay", 12)
    assert state.payments["pay"].refund_pending_minor == 200
    assert balances_of(state) == {"EUR": (500, 0)}


def test_refund_of_exactly_the_captured_amount() -> None:
    _, out = do(paid(500), refund("A", "pay", 500))
    assert len(out.legs) == 1 and not out.decisions


def test_refund_of_one_unit_more_than_captured() -> None:
    state, out = do(paid(500), refund("A", "pay", 501))
    declined(out, "refund_exceeds_payment")
    assert state.payments["pay"].refund_pending_minor == 0
    assert [n["event_type"] for n in out.notifications] == ["refund.declined"]


def test_pending_refunds_count_against_the_payment() -> None:
    state, _ = do(paid(500), refund("A", "pay", 300))
    state, out = do(state, refund("A", "pay", 201))
    declined(out, "refund_exceeds_payment")
    state, out = do(state, refund("A", "pay", 200))
    assert len(out.legs) == 1
    state, out = do(state, refund("A", "pay", 1))
    declined(out, "refund_exceeds_payment")


def test_refund_of_a_partial_capture_is_limited_to_the_capture() -> None:
    state, _ = do(authorized(400), capture("A", "auth", 150))
    _, out = do(state, refund("A", "auth", 151))
    declined(out, "refund_exceeds_payment")


def test_refund_of_an_unknown_payment() -> None:
    _, out = do(paid(), refund("A", "nope", 1))
    declined(out, "original_not_found")


@pytest.mark.parametrize("then", [None, "void"])
def test_refund_of_an_uncaptured_authorization(then: str | None) -> None:
    state = authorized()
    if then == "void":
        state, _ = do(state, void("A", "auth"))
    _, out = do(state, refund("A", "auth", 1))
    declined(out, "invalid_request")


def test_refund_in_another_currency() -> None:
    _, out = do(paid(), refund("A", "pay", 1, "JPY"))
    declined(out, "invalid_request")


# --------------------------------------------------------------------------------------
# PAYOUT
# --------------------------------------------------------------------------------------


def test_payout_to_the_default_external_account() -> None:
    state, out = do(funded("A", 1000), payout("A", 1000, request_id="po"))
    decision = approved(out)
    assert decision["payment_id"] == "po"
    assert balances_of(state) == {"EUR": (0, 0)}
    [tx] = out.transactions
    assert tx["transaction_id"] == "po:payout"
    assert [(e["account_id"], e["direction"], e["amount_minor"]) for e in tx["entries"]] == [
        ("A", "DEBIT", 1000),
        ("external:payout", "CREDIT", 1000),
    ]
    assert not out.legs
    assert [n["event_type"] for n in out.notifications] == ["payout.succeeded"]


def test_payout_names_its_external_target() -> None:
    _, out = do(funded(), payout("A", 1, counterparty_id="iban-9"))
    assert out.transactions[0]["entries"][1]["account_id"] == "external:iban-9"


def test_payout_of_one_unit_more_than_available() -> None:
    state, out = do(funded("A", 1000), payout("A", 1001))
    declined(out, "insufficient_funds")
    assert balances_of(state) == {"EUR": (1000, 0)}


def test_payout_uses_the_overdraft() -> None:
    state, out = do(funded("A", 1000, EUR=1), payout("A", 1001))
    approved(out)
    assert balances_of(state) == {"EUR": (-1, 0)}


# --------------------------------------------------------------------------------------
# FX
# --------------------------------------------------------------------------------------

NOW_MS = 10 * DAY_MS
FX = make_context(
    rates(
        make_quote("JPY/EUR", "0.006123", 35, NOW_MS),  # EUR-home payers paying JPY
        make_quote("EUR/KWD", "0.3312", 20, NOW_MS),  # only the inverse for KWD from EUR
        make_quote("EUR/JPY", "162.7", 0, NOW_MS),  # JPY-home payers paying EUR
    ),
    now_ms=NOW_MS,
)


def fx_funded(amount: int = 100_000, currency: str = "EUR") -> AccountState:
    return funded("A", amount, currency, ctx=FX)


def fx_do(state: AccountState, request: Request, **kw: object) -> tuple[AccountState, Outcomes]:
    request["created_at_ms"] = NOW_MS
    return do(state, request, FX, **kw)  # type: ignore[arg-type]


def test_fx_payment_with_a_direct_rate() -> None:
    # 12345 JPY at 0.006123 EUR/JPY plus 35 bps, in cents, rounded up against the payer.
    by_hand = (Decimal(12345) * Decimal("0.006123") * Decimal("1.0035") * 100).to_integral_value(
        rounding=ROUND_CEILING
    )
    assert by_hand == 7586  # 7585.29947... cents
    state, out = fx_do(fx_funded(), payment("A", "B", 12345, "JPY", request_id="fx-1"))
    decision = approved(out)
    assert decision["settled_amount_minor"] == 7586
    assert decision["settled_currency"] == "EUR"
    assert Decimal(decision["fx_rate"] or "") == Decimal("0.006123") * Decimal("1.0035")
    assert decision["fx_spread_bps"] == 35
    assert balances_of(state) == {"EUR": (100_000 - 7586, 0)}
    # The payee gets exactly what was asked, in JPY; FX clearing takes both sides.
    [tx] = out.transactions
    assert [
        (e["account_id"], e["direction"], e["amount_minor"], e["currency"]) for e in tx["entries"]
    ] == [
        ("A", "DEBIT", 7586, "EUR"),
        ("fx-clearing:EUR", "CREDIT", 7586, "EUR"),
        ("fx-clearing:JPY", "DEBIT", 12345, "JPY"),
        ("B", "CREDIT", 12345, "JPY"),
    ]
    assert (out.legs[0]["amount_minor"], out.legs[0]["currency"]) == (12345, "JPY")
    record = state.payments["fx-1"]
    assert (record.settled_currency, record.settled_amount_minor) == ("EUR", 7586)


def test_fx_payment_with_the_inverse_rate() -> None:
    # 2.500 KWD from EUR with only EUR/KWD = 0.3312 quoted: 2.5 / 0.3312 * 1.002 EUR.
    by_hand = Fraction(2500, 1000) / Fraction("0.3312") * Fraction(10020, 10000) * 100
    assert ceil(by_hand) == 757  # 756.34... cents
    state, out = fx_do(fx_funded(), payment("A", "B", 2500, "KWD"))
    assert approved(out)["settled_amount_minor"] == 757
    assert balances_of(state) == {"EUR": (100_000 - 757, 0)}


def test_fx_inverse_rate_that_divides_exactly_is_not_overcharged() -> None:
    # 0.3312 KWD is exactly 1 EUR at EUR/KWD = 0.3312: with a spread of 0, 100 cents.
    ctx = make_context(rates(make_quote("EUR/KWD", "0.3312", 0, NOW_MS)), now_ms=NOW_MS)
    state = funded("A", 1000, ctx=ctx)
    _, out = do(state, payment("A", "B", 3312, "KWD", created_at_ms=NOW_MS), ctx)
    assert approved(out)["settled_amount_minor"] == 1000
    ctx = make_context(rates(make_quote("EUR/JPY", "150", 0, NOW_MS)), now_ms=NOW_MS)
    _, out = do(
        funded("A", 1000, ctx=ctx), payment("A", "B", 150, "JPY", created_at_ms=NOW_MS), ctx
    )
    assert approved(out)["settled_amount_minor"] == 100


def test_fx_from_a_zero_decimal_home() -> None:
    state = fx_funded(10, "JPY")
    # 0.01 EUR at 162.7 JPY/EUR = 1.627 JPY -> 2 JPY
    state, out = fx_do(state, payment("A", "B", 1, "EUR"))
    assert approved(out)["settled_amount_minor"] == 2
    # 0.05 EUR = 8.135 JPY -> 9 JPY: one more than the 8 JPY left
    state, out = fx_do(state, payment("A", "B", 5, "EUR"))
    decision = declined(out, "insufficient_funds")
    assert (decision["settled_amount_minor"], decision["settled_currency"]) == (9, "JPY")
    assert balances_of(state) == {"JPY": (8, 0)}


def test_fx_exact_balance_boundary() -> None:
    state = fx_funded(7586)
    _, out = fx_do(state, payment("A", "B", 12345, "JPY"))
    approved(out)
    state = fx_funded(7585)
    _, out = fx_do(state, payment("A", "B", 12345, "JPY"))
    declined(out, "insufficient_funds")


def test_a_currency_the_payer_holds_is_not_converted() -> None:
    state = fx_funded()
    state, _ = fx_do(state, topup("A", 1, "JPY"))
    _, out = fx_do(state, payment("A", "B", 2, "JPY"))
    decision = declined(out, "insufficient_funds")
    assert decision["settled_currency"] is None


def test_fx_rate_missing() -> None:
    ctx = make_context(now_ms=NOW_MS)
    _, out = do(funded(ctx=ctx), payment("A", "B", 1, "JPY"), ctx)
    declined(out, "fx_rate_unavailable")


def test_fx_rate_age_boundary() -> None:
    max_age = FX.policy.fx_rate_max_age_ms
    state = fx_funded()
    _, out = do(state, payment("A", "B", 100, "JPY", created_at_ms=NOW_MS + max_age), FX)
    approved(out)
    state = fx_funded()
    _, out = do(state, payment("A", "B", 100, "JPY", created_at_ms=NOW_MS + max_age + 1), FX)
    declined(out, "fx_rate_unavailable")
    # The inverse pair ages the same way.
    _, out = do(fx_funded(), payment("A", "B", 100, "KWD", created_at_ms=NOW_MS + max_age + 1), FX)
    declined(out, "fx_rate_unavailable")


@pytest.mark.parametrize("rate", ["0", "-1.5", "NaN", "Infinity"])
@pytest.mark.parametrize("pair", ["JPY/EUR", "EUR/JPY"])
def test_unusable_fx_rates_decline_instead_of_crashing(pair: str, rate: str) -> None:
    # BUG (fixed): a zero inverse rate raised decimal.DivisionByZero; a zero direct rate
    # approved a 100 JPY payment for 0 EUR; a negative one credited the payer.
    ctx = make_context(rates(make_quote(pair, rate, 0, NOW_MS)), now_ms=NOW_MS)
    state = funded("A", 1000, ctx=ctx)
    state, out = do(state, payment("A", "B", 100, "JPY", created_at_ms=NOW_MS), ctx)
    declined(out, "fx_rate_unavailable")
    assert balances_of(state) == {"EUR": (1000, 0)}


def test_fx_conversion_beyond_the_largest_long_is_an_invalid_amount() -> None:
    # BUG (fixed): the decline carried settled_amount_minor = 1.6e19, which no Avro long holds.
    state = fx_funded(AMOUNT_MAX, "JPY")
    _, out = fx_do(state, payment("A", "B", AMOUNT_MAX, "EUR"))
    decision = declined(out, "invalid_amount")
    assert decision["settled_amount_minor"] is None


def test_fx_authorize_and_partial_capture() -> None:
    state = fx_funded()
    state, out = fx_do(state, authorize("A", "B", 12345, "JPY", request_id="fa"))
    assert approved(out)["settled_amount_minor"] == 7586
    assert balances_of(state) == {"EUR": (100_000 - 7586, 7586)}
    # Capture 10000 of 12345 JPY: 7586 * 10000 / 12345 = 6144.998... -> 6145 (up, payer pays)
    assert ceil(Fraction(7586 * 10000, 12345)) == 6145
    state, out = fx_do(state, capture("A", "fa", 10000, "JPY"))
    decision = approved(out)
    assert (decision["settled_amount_minor"], decision["settled_currency"]) == (6145, "EUR")
    assert balances_of(state) == {"EUR": (100_000 - 6145, 0)}
    assert [e["amount_minor"] for e in out.transactions[0]["entries"]] == [6145, 6145, 10000, 10000]


def test_fx_payout() -> None:
    state, out = fx_do(fx_funded(), payout("A", 12345, "JPY"))
    assert approved(out)["settled_amount_minor"] == 7586
    assert balances_of(state) == {"EUR": (100_000 - 7586, 0)}
    accounts = [e["account_id"] for e in out.transactions[0]["entries"]]
    assert accounts == ["A", "fx-clearing:EUR", "fx-clearing:JPY", "external:payout"]


# --------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------


def test_redelivery_reemits_identical_outcomes() -> None:
    state = funded()
    request = payment("A", "B", 300, request_id="p-1", idempotency_key="k-1")
    state, first = do(state, request, offset=5)
    snapshot = AccountState.from_bytes(state.to_bytes())
    later = make_context(now_ms=999_999)  # the wall clock moved; the answer must not
    state, again = do(state, request, later, offset=5)
    assert again == first
    assert AccountState.from_bytes(state.to_bytes()) == snapshot


def test_retry_with_a_new_request_id_gets_a_copy_of_the_decision() -> None:
    state = funded()
    request = payment("A", "B", 300, request_id="p-1", idempotency_key="k-1")
    state, first = do(state, request)
    retry = retry_of(request, request_id="p-2", created_at_ms=5_000)
    retry["metadata"] = {"attempt": "2"}  # metadata is not part of the payload
    state, out = do(state, retry, make_context(now_ms=7_000))
    decision = only_decision(out)
    original = first.decisions[0]
    assert decision == {
        **original,
        "request_id": "p-2",
        "duplicate_of": "p-1",
        "created_at_ms": 5_000,
    }
    assert not out.transactions and not out.legs and not out.notifications
    assert balances_of(state) == {"EUR": (700, 0)}
    # The retry redelivered: the same copy.
    _, again = do(state, retry, make_context(now_ms=9_000))
    assert again == out


def test_retry_of_a_declined_request_is_declined_the_same_way() -> None:
    state = funded("A", 100)
    request = payment("A", "B", 300, idempotency_key="k")
    state, _ = do(state, request)
    state, _ = do(state, topup("A", 1000))
    _, out = do(state, retry_of(request))
    decision = declined(out, "insufficient_funds")
    assert decision["duplicate_of"] == request["request_id"]


def test_same_key_different_payload_is_a_conflict() -> None:
    state = funded()
    state, _ = do(state, payment("A", "B", 300, request_id="p-1", idempotency_key="k"))
    other = payment("A", "B", 301, request_id="p-2", idempotency_key="k", created_at_ms=10)
    state, out = do(state, other, make_context(now_ms=50))
    decision = declined(out, "idempotency_conflict")
    assert decision["request_id"] == "p-2"
    assert "p-1" in decision["reasons"][0]
    assert balances_of(state) == {"EUR": (700, 0)}
    _, again = do(state, other, make_context(now_ms=70))
    assert again == out


def test_the_key_defaults_to_the_request_id() -> None:
    state = funded()
    state, out = do(state, payment("A", "B", 1, request_id="p-1"))
    assert only_decision(out)["idempotency_key"] == "p-1"
    # Another request naming p-1 as its key is a retry of it.
    _, out = do(state, payment("A", "B", 1, request_id="p-9", idempotency_key="p-1"))
    assert only_decision(out)["duplicate_of"] == "p-1"


def test_fingerprint_covers_the_payload_only() -> None:
    request = payment("A", "B", 1, request_id="x", created_at_ms=1)
    same = dict(request, request_id="y", created_at_ms=2, device_id="d", metadata={"a": "b"})
    assert request_fingerprint(request) == request_fingerprint(same)  # type: ignore[arg-type]
    for field_name, value in [
        ("amount_minor", 2),
        ("currency", "JPY"),
        ("counterparty_id", "C"),
        ("kind", "AUTHORIZE"),
        ("payment_id", "p"),
        ("expires_at_ms", 5),
    ]:
        changed = dict(request, **{field_name: value})
        assert request_fingerprint(request) != request_fingerprint(changed), field_name  # type: ignore[arg-type]


def test_idempotency_key_expires_after_the_window() -> None:
    state = funded()
    request = payment("A", "B", 100, request_id="p-1", idempotency_key="k", created_at_ms=0)
    state, _ = do(state, request)
    # The clock passes the window: the record is pruned and the key is free again.
    state, _ = do(state, topup("A", 1, created_at_ms=WINDOW_MS))
    assert "k" not in state.idempotency
    fresh = payment("A", "B", 100, request_id="p-2", idempotency_key="k", created_at_ms=WINDOW_MS)
    state, out = do(state, fresh)
    assert approved(out)["duplicate_of"] is None
    assert balances_of(state) == {"EUR": (801, 0)}


@pytest.mark.parametrize("late_ms", [0, 1])
def test_redelivery_after_the_window_is_expired_not_applied_again(late_ms: int) -> None:
    # BUG (fixed) for late_ms=0: records are pruned when created_at <= clock - window but
    # requests were refused only when created_at < clock - window, so a redelivery at
    # exactly the window edge was applied a second time and moved the money twice.
    state = funded()
    request = payment("A", "B", 100, request_id="p-1", created_at_ms=0)
    state, _ = do(state, request, offset=1)
    state, _ = do(state, topup("A", 1, created_at_ms=WINDOW_MS + late_ms), offset=2)
    assert "p-1" not in state.idempotency
    state, out = do(state, request, offset=1)
    declined(out, "request_expired")
    assert balances_of(state) == {"EUR": (901, 0)}


def test_request_inside_the_window_is_not_expired() -> None:
    state, _ = do(funded(), topup("A", 1, created_at_ms=WINDOW_MS))
    _, out = do(state, payment("A", "B", 1, created_at_ms=1))
    approved(out)


def test_expired_request_decline_is_identical_when_redelivered() -> None:
    # BUG (fixed): the decline was stamped with the wall clock, so each redelivery
    # produced a different decision for the same request.
    state, _ = do(funded(), topup("A", 1, created_at_ms=WINDOW_MS + 5))
    late = payment("A", "B", 1, request_id="late", created_at_ms=1)
    state, first = do(state, late, make_context(now_ms=100))
    declined(first, "request_expired")
    _, again = do(state, late, make_context(now_ms=200))
    assert again == first


def test_too_many_requests() -> None:
    ctx = make_context(idempotency_keys_max=3)
    state = funded(ctx=ctx)  # key 1
    first = payment("A", "B", 1)
    state, _ = do(state, first, ctx)  # key 2
    state, out = do(state, payment("A", "B", 1), ctx)  # key 3
    approved(out)
    request = payment("A", "B", 1, request_id="one-too-many")
    state, out = do(state, request, ctx)
    declined(out, "too_many_requests")
    assert balances_of(state) == {"EUR": (998, 0)}
    # BUG (fixed): like request_expired, the decline must not depend on the wall clock.
    _, again = do(state, request, make_context(now_ms=12345, idempotency_keys_max=3))
    assert again == out
    # Known keys are still answered.
    _, out = do(state, retry_of(first), ctx)
    assert only_decision(out)["duplicate_of"] == first["request_id"]


def test_retry_redelivered_after_the_original_key_aged_out_moves_no_money() -> None:
    # BUG (fixed): a retry (new request_id, same key) answered as a duplicate at the end
    # of the window was applied as a new payment when redelivered after the original's
    # record was pruned: two payments for one key and two decisions for the retry.
    state = funded()
    original = payment("A", "B", 100, request_id="p-1", idempotency_key="k", created_at_ms=0)
    state, _ = do(state, original, offset=1)
    retry = retry_of(original, request_id="p-2", created_at_ms=WINDOW_MS - 1)
    state, first = do(state, retry, offset=2)
    assert only_decision(first)["duplicate_of"] == "p-1"
    state, _ = do(state, topup("A", 1, created_at_ms=WINDOW_MS), offset=3)
    state, again = do(state, retry, offset=2)
    assert again == first
    assert balances_of(state) == {"EUR": (901, 0)}


def test_clock_never_goes_back() -> None:
    state, _ = do(funded(), topup("A", 1, created_at_ms=5_000))
    state, _ = do(state, topup("A", 1, created_at_ms=1_000))
    assert state.clock_ms == 5_000


# --------------------------------------------------------------------------------------
# Every decline code has a scenario
# --------------------------------------------------------------------------------------


def _scenario_idempotency_conflict() -> Outcomes:
    state, _ = do(funded(), payment("A", "B", 1, idempotency_key="k"))
    return do(state, payment("A", "B", 2, idempotency_key="k"))[1]


def _scenario_request_expired() -> Outcomes:
    state, _ = do(funded(), topup("A", 1, created_at_ms=WINDOW_MS + 1))
    return do(state, payment("A", "B", 1, created_at_ms=0))[1]


def _scenario_authorization_expired() -> Outcomes:
    return do(authorized(expires_at_ms=5), capture("A", "auth", created_at_ms=5))[1]


SCENARIOS: dict[str, Callable[[], Outcomes]] = {
    "insufficient_funds": lambda: do(funded("A", 1), payment("A", "B", 2))[1],
    "invalid_amount": lambda: do(funded(), payment("A", "B", 0))[1],
    "invalid_request": lambda: do(funded(), payment("A", "A", 1))[1],
    "currency_not_supported": lambda: do(funded(), payment("A", "B", 1, "XYZ"))[1],
    "account_closed": lambda: do(AccountState("A", status="CLOSED"), topup("A", 1))[1],
    "original_not_found": lambda: do(funded(), refund("A", "missing", 1))[1],
    "capture_exceeds_authorization": lambda: do(authorized(400), capture("A", "auth", 401))[1],
    "refund_exceeds_payment": lambda: do(paid(500), refund("A", "pay", 501))[1],
    "authorization_expired": _scenario_authorization_expired,
    "already_captured": lambda: do(paid(), capture("A", "pay"))[1],
    "already_voided": lambda: do(do(authorized(), void("A", "auth"))[0], void("A", "auth"))[1],
    "fx_rate_unavailable": lambda: do(funded(), payment("A", "B", 1, "JPY"))[1],
    "idempotency_conflict": _scenario_idempotency_conflict,
    "request_expired": _scenario_request_expired,
    "too_many_requests": lambda: do(
        funded(ctx=make_context(idempotency_keys_max=1)),
        payment("A", "B", 1),
        make_context(idempotency_keys_max=1),
    )[1],
    "fraudulent": lambda: do(funded(), payment("A", "B", 1), fraud=FRAUD)[1],
}


def test_every_decline_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(DECLINE_CODES)
    assert len(DECLINE_CODES) == len(set(DECLINE_CODES)) == 16


@pytest.mark.parametrize("code", DECLINE_CODES)
def test_decline_code(code: str) -> None:
    decision = declined(SCENARIOS[code](), code)
    assert decision["decided_at_ms"] is not None
    assert all(isinstance(decision[name], int) for name in ("amount_minor", "created_at_ms"))


def test_a_request_id_that_already_names_a_payment_is_refused() -> None:
    # BUG (fixed): a second request reusing request_id "X" under another idempotency key
    # replaced payment X's record -- orphaning its hold for good -- and emitted a second,
    # different transaction "X:payment" that a sink deduping on ids would drop.
    state = funded()
    state, _ = do(state, authorize("A", "B", 100, request_id="X", idempotency_key="k1"))
    state, out = do(state, payment("A", "C", 200, request_id="X", idempotency_key="k2"))
    assert "X" in declined(out, "invalid_request")["reasons"][0]
    assert balances_of(state) == {"EUR": (900, 100)}
    assert state.payments["X"].payee_id == "B"
    state, out = do(state, void("A", "X"))
    approved(out)
    assert balances_of(state) == {"EUR": (1000, 0)}
