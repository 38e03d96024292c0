"""Offline evaluation: ranking metrics, the baselines a model must beat, cost-based thresholds.

Everything here works on plain arrays: ``y`` (1 = fraud), ``s`` (a score, higher =
more suspicious) and ``value`` (the payment's amount in a common reference unit, see
:data:`models.dataset.REFERENCE_UNIT`), so it is the same for the model and for every
baseline.

Metrics (``higher score = flag first``; ties are one threshold, as in scikit-learn):

- AUPRC: average precision, ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds;
- ROC AUC: area under the ROC curve (ties count one half);
- recall at 1% FPR: the largest share of frauds flagged by a threshold that flags at
  most 1% of the legitimate payments;
- amount caught at 1% FPR: the share of the fraud *amount* flagged at that threshold.
  (Reported at the same false-positive budget for every model, so they compare.)

Baselines:

- best single-feature rule: each feature, each direction (high or low = suspicious),
  scored by AUPRC on the *training* window; the best one is then measured on the
  held-out window like any model;
- logistic regression on standardized features;
- the hand-written rules score of :class:`models.scorer.RulesBaselineScorer`.

Thresholds (:func:`choose_thresholds`) minimise the expected cost of a policy with
three bands: decline at or above ``decline``, hold for review at or above
``review``, approve below. Costs (:class:`CostModel`, in the reference unit):
an approved fraud loses its amount plus the chargeback fee; a declined legitimate
payment costs a share of its amount (lost margin and customer) plus a fixed amount;
a review costs the analyst's time and, for a legitimate payment, some friction
(held funds); analysts stop most reviewed fraud (the funds were held), the rest is
lost. The review band is capped by analyst capacity. With the defaults, payments
the model is nearly sure about are declined and the uncertain band is reviewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

FPR_TARGET = 0.01
THRESHOLD_CANDIDATES = 400
"""Cut positions tried for each threshold (log-spaced in rank, snapped to distinct scores)."""


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _as_arrays(y: Any, s: Any) -> tuple[NDArray[np.int8], FloatArray]:
    yy = np.asarray(y).astype(np.int8).ravel()
    ss = np.asarray(s, dtype=np.float64).ravel()
    if yy.shape != ss.shape:
        raise ValueError(f"labels {yy.shape} and scores {ss.shape} differ in length")
    return yy, ss


def _curve(y: Any, s: Any, weight: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Cumulative (true positives, false positives) at each distinct threshold, descending.

    Returns ``(tp, fp, thresholds)``; ``tp[i]``/``fp[i]`` count the samples with score
    ``>= thresholds[i]``. With ``weight``, ``tp`` sums the weights of the positives.
    """
    yy, ss = _as_arrays(y, s)
    order = np.argsort(-ss, kind="mergesort")
    ss = ss[order]
    yy = yy[order]
    pos = yy.astype(np.float64)
    if weight is not None:
        pos = pos * np.asarray(weight, dtype=np.float64).ravel()[order]
    tp_all = np.cumsum(pos)
    fp_all = np.cumsum(1 - yy, dtype=np.float64)
    # The last index of each run of equal scores is where a threshold stops.
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), ss.size - 1] if ss.size else np.array([], int)
    return tp_all[last], fp_all[last], ss[last]


def average_precision(y: Any, s: Any) -> float:
    """AUPRC as scikit-learn's ``average_precision_score`` computes it."""
    tp, fp, _ = _curve(y, s)
    if tp.size == 0 or tp[-1] == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: Any, s: Any) -> float:
    """Area under the ROC curve (trapezoids over distinct thresholds; ties count 1/2)."""
    tp, fp, _ = _curve(y, s)
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return float("nan")
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def threshold_at_fpr(y: Any, s: Any, fpr: float = FPR_TARGET) -> float:
    """The lowest score threshold (flag ``score >= t``) whose FPR is at most ``fpr``.

    ``inf`` when even the highest score flags too many legitimate payments.
    """
    _, fp, thresholds = _curve(y, s)
    if fp.size == 0:
        return float("inf")
    negatives = fp[-1]
    allowed = np.flatnonzero(fp <= fpr * negatives) if negatives else np.arange(fp.size)
    if allowed.size == 0:
        return float("inf")
    return float(thresholds[allowed[-1]])


def recall_at_fpr(y: Any, s: Any, fpr: float = FPR_TARGET) -> float:
    """Share of frauds flagged at :func:`threshold_at_fpr`."""
    yy, ss = _as_arrays(y, s)
    positives = int(yy.sum())
    if positives == 0:
        return float("nan")
    t = threshold_at_fpr(yy, ss, fpr)
    return float(np.sum((ss >= t) & (yy == 1)) / positives)


def amount_caught(y: Any, s: Any, value: Any, threshold: float) -> float:
    """Share of the fraud amount whose score is at or above ``threshold``."""
    yy, ss = _as_arrays(y, s)
    vv = np.asarray(value, dtype=np.float64).ravel()
    fraud_value = float(vv[yy == 1].sum())
    if fraud_value <= 0:
        return float("nan")
    return float(vv[(yy == 1) & (ss >= threshold)].sum() / fraud_value)


@dataclass(frozen=True)
class Metrics:
    """How well a score separates fraud on one window."""

    auprc: float
    roc_auc: float
    recall_at_1pct_fpr: float
    amount_caught_at_1pct_fpr: float
    threshold_at_1pct_fpr: float
    rows: int
    frauds: int
    fraud_value: float

    def to_json(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def compute_metrics(y: Any, s: Any, value: Any) -> Metrics:
    yy, ss = _as_arrays(y, s)
    vv = np.asarray(value, dtype=np.float64).ravel()
    t = threshold_at_fpr(yy, ss, FPR_TARGET)
    return Metrics(
        auprc=average_precision(yy, ss),
        roc_auc=roc_auc(yy, ss),
        recall_at_1pct_fpr=recall_at_fpr(yy, ss, FPR_TARGET),
        amount_caught_at_1pct_fpr=amount_caught(yy, ss, vv, t),
        threshold_at_1pct_fpr=t,
        rows=int(yy.size),
        frauds=int(yy.sum()),
        fraud_value=float(vv[yy == 1].sum()),
    )


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleFeatureRule:
    """Flag by one feature: ``score = x[feature]`` (or ``-x`` when low is suspicious)."""

    feature: str
    index: int
    direction: int  # +1: high values are suspicious; -1: low values are
    train_auprc: float

    def score(self, X: FloatArray) -> FloatArray:
        return np.asarray(X[:, self.index], dtype=np.float64) * float(self.direction)

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "direction": "high" if self.direction > 0 else "low",
            "train_auprc": self.train_auprc,
        }


def best_single_feature_rule(
    X: FloatArray, y: Any, feature_names: Sequence[str]
) -> SingleFeatureRule:
    """The feature and direction with the best AUPRC on (X, y): choose it on training data."""
    if X.shape[1] != len(feature_names):
        raise ValueError(f"{X.shape[1]} columns but {len(feature_names)} feature names")
    best: SingleFeatureRule | None = None
    for j, name in enumerate(feature_names):
        for direction in (1, -1):
            ap = average_precision(y, X[:, j] * direction)
            if best is None or ap > best.train_auprc:
                best = SingleFeatureRule(name, j, direction, ap)
    assert best is not None
    return best


def fit_logistic_regression(X: FloatArray, y: Any, seed: int = 0) -> Any:
    """Standardized features into an L2 logistic regression (the linear baseline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )
    model.fit(X, np.asarray(y))
    return model


# --------------------------------------------------------------------------------------
# Thresholds by cost
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """What each outcome costs, in the reference unit (see module docstring)."""

    fraud_loss_share: float = 1.0  # approved fraud: its amount (chargeback) ...
    chargeback_fee: float = 15.0  # ... plus the scheme's fee
    false_decline_share: float = 0.3  # declined legitimate payment: lost margin + churn
    false_decline_fixed: float = 2.0  # support contact
    review_fixed: float = 4.0  # analyst minutes per reviewed payment
    review_legit_share: float = 0.01  # a legitimate payment held for review: friction
    review_catch_rate: float = 0.9  # share of reviewed fraud the analysts stop
    review_rate_max: float = 0.005  # analyst capacity: at most this share of payments

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ThresholdChoice:
    review: float
    decline: float
    cost: float  # expected total cost of the policy on the data it was chosen on
    cost_approve_all: float
    decline_rate: float
    review_rate: float
    fraud_value_declined: float  # shares of the fraud amount
    fraud_value_reviewed: float
    false_decline_rate: float  # share of legitimate payments declined
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def _review_cost(cm: CostModel, fraud: NDArray[np.bool_], value: FloatArray) -> FloatArray:
    """Analyst time, plus the fraud analysts miss, or the friction of holding a good payment."""
    missed = (1.0 - cm.review_catch_rate) * (cm.fraud_loss_share * value + cm.chargeback_fee)
    out: FloatArray = cm.review_fixed + np.where(fraud, missed, cm.review_legit_share * value)
    return out


def choose_thresholds(y: Any, s: Any, value: Any, cost: CostModel | None = None) -> ThresholdChoice:
    """Review and decline thresholds minimising the expected cost of ``cost`` on (y, s, value).

    Candidate thresholds are distinct score values (at most ``THRESHOLD_CANDIDATES`` of
    them, from the suspicious end); every pair ``review <= decline`` is priced exactly
    with cumulative sums. ``inf`` as a threshold means "never".
    """
    cm = cost or CostModel()
    yy, ss = _as_arrays(y, s)
    vv = np.asarray(value, dtype=np.float64).ravel()
    n = ss.size
    if n == 0:
        raise ValueError("no payments to choose thresholds on")
    order = np.argsort(-ss, kind="mergesort")
    ss, yy, vv = ss[order], yy[order], vv[order]
    fraud = yy == 1
    miss = np.where(fraud, cm.fraud_loss_share * vv + cm.chargeback_fee, 0.0)
    decline = np.where(fraud, 0.0, cm.false_decline_share * vv + cm.false_decline_fixed)
    review = _review_cost(cm, fraud, vv)

    # Prefix sums over the sorted order; cut k means "the top k payments".
    c_miss = np.r_[0.0, np.cumsum(miss)]
    c_decline = np.r_[0.0, np.cumsum(decline)]
    c_review = np.r_[0.0, np.cumsum(review)]
    total_miss = c_miss[-1]

    # Valid cuts are at ends of runs of equal scores (a threshold flags a whole tie).
    # Candidates are log-spaced in rank: fine at the suspicious end, where thresholds
    # live, coarse in the bulk of the legitimate payments.
    run_ends = np.r_[np.flatnonzero(np.diff(ss) != 0) + 1, n]
    wanted = np.unique(np.geomspace(1, n, THRESHOLD_CANDIDATES).astype(np.int64))
    snapped = run_ends[np.minimum(np.searchsorted(run_ends, wanted), run_ends.size - 1)]
    ends = np.unique(np.r_[0, snapped])

    kd = ends[:, None]  # decline the top kd
    kr = ends[None, :]  # review the next ones up to kr
    cost_grid = (
        c_decline[kd]
        + (c_review[np.maximum(kr, kd)] - c_review[kd])
        + (total_miss - c_miss[np.maximum(kr, kd)])
    )
    valid = (kr >= kd) & ((kr - kd) <= cm.review_rate_max * n)
    cost_grid = np.where(valid, cost_grid, np.inf)
    i, j = np.unravel_index(int(np.argmin(cost_grid)), cost_grid.shape)
    k_decline, k_review = int(ends[i]), int(max(ends[j], ends[i]))

    def threshold(k: int) -> float:
        return float(ss[k - 1]) if k > 0 else float("inf")

    decline_t = threshold(k_decline)
    review_t = threshold(k_review) if k_review > k_decline else decline_t
    fraud_value = float(vv[fraud].sum())
    legit = int((~fraud).sum())
    declined = slice(0, k_decline)
    reviewed = slice(k_decline, k_review)
    return ThresholdChoice(
        review=review_t,
        decline=decline_t,
        cost=float(cost_grid[i, j]),
        cost_approve_all=float(total_miss),
        decline_rate=k_decline / n,
        review_rate=(k_review - k_decline) / n,
        fraud_value_declined=float(vv[declined][fraud[declined]].sum() / fraud_value)
        if fraud_value
        else 0.0,
        fraud_value_reviewed=float(vv[reviewed][fraud[reviewed]].sum() / fraud_value)
        if fraud_value
        else 0.0,
        false_decline_rate=float((~fraud[declined]).sum() / legit) if legit else 0.0,
        details={"cost_model": cm.to_json(), "rows": n},
    )


def policy_cost(
    y: Any, s: Any, value: Any, review: float, decline: float, cost: CostModel | None = None
) -> float:
    """Expected cost of fixed thresholds (to price a choice on another window)."""
    cm = cost or CostModel()
    yy, ss = _as_arrays(y, s)
    vv = np.asarray(value, dtype=np.float64).ravel()
    fraud = yy == 1
    dec = ss >= decline
    rev = (ss >= review) & ~dec
    approve = ~(dec | rev)
    total = np.sum(np.where(fraud & approve, cm.fraud_loss_share * vv + cm.chargeback_fee, 0.0))
    total += np.sum(
        np.where(~fraud & dec, cm.false_decline_share * vv + cm.false_decline_fixed, 0.0)
    )
    total += np.sum(np.where(rev, _review_cost(cm, fraud, vv), 0.0))
    return float(total)
