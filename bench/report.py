"""What ``paystream bench pipeline`` reports: medians, ratios, the table and its notes.

The summary is a plain dict (it is the JSON): every run of every peer as measured,
then per peer the median of each figure over its successful runs, how many runs
failed, and the throughput ratios of the medians.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import measure

REFERENCE = "paystream"
CEILING = "ceiling"
TAIL_SHARE_NOTED = 0.1  # a last 1% of decisions taking more than this share is noted
# At a fixed rate, a peer that keeps up decides the last request a latency after it was
# sent; one that does not is behind by a growing backlog. Noted beyond these:
LAG_NOTED_S = 2.0
LAG_SHARE_NOTED = 0.1  # of the time the load took to send


def summarize(summary: dict[str, Any], peer_names: Sequence[str]) -> None:
    """Medians over each peer's successful runs, failures counted, ratios of the medians."""
    medians: dict[str, dict[str, float]] = {}
    failures: dict[str, int] = {}
    for name in peer_names:
        results = [run["peers"][name] for run in summary["runs"] if name in run["peers"]]
        good = [r for r in results if r.get("ok")]
        failures[name] = len(results) - len(good)
        if good:
            medians[name] = measure.median_figures(good)
    summary["median"] = medians
    summary["failures"] = failures

    def throughput(name: str) -> float | None:
        return medians.get(name, {}).get("decisions_per_s")

    summary["ratios"] = {
        "paystream_over_peer": {
            n: measure.ratio(throughput(REFERENCE), throughput(n)) for n in peer_names
        },
        "share_of_ceiling": {
            n: measure.ratio(throughput(n), throughput(CEILING)) for n in peer_names
        },
    }


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def _number(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(summary: dict[str, Any]) -> list[str]:
    """The side-by-side table of the medians, for people."""
    fixed = summary["mode"] == "fixed"
    runs = len(summary["runs"])
    what = (
        f"at {summary['rate_per_s']:,.0f} requests/s offered for {summary['duration_s']:.0f} s"
        if fixed
        else "at max rate (preloaded, drained)"
    )
    lines = [
        "",
        f"bench pipeline {what}: median of {runs} run(s), {summary['partitions']} partitions, "
        f"{summary['workers']} paystream worker(s)",
    ]
    header = f"{'peer':<10} {'decided/s':>10} {'paystream/peer':>15} {'of ceiling':>11}"
    if fixed:
        header += f" {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    header += f" {'CPU s/1k':>9} {'peak RSS MB':>12} {'state MB/M accts':>17}  failed"
    lines += [header, "-" * len(header)]
    ratios = summary["ratios"]
    for name in summary["peers"]:
        m = summary["median"].get(name, {})
        over = ratios["paystream_over_peer"].get(name)
        share = ratios["share_of_ceiling"].get(name)
        share_percent = None if share is None else share * 100
        row = (
            f"{name:<10} {_number(m.get('decisions_per_s')):>10} "
            f"{_number(over, '.2f', 'x'):>15} {_number(share_percent, '.0f', '%'):>11}"
        )
        if fixed:
            for quantile in ("p50", "p95", "p99", "max"):
                row += f" {_number(m.get(f'latency_ms_{quantile}'), ',.0f'):>7}"
        rss = m.get("rss_peak_bytes")
        state = m.get("state_bytes_per_million_accounts")
        row += (
            f" {_number(m.get('cpu_s_per_1000'), '.3f'):>9}"
            f" {_number(None if rss is None else rss / 2**20, ',.0f'):>12}"
            f" {_number(None if state is None else state / 2**20, ',.0f'):>17}"
            f"  {summary['failures'].get(name, 0)}/{runs}"
        )
        lines.append(row)
    for name, reason in summary["skipped_peers"].items():
        lines.append(f"{name:<10} skipped: {reason}")
    return lines + notes(summary)


def notes(summary: dict[str, Any]) -> list[str]:
    """What the medians alone would hide: a slow tail, a rate a peer could not keep up with."""
    found = []
    for name in summary["peers"]:
        m = summary["median"].get(name)
        if not m:
            continue
        tail_s, measured_s = m.get("last_1pct_s"), m.get("measured_s")
        if tail_s is not None and measured_s and tail_s > TAIL_SHARE_NOTED * measured_s:
            found.append(
                f"note: {name}'s last 1% of decisions took {tail_s:,.1f} s of the "
                f"{measured_s:,.1f} s measured; 99% were decided at "
                f"{m['decisions_per_s_to_99pct']:,.0f}/s"
            )
        lag_s, send_s = m.get("lag_at_end_s"), m.get("send_s")
        if (
            lag_s is not None
            and send_s is not None
            and lag_s > max(LAG_NOTED_S, LAG_SHARE_NOTED * send_s)
        ):
            found.append(
                f"note: {name} did not keep up with the offered rate: its last decision came "
                f"{lag_s:,.1f} s after the last request was sent, so its latency is that of a "
                "growing backlog"
            )
    return found
