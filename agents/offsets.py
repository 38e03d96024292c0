"""Which consumed events a worker may process: exactly the next offset of each partition.

faust-streaming 0.15.3 can hand an agent an event out of sequence around a
rebalance: an event fetched in the previous generation after the partition was
re-sought, or a partition's events with one missing. Its commit logic then makes
the loss permanent: it commits past a single unacked offset at the head of a
partition (``Consumer._new_offset`` compares the first acked offset with the
committed one as if the committed offset were the last processed, not the next to
read). RELIABILITY.md records the requests and refunds lost that way.

So the agents do not trust the order they are given. Per partition of the current
assignment this guard knows the offset that must be processed next -- at first the
committed offset (or the partition's earliest, if nothing was committed) -- and
admits only that one:

- ``PROCESS``: the expected offset; the guard moves on to the next.
- ``BEHIND``: already processed here or by the previous owner: dropped, not acked
  (acking a redelivered copy could commit an offset whose first copy is still in
  flight).
- ``AHEAD``: something before it was skipped: dropped, not acked, and the caller
  seeks the partition back to the expected offset.

With every processed offset contiguous from the committed one, acks are too, and
faust has nothing to commit past.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# Seeking back again for the same missing offset waits this long: events already
# buffered past the gap keep arriving after the first seek and must not each cause one.
RESEEK_AFTER_S = 5.0
# A begun partition whose log has records at or past the expected offset, but none of
# whose events reached the guard for this long, has stalled: it is sought again.
STALL_AFTER_S = 15.0


P = TypeVar("P", bound=Hashable)  # how a partition is named: faust's TP, a str in tests


class Verdict(enum.Enum):
    PROCESS = "process"
    BEHIND = "behind"
    AHEAD = "ahead"


@dataclass
class OffsetGuard(Generic[P]):
    """The next offset to process, per partition of the current assignment."""

    _next: dict[P, int] = field(default_factory=dict)
    # partition -> (offset sought back to, when), to rate-limit seeks.
    _sought: dict[P, tuple[int, float]] = field(default_factory=dict)
    # partition -> when one of its events last reached the guard (or it was sought).
    _arrived: dict[P, float] = field(default_factory=dict)

    def reset(self) -> None:
        """Partitions moved: every partition starts again from its committed offset."""
        self._next.clear()
        self._sought.clear()
        self._arrived.clear()

    def arrived(self, partition: P, now_s: float) -> None:
        """An event of ``partition`` was read (whatever its verdict will be)."""
        self._arrived[partition] = now_s

    def expecting(self, partition: P) -> int | None:
        """The offset to process next, or None before the partition's first event."""
        return self._next.get(partition)

    def begin(self, partition: P, offset: int) -> None:
        """Start a partition at ``offset`` (its committed offset, or its earliest)."""
        if offset < 0:
            raise ValueError(f"a start offset cannot be negative, got {offset}")
        self._next[partition] = offset

    def admit(self, partition: P, offset: int) -> Verdict:
        """Whether the event at ``offset`` is the one to process now (and if so, move on)."""
        expected = self._next.get(partition)
        if expected is None:
            raise KeyError(f"partition {partition!r} has not begun: call begin() first")
        if offset == expected:
            self._next[partition] = offset + 1
            self._sought.pop(partition, None)
            return Verdict.PROCESS
        return Verdict.BEHIND if offset < expected else Verdict.AHEAD

    def should_seek(self, partition: P, now_s: float) -> bool:
        """After an AHEAD verdict: whether to seek back now (once per gap and interval)."""
        expected = self._next[partition]
        last = self._sought.get(partition)
        if last is not None and last[0] == expected and now_s - last[1] < RESEEK_AFTER_S:
            return False
        self._sought[partition] = (expected, now_s)
        return True

    def overdue(self, now_s: float, partitions: Iterable[P] | None = None) -> list[tuple[P, int]]:
        """Gaps sought back over at least ``RESEEK_AFTER_S`` ago and still not filled.

        A seek can be undone: faust's fetch loop may record a later offset as read
        just after the seek (it was delivering it), and then drops the re-fetched
        events as already read. When the partition gets no newer events, nothing else
        would ever notice, so a timer seeks these again (and marks them sought now).
        """
        wanted = None if partitions is None else set(partitions)
        due = []
        for partition, (offset, at_s) in self._sought.items():
            if wanted is not None and partition not in wanted:
                continue
            if self._next.get(partition) == offset and now_s - at_s >= RESEEK_AFTER_S:
                due.append((partition, offset))
        for partition, offset in due:
            self._sought[partition] = (offset, now_s)
        return due

    def stalled(self, now_s: float, ends: Mapping[P, int]) -> list[tuple[P, int]]:
        """Begun partitions to seek again: records wait at or past the expected offset
        (``ends``: each partition's high watermark, the offset after its last record),
        yet no event of the partition was read for ``STALL_AFTER_S``.

        This catches what ``overdue`` cannot: a consumer whose position moved past
        the expected offset without a gap ever being seen (the events in between
        dropped as already read, or a partition's rebalance-time seek lost), so that
        nothing arrives to be judged AHEAD. Seeking to the expected offset is always
        safe: what is before it was admitted, and what is re-read after it is
        dropped as BEHIND. Each returned partition is marked as sought now.
        """
        due = []
        for partition, end in ends.items():
            expected = self._next.get(partition)
            if expected is None or end <= expected:
                continue
            last = self._arrived.get(partition)
            if last is None:
                self._arrived[partition] = now_s  # start its clock
            elif now_s - last >= STALL_AFTER_S:
                due.append((partition, expected))
        for partition, _ in due:
            self._arrived[partition] = now_s
        return due

    def skip_to(self, partition: P, offset: int) -> None:
        """Accept a gap that cannot be filled (the log no longer starts before ``offset``)."""
        self._next[partition] = offset
        self._sought.pop(partition, None)
