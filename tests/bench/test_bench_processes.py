"""The /proc sampler of ``paystream bench pipeline``, on a fake /proc and on itself."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bench.processes import Sampler, directory_bytes, read_session_stats, start_process


def _stat(pid: int, session: int, utime: int, stime: int, cutime: int = 0) -> str:
    return (
        f"{pid} (peer) S 1 {session} {session} 0 -1 0 0 0 0 0 {utime} {stime} {cutime} 0 "
        "20 0 1 0 100 1000 10\n"
    )


def _process(proc: Path, pid: int, stat: str, hwm_kb: int | None) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stat").write_text(stat)
    status = "Name:\tpeer\n" + (f"VmHWM:\t{hwm_kb} kB\n" if hwm_kb is not None else "")
    (directory / "status").write_text(status)


class _Leader:
    """Stands in for a PeerProcess: only its pid (the session id) is read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_sessions_select_the_peer_processes_only(tmp_path: Path) -> None:
    _process(tmp_path, 100, _stat(100, 100, 10, 5), 1000)
    _process(tmp_path, 101, _stat(101, 100, 3, 1), 500)  # forked by the peer
    _process(tmp_path, 200, _stat(200, 200, 99, 99), 9000)  # someone else
    (tmp_path / "self").mkdir()
    (tmp_path / "102").mkdir()  # vanished between listing and reading
    found = read_session_stats({100}, tmp_path)
    assert sorted(s.pid for s in found) == [100, 101]
    # Between full scans only the known processes are read.
    found = read_session_stats({100}, tmp_path, pids={101, 200, 999})
    assert [s.pid for s in found] == [101]


def test_sampler_adds_up_cpu_of_the_tree_and_keeps_what_exited(tmp_path: Path) -> None:
    sampler = Sampler([_Leader(100)], tmp_path)  # type: ignore[list-item]
    tick_s = sampler.tick_s
    _process(tmp_path, 100, _stat(100, 100, 10, 5), 1000)
    _process(tmp_path, 101, _stat(101, 100, 3, 1), 500)
    sampler.sample()
    assert sampler.samples[-1].cpu_s == pytest.approx(19 * tick_s)
    # The child ran on and exited; the leader ran on too, and has not reaped it.
    _process(tmp_path, 101, _stat(101, 100, 6, 2), 800)
    sampler.sample()
    (tmp_path / "101" / "stat").unlink()
    _process(tmp_path, 100, _stat(100, 100, 20, 5), 1200)
    sampler.sample()
    assert sampler.samples[-1].cpu_s == pytest.approx((25 + 8) * tick_s)
    assert [s.cpu_s for s in sampler.samples] == sorted(s.cpu_s for s in sampler.samples)
    assert sampler.peak_rss == {100: 1200 * 1024, 101: 800 * 1024}
    assert sampler.peak_rss_bytes == 2000 * 1024
    assert sampler.pids_seen == {100, 101}


def test_sampler_measures_a_real_process(tmp_path: Path) -> None:
    # 0.3 s of CPU however busy the machine is, then idle until stopped.
    busy = "import time\nwhile time.process_time() < 0.3: pass\ntime.sleep(120)\n"
    peer = start_process(
        "busy", [sys.executable, "-c", busy], dict(os.environ), tmp_path / "busy.log"
    )
    sampler = Sampler([peer])
    sampler.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            not sampler.samples or sampler.samples[-1].cpu_s < 0.28 - 1e-9  # ticks are 10 ms
        ):
            time.sleep(0.1)
        assert sampler.samples[-1].cpu_s >= 0.28 - 1e-9  # a difference of float sums
        assert sampler.cpu_recent_s(600) >= 0.28 - 1e-9
        time.sleep(1.0)
        assert sampler.cpu_recent_s(0.5) < 0.1  # it sleeps now
        assert sampler.peak_rss_bytes > 1024 * 1024
        assert peer.pid in sampler.pids_seen
    finally:
        sampler.stop()
        assert peer.stop()  # SIGTERM ends it well within the grace period
    assert not peer.alive()


def test_directory_bytes_counts_allocated_blocks(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 10_000)
    (tmp_path / "g").write_bytes(b"y" * 100)
    used = directory_bytes(tmp_path)
    assert used >= 10_100
    assert used % 512 == 0
    assert directory_bytes(tmp_path / "missing") == 0
