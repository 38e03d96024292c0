"""``--plot PATH.png``: throughput over time and the latency distribution, per peer.

matplotlib is a development dependency: it is imported here, lazily, so the harness
runs without it (and says so instead of drawing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURE_SIZE_IN = (12.0, 4.5)
DPI = 120


def representative_run(summary: dict[str, Any], peer: str) -> dict[str, Any] | None:
    """The peer's successful run whose throughput is the median one (the lower middle)."""
    results = [
        run["peers"][peer]
        for run in summary["runs"]
        if peer in run["peers"] and run["peers"][peer].get("ok")
    ]
    if not results:
        return None
    ordered = sorted(results, key=lambda r: r["decisions_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def plot_summary(summary: dict[str, Any], path: Path) -> bool:
    """Draw the plot to ``path``; False (nothing drawn) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=FIGURE_SIZE_IN)
    fixed = summary["mode"] == "fixed"
    for peer in summary["peers"]:
        run = representative_run(summary, peer)
        if run is None:
            continue
        buckets = run.get("throughput_per_s") or []
        if buckets:
            seconds = [start for start, _ in buckets]
            rates = [rate for _, rate in buckets]
            # Close the last bucket, so that a one-bucket run still draws a step.
            seconds.append(seconds[-1] + run["throughput_bucket_ms"] / 1000.0)
            rates.append(rates[-1])
            left.step(seconds, rates, where="post", label=peer)
        quantiles = run.get("latency_quantiles_ms") or []
        if quantiles:
            fractions, latencies = zip(*quantiles, strict=True)
            right.plot([max(v, 0.5) for v in latencies], [f * 100 for f in fractions], label=peer)
    if fixed:
        left.axhline(summary["rate_per_s"], linestyle="--", color="grey", label="offered")
    start = "first request sent" if fixed else "first decision"
    left.set_title("decisions per second")
    left.set_xlabel(f"seconds since the {start}")
    left.set_ylabel("decisions/s (log scale)")
    left.set_yscale("symlog", linthresh=100)  # the ceiling is ~100x the others
    left.grid(alpha=0.3)
    left.legend()
    if fixed:
        right.set_title(f"latency, request -> decision, at {summary['rate_per_s']:,.0f}/s")
        right.set_xscale("log")
        right.set_xlabel("milliseconds (Kafka timestamps)")
        right.set_ylabel("percentile")
        right.grid(alpha=0.3, which="both")
        right.legend()
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, "latency: measured at a fixed rate (--rate N)", ha="center")
    figure.suptitle(
        f"paystream bench pipeline ({summary['mode']} rate, {len(summary['runs'])} run(s))"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return True
