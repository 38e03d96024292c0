"""What the long-running commands print: a progress bar and percentiles."""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 0.5
BAR_WIDTH = 30


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when there are none)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def progress(label: str, done: int, total: int, started: float, final: bool = False) -> None:
    """A one-line progress bar on a terminal; only the final line otherwise."""
    if not sys.stderr.isatty() and not final:
        return
    filled = int(BAR_WIDTH * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-9)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    end = "\n" if final or not sys.stderr.isatty() else ""
    sys.stderr.write(f"\r{label:<10} [{bar}] {done}/{total} {rate:,.0f}/s {end}")
    sys.stderr.flush()


class Progress:
    """A progress bar redrawn at most every ``PROGRESS_EVERY_S`` seconds."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._drawn >= PROGRESS_EVERY_S:
            progress(self.label, done, self.total, self.started)
            self._drawn = now

    def finish(self, done: int) -> None:
        progress(self.label, done, self.total, self.started, final=True)
