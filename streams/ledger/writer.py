"""Write batches of ledger transactions to PostgreSQL: one database transaction per batch.

The fast path per batch: COPY the transactions in binary, expecting them all to be
new (under a savepoint; if one is already held, look up which are, with one
primary-key probe per id, and COPY only the new ones), then their entries, then add
the batch's per-(account, currency) sums to ``account_balances``; all in one
database transaction, so balances always equal the entries they sum. Each
transaction's COPY rows are built when it is read (:class:`SourcedTransaction`, with
:mod:`streams.ledger.pgcopy`), so the thread that holds the connection only joins
bytes; entries go straight into their month's partition, which PostgreSQL can fill
a page at a time (see migration 0003). A transaction already
in the ledger is skipped when its fingerprint matches (a redelivery or a replay)
and reported as a conflict when it does not. If a concurrent writer inserts the
same transaction first, the COPY fails on the primary key and the batch is simply
retried; if the database rejects a transaction the Python checks let through, the
batch is written one transaction at a time to find it.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from agents.rules.ledger import account_type, balance_deltas
from streams.ledger import pgcopy

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KNOWN_ACCOUNTS_MAX = 1_000_000
UNIQUE_RACE_RETRIES_MAX = 3

_TX_COLUMNS = (
    "transaction_id, request_id, payment_id, kind, posted_at, entry_count, fingerprint, "
    "source_topic, source_partition, source_offset"
)
_ENTRY_COLUMNS = (
    "entry_id, transaction_id, account_id, direction, amount_minor, currency, fx_rate, posted_at"
)
# The batch's transactions already in the ledger, with their fingerprints. A scalar
# subquery is one primary-key probe per id, whatever the size of the ledger; a join was
# planned as a hash join over every transaction ever written, so each batch cost more
# than the one before.
HELD_SQL = (
    "SELECT transaction_id, fingerprint FROM (SELECT b.transaction_id, "
    "(SELECT t.fingerprint FROM transactions AS t WHERE t.transaction_id = b.transaction_id) "
    "AS fingerprint FROM batch_ids AS b) AS held WHERE fingerprint IS NOT NULL"
)
_COPY_TRANSACTIONS = f"COPY transactions ({_TX_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_ROW_OF_1 = pgcopy.fields(1)
_ROW_OF_3 = pgcopy.fields(3)
_ROW_OF_5 = pgcopy.fields(5)
_ROW_OF_8 = pgcopy.fields(8)
_ROW_OF_10 = pgcopy.fields(10)
_DIRECTIONS = {"DEBIT": pgcopy.text("DEBIT"), "CREDIT": pgcopy.text("CREDIT")}
_LENGTH, _INT4, _INT8 = pgcopy.LENGTH, pgcopy.INT4_FIELD, pgcopy.INT8_FIELD
_ACCOUNT_TYPES = {kind: pgcopy.text(kind) for kind in ("customer", "external", "fx_clearing")}
_SOURCES: dict[str, bytes] = {}  # topic name -> its COPY field


class SourcedTransaction:
    """A decoded, checked transaction, where it was read from, and its COPY rows.

    The rows are built here, on the thread that decodes; :class:`ValueError` if a
    value cannot be stored (the sink dead-letters the message with that reason).
    """

    __slots__ = ("entry_rows", "fingerprint", "id_row", "month", "offset", "partition",
                 "topic", "tx", "tx_row")  # fmt: skip

    def __init__(
        self, tx: dict[str, Any], fingerprint: bytes, topic: str, partition: int, offset: int
    ) -> None:
        self.tx = tx
        self.fingerprint = fingerprint
        self.topic = topic
        self.partition = partition
        self.offset = offset
        ms = tx["posted_at_ms"]
        when = pgcopy.timestamptz_ms(ms)
        moment = time.gmtime(ms // 1000)
        self.month: tuple[int, int] = (moment.tm_year, moment.tm_mon)
        # Inlined text fields (length + UTF-8): this runs once per transaction read.
        length = _LENGTH
        raw = tx["transaction_id"].encode()
        txid = length(len(raw)) + raw
        self.id_row = _ROW_OF_1 + txid
        request = tx["request_id"].encode()
        payment = tx["payment_id"]
        kind = tx["kind"].encode()
        entries = tx["entries"]
        source = _SOURCES.get(topic)
        if source is None:
            source = _SOURCES[topic] = pgcopy.text(topic)
        try:
            self.tx_row = b"".join((
                _ROW_OF_10, txid, length(len(request)), request,
                pgcopy.NULL if payment is None else pgcopy.text(payment),
                length(len(kind)), kind, when, _INT4(4, len(entries)),
                length(len(fingerprint)), fingerprint, source, _INT4(4, partition),
                _INT8(8, offset),
            ))  # fmt: skip
            rows: list[bytes] = []
            for e in entries:
                entry_id = e["entry_id"].encode()
                account = e["account_id"].encode()
                currency = e["currency"].encode()
                rate = e["fx_rate"]
                rows += (
                    _ROW_OF_8, length(len(entry_id)), entry_id, txid, length(len(account)),
                    account, _DIRECTIONS[e["direction"]], _INT8(8, e["amount_minor"]),
                    length(len(currency)), currency,
                    pgcopy.NULL if rate is None else pgcopy.numeric(rate), when,
                )  # fmt: skip
        except struct.error as exc:  # an integer that does not fit its column
            raise ValueError(f"a value does not fit its ledger column: {exc}") from exc
        self.entry_rows = b"".join(rows)

    def __repr__(self) -> str:
        return (
            f"SourcedTransaction({self.tx['transaction_id']!r} from "
            f"{self.topic}[{self.partition}]@{self.offset})"
        )


@dataclass
class WriteResult:
    written: int = 0
    entries: int = 0
    duplicates: int = 0
    # (transaction, reason): refused by the database or conflicting with what it holds.
    rejected: list[tuple[SourcedTransaction, str]] = field(default_factory=list)


class BalanceOverflow(ValueError):
    """A batch's sum for one balance does not fit the balance's 64-bit column."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A batch made ready for :meth:`LedgerWriter.write_plan` without a connection.

    ``unique`` holds each transaction id once; ``account_rows`` (first sighting of each
    account, as COPY rows) and ``delta_rows`` (per-(account, currency) sums, as COPY
    rows) describe all of ``unique``; the writer recomputes them for the part that is
    new when some of the batch is already in the ledger.
    """

    unique: list[SourcedTransaction]
    duplicates: int
    rejected: list[tuple[SourcedTransaction, str]]
    account_rows: dict[str, bytes]
    # None when a sum over the batch does not fit a 64-bit integer: written one by one.
    delta_rows: list[bytes] | None


def plan(batch: list[SourcedTransaction]) -> BatchPlan:
    """Drop repeats inside ``batch`` and build its account and balance rows: pure."""
    duplicates = 0
    rejected: list[tuple[SourcedTransaction, str]] = []
    first: dict[str, SourcedTransaction] = {}
    for item in batch:
        txid = item.tx["transaction_id"]
        earlier = first.get(txid)
        if earlier is None:
            first[txid] = item
        elif earlier.fingerprint == item.fingerprint:
            duplicates += 1
        else:
            rejected.append((item, _conflict(txid, earlier)))
    unique = list(first.values())
    seen: dict[str, int] = {}
    for item in unique:
        when = item.tx["posted_at_ms"]
        for e in item.tx["entries"]:
            if e["account_id"] not in seen:
                seen[e["account_id"]] = when
    length = _LENGTH
    accounts: dict[str, bytes] = {}
    for account, when in seen.items():
        raw, kind = account.encode(), _ACCOUNT_TYPES[account_type(account)]
        accounts[account] = b"".join(
            (_ROW_OF_3, length(len(raw)), raw, kind, pgcopy.timestamptz_ms(when))
        )
    rows: list[bytes] = []
    deltas: list[bytes] | None = rows
    try:
        for (account, currency), (debits, credits, count) in balance_deltas(
            item.tx for item in unique
        ).items():
            raw, code = account.encode(), currency.encode()
            rows.append(b"".join((
                _ROW_OF_5, length(len(raw)), raw, length(len(code)), code, _INT8(8, debits),
                _INT8(8, credits), _INT8(8, count),
            )))  # fmt: skip
    except struct.error:
        deltas = None
    return BatchPlan(unique, duplicates, rejected, accounts, deltas)


def posted_at(ms: int) -> dt.datetime:
    """Exact: milliseconds since the epoch to an aware UTC datetime (no float rounding)."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def month_start(moment: dt.datetime) -> dt.datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class LedgerWriter:
    """Writes batches through one connection; the caller handles connection loss."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[int, int], str] = {}
        self._known_accounts: set[str] = set()
        # Whether the next batch is expected to be wholly new to the ledger (the usual
        # case): its transactions are then COPYed without looking them up first.
        self._expect_new = True

    def forget(self) -> None:
        """Drop caches that a lost or rolled-back connection may have made wrong."""
        self._partitions.clear()
        self._known_accounts.clear()

    def write(self, conn: Any, batch: list[SourcedTransaction]) -> WriteResult:
        """Write ``batch`` (checked transactions) exactly once; returns what happened."""
        return self.write_plan(conn, plan(batch))

    def write_plan(self, conn: Any, planned: BatchPlan) -> WriteResult:
        """Write a batch :func:`plan` prepared (on any thread) exactly once."""
        import psycopg

        def fresh() -> WriteResult:  # each attempt counts from scratch: a rollback undoes it
            return WriteResult(duplicates=planned.duplicates, rejected=list(planned.rejected))

        unique = planned.unique
        if not unique:
            return fresh()
        for attempt in range(1, UNIQUE_RACE_RETRIES_MAX + 1):
            try:
                self._ensure_partitions(conn, unique)
                with conn.transaction():
                    return self._write_batch(conn, unique, fresh(), planned)
            except psycopg.errors.UniqueViolation:
                # Another writer (a replay, a sink that lost its partitions) got there first.
                self._known_accounts.clear()
                log.info("ledger batch raced another writer (attempt %d); retrying", attempt)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # A deadlock or serialization failure with a concurrent writer: PostgreSQL
                # rolled the batch back and it can simply run again.
                self._known_accounts.clear()
                log.warning("ledger batch rolled back by PostgreSQL (%s; attempt %d); retrying",
                            str(exc).strip().splitlines()[0], attempt)  # fmt: skip
            except (psycopg.errors.IntegrityError, psycopg.DataError, BalanceOverflow) as exc:
                self._known_accounts.clear()
                log.warning("ledger batch refused (%s); writing one by one", exc)
                return self._write_one_by_one(conn, unique, fresh())
        return self._write_one_by_one(conn, unique, fresh())

    def _write_batch(
        self, conn: Any, batch: list[SourcedTransaction], result: WriteResult,
        planned: BatchPlan | None = None,
    ) -> WriteResult:  # fmt: skip
        _create_staging(conn)
        if (
            planned is not None
            and planned.delta_rows is not None
            and self._expect_new
            and self._copy_transactions_if_new(conn, batch)
        ):
            # Otherwise one is held: the batch is looked up, and re-planned if part is.
            return self._write_rest(conn, batch, result, planned.account_rows, planned.delta_rows)
        _copy_bytes(conn, "COPY batch_ids FROM STDIN (FORMAT BINARY)",
                    [item.id_row for item in batch])  # fmt: skip
        existing = dict(conn.execute(HELD_SQL).fetchall())
        self._expect_new = not existing
        new = batch
        if existing:
            planned = None  # planned for all of the batch; part of it is in the ledger
            new = []
            for item in batch:
                held = existing.get(item.tx["transaction_id"])
                if held is None:
                    new.append(item)
                elif bytes(held) == item.fingerprint:
                    result.duplicates += 1
                else:
                    result.rejected.append(
                        (item, f"{item.tx['transaction_id']}: already in the ledger with "
                               "different content (a conflicting duplicate)")
                    )  # fmt: skip
        if not new:
            return result
        if planned is None:
            planned = plan(new)
        if planned.delta_rows is None:
            raise BalanceOverflow(f"{len(new)} transactions: a balance sum exceeds 64 bits")
        _copy_bytes(conn, _COPY_TRANSACTIONS, [item.tx_row for item in new])
        return self._write_rest(conn, new, result, planned.account_rows, planned.delta_rows)

    def _copy_transactions_if_new(self, conn: Any, batch: list[SourcedTransaction]) -> bool:
        """COPY the batch's transactions, expecting none of them in the ledger yet; False
        (and nothing written) when one is. Under a savepoint, so that finding one undoes
        only this COPY; the batch is then looked up, and so are the next ones until a
        batch has nothing held (a replay or a redelivery pays one refused COPY)."""
        import psycopg

        try:
            with conn.transaction():
                _copy_bytes(conn, _COPY_TRANSACTIONS, [item.tx_row for item in batch])
        except psycopg.errors.UniqueViolation:
            self._expect_new = False
            return False
        return True

    def _write_rest(
        self, conn: Any, new: list[SourcedTransaction], result: WriteResult,
        account_rows: dict[str, bytes], delta_rows: list[bytes],
    ) -> WriteResult:  # fmt: skip
        """After the transactions of ``new``: their accounts, entries and balances."""
        self._insert_accounts(conn, account_rows)
        result.entries += self._copy_entries(conn, new)
        self._add_balances(conn, delta_rows)
        result.written += len(new)
        return result

    def _copy_entries(self, conn: Any, batch: list[SourcedTransaction]) -> int:
        """Each month's entries straight into its partition; returns how many."""
        by_month: dict[tuple[int, int], list[bytes]] = {}
        entries = 0
        for item in batch:
            rows = by_month.get(item.month)
            if rows is None:
                rows = by_month[item.month] = []
            rows.append(item.entry_rows)
            entries += len(item.tx["entries"])
        for month, rows in sorted(by_month.items()):
            partition = self._partitions[month]  # made by _ensure_partitions
            _copy_bytes(conn, f'COPY "{partition}" ({_ENTRY_COLUMNS}) FROM STDIN (FORMAT BINARY)',
                        rows)  # fmt: skip
        return entries

    def _insert_accounts(self, conn: Any, account_rows: dict[str, bytes]) -> None:
        """Insert the accounts this writer has not seen committed yet."""
        known = self._known_accounts
        fresh = [account for account in account_rows if account not in known]
        if not fresh:
            return
        fresh.sort()
        _copy_bytes(conn, "COPY batch_accounts FROM STDIN (FORMAT BINARY)",
                    [account_rows[account] for account in fresh])  # fmt: skip
        conn.execute(
            "INSERT INTO accounts (account_id, account_type, first_posted_at) "
            "SELECT * FROM batch_accounts ORDER BY 1 ON CONFLICT (account_id) DO NOTHING"
        )
        if len(known) + len(fresh) > KNOWN_ACCOUNTS_MAX:
            known.clear()
        # Certain only once committed: every failure path calls forget() or clears it.
        known.update(fresh)

    def _add_balances(self, conn: Any, delta_rows: list[bytes]) -> None:
        _copy_bytes(conn, "COPY batch_deltas FROM STDIN (FORMAT BINARY)", delta_rows)
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
            except BalanceOverflow:
                self._known_accounts.clear()
                result.rejected.append((item, "its postings overflow a 64-bit balance"))
                continue
            result.written += single.written
            result.entries += single.entries
            result.duplicates += single.duplicates
            result.rejected += single.rejected
        return result

    def _ensure_partitions(self, conn: Any, batch: list[SourcedTransaction]) -> None:
        """Create (and guard) the month partitions this batch needs, each in its own
        short transaction, before the batch's transaction starts."""
        for month in {item.month for item in batch}:
            if month not in self._partitions:
                start = dt.datetime(month[0], month[1], 1, tzinfo=dt.UTC)
                self._partitions[month] = ensure_partition(conn, start)


def ensure_partition(conn: Any, start: dt.datetime) -> str:
    """The partition of the month starting at ``start`` (UTC), created and guarded if
    needed by the database's ``ledger_ensure_month``; returns its name."""
    with conn.transaction():
        row = conn.execute("SELECT ledger_ensure_month(%s)", (start,)).fetchone()
    return str(row[0])


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


def _copy_bytes(conn: Any, statement: str, rows: list[bytes]) -> None:
    """One binary COPY of rows already in COPY's format (see :mod:`streams.ledger.pgcopy`)."""
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(b"".join((pgcopy.SIGNATURE, *rows, pgcopy.TRAILER)))


def _conflict(txid: str, earlier: SourcedTransaction) -> str:
    return (
        f"{txid}: same transaction id as {earlier.topic}[{earlier.partition}]@{earlier.offset} "
        "with different content (a conflicting duplicate)"
    )
