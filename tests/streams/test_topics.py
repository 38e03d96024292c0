"""The topics a deployment needs, and their durability settings."""

from __future__ import annotations

from streams.settings import Settings
from streams.topics import IN_SYNC_REPLICAS_MIN, planned_topics


def test_replicated_topics_require_two_in_sync_replicas() -> None:
    planned = planned_topics(Settings(replication_factor=3))
    assert planned  # the business topics and the table changelogs
    for name, _, config in planned:
        assert config["min.insync.replicas"] == str(IN_SYNC_REPLICAS_MIN), name


def test_a_single_broker_keeps_the_broker_default() -> None:
    for name, _, config in planned_topics(Settings(replication_factor=1)):
        assert "min.insync.replicas" not in config, name


def test_changelogs_stay_compacted_when_replicated() -> None:
    configs = {name: config for name, _, config in planned_topics(Settings(replication_factor=3))}
    changelogs = [name for name in configs if name.endswith("-changelog")]
    assert changelogs
    for name in changelogs:
        assert configs[name]["cleanup.policy"] == "compact", name
