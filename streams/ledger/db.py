"""Connections and versioned SQL migrations (``paystream db migrate``).

Migrations are the ``NNNN_name.sql`` files beside this module, applied in order,
each in its own database transaction, under an advisory lock so two processes
migrating at once do not race. An applied migration's checksum is recorded; if the
file changes afterwards, ``migrate`` refuses to run rather than guess.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import CommandError, InfraError
from streams.settings import Settings, mask_secret

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READER_ROLE = "paystream_reader"
# Any 64-bit constant: the advisory lock that serialises concurrent migrators.
MIGRATION_LOCK_ID = 0x70617973747265
CONNECT_TIMEOUT_S = 5

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def database_dsn(settings: Settings) -> str:
    """The ledger's DSN: PAYSTREAM_DATABASE_URL, else the one `paystream dev up` wrote."""
    if settings.database_url:
        return settings.database_url
    from streams.dev.postgres import read_dev_dsn

    dsn = read_dev_dsn(settings.state_dir)
    if dsn is None:
        raise CommandError(
            "no database configured: set PAYSTREAM_DATABASE_URL, or run `paystream dev up` "
            f"(looked for {settings.state_dir / 'postgres' / 'dsn'})"
        )
    return dsn


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise InfraError(f"migration file {path.name} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise InfraError(f"migration versions must be 1, 2, 3, ... without gaps: {versions}")
    return migrations


def connect(dsn: str, **kwargs: Any) -> Any:
    """A psycopg connection, with a clear error when the database cannot be reached."""
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.OperationalError as exc:
        raise CommandError(
            f"cannot connect to PostgreSQL at {mask_secret(dsn)}: {str(exc).strip()} "
            "(is it running? `paystream dev status`)"
        ) from exc


def migrate(dsn: str) -> list[Migration]:
    """Apply pending migrations; returns those applied now (none when up to date)."""
    migrations = load_migrations()
    applied_now: list[Migration] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS paystream_migrations (
                       version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                version: (name, checksum)
                for version, name, checksum in conn.execute(
                    "SELECT version, name, checksum FROM paystream_migrations"
                )
            }
            for migration in migrations:
                if migration.version in done:
                    name, checksum = done[migration.version]
                    if checksum != migration.checksum:
                        raise InfraError(
                            f"migration {migration.version:04d}_{name} was applied with a "
                            "different checksum: the file changed after it ran; add a new "
                            "migration instead of editing an applied one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO paystream_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration)
            unknown = sorted(set(done) - {m.version for m in migrations})
            if unknown:
                raise InfraError(
                    f"the database has migrations this code does not know: {unknown}; "
                    "it was migrated by a newer paystream"
                )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now


def connect_reader(dsn: str) -> Any:
    """A connection whose every transaction is read-only and runs as the reader role."""
    conn = connect(dsn, autocommit=True)
    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    conn.execute(f"SET ROLE {READER_ROLE}")
    return conn


def create_database(server_dsn: str, name: str, *, migrated: bool = True) -> str:
    """Create database ``name`` on the server of ``server_dsn`` (migrated); its DSN."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with connect(server_dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            raise CommandError(f"database {name} already exists; pick another name") from None
    dsn = make_conninfo(server_dsn, dbname=name)
    if migrated:
        migrate(dsn)
    return dsn


def drop_database(server_dsn: str, name: str) -> None:
    """Drop database ``name`` (closing its connections) if it exists."""
    from psycopg import sql

    with connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
