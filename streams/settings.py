"""One frozen settings object, read once from ``PAYSTREAM_*`` environment variables.

Every knob the pipeline has lives here with its default, its unit in its name and
a one-line description; the README's configuration table is generated from
``SETTINGS_DOC`` so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "PAYSTREAM_"
# Variables the test session reads (e.g. PAYSTREAM_TEST_BROKERS); not settings.
TEST_ENV_PREFIX = "PAYSTREAM_TEST_"
# More concurrent ledger batches than this only queue behind row locks on shared balances.
LEDGER_WRITERS_MAX = 8


class SettingsError(ValueError):
    """A ``PAYSTREAM_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with production-sane defaults for a single machine."""

    brokers: str = field(
        default="127.0.0.1:9092",
        metadata={"doc": "Kafka bootstrap servers, comma-separated host:port."},
    )
    database_url: str | None = field(
        default=None,
        metadata={
            "doc": "PostgreSQL DSN for the ledger. Unset: the DSN written by `paystream dev up`.",
            "secret": True,
        },
    )
    schema_registry_url: str | None = field(
        default=None,
        metadata={
            "doc": "Confluent Schema Registry URL. Unset: schema ids from schemas/catalog.json."
        },
    )
    app_id: str = field(
        default="paystream",
        metadata={"doc": "faust application id: consumer group and changelog topic prefix."},
    )
    topic_prefix: str = field(
        default="",
        metadata={"doc": "Prefix for every topic name (isolates test runs and environments)."},
    )
    partitions: int = field(
        default=12,
        metadata={"doc": "Partitions of payments.requests and payments.legs (co-partitioned)."},
    )
    replication_factor: int = field(
        default=1, metadata={"doc": "Replication factor of created topics (3 on a cluster)."}
    )
    state_dir: Path = field(
        default=Path(".paystream"),
        metadata={"doc": "Where dev infrastructure and worker RocksDB state live."},
    )
    kafka_version: str = field(
        default="4.1.1", metadata={"doc": "Apache Kafka version assembled from Maven Central."}
    )
    kafka_port: int = field(default=9092, metadata={"doc": "`dev up`: broker listener port."})
    kafka_controller_port: int = field(
        default=9093, metadata={"doc": "`dev up`: KRaft controller listener port."}
    )
    kafka_heap_mb: int = field(default=1024, metadata={"doc": "`dev up`: broker JVM max heap."})
    postgres_port: int = field(default=5433, metadata={"doc": "`dev up`: PostgreSQL port."})
    web_port: int = field(
        default=6066,
        metadata={"doc": "Worker web port (account views); each worker needs its own."},
    )
    batch_size_max: int = field(
        default=1000, metadata={"doc": "Most requests an agent takes per batch (take_events)."}
    )
    batch_within_ms: int = field(
        default=5, metadata={"doc": "Longest an agent waits to fill a batch, in milliseconds."}
    )
    idempotency_window_s: int = field(
        default=7 * 24 * 3600,
        metadata={"doc": "How long idempotency keys are remembered, in seconds (request clock)."},
    )
    hold_default_s: int = field(
        default=7 * 24 * 3600,
        metadata={"doc": "Hold lifetime when an AUTHORIZE names no expiry, in seconds."},
    )
    refund_window_s: int = field(
        default=180 * 24 * 3600,
        metadata={"doc": "How long a captured payment can be refunded, in seconds."},
    )
    fx_rate_max_age_s: int = field(
        default=3600,
        metadata={"doc": "FX rates older than this (request clock) decline fx_rate_unavailable."},
    )
    currencies: tuple[str, ...] = field(
        default=("USD", "EUR", "GBP", "CHF", "JPY", "KWD", "BHD", "SEK", "PLN"),
        metadata={"doc": "ISO 4217 currencies accepted, comma-separated."},
    )
    standby_replicas: int = field(
        default=0, metadata={"doc": "faust table standby replicas (shorter failover)."}
    )
    group_session_timeout_s: int = field(
        default=10,
        metadata={
            "doc": "Workers: how long a silent worker keeps its partitions (kill -9 failover)."
        },
    )
    ledger_batch_entries_max: int = field(
        default=20_000,
        metadata={"doc": "Ledger sink: most entries written per database transaction."},
    )
    ledger_batch_within_ms: int = field(
        default=200,
        metadata={"doc": "Ledger sink: longest it waits to fill a batch, in milliseconds."},
    )
    ledger_writers: int = field(
        default=2,
        metadata={
            "doc": "Ledger sink: batches written at once, each on its own database connection."
        },
    )
    ledger_backoff_max_s: int = field(
        default=30,
        metadata={"doc": "Ledger sink: longest wait between retries while PostgreSQL is down."},
    )
    model_registry_dir: Path | None = field(
        default=None,
        metadata={"doc": "Directory of trained fraud models. Unset: <state_dir>/models."},
    )
    fraud_review_threshold: float | None = field(
        default=None,
        metadata={"doc": "Fraud score from which a payment is held for review. Unset: the "
                         "model's, chosen by cost in its evaluation."},
    )  # fmt: skip
    fraud_decline_threshold: float | None = field(
        default=None,
        metadata={"doc": "Fraud score from which a payment is declined `fraudulent`. Unset: "
                         "the model's."},
    )  # fmt: skip
    log_level: str = field(default="INFO", metadata={"doc": "Log level of workers and tools."})

    def topic(self, name: str) -> str:
        """The full name of a logical topic such as ``payments.requests``."""
        return f"{self.topic_prefix}{name}"

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value is not None:
                value = mask_secret(str(value))
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def to_env(self) -> dict[str, str]:
        """``PAYSTREAM_*`` variables that load back into these settings (for child processes)."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            env[ENV_PREFIX + f.name.upper()] = text
        return env

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the dev tools use this)."""
        return dataclasses.replace(self, **changes)


def mask_secret(value: str) -> str:
    """Hide a password inside a DSN or URL; never print secrets."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", value))


def _render_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


SETTINGS_DOC: tuple[tuple[str, str, str], ...] = tuple(
    (ENV_PREFIX + f.name.upper(), _render_default(f.default), f.metadata.get("doc", ""))
    for f in dataclasses.fields(Settings)
)
"""(variable, default, description) rows for the README's configuration table."""


def _parse(field_type: Any, raw: str, name: str) -> Any:
    text = raw.strip()
    try:
        if field_type in (int, "int"):
            value = int(text)
            if value < 0:
                raise SettingsError(f"{name}={raw!r}: must not be negative")
            return value
        if field_type in (Path, "Path"):
            return Path(text)
        if field_type in ("tuple[str, ...]",):
            items = tuple(item.strip().upper() for item in text.split(",") if item.strip())
            if not items:
                raise SettingsError(f"{name}={raw!r}: give at least one value, comma-separated")
            return items
        if field_type in ("str | None",):
            return text or None
        if field_type in ("Path | None",):
            return Path(text) if text else None
        if field_type in ("float | None",):
            if not text:
                return None
            score = float(text)
            if not 0.0 <= score <= 1.0:
                raise SettingsError(f"{name}={raw!r}: a score threshold is between 0 and 1")
            return score
        return text
    except ValueError as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"{name}={raw!r}: expected {field_type}") from exc


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build ``Settings`` from ``PAYSTREAM_*`` variables; unknown ``PAYSTREAM_*`` are errors."""
    env = os.environ if environ is None else environ
    known = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key.startswith(TEST_ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in known:
            raise SettingsError(
                f"{key} is not a paystream setting; known: "
                + ", ".join(ENV_PREFIX + n.upper() for n in known)
            )
        values[name] = _parse(known[name].type, raw, key)
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.partitions < 1:
        raise SettingsError(f"PAYSTREAM_PARTITIONS={settings.partitions}: must be at least 1")
    if settings.ledger_batch_entries_max < 2:
        raise SettingsError("PAYSTREAM_LEDGER_BATCH_ENTRIES_MAX must be at least 2")
    if not 1 <= settings.ledger_writers <= LEDGER_WRITERS_MAX:
        raise SettingsError(
            f"PAYSTREAM_LEDGER_WRITERS={settings.ledger_writers}: must be 1 to {LEDGER_WRITERS_MAX}"
        )
    if settings.ledger_backoff_max_s < 1:
        raise SettingsError("PAYSTREAM_LEDGER_BACKOFF_MAX_S must be at least 1")
    review, decline = settings.fraud_review_threshold, settings.fraud_decline_threshold
    if review is not None and decline is not None and review > decline:
        raise SettingsError(
            f"PAYSTREAM_FRAUD_REVIEW_THRESHOLD={review} is above "
            f"PAYSTREAM_FRAUD_DECLINE_THRESHOLD={decline}"
        )
    if settings.batch_size_max < 1:
        raise SettingsError("PAYSTREAM_BATCH_SIZE_MAX must be at least 1")
    if settings.group_session_timeout_s < 6:
        raise SettingsError(
            f"PAYSTREAM_GROUP_SESSION_TIMEOUT_S={settings.group_session_timeout_s}: Kafka "
            "brokers refuse sessions under 6 s (group.min.session.timeout.ms)"
        )
    for code in settings.currencies:
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise SettingsError(f"PAYSTREAM_CURRENCIES: {code!r} is not a 3-letter ISO 4217 code")
