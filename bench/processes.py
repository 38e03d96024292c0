"""Peer processes under test: started, sampled from ``/proc``, stopped.

Each peer process starts in a session of its own, so everything it forks shares its
session id: the sampler adds up the CPU of every process in those sessions (and of
their reaped children, through ``cutime``/``cstime``) and the peak resident memory
(``VmHWM``) of each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import (
    CpuSample,
    ProcStat,
    cpu_between,
    parse_proc_stat,
    parse_proc_status_kb,
)

SAMPLE_EVERY_S = 0.2
SCAN_EVERY_SAMPLES = 5  # look for new processes in all of /proc once a second
STOP_TIMEOUT_S = 30.0
KILL_WAIT_S = 10.0
LOG_TAIL_LINES = 15
PROC = Path("/proc")


@dataclass
class PeerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self) -> bool:
        """SIGTERM to its session, SIGKILL after ``STOP_TIMEOUT_S``; False if it came to that."""
        if self.process.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(KILL_WAIT_S)
            return False


def start_process(
    name: str, command: Sequence[str], env: dict[str, str], log_path: Path
) -> PeerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as handle:
        process = subprocess.Popen(
            list(command),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return PeerProcess(name, process, log_path)


def read_session_stats(
    sessions: set[int], proc: Path = PROC, pids: set[int] | None = None
) -> list[ProcStat]:
    """``/proc/<pid>/stat`` of every process in these sessions (vanished ones skipped).

    With ``pids``, only those are read (cheap); without, all of ``/proc`` is scanned.
    """
    if pids is None:
        candidates = [int(e.name) for e in proc.iterdir() if e.name.isdigit()]
    else:
        candidates = sorted(pids)
    found = []
    for pid in candidates:
        try:
            stat = parse_proc_stat((proc / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if stat.session in sessions:
            found.append(stat)
    return found


class Sampler(threading.Thread):
    """Samples the CPU and peak memory of the peer's process sessions until stopped."""

    def __init__(self, processes: Sequence[PeerProcess], proc: Path = PROC) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.sessions = {p.pid for p in processes}
        self.proc = proc
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self.samples: list[CpuSample] = []
        self.peak_rss: dict[int, int] = {}  # pid -> VmHWM bytes, highest seen
        self.pids_seen: set[int] = set()
        # Ticks of processes that are gone, as last seen: their time must not vanish from
        # the total. (A child reaped by a process in the tree also shows in its parent's
        # cutime; the peers here do not fork, so that double count does not arise.)
        self._gone_ticks = 0
        self._last_ticks: dict[int, int] = {}
        self._halt = threading.Event()

    def sample(self) -> None:
        scan = len(self.samples) % SCAN_EVERY_SAMPLES == 0
        stats = read_session_stats(
            self.sessions, self.proc, None if scan else set(self._last_ticks)
        )
        now_ms = int(time.time() * 1000)
        current = {s.pid: s.ticks for s in stats}
        for pid, ticks in self._last_ticks.items():
            if pid not in current:
                self._gone_ticks += ticks
        self._last_ticks = current
        self.pids_seen.update(current)
        total = self._gone_ticks + sum(current.values())
        self.samples.append(CpuSample(now_ms, total * self.tick_s))
        for pid in current:
            try:
                text = (self.proc / str(pid) / "status").read_text()
                hwm = parse_proc_status_kb(text, "VmHWM")
            except (OSError, ValueError):
                continue
            if hwm is not None and hwm > self.peak_rss.get(pid, 0):
                self.peak_rss[pid] = hwm

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(10)

    def cpu_recent_s(self, window_s: float) -> float:
        """CPU seconds the processes used in the last ``window_s`` seconds."""
        samples = list(self.samples)  # appended to by the sampling thread
        if not samples:
            return 0.0
        now_ms = int(time.time() * 1000)
        return cpu_between(samples, now_ms - int(window_s * 1000), now_ms)

    @property
    def peak_rss_bytes(self) -> int:
        """Sum over the processes of each one's peak: an upper bound of the tree's peak."""
        return sum(self.peak_rss.values())


def directory_bytes(path: Path) -> int:
    """Disk usage of everything under ``path``, as ``du`` counts it (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
