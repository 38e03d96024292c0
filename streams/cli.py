"""The ``paystream`` command: one entry point, each command group registered by its module.

A module adds its commands with ``register(subparsers)``; each command stores its
handler as ``func`` taking ``(args, settings) -> int`` (the exit code). Handlers
import heavy dependencies (faust, sklearn) lazily so ``paystream --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streams.errors import PaystreamError
from streams.settings import SettingsError, load_settings

# Modules that contribute command groups, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "streams.dev.cli",
    "streams.topics",
    "streams.worker",
    "streams.client_cli",
    "streams.demo",
    "streams.ledger.cli",
    "streams.replay",
    "streams.verify",
    "streams.chaos",
    "models.simulate_cli",
    "models.model_cli",
    "bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paystream",
        description="Kafka-native payment processing: workers, ledger, fraud scoring.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"paystream: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args, settings)
    except PaystreamError as exc:
        print(f"paystream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
