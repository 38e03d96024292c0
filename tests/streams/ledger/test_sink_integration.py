"""The ledger sink between a real broker and a real PostgreSQL, including outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.rules.ledger import net_balances
from streams import topics as names
from streams.ledger.reconcile import check_balances, check_transactions
from streams.ledger.sink import LedgerSink
from streams.settings import Settings
from tests.agents.rules.test_ledger import tx
from tests.streams.ledger.test_writer import payments, stored_balances
from tests.support.pipeline import isolated_settings, produce, produce_raw, read_topic

pytestmark = pytest.mark.integration

SINK_TIMEOUT_S = 90.0


@contextmanager
def sink_thread(settings: Settings, dsn: str) -> Iterator[LedgerSink]:
    sink = LedgerSink(settings, dsn)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="ledger-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.stop.set()
        thread.join(30)
    assert not errors, errors
    assert not thread.is_alive(), "the sink did not stop"


def wait_for_transactions(dsn: str, count: int, sink: LedgerSink) -> None:
    deadline = time.monotonic() + SINK_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn) as conn:
                (have,) = conn.execute("SELECT count(*) FROM transactions").fetchone()
        except psycopg.OperationalError:
            have = -1
        if have >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"sink wrote {have} of {count} transactions; stats {sink.stats}")


def send(settings: Settings, transactions: list[dict[str, Any]]) -> None:
    produce(settings, names.LEDGER, ((t["entries"][0]["account_id"], t) for t in transactions))


def test_sink_writes_what_it_reads_and_dead_letters_the_rest(
    kafka_broker: Any, ledger_dsn: str, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    good = payments(2000)
    unbalanced = tx("evil:payment", ("c1", "DEBIT", 100, "EUR"), ("m1", "CREDIT", 90, "EUR"))
    with sink_thread(settings, ledger_dsn) as sink:
        send(settings, good[:1000])
        send(settings, [unbalanced])
        produce_raw(settings, names.LEDGER, b"c1", b"not avro")
        send(settings, good[1000:])
        send(settings, good[:300])  # a redelivery of already written transactions
        wait_for_transactions(ledger_dsn, 2000, sink)
        deadline = time.monotonic() + 30
        while sink.stats.duplicates < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert sink.stats.dead_letters == 2 and sink.stats.duplicates == 300
    with psycopg.connect(ledger_dsn) as conn:
        assert stored_balances(conn) == net_balances(good)
        assert check_transactions(conn) == [] and check_balances(conn) == []
    letters = read_topic(settings, names.DLQ, until=lambda r: len(r) >= 2, timeout_s=30)
    reasons = {letter["error_class"]: letter["error"] for letter in letters}
    assert (
        "evil:payment: postings do not sum to zero per currency (EUR net -10)"
        in (reasons["constraint_violation"])
    )
    assert "ledger.entries" in reasons["schema_error"]
    assert all(letter["original_topic"] == settings.topic(names.LEDGER) for letter in letters)


def test_postgres_stopped_mid_stream_then_restarted_loses_and_doubles_nothing(
    kafka_broker: Any, own_postgres: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(
        kafka_broker.bootstrap,
        tmp_path,
        PAYSTREAM_LEDGER_BACKOFF_MAX_S="1",
        PAYSTREAM_LEDGER_BATCH_ENTRIES_MAX="2000",
    )
    dsn = own_postgres.dsn
    everything = payments(12_000)
    with sink_thread(settings, dsn) as sink:
        send(settings, everything[:4000])
        wait_for_transactions(dsn, 1, sink)
        own_postgres.stop()
        stopped = time.monotonic()
        send(settings, everything[4000:9000])  # arrives while the database is down
        time.sleep(8)
        own_postgres.start()
        down_s = time.monotonic() - stopped
        send(settings, everything[9000:])
        wait_for_transactions(dsn, len(everything), sink)
        time.sleep(1)
    print(f"\noutage: database down {down_s:.1f} s; sink stats {sink.stats}")
    assert sink.stats.outages >= 1 and sink.stats.retries >= 2
    assert sink.stats.transactions == len(everything)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == (24_000,)
        assert stored_balances(conn) == net_balances(everything)
        assert check_transactions(conn) == [] and check_balances(conn) == []
