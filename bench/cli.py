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
    _register_pipeline(commands)


def _register_pipeline(commands: argparse._SubParsersAction) -> None:
    from bench.peers import PEERS

    peers = ", ".join(f"{p.name} ({p.doc})" for p in PEERS)
    pipeline = commands.add_parser(
        "pipeline",
        help="payments decided/s, latency, CPU and memory of the pipeline beside its peers",
        description=(
            "Runs each peer implementation on the same broker and the same pre-generated "
            f"load, on fresh topics each, and measures it from the outside. Peers: {peers}. "
            "A peer whose module does not exist is skipped with a note."
        ),
    )
    pipeline.add_argument("--accounts", type=int, default=100_000,
                          help="simulated customers (default %(default)s)")  # fmt: skip
    pipeline.add_argument(
        "--payments", type=int, default=None,
        help="valid requests in the load at --rate max (default 300000; it starts with one "
             "opening top-up per account, so give several times --accounts)",
    )  # fmt: skip
    pipeline.add_argument(
        "--rate", default="max", metavar="max|N",
        help="max: preload, then drain; N: requests per second sent to a caught-up peer "
             "(latency measured)",
    )  # fmt: skip
    pipeline.add_argument("--duration-s", type=float, default=60.0,
                          help="how long a fixed rate is sent (default %(default)s)")  # fmt: skip
    pipeline.add_argument("--runs", type=int, default=3, help="repetitions; medians are quoted")
    pipeline.add_argument(
        "--peer", action="append", default=[], metavar="NAME",
        help="a peer to run (repeatable; default: every available one)",
    )  # fmt: skip
    pipeline.add_argument(
        "--partitions", type=int, default=None,
        help="partitions of the fresh topics (default PAYSTREAM_PARTITIONS)",
    )  # fmt: skip
    pipeline.add_argument("--workers", type=int, default=1,
                          help="paystream worker processes (default %(default)s)")  # fmt: skip
    pipeline.add_argument("--seed", type=int, default=7, help="simulation seed")
    pipeline.add_argument(
        "--timeout-s", type=float, default=None,
        help="longest a peer may take for the load (default 300 s + 1 s per 200 requests)",
    )  # fmt: skip
    pipeline.add_argument("--json", type=Path, default=None, metavar="PATH")
    pipeline.add_argument("--plot", type=Path, default=None, metavar="PATH.png")
    pipeline.add_argument(
        "--workdir", type=Path, default=None,
        help="logs and state (default <PAYSTREAM_STATE_DIR>/bench/pipeline)",
    )  # fmt: skip
    pipeline.add_argument(
        "--keep", action="store_true",
        help="keep the topics, the peers' state and the private broker's data",
    )  # fmt: skip
    pipeline.add_argument(
        "--external", action="store_true",
        help="use the broker at PAYSTREAM_BROKERS instead of a private one",
    )  # fmt: skip
    pipeline.set_defaults(func=_cmd_pipeline)


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


def _cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    import shlex
    import sys

    from bench.pipeline import Options, bench_pipeline, load_size
    from streams.errors import CommandError

    rate_per_s, payments = load_size(args.rate, args.payments, args.duration_s)
    if args.runs < 1 or args.workers < 1 or args.accounts < 1:
        raise CommandError("--runs, --workers and --accounts must be at least 1")
    partitions = args.partitions if args.partitions is not None else settings.partitions
    if partitions < 1:
        raise CommandError(f"--partitions {partitions}: give at least 1")
    options = Options(
        accounts=args.accounts, payments=payments, rate_per_s=rate_per_s,
        duration_s=args.duration_s, runs=args.runs, peers=tuple(args.peer),
        partitions=partitions, workers=args.workers, seed=args.seed, timeout_s=args.timeout_s,
        json_path=args.json, plot_path=args.plot,
        workdir=args.workdir or settings.state_dir / "bench" / "pipeline", keep=args.keep,
        command="paystream " + shlex.join(sys.argv[1:]),
    )  # fmt: skip
    try:
        summary = bench_pipeline(settings, options, external=args.external)
    except ValueError as exc:  # a load the simulator cannot make
        raise CommandError(str(exc)) from exc
    return 1 if any(summary["failures"].values()) else 0


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
