"""``paystream bench ...``: benchmarks are commands that print numbers and write JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streams.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (print numbers, write JSON)")
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    ledger = commands.add_parser("ledger", help="entries/s into PostgreSQL through the sink")
    ledger.add_argument("--entries", type=int, default=200_000)
    ledger.add_argument("--runs", type=int, default=3, help="repetitions; the median is quoted")
    ledger.add_argument("--accounts", type=int, default=100_000)
    ledger.add_argument(
        "--naive-seconds", type=float, default=15.0,
        help="how long the naive one-INSERT-per-entry writer runs in each repetition",
    )  # fmt: skip
    ledger.add_argument("--json", type=Path, default=None, metavar="PATH")
    ledger.add_argument(
        "--external", action="store_true",
        help="use PAYSTREAM_BROKERS and PAYSTREAM_DATABASE_URL instead of the dev services",
    )  # fmt: skip
    ledger.set_defaults(func=_cmd_ledger)
    scorer = commands.add_parser(
        "scorer",
        help="fraud scoring cost: µs per payment at batch 1/100/1000, p99 single",
    )
    scorer.add_argument("--version", help="model version (default: the newest registered)")
    scorer.add_argument("--rules", action="store_true", help="measure the rules baseline")
    scorer.add_argument("--registry", help="registry directory (default: <state_dir>/models)")
    scorer.add_argument("--json", metavar="PATH")
    scorer.set_defaults(func=_cmd_scorer)


def _cmd_ledger(args: argparse.Namespace, settings: Settings) -> int:
    from bench.ledger import bench_ledger
    from streams.errors import CommandError

    if args.entries < 2 or args.runs < 1:
        raise CommandError("--entries must be at least 2 and --runs at least 1")
    started: list[Any] = []
    if not args.external:
        from streams.dev.infra import start_infra

        settings, started = start_infra(settings)
    try:
        bench_ledger(settings, args.entries, args.runs, args.accounts, args.naive_seconds,
                     args.json)  # fmt: skip
    finally:
        for server in reversed(started):
            server.stop()
    return 0


def _cmd_scorer(args: argparse.Namespace, settings: Settings) -> int:
    from models.registry import default_registry_dir
    from models.scorer import main

    options = ["--registry", args.registry or str(default_registry_dir(settings))]
    if args.rules:
        options.append("--rules")
    if args.version:
        options += ["--version", args.version]
    if args.json:
        options += ["--json", args.json]
    return main(options)
