"""Metrics against scikit-learn's, the baselines, and thresholds chosen by cost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from models.evaluate import (
    CostModel,
    amount_caught,
    average_precision,
    best_single_feature_rule,
    choose_thresholds,
    compute_metrics,
    fit_logistic_regression,
    policy_cost,
    recall_at_fpr,
    roc_auc,
    threshold_at_fpr,
)


def test_known_small_example() -> None:
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1 / 2) * 1.0 + (1 / 2) * (2 / 3))


@pytest.mark.parametrize("seed", range(25))
def test_metrics_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    y[0], y[1] = 0, 1  # both classes present
    # Rounded scores: many ties, which is where implementations differ.
    s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert recall_at_fpr(y, s, 0.01) == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    assert recall_at_fpr(y, s, 0.1) == pytest.approx(tpr[fpr <= 0.1].max(), abs=1e-12)


def test_threshold_at_fpr_and_amount_caught() -> None:
    # 200 legitimate payments scored 0..199, 4 frauds at 150, 198.5, 250, 300.
    legit = np.arange(200.0)
    fraud = np.array([150.0, 198.5, 250.0, 300.0])
    s = np.r_[legit, fraud]
    y = np.r_[np.zeros(200), np.ones(4)]
    # 1% of 200 legitimate payments = 2 may be flagged: threshold 198 flags 198 and 199.
    assert threshold_at_fpr(y, s, 0.01) == 198.0
    assert recall_at_fpr(y, s, 0.01) == pytest.approx(3 / 4)
    value = np.r_[np.ones(200), [100.0, 10.0, 10.0, 80.0]]
    assert amount_caught(y, s, value, 198.0) == pytest.approx(100 / 200)
    m = compute_metrics(y, s, value)
    assert m.frauds == 4 and m.rows == 204 and m.fraud_value == 200.0
    assert m.amount_caught_at_1pct_fpr == pytest.approx(0.5)
    assert set(m.to_json()) >= {"auprc", "roc_auc", "recall_at_1pct_fpr"}


def test_degenerate_inputs() -> None:
    assert average_precision([0, 0], [0.1, 0.2]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert np.isnan(recall_at_fpr([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.1])


def test_best_single_feature_rule_finds_feature_and_direction() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    y = (rng.random(n) < 0.05).astype(int)
    X = rng.normal(size=(n, 4))
    X[:, 2] -= 3.0 * y  # low values of feature c are suspicious
    X[:, 1] += 0.5 * y  # weakly informative
    rule = best_single_feature_rule(X, y, ["a", "b", "c", "d"])
    assert (rule.feature, rule.index, rule.direction) == ("c", 2, -1)
    assert rule.train_auprc == pytest.approx(average_precision(y, -X[:, 2]))
    assert np.array_equal(rule.score(X), -X[:, 2])
    assert rule.to_json()["direction"] == "low"
    with pytest.raises(ValueError, match="feature names"):
        best_single_feature_rule(X, y, ["a"])


def test_logistic_regression_baseline_learns() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 3)) * [1.0, 100.0, 0.01]  # scaling matters
    y = (X[:, 1] / 100 + X[:, 2] / 0.01 + rng.normal(size=3000) * 0.3 > 2).astype(int)
    model = fit_logistic_regression(X, y)
    assert roc_auc(y, model.predict_proba(X)[:, 1]) > 0.95


def _brute_force(y: np.ndarray, s: np.ndarray, v: np.ndarray, cost: CostModel) -> float:
    candidates = [*sorted(set(s.tolist())), float("inf")]
    best = float("inf")
    for review, decline in itertools.product(candidates, repeat=2):
        if review > decline:
            continue
        if np.sum((s >= review) & (s < decline)) > cost.review_rate_max * s.size:
            continue
        best = min(best, policy_cost(y, s, v, review, decline, cost))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_thresholds_finds_the_cheapest_policy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    y = (rng.random(n) < 0.15).astype(int)
    s = np.round(rng.normal(size=n) + 2 * y, 1)
    v = rng.lognormal(3, 1, n)
    cost = CostModel(review_rate_max=0.1)
    choice = choose_thresholds(y, s, v, cost)
    assert choice.review <= choice.decline
    assert choice.cost == pytest.approx(policy_cost(y, s, v, choice.review, choice.decline, cost))
    assert choice.cost == pytest.approx(_brute_force(y, s, v, cost))
    assert choice.cost <= choice.cost_approve_all


def test_thresholds_follow_the_costs() -> None:
    # Frauds score 0.9 (expensive), legitimate payments 0.1 .. 0.5, one legit at 0.9.
    s = np.r_[np.full(20, 0.9), np.linspace(0.1, 0.5, 979), [0.9]]
    y = np.r_[np.ones(20), np.zeros(980)]
    v = np.r_[np.full(20, 500.0), np.full(980, 50.0)]
    choice = choose_thresholds(y, s, v, CostModel(review_rate_max=0.0))
    assert choice.decline == 0.9 and choice.review == 0.9
    assert choice.fraud_value_declined == 1.0 and choice.false_decline_rate == pytest.approx(
        1 / 980
    )
    # When a false decline costs a fortune, the same payments go to review instead.
    pricey = CostModel(false_decline_share=100.0, review_rate_max=0.05)
    choice = choose_thresholds(y, s, v, pricey)
    assert choice.decline == float("inf") and choice.review == 0.9
    assert choice.fraud_value_reviewed == 1.0
    # When fraud is cheap and reviews dear, approve everything.
    cheap = CostModel(fraud_loss_share=0.0, chargeback_fee=0.0)
    choice = choose_thresholds(y, s, v, cheap)
    assert choice.decline == choice.review == float("inf")
    assert choice.to_json()["decline"] is None
