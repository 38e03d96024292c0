"""What makes a ledger transaction acceptable, and what it does to balances: pure.

The workers build transactions (``decide``), the PostgreSQL sink checks them before
writing (a bad one becomes a dead letter with the reason this module gives) and the
reconciler sums them; all three use these definitions so they cannot disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from agents.rules.decide import CLEARING_PREFIX, EXTERNAL_PREFIX
from agents.rules.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS

ENTRIES_MAX = 64
ID_LENGTH_MAX = 512

# (account_id, currency) -> [debits_minor, credits_minor, entry_count]
BalanceDeltas = dict[tuple[str, str], list[int]]


def account_type(account_id: str) -> str:
    """customer, external (money outside the system) or fx_clearing (the house's FX book)."""
    if account_id.startswith(EXTERNAL_PREFIX):
        return "external"
    if account_id.startswith(CLEARING_PREFIX):
        return "fx_clearing"
    return "customer"


def transaction_problem(tx: dict[str, Any]) -> str | None:
    """Why ``tx`` must not enter the ledger, or None when it is a well-formed balanced one."""
    txid = tx.get("transaction_id")
    if not isinstance(txid, str) or not txid or len(txid) > ID_LENGTH_MAX or "\x00" in txid:
        return f"transaction_id {txid!r} is empty, longer than {ID_LENGTH_MAX} or has a NUL"
    for field in ("request_id", "kind"):
        if not tx.get(field) or "\x00" in tx[field]:
            return f"{txid}: {field} {tx.get(field)!r} is empty or has a NUL"
    entries = tx.get("entries") or []
    if not 2 <= len(entries) <= ENTRIES_MAX:
        return f"{txid}: {len(entries)} entries; a transaction has 2 to {ENTRIES_MAX}"
    net: dict[str, int] = {}
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry["entry_id"]
        if not entry_id or len(entry_id) > ID_LENGTH_MAX or not entry_id.startswith(txid):
            return f"{txid}: entry id {entry_id!r} is not derived from the transaction id"
        if "\x00" in entry_id:
            return f"{txid}: entry id {entry_id!r} has a NUL"
        if entry_id in seen:
            return f"{txid}: entry id {entry_id} appears twice"
        seen.add(entry_id)
        account = entry["account_id"]
        if not account or len(account) > ID_LENGTH_MAX or "\x00" in account:
            return f"{txid}: entry {entry_id} account {account!r} is empty, too long or has a NUL"
        amount, currency = entry["amount_minor"], entry["currency"]
        if type(amount) is not int or not 0 < amount <= AMOUNT_MINOR_MAX:
            return f"{txid}: entry {entry_id} amount_minor {amount!r} is not a positive integer"
        if currency not in CURRENCY_EXPONENTS:  # every key is three capital letters
            return f"{txid}: entry {entry_id} currency {currency!r} is not an ISO 4217 code"
        rate = entry.get("fx_rate")
        if rate is not None and not _positive_decimal(rate):
            return f"{txid}: entry {entry_id} fx_rate {rate!r} is not a positive decimal"
        if entry["direction"] == "CREDIT":
            net[currency] = net.get(currency, 0) + amount
        elif entry["direction"] == "DEBIT":
            net[currency] = net.get(currency, 0) - amount
        else:
            return f"{txid}: entry {entry_id} direction {entry['direction']!r}"
    if any(net.values()):
        unbalanced = {currency: total for currency, total in net.items() if total}
        detail = ", ".join(f"{c} net {t:+d}" for c, t in sorted(unbalanced.items()))
        return f"{txid}: postings do not sum to zero per currency ({detail})"
    return None


def _positive_decimal(text: str) -> bool:
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return False
    return value.is_finite() and value > 0


def fingerprint(tx: dict[str, Any]) -> bytes:
    """sha256 of everything a transaction says: a redelivered copy must match it exactly."""
    parts = [tx["transaction_id"], tx["request_id"], tx.get("payment_id") or "", tx["kind"],
             str(tx["posted_at_ms"])]  # fmt: skip
    for e in tx["entries"]:
        parts += (e["entry_id"], e["account_id"], e["direction"], str(e["amount_minor"]),
                  e["currency"], e.get("fx_rate") or "")  # fmt: skip
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def balance_deltas(transactions: Iterable[dict[str, Any]]) -> BalanceDeltas:
    """Debits, credits and entry count per (account, currency) over ``transactions``."""
    deltas: BalanceDeltas = {}
    for tx in transactions:
        for e in tx["entries"]:
            key = (e["account_id"], e["currency"])
            row = deltas.get(key)
            if row is None:
                row = deltas[key] = [0, 0, 0]
            row[0 if e["direction"] == "DEBIT" else 1] += e["amount_minor"]
            row[2] += 1
    return deltas


def net_balances(transactions: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """credits - debits per (account, currency): the ledger's view of every balance."""
    return {key: row[1] - row[0] for key, row in balance_deltas(transactions).items()}
