"""``paystream bench pipeline`` end to end, small, on the session's broker.

Real peer processes (a paystream worker and the ceiling) on fresh topics each, the
same pre-generated load with malformed messages mixed in, measured from the outside.
Asserts what must hold whatever the machine's speed: every valid request decided by
every peer, figures present and sane, the JSON written. Timings are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import pipeline, report
from bench.load import INVALID_KINDS
from bench.peers import Peer
from bench.pipeline import Options, bench_pipeline
from streams.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAYMENTS = 2000
MALFORMED_EVERY = 200  # ten malformed messages: every sort at least once
PEERS = ("paystream", "ceiling")


def _bench(kafka_broker: Any, tmp_path: Path, **options: Any) -> tuple[dict[str, Any], dict]:
    settings = Settings(brokers=kafka_broker.bootstrap, state_dir=tmp_path / "state")
    json_path = tmp_path / "bench.json"
    summary = bench_pipeline(
        settings,
        Options(
            accounts=200,
            runs=1,
            peers=PEERS,
            partitions=4,
            workers=1,
            seed=11,
            malformed_every=MALFORMED_EVERY,
            json_path=json_path,
            workdir=tmp_path / "work",
            **options,
        ),
        external=True,
    )
    written = json.loads(json_path.read_text(encoding="utf-8"))
    return summary, written


def _check_common(summary: dict[str, Any], written: dict[str, Any]) -> dict[str, dict]:
    assert written["median"] == json.loads(json.dumps(summary["median"]))
    load = written["load"]
    assert load["valid"] == PAYMENTS
    assert load["messages"] == PAYMENTS + PAYMENTS // MALFORMED_EVERY
    invalid = sum(load["malformed"][kind] for kind in INVALID_KINDS)
    assert invalid > 0
    assert summary["failures"] == dict.fromkeys(PEERS, 0)
    (run,) = written["runs"]
    results = run["peers"]
    assert set(results) == set(PEERS)
    for name, figures in results.items():
        assert figures["ok"], f"{name}: {figures.get('error')}"
        assert figures["decided"] == PAYMENTS, name  # every valid request has an output
        assert figures["decisions_per_s"] > 0
        assert figures["decision_timestamps"] == "LogAppendTime"
        assert figures["rss_peak_bytes"] > 0 and figures["processes"] >= 1
        assert figures["cpu_s_per_1000"] is not None and figures["cpu_s_per_1000"] >= 0
        assert sum(rate for _, rate in figures["throughput_per_s"]) > 0
        assert figures["outputs"] >= PAYMENTS
    # paystream declines every schema-valid invalid request; the ceiling forwards them.
    assert results["paystream"]["invalid_decided"] == invalid
    assert results["ceiling"]["invalid_decided"] == invalid
    assert results["paystream"]["state_bytes"] > 0
    assert results["ceiling"]["state_bytes"] == 0
    assert results["paystream"]["cpu_s_per_1000"] > 0
    ratios = written["ratios"]
    assert ratios["share_of_ceiling"]["ceiling"] == 1.0
    assert ratios["paystream_over_peer"]["ceiling"] > 0
    return results


def test_max_rate_drains_a_preloaded_load_on_every_peer(kafka_broker: Any, tmp_path: Path) -> None:
    summary, written = _bench(kafka_broker, tmp_path, payments=PAYMENTS)
    assert written["mode"] == "max"
    results = _check_common(summary, written)
    for figures in results.values():
        assert figures["preload_s"] > 0
        assert "latency_ms_p50" not in figures  # latency is a fixed-rate figure


def test_fixed_rate_measures_latency_request_to_decision(kafka_broker: Any, tmp_path: Path) -> None:
    rate_per_s, duration_s = 1000.0, 2.0
    summary, written = _bench(
        kafka_broker,
        tmp_path,
        payments=round(rate_per_s * duration_s),
        rate_per_s=rate_per_s,
        duration_s=duration_s,
    )
    assert written["mode"] == "fixed"
    results = _check_common(summary, written)
    for name, figures in results.items():
        p50, p95, p99, worst = (figures[f"latency_ms_{q}"] for q in ("p50", "p95", "p99", "max"))
        assert 0 <= p50 <= p95 <= p99 <= worst, name
        assert figures["ready_s"] > 0
        quantiles = figures["latency_quantiles_ms"]
        assert quantiles[0][0] == 0.0 and quantiles[-1] == [1.0, worst]
    median = written["median"]["paystream"]
    assert median["latency_ms_p99"] == results["paystream"]["latency_ms_p99"]


def test_a_peer_that_exits_or_idles_fails_its_run_and_gives_no_figures(
    kafka_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = Peer("broken", "json.tool", ("--no-such-option",))  # exits with code 2 at once
    idle = Peer("idle", "timeit", ("-n", "1", "import time; time.sleep(120)"))  # never answers
    monkeypatch.setattr(pipeline, "PEERS", (broken, idle))
    settings = Settings(brokers=kafka_broker.bootstrap, state_dir=tmp_path / "state")
    summary = bench_pipeline(
        settings,
        Options(
            accounts=50,
            payments=200,
            runs=1,
            partitions=2,
            timeout_s=2.0,
            json_path=tmp_path / "bench.json",
            workdir=tmp_path / "work",
        ),
        external=True,
    )
    assert summary["failures"] == {"broken": 1, "idle": 1}
    assert summary["median"] == {}
    results = summary["runs"][0]["peers"]
    assert results["broken"] == {"ok": False, "error": results["broken"]["error"]}
    assert "broken-1 exited with code 2" in results["broken"]["error"]
    assert "not done within the timeout of 2 s: 0 of 200" in results["idle"]["error"]
    lines = report.table(summary)
    assert any(line.startswith("idle") and line.endswith("1/1") for line in lines)
