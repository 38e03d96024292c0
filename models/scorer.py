"""Batch fraud scoring for the worker: one model evaluation per batch of requests.

The worker turns each scored request into a feature vector (models/features.py),
hands the batch's vectors to :meth:`ModelScorer.score_matrix` (one call) and maps the
scores to actions with :meth:`ModelScorer.assess`:

- ``score >= decline`` -> ``DECLINE`` (declined ``fraudulent``);
- ``review <= score < decline`` -> ``REVIEW`` (funds held);
- below -> ``APPROVE``.

Declines and reviews carry the model version, the score and up to three reasons:
the features whose replacement by a typical value (the training median) lowers the
score the most. Reasons cost one extra batched evaluation of one row per feature
that differs from its median, for flagged requests only (about 1 in 100).

Why not ``predict_proba``: scikit-learn validates its input and walks each of the
hundreds of trees in a separate call (each entering an OpenMP region): about 1-2 ms
per call whatever the batch size, far too much for a worker that may decide one
request at a time. The fitted trees are exported instead
(:meth:`TreeEnsemble.from_hgb`) into flat arrays and evaluated with a NumPy version
of QuickScorer (Lucchese et al., SIGIR 2015), equal to ``predict_proba``
(tests/models/test_scorer.py):

- each tree's leaves are numbered left to right and each split carries a bit mask of
  the leaves still possible when its test is *false* (``x > t``: the left subtree is
  out); ANDing the masks of all false splits leaves the exit leaf as the lowest set
  bit;
- the false splits on one feature are a prefix of its splits sorted by threshold, so
  the AND over each prefix is precomputed: per feature, one ``searchsorted`` and one
  table lookup give the masks for every tree at once -- work proportional to
  ``rows x features x trees``, without a Python loop over trees;
- batches of up to :data:`SMALL_BATCH_MAX` rows gather every feature's masks in one
  lookup (fewest NumPy calls); larger ones go feature by feature in blocks of
  :data:`BLOCK_ROWS` rows, which keeps the masks in the CPU cache.

The artifact is a ``.npz`` of plain arrays (no pickle: loading it runs no code), so
a worker needs no scikit-learn to load or score a model.

``python -m models.scorer`` measures µs per payment at batch sizes 1, 100 and 1000
and the p99 of a single-payment score (``--json PATH`` writes the numbers).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agents.rules.decide import FraudAssessment
from models.errors import ModelError, ModelIntegrityError

FloatArray = NDArray[np.float64]
Action = Literal["APPROVE", "REVIEW", "DECLINE"]
Rows = Sequence[Sequence[float]] | FloatArray

ARTIFACT_FORMAT = 1
SMALL_BATCH_MAX = 16
"""Up to this many rows, QuickScorer gathers every feature's masks at once (fewer NumPy
calls); larger batches go feature by feature, in blocks of :data:`BLOCK_ROWS`."""
REASONS_MAX = 3
REASON_MIN_DROP = 1e-6
"""A feature is a reason only if resetting it lowers the score by more than this."""
BLOCK_ROWS = 128
"""QuickScorer works on this many rows at a time: its masks then stay in the CPU cache
(1000 rows at once ran 2-3x slower per row on the dev VM)."""
LEAVES_MAX = 64
"""QuickScorer keeps one bit per leaf in a uint64: train with ``max_leaf_nodes <= 64``."""


@dataclass(frozen=True)
class Thresholds:
    """Score bands: ``score >= decline`` declines, ``score >= review`` holds for review.

    ``inf`` disables a band. ``review`` above ``decline`` makes no sense and is refused.
    """

    review: float
    decline: float

    def __post_init__(self) -> None:
        if math.isnan(self.review) or math.isnan(self.decline):
            raise ValueError("fraud thresholds must be numbers, not NaN")
        if self.review > self.decline:
            raise ValueError(
                f"fraud review threshold {self.review} is above the decline threshold "
                f"{self.decline}"
            )

    def action(self, score: float) -> Action:
        if score >= self.decline:
            return "DECLINE"
        if score >= self.review:
            return "REVIEW"
        return "APPROVE"

    def to_json(self) -> dict[str, float | None]:
        return {
            "review": self.review if math.isfinite(self.review) else None,
            "decline": self.decline if math.isfinite(self.decline) else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> Thresholds:
        try:
            review, decline = data["review"], data["decline"]
            return cls(
                float("inf") if review is None else float(review),
                float("inf") if decline is None else float(decline),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"thresholds {data!r} are not {{review, decline}}: {exc}") from exc


def _matrix(rows: Rows, n_features: int) -> FloatArray:
    try:
        X = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"feature rows are not {n_features} numbers each: {exc}") from exc
    if X.ndim != 2 or X.shape[1] != n_features:
        if X.size == 0:
            return np.empty((0, n_features))
        raise ModelError(f"expected rows of {n_features} features, got an array of {X.shape}")
    return X


def _complex(real: Any, imag: Any) -> NDArray[np.complex128]:
    """``real + imag * 1j`` elementwise (broadcast), exact for infinite ``imag``."""
    shape = np.broadcast_shapes(np.shape(real), np.shape(imag))
    out = np.empty(shape, dtype=np.complex128)
    out.real = real
    out.imag = imag
    return out


def _popcount(values: NDArray[Any]) -> NDArray[np.int64]:
    """Set bits per element (``np.bitwise_count`` on NumPy >= 2, else via frexp)."""
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return np.asarray(count(values), dtype=np.int64)
    # Only called on values of the form 2**k - 1: frexp(2**k) gives exponent k + 1.
    exponent = np.frexp(values.astype(np.float64) + 1.0)[1]
    return np.asarray(exponent - 1, dtype=np.int64)


def _sigmoid(raw: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(raw, -700.0, 700.0)))
    return out


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class TreeEnsemble:
    """A binary-classification tree ensemble: ``P(fraud) = sigmoid(baseline + sum(leaves))``.

    Nodes of all trees live in flat arrays; ``feature[i] == -1`` marks a leaf.
    A split sends ``x <= threshold`` left, NaN by ``missing_left``, the rest right.
    """

    kind = "trees"

    def __init__(
        self,
        feature: NDArray[np.int32],
        threshold: FloatArray,
        left: NDArray[np.int32],
        right: NDArray[np.int32],
        value: FloatArray,
        missing_left: NDArray[np.bool_],
        roots: NDArray[np.int32],
        baseline: float,
        n_features: int,
    ) -> None:
        self.feature = np.asarray(feature, dtype=np.int32)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.left = np.asarray(left, dtype=np.int32)
        self.right = np.asarray(right, dtype=np.int32)
        self.value = np.asarray(value, dtype=np.float64)
        self.missing_left = np.asarray(missing_left, dtype=np.bool_)
        self.roots = np.asarray(roots, dtype=np.int32)
        self.baseline = float(baseline)
        self.n_features = int(n_features)
        self._validate()
        # Python lists for the per-row walk (list indexing beats NumPy scalar access).
        self._f = self.feature.tolist()
        self._t = self.threshold.tolist()
        self._l = self.left.tolist()
        self._r = self.right.tolist()
        self._v = self.value.tolist()
        self._m = self.missing_left.tolist()
        self._root_list = self.roots.tolist()
        self._build_quickscorer()

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    @property
    def n_leaves(self) -> int:
        return int(np.sum(self.feature < 0))

    def _validate(self) -> None:
        n = self.feature.size
        arrays = (self.threshold, self.left, self.right, self.value, self.missing_left)
        if any(a.shape != (n,) for a in arrays) or self.roots.ndim != 1:
            raise ModelIntegrityError("tree arrays have inconsistent shapes")
        if self.roots.size == 0 or n == 0:
            raise ModelIntegrityError("the tree ensemble has no trees")
        split = self.feature >= 0
        if np.any(self.feature >= self.n_features):
            raise ModelIntegrityError("a split names a feature the model does not have")
        idx = np.arange(n)
        # Children come after their parent: walks always terminate, inside the arrays.
        for child in (self.left, self.right):
            if np.any(split & ((child <= idx) | (child >= n))):
                raise ModelIntegrityError("a tree node points outside its tree or backwards")
        if np.any(np.isnan(self.threshold[split])) or not math.isfinite(self.baseline):
            raise ModelIntegrityError("a tree holds a NaN threshold or a non-finite baseline")
        if not np.all(np.isfinite(self.value[~split])):
            raise ModelIntegrityError("a tree leaf holds a non-finite value")

    # -- QuickScorer tables -------------------------------------------------------------
    def _build_quickscorer(self) -> None:
        n_trees = self.n_trees
        leaf_rank = np.full(self.feature.size, -1, dtype=np.int64)
        leaf_values = []
        # Per split node: its tree and the mask of leaves still possible when x > t.
        node_tree = np.zeros(self.feature.size, dtype=np.int64)
        node_mask = np.zeros(self.feature.size, dtype=np.uint64)
        max_leaves = 0
        for t, root in enumerate(self._root_list):
            leaves: list[int] = []
            # Iterative DFS, left subtree first, so leaves are numbered left to right;
            # each split remembers the number of the first leaf of its left subtree.
            first_of: dict[int, int] = {}
            stack = [root]
            while stack:
                node = stack.pop()
                if self._f[node] < 0:
                    leaf_rank[node] = len(leaves)
                    leaves.append(node)
                    continue
                first_of[node] = len(leaves)
                stack.append(self._r[node])
                stack.append(self._l[node])
            if len(leaves) > LEAVES_MAX:
                raise ModelError(
                    f"tree {t} has {len(leaves)} leaves; the scorer handles at most "
                    f"{LEAVES_MAX} (train with max_leaf_nodes <= {LEAVES_MAX})"
                )
            max_leaves = max(max_leaves, len(leaves))
            # A split's left subtree holds the leaves numbered [first, first of right child).
            for node, first in first_of.items():
                right_first = self._first_leaf(self._r[node], leaf_rank)
                left_bits = ((1 << (right_first - first)) - 1) << first
                node_mask[node] = np.uint64(~left_bits & ((1 << 64) - 1))
                node_tree[node] = t
            leaf_values.append([self._v[i] for i in leaves])
        self._dtype = np.uint32 if max_leaves <= 32 else np.uint64
        width = max(max_leaves, 1)
        table = np.zeros((n_trees, width))
        for t, values in enumerate(leaf_values):
            table[t, : len(values)] = values
        self._leaf_table = table.ravel()
        self._tree_offset = (np.arange(n_trees) * width).astype(np.int64)
        full = np.iinfo(self._dtype).max
        splits = np.flatnonzero(self.feature >= 0)
        features = np.unique(self.feature[splits]).tolist()
        sizes = [int(np.sum(self.feature[splits] == f)) + 2 for f in features]
        # One table for all features (feature f's rows start at its offset), so small
        # batches can look up every feature's masks with one gather.
        self._table = np.full((sum(sizes), n_trees), full, dtype=self._dtype)
        self._qs: list[tuple[int, FloatArray, NDArray[Any], int]] = []
        offsets = []
        offset = 0
        for f, size in zip(features, sizes, strict=True):
            nodes = splits[self.feature[splits] == f]
            nodes = nodes[np.argsort(self.threshold[nodes], kind="stable")]
            k = nodes.size
            # Row j: AND of the masks of the j lowest-threshold nodes (false when x > t);
            # row k + 1: the nodes that send NaN right.
            tab = self._table[offset : offset + size]
            acc = np.full(n_trees, full, dtype=self._dtype)
            nan = np.full(n_trees, full, dtype=self._dtype)
            for j, node in enumerate(nodes.tolist()):
                tree = node_tree[node]
                mask = self._dtype(node_mask[node] & np.uint64(full))
                acc[tree] &= mask
                tab[j + 1] = acc
                if not self._m[node]:
                    nan[tree] &= mask
            tab[k + 1] = nan
            self._qs.append((int(f), self.threshold[nodes].copy(), tab, k))
            offsets.append(offset)
            offset += size
        # Table row of (feature c, value x) = offset_c + #(thresholds_c < x). All
        # features' counts come from ONE searchsorted over (c, threshold) pairs kept as
        # complex numbers, which NumPy orders lexicographically (real part first).
        counts = [k for _, _, _, k in self._qs]
        self._used = np.array([f for f, _, _, _ in self._qs], dtype=np.intp)
        self._columns = np.arange(len(self._qs), dtype=np.float64)
        self._keys = np.concatenate(
            [np.empty(0, dtype=np.complex128)]
            + [_complex(float(c), t) for c, (_, t, _, _) in enumerate(self._qs)]
        )
        key_starts = (np.cumsum([0, *counts])[:-1]).astype(np.intp)
        self._offsets = np.array(offsets, dtype=np.intp)
        self._row_base = self._offsets - key_starts
        self._nan_rows = self._offsets + np.array(counts, dtype=np.intp) + 1

    def _first_leaf(self, node: int, leaf_rank: NDArray[np.int64]) -> int:
        while self._f[node] >= 0:
            node = self._l[node]
        return int(leaf_rank[node])

    # -- evaluation ---------------------------------------------------------------------
    @property
    def features_used(self) -> NDArray[np.intp]:
        """Indexes of the features some split tests."""
        return np.array([f for f, _, _, _ in self._qs], dtype=np.intp)

    def raw_row(self, x: Sequence[float]) -> float:
        """Log-odds of one row by walking each tree: the reference QuickScorer is tested
        against (too slow for serving: ~0.3 µs per tree)."""
        f_, t_, l_, r_, m_ = self._f, self._t, self._l, self._r, self._m
        total = self.baseline
        v_ = self._v
        for node in self._root_list:
            f = f_[node]
            while f >= 0:
                xv = x[f]
                # NaN (xv != xv) goes where the split sent missing values in training.
                node = l_[node] if xv <= t_[node] or (xv != xv and m_[node]) else r_[node]
                f = f_[node]
            total += v_[node]
        return total

    def raw(self, X: FloatArray) -> FloatArray:
        """Log-odds of every row of ``X`` (QuickScorer)."""
        n = X.shape[0]
        if n <= SMALL_BATCH_MAX and self._used.size:
            # A few rows: every feature's masks in one gather, one AND-reduction.
            acc = np.bitwise_and.reduce(self._table[self._rows(X)], axis=1)
            small: FloatArray = self._leaves(acc) + self.baseline
            return small
        out = np.empty(n)
        dtype = self._dtype
        full = np.iinfo(dtype).max
        table = self._table
        acc_buffer = np.empty((min(BLOCK_ROWS, n), self.n_trees), dtype=dtype)
        for start in range(0, n, BLOCK_ROWS):
            rows = self._rows(X[start : start + BLOCK_ROWS])
            acc = acc_buffer[: rows.shape[0]]
            acc.fill(full)
            for column in range(rows.shape[1]):
                acc &= table[rows[:, column]]
            out[start : start + rows.shape[0]] = self._leaves(acc)
        out += self.baseline
        return out

    def _rows(self, X: FloatArray) -> NDArray[np.intp]:
        """Per row and used feature, the row of ``_table`` holding its trees' masks."""
        values = X[:, self._used]
        rows: NDArray[np.intp] = np.searchsorted(
            self._keys, _complex(self._columns, values).ravel(), side="left"
        ).reshape(values.shape)
        rows += self._row_base
        missing = np.isnan(values)
        if missing.any():
            rows[missing] = np.broadcast_to(self._nan_rows, values.shape)[missing]
        return rows

    def _leaves(self, acc: NDArray[Any]) -> FloatArray:
        """Sum of the exit leaves' values per row; ``acc`` is consumed."""
        # The exit leaf is the lowest set bit: its rank is popcount(~acc & (acc - 1)).
        below = acc - self._dtype(1)
        np.invert(acc, out=acc)
        np.bitwise_and(acc, below, out=acc)
        rank = _popcount(acc)
        rank += self._tree_offset
        out: FloatArray = self._leaf_table[rank].sum(axis=1)
        return out

    # -- (de)serialization --------------------------------------------------------------
    def to_arrays(self) -> dict[str, NDArray[Any]]:
        return {
            "tree_feature": self.feature,
            "tree_threshold": self.threshold,
            "tree_left": self.left,
            "tree_right": self.right,
            "tree_value": self.value,
            "tree_missing_left": self.missing_left,
            "tree_roots": self.roots,
            "tree_baseline": np.array([self.baseline]),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, n_features: int) -> TreeEnsemble:
        return cls(
            arrays["tree_feature"],
            arrays["tree_threshold"],
            arrays["tree_left"],
            arrays["tree_right"],
            arrays["tree_value"],
            arrays["tree_missing_left"],
            arrays["tree_roots"],
            float(arrays["tree_baseline"][0]),
            n_features,
        )

    @classmethod
    def from_hgb(cls, model: Any) -> TreeEnsemble:
        """Export a fitted binary ``HistGradientBoostingClassifier``'s trees."""
        if getattr(model, "n_trees_per_iteration_", None) != 1:
            raise ModelError("only binary HistGradientBoostingClassifier models can be exported")
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        missing: list[bool] = []
        roots: list[int] = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if np.any(nodes["is_categorical"]):
                raise ModelError("categorical splits are not supported by the scorer")
            offset = len(feature)
            roots.append(offset)
            leaf = nodes["is_leaf"].astype(bool)
            feature.extend(np.where(leaf, -1, nodes["feature_idx"]).tolist())
            threshold.extend(np.where(leaf, 0.0, nodes["num_threshold"]).tolist())
            left.extend(np.where(leaf, 0, nodes["left"].astype(np.int64) + offset).tolist())
            right.extend(np.where(leaf, 0, nodes["right"].astype(np.int64) + offset).tolist())
            value.extend(np.where(leaf, nodes["value"], 0.0).tolist())
            missing.extend(nodes["missing_go_to_left"].astype(bool).tolist())
        return cls(
            np.array(feature, dtype=np.int32),
            np.array(threshold),
            np.array(left, dtype=np.int32),
            np.array(right, dtype=np.int32),
            np.array(value),
            np.array(missing, dtype=np.bool_),
            np.array(roots, dtype=np.int32),
            float(baseline[0]),
            int(model.n_features_in_),
        )


class LinearModel:
    """``P(fraud) = sigmoid(((x - mean) / scale) . coef + intercept)``."""

    kind = "linear"

    def __init__(
        self, mean: FloatArray, scale: FloatArray, coef: FloatArray, intercept: float
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).ravel()
        self.scale = np.asarray(scale, dtype=np.float64).ravel()
        self.coef = np.asarray(coef, dtype=np.float64).ravel()
        self.intercept = float(intercept)
        if not (self.mean.shape == self.scale.shape == self.coef.shape):
            raise ModelIntegrityError("linear model arrays have inconsistent shapes")
        if not np.all(np.isfinite(self.coef)) or np.any(self.scale == 0):
            raise ModelIntegrityError("linear model holds non-finite weights or a zero scale")
        self.n_features = int(self.coef.size)
        self._w = self.coef / self.scale
        self._b = self.intercept - float(np.dot(self.mean, self._w))
        self._w_list = self._w.tolist()

    @property
    def features_used(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.coef != 0).astype(np.intp)

    def raw_row(self, x: Sequence[float]) -> float:
        return self._b + math.fsum(w * v for w, v in zip(self._w_list, x, strict=True))

    def raw(self, X: FloatArray) -> FloatArray:
        out: FloatArray = X @ self._w + self._b
        return out

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        return {
            "linear_mean": self.mean,
            "linear_scale": self.scale,
            "linear_coef": self.coef,
            "linear_intercept": np.array([self.intercept]),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, n_features: int) -> LinearModel:
        model = cls(
            arrays["linear_mean"],
            arrays["linear_scale"],
            arrays["linear_coef"],
            float(arrays["linear_intercept"][0]),
        )
        if model.n_features != n_features:
            raise ModelIntegrityError("linear model width differs from its feature list")
        return model

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> LinearModel:
        """Export ``make_pipeline(StandardScaler(), LogisticRegression())``."""
        scaler, logistic = pipeline[0], pipeline[-1]
        return cls(
            scaler.mean_,
            scaler.scale_,
            np.asarray(logistic.coef_).ravel(),
            float(np.asarray(logistic.intercept_).ravel()[0]),
        )


Model = TreeEnsemble | LinearModel


# --------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------


def artifact_bytes(model: Model, feature_names: Sequence[str], reference: FloatArray) -> bytes:
    """The model file: an uncompressed ``.npz`` of plain arrays (loadable without pickle)."""
    arrays: dict[str, NDArray[Any]] = {
        "format": np.array([ARTIFACT_FORMAT]),
        "kind": np.array(model.kind),
        "feature_names": np.array(list(feature_names), dtype=str),
        "reference": np.asarray(reference, dtype=np.float64),
        **model.to_arrays(),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def load_artifact(data: bytes) -> tuple[Model, tuple[str, ...], FloatArray]:
    """Parse verified artifact bytes into (model, feature names, reference values)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ModelIntegrityError(f"the model file is not a readable .npz: {exc}") from exc
    try:
        if int(arrays["format"][0]) != ARTIFACT_FORMAT:
            raise ModelIntegrityError(
                f"model file format {int(arrays['format'][0])} is not {ARTIFACT_FORMAT}"
            )
        kind = str(arrays["kind"])
        names = tuple(str(name) for name in arrays["feature_names"].tolist())
        reference = np.asarray(arrays["reference"], dtype=np.float64)
        if reference.shape != (len(names),):
            raise ModelIntegrityError("reference values do not match the feature list")
        model: Model
        if kind == TreeEnsemble.kind:
            model = TreeEnsemble.from_arrays(arrays, len(names))
        elif kind == LinearModel.kind:
            model = LinearModel.from_arrays(arrays, len(names))
        else:
            raise ModelIntegrityError(f"unknown model kind {kind!r} in the model file")
    except KeyError as exc:
        raise ModelIntegrityError(f"the model file lacks the array {exc}") from exc
    return model, names, reference


# --------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------


class ModelScorer:
    """Scores batches with a loaded model and turns scores into fraud assessments."""

    def __init__(
        self,
        version: str,
        model: Model,
        feature_names: Sequence[str],
        reference: FloatArray,
        thresholds: Thresholds,
    ) -> None:
        self.version = version
        self.model = model
        self.feature_names = tuple(feature_names)
        self.reference = np.asarray(reference, dtype=np.float64)
        self.thresholds = thresholds
        self.n_features = len(self.feature_names)
        if self.reference.shape != (self.n_features,):
            raise ModelError("reference values do not match the feature list")

    def describe(self) -> str:
        model = self.model
        if isinstance(model, TreeEnsemble):
            shape = f"{model.n_trees} trees, {model.n_leaves} leaves"
        else:
            shape = f"linear, {model.n_features} weights"
        t = self.thresholds
        bands = f"review >= {t.review:.4g}, decline >= {t.decline:.4g}"
        return f"model {self.version} ({shape}; {bands})"

    def with_thresholds(self, thresholds: Thresholds) -> ModelScorer:
        return ModelScorer(self.version, self.model, self.feature_names, self.reference, thresholds)

    def score_matrix(self, rows: Rows) -> list[float]:
        """P(fraud) of every row: one model evaluation for the whole batch."""
        n = len(rows)
        if n == 0:
            return []
        X = _matrix(rows, self.n_features)
        scores: list[float] = _sigmoid(self.model.raw(X)).tolist()
        return scores

    def assess(self, rows: Rows, scores: Sequence[float]) -> list[FraudAssessment]:
        """Actions for scored rows; reasons only for the flagged ones (one batched call)."""
        review = self.thresholds.review
        version = self.version
        out = [FraudAssessment(score, version, "APPROVE", ()) for score in scores]
        flagged = [i for i, score in enumerate(scores) if score >= review]
        if not flagged:
            return out
        reasons = self.reasons([rows[i] for i in flagged], [scores[i] for i in flagged])
        for i, why in zip(flagged, reasons, strict=True):
            score = scores[i]
            out[i] = FraudAssessment(score, version, self.thresholds.action(score), why)
        return out

    def assess_rows(self, rows: Rows) -> list[FraudAssessment]:
        return self.assess(rows, self.score_matrix(rows))

    def reasons(self, rows: Rows, scores: Sequence[float]) -> list[tuple[str, ...]]:
        """Per row, the features whose reset to the training median lowers the score most."""
        X = _matrix(rows, self.n_features)
        k, width = X.shape
        if k == 0:
            return []
        # Only features the model uses and whose value differs from the reference can
        # move the score: perturb just those (one row each), in one batched call.
        differs = np.not_equal(X, self.reference)
        unused = np.ones(width, dtype=bool)
        unused[self.model.features_used] = False
        differs[:, unused] = False
        row_of, column = np.nonzero(differs)
        drops = np.zeros((k, width))
        if row_of.size:
            perturbed = X[row_of]
            perturbed[np.arange(row_of.size), column] = self.reference[column]
            reset = _sigmoid(self.model.raw(perturbed))
            drops[row_of, column] = np.asarray(scores, dtype=np.float64)[row_of] - reset
        out = []
        for row in drops:
            top = np.argsort(-row, kind="stable")[:REASONS_MAX]
            out.append(tuple(self.feature_names[j] for j in top if row[j] > REASON_MIN_DROP))
        return out


class RulesBaselineScorer:
    """The scorer of a worker with no promoted model: hand-written rules, no training.

    One pattern per kind of fraud the features can see (see models/features.py); the
    score is the strongest pattern's, plus a little for an amount above habit. The
    levels follow each pattern's precision on a 3-month simulation (in brackets):

    - account takeover: a device first seen in the last 6 hours on an account older
      than a week (0.4 [7%]), with a new payee or an unusual amount or share of the
      balance (0.6 [17%]), with both (0.9 [68%]);
    - card testing: a burst (3+ payments in the hour, decayed) of amounts far below
      the account's habit (0.25 [1%]), from a young device or to new payees (0.85 [53%]);
    - compromised merchant: a charge without a device, at night (UTC), above habit
      (0.3 [2%]), in a busy hour (0.7 [30%]);
    - mule cash-out: most of the balance paid within 12 hours of a top-up (0.15
      [0.3%]), as a payout or to a new payee (0.45 [4%]: savings sweeps look alike).

    On a 3-month simulation (3000 customers, the last month held out) it reaches
    AUPRC ~0.52 and flags ~77% of fraud at 1% FPR, against ~0.20 and ~35% for the best
    single feature. The thresholds were chosen by cost
    (:func:`models.evaluate.choose_thresholds`, default costs) on the two training
    months: review from 0.5 (the cash-out pattern with an unusual amount), decline
    from 0.6 (about 0.5% of payments: without a model, declining the likelier
    patterns costs less than letting them through once review capacity is used up).
    """

    version = "rules-v1"
    DEFAULT_THRESHOLDS = Thresholds(review=0.5, decline=0.6)
    REQUIRED = (
        "is_payout",
        "count_1h",
        "amount_z",
        "account_age_log",
        "new_payee",
        "new_payees_1h",
        "device_missing",
        "device_age_log",
        "hour_of_day",
        "amount_to_balance",
        "secs_since_topup_log",
    )

    def __init__(self, feature_names: Sequence[str], thresholds: Thresholds | None = None) -> None:
        self.feature_names = tuple(feature_names)
        self.n_features = len(self.feature_names)
        missing = [name for name in self.REQUIRED if name not in self.feature_names]
        if missing:
            raise ModelError(f"the rules baseline needs features {missing} the extractor lacks")
        self._index = {name: self.feature_names.index(name) for name in self.REQUIRED}
        self.thresholds = thresholds or self.DEFAULT_THRESHOLDS

    def describe(self) -> str:
        t = self.thresholds
        return (
            f"no fraud model promoted: scoring with the rules baseline {self.version} "
            f"(review >= {t.review:.4g}, decline >= {t.decline:.4g})"
        )

    def _patterns(self, x: Sequence[float]) -> list[tuple[float, tuple[str, ...]]]:
        """(score, reasons) of every pattern that fired."""
        i = self._index
        amount_z = x[i["amount_z"]]
        fired: list[tuple[float, tuple[str, ...]]] = []
        young_device = (
            x[i["device_age_log"]] < _LOG_SIX_HOURS
            and x[i["device_missing"]] == 0
            and x[i["account_age_log"]] > _LOG_WEEK
        )
        new_payee = x[i["new_payee"]] > 0 or x[i["new_payees_1h"]] >= 1.0
        unusual = amount_z >= 1.0 or x[i["amount_to_balance"]] >= 0.3
        if young_device:
            why: tuple[str, ...] = ("device_age_log",)
            why += ("new_payee",) if new_payee else ()
            why += ("amount_z",) if unusual else ()
            fired.append(((0.4, 0.6, 0.9)[int(new_payee) + int(unusual)], why))
        if amount_z < -1.0 and x[i["count_1h"]] >= 3.0:
            strong = young_device or new_payee
            why = ("count_1h", "amount_z") + (("new_payee",) if new_payee else ())
            fired.append((0.85 if strong else 0.25, why))
        if x[i["device_missing"]] > 0 and x[i["hour_of_day"]] <= 5 and amount_z >= 0.5:
            why = ("device_missing", "hour_of_day", "amount_z")
            fired.append((0.7 if x[i["count_1h"]] >= 0.5 else 0.3, why))
        if x[i["secs_since_topup_log"]] < _LOG_TWELVE_HOURS and x[i["amount_to_balance"]] >= 0.5:
            out = x[i["is_payout"]] > 0 or x[i["new_payee"]] > 0
            why = ("secs_since_topup_log", "amount_to_balance")
            why += ("is_payout" if x[i["is_payout"]] > 0 else "new_payee",) if out else ()
            fired.append((0.45 if out else 0.15, why))
        return fired

    def score_row(self, x: Sequence[float]) -> float:
        fired = self._patterns(x)
        best = max(score for score, _ in fired) if fired else 0.0
        z = x[self._index["amount_z"]]
        best += 0.025 * (0.0 if z <= 0 else z if z < 2.0 else 2.0)
        return best if best < 1.0 else 1.0

    def score_matrix(self, rows: Rows) -> list[float]:
        width = self.n_features
        out = []
        for row in rows.tolist() if isinstance(rows, np.ndarray) else rows:
            if len(row) != width:
                raise ModelError(f"expected rows of {width} features, got {len(row)}")
            out.append(self.score_row(row))
        return out

    def assess(self, rows: Rows, scores: Sequence[float]) -> list[FraudAssessment]:
        action = self.thresholds.action
        out = []
        for row, score in zip(rows, scores, strict=True):
            verdict = action(score)
            why = self.reasons_row(row) if verdict != "APPROVE" else ()
            out.append(FraudAssessment(score, self.version, verdict, why))
        return out

    def assess_rows(self, rows: Rows) -> list[FraudAssessment]:
        return self.assess(rows, self.score_matrix(rows))

    def reasons_row(self, x: Sequence[float]) -> tuple[str, ...]:
        """The inputs of the strongest pattern that fired (at most three)."""
        fired = self._patterns(x)
        if not fired:
            return ()
        return max(fired, key=lambda pattern: pattern[0])[1][:REASONS_MAX]


_LOG_SIX_HOURS = math.log1p(6 * 3600)
_LOG_TWELVE_HOURS = math.log1p(12 * 3600)
_LOG_WEEK = math.log1p(7 * 86400)

Scorer = ModelScorer | RulesBaselineScorer


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------


def benchmark(
    scorer: Scorer,
    rows: Sequence[tuple[float, ...]],
    *,
    batch_sizes: Sequence[int] = (1, 100, 1000),
    single_samples: int = 5000,
    budget_s: float = 2.0,
) -> dict[str, Any]:
    """µs per payment of ``score_matrix`` + ``assess`` per batch size, p99 of one payment."""
    if not rows:
        raise ValueError("the benchmark needs rows")
    pool = list(rows)
    while len(pool) < max(batch_sizes):
        pool.extend(rows)
    scores = scorer.score_matrix(pool)
    flagged = sum(score >= scorer.thresholds.review for score in scores) / len(pool)
    result: dict[str, Any] = {
        "scorer": scorer.describe(),
        "flagged_share": flagged,
        "batches": {},
    }
    for size in batch_sizes:
        batches = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)] or [
            pool[:size]
        ]
        scorer.assess(batches[0], scorer.score_matrix(batches[0]))  # warm up
        timings: list[float] = []
        deadline = time.perf_counter() + budget_s
        i = 0
        while time.perf_counter() < deadline or len(timings) < 5:
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            scorer.assess(batch, scorer.score_matrix(batch))
            timings.append(time.perf_counter() - start)
            i += 1
        per = np.array(timings) / size * 1e6
        result["batches"][str(size)] = {
            "us_per_payment_median": float(np.median(per)),
            "us_per_payment_mean": float(np.mean(per)),
            "batches_timed": len(timings),
        }
    singles = []
    for j in range(single_samples):
        row = [pool[j % len(pool)]]
        start = time.perf_counter()
        scorer.assess(row, scorer.score_matrix(row))
        singles.append(time.perf_counter() - start)
    us = np.array(singles) * 1e6
    result["single"] = {
        "samples": single_samples,
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.scorer",
        description="Measure fraud scoring: µs per payment at batch 1/100/1000, p99 single.",
    )
    parser.add_argument("--registry", help="registry directory (default: <state_dir>/models)")
    parser.add_argument("--version", help="model version (default: the newest in the registry)")
    parser.add_argument("--rules", action="store_true", help="measure the rules baseline")
    parser.add_argument("--rows", type=int, default=5000, help="feature vectors to score")
    parser.add_argument("--seed", type=int, default=7, help="seed of the rows' simulation")
    parser.add_argument("--customers", type=int, default=1000, help="customers simulated")
    parser.add_argument("--days", type=int, default=45, help="days simulated (last rows used)")
    parser.add_argument("--budget-s", type=float, default=2.0, help="seconds per batch size")
    parser.add_argument("--singles", type=int, default=5000, help="single payments timed")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = parser.parse_args(argv)

    from models.features import FEATURE_NAMES
    from models.registry import Registry, default_registry_dir

    scorer: Scorer
    if args.rules:
        scorer = RulesBaselineScorer(FEATURE_NAMES)
    else:
        registry = Registry(args.registry or default_registry_dir())
        version = args.version or registry.newest()
        if version is None:
            print(
                f"no model in {registry.root}: train one (paystream model train --simulate) "
                "or pass --rules",
                file=sys.stderr,
            )
            return 2
        scorer = registry.load(version)
    from models.dataset import simulated_rows

    rows = simulated_rows(args.rows, args.seed, customers=args.customers, days=args.days)
    result = benchmark(scorer, rows, single_samples=args.singles, budget_s=args.budget_s)
    print(result["scorer"])
    print(
        f"  {len(rows)} feature vectors from a simulation ({args.customers} customers, "
        f"{args.days} days, seed {args.seed}); {result['flagged_share']:.2%} flagged "
        "(they pay for reasons)"
    )
    for size, numbers in result["batches"].items():
        print(f"  batch {size:>5}: {numbers['us_per_payment_median']:8.2f} µs per payment")
    single = result["single"]
    print(f"  single payment: p50 {single['p50_us']:.1f} µs, p99 {single['p99_us']:.1f} µs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
