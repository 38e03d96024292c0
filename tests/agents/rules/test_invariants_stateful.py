"""The invariants of ARCHITECTURE.md, checked after every step of random histories.

A small world -- four accounts on two partitions, EUR/JPY/KWD with FX rates (direct
and inverse pairs), an overdraft -- gets random sequences of every request kind,
including retries with new request ids, conflicting key reuse, redeliveries at the
same position, duplicates produced at a new position, captures/voids/refunds of
real and unknown payments, clock jumps past hold expiry and the idempotency window,
and stale rates. Legs are routed to the partition of the account they name and
applied in partition order, late (other steps run meanwhile) and sometimes twice.

After every step, on the live world and on a copy where every pending leg has been
delivered ("settled"):
1. money is int (never float or bool);
2. no request moves money twice: a ledger transaction id is only ever re-emitted
   identically, a redelivery changes no balance, and an idempotency key has at most
   one request that was decided on its own (the others are copies or conflicts);
3. every request has exactly one effective decision, and every later decision for it
   is identical (a redelivery after the idempotency window may only be declined
   request_expired); once settled, every request has a decision;
4. available >= -overdraft, held == the open holds, refunded + pending <= captured;
5. every transaction balances per currency; settled, each customer's ledger balance
   equals available + held;
6. settled, customer balances per currency == top-ups - payouts - FX clearing
   balance, and all ledger accounts sum to zero per currency.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agents.rules.decide import NO_FRAUD, Context, FraudAssessment, is_customer_account
from agents.rules.records import Decision, Request
from agents.rules.state import AccountState
from tests.agents.rules.rules_builders import (
    AMOUNT_MAX,
    World,
    authorize,
    capture,
    make_context,
    make_quote,
    make_request,
    payment,
    payout,
    rates,
    refund,
    retry_of,
    topup,
    transaction_is_balanced,
    void,
)

ACCOUNTS = ("A", "B", "C", "D")
HOMES = {"A": "EUR", "B": "JPY", "C": "KWD", "D": "EUR"}
OVERDRAFTS = {"D": {"EUR": 500}}
CURRENCIES = ("EUR", "JPY", "KWD")
WINDOW_MS = 20_000
POLICY = {
    "idempotency_window_ms": WINDOW_MS,
    "hold_default_ms": 5_000,
    "refund_window_ms": 2 * WINDOW_MS,
    "fx_rate_max_age_ms": 8_000,
    "idempotency_keys_max": 100_000,
}
RATES = (
    ("JPY/EUR", "0.006123", 35),  # EUR home pays JPY: direct
    ("EUR/KWD", "0.3312", 20),  # EUR home pays KWD: inverse; KWD home pays EUR: direct
    ("EUR/JPY", "162.7", 0),  # JPY home pays EUR: direct
    ("KWD/JPY", "480.5", 15),  # JPY home pays KWD: direct; KWD home pays JPY: inverse
)
SEED_MINOR = {"EUR": 200_000, "JPY": 300_000, "KWD": 60_000}  # about 2000 EUR each
SEED_PAYMENTS = (
    (payment, "A", "B", 10_000, "EUR"),
    (payment, "B", "C", 2_500, "KWD"),  # JPY home pays KWD: FX, direct pair
    (payment, "C", "A", 4_321, "JPY"),  # KWD home pays JPY: FX, inverse pair
    (authorize, "D", "A", 5_000, "EUR"),
    (authorize, "A", "C", 777, "KWD"),  # FX hold, inverse pair
)

amounts = st.one_of(
    st.integers(min_value=1, max_value=3_000),
    st.sampled_from([1, 99, 100, 12_345, 10**6, 10**12]),
)
fraud_actions = st.sampled_from(["APPROVE"] * 8 + ["REVIEW", "DECLINE"])
picks = st.integers(min_value=0, max_value=10**6)


def fraud_of(action: str) -> FraudAssessment:
    if action == "APPROVE":
        return NO_FRAUD
    return FraudAssessment(0.9, "m-test", action, (f"{action.lower()}-reason",))  # type: ignore[arg-type]


def assert_late_redelivery(effective: Decision, later: Decision) -> None:
    """The one allowed difference: a request redelivered after the idempotency window,
    whose record is gone, is declined request_expired (moving nothing, see the rules)."""
    assert later["decline_code"] == "request_expired", ("decision changed", effective, later)
    assert effective["decline_code"] != "request_expired", (
        "expired twice, differently",
        effective,
        later,
    )


def int_money(value: Any) -> bool:
    return type(value) is int and -AMOUNT_MAX <= value <= AMOUNT_MAX


class PaymentWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now_ms = 1_000
        self.rates_as_of_ms = self.now_ms
        self.world = World(self._context(), partitions=2)
        self.sent: list[Request] = []
        self.originals: list[Request] = []
        self.payments: list[tuple[str, str, str, int]] = []  # payer, id, currency, amount
        self.counter = 0
        self.reported = 0

    # -- plumbing ---------------------------------------------------------------------
    def _context(self) -> Context:
        quotes = [
            make_quote(pair, rate, spread, self.rates_as_of_ms) for pair, rate, spread in RATES
        ]
        return make_context(rates(*quotes), now_ms=self.now_ms, **POLICY)

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _send(
        self, request: Request, fraud: FraudAssessment = NO_FRAUD, original: bool = True
    ) -> None:
        self.world.send(request, fraud)
        self.sent.append(request)
        if original:
            self.originals.append(request)
        if request["kind"] in ("PAYMENT", "AUTHORIZE") and request["currency"] in CURRENCIES:
            self.payments.append(
                (
                    request["account_id"],
                    request["request_id"],
                    request["currency"],
                    request["amount_minor"],
                )
            )

    def _snapshot(self) -> tuple[dict[tuple[str, str], int], set[str]]:
        totals = {
            (account, currency): balance.total_minor
            for account, state in self.world.states.items()
            for currency, balance in state.balances.items()
            if balance.total_minor
        }
        return totals, set(self.world.ledger.transactions)

    def _available(self, account: str, currency: str) -> int:
        balance = self.world.state(account).balances.get(currency)
        return balance.available_minor if balance else 0

    def _created_at(self, skew: int) -> int:
        return max(0, self.now_ms - skew)

    # -- setup ------------------------------------------------------------------------
    @initialize()
    def open_accounts(self) -> None:
        """Fund every account in its home currency and start a few payments (legs pending),
        so that refunds, captures and voids of real payments are reached early."""
        for account in ACCOUNTS:
            self.world.states[account] = AccountState(
                account, overdraft_minor=dict(OVERDRAFTS.get(account, {}))
            )
            home = HOMES[account]
            seed = topup(account, SEED_MINOR[home], home, request_id=self._id("seed"))
            seed["created_at_ms"] = self.now_ms
            self._send(seed)
        for maker, payer, payee, amount, currency in SEED_PAYMENTS:
            request = maker(payer, payee, amount, currency, request_id=self._id("seed-p"))
            request["created_at_ms"] = self.now_ms
            self._send(request)

    # -- requests ---------------------------------------------------------------------
    @rule(
        account=st.sampled_from(ACCOUNTS),
        currency=st.sampled_from(CURRENCIES),
        amount=amounts,
        skew=st.sampled_from([0, 0, 0, 700, WINDOW_MS + 1]),
    )
    def send_topup(self, account: str, currency: str, amount: int, skew: int) -> None:
        self._send(
            topup(
                account,
                amount,
                currency,
                request_id=self._id("t"),
                created_at_ms=self._created_at(skew),
            )
        )

    @rule(
        kind=st.sampled_from(["PAYMENT", "PAYMENT", "AUTHORIZE"]),
        payer=st.sampled_from(ACCOUNTS),
        payee_offset=st.integers(min_value=1, max_value=len(ACCOUNTS) - 1),
        currency=st.sampled_from(CURRENCIES),
        amount=st.one_of(amounts, st.sampled_from(["exact", "exact+1"])),
        action=fraud_actions,
        expires_in=st.sampled_from([None, None, 1, 2_000, 50_000]),
        skew=st.sampled_from([0, 0, 0, 700, WINDOW_MS + 1]),
    )
    def send_payment(
        self,
        kind: str,
        payer: str,
        payee_offset: int,
        currency: str,
        amount: int | str,
        action: str,
        expires_in: int | None,
        skew: int,
    ) -> None:
        if isinstance(amount, str):  # the boundary: exactly the available balance, or one more
            amount = max(1, self._available(payer, currency) + (amount == "exact+1"))
        payee = ACCOUNTS[(ACCOUNTS.index(payer) + payee_offset) % len(ACCOUNTS)]
        created = self._created_at(skew)
        expires = None if expires_in is None or kind != "AUTHORIZE" else created + expires_in
        maker = payment if kind == "PAYMENT" else authorize
        request = maker(
            payer,
            payee,
            amount,
            currency,
            request_id=self._id("p"),
            created_at_ms=created,
            expires_at_ms=expires,
        )
        self._send(request, fraud_of(action))

    @rule(
        account=st.sampled_from(ACCOUNTS),
        currency=st.sampled_from(CURRENCIES),
        amount=st.one_of(amounts, st.just("all")),
        action=fraud_actions,
        bad=st.sampled_from([None] * 4 + ["currency", "negative", "reserved", "self", "no-id"]),
    )
    def send_payout(
        self, account: str, currency: str, amount: int | str, action: str, bad: str | None
    ) -> None:
        if bad is not None:
            self._send_bad_request(bad)
            return
        if amount == "all":  # drain the account: refunds from it then decline
            amount = max(1, self._available(account, currency))
        assert isinstance(amount, int)
        request = payout(
            account, amount, currency, request_id=self._id("o"), created_at_ms=self.now_ms
        )
        self._send(request, fraud_of(action))

    def _send_bad_request(self, case: str) -> None:
        rid = self._id("x")
        request = {
            "currency": make_request("PAYMENT", "A", 1, "XYZ", counterparty_id="B", request_id=rid),
            "negative": make_request("PAYOUT", "B", -5, "EUR", request_id=rid),
            "reserved": make_request(
                "PAYMENT", "C", 1, "EUR", counterparty_id="fx-clearing:EUR", request_id=rid
            ),
            "self": make_request("PAYMENT", "D", 1, "EUR", counterparty_id="D", request_id=rid),
            "no-id": make_request("REFUND", "A", 1, "EUR", request_id=rid),
        }[case]
        request["created_at_ms"] = self.now_ms
        self._send(request)

    def _about(
        self, pick: int, unknown: bool, wrong_payer: bool, statuses: tuple[str, ...]
    ) -> tuple[str, str, str, int]:
        """A payment to capture/void/refund: unknown, any known one, or (mostly) one whose
        record is in one of ``statuses``, so that the happy paths are reached often."""
        if unknown or not self.payments:
            return ACCOUNTS[pick % len(ACCOUNTS)], "no-such-payment", "EUR", 1
        candidates = self.payments
        if pick % 4:
            live = [
                known
                for known in self.payments
                if (record := self.world.state(known[0]).payments.get(known[1])) is not None
                and record.status in statuses
            ]
            candidates = live or candidates
        payer, payment_id, currency, amount = candidates[pick % len(candidates)]
        if wrong_payer:
            payer = ACCOUNTS[(ACCOUNTS.index(payer) + 1) % len(ACCOUNTS)]
        return payer, payment_id, currency, amount

    @rule(
        pick=picks,
        unknown=st.sampled_from([False] * 4 + [True]),
        wrong_payer=st.sampled_from([False] * 7 + [True]),
        how=st.sampled_from(["zero", "full", "part", "over", "other-currency", "void", "void"]),
    )
    def send_capture_or_void(self, pick: int, unknown: bool, wrong_payer: bool, how: str) -> None:
        payer, payment_id, currency, amount = self._about(
            pick, unknown, wrong_payer, ("AUTHORIZED", "REVIEW")
        )
        rid = self._id("c")
        if how == "void":
            self._send(void(payer, payment_id, currency, request_id=rid, created_at_ms=self.now_ms))
            return
        value = {"full": amount, "part": max(1, amount // 3), "over": amount + 1}.get(how, 0)
        if how == "other-currency":
            currency = CURRENCIES[(CURRENCIES.index(currency) + 1) % len(CURRENCIES)]
        self._send(
            capture(payer, payment_id, value, currency, request_id=rid, created_at_ms=self.now_ms)
        )

    @rule(
        pick=picks,
        unknown=st.sampled_from([False] * 7 + [True]),
        wrong_payer=st.sampled_from([False] * 7 + [True]),
        how=st.sampled_from(["one", "part", "rest", "rest+1", "full"]),
    )
    def send_refund(self, pick: int, unknown: bool, wrong_payer: bool, how: str) -> None:
        payer, payment_id, currency, amount = self._about(pick, unknown, wrong_payer, ("CAPTURED",))
        record = self.world.state(payer).payments.get(payment_id)
        rest = amount
        if record is not None:
            rest = record.captured_minor - record.refunded_minor - record.refund_pending_minor
        value = {"one": 1, "part": max(1, rest // 2), "rest": max(1, rest), "rest+1": rest + 1}
        self._send(
            refund(
                payer,
                payment_id,
                value.get(how, amount),
                currency,
                request_id=self._id("r"),
                created_at_ms=self.now_ms,
            )
        )

    # -- retries, conflicts, redeliveries ----------------------------------------------
    @rule(pick=picks, conflict=st.sampled_from([False, False, True]))
    def retry_with_new_request_id(self, pick: int, conflict: bool) -> None:
        """The producer retries (same key, new request_id), or reuses a key for another payload.

        Only requests inside the idempotency window are retried: after it the key has
        expired and a "retry" is a new request, which this model does not track as such.
        """
        recent = [r for r in self.originals if r["created_at_ms"] > self.now_ms - WINDOW_MS]
        if not recent:
            return
        again = retry_of(
            recent[pick % len(recent)], request_id=self._id("retry"), created_at_ms=self.now_ms
        )
        if conflict:
            again["amount_minor"] += 1
        self._send(again, original=False)

    @rule(pick=picks, same_position=st.booleans(), retries_only=st.booleans())
    def redeliver_request(self, pick: int, same_position: bool, retries_only: bool) -> None:
        """Read a message again at its position (crash before the commit, a replay), or
        the producer sent the same message twice (same request_id, a later offset).
        Retries are picked often: they are answered from another request's record."""
        logged = [
            (p, o)
            for p, log in enumerate(self.world.request_log)
            for o, message in enumerate(log)
            if not retries_only or message.request["request_id"].startswith("retry")
        ]
        if not logged:
            return
        partition, offset = logged[pick % len(logged)]
        before = self._snapshot()
        if same_position:
            outcomes = self.world.process(partition, offset)
        else:
            message = self.world.request_log[partition][offset]
            outcomes = self.world.send(message.request, message.fraud)
        assert self._snapshot() == before, "a redelivered request moved money"
        if any(d["decline_code"] == "request_expired" for d in outcomes.decisions):
            event("redelivery after the window")

    # -- legs -------------------------------------------------------------------------
    @rule(
        partition=st.integers(min_value=0, max_value=1),
        count=st.sampled_from([1, 2, 4, 1_000]),
    )
    def deliver_legs(self, partition: int, count: int) -> None:
        if count == 1_000:
            self.world.settle()
            return
        for _ in range(count):
            if self.world.deliver(partition) is None:
                return

    @rule(partition=st.integers(min_value=0, max_value=1), pick=picks)
    def redeliver_leg(self, partition: int, pick: int) -> None:
        consumed = self.world.leg_next[partition]
        if consumed:
            before = self._snapshot()
            self.world.apply_leg_at(partition, pick % consumed)
            assert self._snapshot() == before, "a redelivered leg moved money"

    # -- time -------------------------------------------------------------------------
    @rule(
        step_ms=st.sampled_from(
            [1, 500, 3_000, 6_000, WINDOW_MS // 2, WINDOW_MS, WINDOW_MS + 1, "edge", "edge"]
        ),
        pick=picks,
        refresh_rates=st.booleans(),
    )
    def advance_clock(self, step_ms: int | str, pick: int, refresh_rates: bool) -> None:
        """Time passes; "edge" jumps to exactly the end of an earlier request's window,
        where its idempotency record is pruned."""
        if step_ms == "edge":
            created = self.sent[pick % len(self.sent)]["created_at_ms"]
            step_ms = max(0, created + WINDOW_MS - self.now_ms)
        assert isinstance(step_ms, int)
        self.now_ms += step_ms
        if refresh_rates:
            self.rates_as_of_ms = self.now_ms
        self.world.context = self._context()

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def report_coverage(self) -> None:
        """Label what this step produced, for --hypothesis-show-statistics."""
        for outcomes in self.world.emitted[self.reported :]:
            for decision in outcomes.decisions:
                copy = " (copy)" if decision["duplicate_of"] else ""
                fx = " fx" if decision["settled_currency"] else ""
                event(
                    f"{decision['kind']} {decision['decline_code'] or decision['status']}{fx}{copy}"
                )
            for note in outcomes.notifications:
                if note["event_type"] in ("authorization.expired", "refund.failed"):
                    event(note["event_type"])
        self.reported = len(self.world.emitted)

    @invariant()
    def money_is_int(self) -> None:
        for state in self.world.states.values():
            for balance in state.balances.values():
                assert type(balance.available_minor) is int and type(balance.held_minor) is int
            for record in state.payments.values():
                for name in (
                    "amount_minor",
                    "settled_amount_minor",
                    "captured_minor",
                    "settled_captured_minor",
                    "refunded_minor",
                    "settled_refunded_minor",
                    "refund_pending_minor",
                ):
                    assert int_money(getattr(record, name)), (name, record)
        for outcomes in self.world.emitted[-5:]:
            for decision in outcomes.decisions:
                assert int_money(decision["amount_minor"])
                assert decision["settled_amount_minor"] is None or int_money(
                    decision["settled_amount_minor"]
                )
                assert isinstance(decision["fraud_score"], float)
            for transaction in outcomes.transactions:
                for entry in transaction["entries"]:
                    assert int_money(entry["amount_minor"]) and entry["amount_minor"] >= 0
            for leg in outcomes.legs:
                assert int_money(leg["amount_minor"]) and leg["amount_minor"] > 0
            for note in outcomes.notifications:
                assert int_money(note["amount_minor"])

    @invariant()
    def balances_and_payments_are_consistent(self) -> None:
        for account, state in self.world.states.items():
            held: dict[str, int] = defaultdict(int)
            for record in state.payments.values():
                if record.status in ("AUTHORIZED", "REVIEW"):
                    held[record.settled_currency] += record.settled_amount_minor
                assert 0 <= record.captured_minor <= record.amount_minor, record
                assert (
                    record.refunded_minor + record.refund_pending_minor <= record.captured_minor
                ), record
                assert 0 <= record.settled_refunded_minor <= record.settled_captured_minor, record
                assert record.refunded_minor >= 0 and record.refund_pending_minor >= 0, record
            for currency, balance in state.balances.items():
                overdraft = state.overdraft_minor.get(currency, 0)
                assert balance.available_minor >= -overdraft, (account, currency, balance)
                assert balance.held_minor == held.get(currency, 0), (account, currency, balance)

    @invariant()
    def one_effective_decision_per_request(self) -> None:
        for effective, later in self.world.mismatches:
            assert_late_redelivery(effective, later)
        assert not self.world.notification_mismatches, self.world.notification_mismatches[:1]

    @invariant()
    def an_idempotency_key_decides_once(self) -> None:
        own: dict[tuple[str, str], set[str]] = defaultdict(set)
        for decision in self.world.decisions.values():
            if decision["duplicate_of"] is None and decision["decline_code"] not in (
                "idempotency_conflict",
                "request_expired",
            ):
                own[decision["account_id"], decision["idempotency_key"]].add(decision["request_id"])
        for key, request_ids in own.items():
            assert len(request_ids) == 1, (key, request_ids)

    @invariant()
    def transactions_balance(self) -> None:
        for transaction in self.world.ledger.transactions.values():
            assert transaction_is_balanced(transaction), transaction
            assert transaction["transaction_id"].startswith(transaction["request_id"] + ":")

    @invariant()
    def settled_world_reconciles(self) -> None:
        settled = self.world.clone()
        settled.settle()
        # 3. every request has its decision once all legs are delivered
        missing = {r["request_id"] for r in self.sent} - set(settled.decisions)
        assert not missing, missing
        for effective, later in settled.mismatches:
            assert_late_redelivery(effective, later)
        for state in settled.states.values():
            for record in state.payments.values():
                assert record.refund_pending_minor == 0, record
        ledger = settled.ledger.balances()
        # 5. the ledger per customer account equals the balance the worker holds
        customer: dict[str, int] = defaultdict(int)
        for account, state in settled.states.items():
            for currency, balance in state.balances.items():
                assert ledger.get((account, currency), 0) == balance.total_minor, (
                    account,
                    currency,
                )
                customer[currency] += balance.total_minor
        for (account, currency), amount in ledger.items():
            if is_customer_account(account):
                assert settled.states[account].balances[currency].total_minor == amount
        # 6. conservation, from the decisions (not the ledger) for the money in and out
        topups: dict[str, int] = defaultdict(int)
        payouts: dict[str, int] = defaultdict(int)
        for decision in settled.decisions.values():
            if decision["status"] == "APPROVED" and decision["duplicate_of"] is None:
                if decision["kind"] == "TOPUP":
                    topups[decision["currency"]] += decision["amount_minor"]
                elif decision["kind"] == "PAYOUT":
                    payouts[decision["currency"]] += decision["amount_minor"]
        clearing: dict[str, int] = defaultdict(int)
        everything: dict[str, int] = defaultdict(int)
        for (account, currency), amount in ledger.items():
            everything[currency] += amount
            if account.startswith("fx-clearing:"):
                assert account == f"fx-clearing:{currency}"
                clearing[currency] += amount
        for currency in set(customer) | set(topups) | set(payouts) | set(clearing):
            assert everything[currency] == 0, currency
            assert (
                customer[currency] == topups[currency] - payouts[currency] - clearing[currency]
            ), currency


TestPaymentWorld = PaymentWorld.TestCase
TestPaymentWorld.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
