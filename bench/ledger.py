"""``paystream bench ledger``: entries/s into PostgreSQL through the real sink.

Same run, same data, same database server: the sink (batched binary COPY, one
database transaction per batch) against a naive writer that does what a first
version usually does — one INSERT per entry, a balance UPSERT per entry, one
commit per transaction. Each repetition writes into a fresh database.

Back of the envelope, from what this bench and the profiles in BENCHMARKS.md
measured (2 cores, broker and PostgreSQL on the same machine): the sink's reading
thread spends ~27 µs per transaction (~12 µs per entry) consuming, decoding,
checking and building COPY rows, and PostgreSQL ~13-15 µs of CPU per entry for what
the schema requires (the entry heap row, its two indexes, the balance check, the
transaction row, accounts and balances). The two overlap on the two cores, so the
sink reaches 50,000-65,000 entries/s when the host runs at its usual speed and falls
to 30,000-45,000 when the shared host is slow (its calibration loop, printed with
each run, then takes 0.25 s or more instead of ~0.18). The naive writer pays a
network round trip per statement (~50-100 µs over loopback) and an fsync per commit,
so it cannot exceed ~1,000-3,000 entries/s.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from streams import topics as names
from streams.settings import Settings

NAIVE_SECONDS_DEFAULT = 15.0
DAY_MS = 86_400_000
FX_SHARE = 0.1
MERCHANT_PER_CUSTOMERS = 100
# The host calibration loop: a few tenths of a second; larger means a slower host.
HOST_LOOP_ITERATIONS = 5_000_000


def generate_transactions(entries: int, accounts: int, seed: int, start_ms: int) -> list[dict]:
    """Balanced transactions totalling ``entries`` entries (one more when ``entries`` is
    odd: a transaction has two or four): customers paying merchants.

    Payers are drawn uniformly from ``accounts`` customers; payees from one merchant
    per 100 customers with a heavy tail (a few merchants take most payments), as card
    payments look; a tenth are FX payments with four entries through the FX book.
    """
    rng = random.Random(seed)
    merchants = max(1, accounts // MERCHANT_PER_CUSTOMERS)
    out: list[dict[str, Any]] = []
    made = 0
    i = 0
    while made < entries:
        payer = f"c{rng.randrange(accounts):07d}"
        payee = f"m{min(int(rng.paretovariate(1.2)) - 1, merchants - 1):05d}"
        txid = f"bench-{seed}-{i}:payment"
        amount = rng.randrange(100, 500_000)
        posted = start_ms + i * 37  # ~3 months of postings for 200k transactions
        if rng.random() < FX_SHARE and entries - made >= 4:
            settled = amount * 108 // 100
            legs = [(payer, "DEBIT", amount, "EUR", None),
                    ("fx-clearing:EUR", "CREDIT", amount, "EUR", None),
                    ("fx-clearing:USD", "DEBIT", settled, "USD", "1.08"),
                    (payee, "CREDIT", settled, "USD", "1.08")]  # fmt: skip
        else:
            legs = [(payer, "DEBIT", amount, "EUR", None), (payee, "CREDIT", amount, "EUR", None)]
        out.append({
            "transaction_id": txid, "request_id": f"bench-{seed}-{i}", "payment_id": None,
            "kind": "payment", "posted_at_ms": posted,
            "entries": [
                {"entry_id": f"{txid}:{n}", "account_id": a, "direction": d,
                 "amount_minor": m, "currency": c, "fx_rate": r}
                for n, (a, d, m, c, r) in enumerate(legs)
            ],
        })  # fmt: skip
        made += len(legs)
        i += 1
    return out


def _produce(settings: Settings, transactions: list[dict]) -> float:
    from confluent_kafka import Producer

    from agents.pipeline import producer_config
    from schemas.codec import load_codec

    codec = load_codec(settings.schema_registry_url)
    producer = Producer(producer_config(settings))
    topic = settings.topic(names.LEDGER)
    started = time.monotonic()
    for tx in transactions:
        value = codec.encode(names.LEDGER, tx)
        key = tx["entries"][0]["account_id"].encode()
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("bench: could not deliver the generated transactions")
    return time.monotonic() - started


def _fresh_database(server_dsn: str, label: str) -> str:
    from streams.ledger.db import create_database

    return create_database(server_dsn, f"bench_{label}_{uuid.uuid4().hex[:8]}")


def _drop_database(server_dsn: str, dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from streams.ledger.db import drop_database

    drop_database(server_dsn, str(conninfo_to_dict(dsn)["dbname"]))


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by every process named ``postgres*`` on this machine (a
    local server's backends and helpers), or None without a readable ``/proc``."""
    from bench.measure import parse_proc_stat

    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    ticks = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        if text.partition("(")[2].startswith("postgres"):
            ticks += parse_proc_stat(text).ticks
    return ticks / os.sysconf("SC_CLK_TCK")


def host_loop_s() -> float:
    """Seconds a fixed pure-Python loop takes right now. The shared host's speed drifts
    (up to ~2x over minutes), so each run records it beside its figures."""
    start = time.perf_counter()
    total = 0
    for i in range(HOST_LOOP_ITERATIONS):
        total += i
    elapsed = time.perf_counter() - start
    if total != HOST_LOOP_ITERATIONS * (HOST_LOOP_ITERATIONS - 1) // 2:
        raise RuntimeError("bench: the host calibration loop miscounted")
    return elapsed


def run_sink(settings: Settings, dsn: str, entries: int) -> dict[str, Any]:
    """The real sink, from the first message read to the commit of the last batch; also
    the CPU the sink's process and the PostgreSQL server used over the whole run."""
    from streams.ledger.reconcile import check_balances
    from streams.ledger.sink import LedgerSink

    sink = LedgerSink(settings, dsn, group_id=f"bench-sink-{uuid.uuid4().hex[:8]}")
    sink_cpu, pg_cpu = time.process_time(), postgres_cpu_s()
    stats = sink.run(until_entries=entries, idle_exit_s=60)
    sink_cpu = time.process_time() - sink_cpu
    pg_after = postgres_cpu_s()
    pg_cpu = None if pg_cpu is None or pg_after is None else pg_after - pg_cpu
    if stats.entries != entries or stats.first_message_at is None or not stats.last_commit_at:
        raise RuntimeError(f"bench: the sink wrote {stats.entries} of {entries} entries")
    elapsed = stats.last_commit_at - stats.first_message_at
    import psycopg

    with psycopg.connect(dsn) as conn:
        if check_balances(conn):
            raise RuntimeError("bench: balances do not match entries after the sink run")
    return {"entries": stats.entries, "seconds": elapsed, "batches": stats.batches,
            "entries_per_s": stats.entries / elapsed, "sink_cpu_s": sink_cpu,
            "postgres_cpu_s": pg_cpu}  # fmt: skip


def run_naive(settings: Settings, dsn: str, seconds: float) -> dict[str, Any]:
    """One INSERT per entry, a balance UPSERT per entry, a commit per transaction.

    Statements go one at a time, as a straightforward loop over the entries would send
    them; the database's per-statement balance trigger is disabled for this writer.
    """
    import psycopg
    from confluent_kafka import Consumer

    from schemas.codec import load_codec
    from streams.ledger.writer import ensure_partition, month_start, posted_at

    codec = load_codec(settings.schema_registry_url)
    consumer = Consumer({
        "bootstrap.servers": settings.brokers, "group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })  # fmt: skip
    consumer.subscribe([settings.topic(names.LEDGER)])
    entries = 0
    started: float | None = None
    partitions: set[Any] = set()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The balance trigger checks whole statements; entry-at-a-time inserts cannot pass
        # it, so the naive writer runs without it (less work than the sink does).
        conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_balanced")
        while started is None or time.monotonic() - started < seconds:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if started is None:
                started = time.monotonic()
            tx: Any = codec.decode(names.LEDGER, msg.value() or b"", msg.partition(), msg.offset())
            when = posted_at(tx["posted_at_ms"])
            if month_start(when) not in partitions:
                ensure_partition(conn, month_start(when))
                partitions.add(month_start(when))
            with conn.transaction():
                conn.execute(
                    "INSERT INTO transactions (transaction_id, request_id, payment_id, kind, "
                    "posted_at, entry_count, fingerprint, source_topic, source_partition, "
                    "source_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (tx["transaction_id"], tx["request_id"], tx["payment_id"], tx["kind"], when,
                     len(tx["entries"]), b"\0" * 32, msg.topic(), msg.partition(), msg.offset()),
                )  # fmt: skip
                for e in tx["entries"]:
                    conn.execute(
                        "INSERT INTO accounts VALUES (%s, 'customer', %s) ON CONFLICT DO NOTHING",
                        (e["account_id"], when),
                    )
                    credit = e["amount_minor"] if e["direction"] == "CREDIT" else 0
                    debit = e["amount_minor"] - credit
                    conn.execute(
                        "INSERT INTO account_balances AS b VALUES (%s, %s, %s, %s, %s, 1, now()) "
                        "ON CONFLICT (account_id, currency) DO UPDATE SET "
                        "balance_minor = b.balance_minor + EXCLUDED.balance_minor, "
                        "debits_minor = b.debits_minor + EXCLUDED.debits_minor, "
                        "credits_minor = b.credits_minor + EXCLUDED.credits_minor, "
                        "entry_count = b.entry_count + 1",
                        (e["account_id"], e["currency"], credit - debit, debit, credit),
                    )
                for e in tx["entries"]:
                    conn.execute(
                        "INSERT INTO ledger_entries VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (e["entry_id"], tx["transaction_id"], e["account_id"], e["direction"],
                         e["amount_minor"], e["currency"], e["fx_rate"], when),
                    )  # fmt: skip
            entries += len(tx["entries"])
    consumer.close()
    elapsed = time.monotonic() - (started or time.monotonic())
    return {"entries": entries, "seconds": elapsed, "entries_per_s": entries / max(elapsed, 1e-9)}


def bench_ledger(
    settings: Settings, entries: int, runs: int, accounts: int, naive_seconds: float,
    json_path: Path | None,
) -> dict[str, Any]:  # fmt: skip
    from bench.pipeline import delete_topics
    from streams.topics import create_topics

    run_id = uuid.uuid4().hex[:6]
    settings = settings.replace(topic_prefix=f"bench-{run_id}.", app_id=f"paystream-bench-{run_id}")
    create_topics(settings)
    try:
        return _bench_runs(settings, entries, runs, accounts, naive_seconds, json_path)
    finally:
        delete_topics(settings, f"bench-{run_id}.")  # a broker kept for many runs stays lean


def _bench_runs(
    settings: Settings, entries: int, runs: int, accounts: int, naive_seconds: float,
    json_path: Path | None,
) -> dict[str, Any]:  # fmt: skip
    from streams.ledger.db import database_dsn

    server_dsn = database_dsn(settings)
    transactions = generate_transactions(entries, accounts, seed=1, start_ms=1_767_225_600_000)
    entries = sum(len(tx["entries"]) for tx in transactions)  # odd counts round up
    produce_s = _produce(settings, transactions)
    transaction_count = len(transactions)
    # Not kept alive while the sink runs: Python's cycle collector would walk them all.
    del transactions
    print(f"produced {transaction_count} transactions ({entries} entries) in {produce_s:.1f} s")
    results = []
    for run in range(1, runs + 1):
        sink_dsn = _fresh_database(server_dsn, "sink")
        naive_dsn = _fresh_database(server_dsn, "naive")
        try:
            host_s = host_loop_s()
            sink = run_sink(settings, sink_dsn, entries)
            naive = run_naive(settings, naive_dsn, naive_seconds)
        finally:
            _drop_database(server_dsn, sink_dsn)
            _drop_database(server_dsn, naive_dsn)
        ratio = sink["entries_per_s"] / naive["entries_per_s"]
        results.append({"sink": sink, "naive": naive, "ratio": ratio, "host_loop_s": host_s})
        pg_cpu = "" if sink["postgres_cpu_s"] is None else (
            f", PostgreSQL {sink['postgres_cpu_s']:.1f}"
        )  # fmt: skip
        print(
            f"run {run}/{runs}: sink {sink['entries_per_s']:,.0f} entries/s "
            f"({sink['entries']} in {sink['seconds']:.2f} s, {sink['batches']} batches; "
            f"CPU s: sink {sink['sink_cpu_s']:.1f}{pg_cpu}); "
            f"naive {naive['entries_per_s']:,.0f} entries/s ({naive['entries']} in "
            f"{naive['seconds']:.1f} s); ratio {ratio:.1f}x; host loop {host_s:.2f} s"
        )
    summary = {
        "benchmark": "ledger",
        "entries": entries,
        "transactions": transaction_count,
        "accounts": accounts,
        "runs": results,
        "median_sink_entries_per_s": statistics.median(r["sink"]["entries_per_s"] for r in results),
        "median_naive_entries_per_s": statistics.median(
            r["naive"]["entries_per_s"] for r in results
        ),
        "median_ratio": statistics.median(r["ratio"] for r in results),
        "batch_entries_max": settings.ledger_batch_entries_max,
        "ledger_writers": settings.ledger_writers,
        "median_host_loop_s": statistics.median(r["host_loop_s"] for r in results),
        "host_loop_iterations": HOST_LOOP_ITERATIONS,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    print(
        f"median of {runs}: sink {summary['median_sink_entries_per_s']:,.0f} entries/s, "
        f"naive {summary['median_naive_entries_per_s']:,.0f} entries/s, "
        f"ratio {summary['median_ratio']:.1f}x (target: sink >= 50,000 entries/s)"
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {json_path}")
    return summary
