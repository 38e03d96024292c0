"""``paystream verify``: an independent check of every invariant in ARCHITECTURE.md.

The verifier trusts nothing the pipeline says about itself. It reads what is
observable from the outside -- the requests topic, the decisions, the ledger
transactions and the dead letters; every version of every account in the
accounts changelog (what a worker restores from); optionally the workers' account
views; and PostgreSQL -- and checks, with its own code:

1. money is integer minor units in a known ISO 4217 currency (``not_integer_money``);
2. a request is applied at most once: per idempotency key at most one stored
   decision, retries are copies, conflicts only for another payload; no request,
   payment or transaction moves money twice (``key_decided_twice``,
   ``duplicate_mismatch``, ``false_conflict``, ``request_moved_money_twice``,
   ``conflicting_transaction``, ``captured_twice``, ``posting_without_approval``);
3. every request has exactly one effective decision; duplicates on the decisions
   topic are identical (``undecided_request``, ``conflicting_decisions``,
   ``decision_without_request``, ``decision_mismatch``, ``approval_without_posting``,
   ``amount_mismatch``);
4. no balance (any changelog version, or the ledger's) below zero or its overdraft
   limit, no negative hold; refunds never exceed the capture (``negative_balance``,
   ``refund_exceeds_capture``);
5. every transaction sums to zero per currency; the workers' balance of every
   customer == the sum of its postings == PostgreSQL (``unbalanced_transaction``,
   ``workers_vs_ledger``, ``view_vs_changelog``, ``postgres_*``);
6. money is conserved: per currency, customers + FX clearing == top-ups - payouts
   (``money_not_conserved``);
7. bad input is declined or dead-lettered, never silently dropped (``silent_drop``).

The checks are pure functions over plain data (:class:`Observed`); the I/O layer
(:class:`LiveVerifier`) fills it from Kafka, the workers and PostgreSQL,
incrementally, and re-checks until the system is consistent or the settle time
runs out: while payments are in flight (a leg not yet applied, the sink behind)
some checks fail transiently, a real violation stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.rules.decide import CLEARING_PREFIX, EXTERNAL_PREFIX
from agents.rules.money import CURRENCY_EXPONENTS
from streams import topics as names
from streams.errors import CommandError
from streams.settings import Settings

log = logging.getLogger(__name__)

# Declines that are derived from the request alone and never stored under its key.
UNSTORED_DECLINES = frozenset({"idempotency_conflict", "request_expired", "too_many_requests"})
# Approved decisions of these kinds move money, so they have exactly one transaction.
MONEY_KINDS = frozenset({"TOPUP", "PAYMENT", "CAPTURE", "REFUND", "PAYOUT"})
# The transaction each money-moving kind posts (its id is "<request_id>:<suffix>").
TX_KIND = {"TOPUP": "topup", "PAYMENT": "payment", "CAPTURE": "capture", "REFUND": "refund",
           "PAYOUT": "payout"}  # fmt: skip
PAYLOAD_FIELDS = ("kind", "account_id", "counterparty_id", "payment_id", "amount_minor",
                  "currency", "expires_at_ms")  # fmt: skip

DEFAULT_SETTLE_S = 60.0
SETTLE_POLL_S = 1.0
READ_TIMEOUT_S = 120.0
VIEW_TIMEOUT_S = 5.0
VIEWS_SAMPLE_DEFAULT = 50

BalanceKey = tuple[str, str]  # (account_id, currency)


# --------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with the ids and amounts an operator needs to look into it."""

    invariant: str
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.invariant:<28} {self.subject}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"invariant": self.invariant, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class RequestMessage:
    """One message on payments.requests: decoded, or the reason it could not be."""

    partition: int
    offset: int
    key: str | None
    request: Mapping[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class StateVersion:
    """The money part of one account value (one changelog record)."""

    account_id: str
    partition: int
    offset: int
    # currency -> (available_minor, held_minor)
    balances: Mapping[str, tuple[int, int]]
    overdraft: Mapping[str, int] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return {c: available + held for c, (available, held) in self.balances.items()}


@dataclass
class PostgresLedger:
    """What PostgreSQL holds, summarised."""

    balances: dict[BalanceKey, int]  # account_balances
    entry_sums: dict[BalanceKey, int]  # credits - debits over ledger_entries
    entry_counts: dict[str, int]  # transaction id -> entries stored
    unbalanced: list[tuple[str, str, int]]  # (transaction id, currency, net) with net != 0


@dataclass
class Observed:
    """Everything the checks look at, as plain data."""

    requests_topic: str = names.REQUESTS
    requests: list[RequestMessage] = field(default_factory=list)
    decisions: list[Mapping[str, Any]] = field(default_factory=list)
    transactions: list[Mapping[str, Any]] = field(default_factory=list)
    dead_letters: list[Mapping[str, Any]] = field(default_factory=list)
    states: dict[str, StateVersion] = field(default_factory=dict)  # latest per account
    # Violations found while reading: superseded changelog versions (not kept) and outputs
    # that do not decode.
    read_violations: list[Violation] = field(default_factory=list)
    views: dict[str, dict[str, tuple[int, int]]] | None = None  # account -> ccy -> (avail, held)
    postgres: PostgresLedger | None = None


@dataclass
class VerifyReport:
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    elapsed_s: float = 0.0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_invariant(self) -> dict[str, int]:
        return dict(Counter(v.invariant for v in self.violations))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "violations_by_invariant": self.by_invariant(),
            "violations": [v.to_dict() for v in self.violations],
            "elapsed_s": round(self.elapsed_s, 3),
            "attempts": self.attempts,
        }


def is_customer(account_id: str) -> bool:
    return not account_id.startswith((EXTERNAL_PREFIX, CLEARING_PREFIX))


def payload(request: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two requests under one key "the same": everything but ids, clock, metadata."""
    return tuple(request.get(name) for name in PAYLOAD_FIELDS)


def _signed(entry: Mapping[str, Any]) -> int:
    amount = int(entry["amount_minor"])
    return amount if entry["direction"] == "CREDIT" else -amount


def ledger_balances(transactions: Iterable[Mapping[str, Any]]) -> dict[BalanceKey, int]:
    """credits - debits per (account, currency), each transaction id counted once."""
    seen: set[str] = set()
    totals: dict[BalanceKey, int] = defaultdict(int)
    for tx in transactions:
        if tx["transaction_id"] in seen:
            continue
        seen.add(tx["transaction_id"])
        for entry in tx["entries"]:
            totals[(entry["account_id"], entry["currency"])] += _signed(entry)
    return dict(totals)


def _nonzero(values: Mapping[BalanceKey, int]) -> dict[BalanceKey, int]:
    return {k: v for k, v in values.items() if v}


# --------------------------------------------------------------------------------------
# The checks: pure functions of plain data
# --------------------------------------------------------------------------------------


def effective_decisions(
    decisions: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, Mapping[str, Any]], list[Violation]]:
    """The decision of each request id; two different ones for one id are a violation."""
    first: dict[str, Mapping[str, Any]] = {}
    found: list[Violation] = []
    reported: set[str] = set()
    for decision in decisions:
        rid = decision["request_id"]
        earlier = first.setdefault(rid, decision)
        if earlier is not decision and dict(earlier) != dict(decision) and rid not in reported:
            reported.add(rid)
            changed = sorted(k for k in earlier if earlier.get(k) != decision.get(k))
            found.append(Violation(
                "conflicting_decisions", rid,
                f"two different decisions: {_describe(earlier)} vs {_describe(decision)} "
                f"(fields differing: {', '.join(changed)})",
            ))  # fmt: skip
    return first, found


def _describe(decision: Mapping[str, Any]) -> str:
    code = decision.get("decline_code")
    status = f"{decision['status']}/{code}" if code else str(decision["status"])
    return f"{decision['kind']} {status} {decision['amount_minor']} {decision['currency']}" + (
        f" duplicate_of={decision['duplicate_of']}" if decision.get("duplicate_of") else ""
    )


def check_requests(
    requests: list[RequestMessage],
    decided: Mapping[str, Mapping[str, Any]],
    dead_letters: Iterable[Mapping[str, Any]],
    requests_topic: str,
) -> list[Violation]:
    """Invariants 3 and 7: every request decided exactly once, every bad message dead-lettered."""
    found: list[Violation] = []
    lettered = {
        (int(d["original_partition"]), int(d["original_offset"]))
        for d in dead_letters
        if d["original_topic"] == requests_topic
    }
    known: dict[str, Mapping[str, Any]] = {}
    for message in requests:
        where = f"{requests_topic}[{message.partition}]@{message.offset}"
        request = message.request
        bad_key = request is not None and message.key != request.get("account_id")
        if request is None or bad_key:
            if (message.partition, message.offset) not in lettered:
                why = message.error or f"key {message.key!r} is not the account id"
                found.append(Violation("silent_drop", where,
                                       f"neither decided nor dead-lettered ({why})"))  # fmt: skip
            continue
        rid = request["request_id"]
        known.setdefault(rid, request)
        decision = decided.get(rid)
        if decision is None:
            found.append(Violation(
                "undecided_request", rid,
                f"{request['kind']} {request['amount_minor']} {request['currency']} of "
                f"{request['account_id']} at {where} has no decision",
            ))  # fmt: skip
    for rid, decision in decided.items():
        request = known.get(rid)
        if request is None:
            found.append(
                Violation(
                    "decision_without_request",
                    rid,
                    f"{_describe(decision)} answers no request on the topic",
                )
            )
            continue
        mismatched = [
            name for name in ("kind", "account_id", "amount_minor", "currency")
            if decision[name] != request[name]
        ]  # fmt: skip
        if mismatched:
            found.append(Violation(
                "decision_mismatch", rid,
                f"decision {_describe(decision)} does not match the request's "
                + ", ".join(f"{n}={request[n]!r}" for n in mismatched),
            ))  # fmt: skip
    return found


def check_money_types(
    decisions: Mapping[str, Mapping[str, Any]], transactions: Iterable[Mapping[str, Any]]
) -> list[Violation]:
    """Invariant 1: integer minor units, ISO 4217 currencies, on decisions and postings."""
    found: list[Violation] = []
    for rid, decision in decisions.items():
        for name in ("amount_minor", "settled_amount_minor"):
            value = decision.get(name)
            if value is not None and type(value) is not int:
                found.append(Violation("not_integer_money", rid, f"{name} is {value!r}"))
    for tx in transactions:
        for entry in tx["entries"]:
            amount, currency = entry["amount_minor"], entry["currency"]
            if type(amount) is not int or amount <= 0:
                found.append(
                    Violation(
                        "not_integer_money",
                        entry["entry_id"],
                        f"amount_minor {amount!r} is not a positive integer",
                    )
                )
            if currency not in CURRENCY_EXPONENTS:
                found.append(
                    Violation(
                        "not_integer_money",
                        entry["entry_id"],
                        f"currency {currency!r} is not an ISO 4217 code",
                    )
                )
    return found


def check_idempotency(
    requests: Iterable[RequestMessage], decided: Mapping[str, Mapping[str, Any]]
) -> list[Violation]:
    """Invariant 2: one stored decision per key; retries copy it; conflicts differ in payload."""
    groups: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for message in requests:
        request = message.request
        if request is None or message.key != request.get("account_id"):
            continue
        key = request["idempotency_key"] or request["request_id"]
        groups[(request["account_id"], key)].setdefault(request["request_id"], request)
    found: list[Violation] = []
    for (account, key), members in groups.items():
        stored = {
            rid: decided[rid] for rid in members
            if rid in decided and not decided[rid].get("duplicate_of")
            and decided[rid].get("decline_code") not in UNSTORED_DECLINES
        }  # fmt: skip
        if len(stored) > 1:
            found.append(Violation(
                "key_decided_twice", f"{account}/{key}",
                "several requests decided under one idempotency key: "
                + "; ".join(f"{rid} {_describe(d)}" for rid, d in sorted(stored.items())),
            ))  # fmt: skip
        for rid, request in members.items():
            decision = decided.get(rid)
            if decision is None:
                continue
            original_id = decision.get("duplicate_of")
            if original_id:
                original = decided.get(original_id)
                source = members.get(original_id)
                if original is None or source is None or original_id not in stored:
                    found.append(Violation(
                        "duplicate_mismatch", rid,
                        f"duplicate_of {original_id}, which is not a decided request under "
                        f"key {account}/{key}",
                    ))  # fmt: skip
                    continue
                same = all(
                    decision.get(name) == original.get(name)
                    for name in ("status", "decline_code", "payment_id", "settled_amount_minor")
                )
                if not same or payload(source) != payload(request):
                    found.append(Violation(
                        "duplicate_mismatch", rid,
                        f"{_describe(decision)} copies {original_id} ({_describe(original)}) "
                        f"but payload or outcome differ",
                    ))  # fmt: skip
            elif decision.get("decline_code") == "idempotency_conflict":
                others = [members[o] for o in stored if o != rid]
                if not others or all(payload(o) == payload(request) for o in others):
                    found.append(Violation(
                        "false_conflict", rid,
                        f"declined idempotency_conflict but key {account}/{key} holds no other "
                        "payload",
                    ))  # fmt: skip
    return found


def check_ledger(
    transactions: list[Mapping[str, Any]], decided: Mapping[str, Mapping[str, Any]]
) -> list[Violation]:
    """Invariants 2, 3, 4 and 5 on the ledger topic: each movement once, balanced, approved."""
    found: list[Violation] = []
    by_id: dict[str, Mapping[str, Any]] = {}
    for tx in transactions:
        txid = tx["transaction_id"]
        earlier = by_id.setdefault(txid, tx)
        if earlier is not tx and _tx_content(earlier) != _tx_content(tx):
            found.append(Violation(
                "conflicting_transaction", txid,
                f"two different contents under one id: {_tx_summary(earlier)} vs "
                f"{_tx_summary(tx)}",
            ))  # fmt: skip
    by_request: dict[str, list[str]] = defaultdict(list)
    moved: dict[str, list[tuple[str, int]]] = defaultdict(list)  # payment id -> (txid, payee amt)
    refunded: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for txid, tx in by_id.items():
        net: dict[str, int] = defaultdict(int)
        for entry in tx["entries"]:
            net[entry["currency"]] += _signed(entry)
        unbalanced = {c: n for c, n in net.items() if n}
        if unbalanced or len(tx["entries"]) < 2:
            found.append(Violation(
                "unbalanced_transaction", txid,
                f"{len(tx['entries'])} entries, net per currency "
                + ", ".join(f"{c} {n:+d}" for c, n in sorted(net.items())),
            ))  # fmt: skip
        rid = tx["request_id"]
        by_request[rid].append(txid)
        decision = decided.get(rid)
        if (
            decision is None
            or decision["status"] != "APPROVED"
            or decision.get("duplicate_of")
            or decision["kind"] not in MONEY_KINDS
        ):
            what = _describe(decision) if decision is not None else "no decision"
            found.append(Violation(
                "posting_without_approval", txid,
                f"{_tx_summary(tx)} moves money for request {rid}, whose decision is {what}",
            ))  # fmt: skip
        payment_id = tx.get("payment_id")
        if payment_id and tx["kind"] in ("payment", "capture"):
            moved[payment_id].append((txid, _customer_amount(tx, "CREDIT")))
        elif payment_id and tx["kind"] == "refund":
            refunded[payment_id].append((txid, _customer_amount(tx, "DEBIT")))
    for rid, txids in by_request.items():
        if len(txids) > 1:
            found.append(
                Violation(
                    "request_moved_money_twice", rid, f"transactions {', '.join(sorted(txids))}"
                )
            )
    for payment_id, captures in moved.items():
        if len(captures) > 1:
            found.append(Violation(
                "captured_twice", payment_id,
                "money moved by " + ", ".join(f"{t} ({a})" for t, a in sorted(captures)),
            ))  # fmt: skip
    for payment_id, refunds in refunded.items():
        total = sum(amount for _, amount in refunds)
        captured = sum(amount for _, amount in moved.get(payment_id, []))
        if total > captured:
            found.append(Violation(
                "refund_exceeds_capture", payment_id,
                f"refunded {total} (" + ", ".join(f"{t} {a}" for t, a in sorted(refunds))
                + f") but captured {captured}",
            ))  # fmt: skip
    for rid, decision in decided.items():
        if (
            decision["status"] != "APPROVED"
            or decision.get("duplicate_of")
            or decision["kind"] not in MONEY_KINDS
        ):
            continue
        txid = f"{rid}:{TX_KIND[decision['kind']]}"
        posted = by_id.get(txid)
        if posted is None:
            found.append(
                Violation(
                    "approval_without_posting",
                    rid,
                    f"{_describe(decision)} but no transaction {txid}",
                )
            )
            continue
        found += _amount_problems(decision, posted)
    return found


def _tx_content(tx: Mapping[str, Any]) -> tuple[Any, ...]:
    entries = tuple(
        (e["entry_id"], e["account_id"], e["direction"], e["amount_minor"], e["currency"],
         e.get("fx_rate"))
        for e in tx["entries"]
    )  # fmt: skip
    return (tx["request_id"], tx.get("payment_id"), tx["kind"], tx["posted_at_ms"], entries)


def _tx_summary(tx: Mapping[str, Any]) -> str:
    legs = ", ".join(
        f"{e['direction'][0]} {e['account_id']} {e['amount_minor']} {e['currency']}"
        for e in tx["entries"]
    )
    return f"{tx['kind']} [{legs}]"


def _customer_amount(tx: Mapping[str, Any], direction: str) -> int:
    return sum(
        int(e["amount_minor"])
        for e in tx["entries"]
        if e["direction"] == direction and is_customer(e["account_id"])
    )


def _amount_problems(decision: Mapping[str, Any], tx: Mapping[str, Any]) -> list[Violation]:
    """The posting moves what the decision says it did."""
    account, kind = decision["account_id"], decision["kind"]
    settled = decision.get("settled_amount_minor")
    settled_currency = decision.get("settled_currency") or decision["currency"]
    expected: list[tuple[str, str, int, str]] = []  # (direction, account, amount, currency)
    if kind == "TOPUP":
        expected.append(("CREDIT", account, decision["amount_minor"], decision["currency"]))
    elif kind in ("PAYMENT", "PAYOUT"):
        paid = settled if settled is not None else decision["amount_minor"]
        expected.append(("DEBIT", account, paid, settled_currency))
    for direction, who, amount, currency in expected:
        actual = sum(
            int(e["amount_minor"])
            for e in tx["entries"]
            if e["direction"] == direction and e["account_id"] == who and e["currency"] == currency
        )
        if actual != amount:
            return [Violation(
                "amount_mismatch", decision["request_id"],
                f"{_describe(decision)} but {tx['transaction_id']} posts {direction} {who} "
                f"{actual} {currency}, expected {amount}",
            )]  # fmt: skip
    return []


def check_state_version(version: StateVersion) -> list[Violation]:
    """Invariant 4 on one account value: available >= -overdraft, held >= 0, integers."""
    found: list[Violation] = []
    for currency, (available, held) in sorted(version.balances.items()):
        where = f"{version.account_id} {currency}"
        at = f"changelog[{version.partition}]@{version.offset}"
        if type(available) is not int or type(held) is not int:
            found.append(
                Violation(
                    "not_integer_money", where, f"available {available!r}, held {held!r} at {at}"
                )
            )
            continue
        floor = -int(version.overdraft.get(currency, 0))
        if available < floor or held < 0:
            found.append(Violation(
                "negative_balance", where,
                f"available {available} (limit {floor}), held {held} at {at}",
            ))  # fmt: skip
    return found


def check_balances(
    states: Mapping[str, StateVersion],
    ledger: Mapping[BalanceKey, int],
    views: Mapping[str, Mapping[str, tuple[int, int]]] | None,
) -> list[Violation]:
    """Invariants 4 and 5: the workers' balances equal the ledger's; none below zero."""
    found: list[Violation] = []
    workers = {
        (account, currency): total
        for account, state in states.items()
        for currency, total in state.totals().items()
    }
    customers = {k: v for k, v in ledger.items() if is_customer(k[0])}
    for key in sorted(set(_nonzero(workers)) | set(_nonzero(customers))):
        held, posted = workers.get(key, 0), customers.get(key, 0)
        if held != posted:
            found.append(Violation(
                "workers_vs_ledger", f"{key[0]} {key[1]}",
                f"workers hold {held}, postings sum to {posted} (difference {held - posted:+d})",
            ))  # fmt: skip
    for key, posted in sorted(customers.items()):
        if posted < 0:
            found.append(
                Violation("negative_balance", f"{key[0]} {key[1]}", f"ledger balance {posted}")
            )
    for account, balances in sorted((views or {}).items()):
        state = states.get(account)
        logged = {c: b for c, b in (state.balances.items() if state else ()) if b != (0, 0)}
        shown = {c: b for c, b in balances.items() if b != (0, 0)}
        if logged != shown:
            found.append(Violation(
                "view_vs_changelog", account,
                f"the owning worker shows {dict(sorted(shown.items()))} (available, held), "
                f"the changelog {dict(sorted(logged.items()))}",
            ))  # fmt: skip
    return found


def check_postgres(
    postgres: PostgresLedger,
    ledger: Mapping[BalanceKey, int],
    transactions: Iterable[Mapping[str, Any]],
) -> list[Violation]:
    """Invariant 5 in the system of record: the same transactions, balanced, same balances."""
    found: list[Violation] = []
    on_topic: dict[str, int] = {}
    for tx in transactions:
        on_topic.setdefault(tx["transaction_id"], len(tx["entries"]))
    for txid, count in sorted(on_topic.items()):
        stored = postgres.entry_counts.get(txid)
        if stored is None:
            found.append(
                Violation(
                    "postgres_missing_transaction",
                    txid,
                    f"on the ledger topic ({count} entries), not in PostgreSQL",
                )
            )
        elif stored != count:
            found.append(
                Violation(
                    "postgres_incomplete_transaction",
                    txid,
                    f"{stored} entries stored, {count} on the topic",
                )
            )
    for txid in sorted(set(postgres.entry_counts) - set(on_topic)):
        found.append(
            Violation(
                "postgres_unknown_transaction", txid, "in PostgreSQL but not on the ledger topic"
            )
        )
    for txid, currency, net in postgres.unbalanced:
        found.append(Violation("postgres_unbalanced", txid, f"{currency} net {net:+d}"))
    for key in sorted(set(_nonzero(postgres.balances)) | set(_nonzero(postgres.entry_sums))):
        stored, summed = postgres.balances.get(key, 0), postgres.entry_sums.get(key, 0)
        if stored != summed:
            found.append(Violation(
                "postgres_balance_vs_entries", f"{key[0]} {key[1]}",
                f"account_balances {stored}, entries sum to {summed}",
            ))  # fmt: skip
    for key in sorted(set(_nonzero(postgres.balances)) | set(_nonzero(ledger))):
        stored, posted = postgres.balances.get(key, 0), ledger.get(key, 0)
        if stored != posted:
            found.append(Violation(
                "postgres_vs_ledger", f"{key[0]} {key[1]}",
                f"PostgreSQL {stored}, ledger topic {posted} (difference {stored - posted:+d})",
            ))  # fmt: skip
    return found


def check_conservation(
    decided: Mapping[str, Mapping[str, Any]],
    states: Mapping[str, StateVersion],
    ledger: Mapping[BalanceKey, int],
) -> list[Violation]:
    """Invariant 6: per currency, customers (workers) + FX clearing == top-ups - payouts."""
    flows: dict[str, int] = defaultdict(int)
    for decision in decided.values():
        if decision["status"] != "APPROVED" or decision.get("duplicate_of"):
            continue
        if decision["kind"] == "TOPUP":
            flows[decision["currency"]] += int(decision["amount_minor"])
        elif decision["kind"] == "PAYOUT":
            flows[decision["currency"]] -= int(decision["amount_minor"])
    held: dict[str, int] = defaultdict(int)
    for state in states.values():
        if is_customer(state.account_id):
            for currency, total in state.totals().items():
                held[currency] += total
    clearing: dict[str, int] = defaultdict(int)
    everything: dict[str, int] = defaultdict(int)
    for (account, currency), amount in ledger.items():
        everything[currency] += amount
        if account.startswith(CLEARING_PREFIX):
            clearing[currency] += amount
    found: list[Violation] = []
    for currency in sorted(set(flows) | set(held) | set(clearing)):
        inside = held[currency] + clearing[currency]
        if inside != flows[currency]:
            found.append(Violation(
                "money_not_conserved", currency,
                f"customers {held[currency]} + fx clearing {clearing[currency]} = {inside}, but "
                f"top-ups - payouts = {flows[currency]} (difference {inside - flows[currency]:+d})",
            ))  # fmt: skip
    for currency, total in sorted(everything.items()):
        if total:
            found.append(
                Violation(
                    "money_not_conserved", currency, f"all ledger accounts sum to {total:+d}, not 0"
                )
            )
    return found


def check(observed: Observed) -> tuple[list[Violation], dict[str, int]]:
    """Every check over ``observed``; returns the violations and what was looked at."""
    decided, violations = effective_decisions(observed.decisions)
    ledger = ledger_balances(observed.transactions)
    violations += check_requests(
        observed.requests, decided, observed.dead_letters, observed.requests_topic
    )
    violations += check_money_types(decided, observed.transactions)
    violations += check_idempotency(observed.requests, decided)
    violations += check_ledger(observed.transactions, decided)
    violations += observed.read_violations
    for state in observed.states.values():
        violations += check_state_version(state)
    violations += check_balances(observed.states, ledger, observed.views)
    if observed.postgres is not None:
        violations += check_postgres(observed.postgres, ledger, observed.transactions)
    violations += check_conservation(decided, observed.states, ledger)
    valid = [m for m in observed.requests if m.request is not None]
    counts = {
        "request_messages": len(observed.requests),
        "requests_distinct": len({m.request["request_id"] for m in valid if m.request}),
        "requests_undecodable": len(observed.requests) - len(valid),
        "decision_messages": len(observed.decisions),
        "decided": len(decided),
        "approved": sum(1 for d in decided.values() if d["status"] == "APPROVED"),
        "declined": sum(1 for d in decided.values() if d["status"] == "DECLINED"),
        "duplicates_answered": sum(1 for d in decided.values() if d.get("duplicate_of")),
        "transaction_messages": len(observed.transactions),
        "transactions": len({t["transaction_id"] for t in observed.transactions}),
        "dead_letters": len(observed.dead_letters),
        "accounts": len(observed.states),
    }
    if observed.views is not None:
        counts["views_checked"] = len(observed.views)
    if observed.postgres is not None:
        counts["postgres_transactions"] = len(observed.postgres.entry_counts)
    return violations, counts


# --------------------------------------------------------------------------------------
# The I/O layer: Kafka, the workers' views, PostgreSQL
# --------------------------------------------------------------------------------------


class TopicTail:
    """A topic read from its beginning, incrementally: each ``read`` goes to the current end."""

    def __init__(self, brokers: str, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": f"paystream-verify-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "log_level": 3,
            }
        )
        meta = self._consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self._consumer.close()
            raise CommandError(
                f"topic {topic} does not exist on {brokers}: check PAYSTREAM_TOPIC_PREFIX and "
                "PAYSTREAM_BROKERS (the verifier reads the topics a run wrote)"
            )
        self.partitions = sorted(meta.partitions)
        self._consumer.assign([TopicPartition(topic, p, -2) for p in self.partitions])
        self._next: dict[int, int] = {}

    def read(self, timeout_s: float = READ_TIMEOUT_S) -> list[Any]:
        """The messages added since the last call, up to the end offsets of now."""
        from confluent_kafka import TopicPartition

        deadline = time.monotonic() + timeout_s
        ends = {}
        for p in self.partitions:
            low, high = self._watermarks(p, deadline)
            if high > max(low, self._next.get(p, low)):
                ends[p] = high
        out: list[Any] = []
        while ends:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"could not read {self.topic} to its end within {timeout_s:.0f} s: is the "
                    "broker overloaded? retry, or raise --wait-s"
                )
            for msg in self._consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    continue
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                self._next[partition] = offset + 1
                out.append(msg)
            for p in list(ends):
                if self._next.get(p, -1) >= ends[p]:
                    del ends[p]
            if ends:  # compacted or aborted records leave gaps: trust the fetch position too
                positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
                for tp in positions:
                    if tp.offset >= ends[tp.partition]:
                        del ends[tp.partition]
        return out

    def _watermarks(self, partition: int, deadline: float) -> tuple[int, int]:
        """A partition's low and high offsets, asked again while the broker comes back.

        Right after a broker restart the client may not know the partition yet
        ("Unknown partition") or time out: both pass once its metadata is refreshed.
        """
        from confluent_kafka import KafkaException, TopicPartition

        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10
                )
                return int(low), int(high)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"could not read the offsets of {self.topic}[{partition}]: {exc}; is "
                        "the broker up? retry, or raise --wait-s"
                    ) from exc
                with contextlib.suppress(KafkaException):  # refresh the metadata
                    self._consumer.list_topics(self.topic, timeout=10)
                time.sleep(0.5)

    def close(self) -> None:
        self._consumer.close()


def state_version(partition: int, offset: int, raw: bytes) -> StateVersion:
    """The money part of one accounts-changelog value, decoded as the workers decode it."""
    from agents.rules.state import AccountState

    state = AccountState.from_bytes(raw)
    return StateVersion(
        account_id=state.account_id,
        partition=partition,
        offset=offset,
        balances={c: (b.available_minor, b.held_minor) for c, b in state.balances.items()},
        overdraft=dict(state.overdraft_minor),
    )


def read_postgres(dsn: str) -> PostgresLedger:
    """Balances, per-account sums of entries, entries per transaction, unbalanced ones."""
    import psycopg

    signed = "CASE direction WHEN 'CREDIT' THEN amount_minor ELSE -amount_minor END"
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        balances = {
            (a, c): int(b)
            for a, c, b in conn.execute(
                "SELECT account_id, currency, balance_minor FROM account_balances"
            )
        }
        sums = {
            (a, c): int(n)
            for a, c, n in conn.execute(
                f"SELECT account_id, currency, sum({signed}) FROM ledger_entries GROUP BY 1, 2"
            )
        }
        counts = {
            t: int(n)
            for t, n in conn.execute(
                "SELECT t.transaction_id, count(e.entry_id) FROM transactions t "
                "LEFT JOIN ledger_entries e USING (transaction_id) GROUP BY 1"
            )
        }
        unbalanced = [
            (t, c, int(n))
            for t, c, n in conn.execute(
                f"SELECT transaction_id, currency, sum({signed}) FROM ledger_entries "
                f"GROUP BY 1, 2 HAVING sum({signed}) <> 0"
            )
        ]
    return PostgresLedger(balances, sums, counts, unbalanced)


def read_view(base_url: str, account_id: str) -> dict[str, tuple[int, int]] | None:
    """An account's balances as the owning worker shows them (None when not found)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{base_url.rstrip('/')}/accounts/{urllib.parse.quote(account_id, safe='')}/"
    try:
        with urllib.request.urlopen(url, timeout=VIEW_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise
    return {
        c: (int(b["available_minor"]), int(b["held_minor"]))
        for c, b in body.get("balances", {}).items()
    }


def sink_lag(brokers: str, topic: str, group_id: str) -> int:
    """Messages on ``topic`` the consumer group has not committed yet."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group_id,
                         "enable.auto.commit": False, "log_level": 3})  # fmt: skip
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in meta.partitions], timeout=10
        )
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
        return lag
    finally:
        consumer.close()


class LiveVerifier:
    """Reads the running system incrementally and checks it until it is consistent."""

    def __init__(
        self,
        settings: Settings,
        dsn: str | None = None,
        view_urls: Iterable[str] = (),
        views_sample: int = VIEWS_SAMPLE_DEFAULT,
    ) -> None:
        from schemas.codec import load_codec

        self.settings = settings
        self.dsn = dsn
        self.view_urls = list(view_urls)
        self.views_sample = views_sample
        self.codec = load_codec(settings.schema_registry_url)
        self.observed = Observed(requests_topic=settings.topic(names.REQUESTS))
        brokers = settings.brokers
        self._tails: dict[str, TopicTail] = {}
        try:
            for logical in (names.REQUESTS, names.DECISIONS, names.LEDGER, names.DLQ):
                self._tails[logical] = TopicTail(brokers, settings.topic(logical))
            changelog = names.accounts_changelog(settings)
            self._tails["changelog"] = TopicTail(brokers, changelog)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for tail in self._tails.values():
            tail.close()
        self._tails.clear()

    def __enter__(self) -> LiveVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self) -> Observed:
        """Read what is new on every topic, then the views and PostgreSQL afresh."""
        from schemas.codec import SchemaError

        obs = self.observed
        for msg in self._tails[names.REQUESTS].read():
            key = msg.key()
            text_key = key.decode("utf-8", "replace") if key is not None else None
            value = msg.value()
            try:
                if value is None:
                    raise SchemaError("message has no value (tombstone)")
                request = self.codec.decode(names.REQUESTS, value, msg.partition(), msg.offset())
                obs.requests.append(RequestMessage(msg.partition(), msg.offset(), text_key,
                                                   request))  # fmt: skip
            except SchemaError as exc:
                obs.requests.append(
                    RequestMessage(msg.partition(), msg.offset(), text_key, None, str(exc))
                )
        for logical, into in (
            (names.DECISIONS, obs.decisions),
            (names.LEDGER, obs.transactions),
            (names.DLQ, obs.dead_letters),
        ):
            for msg in self._tails[logical].read():
                try:
                    value = msg.value()
                    if value is None:
                        raise SchemaError("message has no value (tombstone)")
                    into.append(self.codec.decode(logical, value, msg.partition(), msg.offset()))
                except SchemaError as exc:
                    obs.read_violations.append(Violation(
                        "undecodable_output", f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
                        str(exc),
                    ))  # fmt: skip
        for msg in self._tails["changelog"].read():
            key = msg.key()
            if key is None:
                continue
            account = key.decode("utf-8", "replace")
            if msg.value() is None:
                obs.states.pop(account, None)
                continue
            version = state_version(int(msg.partition() or 0), int(msg.offset() or 0),
                                    msg.value())  # fmt: skip
            previous = obs.states.get(account)
            if previous is not None:  # checked once it is superseded; the latest on each check
                obs.read_violations += check_state_version(previous)
            obs.states[account] = version
        if self.view_urls:
            obs.views = self._read_views()
        if self.dsn is not None:
            obs.postgres = read_postgres(self.dsn)
        return obs

    def _read_views(self) -> dict[str, dict[str, tuple[int, int]]]:
        customers = sorted(a for a in self.observed.states if is_customer(a))
        if not customers or self.views_sample <= 0:
            return {}
        step = max(1, len(customers) // self.views_sample)
        views: dict[str, dict[str, tuple[int, int]]] = {}
        for i, account in enumerate(customers[::step][: self.views_sample]):
            url = self.view_urls[i % len(self.view_urls)]
            try:
                found = read_view(url, account)
            except OSError as exc:
                log.warning("verify: account view %s from %s failed: %s", account, url, exc)
                continue
            if found is not None:
                views[account] = found
        return views

    def verify(
        self,
        settle_s: float = DEFAULT_SETTLE_S,
        on_attempt: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        """Collect and check until no violation is left or ``settle_s`` has passed."""
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            violations, counts = check(self.collect())
            if on_attempt is not None:
                on_attempt(attempts, len(violations))
            if not violations or time.monotonic() - started >= settle_s:
                break
            time.sleep(SETTLE_POLL_S)
        # Drop consecutive duplicates of one fact (a superseded version re-found) but keep order.
        unique = list(dict.fromkeys(violations))
        return VerifyReport(counts, unique, time.monotonic() - started, attempts)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def print_report(report: VerifyReport, out: Callable[[str], None] = print) -> None:
    counts = report.counts
    out(
        f"verify: {counts.get('request_messages', 0)} request messages "
        f"({counts.get('requests_distinct', 0)} distinct, "
        f"{counts.get('requests_undecodable', 0)} undecodable), "
        f"{counts.get('decided', 0)} decided ({counts.get('approved', 0)} approved, "
        f"{counts.get('declined', 0)} declined, {counts.get('duplicates_answered', 0)} "
        f"duplicates answered), {counts.get('transactions', 0)} transactions, "
        f"{counts.get('dead_letters', 0)} dead letters, {counts.get('accounts', 0)} accounts"
        + (
            f", {counts['postgres_transactions']} transactions in PostgreSQL"
            if "postgres_transactions" in counts
            else ""
        )
        + (f", {counts['views_checked']} account views" if "views_checked" in counts else "")
    )
    for violation in report.violations:
        out(violation.line())
    if report.ok:
        out(f"verify: 0 violations ({report.attempts} reads, {report.elapsed_s:.1f} s)")
    else:
        summary = ", ".join(f"{k} {n}" for k, n in sorted(report.by_invariant().items()))
        out(f"verify: {len(report.violations)} violations ({summary})")


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.wait_s < 0:
        raise CommandError(f"--wait-s {args.wait_s}: give 0 or more seconds")
    dsn = None
    if not args.no_postgres:
        from streams.ledger.db import database_dsn

        dsn = args.database_url or database_dsn(settings)
    try:
        with LiveVerifier(settings, dsn, args.worker_url or (), args.views) as verifier:
            report = verifier.verify(args.wait_s)
    except OSError as exc:
        raise CommandError(f"verify could not read the system: {exc}") from exc
    print_report(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every invariant against the topics, the workers' state and PostgreSQL",
    )
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: PAYSTREAM_DATABASE_URL)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL checks")
    parser.add_argument(
        "--worker-url", action="append",
        help="a worker's web address (http://127.0.0.1:6066) to compare account views; repeat",
    )  # fmt: skip
    parser.add_argument("--views", type=int, default=VIEWS_SAMPLE_DEFAULT,
                        help="accounts to compare through the views (a sample)")  # fmt: skip
    parser.add_argument(
        "--wait-s", type=float, default=DEFAULT_SETTLE_S,
        help="keep re-reading while payments settle, up to this long, before reporting",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the report to this JSON file")
    parser.set_defaults(func=_cmd_verify)
