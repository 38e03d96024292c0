"""The batch scorer: equal to scikit-learn, bands, reasons, the rules baseline, the artifact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from agents.rules.decide import FraudAssessment
from models.errors import ModelError, ModelIntegrityError
from models.evaluate import fit_logistic_regression
from models.features import FEATURE_NAMES
from models.scorer import (
    SMALL_BATCH_MAX,
    LinearModel,
    ModelScorer,
    RulesBaselineScorer,
    Thresholds,
    TreeEnsemble,
    artifact_bytes,
    benchmark,
    load_artifact,
)

NAMES = ("amount", "velocity", "new_device", "noise_a", "noise_b", "hour")


def _data(seed: int = 0, n: int = 4000, nan_share: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES)))
    X[:, 2] = rng.random(n) < 0.1
    X[:, 5] = rng.integers(0, 24, n)
    logit = 1.5 * X[:, 0] + 1.0 * X[:, 1] * X[:, 2] + 2.0 * X[:, 2] - 4.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X[rng.random(X.shape) < nan_share] = np.nan
    return X, y


@pytest.fixture(scope="module")
def fitted() -> tuple[HistGradientBoostingClassifier, np.ndarray, np.ndarray]:
    X, y = _data()
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, random_state=0)
    with threadpool_limits(1):  # OpenMP on a busy 2-core VM is far slower than 1 thread
        model.fit(X, y)
    return model, X, y


def _scorer(model: HistGradientBoostingClassifier, X: np.ndarray) -> ModelScorer:
    return ModelScorer(
        "v-test",
        TreeEnsemble.from_hgb(model),
        NAMES,
        np.nanmedian(X, axis=0),
        Thresholds(review=0.5, decline=0.8),
    )


def test_trees_equal_predict_proba_in_every_batch_size(fitted) -> None:
    model, X, _ = fitted
    scorer = _scorer(model, X)
    expected = model.predict_proba(X[:1500])[:, 1]
    batch = np.array(scorer.score_matrix(X[:1500]))  # blocks of BLOCK_ROWS, NaN included
    assert np.max(np.abs(batch - expected)) < 1e-12
    rows = [tuple(r) for r in X[:200].tolist()]
    for size in (1, 2, SMALL_BATCH_MAX, SMALL_BATCH_MAX + 1):
        got = [s for i in range(0, 40, size) for s in scorer.score_matrix(rows[i : i + size])]
        assert np.max(np.abs(np.array(got[:40]) - expected[:40])) < 1e-12
    # The plain tree walk, an independent evaluator, agrees too.
    walked = np.array([scorer.model.raw_row(row) for row in rows])
    assert np.max(np.abs(walked - model._raw_predict(X[:200]).ravel())) < 1e-12
    assert scorer.score_matrix([]) == []


def test_wide_trees_use_64_bit_masks() -> None:
    X, y = _data(seed=1, n=6000)
    model = HistGradientBoostingClassifier(
        max_iter=15, max_leaf_nodes=60, min_samples_leaf=5, random_state=0
    )
    with threadpool_limits(1):
        model.fit(X, y)
    ensemble = TreeEnsemble.from_hgb(model)
    assert max(p[0].get_n_leaf_nodes() for p in model._predictors) > 32
    raw = ensemble.raw(X)
    assert np.max(np.abs(raw - model._raw_predict(X).ravel())) < 1e-9


def test_artifact_round_trip_without_pickle(fitted) -> None:
    model, X, _ = fitted
    scorer = _scorer(model, X)
    data = artifact_bytes(scorer.model, NAMES, scorer.reference)
    assert b"pickle" not in data[:0]  # plain .npz: np.load(allow_pickle=False) reads it
    loaded, names, reference = load_artifact(data)
    assert names == NAMES
    assert np.array_equal(reference, scorer.reference)
    assert np.array_equal(loaded.raw(X[:300]), scorer.model.raw(X[:300]))
    with pytest.raises(ModelIntegrityError, match="not a readable"):
        load_artifact(b"not a zip file")


def test_malformed_trees_are_refused(fitted) -> None:
    model, _, _ = fitted
    arrays = TreeEnsemble.from_hgb(model).to_arrays()
    left = arrays["tree_left"].copy()
    split = np.flatnonzero(arrays["tree_feature"] >= 0)[0]
    left[split] = split  # a cycle
    with pytest.raises(ModelIntegrityError, match="backwards"):
        TreeEnsemble.from_arrays({**arrays, "tree_left": left}, len(NAMES))
    feature = arrays["tree_feature"].copy()
    feature[split] = 99
    with pytest.raises(ModelIntegrityError, match="feature"):
        TreeEnsemble.from_arrays({**arrays, "tree_feature": feature}, len(NAMES))


def test_linear_model_equals_logistic_regression() -> None:
    X, y = _data(seed=2, nan_share=0.0)
    pipeline = fit_logistic_regression(X, y)
    linear = LinearModel.from_pipeline(pipeline)
    scorer = ModelScorer("lr", linear, NAMES, np.median(X, axis=0), Thresholds(0.5, 0.9))
    expected = pipeline.predict_proba(X[:500])[:, 1]
    assert np.max(np.abs(np.array(scorer.score_matrix(X[:500])) - expected)) < 1e-12
    single = scorer.score_matrix([tuple(X[0])])[0]
    assert single == pytest.approx(expected[0], abs=1e-12)
    loaded, _, _ = load_artifact(artifact_bytes(linear, NAMES, scorer.reference))
    assert isinstance(loaded, LinearModel)
    assert np.allclose(loaded.raw(X[:50]), linear.raw(X[:50]))


def test_thresholds_bands_and_validation() -> None:
    t = Thresholds(review=0.5, decline=0.8)
    assert [t.action(s) for s in (0.1, 0.5, 0.79, 0.8, 1.0)] == [
        "APPROVE",
        "REVIEW",
        "REVIEW",
        "DECLINE",
        "DECLINE",
    ]
    with pytest.raises(ValueError, match="above the decline"):
        Thresholds(review=0.9, decline=0.5)
    with pytest.raises(ValueError, match="NaN"):
        Thresholds(review=math.nan, decline=0.5)
    never = Thresholds.from_json({"review": None, "decline": None})
    assert never.action(1.0) == "APPROVE"
    assert never.to_json() == {"review": None, "decline": None}
    with pytest.raises(ModelError):
        Thresholds.from_json({"review": 0.1})


def test_assess_carries_version_score_and_reasons_for_flagged_only(fitted) -> None:
    model, X, _ = fitted
    scorer = _scorer(model, X)
    rows = [tuple(r) for r in np.nan_to_num(X[:400]).tolist()]
    scores = scorer.score_matrix(rows)
    out = scorer.assess(rows, scores)
    assert all(isinstance(a, FraudAssessment) for a in out)
    assert [a.score for a in out] == scores
    assert {a.model_version for a in out} == {"v-test"}
    for a in out:
        assert a.action == scorer.thresholds.action(a.score)
        assert bool(a.reasons) == (a.action != "APPROVE") or a.action != "APPROVE"
        if a.action == "APPROVE":
            assert a.reasons == ()
    flagged = [a for a in out if a.action != "APPROVE"]
    assert flagged, "the test data should contain flagged rows"
    assert all(0 < len(a.reasons) <= 3 for a in flagged)
    assert scorer.assess_rows(rows[:5]) == out[:5]


@pytest.mark.parametrize(("feature", "value"), [("amount", 4.0), ("new_device", 1.0)])
def test_reasons_point_at_the_feature_that_was_perturbed(fitted, feature: str, value: float):
    model, X, _ = fitted
    scorer = _scorer(model, X)
    row = scorer.reference.copy()
    row[NAMES.index(feature)] = value
    if feature == "new_device":
        row[NAMES.index("velocity")] = 2.0  # the interaction the data planted
    (score,) = scorer.score_matrix([tuple(row)])
    assert score > scorer.score_matrix([tuple(scorer.reference)])[0]
    (reasons,) = scorer.reasons([tuple(row)], [score])
    assert reasons[0] == feature
    assert "noise_a" not in reasons[:1]


def test_wrong_width_is_an_error(fitted) -> None:
    model, X, _ = fitted
    scorer = _scorer(model, X)
    with pytest.raises(ModelError, match="features"):
        scorer.score_matrix([(1.0, 2.0)])
    with pytest.raises(ModelError, match="features"):
        scorer.score_matrix([(1.0, 2.0)] * 10)
    with pytest.raises(ModelError, match="numbers"):
        scorer.score_matrix([(1.0, 2.0), (1.0,)])


def _row(**values: float) -> tuple[float, ...]:
    """A typical legitimate vector of the real feature set, with some values changed."""
    base = dict.fromkeys(FEATURE_NAMES, 0.0)
    base.update(
        amount_log=math.log1p(30),
        account_age_log=math.log1p(90 * 86400),
        device_age_log=math.log1p(60 * 86400),
        secs_since_topup_log=math.log1p(10 * 86400),
        secs_since_last_log=math.log1p(86400),
        hour_of_day=14.0,
        amount_to_balance=0.05,
        count_1h=0.2,
    )
    base.update(values)
    return tuple(base[name] for name in FEATURE_NAMES)


def test_rules_baseline_flags_the_fraud_patterns() -> None:
    rules = RulesBaselineScorer(FEATURE_NAMES)
    assert rules.version == "rules-v1"
    assert "no fraud model" in rules.describe()
    normal = _row()
    takeover = _row(device_age_log=0.0, new_payee=1.0, amount_z=2.5, amount_to_balance=0.9)
    card_testing = _row(amount_z=-2.0, count_1h=6.0, new_payee=1.0)
    cashout = _row(
        secs_since_topup_log=math.log1p(3600), amount_to_balance=0.95, is_payout=1.0, amount_z=2.0
    )
    night_charge = _row(device_missing=1.0, hour_of_day=3.0, amount_z=1.0, count_1h=1.0)
    rows = [normal, takeover, card_testing, cashout, night_charge]
    out = rules.assess_rows(rows)
    assert [a.action for a in out] == ["APPROVE", "DECLINE", "DECLINE", "REVIEW", "DECLINE"]
    assert out[0].reasons == () and out[0].model_version == "rules-v1"
    assert out[1].reasons[0] == "device_age_log"
    assert "count_1h" in out[2].reasons
    assert "is_payout" in out[3].reasons
    assert "device_missing" in out[4].reasons
    assert rules.score_matrix(np.array(rows)) == [a.score for a in out]


def test_rules_baseline_needs_its_features() -> None:
    with pytest.raises(ModelError, match="needs features"):
        RulesBaselineScorer(("amount_log",))


def test_benchmark_reports_every_batch_size(fitted) -> None:
    model, X, _ = fitted
    scorer = _scorer(model, X)
    rows = [tuple(r) for r in np.nan_to_num(X[:300]).tolist()]
    result = benchmark(scorer, rows, batch_sizes=(1, 10), single_samples=50, budget_s=0.05)
    assert set(result["batches"]) == {"1", "10"}
    assert result["single"]["p99_us"] >= result["single"]["p50_us"] > 0


def test_popcount_fallback_without_numpy_bitwise_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from models import scorer as module

    values = np.array([0, 1, 3, 7, 2**31 - 1, 2**32 - 1], dtype=np.uint32)
    expected = [0, 1, 2, 3, 31, 32]
    assert module._popcount(values).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert module._popcount(values).tolist() == expected
    wide = np.array([2**63 - 1, 2**64 - 1, 2**40 - 1], dtype=np.uint64)
    assert module._popcount(wide).tolist() == [63, 64, 40]


def test_benchmark_command_on_the_rules_baseline(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.scorer import main

    out = tmp_path / "bench.json"
    args = ["--rules", "--rows", "300", "--budget-s", "0.05", "--singles", "50", "--customers"]
    args += ["50", "--days", "5"]
    assert main([*args, "--json", str(out)]) == 0
    assert "batch  1000" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["batches"]) == {"1", "100", "1000"}
    assert main(["--registry", str(tmp_path / "empty")]) == 2


def test_an_ensemble_without_splits() -> None:
    constant = TreeEnsemble(
        feature=np.array([-1, -1], dtype=np.int32),
        threshold=np.zeros(2),
        left=np.zeros(2, dtype=np.int32),
        right=np.zeros(2, dtype=np.int32),
        value=np.array([0.5, 0.25]),
        missing_left=np.zeros(2, dtype=np.bool_),
        roots=np.array([0, 1], dtype=np.int32),
        baseline=-1.0,
        n_features=3,
    )
    for n in (1, 40):
        assert np.allclose(constant.raw(np.zeros((n, 3))), -0.25)
    assert constant.features_used.size == 0
