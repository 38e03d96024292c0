"""``paystream model train | list | promote | shadow``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from models.dataset import read_history_kafka, write_history_dir
from models.model_cli import parse_time_ms, register
from models.registry import Registry, load_announced
from models.simulate import SimulationSpec, simulate
from streams import topics
from streams.errors import CommandError
from streams.settings import Settings

SMALL = ["--customers", "300", "--days", "24", "--maturity-days", "6", "--eval-days", "6"]
SMALL += ["--fraud-rate", "0.01"]


def run(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="paystream")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args, settings)
    return code


def test_parse_time() -> None:
    assert parse_time_ms("2026-01-01") == 1_767_225_600_000
    assert parse_time_ms("2026-01-01T01:00:00Z") == 1_767_225_600_000 + 3_600_000
    assert parse_time_ms("2026-01-01T00:30") == 1_767_225_600_000 + 1_800_000
    assert parse_time_ms("1767225600000") == 1_767_225_600_000
    with pytest.raises(CommandError, match="cannot read the time"):
        parse_time_ms("last tuesday")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    state = tmp_path_factory.mktemp("state")
    settings = Settings(state_dir=state)
    assert run(["model", "train", "--simulate", "--seed", "4", *SMALL], settings) == 0
    version = Registry(state / "models").newest()
    assert version is not None
    return settings, version


def test_train_simulated_writes_a_version(trained, capsys: pytest.CaptureFixture[str]) -> None:
    settings, version = trained
    meta = Registry(settings.state_dir / "models").info(version).metadata
    assert meta["source"].startswith("simulation")
    assert meta["training_window"]["maturity_days"] == 6
    assert meta["evaluation"]["metrics"]["model"]["auprc"] > 0.3


def test_list_promote_and_shadow(trained, capsys: pytest.CaptureFixture[str]) -> None:
    settings, version = trained
    capsys.readouterr()
    assert run(["model", "list"], settings) == 0
    assert version in capsys.readouterr().out
    assert run(["model", "promote", version, "--no-announce"], settings) == 0
    assert "champion" in capsys.readouterr().out
    assert run(["model", "shadow", version, "--no-announce"], settings) == 0
    roles = Registry(settings.state_dir / "models").roles()
    assert roles["CHAMPION"]["version"] == roles["SHADOW"]["version"] == version
    capsys.readouterr()
    assert run(["model", "list"], settings) == 0
    assert "champion,shadow" in capsys.readouterr().out
    assert run(["model", "list", "--json"], settings) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["version"] == version and row["roles"] == ["champion", "shadow"]


def test_promoting_a_tampered_or_unknown_model_fails(tmp_path: Path, trained) -> None:
    settings, version = trained
    copy = tmp_path / "models"
    source = settings.state_dir / "models" / version
    (copy / version).mkdir(parents=True)
    for path in source.iterdir():
        (copy / version / path.name).write_bytes(path.read_bytes())
    artifact = copy / version / "model.npz"
    artifact.write_bytes(artifact.read_bytes() + b"\x00")
    with pytest.raises(CommandError, match="changed after training"):
        run(["model", "promote", version, "--registry", str(copy), "--no-announce"], settings)
    assert Registry(copy).roles() == {}
    with pytest.raises(CommandError, match="no model version"):
        run(["model", "shadow", "20990101-000000-ffffffff", "--no-announce"], settings)


def test_train_from_a_directory_and_bad_windows(tmp_path: Path) -> None:
    sim = simulate(SimulationSpec(customers=300, merchants=60, days=24, seed=6))
    write_history_dir(tmp_path / "history", sim.requests, sim.labels)
    settings = Settings(state_dir=tmp_path / "state")
    args = ["model", "train", "--data", str(tmp_path / "history"), "--maturity-days", "6"]
    window = ["--from", "2026-01-02", "--to", "2026-01-19", "--eval-to", "2026-01-25"]
    assert run([*args, *window, "--json", str(tmp_path / "r.json")], settings) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["windows"]["eval_from"] == "2026-01-19T00:00:00Z"
    assert report["windows"]["train_from"] == "2026-01-02T00:00:00Z"
    assert report["truth_metrics"] is None  # no ground truth outside a simulation
    with pytest.raises(CommandError, match="out of order"):
        run([*args, "--from", "2026-01-20", "--to", "2026-01-10"], settings)


@pytest.mark.integration
@pytest.mark.slow
def test_train_from_kafka_and_announce(kafka_broker: Any, tmp_path: Path) -> None:
    from tests.support.pipeline import isolated_settings, produce, read_topic, send_requests

    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    sim = simulate(SimulationSpec(customers=300, merchants=60, days=24, seed=8))
    send_requests(settings, sim.requests)
    produce(settings, topics.FRAUD_LABELS, ((lab["account_id"], dict(lab)) for lab in sim.labels))

    requests, labels = read_history_kafka(settings)
    key = lambda r: (r["created_at_ms"], r["request_id"])  # noqa: E731
    assert sorted(requests, key=key) == sorted(sim.requests, key=key)
    assert sorted(labels, key=lambda x: x["label_id"]) == sorted(
        sim.labels, key=lambda x: x["label_id"]
    )

    assert run(["model", "train", "--maturity-days", "6", "--eval-days", "6"], settings) == 0
    version = Registry(settings.state_dir / "models").newest()
    assert version is not None
    assert run(["model", "promote", version], settings) == 0
    (announcement,) = read_topic(settings, topics.FRAUD_MODELS, until=lambda r: len(r) >= 1)
    assert announcement["version"] == version and announcement["role"] == "CHAMPION"
    assert load_announced(announcement).version == version
