"""``paystream worker``: run one faust worker of the fleet."""

from __future__ import annotations

import argparse
import os

from streams.settings import Settings


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # streams.app reads PAYSTREAM_* at import: apply command-line overrides first.
    if args.web_port is not None:
        os.environ["PAYSTREAM_WEB_PORT"] = str(args.web_port)
    from faust import Worker

    import agents.authorize
    import agents.views  # noqa: F401  (registers the web views)
    from streams.app import app
    from streams.app import settings as worker_settings
    from streams.topics import create_topics

    create_topics(worker_settings)  # idempotent; also the table changelogs, up front
    worker = Worker(app, loglevel=worker_settings.log_level.lower())
    worker.execute_from_commandline()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a faust worker (run several for a fleet)")
    worker.add_argument("--web-port", type=int, help="web port of this worker (unique per host)")
    worker.set_defaults(func=_cmd_worker)
