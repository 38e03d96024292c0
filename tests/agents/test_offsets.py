"""The offset guard admits exactly the next offset of each partition."""

from __future__ import annotations

import pytest

from agents.offsets import RESEEK_AFTER_S, STALL_AFTER_S, OffsetGuard, Verdict


def test_admits_contiguous_offsets_from_the_start() -> None:
    guard = OffsetGuard()
    guard.begin("p0", 110)
    assert [guard.admit("p0", o) for o in (110, 111, 112)] == [Verdict.PROCESS] * 3
    assert guard.expecting("p0") == 113


def test_a_skipped_offset_stops_the_partition_until_it_arrives() -> None:
    # The kill -9 loss in RELIABILITY.md: 131 processed, 132 never seen, 133 delivered.
    guard = OffsetGuard()
    guard.begin("p2", 131)
    assert guard.admit("p2", 131) is Verdict.PROCESS
    assert guard.admit("p2", 133) is Verdict.AHEAD
    assert guard.admit("p2", 134) is Verdict.AHEAD
    assert guard.expecting("p2") == 132
    assert guard.admit("p2", 132) is Verdict.PROCESS
    assert guard.admit("p2", 133) is Verdict.PROCESS


def test_the_first_offset_of_a_partition_cannot_be_skipped() -> None:
    guard = OffsetGuard()
    guard.begin("p0", 0)
    assert guard.admit("p0", 1) is Verdict.AHEAD
    assert guard.admit("p0", 0) is Verdict.PROCESS


def test_redelivered_offsets_are_behind() -> None:
    guard = OffsetGuard()
    guard.begin("p1", 50)
    for offset in (50, 51):
        guard.admit("p1", offset)
    assert guard.admit("p1", 49) is Verdict.BEHIND
    assert guard.admit("p1", 51) is Verdict.BEHIND
    assert guard.expecting("p1") == 52


def test_partitions_are_independent_and_reset_forgets_them() -> None:
    guard = OffsetGuard()
    guard.begin("a", 5)
    guard.begin("b", 9)
    assert guard.admit("a", 5) is Verdict.PROCESS
    assert guard.admit("b", 5) is Verdict.BEHIND
    guard.reset()
    assert guard.expecting("a") is None
    with pytest.raises(KeyError):
        guard.admit("a", 6)


def test_seeks_once_per_gap_and_interval() -> None:
    guard = OffsetGuard()
    guard.begin("p", 10)
    guard.admit("p", 12)
    assert guard.should_seek("p", 100.0)
    assert not guard.should_seek("p", 100.0 + RESEEK_AFTER_S / 2)
    assert guard.should_seek("p", 100.0 + RESEEK_AFTER_S)
    guard.admit("p", 10)
    guard.admit("p", 12)  # a new gap (11) seeks at once
    assert guard.should_seek("p", 100.0 + RESEEK_AFTER_S + 0.1)


def test_skip_to_accepts_a_trimmed_log() -> None:
    guard = OffsetGuard()
    guard.begin("p", 3)
    assert guard.admit("p", 40) is Verdict.AHEAD
    guard.skip_to("p", 40)
    assert guard.admit("p", 40) is Verdict.PROCESS


def test_negative_start_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OffsetGuard().begin("p", -1)


def test_an_unfilled_gap_is_due_for_another_seek() -> None:
    guard = OffsetGuard()
    guard.begin("p", 708)
    assert guard.admit("p", 709) is Verdict.AHEAD
    assert guard.should_seek("p", 10.0)
    assert guard.overdue(10.0 + RESEEK_AFTER_S / 2) == []
    assert guard.overdue(10.0 + RESEEK_AFTER_S) == [("p", 708)]
    assert guard.overdue(10.0 + RESEEK_AFTER_S + 1) == []  # just sought again
    assert guard.admit("p", 708) is Verdict.PROCESS
    assert guard.overdue(100.0) == []  # filled


def test_no_gap_is_overdue_after_a_reset() -> None:
    guard = OffsetGuard()
    guard.begin("p", 1)
    guard.admit("p", 3)
    guard.should_seek("p", 0.0)
    guard.reset()
    assert guard.overdue(100.0) == []


def test_overdue_can_be_limited_to_some_partitions() -> None:
    guard = OffsetGuard()
    for partition in ("a", "b"):
        guard.begin(partition, 5)
        guard.admit(partition, 9)
        guard.should_seek(partition, 0.0)
    assert guard.overdue(RESEEK_AFTER_S, ["b"]) == [("b", 5)]
    assert guard.overdue(RESEEK_AFTER_S, ["b"]) == []  # just sought again
    assert guard.overdue(RESEEK_AFTER_S) == [("a", 5)]


def test_a_partition_with_waiting_records_and_no_events_has_stalled() -> None:
    guard = OffsetGuard()
    guard.begin("p", 40)
    guard.arrived("p", 100.0)
    assert guard.admit("p", 40) is Verdict.PROCESS
    ends = {"p": 60}  # offsets 41..59 are on the broker, none arrives
    assert guard.stalled(100.0 + STALL_AFTER_S - 1, ends) == []
    assert guard.stalled(100.0 + STALL_AFTER_S, ends) == [("p", 41)]
    assert guard.stalled(100.0 + STALL_AFTER_S + 1, ends) == []  # just sought
    assert guard.stalled(100.0 + 2 * STALL_AFTER_S, ends) == [("p", 41)]


def test_a_partition_read_to_its_end_or_still_reading_has_not_stalled() -> None:
    guard = OffsetGuard()
    guard.begin("done", 7)
    guard.begin("busy", 3)
    guard.arrived("done", 0.0)
    guard.arrived("busy", 0.0)
    assert guard.stalled(100.0, {"done": 7}) == []  # nothing after the expected offset
    guard.arrived("busy", 99.0)
    assert guard.stalled(100.0, {"busy": 50}) == []  # events keep arriving


def test_stalls_need_a_begun_partition_and_start_their_clock_on_first_sight() -> None:
    guard = OffsetGuard()
    assert guard.stalled(0.0, {"unbegun": 10}) == []  # its committed offset is unknown
    guard.begin("p", 2)
    assert guard.stalled(50.0, {"p": 10}) == []  # never seen arriving: the clock starts
    assert guard.stalled(50.0 + STALL_AFTER_S, {"p": 10}) == [("p", 2)]


def test_a_reset_forgets_arrivals() -> None:
    guard = OffsetGuard()
    guard.begin("p", 2)
    guard.arrived("p", 0.0)
    guard.reset()
    guard.begin("p", 2)
    assert guard.stalled(100.0, {"p": 10}) == []  # a fresh clock, not the old arrival
