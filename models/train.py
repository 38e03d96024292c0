"""Train a fraud model on matured labels, evaluate it on a later window, register it.

Windows (all times are ``created_at_ms`` of the payments, UTC milliseconds):

- training: payments created in ``[train_from, train_to)`` *and* at least
  ``maturity`` before ``as_of``; their label is the latest one known at ``as_of``
  (no label = legitimate). ``as_of`` is "when we train": by default
  ``train_to + maturity`` (capped at the newest event of the history), so every
  training payment had ``maturity`` days to be charged back. The default maturity
  is 30 days: the simulator's chargebacks arrive after a median of 14 days and
  ~90% within 30 (disputes and reviews sooner), real card chargebacks mostly within
  a month or two; ``--maturity-days`` changes it;
- evaluation: payments created in ``[train_to, eval_to)`` (a later, held-out window:
  by default the last 30 days of the history), scored by every contender and judged
  against every label the history holds about them, i.e. the labels available when
  the evaluation runs. With a simulation, the simulator's ground truth is reported
  next to it (labels miss some fraud and include friendly fraud).

Candidates: scikit-learn's HistGradientBoostingClassifier and a logistic regression.
Which one ships is measured, not assumed: both are fitted on the first 80% (by
time) of the training window and the better AUPRC on the last 20% wins; the winner
is refitted on the whole window (:func:`train`). On the 3-month simulations the
trees win clearly; on a few weeks with a few dozen frauds the linear model can.

Contenders, all measured on the evaluation window (see models/evaluate.py): both
candidates, the best single-feature rule (chosen on the training window) and the
hand-written rules baseline a worker uses when no model is promoted.

The score bands are chosen by cost (:func:`models.evaluate.choose_thresholds`) on
the evaluation window's scores of the shipped model. It is exported to the
scorer's arrays and checked equal to ``predict_proba`` before it is written to the
registry with its metadata (windows, metrics, choice, thresholds, features, sha256).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.dataset import Dataset
from models.errors import ModelError, TrainingDataError
from models.evaluate import (
    CostModel,
    Metrics,
    SingleFeatureRule,
    ThresholdChoice,
    average_precision,
    best_single_feature_rule,
    choose_thresholds,
    compute_metrics,
    fit_logistic_regression,
    policy_cost,
)
from models.registry import ModelInfo, Registry
from models.scorer import LinearModel, Model, RulesBaselineScorer, Thresholds, TreeEnsemble

DAY_MS = 86_400_000
DEFAULT_MATURITY_DAYS = 30
DEFAULT_EVAL_DAYS = 30
EXPORT_TOLERANCE = 1e-9
"""Largest difference allowed between the exported trees and ``predict_proba``."""


@dataclass(frozen=True)
class HGBParams:
    """HistGradientBoostingClassifier settings, chosen on 3-month simulations.

    Small trees, a low learning rate and L2 keep label noise (friendly fraud,
    unlabelled fraud) from being learnt; early stopping on a held-out 15% picks the
    number of trees. Measured on 3000 customers x 90 days (train 60, hold out 30),
    AUPRC against the labels: these 0.73; learning rate 0.1 with 15 leaves 0.70,
    with 7 leaves 0.71, with 31 leaves 0.70; scikit-learn's defaults (0.1, 31
    leaves, no L2) stopped after 31 trees at 0.27. At most 31 leaves keeps
    QuickScorer's masks in 32 bits.
    """

    learning_rate: float = 0.05
    max_iter: int = 500
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    early_stopping: bool = True
    validation_fraction: float = 0.15
    n_iter_no_change: int = 30
    random_state: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    train_from_ms: int | None = None  # default: the start of the history
    train_to_ms: int | None = None  # default: eval_to - eval_days
    eval_to_ms: int | None = None  # default: the end of the history
    as_of_ms: int | None = None  # default: train_to + maturity (capped at the newest event)
    maturity_ms: int = DEFAULT_MATURITY_DAYS * DAY_MS
    eval_ms: int = DEFAULT_EVAL_DAYS * DAY_MS
    params: HGBParams = field(default_factory=HGBParams)
    cost: CostModel = field(default_factory=CostModel)
    # OpenMP/BLAS threads for fitting. One: on the 2-core dev VM, with a broker and
    # workers beside it, 2 threads fitted 2-3x *slower* (spin-waiting on a busy core).
    threads: int | None = 1
    validation_share: float = 0.2  # the latest part of the training window: model choice


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Windows:
    train_from_ms: int
    train_to_ms: int  # effective end: min(train_to, as_of - maturity)
    requested_train_to_ms: int
    eval_from_ms: int
    eval_to_ms: int
    as_of_ms: int
    maturity_ms: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        for name in list(out):
            if name.endswith("_ms") and name != "maturity_ms":
                out[name.removesuffix("_ms")] = iso(out[name])
        out["maturity_days"] = self.maturity_ms / DAY_MS
        return out


def resolve_windows(dataset: Dataset, config: TrainConfig) -> Windows:
    if len(dataset) == 0:
        raise TrainingDataError("the history has no scored payments")
    # Default windows end on whole UTC days: the end of the history rounded up.
    end_day = -(-dataset.end_ms // DAY_MS) * DAY_MS
    eval_to = config.eval_to_ms if config.eval_to_ms is not None else end_day
    train_to = config.train_to_ms if config.train_to_ms is not None else eval_to - config.eval_ms
    train_from = config.train_from_ms if config.train_from_ms is not None else dataset.first_ms
    as_of = config.as_of_ms
    if as_of is None:
        as_of = min(train_to + config.maturity_ms, dataset.latest_event_ms)
    effective_to = min(train_to, as_of - config.maturity_ms)
    if not train_from < train_to < eval_to:
        raise TrainingDataError(
            f"windows out of order: need from ({iso(train_from)}) < to ({iso(train_to)}) "
            f"< eval-to ({iso(eval_to)})"
        )
    if effective_to <= train_from:
        raise TrainingDataError(
            f"no matured payments to train on: with labels as of {iso(as_of)} and a "
            f"maturity of {config.maturity_ms / DAY_MS:g} days, only payments before "
            f"{iso(as_of - config.maturity_ms)} count, and the window starts {iso(train_from)}"
        )
    return Windows(train_from, effective_to, train_to, train_to, eval_to, as_of, config.maturity_ms)


HGB = "hist_gradient_boosting"
LOGISTIC = "logistic_regression"
CANDIDATES = (HGB, LOGISTIC)


@dataclass
class TrainReport:
    windows: Windows
    train_rows: int
    train_frauds: int
    eval_rows: int
    eval_frauds: int
    chosen: str  # HGB or LOGISTIC: what the artifact holds
    selection: dict[str, Any]  # validation AUPRC of each candidate, the split time
    metrics: dict[str, Metrics]  # "model" (the chosen one), both candidates, baselines
    rule: SingleFeatureRule
    thresholds: ThresholdChoice
    rules_baseline_cost: float
    rules_baseline_thresholds: Thresholds
    train_seconds: float  # fitting the shipped model on the whole training window
    total_seconds: float  # everything train() did
    n_trees: int
    n_leaves: int
    params: HGBParams
    truth_metrics: dict[str, Metrics] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": self.windows.to_json(),
            "training": {"rows": self.train_rows, "frauds": self.train_frauds},
            "evaluation": {"rows": self.eval_rows, "frauds": self.eval_frauds},
            "chosen": self.chosen,
            "selection": self.selection,
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "truth_metrics": (
                {name: m.to_json() for name, m in self.truth_metrics.items()}
                if self.truth_metrics is not None
                else None
            ),
            "best_single_feature_rule": self.rule.to_json(),
            "thresholds": self.thresholds.to_json(),
            "rules_baseline": {
                "thresholds": self.rules_baseline_thresholds.to_json(),
                "policy_cost": self.rules_baseline_cost,
            },
            "train_seconds": self.train_seconds,
            "total_seconds": self.total_seconds,
            "trees": self.n_trees,
            "leaves": self.n_leaves,
            "params": self.params.to_json(),
        }


@dataclass
class Trained:
    model: Model
    reference: np.ndarray
    thresholds: Thresholds
    report: TrainReport


def _fit(kind: str, X: np.ndarray, y: np.ndarray, params: HGBParams) -> Any:
    if kind == HGB:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**params.to_json()).fit(X, y)
    return fit_logistic_regression(X, y, seed=params.random_state)


def _export(kind: str, fitted: Any, X_check: np.ndarray) -> Model:
    """The scorer's form of a fitted candidate, checked equal to scikit-learn's output."""
    model: Model = (
        TreeEnsemble.from_hgb(fitted) if kind == HGB else LinearModel.from_pipeline(fitted)
    )
    ours = 1.0 / (1.0 + np.exp(-model.raw(X_check)))
    gap = float(np.max(np.abs(ours - fitted.predict_proba(X_check)[:, 1]))) if len(X_check) else 0
    if gap > EXPORT_TOLERANCE:
        raise ModelError(f"the exported {kind} differs from predict_proba by {gap:.3g}")
    return model


def train(
    dataset: Dataset, config: TrainConfig, *, truth: Mapping[str, bool] | None = None
) -> Trained:
    """Choose the model on a validation split, fit it, evaluate everything, set thresholds.

    Model choice ("HistGradientBoosting or better, the measurement decides"): both
    candidates are fitted on the first ``1 - validation_share`` of the training
    window (by time) and the one with the better AUPRC on the rest is refitted on
    the whole window and shipped (ties go to the trees). The held-out evaluation
    window plays no part in the choice.
    """
    from threadpoolctl import threadpool_limits

    begun = time.perf_counter()
    w = resolve_windows(dataset, config)
    train_idx = dataset.window(w.train_from_ms, w.train_to_ms)
    eval_idx = dataset.window(w.eval_from_ms, w.eval_to_ms)
    y_train = dataset.labels_as_of(w.as_of_ms)[train_idx]
    y_eval = dataset.labels_as_of(None)[eval_idx]
    if train_idx.size == 0 or eval_idx.size == 0:
        raise TrainingDataError(
            f"empty window: {train_idx.size} training and {eval_idx.size} evaluation payments"
        )
    if int(y_train.sum()) < 10 or int(y_train.sum()) == train_idx.size:
        raise TrainingDataError(
            f"the training window has {int(y_train.sum())} fraud labels among "
            f"{train_idx.size} payments: too few to learn from"
        )
    if int(y_eval.sum()) == 0:
        raise TrainingDataError("the evaluation window has no fraud labels to evaluate against")
    X_train, X_eval = dataset.X[train_idx], dataset.X[eval_idx]
    value_eval = dataset.values[eval_idx]
    names = dataset.feature_names

    # Time split of the training window for the model choice.
    cut = int(train_idx.size * (1.0 - config.validation_share))
    fit_part, val_part = slice(0, cut), slice(cut, train_idx.size)
    fitted: dict[str, Any] = {}
    with threadpool_limits(config.threads):
        selection: dict[str, Any] = {
            "split_at": iso(int(dataset.times[train_idx[cut]])),
            "validation_frauds": int(y_train[val_part].sum()),
        }
        for kind in CANDIDATES:
            candidate = _fit(kind, X_train[fit_part], y_train[fit_part], config.params)
            s_val = candidate.predict_proba(X_train[val_part])[:, 1]
            selection[kind] = average_precision(y_train[val_part], s_val)
        chosen = max(CANDIDATES, key=lambda kind: (selection[kind], kind == HGB))
        fit_seconds = {}
        for kind in CANDIDATES:
            started = time.perf_counter()
            fitted[kind] = _fit(kind, X_train, y_train, config.params)
            fit_seconds[kind] = time.perf_counter() - started
    model = _export(chosen, fitted[chosen], X_eval)

    rule = best_single_feature_rule(X_train, y_train, names)
    rules = RulesBaselineScorer(names)
    scores = {kind: fitted[kind].predict_proba(X_eval)[:, 1] for kind in CANDIDATES}
    s_model = 1.0 / (1.0 + np.exp(-model.raw(X_eval)))
    scores = {
        "model": s_model,
        **scores,
        "best_single_feature": rule.score(X_eval),
        "rules_baseline": np.array(rules.score_matrix(X_eval)),
    }
    metrics = {name: compute_metrics(y_eval, s, value_eval) for name, s in scores.items()}
    truth_metrics = None
    if truth is not None:
        y_truth = np.array([truth.get(dataset.request_ids[i], False) for i in eval_idx.tolist()])
        truth_metrics = {
            name: compute_metrics(y_truth, s, value_eval) for name, s in scores.items()
        }
    choice = choose_thresholds(y_eval, s_model, value_eval, config.cost)
    thresholds = Thresholds(choice.review, choice.decline)
    rules_t = rules.thresholds
    rules_cost = policy_cost(
        y_eval, scores["rules_baseline"], value_eval, rules_t.review, rules_t.decline, config.cost
    )
    trees = model if isinstance(model, TreeEnsemble) else None
    report = TrainReport(
        windows=w,
        train_rows=int(train_idx.size),
        train_frauds=int(y_train.sum()),
        eval_rows=int(eval_idx.size),
        eval_frauds=int(y_eval.sum()),
        chosen=chosen,
        selection=selection,
        metrics=metrics,
        rule=rule,
        thresholds=choice,
        rules_baseline_cost=rules_cost,
        rules_baseline_thresholds=rules_t,
        train_seconds=fit_seconds[chosen],
        total_seconds=time.perf_counter() - begun,
        n_trees=trees.n_trees if trees is not None else 0,
        n_leaves=trees.n_leaves if trees is not None else 0,
        params=config.params,
        truth_metrics=truth_metrics,
    )
    reference = np.median(X_train, axis=0)
    return Trained(model, reference, thresholds, report)


def train_and_register(
    dataset: Dataset,
    config: TrainConfig,
    registry: Registry,
    *,
    truth: Mapping[str, bool] | None = None,
    source: str = "",
) -> tuple[ModelInfo, TrainReport]:
    from models.features import FEATURE_SET_HASH

    trained = train(dataset, config, truth=truth)
    report = trained.report
    summary = report.to_json()
    metadata = {
        "source": source,
        "training_window": summary["windows"],
        "training": summary["training"],
        "evaluation": {**summary["evaluation"], "metrics": summary["metrics"]},
        "truth_metrics": summary["truth_metrics"],
        "best_single_feature_rule": summary["best_single_feature_rule"],
        "threshold_choice": summary["thresholds"],
        "rules_baseline": summary["rules_baseline"],
        "chosen": report.chosen,
        "selection": summary["selection"],
        "train_seconds": report.train_seconds,
        "total_seconds": report.total_seconds,
        "trees": report.n_trees,
        "leaves": report.n_leaves,
        "params": summary["params"],
    }
    info = registry.write(
        model=trained.model,
        feature_names=dataset.feature_names,
        feature_set_hash=FEATURE_SET_HASH,
        reference=trained.reference,
        thresholds=trained.thresholds,
        metadata=metadata,
    )
    return info, report


def format_report(report: TrainReport, info: ModelInfo | None = None) -> str:
    w = report.windows
    lines = []
    if info is not None:
        lines.append(f"model {info.version}  sha256 {info.sha256}")
        lines.append(f"  written to {info.directory}")
    lines += [
        f"training   {iso(w.train_from_ms)} .. {iso(w.train_to_ms)}  labels as of "
        f"{iso(w.as_of_ms)} (maturity {w.maturity_ms / DAY_MS:g} d): {report.train_rows} "
        f"payments, {report.train_frauds} fraud",
        f"evaluation {iso(w.eval_from_ms)} .. {iso(w.eval_to_ms)}: {report.eval_rows} payments, "
        f"{report.eval_frauds} fraud (all labels known)",
        f"model choice on {report.selection['split_at']} .. (validation AUPRC, "
        f"{report.selection['validation_frauds']} fraud): "
        + ", ".join(f"{kind} {report.selection[kind]:.3f}" for kind in CANDIDATES)
        + f" -> {report.chosen}",
        f"model: {report.chosen}"
        + (f", {report.n_trees} trees, {report.n_leaves} leaves" if report.n_trees else "")
        + f"; fitted in {report.train_seconds:.1f} s ({report.total_seconds:.0f} s in all)",
        "",
    ]

    def table(title: str, metrics: Mapping[str, Metrics]) -> None:
        lines.append(title)
        lines.append(
            f"  {'':24} {'AUPRC':>7} {'ROC AUC':>8} {'recall@1%FPR':>13} {'amount@1%FPR':>13}"
        )
        for name, m in metrics.items():
            if name == "model":
                continue  # the chosen candidate's row, marked with *
            label = f"{name} *" if name == report.chosen else name
            if name == "best_single_feature":
                direction = "high" if report.rule.direction > 0 else "low"
                label = f"rule: {report.rule.feature} {direction}"
            lines.append(
                f"  {label[:24]:24} {m.auprc:7.3f} {m.roc_auc:8.3f} "
                f"{m.recall_at_1pct_fpr:13.3f} {m.amount_caught_at_1pct_fpr:13.3f}"
            )

    table("held-out window, against the labels (* = the model):", report.metrics)
    if report.truth_metrics is not None:
        lines.append("")
        table("held-out window, against the simulator's ground truth:", report.truth_metrics)
    t = report.thresholds
    lines += [
        "",
        f"thresholds (by cost): review >= {t.review:.4g}, decline >= {t.decline:.4g}",
        f"  declines {t.decline_rate:.3%} of payments ({t.false_decline_rate:.3%} of legitimate "
        f"ones), reviews {t.review_rate:.3%}",
        f"  fraud amount declined {t.fraud_value_declined:.1%}, held for review "
        f"{t.fraud_value_reviewed:.1%}",
        f"  cost {t.cost:,.0f} vs {t.cost_approve_all:,.0f} approving everything "
        f"(rules baseline: {report.rules_baseline_cost:,.0f})",
    ]
    return "\n".join(lines)
