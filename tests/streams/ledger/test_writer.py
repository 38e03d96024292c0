"""The batch writer against real PostgreSQL: exactly once, whatever is redelivered."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from agents.rules.ledger import fingerprint, net_balances
from streams.ledger.reconcile import check_balances, check_transactions
from streams.ledger.writer import (
    HELD_SQL,
    LedgerWriter,
    SourcedTransaction,
    _copy_bytes,
    _create_staging,
)
from tests.agents.rules.test_ledger import tx

pytestmark = pytest.mark.integration

JAN_2026_MS = 1_767_225_600_000
DAY_MS = 86_400_000


def sourced(t: dict[str, Any], offset: int = 0) -> SourcedTransaction:
    return SourcedTransaction(t, fingerprint(t), "ledger.entries", 0, offset)


def payments(count: int, start_ms: int = JAN_2026_MS, step_ms: int = 1000) -> list[dict]:
    out = []
    for i in range(count):
        t = tx(f"r{i}:payment", (f"c{i % 7}", "DEBIT", 100 + i, "EUR"),
               (f"m{i % 3}", "CREDIT", 100 + i, "EUR"))  # fmt: skip
        t["posted_at_ms"] = start_ms + i * step_ms
        out.append(t)
    return out


def stored_balances(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT account_id, currency, balance_minor FROM account_balances")
    return {(a, c): b for a, c, b in rows}


def plans_sent_to(conn: psycopg.Connection) -> list[str]:
    """From now on, the plan of every statement ``conn`` runs (those of its triggers too),
    as auto_explain sends them to the client; the list fills as statements run."""
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("LOAD 'auto_explain'")
    return plans


@pytest.fixture
def conn(ledger_dsn: str) -> psycopg.Connection:
    return psycopg.connect(ledger_dsn, autocommit=True)


def test_a_batch_is_written_with_its_balances(conn: psycopg.Connection) -> None:
    batch = payments(500)
    result = LedgerWriter().write(conn, [sourced(t, i) for i, t in enumerate(batch)])
    assert (result.written, result.entries, result.duplicates, result.rejected) == (
        500, 1000, 0, []
    )  # fmt: skip
    assert stored_balances(conn) == {k: v for k, v in net_balances(batch).items()}
    assert check_transactions(conn) == [] and check_balances(conn) == []
    types = dict(conn.execute("SELECT account_id, account_type FROM accounts"))
    assert types["c0"] == "customer"


def test_looking_up_a_batch_probes_keys_rather_than_scanning_the_ledger(
    conn: psycopg.Connection,
) -> None:
    LedgerWriter().write(conn, [sourced(t, i) for i, t in enumerate(payments(3000))])
    conn.execute("ANALYZE transactions")
    batch = [sourced(t, i) for i, t in enumerate(payments(2000, start_ms=JAN_2026_MS + DAY_MS))]
    with conn.transaction():
        _create_staging(conn)
        _copy_bytes(conn, "COPY batch_ids FROM STDIN (FORMAT BINARY)",
                    [item.id_row for item in batch[:1000] + batch[:1000]])  # fmt: skip
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {HELD_SQL}"))
        held = conn.execute(HELD_SQL).fetchall()
    assert "Seq Scan on transactions" not in plan, plan
    assert "Index" in plan and "transactions_pkey" in plan, plan
    assert len(held) == 2000  # every id of the first 1000 (each sent twice) is held


def test_no_statement_of_a_batch_scans_the_transactions_table(conn: psycopg.Connection) -> None:
    """The database-side checks included: a batch's cost must not grow with the ledger."""
    # Sizes at which PostgreSQL planned the old join as a scan of every transaction.
    ledger = payments(20_000)
    LedgerWriter().write(conn, [sourced(t, i) for i, t in enumerate(ledger[:10_000])])
    plans = plans_sent_to(conn)
    result = LedgerWriter().write(conn, [sourced(t, i) for i, t in enumerate(ledger[10_000:])])
    assert result.written == 10_000
    assert any("new_rows" in plan and "transactions" in plan for plan in plans), plans
    scans = ("Seq Scan on transactions", "Seq Scan on accounts", "Seq Scan on account_balances")
    assert not [plan for plan in plans if any(scan in plan for scan in scans)], plans


def test_a_batch_is_looked_up_only_after_one_held_part_of_the_ledger(
    conn: psycopg.Connection,
) -> None:
    statements = plans_sent_to(conn)
    writer = LedgerWriter()
    ledger = [sourced(t, i) for i, t in enumerate(payments(400))]
    a, b, c, d = (ledger[k : k + 100] for k in range(0, 400, 100))

    def looked_up(batch: list[SourcedTransaction]) -> tuple[bool, int, int]:
        statements.clear()
        result = writer.write(conn, batch)
        lookup = any("Query Text" in s and "batch_ids" in s for s in statements)
        return lookup, result.written, result.duplicates

    assert looked_up(a) == (False, 100, 0)  # new: COPYed straight away
    assert looked_up(a[:50] + b) == (True, 100, 50)  # the COPY met a held one: looked up
    assert looked_up(c) == (True, 100, 0)  # still looked up, and found nothing held
    assert looked_up(d) == (False, 100, 0)  # so the next is expected new again
    assert looked_up(d) == (True, 0, 100)  # a redelivery: one refused COPY, then looked up
    assert check_transactions(conn) == [] and check_balances(conn) == []
    assert stored_balances(conn) == net_balances([item.tx for item in a + b + c + d])


def test_redelivered_batches_change_nothing(conn: psycopg.Connection) -> None:
    batch = [sourced(t, i) for i, t in enumerate(payments(200))]
    LedgerWriter().write(conn, batch)
    before = stored_balances(conn)
    again = LedgerWriter().write(conn, batch[50:] + batch[:10] + batch[:10])
    assert (again.written, again.duplicates) == (0, 170)
    assert stored_balances(conn) == before
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (400,)


def test_a_batch_overlapping_the_ledger_writes_only_the_new_part(conn: psycopg.Connection) -> None:
    batch = [sourced(t, i) for i, t in enumerate(payments(100))]
    LedgerWriter().write(conn, batch[:60])
    result = LedgerWriter().write(conn, batch[40:])
    assert (result.written, result.duplicates) == (40, 20)
    assert stored_balances(conn) == net_balances([s.tx for s in batch])


def test_a_conflicting_duplicate_is_rejected_and_the_rest_written(
    conn: psycopg.Connection,
) -> None:
    batch = payments(3)
    LedgerWriter().write(conn, [sourced(batch[0])])
    changed = tx("r0:payment", ("c0", "DEBIT", 999, "EUR"), ("m0", "CREDIT", 999, "EUR"))
    result = LedgerWriter().write(conn, [sourced(changed), *map(sourced, batch[1:])])
    assert result.written == 2
    [(item, reason)] = result.rejected
    assert item.tx is changed and "different content" in reason
    assert stored_balances(conn) == net_balances(batch)


def test_a_conflict_inside_one_batch_is_rejected(conn: psycopg.Connection) -> None:
    first = tx("r9:payment")
    second = tx("r9:payment", ("x", "DEBIT", 5, "EUR"), ("y", "CREDIT", 5, "EUR"))
    result = LedgerWriter().write(conn, [sourced(first, 1), sourced(second, 2)])
    assert result.written == 1
    assert "same transaction id as ledger.entries[0]@1" in result.rejected[0][1]


def test_months_get_their_own_partitions(conn: psycopg.Connection) -> None:
    batch = payments(90, start_ms=JAN_2026_MS - 40 * DAY_MS, step_ms=DAY_MS)
    LedgerWriter().write(conn, [sourced(t) for t in batch])
    parts = sorted(
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'ledger_entries'"
        )
    )
    assert parts == [
        "ledger_entries_y2025m11", "ledger_entries_y2025m12", "ledger_entries_y2026m01",
        "ledger_entries_y2026m02",
    ]  # fmt: skip
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (180,)


def test_what_only_the_database_refuses_is_rejected_alone(conn: psycopg.Connection) -> None:
    good = payments(5)
    bad = tx("bad:payment", ("c1", "DEBIT", 1, "EUR"), ("m1", "CREDIT", 1, "EUR"))
    bad["entries"][0]["amount_minor"] = 0  # bypasses the sink's own checks on purpose
    bad["entries"][1]["amount_minor"] = 0
    result = LedgerWriter().write(conn, [*map(sourced, good[:2]), sourced(bad),
                                         *map(sourced, good[2:])])  # fmt: skip
    assert result.written == 5
    [(item, reason)] = result.rejected
    assert item.tx is bad and "refused by PostgreSQL" in reason and "amount_minor" in reason
    assert stored_balances(conn) == net_balances(good)


def test_a_batch_whose_balance_sum_overflows_is_written_one_by_one(
    conn: psycopg.Connection,
) -> None:
    half = 2**62  # each transaction fits; the merchant's sum over the two does not
    first = tx("r1:payment", ("c1", "DEBIT", half, "EUR"), ("m1", "CREDIT", half, "EUR"))
    second = tx("r2:payment", ("c2", "DEBIT", half, "EUR"), ("m1", "CREDIT", half, "EUR"))
    result = LedgerWriter().write(conn, [sourced(first), sourced(second)])
    assert result.written == 1
    [(item, reason)] = result.rejected
    assert item.tx is second and "refused by PostgreSQL" in reason and "out of range" in reason
    assert stored_balances(conn) == net_balances([first])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("posted_at_ms", 253_402_300_800_000, "outside years 1-9999"),
        ("payment_id", "p\x00", "NUL"),
    ],
)
def test_a_value_no_column_can_hold_is_refused_before_the_database(
    field: str, value: Any, message: str
) -> None:
    bad = tx()
    bad[field] = value
    with pytest.raises(ValueError, match=message):
        sourced(bad)


def test_two_writers_racing_on_the_same_batch_write_it_once(ledger_dsn: str) -> None:
    batch = [sourced(t, i) for i, t in enumerate(payments(3000))]
    results = []

    def write() -> None:
        with psycopg.connect(ledger_dsn, autocommit=True) as conn:
            results.append(LedgerWriter().write(conn, batch))

    threads = [threading.Thread(target=write) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.written for r in results)[-1] == 3000
    assert sum(r.written for r in results) == 3000
    assert sum(r.duplicates for r in results) == 6000
    with psycopg.connect(ledger_dsn) as conn:
        assert stored_balances(conn) == net_balances([s.tx for s in batch])
        assert check_balances(conn) == []


def test_concurrent_writers_on_overlapping_batches_keep_balances_exact(ledger_dsn: str) -> None:
    # The sink's writers: separate connections, batches in flight at once that share
    # hot accounts, create the same new accounts, and repeat each other's edges.
    everything = []
    for i in range(6000):
        t = tx(f"o{i}:payment", (f"c{i % 900}", "DEBIT", 100 + i, "EUR"),
               (f"m{i % 5}", "CREDIT", 100 + i, "EUR"))  # fmt: skip
        t["posted_at_ms"] = JAN_2026_MS + i * 1000
        everything.append(t)
    batches = [
        [sourced(t, i) for i, t in enumerate(everything[start : start + 250], start)]
        for start in range(0, 6000, 200)
    ]
    results: list[Any] = []
    errors: list[BaseException] = []

    def write(mine: list[list[SourcedTransaction]]) -> None:
        try:
            writer = LedgerWriter()
            with psycopg.connect(ledger_dsn, autocommit=True) as conn:
                for batch in mine:
                    results.append(writer.write(conn, batch))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(batches[k::2],)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sum(r.written for r in results) == 6000
    assert sum(r.duplicates for r in results) == 50 * (len(batches) - 1)
    assert all(r.rejected == [] for r in results)
    with psycopg.connect(ledger_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (12_000,)
        assert stored_balances(conn) == net_balances(everything)
        assert check_transactions(conn) == [] and check_balances(conn) == []
