"""Replay ranges (pure) and replay against a real broker: dead letters unwrapped, expired
requests refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import load_codec
from streams import topics as names
from streams.client import new_request
from streams.errors import CommandError
from streams.replay import REPLAY_HEADER, Bound, ReplaySpec, parse_bound, parse_partitions, replay
from tests.support.pipeline import isolated_settings, produce, read_topic, send_requests


def test_bounds_are_offsets_times_or_edges() -> None:
    assert parse_bound("42") == Bound(offset=42)
    assert parse_bound("earliest") == Bound(edge="earliest")
    assert parse_bound("2026-11-22T10:00:00Z") == Bound(time_ms=1_795_341_600_000)
    assert parse_bound("2026-11-22T11:00:00+01:00") == Bound(time_ms=1_795_341_600_000)
    for bad, message in [("-3", "0 or more"), ("yesterday", "not an offset"),
                         ("2026-11-22T10:00:00", "time zone")]:  # fmt: skip
        with pytest.raises(CommandError, match=message):
            parse_bound(bad)


def test_partitions() -> None:
    assert parse_partitions("3,1,1") == [1, 3]
    assert parse_partitions(None) is None
    with pytest.raises(CommandError):
        parse_partitions("a,b")


@pytest.mark.integration
def test_dead_letters_are_replayed_as_their_original_bytes(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    codec = load_codec(None)
    original = new_request("TOPUP", "alice", 100, "EUR")
    letter = {
        "original_topic": settings.topic(names.REQUESTS), "original_partition": 0,
        "original_offset": 7, "original_key": b"alice",
        "original_value": codec.encode(names.REQUESTS, original), "error_class": "internal_error",
        "error": "a bug", "first_seen_ms": int(time.time() * 1000), "worker": None,
    }  # fmt: skip
    produce(settings, names.DLQ, [("alice", letter)])
    report = replay(settings, ReplaySpec(names.DLQ, Bound(edge="earliest"),
                                         Bound(edge="latest"), into=names.REQUESTS))  # fmt: skip
    assert report.messages == report.produced == 1
    [msg] = read_topic(settings, names.REQUESTS, decode=False, until=lambda r: r, timeout_s=20)
    assert msg.key() == b"alice"
    assert codec.decode(names.REQUESTS, msg.value()) == original
    assert dict(msg.headers())[REPLAY_HEADER].startswith(settings.topic(names.DLQ).encode())


@pytest.mark.integration
def test_requests_older_than_the_idempotency_window_are_not_replayed_without_force(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(
        kafka_broker.bootstrap, tmp_path, PAYSTREAM_IDEMPOTENCY_WINDOW_S="1"
    )
    send_requests(settings, [new_request("TOPUP", "bob", 5, "EUR")])
    time.sleep(2)
    spec = ReplaySpec(names.REQUESTS, Bound(edge="earliest"), Bound(edge="latest"),
                      into=names.REQUESTS)  # fmt: skip
    with pytest.raises(CommandError, match="older than the idempotency window"):
        replay(settings, spec)
    assert replay(settings, ReplaySpec(**{**spec.__dict__, "dry_run": True})).messages == 1
    assert replay(settings, ReplaySpec(**{**spec.__dict__, "force": True})).produced == 1
