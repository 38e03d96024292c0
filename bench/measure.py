"""The figures of ``paystream bench pipeline``, computed from what was observed.

Pure functions only: the harness (:mod:`bench.pipeline`) reads Kafka timestamps and
``/proc`` and hands the numbers here. Times are integer milliseconds of the
machine's wall clock (Kafka timestamps), CPU in seconds, memory in bytes.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.reporting import percentile

BUCKETS_PER_RUN_MIN = 20  # a short drain still draws as a curve, not as two bars
BUCKET_MS_MIN = 100
BUCKET_MS_MAX = 1000
LATENCY_QUANTILES = (*(i / 100 for i in range(101)), 0.995, 0.999)


# --------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------


def rate_per_s(count: int, first_ms: int, last_ms: int) -> float:
    """``count`` events spread from ``first_ms`` to ``last_ms``, per second.

    A span under one millisecond (a handful of events in one Kafka batch) is taken as
    one millisecond: Kafka timestamps cannot say more.
    """
    if count <= 0:
        return 0.0
    return count * 1000.0 / max(last_ms - first_ms, 1)


def rate_to_fraction(
    timestamps_ms: Sequence[int], start_ms: int, fraction: float
) -> tuple[float, int]:
    """(events per second, when) until ``fraction`` of the events had happened.

    The drain's headline rate runs to the very last decision; this one shows how much
    of it a slow tail (a few late decisions) took.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    if not timestamps_ms:
        raise ValueError("no timestamps")
    ordered = sorted(timestamps_ms)
    count = max(1, math.ceil(fraction * len(ordered)))
    at_ms = ordered[count - 1]
    return rate_per_s(count, start_ms, at_ms), at_ms


def bucket_ms_for(span_ms: int) -> int:
    """One-second buckets, narrower for short runs so they still show a curve."""
    wanted = span_ms // BUCKETS_PER_RUN_MIN
    return int(min(BUCKET_MS_MAX, max(BUCKET_MS_MIN, wanted)))


def throughput_buckets(
    timestamps_ms: Iterable[int], bucket_ms: int, origin_ms: int | None = None
) -> list[tuple[float, float]]:
    """(seconds since ``origin_ms``, events per second) for each bucket, empty ones included.

    ``origin_ms`` defaults to the first timestamp; events before it are ignored.
    """
    if bucket_ms <= 0:
        raise ValueError(f"bucket_ms={bucket_ms}: must be positive")
    stamps = sorted(timestamps_ms)
    if not stamps:
        return []
    origin = stamps[0] if origin_ms is None else origin_ms
    counts: dict[int, int] = {}
    for stamp in stamps:
        if stamp >= origin:
            index = (stamp - origin) // bucket_ms
            counts[index] = counts.get(index, 0) + 1
    if not counts:
        return []
    scale = 1000.0 / bucket_ms
    return [
        (index * bucket_ms / 1000.0, counts.get(index, 0) * scale)
        for index in range(max(counts) + 1)
    ]


# --------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------


def latencies_ms(sent_ms: Sequence[int], decided_ms: Sequence[int]) -> list[int]:
    """Decision time minus request time for every request with both (negative = missing)."""
    if len(sent_ms) != len(decided_ms):
        raise ValueError(f"{len(sent_ms)} request times but {len(decided_ms)} decision times")
    return [d - s for s, d in zip(sent_ms, decided_ms, strict=True) if s >= 0 and d >= 0]


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (nearest rank) and the mean, in milliseconds; None when empty."""
    ordered = sorted(values_ms)
    if not ordered:
        return dict.fromkeys(
            (
                "latency_ms_p50",
                "latency_ms_p95",
                "latency_ms_p99",
                "latency_ms_max",
                "latency_ms_mean",
            ),
        )
    return {
        "latency_ms_p50": percentile(ordered, 0.50),
        "latency_ms_p95": percentile(ordered, 0.95),
        "latency_ms_p99": percentile(ordered, 0.99),
        "latency_ms_max": ordered[-1],
        "latency_ms_mean": statistics.fmean(ordered),
    }


def latency_quantiles(values_ms: Iterable[float]) -> list[tuple[float, float]]:
    """(fraction, latency) at every percent plus p99.5 and p99.9: the distribution, compact."""
    ordered = sorted(values_ms)
    if not ordered:
        return []
    return [(q, percentile(ordered, q)) for q in sorted(LATENCY_QUANTILES)]


# --------------------------------------------------------------------------------------
# CPU and memory from /proc
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the harness needs (CPU times in clock ticks)."""

    pid: int
    ppid: int
    session: int
    utime: int
    stime: int
    cutime: int  # of children that exited and were waited for
    cstime: int

    @property
    def ticks(self) -> int:
        """Its own CPU plus that of its reaped children."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_proc_stat(text: str) -> ProcStat:
    """``/proc/<pid>/stat``; the command name may hold spaces and parentheses."""
    head, close, rest = text.rpartition(")")
    if not close or "(" not in head:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = rest.split()
    # fields[0] is field 3 of proc(5) (state): field n is fields[n - 3].
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def parse_proc_status_kb(text: str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``) in bytes."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            parts = value.split()
            if len(parts) != 2 or parts[1] != "kB":
                raise ValueError(f"/proc status {field}: expected '<n> kB', got {value.strip()!r}")
            return int(parts[0]) * 1024
    return None


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by a process tree, at ``at_ms`` (wall clock)."""

    at_ms: int
    cpu_s: float


def cpu_at(samples: Sequence[CpuSample], at_ms: int) -> float:
    """The tree's CPU seconds at ``at_ms``, interpolated between the samples around it.

    Before the first sample it is the first sample's value, after the last the last's.
    """
    if not samples:
        raise ValueError("no CPU samples")
    if at_ms <= samples[0].at_ms:
        return samples[0].cpu_s
    for before, after in itertools.pairwise(samples):
        if before.at_ms <= at_ms <= after.at_ms:
            span = after.at_ms - before.at_ms
            if span == 0:
                return after.cpu_s
            share = (at_ms - before.at_ms) / span
            return before.cpu_s + share * (after.cpu_s - before.cpu_s)
    return samples[-1].cpu_s


def cpu_between(samples: Sequence[CpuSample], start_ms: int, end_ms: int) -> float:
    """CPU seconds the tree used from ``start_ms`` to ``end_ms``."""
    if end_ms < start_ms:
        raise ValueError(f"window ends ({end_ms}) before it starts ({start_ms})")
    return cpu_at(samples, end_ms) - cpu_at(samples, start_ms)


def per_thousand(value: float, count: int) -> float | None:
    """``value`` per 1,000 of ``count`` (None when nothing was counted)."""
    return value * 1000.0 / count if count > 0 else None


def per_million(value: float, count: int) -> float | None:
    return value * 1_000_000.0 / count if count > 0 else None


# --------------------------------------------------------------------------------------
# Runs, medians and ratios
# --------------------------------------------------------------------------------------


def median_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The median of every numeric figure over the runs that have it (None and NaN skipped).

    Booleans and nested values are not figures; a figure missing from every run is left out.
    """
    names: list[str] = []
    for run in runs:
        for name, value in run.items():
            if _is_figure(value) and name not in names:
                names.append(name)
    medians = {}
    for name in names:
        values = [run[name] for run in runs if _is_figure(run.get(name))]
        medians[name] = float(statistics.median(values))
    return medians


def _is_figure(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None if either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
