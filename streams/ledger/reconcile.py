"""``paystream ledger reconcile``: the ledger proves itself against itself and the workers.

Three checks, each printed with the account and the amounts when it fails:

(a) every transaction in PostgreSQL sums to zero per currency and holds all the
    entries it declares;
(b) ``account_balances`` equals the sum of each account's entries;
(c) PostgreSQL's balance of each customer account equals what the workers hold
    (available + held), read from the accounts table's changelog topic — the same
    records a restarting worker restores from.

(c) only means something once the sink has caught up; the report says how far
behind it is, and ``--wait-s`` waits for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.rules.ledger import account_type
from streams import topics as names
from streams.settings import Settings

CHANGELOG_READ_TIMEOUT_S = 120.0
LAG_POLL_S = 0.5


@dataclass(frozen=True)
class Discrepancy:
    check: str
    subject: str  # a transaction id or an account id
    currency: str
    expected_minor: int | None
    actual_minor: int | None
    detail: str

    def line(self) -> str:
        return (
            f"{self.check:<22} {self.subject} {self.currency}: expected {self.expected_minor}, "
            f"found {self.actual_minor} ({self.detail})"
        )


@dataclass
class ReconcileReport:
    transactions: int = 0
    entries: int = 0
    accounts: int = 0
    worker_accounts: int = 0
    sink_lag: int | None = None
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


_SIGNED = "CASE direction WHEN 'CREDIT' THEN amount_minor ELSE -amount_minor END"


def check_transactions(conn: Any) -> list[Discrepancy]:
    """(a): zero-sum per currency, and every declared entry present."""
    found = [
        Discrepancy(
            "unbalanced_transaction",
            txid,
            currency,
            0,
            int(net),
            "credits minus debits must be zero",
        )
        for txid, currency, net in conn.execute(
            f"SELECT transaction_id, currency, sum({_SIGNED}) FROM ledger_entries "
            f"GROUP BY 1, 2 HAVING sum({_SIGNED}) <> 0 ORDER BY 1, 2"
        )
    ]
    found += [
        Discrepancy(
            "incomplete_transaction",
            txid,
            "-",
            int(declared),
            int(present),
            "entries declared vs present",
        )
        for txid, declared, present in conn.execute(
            "SELECT t.transaction_id, t.entry_count, count(e.entry_id) FROM transactions t "
            "LEFT JOIN ledger_entries e USING (transaction_id) "
            "GROUP BY 1, 2 HAVING count(e.entry_id) <> t.entry_count ORDER BY 1"
        )
    ]
    return found


def check_balances(conn: Any) -> list[Discrepancy]:
    """(b): account_balances equals the sum of entries, for every (account, currency)."""
    rows = conn.execute(
        f"""WITH sums AS (
                SELECT account_id, currency, sum({_SIGNED}) AS net FROM ledger_entries
                GROUP BY 1, 2)
            SELECT coalesce(s.account_id, b.account_id), coalesce(s.currency, b.currency),
                   s.net, b.balance_minor
            FROM sums s FULL JOIN account_balances b
                 ON b.account_id = s.account_id AND b.currency = s.currency
            WHERE coalesce(s.net, 0) <> coalesce(b.balance_minor, 0)
            ORDER BY 1, 2"""
    )
    return [
        Discrepancy(
            "balance_vs_entries",
            account,
            currency,
            _int(net),
            _int(stored),
            "sum of entries vs account_balances",
        )
        for account, currency, net, stored in rows
    ]


def postgres_customer_balances(conn: Any) -> dict[tuple[str, str], int]:
    return {
        (account, currency): int(balance)
        for account, currency, balance in conn.execute(
            "SELECT b.account_id, b.currency, b.balance_minor FROM account_balances b "
            "JOIN accounts a USING (account_id) WHERE a.account_type = 'customer'"
        )
    }


def compare_with_workers(
    postgres: dict[tuple[str, str], int], workers: dict[tuple[str, str], int]
) -> list[Discrepancy]:
    """(c): the workers' balance (available + held) of every customer account."""
    found = []
    for key in sorted(set(postgres) | set(workers)):
        if account_type(key[0]) != "customer":
            continue
        held, stored = workers.get(key, 0), postgres.get(key, 0)
        if held != stored:
            found.append(
                Discrepancy(
                    "postgres_vs_workers",
                    key[0],
                    key[1],
                    held,
                    stored,
                    "workers' balance vs PostgreSQL",
                )
            )
    return found


def worker_balances(settings: Settings) -> dict[tuple[str, str], int]:
    """Latest value of every account in the accounts changelog: what the workers hold."""
    from confluent_kafka import Consumer, TopicPartition

    from agents.rules import AccountState
    from streams.errors import InfraError

    changelog = names.accounts_changelog(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": f"{settings.app_id}-reconcile",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(changelog, timeout=10).topics.get(changelog)
        if meta is None or meta.error is not None:
            return {}
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(changelog, p), timeout=10)
            for p in meta.partitions
        }
        consumer.assign([TopicPartition(changelog, p, low) for p, (low, _) in ends.items()])
        latest: dict[bytes, bytes] = {}
        done = {p for p, (low, high) in ends.items() if high <= low}
        deadline = time.monotonic() + CHANGELOG_READ_TIMEOUT_S
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise InfraError(f"could not read {changelog} to its end within the timeout")
            for msg in consumer.consume(10_000, 0.2):
                key, value = msg.key(), msg.value()
                if msg.error() is not None or key is None:
                    continue
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = value
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                if offset + 1 >= ends[partition][1]:
                    done.add(partition)
    finally:
        consumer.close()
    totals: dict[tuple[str, str], int] = {}
    for raw in latest.values():
        state = AccountState.from_bytes(raw)
        for currency, balance in state.balances.items():
            totals[(state.account_id, currency)] = balance.total_minor
    return totals


def sink_lag(settings: Settings, group_id: str | None = None) -> int:
    """Messages on ledger.entries the sink's consumer group has not committed yet."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(names.LEDGER)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": group_id or f"{settings.app_id}-ledger-sink",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(partitions, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            position = tp.offset if tp.offset >= 0 else low
            lag += max(0, high - position)
        return lag
    finally:
        consumer.close()


def reconcile(
    settings: Settings, dsn: str, *, workers: bool = True, wait_s: float = 0.0
) -> ReconcileReport:
    from streams.ledger.db import connect_reader

    report = ReconcileReport()
    deadline = time.monotonic() + wait_s
    report.sink_lag = sink_lag(settings)
    while report.sink_lag and time.monotonic() < deadline:
        time.sleep(LAG_POLL_S)
        report.sink_lag = sink_lag(settings)
    with connect_reader(dsn) as conn, conn.transaction():
        # One snapshot for all checks: REPEATABLE READ sees a single point in time.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        report.transactions, report.entries, report.accounts = (
            int(n)
            for n in conn.execute(
                "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM "
                "ledger_entries), (SELECT count(*) FROM accounts)"
            ).fetchone()
        )
        report.discrepancies += check_transactions(conn)
        report.discrepancies += check_balances(conn)
        postgres = postgres_customer_balances(conn) if workers else {}
    if workers:
        held = worker_balances(settings)
        report.worker_accounts = len({account for account, _ in held})
        report.discrepancies += compare_with_workers(postgres, held)
    return report


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
