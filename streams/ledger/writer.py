"""Write batches of ledger transactions to PostgreSQL: one database transaction per batch.

The fast path per batch: look up which transaction ids already exist (one indexed
query), COPY the new transactions and their entries in binary, then add the
batch's per-(account, currency) sums to ``account_balances``; all in one database
transaction, so balances always equal the entries they sum. A transaction already
in the ledger is skipped when its fingerprint matches (a redelivery or a replay)
and reported as a conflict when it does not. If a concurrent writer inserts the
same transaction first, the COPY fails on the primary key and the batch is simply
retried; if the database rejects a transaction the Python checks let through, the
batch is written one transaction at a time to find it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents.rules.ledger import account_type, balance_deltas

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KNOWN_ACCOUNTS_MAX = 1_000_000
UNIQUE_RACE_RETRIES_MAX = 3

_TX_COLUMNS = (
    "transaction_id, request_id, payment_id, kind, posted_at, entry_count, fingerprint, "
    "source_topic, source_partition, source_offset"
)
_TX_TYPES = ["text", "text", "text", "text", "timestamptz", "int4", "bytea", "text", "int4", "int8"]
_ENTRY_COLUMNS = (
    "entry_id, transaction_id, account_id, direction, amount_minor, currency, fx_rate, posted_at"
)
_ENTRY_TYPES = ["text", "text", "text", "text", "int8", "text", "numeric", "timestamptz"]


@dataclass(frozen=True, slots=True)
class SourcedTransaction:
    """A decoded, checked transaction and where it was read from."""

    tx: dict[str, Any]
    fingerprint: bytes
    topic: str
    partition: int
    offset: int


@dataclass
class WriteResult:
    written: int = 0
    entries: int = 0
    duplicates: int = 0
    # (transaction, reason): refused by the database or conflicting with what it holds.
    rejected: list[tuple[SourcedTransaction, str]] = field(default_factory=list)


def posted_at(ms: int) -> dt.datetime:
    """Exact: milliseconds since the epoch to an aware UTC datetime (no float rounding)."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def month_start(moment: dt.datetime) -> dt.datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: dt.datetime) -> dt.datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def partition_name(start: dt.datetime) -> str:
    return f"ledger_entries_y{start.year:04d}m{start.month:02d}"


class LedgerWriter:
    """Writes batches through one connection; the caller handles connection loss."""

    def __init__(self) -> None:
        self._partitions: set[str] = set()
        self._known_accounts: set[str] = set()

    def forget(self) -> None:
        """Drop caches that a lost or rolled-back connection may have made wrong."""
        self._partitions.clear()
        self._known_accounts.clear()

    def write(self, conn: Any, batch: list[SourcedTransaction]) -> WriteResult:
        """Write ``batch`` (checked transactions) exactly once; returns what happened."""
        import psycopg

        unique, result = self._dedupe(batch)
        if not unique:
            return result
        for attempt in range(1, UNIQUE_RACE_RETRIES_MAX + 1):
            try:
                self._ensure_partitions(conn, unique)
                with conn.transaction():
                    return self._write_batch(conn, unique, result)
            except psycopg.errors.UniqueViolation:
                # Another writer (a replay, a sink that lost its partitions) got there first.
                self._known_accounts.clear()
                log.info("ledger batch raced another writer (attempt %d); retrying", attempt)
            except (psycopg.errors.IntegrityError, psycopg.DataError) as exc:
                self._known_accounts.clear()
                log.warning("ledger batch refused by the database (%s); writing one by one", exc)
                return self._write_one_by_one(conn, unique, result)
        return self._write_one_by_one(conn, unique, result)

    def _dedupe(
        self, batch: list[SourcedTransaction]
    ) -> tuple[list[SourcedTransaction], WriteResult]:
        result = WriteResult()
        first: dict[str, SourcedTransaction] = {}
        for item in batch:
            txid = item.tx["transaction_id"]
            earlier = first.get(txid)
            if earlier is None:
                first[txid] = item
            elif earlier.fingerprint == item.fingerprint:
                result.duplicates += 1
            else:
                result.rejected.append((item, _conflict(txid, earlier)))
        return list(first.values()), result

    def _write_batch(
        self, conn: Any, batch: list[SourcedTransaction], result: WriteResult
    ) -> WriteResult:
        _create_staging(conn)
        _copy_rows(conn, "batch_ids", ["text"], ((item.tx["transaction_id"],) for item in batch))
        existing = dict(
            conn.execute(
                "SELECT t.transaction_id, t.fingerprint FROM transactions t "
                "JOIN batch_ids USING (transaction_id)"
            ).fetchall()
        )
        new: list[SourcedTransaction] = []
        for item in batch:
            held = existing.get(item.tx["transaction_id"])
            if held is None:
                new.append(item)
            elif bytes(held) == item.fingerprint:
                result.duplicates += 1
            else:
                result.rejected.append(
                    (item, f"{item.tx['transaction_id']}: already in the ledger with different "
                           "content (a conflicting duplicate)")
                )  # fmt: skip
        if not new:
            return result
        self._insert_accounts(conn, new)
        result.entries += self._copy(conn, new)
        self._add_balances(conn, [item.tx for item in new])
        result.written += len(new)
        return result

    def _copy(self, conn: Any, batch: list[SourcedTransaction]) -> int:
        entries = 0
        with conn.cursor() as cur:
            with cur.copy(f"COPY transactions ({_TX_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_TX_TYPES)
                for item in batch:
                    tx = item.tx
                    copy.write_row((
                        tx["transaction_id"], tx["request_id"], tx["payment_id"], tx["kind"],
                        posted_at(tx["posted_at_ms"]), len(tx["entries"]), item.fingerprint,
                        item.topic, item.partition, item.offset,
                    ))  # fmt: skip
            sql = f"COPY ledger_entries ({_ENTRY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            with cur.copy(sql) as copy:
                copy.set_types(_ENTRY_TYPES)
                for item in batch:
                    tx = item.tx
                    txid, when = tx["transaction_id"], posted_at(tx["posted_at_ms"])
                    for e in tx["entries"]:
                        rate = e["fx_rate"]
                        copy.write_row((
                            e["entry_id"], txid, e["account_id"], e["direction"],
                            e["amount_minor"], e["currency"],
                            Decimal(rate) if rate is not None else None, when,
                        ))  # fmt: skip
                    entries += len(tx["entries"])
        return entries

    def _insert_accounts(self, conn: Any, batch: list[SourcedTransaction]) -> None:
        first_seen: dict[str, int] = {}
        for item in batch:
            when = item.tx["posted_at_ms"]
            for e in item.tx["entries"]:
                account = e["account_id"]
                if account not in self._known_accounts and account not in first_seen:
                    first_seen[account] = when
        if not first_seen:
            return
        accounts = sorted(first_seen)
        _copy_rows(
            conn, "batch_accounts", ["text", "text", "timestamptz"],
            ((a, account_type(a), posted_at(first_seen[a])) for a in accounts),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO accounts (account_id, account_type, first_posted_at) "
            "SELECT * FROM batch_accounts ORDER BY 1 ON CONFLICT (account_id) DO NOTHING"
        )
        if len(self._known_accounts) + len(accounts) > KNOWN_ACCOUNTS_MAX:
            self._known_accounts.clear()
        # Certain only once committed: every failure path calls forget() or clears it.
        self._known_accounts.update(accounts)

    def _add_balances(self, conn: Any, transactions: list[dict[str, Any]]) -> None:
        deltas = balance_deltas(transactions)
        _copy_rows(
            conn, "batch_deltas", ["text", "text", "int8", "int8", "int8"],
            ((a, c, row[0], row[1], row[2]) for (a, c), row in deltas.items()),
        )  # fmt: skip
        # Sorted, so concurrent writers lock balance rows in the same order (no deadlock).
        conn.execute(
            """INSERT INTO account_balances AS b (account_id, currency, balance_minor,
                   debits_minor, credits_minor, entry_count, updated_at)
               SELECT account_id, currency, credits_minor - debits_minor, debits_minor,
                      credits_minor, entry_count, now()
               FROM batch_deltas ORDER BY account_id, currency
               ON CONFLICT (account_id, currency) DO UPDATE SET
                   balance_minor = b.balance_minor + EXCLUDED.balance_minor,
                   debits_minor = b.debits_minor + EXCLUDED.debits_minor,
                   credits_minor = b.credits_minor + EXCLUDED.credits_minor,
                   entry_count = b.entry_count + EXCLUDED.entry_count,
                   updated_at = EXCLUDED.updated_at"""
        )

    def _write_one_by_one(
        self, conn: Any, batch: list[SourcedTransaction], result: WriteResult
    ) -> WriteResult:
        import psycopg

        for item in batch:
            single = WriteResult()
            try:
                with conn.transaction():
                    self._write_batch(conn, [item], single)
            except (psycopg.errors.IntegrityError, psycopg.DataError) as exc:
                self._known_accounts.clear()
                reason = str(exc).strip().splitlines()[0]
                result.rejected.append((item, f"refused by PostgreSQL: {reason}"))
                continue
            result.written += single.written
            result.entries += single.entries
            result.duplicates += single.duplicates
            result.rejected += single.rejected
        return result

    def _ensure_partitions(self, conn: Any, batch: list[SourcedTransaction]) -> None:
        """Create the month partitions this batch needs, each in its own short transaction."""
        months = {month_start(posted_at(item.tx["posted_at_ms"])) for item in batch}
        for start in sorted(months):
            name = partition_name(start)
            if name in self._partitions:
                continue
            ensure_partition(conn, start)
            self._partitions.add(name)


def ensure_partition(conn: Any, start: dt.datetime) -> None:
    import psycopg
    from psycopg import sql

    name = partition_name(start)
    statement = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF ledger_entries FOR VALUES FROM ({}) TO ({})"
    ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(next_month(start)))
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.DuplicateTable:
        pass  # a concurrent writer created it between our check and our CREATE


def _create_staging(conn: Any) -> None:
    """Per-session staging tables, emptied at every commit (cheap binary COPY targets)."""
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS batch_ids (transaction_id text)
               ON COMMIT DELETE ROWS;
           CREATE TEMP TABLE IF NOT EXISTS batch_accounts (
               account_id text, account_type text, first_posted_at timestamptz)
               ON COMMIT DELETE ROWS;
           CREATE TEMP TABLE IF NOT EXISTS batch_deltas (
               account_id text, currency text, debits_minor int8, credits_minor int8,
               entry_count int8) ON COMMIT DELETE ROWS"""
    )


def _copy_rows(conn: Any, table: str, types: list[str], rows: Any) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _conflict(txid: str, earlier: SourcedTransaction) -> str:
    return (
        f"{txid}: same transaction id as {earlier.topic}[{earlier.partition}]@{earlier.offset} "
        "with different content (a conflicting duplicate)"
    )
