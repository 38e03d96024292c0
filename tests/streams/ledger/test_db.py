"""Migrations and the constraints that make the schema do real work (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from streams.errors import CommandError, InfraError
from streams.ledger import db
from streams.ledger.db import connect_reader, load_migrations, migrate
from streams.ledger.writer import ensure_partition

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_migrate_applies_everything_once_and_is_idempotent(empty_dsn: str) -> None:
    first = migrate(empty_dsn)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert migrate(empty_dsn) == []
    with psycopg.connect(empty_dsn) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM paystream_migrations")]
    assert sorted(versions) == [m.version for m in load_migrations()]


def test_migrate_refuses_a_migration_edited_after_it_ran(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(empty_dsn)
    edited = [db.Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
    monkeypatch.setattr(db, "load_migrations", lambda: edited)
    with pytest.raises(InfraError, match="different checksum"):
        migrate(empty_dsn)


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(CommandError, match="cannot connect to PostgreSQL"):
        migrate("postgresql://nobody@127.0.0.1:1/nothing")


def _transaction(conn: psycopg.Connection, txid: str, entries: int = 2) -> None:
    conn.execute(
        "INSERT INTO transactions (transaction_id, request_id, kind, posted_at, entry_count, "
        "fingerprint, source_topic, source_partition, source_offset) "
        "VALUES (%s, 'r', 'payment', %s, %s, %s, 't', 0, 0)",
        (txid, NOW, entries, b"\x00" * 32),
    )


PARTITION = "ledger_entries_y2026m11"  # NOW's month, made by the conn fixture


def _entries(
    conn: psycopg.Connection, txid: str, rows: list[tuple[str, str, int, str]],
    table: str = "ledger_entries",
) -> None:  # fmt: skip
    conn.execute(
        f"INSERT INTO {table} (entry_id, transaction_id, account_id, direction, "
        "amount_minor, currency, posted_at) SELECT * FROM unnest(%s::text[], %s::text[], "
        "%s::text[], %s::text[], %s::int8[], %s::text[], %s::timestamptz[])",
        (
            [f"{txid}:{i}" for i in range(len(rows))],
            [txid] * len(rows),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [NOW] * len(rows),
        ),
    )


@pytest.fixture
def conn(ledger_dsn: str) -> psycopg.Connection:
    connection = psycopg.connect(ledger_dsn, autocommit=True)
    assert ensure_partition(connection, NOW.replace(day=1, hour=0)) == PARTITION
    return connection


def test_a_balanced_transaction_is_accepted(conn: psycopg.Connection) -> None:
    with conn.transaction():
        _transaction(conn, "tx1")
        _entries(conn, "tx1", [("a", "DEBIT", 500, "EUR"), ("b", "CREDIT", 500, "EUR")])
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (2,)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "DEBIT", 500, "EUR"), ("b", "CREDIT", 499, "EUR")], "unbalanced transaction"),
        ([("a", "DEBIT", 500, "EUR"), ("b", "CREDIT", 500, "USD")], "unbalanced transaction"),
        ([("a", "DEBIT", 5, "EUR"), ("b", "CREDIT", 5, "EUR"), None], "incomplete transaction"),
        ([("a", "DEBIT", -5, "EUR"), ("b", "CREDIT", -5, "EUR")], "amount_minor"),
        ([("a", "DEBIT", 0, "EUR"), ("b", "CREDIT", 0, "EUR")], "amount_minor"),
        ([("a", "DEBIT", 5, "eur"), ("b", "CREDIT", 5, "eur")], "currency"),
        ([("a", "DEBIT", 5, "EURO"), ("b", "CREDIT", 5, "EURO")], "currency"),
        ([("a", "SIDEWAYS", 5, "EUR"), ("b", "CREDIT", 5, "EUR")], "direction"),
    ],
)
@pytest.mark.parametrize("table", ["ledger_entries", PARTITION])  # the sink writes the latter
def test_the_schema_refuses_what_the_ledger_must_not_hold(
    conn: psycopg.Connection, rows: list[tuple[str, str, int, str] | None], message: str,
    table: str,
) -> None:  # fmt: skip
    present = [row for row in rows if row is not None]  # None: declared but missing
    with pytest.raises(psycopg.errors.CheckViolation, match=message), conn.transaction():
        _transaction(conn, "bad", entries=len(rows))
        _entries(conn, "bad", present, table)
    assert conn.execute("SELECT count(*) FROM transactions").fetchone() == (0,)


def test_entry_ids_are_unique(conn: psycopg.Connection) -> None:
    with conn.transaction():
        _transaction(conn, "tx1")
        _entries(conn, "tx1", [("a", "DEBIT", 500, "EUR"), ("b", "CREDIT", 500, "EUR")])
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        _transaction(conn, "tx2")
        conn.execute(
            "INSERT INTO ledger_entries (entry_id, transaction_id, account_id, direction, "
            "amount_minor, currency, posted_at) VALUES ('tx1:0', 'tx2', 'a', 'DEBIT', 1, 'EUR', "
            "%s), ('tx2:1', 'tx2', 'b', 'CREDIT', 1, 'EUR', %s)",
            (NOW, NOW),
        )


@pytest.mark.parametrize("table", ["ledger_entries", PARTITION])
def test_entries_need_their_transaction(conn: psycopg.Connection, table: str) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
        _entries(conn, "ghost", [("a", "DEBIT", 5, "EUR"), ("b", "CREDIT", 5, "EUR")], table)


def test_the_ledger_is_append_only(conn: psycopg.Connection) -> None:
    with conn.transaction():
        _transaction(conn, "tx1")
        _entries(conn, "tx1", [("a", "DEBIT", 500, "EUR"), ("b", "CREDIT", 500, "EUR")])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE ledger_entries SET amount_minor = 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM transactions")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(f"DELETE FROM {PARTITION}")


def test_balances_need_their_account_which_stays(conn: psycopg.Connection) -> None:
    def balance(account: str) -> None:
        conn.execute(
            "INSERT INTO account_balances VALUES (%s, 'EUR', 5, 0, 5, 1, now())", (account,)
        )

    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="unknown account ghost"):
        balance("ghost")
    conn.execute("INSERT INTO accounts VALUES ('c1', 'customer', now())")
    balance("c1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM accounts")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="never change"):
        conn.execute("UPDATE account_balances SET account_id = 'ghost'")


def test_partitions_made_before_migration_3_get_its_guards(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_two = load_migrations()[:2]
    monkeypatch.setattr(db, "load_migrations", lambda: first_two)
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as connection:
        connection.execute(
            f"CREATE TABLE {PARTITION} PARTITION OF ledger_entries "
            "FOR VALUES FROM ('2026-11-01Z') TO ('2026-12-01Z')"
        )
        monkeypatch.undo()
        assert [m.version for m in migrate(empty_dsn)] == [3, 4]
        unbalanced = [("a", "DEBIT", 5, "EUR"), ("b", "CREDIT", 4, "EUR")]
        refused = pytest.raises(psycopg.errors.CheckViolation, match="unbalanced")
        with refused, connection.transaction():
            _transaction(connection, "bad")
            _entries(connection, "bad", unbalanced, PARTITION)


def test_ensure_partition_is_idempotent_and_refuses_mid_month(conn: psycopg.Connection) -> None:
    assert ensure_partition(conn, NOW.replace(day=1, hour=0)) == PARTITION
    triggers = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (PARTITION,)
    ).fetchone()
    assert triggers == (2,)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="first instant"):
        ensure_partition(conn, NOW)


def test_readers_cannot_write(ledger_dsn: str) -> None:
    with connect_reader(ledger_dsn) as reader:
        assert reader.execute("SELECT count(*) FROM ledger_entries").fetchone() == (0,)
        assert reader.execute("SELECT current_user").fetchone() == ("paystream_reader",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("INSERT INTO accounts VALUES ('x', 'customer', now())")
