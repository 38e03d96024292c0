"""Commands: ``db migrate``, ``ledger-sink``, ``ledger reconcile | balance | history``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from agents.rules.money import MoneyError, format_money
from streams.settings import Settings

log = logging.getLogger(__name__)

HISTORY_LIMIT_DEFAULT = 20
HISTORY_LIMIT_MAX = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="the ledger database")
    db_commands = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending SQL migrations (idempotent)")
    migrate.set_defaults(func=_cmd_migrate)

    sink = subparsers.add_parser(
        "ledger-sink", help="write ledger.entries to PostgreSQL (batched, idempotent)"
    )
    sink.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    sink.add_argument(
        "--exit-when-idle-s", type=float, default=None, metavar="S",
        help="stop after S seconds without new entries (backfills, tests)",
    )  # fmt: skip
    sink.set_defaults(func=_cmd_sink)

    ledger = subparsers.add_parser("ledger", help="read and check the PostgreSQL ledger")
    commands = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    reconcile = commands.add_parser(
        "reconcile", help="check the ledger against itself and the workers; non-zero on any gap"
    )
    reconcile.add_argument(
        "--no-workers", action="store_true", help="skip comparing with the workers' balances"
    )
    reconcile.add_argument(
        "--wait-s", type=float, default=0.0, metavar="S",
        help="wait up to S seconds for the sink to catch up first",
    )  # fmt: skip
    reconcile.set_defaults(func=_cmd_reconcile)
    balance = commands.add_parser("balance", help="an account's balances in PostgreSQL")
    balance.add_argument("account")
    balance.set_defaults(func=_cmd_balance)
    history = commands.add_parser("history", help="an account's latest entries")
    history.add_argument("account")
    history.add_argument("--limit", type=int, default=HISTORY_LIMIT_DEFAULT)
    history.set_defaults(func=_cmd_history)


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ledger.db import database_dsn, load_migrations, migrate

    applied = migrate(database_dsn(settings))
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"database is at migration {len(load_migrations())} ({len(applied)} applied now)")
    return 0


def _cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ledger.db import database_dsn, migrate
    from streams.ledger.sink import LedgerSink
    from streams.topics import create_topics

    dsn = database_dsn(settings)
    if args.migrate:
        migrate(dsn)
    create_topics(settings)
    sink = LedgerSink(settings, dsn)

    def stop(signum: int, frame: Any) -> None:
        log.info("ledger sink: signal %d, finishing the current batch", signum)
        sink.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stats = sink.run(idle_exit_s=args.exit_when_idle_s)
    print(
        f"ledger sink stopped: {stats.transactions} transactions, {stats.entries} entries "
        f"written, {stats.duplicates} duplicates skipped, {stats.dead_letters} dead letters, "
        f"{stats.outages} outages ({stats.outage_s:.1f} s)"
    )
    return 0


def _cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ledger.db import database_dsn
    from streams.ledger.reconcile import reconcile

    report = reconcile(
        settings, database_dsn(settings), workers=not args.no_workers, wait_s=args.wait_s
    )
    for discrepancy in report.discrepancies:
        print(discrepancy.line())
    lag = "unknown" if report.sink_lag is None else str(report.sink_lag)
    print(
        f"reconciled {report.transactions} transactions, {report.entries} entries, "
        f"{report.accounts} accounts"
        + ("" if args.no_workers else f", {report.worker_accounts} worker accounts")
        + f"; sink lag {lag} messages"
    )
    if report.sink_lag:
        print("note: the sink is behind; worker balances may be ahead of PostgreSQL")
    if report.ok:
        print("ledger reconciled: 0 discrepancies")
        return 0
    print(f"ledger NOT reconciled: {len(report.discrepancies)} discrepancies", file=sys.stderr)
    return 1


def _money(amount_minor: int, currency: str) -> str:
    try:
        return format_money(amount_minor, currency)
    except MoneyError:
        return f"{amount_minor} {currency} (minor units)"


def _cmd_balance(args: argparse.Namespace, settings: Settings) -> int:
    from streams.ledger.db import connect_reader, database_dsn

    with connect_reader(database_dsn(settings)) as conn:
        rows = conn.execute(
            "SELECT currency, balance_minor, debits_minor, credits_minor, entry_count, "
            "updated_at FROM account_balances WHERE account_id = %s ORDER BY currency",
            (args.account,),
        ).fetchall()
    if not rows:
        print(f"{args.account}: no postings in the ledger")
        return 1
    for currency, balance, debits, credits, count, updated in rows:
        print(
            f"{args.account} {currency}: balance {_money(balance, currency)} "
            f"(credits {_money(credits, currency)}, debits {_money(debits, currency)}, "
            f"{count} entries, updated {updated.isoformat()})"
        )
    return 0


def _cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from streams.errors import CommandError
    from streams.ledger.db import connect_reader, database_dsn

    if not 1 <= args.limit <= HISTORY_LIMIT_MAX:
        raise CommandError(f"--limit {args.limit}: give 1 to {HISTORY_LIMIT_MAX}")
    with connect_reader(database_dsn(settings)) as conn:
        rows = conn.execute(
            "SELECT e.posted_at, e.entry_id, t.kind, t.request_id, e.direction, "
            "e.amount_minor, e.currency, e.fx_rate FROM ledger_entries e "
            "JOIN transactions t USING (transaction_id) WHERE e.account_id = %s "
            "ORDER BY e.posted_at DESC, e.entry_id DESC LIMIT %s",
            (args.account, args.limit),
        ).fetchall()
    if not rows:
        print(f"{args.account}: no postings in the ledger")
        return 1
    for when, entry_id, kind, request_id, direction, amount, currency, rate in rows:
        sign = "+" if direction == "CREDIT" else "-"
        fx = f" @ {rate}" if rate is not None else ""
        print(
            f"{when.isoformat()}  {sign}{_money(amount, currency):>18}  {kind:<8} "
            f"{request_id}  {entry_id}{fx}"
        )
    return 0
