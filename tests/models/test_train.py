"""Training end to end on a small simulation: windows, maturity, metrics, the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.dataset import Dataset, build_dataset
from models.errors import TrainingDataError
from models.evaluate import compute_metrics
from models.registry import Registry
from models.simulate import Simulation, SimulationSpec, simulate
from models.train import (
    DAY_MS,
    HGBParams,
    TrainConfig,
    format_report,
    resolve_windows,
    train,
    train_and_register,
)

SPEC = SimulationSpec(customers=500, merchants=60, days=40, fraud_rate=0.01, seed=3)
FAST = HGBParams(learning_rate=0.1, max_iter=120, n_iter_no_change=15)
TINY = HGBParams(learning_rate=0.2, max_iter=20, early_stopping=False)
CONFIG = TrainConfig(maturity_ms=10 * DAY_MS, eval_ms=10 * DAY_MS, params=FAST)


@pytest.fixture(scope="module")
def history() -> tuple[Simulation, Dataset]:
    sim = simulate(SPEC)
    return sim, build_dataset(sim.requests, sim.labels)


def test_default_windows(history: tuple[Simulation, Dataset]) -> None:
    _, data = history
    w = resolve_windows(data, CONFIG)
    assert w.eval_to_ms == SPEC.end_ms  # the end of the history, on a whole day
    assert w.eval_from_ms == w.requested_train_to_ms == SPEC.end_ms - 10 * DAY_MS
    assert w.as_of_ms == min(w.requested_train_to_ms + 10 * DAY_MS, data.latest_event_ms)
    assert w.train_to_ms == min(w.requested_train_to_ms, w.as_of_ms - 10 * DAY_MS)
    assert w.train_from_ms == data.first_ms
    assert w.to_json()["maturity_days"] == 10


def test_only_matured_payments_and_known_labels_train(history) -> None:
    _, data = history
    as_of = SPEC.start_ms + 25 * DAY_MS
    config = TrainConfig(
        train_to_ms=SPEC.start_ms + 30 * DAY_MS,
        as_of_ms=as_of,
        maturity_ms=10 * DAY_MS,
        params=TINY,
    )
    w = resolve_windows(data, config)
    assert w.train_to_ms == SPEC.start_ms + 15 * DAY_MS  # as_of - maturity
    trained = train(data, config)
    rows = data.window(w.train_from_ms, w.train_to_ms)
    assert trained.report.train_rows == rows.size
    assert trained.report.train_frauds == int(data.labels_as_of(as_of)[rows].sum())
    assert trained.report.train_frauds < int(data.labels_as_of(None)[rows].sum())
    assert trained.report.eval_rows == data.window(w.eval_from_ms, w.eval_to_ms).size


def test_bad_windows_are_explained(history) -> None:
    _, data = history
    with pytest.raises(TrainingDataError, match="out of order"):
        resolve_windows(data, TrainConfig(train_from_ms=SPEC.end_ms, params=FAST))
    with pytest.raises(TrainingDataError, match="no matured payments"):
        resolve_windows(data, TrainConfig(as_of_ms=SPEC.start_ms + DAY_MS, maturity_ms=30 * DAY_MS))


def test_train_evaluate_and_register(history, tmp_path: Path) -> None:
    sim, data = history
    registry = Registry(tmp_path / "models")
    info, report = train_and_register(data, CONFIG, registry, truth=sim.is_fraud, source="t")
    m = report.metrics
    assert set(m) == {
        "model",
        "hist_gradient_boosting",
        "logistic_regression",
        "best_single_feature",
        "rules_baseline",
    }
    assert report.chosen in ("hist_gradient_boosting", "logistic_regression")
    assert m["model"].auprc == pytest.approx(m[report.chosen].auprc, abs=1e-9)
    assert 0 <= report.selection[report.chosen] <= 1
    assert report.truth_metrics is not None and set(report.truth_metrics) == set(m)
    for metrics in m.values():
        assert 0.0 <= metrics.auprc <= 1.0 and metrics.rows == report.eval_rows
    # Even a small simulation separates: the model beats the best single feature clearly.
    assert m["model"].auprc > m["best_single_feature"].auprc + 0.2
    assert m["model"].roc_auc > 0.9
    assert report.thresholds.cost <= report.thresholds.cost_approve_all

    # The registered model is the one evaluated: the loaded scorer reproduces the metrics.
    scorer = registry.load(info.version)
    meta = info.metadata
    assert meta["training_window"]["maturity_days"] == 10
    assert meta["evaluation"]["metrics"]["model"]["auprc"] == pytest.approx(m["model"].auprc)
    assert meta["thresholds"]["decline"] is None or meta["thresholds"]["decline"] > 0
    w = report.windows
    rows = data.window(w.eval_from_ms, w.eval_to_ms)
    scores = scorer.score_matrix(data.X[rows])
    again = compute_metrics(data.labels_as_of(None)[rows], scores, data.values[rows])
    assert again.auprc == pytest.approx(m["model"].auprc, abs=1e-12)
    assert np.allclose(
        scorer.reference, np.median(data.X[data.window(w.train_from_ms, w.train_to_ms)], axis=0)
    )
    flagged = [a for a in scorer.assess_rows(data.X[rows][:2000]) if a.action != "APPROVE"]
    assert all(a.model_version == info.version and a.reasons for a in flagged)

    text = format_report(report, info)
    assert info.version in text and "logistic_regression" in text and "ground truth" in text
    assert f"{report.chosen} *" in text


def test_too_few_fraud_labels(history) -> None:
    _, data = history
    empty = Dataset(
        data.feature_names,
        data.X,
        data.times,
        data.values,
        data.request_ids,
        data.label_rows[:0],
        data.label_times[:0],
        data.label_fraud[:0],
    )
    with pytest.raises(TrainingDataError, match="too few"):
        train(empty, CONFIG)
