"""Bring up the dev Kafka broker and PostgreSQL for a command that needs both."""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


def start_infra(settings: Settings) -> tuple[Settings, list[Any]]:
    """Start dev Kafka and PostgreSQL if not running; return settings and what to stop."""
    from streams.dev.kafka import KafkaBroker
    from streams.dev.postgres import PostgresServer

    started: list[Any] = []
    broker = KafkaBroker.from_settings(settings)
    kafka = broker.start()
    if not kafka.already_running:
        started.append(broker)
    how = "reused" if kafka.already_running else f"started in {kafka.elapsed_s:.1f} s"
    print(f"kafka     {kafka.bootstrap} ({how})")
    server = PostgresServer.from_settings(settings)
    postgres = server.start()
    if not postgres.already_running:
        started.append(server)
    how = "reused" if postgres.already_running else f"started in {postgres.elapsed_s:.1f} s"
    print(f"postgres  {postgres.dsn} ({how})")
    return settings.replace(brokers=kafka.bootstrap, database_url=postgres.dsn), started
