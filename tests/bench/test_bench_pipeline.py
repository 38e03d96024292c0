"""The harness's decisions that need no broker: options, peers, medians, table, plot."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from bench import pipeline, report
from bench.peers import Peer
from bench.plot import plot_summary, representative_run
from streams.errors import CommandError
from streams.settings import Settings


def test_rate_max_or_a_number_sizes_the_load() -> None:
    assert pipeline.load_size("max", None, 60) == (None, pipeline.Options.payments)
    assert pipeline.load_size("max", 2000, 60) == (None, 2000)
    assert pipeline.load_size("5000", None, 60) == (5000.0, 300_000)
    assert pipeline.load_size("0.5", None, 3) == (0.5, 2)
    for rate, payments, duration in (("fast", None, 60), ("-1", None, 60), ("10", None, 0)):
        with pytest.raises(CommandError):
            pipeline.load_size(rate, payments, duration)
    with pytest.raises(CommandError, match="--payments applies to --rate max"):
        pipeline.load_size("5000", 1000, 60)


def test_peers_whose_module_does_not_exist_are_skipped_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peers = (
        Peer("paystream", "streams.cli", ("worker",), fleet=True),
        Peer("future", "bench.peers.no_such_peer_yet"),
        Peer("ceiling", "bench.peers.ceiling", outputs_are_requests=True),
    )
    monkeypatch.setattr(pipeline, "PEERS", peers)
    notes: list[str] = []
    chosen, skipped = pipeline.choose_peers((), notes.append)
    assert [p.name for p in chosen] == ["paystream", "ceiling"]
    assert "does not exist yet" in skipped["future"]
    assert notes == [f"peer future: skipped, {skipped['future']}"]
    chosen, _ = pipeline.choose_peers(("ceiling", "ceiling"), notes.append)
    assert [p.name for p in chosen] == ["ceiling"]
    with pytest.raises(CommandError, match="choose from"):
        pipeline.choose_peers(("nope",), notes.append)
    with pytest.raises(CommandError, match="no peer to run"):
        pipeline.choose_peers(("future",), notes.append)


def test_peer_processes_get_exactly_the_run_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_TOPIC_PREFIX", "someone-elses.")
    monkeypatch.setenv("PAYSTREAM_NOT_A_SETTING", "x")
    settings = Settings(topic_prefix="bench-1.", app_id="bench-1", partitions=3)
    env = pipeline.peer_env(settings, PAYSTREAM_WEB_PORT="6100")
    assert env["PAYSTREAM_TOPIC_PREFIX"] == "bench-1."
    assert env["PAYSTREAM_APP_ID"] == "bench-1"
    assert env["PAYSTREAM_PARTITIONS"] == "3"
    assert env["PAYSTREAM_WEB_PORT"] == "6100"
    assert "PAYSTREAM_NOT_A_SETTING" not in env
    assert env["PATH"]


def _run(throughput: float, ok: bool = True, **extra: Any) -> dict[str, Any]:
    if not ok:
        return {"ok": False, "error": "stalled"}
    return {
        "ok": True,
        "decisions_per_s": throughput,
        "latency_ms_p99": 20.0,
        "cpu_s_per_1000": 1.0,
        "rss_peak_bytes": 100 * 2**20,
        "state_bytes_per_million_accounts": 2**30,
        "throughput_bucket_ms": 1000,
        "throughput_per_s": [(0.0, throughput), (1.0, throughput)],
        "latency_quantiles_ms": [(0.0, 1), (0.5, 10), (1.0, 50)],
        **extra,
    }


def _summary(runs: list[dict[str, dict[str, Any]]], mode: str = "fixed") -> dict[str, Any]:
    summary: dict[str, Any] = {
        "mode": mode,
        "rate_per_s": 500.0,
        "duration_s": 10.0,
        "partitions": 4,
        "workers": 1,
        "peers": ["paystream", "ceiling"],
        "skipped_peers": {"quix": "not there"},
        "runs": [{"run": i + 1, "peers": peers} for i, peers in enumerate(runs)],
    }
    report.summarize(summary, summary["peers"])
    return summary


def test_medians_skip_failed_runs_and_ratios_compare_medians() -> None:
    summary = _summary(
        [
            {"paystream": _run(1000), "ceiling": _run(10_000)},
            {"paystream": _run(3000), "ceiling": _run(20_000)},
            {"paystream": _run(0, ok=False), "ceiling": _run(30_000)},
        ]
    )
    assert summary["failures"] == {"paystream": 1, "ceiling": 0}
    assert summary["median"]["paystream"]["decisions_per_s"] == 2000
    assert summary["median"]["ceiling"]["decisions_per_s"] == 20_000
    assert summary["ratios"]["paystream_over_peer"]["ceiling"] == pytest.approx(0.1)
    assert summary["ratios"]["share_of_ceiling"]["paystream"] == pytest.approx(0.1)
    lines = report.table(summary)
    text = "\n".join(lines)
    assert "median of 3 run(s)" in text
    row = next(line for line in lines if line.startswith("paystream"))
    assert "2,000" in row and "10%" in row and "1/3" in row
    assert "quix       skipped: not there" in text


def test_a_slow_tail_and_a_rate_not_kept_up_with_are_noted() -> None:
    slow = _run(400, send_s=60.0, lag_at_end_s=12.0, measured_s=72.0, last_1pct_s=25.0,
                decisions_per_s_to_99pct=990.0)  # fmt: skip
    fast = _run(500, send_s=60.0, lag_at_end_s=1.5, measured_s=61.5, last_1pct_s=0.2)
    summary = _summary([{"paystream": slow, "ceiling": fast}])
    found = report.notes(summary)
    assert found == [
        "note: paystream's last 1% of decisions took 25.0 s of the 72.0 s measured; 99% were "
        "decided at 990/s",
        "note: paystream did not keep up with the offered rate: its last decision came 12.0 s "
        "after the last request was sent, so its latency is that of a growing backlog",
    ]
    assert report.table(summary)[-2:] == found
    short = _run(500, send_s=2.0, lag_at_end_s=0.9, measured_s=2.9, last_1pct_s=0.1)
    assert report.notes(_summary([{"paystream": short, "ceiling": fast}])) == []


def test_a_peer_that_never_succeeded_has_no_figures_but_a_row() -> None:
    summary = _summary([{"paystream": _run(0, ok=False), "ceiling": _run(10_000)}], "max")
    assert "paystream" not in summary["median"]
    assert summary["ratios"]["paystream_over_peer"]["ceiling"] is None
    row = next(line for line in report.table(summary) if line.startswith("paystream"))
    assert row.split()[1] == "-" and row.endswith("1/1")


def test_the_plot_draws_the_median_run_of_each_peer(tmp_path: Path) -> None:
    summary = _summary(
        [
            {"paystream": _run(1000), "ceiling": _run(9000)},
            {"paystream": _run(3000), "ceiling": _run(8000)},
            {"paystream": _run(2000), "ceiling": _run(0, ok=False)},
        ]
    )
    chosen = representative_run(summary, "paystream")
    assert chosen is not None and chosen["decisions_per_s"] == 2000
    assert representative_run(summary, "nobody") is None
    path = tmp_path / "plots" / "bench.png"
    pytest.importorskip("matplotlib")
    assert plot_summary(summary, path)
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 1000 and height > 400


def test_the_command_hands_its_options_to_the_harness(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streams.cli import build_parser

    seen: dict[str, Any] = {}

    def fake_bench(settings: Settings, options: pipeline.Options, external: bool) -> dict:
        seen.update(options=options, external=external)
        return {"failures": {"paystream": 0, "ceiling": 1}}

    monkeypatch.setattr(pipeline, "bench_pipeline", fake_bench)
    parser = build_parser()
    args = parser.parse_args(
        ["bench", "pipeline", "--rate", "250", "--duration-s", "4", "--peer", "ceiling",
         "--peer", "paystream", "--partitions", "3", "--external", "--json",
         str(tmp_path / "b.json")]
    )  # fmt: skip
    assert args.func(args, Settings(state_dir=tmp_path)) == 1  # a failed run fails the command
    options = seen["options"]
    assert (options.rate_per_s, options.payments, options.mode) == (250.0, 1000, "fixed")
    assert options.peers == ("ceiling", "paystream") and options.partitions == 3
    assert options.workdir == tmp_path / "bench" / "pipeline" and seen["external"]
    assert options.command.startswith("paystream ")
    for other in ("ledger", "scorer"):  # the other benchmarks are still there
        assert parser.parse_args(["bench", other]).bench_command == other
    with pytest.raises(CommandError, match="--runs"):
        bad = parser.parse_args(["bench", "pipeline", "--runs", "0"])
        bad.func(bad, Settings(state_dir=tmp_path))


def test_figures_of_a_fixed_rate_run_pair_requests_and_decisions_by_position() -> None:
    from array import array
    from types import SimpleNamespace

    from bench.measure import CpuSample

    # Positions 0-3 valid, 4 invalid (declined), 5 undecodable (no output).
    sent = array("q", [10_000, 10_100, 10_200, 10_300, 10_150, 10_160])
    decided = array("q", [10_050, 10_180, 10_260, 10_700, 10_200, -1])
    bench = SimpleNamespace(
        load=SimpleNamespace(info=SimpleNamespace(accounts_held=2_000)),
        valid_positions=[0, 1, 2, 3],
        invalid_positions=[4],
    )
    watch = SimpleNamespace(decided_ms=decided, outputs=6, unreadable=1, timestamp_types={2})
    sampler = SimpleNamespace(
        samples=[CpuSample(9_000, 1.0), CpuSample(11_000, 3.0)],
        peak_rss_bytes=50 * 2**20,
        pids_seen={1, 2},
    )
    figures = pipeline._figures(bench, watch, sampler, sent, state_bytes=4096)  # type: ignore[arg-type]
    assert figures["decided"] == 4 and figures["invalid_decided"] == 1
    assert (figures["latency_ms_p50"], figures["latency_ms_max"]) == (80, 400)
    assert figures["decisions_per_s"] == pytest.approx(4 * 1000 / 700)
    assert figures["send_s"] == 0.3 and figures["lag_at_end_s"] == 0.4
    assert figures["cpu_s"] == pytest.approx(0.7)  # 1 CPU second per second, 700 ms
    assert figures["cpu_s_per_1000"] == pytest.approx(175.0)
    assert figures["state_bytes_per_million_accounts"] == 4096 * 500
    assert figures["decision_timestamps"] == "LogAppendTime"
    assert figures["processes"] == 2 and figures["rss_peak_bytes"] == 50 * 2**20
