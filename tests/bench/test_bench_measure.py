"""The figures of ``paystream bench pipeline``: pure computations on observed numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import measure
from bench.measure import CpuSample

# /proc/<pid>/stat of a process whose name holds a space and a parenthesis (see proc(5)):
# pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
# utime stime cutime cstime ...
STAT_LINE = (
    "4242 (python (worker) x) S 1 4242 4242 0 -1 4194560 12345 0 3 0 "
    "1500 250 40 10 20 0 7 0 123456 987654321 2048 18446744073709551615 0 0 0 0 0 0 0 "
    "16781312 16386 0 0 0 17 1 0 0 0 0 0\n"
)
STATUS_TEXT = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t 1351636 kB
VmSize:\t 1351636 kB
VmHWM:\t  110844 kB
VmRSS:\t  104220 kB
Threads:\t7
"""


def test_rate_counts_per_second_from_first_to_last() -> None:
    assert measure.rate_per_s(2000, 10_000, 12_000) == 1000.0
    assert measure.rate_per_s(5, 10_000, 10_000) == 5000.0  # one Kafka millisecond
    assert measure.rate_per_s(0, 0, 1000) == 0.0


def test_rate_to_a_fraction_leaves_out_a_slow_tail() -> None:
    stamps = [1000 + i for i in range(99)] + [60_000]  # 99 quick decisions, one late
    assert measure.rate_to_fraction(stamps, 1000, 0.99) == (99 * 1000 / 98, 1098)
    assert measure.rate_to_fraction(stamps, 1000, 1.0) == (100 * 1000 / 59_000, 60_000)
    assert measure.rate_to_fraction([5], 5, 0.99) == (1000.0, 5)
    with pytest.raises(ValueError):
        measure.rate_to_fraction(stamps, 1000, 0)
    with pytest.raises(ValueError):
        measure.rate_to_fraction([], 1000, 0.5)


def test_bucket_width_is_a_second_for_long_runs_and_narrower_for_short_ones() -> None:
    assert measure.bucket_ms_for(600_000) == 1000
    assert measure.bucket_ms_for(4_000) == 200
    assert measure.bucket_ms_for(50) == 100


def test_throughput_buckets_count_per_second_including_empty_buckets() -> None:
    stamps = [1000, 1100, 1900, 3500, 3600]
    assert measure.throughput_buckets(stamps, 1000) == [(0.0, 3.0), (1.0, 0.0), (2.0, 2.0)]
    # Narrow buckets are scaled to a per-second rate; events before the origin are ignored.
    assert measure.throughput_buckets([900, 1000, 1050, 1250], 250, origin_ms=1000) == [
        (0.0, 8.0),
        (0.25, 4.0),
    ]
    assert measure.throughput_buckets([], 1000) == []
    with pytest.raises(ValueError):
        measure.throughput_buckets([1], 0)


def test_latencies_pair_requests_with_their_decisions_skipping_missing_ones() -> None:
    assert measure.latencies_ms([100, 200, -1, 400], [150, 260, 300, -1]) == [50, 60]
    with pytest.raises(ValueError):
        measure.latencies_ms([1], [1, 2])


def test_latency_summary_uses_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))  # 1..100 ms
    summary = measure.latency_summary(reversed(values))
    assert summary["latency_ms_p50"] == 51  # round(0.5 * 99) = index 50 (nearest rank)
    assert summary["latency_ms_p95"] == 95
    assert summary["latency_ms_p99"] == 99
    assert summary["latency_ms_max"] == 100
    assert summary["latency_ms_mean"] == pytest.approx(50.5)
    assert set(measure.latency_summary([]).values()) == {None}


def test_latency_quantiles_describe_the_whole_distribution() -> None:
    quantiles = measure.latency_quantiles([5, 1, 3])
    assert quantiles[0] == (0.0, 1)
    assert quantiles[-1] == (1.0, 5)
    assert (0.999, 5) in quantiles
    fractions = [q for q, _ in quantiles]
    assert fractions == sorted(fractions)
    assert measure.latency_quantiles([]) == []


def test_proc_stat_is_parsed_past_a_command_name_with_spaces_and_parentheses() -> None:
    stat = measure.parse_proc_stat(STAT_LINE)
    assert (stat.pid, stat.ppid, stat.session) == (4242, 1, 4242)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (1500, 250, 40, 10)
    assert stat.ticks == 1800
    with pytest.raises(ValueError):
        measure.parse_proc_stat("garbage")


def test_proc_status_kb_fields_are_bytes() -> None:
    assert measure.parse_proc_status_kb(STATUS_TEXT, "VmHWM") == 110844 * 1024
    assert measure.parse_proc_status_kb(STATUS_TEXT, "VmRSS") == 104220 * 1024
    assert measure.parse_proc_status_kb(STATUS_TEXT, "VmSwap") is None
    with pytest.raises(ValueError):
        measure.parse_proc_status_kb("VmHWM:\t12 pages\n", "VmHWM")


def test_cpu_between_interpolates_between_samples() -> None:
    samples = [CpuSample(1000, 1.0), CpuSample(2000, 2.0), CpuSample(3000, 2.5)]
    assert measure.cpu_at(samples, 1500) == pytest.approx(1.5)
    assert measure.cpu_at(samples, 500) == 1.0  # before the first sample
    assert measure.cpu_at(samples, 9000) == 2.5  # after the last
    assert measure.cpu_between(samples, 1500, 2500) == pytest.approx(0.75)
    assert measure.cpu_between(samples, 2000, 2000) == 0.0
    with pytest.raises(ValueError):
        measure.cpu_between(samples, 2000, 1000)
    with pytest.raises(ValueError):
        measure.cpu_at([], 1)


def test_per_thousand_and_per_million_are_none_without_a_count() -> None:
    assert measure.per_thousand(3.0, 2000) == 1.5
    assert measure.per_thousand(3.0, 0) is None
    assert measure.per_million(5_000_000, 250_000) == 20_000_000.0
    assert measure.per_million(1.0, 0) is None


def test_median_figures_take_each_numeric_figure_over_the_runs_that_have_it() -> None:
    runs: list[dict[str, Any]] = [
        {"decisions_per_s": 100.0, "latency_ms_p99": None, "ok": True, "cpu_s": 3, "x": [1]},
        {"decisions_per_s": 300.0, "latency_ms_p99": 40, "ok": True, "cpu_s": math.nan},
        {"decisions_per_s": 200.0, "latency_ms_p99": 60, "ok": True, "cpu_s": 5},
    ]
    medians = measure.median_figures(runs)
    assert medians == {"decisions_per_s": 200.0, "latency_ms_p99": 50.0, "cpu_s": 4.0}
    assert measure.median_figures([]) == {}


def test_ratio_is_none_when_either_side_is_missing() -> None:
    assert measure.ratio(300.0, 100.0) == 3.0
    assert measure.ratio(None, 100.0) is None
    assert measure.ratio(1.0, 0.0) is None
