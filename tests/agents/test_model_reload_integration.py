"""Hot reload on real Kafka: a model promoted under load is served within seconds by the
running worker, a tampered one is refused, and no payment is lost or scored by anything
but a whole model (the old one or the new one)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from models.dataset import build_dataset
from models.registry import Registry, announce
from models.simulate import SimulationSpec, iter_requests, simulate
from models.train import HGBParams, TrainConfig, train_and_register
from streams import topics as names
from tests.support.pipeline import isolated_settings, read_topic, running_worker, send_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY_MS = 86_400_000
TRAIN_SPEC = SimulationSpec(customers=400, merchants=50, days=30, fraud_rate=0.01, seed=11)
LOAD_SPEC = SimulationSpec(customers=300, merchants=40, days=4, seed=12)
SCORED = {"PAYMENT", "AUTHORIZE", "PAYOUT"}


def trained_versions(registry: Registry) -> tuple[Any, Any]:
    """Two registered models; the second one's artifact is then tampered with."""
    sim = simulate(TRAIN_SPEC)
    data = build_dataset(sim.requests, sim.labels)
    config = TrainConfig(
        maturity_ms=5 * DAY_MS, eval_ms=7 * DAY_MS,
        params=HGBParams(learning_rate=0.2, max_iter=30, early_stopping=False),
    )  # fmt: skip
    good, _ = train_and_register(data, config, registry, truth=sim.is_fraud)
    # A different model, so a different artifact digest and version name: the same one
    # registered again within the same second is refused as already registered.
    other = replace(config, params=replace(config.params, max_iter=31))
    bad, _ = train_and_register(data, other, registry, truth=sim.is_fraud)
    assert bad.version != good.version
    artifact = bad.artifact_path
    raw = bytearray(artifact.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    artifact.write_bytes(bytes(raw))
    return good, bad


def test_promote_under_load(kafka_broker: Any, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    registry = Registry(tmp_path / "models")
    good, bad = trained_versions(registry)
    load = list(iter_requests(LOAD_SPEC))
    distinct = {r["request_id"] for r in load}
    chunks = [load[i : i + 250] for i in range(0, len(load), 250)]
    announced: dict[str, float] = {}

    def send_load() -> None:
        for i, chunk in enumerate(chunks):
            send_requests(settings, chunk)
            if i == len(chunks) // 6:
                announce(settings, good, "SHADOW")  # scores beside the champion, decides nothing
            if i == len(chunks) // 4:
                announce(settings, bad, "CHAMPION")  # refused: the old model keeps serving
            if i == len(chunks) // 3:
                announced[good.version] = time.time() * 1000
                announce(settings, good, "CHAMPION")
            time.sleep(0.2)

    with running_worker(settings) as worker:
        # Under load means the worker is deciding (on the rules baseline) when it happens.
        send_requests(settings, chunks[0])
        read_topic(settings, names.DECISIONS, timeout_s=120, worker=worker,
                   until=lambda ds: len(ds) >= len(chunks[0]))  # fmt: skip
        chunks = chunks[1:]
        sender = threading.Thread(target=send_load)
        sender.start()
        decisions = read_topic(
            settings, names.DECISIONS, timeout_s=300, worker=worker,
            until=lambda ds: distinct <= {d["request_id"] for d in ds},
        )  # fmt: skip
        sender.join(60)
        log = worker.log_tail(400)
        url = f"http://127.0.0.1:{worker.web_port}/fraud/"
        with urllib.request.urlopen(url, timeout=10) as response:
            fraud_view = json.load(response)

    by_request: dict[str, dict[str, Any]] = {}
    for decision in decisions:
        first = by_request.setdefault(decision["request_id"], decision)
        assert first == decision, f"two different decisions for {decision['request_id']}"
    assert set(by_request) == distinct, f"{len(distinct - set(by_request))} undecided"

    scored = [d for d in decisions if (d["kind"] in SCORED and d["decline_code"] is None)
              or d["decline_code"] == "fraudulent"]  # fmt: skip
    versions = {d["model_version"] for d in scored}
    assert versions == {"rules-v1", good.version}, versions
    assert bad.version not in versions
    assert good.version in versions, "the promoted model never served"
    assert f"refused champion model {bad.version}" in log
    assert good.version in fraud_view["champion"]
    assert fraud_view["shadow_stats"]["scored"] > 0, fraud_view
    assert fraud_view["refused"] == [bad.version]
    # Per account (one partition, in order): once the new model decided, the old never again.
    switched: set[str] = set()
    for d in decisions:
        if d["model_version"] == good.version:
            switched.add(d["account_id"])
        elif d["model_version"] == "rules-v1":
            assert d["account_id"] not in switched, "old model after the new one"
    flagged = [d for d in scored if d["status"] == "REVIEW" or d["decline_code"] == "fraudulent"]
    assert all(d["reasons"] and d["model_version"] for d in flagged)
    first_new_ms = min(d["decided_at_ms"] for d in decisions if d["model_version"] == good.version)
    reload_s = (first_new_ms - announced[good.version]) / 1000
    assert reload_s < 10, f"the promoted model took {reload_s:.1f} s to serve"
    print(f"\npromote under load: {len(load)} requests, {len(scored)} scored, "
          f"{len(flagged)} flagged, versions {sorted(versions)}; "
          f"serving {reload_s:.2f} s after the announcement")  # fmt: skip
