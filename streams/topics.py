"""Topic declarations (names, partitions, compaction) and ``paystream topics create``.

The table here is the single source of truth: the faust app declares its topics
from it, and ``topics create`` creates them idempotently with the AdminClient.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from streams.errors import CommandError
from streams.settings import Settings

REQUESTS = "payments.requests"
LEGS = "payments.legs"
DECISIONS = "payments.decisions"
LEDGER = "ledger.entries"
NOTIFICATIONS = "notifications"
FX_RATES = "fx.rates"
FRAUD_LABELS = "fraud.labels"
FRAUD_MODELS = "fraud.models"
DLQ = "payments.dlq"

ADMIN_TIMEOUT_S = 30.0
LEADER_POLL_S = 0.1
# Requests can carry metadata; anything larger than this is a dead letter, not a payment.
MESSAGE_BYTES_MAX = 1024 * 1024
DEAD_LETTER_BYTES_MAX = 2 * MESSAGE_BYTES_MAX + 64 * 1024
# From this replication factor on, every topic requires this many in-sync replicas.
DURABLE_REPLICAS_MIN = 3
IN_SYNC_REPLICAS_MIN = 2


@dataclass(frozen=True)
class TopicSpec:
    name: str
    copartitioned: bool  # uses Settings.partitions (must match payments.requests)
    partitions_fixed: int | None = None
    compacted: bool = False
    doc: str = ""

    def partitions(self, settings: Settings) -> int:
        return self.partitions_fixed or settings.partitions

    def config(self) -> dict[str, str]:
        # A dead letter carries the original bytes plus context: give it room for both.
        limit = DEAD_LETTER_BYTES_MAX if self.name == DLQ else MESSAGE_BYTES_MAX
        config = {"max.message.bytes": str(limit)}
        if self.compacted:
            config["cleanup.policy"] = "compact"
        return config


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(REQUESTS, True, doc="commands from producers, keyed by payer"),
    TopicSpec(
        LEGS, True, doc="payee credit legs and refund legs, keyed by the account they apply to"
    ),
    TopicSpec(DECISIONS, True, doc="one effective decision per request"),
    TopicSpec(LEDGER, True, doc="balanced double-entry transactions"),
    TopicSpec(NOTIFICATIONS, True, doc="user-facing events"),
    TopicSpec(FX_RATES, False, partitions_fixed=1, compacted=True, doc="latest rate per pair"),
    TopicSpec(FRAUD_LABELS, True, doc="chargebacks and review verdicts"),
    TopicSpec(FRAUD_MODELS, False, partitions_fixed=1, compacted=True, doc="active model"),
    TopicSpec(DLQ, True, doc="dead letters with their bytes and context"),
)


def accounts_changelog(settings: Settings) -> str:
    """The accounts table's changelog: what the workers hold, and what they restore from."""
    return f"{settings.app_id}-accounts-changelog"


def changelog_topics(settings: Settings) -> list[tuple[str, int]]:
    """faust's table changelogs, created up front (compacted) rather than by the worker.

    A worker that creates them itself can run its first partition assignment before the
    new topics show up in metadata; faust's assignor then hangs (seen with Kafka 4.1).
    """
    return [
        (accounts_changelog(settings), settings.partitions),
        (f"{settings.app_id}-fx-rates-changelog", 1),
    ]


def planned_topics(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) of every topic a deployment needs."""
    planned = [(settings.topic(s.name), s.partitions(settings), s.config()) for s in TOPICS]
    compacted = {"cleanup.policy": "compact", "max.message.bytes": str(MESSAGE_BYTES_MAX)}
    planned += [(name, count, compacted) for name, count in changelog_topics(settings)]
    if settings.replication_factor >= DURABLE_REPLICAS_MIN:
        # acks=all then means "on at least two brokers" whatever the broker default is:
        # with one broker down, writes go on; with two down, they stop rather than
        # being acknowledged by a single copy.
        durable = {"min.insync.replicas": str(IN_SYNC_REPLICAS_MIN)}
        planned = [(name, count, {**config, **durable}) for name, count, config in planned]
    return planned


def create_topics(settings: Settings) -> list[str]:
    """Create every topic that is missing; verify the ones that exist. Returns names created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.brokers})
    try:
        existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    except KafkaException as exc:
        raise CommandError(
            f"cannot reach Kafka at {settings.brokers}: {exc}; is it running (`paystream dev up`)?"
        ) from exc
    missing = []
    for name, want, config in planned_topics(settings):
        if name in existing:
            have = len(existing[name].partitions)
            if have != want:
                raise CommandError(
                    f"topic {name} has {have} partitions, configuration says {want}: "
                    "co-partitioned state would be read from the wrong partition; "
                    "fix PAYSTREAM_PARTITIONS or recreate the topic"
                )
            continue
        missing.append(NewTopic(name, want, settings.replication_factor, config=config))
    if not missing:
        return []
    futures = admin.create_topics(missing, operation_timeout=ADMIN_TIMEOUT_S)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):  # another process won the race
                continue
            raise CommandError(f"cannot create topic {name}: {exc}") from exc
    _wait_for_leaders(admin, created)
    return created


def _wait_for_leaders(admin: Any, topic_names: list[str]) -> None:
    """Block until every partition of the new topics has a leader (clients fail before)."""
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    waiting = set(topic_names)
    while waiting:
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
        for name in list(waiting):
            topic = metadata.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
            ):
                waiting.discard(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise CommandError(
                f"topics without a partition leader after {ADMIN_TIMEOUT_S} s: {sorted(waiting)}"
            )
        time.sleep(LEADER_POLL_S)


def _cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    created = create_topics(settings)
    for name, partitions, _ in planned_topics(settings):
        state = "created" if name in created else "exists"
        print(f"{name:<44} {partitions:>3} partitions  {state}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    topics = subparsers.add_parser("topics", help="Kafka topic administration")
    sub = topics.add_subparsers(dest="topics_command", metavar="ACTION")
    sub.required = True
    create = sub.add_parser("create", help="create every paystream topic (idempotent)")
    create.set_defaults(func=_cmd_create)
