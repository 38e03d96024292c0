"""The registry: versions on disk, verification before loading, roles, announcements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.errors import ModelError, ModelIntegrityError, ModelNotFoundError
from models.registry import (
    ARTIFACT_FILE,
    METADATA_FILE,
    ModelInfo,
    Registry,
    announce,
    announcement_key,
    load_announced,
    load_verified,
    path_from_uri,
)
from models.scorer import ModelScorer, Thresholds, TreeEnsemble
from schemas.codec import load_codec
from streams import topics
from streams.settings import Settings

NAMES = ("amount", "velocity", "new_device")
HASH = "test-feature-set"
CHECKS: dict[str, Any] = {"feature_set_hash": HASH, "feature_names": NAMES}


def _ensemble(bias: float = 0.0) -> TreeEnsemble:
    """Two stumps: amount > 0.5 adds 2, new_device > 0.5 adds 1."""
    return TreeEnsemble(
        feature=np.array([0, -1, -1, 2, -1, -1], dtype=np.int32),
        threshold=np.array([0.5, 0, 0, 0.5, 0, 0]),
        left=np.array([1, 0, 0, 4, 0, 0], dtype=np.int32),
        right=np.array([2, 0, 0, 5, 0, 0], dtype=np.int32),
        value=np.array([0, -1.0, 1.0, 0, -0.5, 0.5]),
        missing_left=np.zeros(6, dtype=np.bool_),
        roots=np.array([0, 3], dtype=np.int32),
        baseline=-2.0 + bias,
        n_features=len(NAMES),
    )


def _write(registry: Registry, created_at_ms: int = 1_767_225_600_000, bias: float = 0.0):
    return registry.write(
        model=_ensemble(bias),
        feature_names=NAMES,
        feature_set_hash=HASH,
        reference=np.zeros(len(NAMES)),
        thresholds=Thresholds(review=0.4, decline=0.7),
        metadata={"evaluation": {"metrics": {"model": {"auprc": 0.5}}}, "training_window": {}},
        created_at_ms=created_at_ms,
    )


def test_write_list_and_load(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    assert registry.versions() == [] and registry.newest() is None
    first = _write(registry)
    second = _write(registry, created_at_ms=1_767_225_700_000, bias=0.5)
    assert first.version.startswith("20260101-000000-")
    assert registry.versions() == [first.version, second.version]
    assert registry.newest() == second.version
    meta = registry.info(first.version).metadata
    assert meta["sha256"] == first.sha256 and meta["feature_set_hash"] == HASH
    assert meta["feature_names"] == list(NAMES)
    assert meta["thresholds"] == {"review": 0.4, "decline": 0.7}
    assert {"sklearn_version", "numpy_version", "created_at"} <= set(meta)
    assert meta["evaluation"]["metrics"]["model"]["auprc"] == 0.5
    scorer = registry.load(first.version, **CHECKS)
    assert isinstance(scorer, ModelScorer) and scorer.version == first.version
    assert scorer.thresholds == Thresholds(0.4, 0.7)
    # amount high, new device: -2 + 1 + 0.5 = -0.5
    assert scorer.score_matrix([(1.0, 0.0, 1.0)])[0] == pytest.approx(1 / (1 + np.exp(0.5)))
    assert not any(p.name.startswith(".tmp") for p in registry.root.iterdir())
    assert [e.version for e in registry.list() if isinstance(e, ModelInfo)] == [
        first.version,
        second.version,
    ]


def test_unknown_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no model version"):
        registry.load("20990101-000000-deadbeef", **CHECKS)
    with pytest.raises(ModelNotFoundError, match="not a model version"):
        registry.load("../etc", **CHECKS)


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    data = bytearray(info.artifact_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    info.artifact_path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="changed after training; refusing"):
        registry.load(info.version, **CHECKS)


def test_metadata_sha_mismatch_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    path = info.directory / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["sha256"] = "0" * 64
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="metadata records 0000"):
        registry.verify(info.version, **CHECKS)


def test_swapped_artifact_with_rewritten_metadata_is_caught_by_the_announcement(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    good = _write(registry)
    other = _write(registry, created_at_ms=1_767_225_700_000, bias=3.0)
    record = {
        "version": good.version,
        "sha256": good.sha256,
        "artifact_uri": good.artifact_uri,
    }
    assert load_announced(record, **CHECKS).version == good.version
    # Someone replaces the file and fixes up its metadata: only the announced digest knows.
    good.artifact_path.write_bytes(other.artifact_path.read_bytes())
    meta = json.loads((good.directory / METADATA_FILE).read_text())
    meta["sha256"] = other.sha256
    (good.directory / METADATA_FILE).write_text(json.dumps(meta))
    assert registry.load(good.version, **CHECKS)  # consistent on its own ...
    with pytest.raises(ModelIntegrityError, match="was announced"):
        load_announced(record, **CHECKS)  # ... but not what was announced


def test_feature_set_mismatch_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    with pytest.raises(ModelIntegrityError, match="trained on feature set"):
        registry.load(info.version, feature_set_hash="another", feature_names=NAMES)
    with pytest.raises(ModelIntegrityError, match="feature list differs"):
        registry.load(info.version, feature_set_hash=HASH, feature_names=("a", "b", "c"))
    # Default checks use the running code's features, which this test model lacks.
    with pytest.raises(ModelIntegrityError, match="retrain"):
        registry.load(info.version)


def test_broken_metadata_and_moved_directories(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    moved = tmp_path / "20990101-000000-00000000"
    info.directory.rename(moved)
    with pytest.raises(ModelIntegrityError, match="not '20990101"):
        registry.load(moved.name, **CHECKS)
    (moved / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="not readable JSON"):
        load_verified(moved, **CHECKS)
    (moved / METADATA_FILE).write_text(json.dumps({"format": 1}))
    with pytest.raises(ModelIntegrityError, match="lacks"):
        load_verified(moved, **CHECKS)
    (moved / ARTIFACT_FILE).unlink()
    errors = registry.list()
    assert isinstance(errors[0], tuple) and isinstance(errors[0][1], ModelError)


def test_announced_artifact_missing_or_foreign(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    record = {"version": info.version, "sha256": info.sha256, "artifact_uri": info.artifact_uri}
    info.artifact_path.unlink()
    with pytest.raises(ModelIntegrityError, match="cannot read the model file"):
        load_announced(record, **CHECKS)
    with pytest.raises(ModelIntegrityError, match="only file://"):
        load_announced({**record, "artifact_uri": "s3://bucket/model.npz"}, **CHECKS)
    with pytest.raises(ModelIntegrityError, match="lacks"):
        load_announced({"version": "x"}, **CHECKS)
    assert path_from_uri("file:///tmp/x/model.npz") == Path("/tmp/x/model.npz")


def test_roles_are_recorded(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert registry.roles() == {}
    registry.set_role("CHAMPION", {"version": "a"})
    registry.set_role("SHADOW", {"version": "b"})
    registry.set_role("CHAMPION", {"version": "c"})
    assert registry.roles() == {"CHAMPION": {"version": "c"}, "SHADOW": {"version": "b"}}


class _FakeProducer:
    def __init__(self, error: str | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.error = error
        self._callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, value, key))
        self._callbacks.append(on_delivery)

    def flush(self, timeout: float) -> int:
        for callback in self._callbacks:
            callback(self.error, None)
        return 0


def test_announce_encodes_the_model_announcement(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    info = _write(registry)
    settings = Settings(topic_prefix="t1.")
    producer = _FakeProducer()
    record = announce(settings, info, "SHADOW", producer=producer)
    ((topic, value, key),) = producer.sent
    assert topic == "t1.fraud.models" and key == announcement_key("SHADOW").encode()
    decoded = load_codec(topic_prefix="t1.").decode(topics.FRAUD_MODELS, value)
    assert decoded == record
    assert decoded["role"] == "SHADOW" and decoded["sha256"] == info.sha256
    assert load_announced(decoded, **CHECKS).version == info.version
    with pytest.raises(ModelError, match="could not announce"):
        announce(settings, info, "CHAMPION", producer=_FakeProducer(error="broker down"))
