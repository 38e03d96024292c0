"""Unit tests of the restore/failover measurement's pure parts (streams/restore.py)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from agents.rules.decide import is_customer_account
from agents.rules.state import AccountState
from streams.restore import (
    account_templates,
    assigned_partitions,
    clone_value,
    log_lines,
    log_stamp,
    parse_partition_set,
    recovery_times,
    restored_records,
)

TOPIC = "paystream-x-accounts-changelog"
NOW_MS = 1_790_000_000_000


@pytest.fixture(scope="module")
def templates() -> list[AccountState]:
    return account_templates(40, 3, seed=5, now_ms=NOW_MS, requests_topic="x.payments.requests")


# -- the values ---------------------------------------------------------------------------


def test_templates_are_customer_accounts_made_by_the_rules(templates: list[AccountState]) -> None:
    assert len(templates) == 40
    assert all(is_customer_account(state.account_id) for state in templates)
    assert all(state.idempotency for state in templates)
    assert all(state.features is not None for state in templates)
    assert all(
        balance.available_minor >= 0 and balance.held_minor >= 0
        for state in templates
        for balance in state.balances.values()
    )
    # Outputs of flushed requests are dropped, as in a running worker.
    assert sum(len(state.unflushed) for state in templates) <= len(templates)


def test_templates_carry_a_week_of_idempotency_records(templates: list[AccountState]) -> None:
    records = [record for state in templates for record in state.idempotency.values()]
    assert len(records) >= 40
    assert all(NOW_MS - 25 * 3600 * 1000 <= r.created_at_ms <= NOW_MS for r in records)


def test_a_cloned_value_is_the_same_account_under_another_id(
    templates: list[AccountState],
) -> None:
    template = templates[3]

    clone = AccountState.from_bytes(
        clone_value(template.to_bytes(), template.account_id, "acct-0999999")
    )

    assert clone.account_id == "acct-0999999"
    assert clone.balances == template.balances
    assert clone.features == template.features
    assert set(clone.idempotency) == set(template.idempotency)
    for record in clone.idempotency.values():
        for decision in record.outcomes["decisions"]:
            assert decision["account_id"] == "acct-0999999"
    payees = {p.payee_id for p in clone.payments.values()}
    assert payees == {p.payee_id for p in template.payments.values()}


def test_only_whole_ids_are_replaced() -> None:
    value = b'{"account_id":"acct-1","payee":"acct-12","note":"acct-1x"}'

    assert clone_value(value, "acct-1", "acct-7") == (
        b'{"account_id":"acct-7","payee":"acct-12","note":"acct-1x"}'
    )


# -- worker logs ----------------------------------------------------------------------------


def _stamp(second: float) -> str:
    moment = datetime.fromtimestamp(1_790_000_000 + second)
    return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


def _line(second: float, text: str) -> str:
    return f"[{_stamp(second)}] [4242] [INFO] {text}"


def _table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = [f"+{title}---+", "| " + " | ".join(headers) + " |", "+---+"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, "+---+ "]


def _recovery(second: float, highwaters: list[str], starts: list[str], restore: bool) -> list[str]:
    partitions = [str(p) for p in range(len(highwaters))]
    topics = [TOPIC] + ["\u3003"] * (len(highwaters) - 1)
    lines = [
        _line(second, "Setting newly assigned partitions "),
        *_table(
            "Topic Partition Set",
            ("topic", "partitions"),
            [("x.payments.requests", "{0, 2-3}"), (TOPIC, "{0-3}")],
        ),
        _line(second + 0.1, "[^---Recovery]: Highwater for active changelog partitions:"),
        *_table(
            "Highwater - Active",
            ("topic", "partition", "highwater"),
            [*zip(topics, partitions, highwaters, strict=True), ("other-changelog", "0", "99")],
        ),
        _line(second + 0.2, "[^---Recovery]: active offsets at start of reading:"),
        *_table(
            "Reading Starts At - Active",
            ("topic", "partition", "offset"),
            list(zip(topics, partitions, starts, strict=True)),
        ),
    ]
    if restore:
        lines += [
            _line(second + 0.3, "[^---Recovery]: Restoring state from changelog topics... "),
            _line(second + 4.3, "[^---Recovery]: Done reading from changelog topics "),
        ]
    return [*lines, _line(second + 5.0, "[^---Recovery]: Worker ready ")]


def test_log_stamps_are_wall_clock_seconds() -> None:
    assert log_stamp(_line(1.5, "hello")) == pytest.approx(1_790_000_001.5)
    assert log_stamp("| a table row |") is None


def test_records_to_restore_are_highwater_minus_start_per_partition() -> None:
    lines = _recovery(0.0, ["99", "49", "-1", "9"], ["-1", "19", "-1", "9"], restore=True)

    # 100 + 30 + 0 + 0; the other changelog does not count.
    assert restored_records(lines, TOPIC) == 130


def test_a_recovery_with_nothing_to_read_restored_zero() -> None:
    lines = _recovery(0.0, ["9", "9"], ["9", "9"], restore=False)

    assert restored_records(lines, TOPIC) == 0


def test_no_recovery_in_the_log_is_none() -> None:
    assert restored_records([_line(0.0, "[^Worker]: Starting... ")], TOPIC) is None


def test_recovery_times_after_a_moment(tmp_path: Path) -> None:
    earlier = _recovery(0.0, ["9"], ["-1"], restore=True)
    later = [
        _line(20.0, "Heartbeat failed for group g because it is rebalancing "),
        *_recovery(21.0, ["999", "99"], ["-1", "99"], restore=True),
    ]
    log = tmp_path / "worker.log"
    log.write_text("\n".join(earlier + later) + "\n", encoding="utf-8")

    times = recovery_times(log, 0, 1_790_000_010.0, TOPIC)

    assert times.rebalance_s == pytest.approx(10.0)
    assert times.restore_begin_s == pytest.approx(11.3)
    assert times.restore_s == pytest.approx(4.0)
    assert times.ready_s == pytest.approx(16.0)
    assert times.records == 1000
    assert times.to_dict()["restored_records_per_s"] == 250


def test_log_lines_start_at_a_byte_offset(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("first\nsecond\n", encoding="utf-8")

    assert log_lines(log, len("first\n")) == ["second"]
    assert log_lines(tmp_path / "missing.log", 0) == []


@pytest.mark.parametrize(
    ("text", "partitions"),
    [("{0-3}", {0, 1, 2, 3}), ("{4, 6-7}", {4, 6, 7}), ("{5}", {5}), ("{}", set())],
)
def test_partition_sets_as_faust_logs_them(text: str, partitions: set[int]) -> None:
    assert parse_partition_set(text) == partitions


def test_the_latest_assignment_is_read() -> None:
    lines = _recovery(0.0, ["9"], ["9"], restore=False)
    lines += [
        _line(9.0, "Setting newly assigned partitions "),
        *_table("Topic Partition Set", ("topic", "partitions"), [(TOPIC, "{1, 5-6}")]),
    ]

    assert assigned_partitions(lines, TOPIC) == {1, 5, 6}
    assert assigned_partitions(lines, "unknown") == set()
    assert assigned_partitions([], TOPIC) is None


def test_templates_are_quick_to_make() -> None:
    started = time.monotonic()
    account_templates(200, 3, seed=1, now_ms=NOW_MS, requests_topic="t.payments.requests")
    assert time.monotonic() - started < 10
