"""Detection metrics: ranking, threshold, calibration and pooling, numpy only.

One module computes every number that training (early stopping on validation AUC),
evaluation (per split, per manipulation method, per ensemble member), calibration
(ECE and Brier before and after) and the model card report, so the numbers agree
everywhere. Scikit-learn is deliberately *not* imported: the service imports this
module, and sklearn would add seconds of import time and a heavy dependency to the
inference path. The unit tests use sklearn as the reference implementation instead.

Conventions
-----------
* Labels: ``1`` is *fake* (the positive class), ``0`` is *real* (DESIGN §3). ``bool``
  labels are accepted; any other value raises :class:`ValueError`.
* Scores: larger means "more likely fake". Ranking metrics accept logits or
  probabilities (only the order matters); calibration metrics (:func:`brier`,
  :func:`ece`, :func:`reliability`) need probabilities in ``[0, 1]``.
* A sample is predicted fake when ``score >= threshold`` (as sklearn's curves do).
* Degenerate inputs never raise and never warn: with a single class, AUC, AP, EER and
  FPR@TPR are ``nan``; on empty input every scalar metric is ``nan``. This matters
  because evaluation slices data finely (a method in a small split can have no real
  clip) and a warning per slice would bury the useful ones.
* NaN scores or labels raise :class:`ValueError` naming the argument: a NaN score is a
  bug upstream (a diverged model, a failed decode) and must not become a silent number.
* Values the pipeline chooses have no default here, so no caller silently gets a
  second one: ECE/reliability bins (``metrics.ece_bins``,
  :class:`veracity.config.MetricsConfig`) and the pooling ``k``/``beta``
  (:class:`veracity.config.PoolingConfig`) are passed by the caller.
* Curves follow ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` and
  ``sklearn.metrics.precision_recall_curve`` point for point (one point per distinct
  score), so the metrics derived from them match sklearn to floating-point precision.

Functions
---------
:func:`roc_auc`, :func:`roc_curve`, :func:`average_precision`, :func:`pr_curve`,
:func:`eer`, :func:`fpr_at_tpr` (ranking); :func:`threshold_metrics`,
:func:`confusion` (at a threshold); :func:`brier`, :func:`ece`, :func:`reliability`
(calibration); :func:`summarize` (all of the above as one flat dict); :func:`pool`
(frame/window scores to clip/video scores); :func:`table` (``summarize`` per split and
per manipulation method, as a DataFrame); :func:`cluster_bootstrap` (intervals that
resample people, not clips) and :func:`binomial_range` (where a rate lands by chance);
:class:`QualityCheck` (a figure against its bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "POOL_RULES",
    "average_precision",
    "binomial_range",
    "brier",
    "cluster_bootstrap",
    "confusion",
    "ece",
    "ece_if_calibrated",
    "eer",
    "fpr_at_tpr",
    "pool",
    "pr_curve",
    "reliability",
    "roc_auc",
    "roc_curve",
    "summarize",
    "table",
    "threshold_metrics",
]

POOL_RULES = ("mean", "max", "topk", "softmax")
BIN_STRATEGIES = ("uniform", "quantile")
NAN = float("nan")

# Keys of summarize(), in the order they appear in table() columns.
_RANK_KEYS = ("auc", "ap", "eer", "eer_threshold", "fpr_at_95tpr")
_THRESHOLD_KEYS = ("accuracy", "precision", "recall", "f1", "specificity", "fpr")
_PROB_KEYS = ("brier", "ece")
_COUNT_KEYS = ("n", "n_pos", "n_neg")


# --------------------------------------------------------------------------- inputs


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        # A (n, 2) probability matrix passed by mistake would otherwise be flattened
        # into 2n nonsense scores; refuse anything that is not a plain vector.
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    """Validate binary labels and return them as int64 0/1."""
    y = _as_1d(y_true, name)
    if y.dtype == bool:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"{name} must be numeric or bool 0/1 labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
        raise ValueError(f"{name} contains NaN")
    if y.size and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"{name} must contain only 0 (real) and 1 (fake); found {bad.tolist()}")
    return y.astype(np.int64)


def _scores(y_score: Any, name: str = "y_score") -> np.ndarray:
    """Validate scores (finite or +-inf, never NaN) and return them as float64."""
    s = _as_1d(y_score, name)
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s) out of {s.size}")
    return s


def _pair(y_true: Any, y_score: Any, name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    s = _scores(y_score, name)
    if y.shape != s.shape:
        raise ValueError(f"y_true and {name} differ in length: {y.size} != {s.size}")
    return y, s


def _check_prob(p: np.ndarray, name: str = "y_prob") -> None:
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got range [{p.min():g}, {p.max():g}] "
            "(pass sigmoid(logits), or is_prob=False to summarize)"
        )


def _div(num: float, den: float) -> float:
    """``num / den`` with sklearn's ``zero_division=0`` convention."""
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------- ranking


def _clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps, thresholds) at each distinct score, highest score first.

    The same construction as sklearn's ``confusion_matrix_at_thresholds``: sort by
    descending score, then keep the last index of every run of tied scores, so tied
    samples enter the curve together (which is what makes ties count one half in AUC).
    """
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # `!=` rather than np.diff: inf - inf would be nan (and warn) for tied infinite scores.
    distinct = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    idx = np.r_[distinct, s.size - 1]
    tps = np.cumsum(y_sorted)[idx].astype(np.float64)
    fps = 1.0 + idx - tps
    return fps, tps, s_sorted[idx]


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve.

    Identical to ``sklearn.metrics.roc_curve(y_true, y_score, drop_intermediate=False)``:
    one point per distinct score (no collinear points dropped) preceded by the point
    ``(0, 0)`` at threshold ``+inf``. Point ``i`` is the rate obtained by predicting
    fake when ``score >= thresholds[i]``.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake (logits or probabilities).

    Returns:
        ``(fpr, tpr, thresholds)``, each of length ``n_distinct_scores + 1``, with
        thresholds strictly decreasing. When a class is absent its rate is undefined
        and is returned as all-NaN (sklearn does the same but also warns; we do not).
        Empty input gives the single point ``(nan, nan, inf)``.

    Raises:
        ValueError: Labels other than 0/1, NaN scores, or mismatched lengths.
    """
    y, s = _pair(y_true, y_score)
    if y.size == 0:
        return np.array([NAN]), np.array([NAN]), np.array([np.inf])
    fps, tps, thr = _clf_curve(y, s)
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, NAN)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, NAN)
    return fpr, tpr, thr


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve, i.e. the Mann-Whitney U statistic normalised.

    AUC is the probability that a random fake scores higher than a random real, with a
    tie counting one half; this equals the trapezoidal area under :func:`roc_curve` and
    ``sklearn.metrics.roc_auc_score``. It is computed by exact integer counting per
    distinct score, so it does not accumulate trapezoid rounding.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake.

    Returns:
        AUC in ``[0, 1]``; ``nan`` when either class is absent or the input is empty.

    Raises:
        ValueError: Labels other than 0/1, NaN scores, or mismatched lengths.
    """
    y, s = _pair(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    _, inv = np.unique(s, return_inverse=True)
    inv = inv.ravel()
    pos = np.bincount(inv, weights=y).astype(np.int64)  # positives per distinct score
    neg = np.bincount(inv).astype(np.int64) - pos
    neg_below = np.cumsum(neg) - neg  # negatives with a strictly lower score
    # 2*U counts each (fake, real) pair: 2 if the fake is higher, 1 if tied. Integers
    # keep it exact for any realistic n; the division happens once at the end.
    twice_u = int(np.sum(pos * (2 * neg_below + neg)))
    return twice_u / (2.0 * n_pos * n_neg)


def pr_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, as ``sklearn.metrics.precision_recall_curve``.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake.

    Returns:
        ``(precision, recall, thresholds)``: thresholds are the distinct scores in
        increasing order; precision and recall have one more element, the sentinel
        point ``(precision=1, recall=0)``, so recall is non-increasing. With no
        positives recall is undefined and returned as NaN (sklearn returns 1 and
        warns); empty input returns only the sentinel point.

    Raises:
        ValueError: Labels other than 0/1, NaN scores, or mismatched lengths.
    """
    y, s = _pair(y_true, y_score)
    if y.size == 0:
        return np.array([1.0]), np.array([0.0]), np.empty(0)
    fps, tps, thr = _clf_curve(y, s)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every point: no zero division
    recall = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, NAN)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision: the step-wise (not trapezoidal) area under the PR curve.

    ``AP = sum_n (R_n - R_{n-1}) * P_n`` over the points of :func:`pr_curve`, which is
    what ``sklearn.metrics.average_precision_score`` computes. Trapezoidal
    interpolation of the PR curve is optimistic and is deliberately not used.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake.

    Returns:
        AP in ``[0, 1]``; ``nan`` when either class is absent or the input is empty
        (sklearn returns 1.0 for all-positive input, which says nothing about a
        detector, so we refuse to give a number).

    Raises:
        ValueError: Labels other than 0/1, NaN scores, or mismatched lengths.
    """
    y, s = _pair(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return NAN
    precision, recall, _ = pr_curve(y, s)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def eer(y_true: Any, y_score: Any) -> tuple[float, float]:
    """Equal error rate: where the false positive and false negative rates meet.

    Walking the ROC curve from threshold ``+inf`` down, ``FPR - FNR`` rises from -1 to
    +1. The EER is taken where the piecewise-linear ROC crosses ``FPR = FNR``
    (``FNR = 1 - TPR``), interpolating linearly between the two ROC points that
    bracket the crossing; if a point lies exactly on it, that point is used. The
    interpolated rate is what a randomised mix of the two bracketing thresholds would
    achieve, and it makes the EER a continuous function of the scores.

    The returned threshold is interpolated linearly in score space between the two
    bracketing thresholds with the same weight (a convention: no single threshold
    realises an interpolated point). When the upper bracket is the ``+inf`` sentinel,
    the lower threshold (the highest score) is returned.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake.

    Returns:
        ``(eer, threshold)``; ``(nan, nan)`` when either class is absent or the input
        is empty.

    Raises:
        ValueError: Labels other than 0/1, NaN scores, or mismatched lengths.
    """
    fpr, tpr, thr = roc_curve(y_true, y_score)
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        return NAN, NAN
    diff = fpr - (1.0 - tpr)  # non-decreasing: -1 at (0, 0), +1 at (1, 1)
    i = int(np.argmax(diff >= 0.0))  # first point on or past the crossing; i >= 1
    if diff[i] == 0.0:
        return float(fpr[i]), float(thr[i])
    w = -diff[i - 1] / (diff[i] - diff[i - 1])  # in (0, 1): diff[i-1] < 0 < diff[i]
    rate = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    upper, lower = thr[i - 1], thr[i]
    threshold = upper + w * (lower - upper) if np.isfinite(upper) else lower
    if not np.isfinite(threshold):  # +-inf scores: interpolation would give nan
        threshold = lower
    return float(rate), float(threshold)


def fpr_at_tpr(y_true: Any, y_score: Any, tpr: float = 0.95) -> float:
    """Lowest false positive rate over thresholds whose TPR reaches ``tpr``.

    No interpolation: this is the FPR one would actually get by picking, among the
    thresholds that catch at least ``tpr`` of the fakes, the one with fewest false
    alarms (standard "FPR@95%TPR" for detection).

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores, larger = more likely fake.
        tpr: Target true positive rate in ``[0, 1]``.

    Returns:
        The FPR; ``nan`` when either class is absent or the input is empty.

    Raises:
        ValueError: ``tpr`` outside ``[0, 1]``, bad labels, NaN scores, or mismatched
            lengths.
    """
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr}")
    fpr_c, tpr_c, _ = roc_curve(y_true, y_score)
    if np.isnan(fpr_c[-1]) or np.isnan(tpr_c[-1]):
        return NAN
    # Both rates are non-decreasing along the curve, so the first point that reaches
    # the target has the lowest FPR among all that do. The last point has TPR = 1.
    return float(fpr_c[int(np.argmax(tpr_c >= tpr))])


# --------------------------------------------------------------------------- threshold


def confusion(y_true: Any, y_pred: Any) -> np.ndarray:
    """Binary confusion matrix ``[[tn, fp], [fn, tp]]``.

    Same layout as ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=[0, 1])``
    (rows are the truth, columns the prediction), always 2x2 even if a class is absent.

    Args:
        y_true: Binary labels, 1 = fake.
        y_pred: Binary predictions, 1 = fake.

    Returns:
        An int64 array of shape ``(2, 2)``.

    Raises:
        ValueError: Values other than 0/1 or mismatched lengths.
    """
    y = _labels(y_true)
    p = _labels(y_pred, "y_pred")
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y.size} != {p.size}")
    return np.bincount(2 * y + p, minlength=4).reshape(2, 2).astype(np.int64)


def threshold_metrics(y_true: Any, y_score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Classification metrics when predicting fake for ``score >= threshold``.

    Ratios with a zero denominator are 0.0, as with sklearn's ``zero_division=0``
    (e.g. precision when nothing is predicted fake, specificity with no real clip).
    F1 is ``2tp / (2tp + fp + fn)``, which equals the harmonic mean of precision and
    recall whenever that is defined.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores on the same scale as ``threshold``.
        threshold: Decision threshold (inclusive).

    Returns:
        ``accuracy``, ``precision``, ``recall`` (TPR), ``specificity`` (TNR), ``f1``,
        ``fpr`` as floats and ``tp``, ``fp``, ``tn``, ``fn`` as ints. On empty input
        the ratios are ``nan`` and the counts 0.

    Raises:
        ValueError: Bad labels, NaN scores/threshold, or mismatched lengths.
    """
    y, s = _pair(y_true, y_score)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    (tn, fp), (fn, tp) = confusion(y, (s >= threshold).astype(np.int64)).tolist()
    counts = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    if y.size == 0:
        return {**dict.fromkeys(_THRESHOLD_KEYS, NAN), **counts}
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "fpr": _div(fp, fp + tn),
        **counts,
    }


# --------------------------------------------------------------------------- calibration


def brier(y_true: Any, y_prob: Any) -> float:
    """Brier score: mean squared error of the fake probability.

    Equal to ``sklearn.metrics.brier_score_loss`` for binary labels.

    Args:
        y_true: Binary labels, 1 = fake.
        y_prob: Probabilities of fake, in ``[0, 1]``.

    Returns:
        The score in ``[0, 1]`` (lower is better); ``nan`` on empty input.

    Raises:
        ValueError: Probabilities outside ``[0, 1]``, NaN, bad labels, mismatched lengths.
    """
    y, p = _pair(y_true, y_prob, "y_prob")
    _check_prob(p)
    if y.size == 0:
        return NAN
    return float(np.mean((p - y) ** 2))


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"strategy must be one of {BIN_STRATEGIES}, got {strategy!r}")
    if strategy == "uniform" or p.size == 0:
        return np.linspace(0.0, 1.0, n_bins + 1)
    # Same expression as sklearn's calibration_curve so bins agree bit for bit. Tied
    # probabilities can make edges coincide; those bins are simply empty.
    edges = np.percentile(p, np.linspace(0.0, 1.0, n_bins + 1) * 100)
    # Only interior edges decide bins; the outer ones are widened to [0, 1] for plots.
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def reliability(
    y_true: Any, y_prob: Any, n_bins: int, strategy: str = "uniform"
) -> dict[str, np.ndarray]:
    """Per-bin statistics for a reliability diagram (and for :func:`ece`).

    Binary convention (reliability-diagram style, as ``sklearn.calibration.
    calibration_curve``): the confidence of a sample is its predicted probability of
    *fake*, and a bin's accuracy is the fraction of fakes in it. Bin ``b`` holds
    probabilities ``edges[b] < p <= edges[b + 1]``, with 0.0 in the first bin
    (sklearn's ``searchsorted`` convention, so the non-empty bins match
    ``calibration_curve``). ``"uniform"`` bins split ``[0, 1]`` evenly; ``"quantile"``
    bins hold about equally many samples (edges at percentiles of ``y_prob``).

    Args:
        y_true: Binary labels, 1 = fake.
        y_prob: Probabilities of fake, in ``[0, 1]``.
        n_bins: Number of bins (always returned, empty ones included); the pipeline
            passes ``metrics.ece_bins`` (:class:`veracity.config.MetricsConfig`).
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        ``edges`` (``n_bins + 1``), and per bin ``mean_pred`` (mean probability),
        ``frac_pos`` (observed fraction of fakes) and ``count`` (int). Empty bins
        have ``nan`` means and count 0; counts sum to ``n``.

    Raises:
        ValueError: Probabilities outside ``[0, 1]``, bad labels, NaN, bad ``n_bins``
            or ``strategy``, mismatched lengths.
    """
    y, p = _pair(y_true, y_prob, "y_prob")
    _check_prob(p)
    edges = _bin_edges(p, n_bins, strategy)
    idx = np.searchsorted(edges[1:-1], p, side="left")
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    filled = count > 0
    safe = np.where(filled, count, 1)  # avoid 0/0 warnings; masked to nan below
    return {
        "edges": edges,
        "mean_pred": np.where(filled, sum_p / safe, NAN),
        "frac_pos": np.where(filled, sum_y / safe, NAN),
        "count": count.astype(np.int64),
    }


def ece(y_true: Any, y_prob: Any, n_bins: int, strategy: str = "uniform") -> float:
    """Expected calibration error: ``sum_b (n_b / n) * |frac_pos_b - mean_pred_b|``.

    Uses the binary reliability-diagram convention of :func:`reliability` (confidence =
    probability of fake, accuracy = fraction of fakes per bin), not the top-label
    convention (confidence = ``max(p, 1 - p)``) of multi-class papers; the two give
    different numbers, so compare ECEs only within one convention.

    Args:
        y_true: Binary labels, 1 = fake.
        y_prob: Probabilities of fake, in ``[0, 1]``.
        n_bins: Number of bins (no default: the pipeline's is ``metrics.ece_bins``, and an
            ECE is only comparable with one computed on the same bins).
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        ECE in ``[0, 1]``; ``nan`` on empty input.

    Raises:
        ValueError: As :func:`reliability`.
    """
    rel = reliability(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    n = int(rel["count"].sum())
    if n == 0:
        return NAN
    filled = rel["count"] > 0
    gaps = np.abs(rel["frac_pos"][filled] - rel["mean_pred"][filled])
    return float(np.sum(rel["count"][filled] * gaps) / n)


def ece_if_calibrated(y_prob: Any, n_bins: int, draws: int = 1000, seed: int = 0,
                      strategy: str = "uniform") -> dict[str, float]:
    """The ECE a perfectly calibrated model with these probabilities would show.

    Labels are drawn as ``Bernoulli(p)`` for the same probabilities (Bröcker & Smith's
    consistency resampling, 2007) and the ECE of each draw is computed. On a few hundred
    clips the binned ECE of even a perfect model is far from 0, and larger the more clips
    sit between 0 and 1: a measured ECE inside this range is not evidence of miscalibration.

    Args:
        y_prob: Probabilities of fake, in ``[0, 1]``.
        n_bins: Number of bins (as in :func:`ece`).
        draws: Number of resampled label sets.
        seed: Seed of the resampling (fixed, so reports are reproducible).
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        ``median`` and ``p90`` of the resampled ECEs (``nan`` on empty input).
    """
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    _check_prob(p)
    if p.size == 0:
        return {"median": NAN, "p90": NAN}
    rng = np.random.default_rng(seed)
    values = [ece((rng.random(p.size) < p).astype(np.float64), p, n_bins, strategy) for _ in range(draws)]
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}


# --------------------------------------------------------------------------- intervals


def cluster_bootstrap(groups: Any, stats: Any, draws: int, confidence: float,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals that resample whole groups (e.g. people), not rows.

    Clips of one person share a face and a voice, so they are not independent draws: a
    row bootstrap would give intervals that are too narrow. Each draw picks as many
    groups as there are, with replacement, and evaluates ``stats`` on all their rows.

    Args:
        groups: one group label per row.
        stats: ``stats(rows) -> {name: value}`` for an integer index array of rows; a value
            may be ``nan`` (e.g. an AUC on a draw without reals) and is then left out of that
            figure's interval.
        draws: number of bootstrap draws.
        confidence: coverage of the interval, e.g. 0.95.
        seed: seed of the resampling (fixed, so reports are reproducible).

    Returns:
        ``{name: {"value", "lo", "hi"}}``: ``value`` on all rows, ``lo``/``hi`` the
        percentile interval (``nan`` when no draw gave a finite value).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    labels = _as_1d(groups, "groups")
    _, inv = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(int(inv.max()) + 1)] if labels.size else []
    point = {k: float(v) for k, v in stats(np.arange(labels.size)).items()}
    samples: dict[str, list[float]] = {k: [] for k in point}
    rng = np.random.default_rng(seed)
    for _ in range(draws if members else 0):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for k, v in stats(rows).items():
            if math.isfinite(v):
                samples[k].append(float(v))
    tail = 100 * (1 - confidence) / 2
    out = {}
    for k, v in point.items():
        lo, hi = np.percentile(samples[k], [tail, 100 - tail]) if samples[k] else (NAN, NAN)
        out[k] = {"value": v, "lo": float(lo), "hi": float(hi)}
    return out


def binomial_range(n: int, rate: float, confidence: float) -> tuple[float, float]:
    """Where an observed rate over ``n`` trials lands with probability ``confidence`` when
    the true rate is ``rate`` (equal-tailed binomial quantiles, as fractions of ``n``).

    With 40 real clips and a 5% target, a correctly set threshold shows an FPR anywhere
    from 0 to 0.125; with 250, from 0.024 to 0.08.
    """
    if n <= 0:
        return NAN, NAN
    k = np.arange(n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log(0) at rate 0 or 1, fixed below
        logpmf = (np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
                  + k * (math.log(rate) if rate > 0 else -np.inf) + (n - k) * (math.log1p(-rate) if rate < 1 else -np.inf))
    logpmf = np.where((k == 0) & (rate == 0), 0.0, logpmf)
    logpmf = np.where((k == n) & (rate == 1), 0.0, logpmf)
    cdf = np.cumsum(np.exp(logpmf))
    tail = (1 - confidence) / 2
    lo = int(np.searchsorted(cdf, tail - 1e-12))  # smallest k with P(X <= k) >= tail
    hi = int(np.searchsorted(cdf, 1 - tail - 1e-12))
    return lo / n, min(hi, n) / n


# --------------------------------------------------------------------------- summary


def summarize(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    is_prob: bool = True,
    n_bins: int | None = None,
) -> dict[str, float]:
    """Every headline metric of one set of scores, as one flat JSON-friendly dict.

    Args:
        y_true: Binary labels, 1 = fake.
        y_score: Scores; probabilities of fake when ``is_prob``.
        threshold: Decision threshold for the threshold metrics (``score >= threshold``).
        is_prob: Whether scores are probabilities; adds ``brier`` and ``ece``.
        n_bins: Bins for ``ece`` (uniform); required when ``is_prob`` (no default, as
            for :func:`ece`).

    Returns:
        ``auc``, ``ap``, ``eer``, ``eer_threshold``, ``fpr_at_95tpr``, ``accuracy``,
        ``precision``, ``recall``, ``f1``, ``specificity``, ``fpr``, then ``brier`` and
        ``ece`` when ``is_prob``, then ``n``, ``n_pos``, ``n_neg`` (ints). Values are
        plain Python numbers; undefined ones are ``nan`` (see the module docstring).

    Raises:
        TypeError: ``is_prob`` without ``n_bins``.
        ValueError: Bad labels, NaN scores, mismatched lengths, or (when ``is_prob``)
            scores outside ``[0, 1]``.
    """
    if is_prob and n_bins is None:
        raise TypeError("summarize() needs n_bins for the ECE when is_prob (the pipeline's: metrics.ece_bins)")
    y, s = _pair(y_true, y_score)
    if is_prob:
        _check_prob(s, "y_score")
    e, e_thr = eer(y, s)
    out: dict[str, float] = {
        "auc": roc_auc(y, s),
        "ap": average_precision(y, s),
        "eer": e,
        "eer_threshold": e_thr,
        "fpr_at_95tpr": fpr_at_tpr(y, s, 0.95),
    }
    tm = threshold_metrics(y, s, threshold)
    out.update({k: tm[k] for k in _THRESHOLD_KEYS})
    if is_prob:
        out["brier"] = brier(y, s)
        out["ece"] = ece(y, s, n_bins=n_bins)
    n_pos = int(y.sum())
    out.update({"n": int(y.size), "n_pos": n_pos, "n_neg": int(y.size) - n_pos})
    return out


# --------------------------------------------------------------------------- pooling


def pool(
    scores: Any,
    groups: Any,
    how: str,
    k: int | None = None,
    beta: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool frame/window scores into one score per group (clip or video).

    Rules:
        * ``"mean"``: the average; robust, but dilutes a short manipulated segment.
        * ``"max"``: the most suspicious frame; sensitive to one noisy frame.
        * ``"topk"``: mean of the ``k`` highest scores (``k`` clipped to the group
          size), a compromise between the two.
        * ``"softmax"``: log-mean-exp with temperature ``beta``,
          ``(1 / beta) * log(mean(exp(beta * s)))``; tends to the mean as
          ``beta -> 0`` and to the max as ``beta -> inf``. It is computed as
          ``m + log1p(mean(expm1(beta * (s - m)))) / beta`` with ``m`` the group
          max, which never overflows and stays accurate for tiny ``beta``.

    Scores may be logits or probabilities; the rules do not assume either (pooling
    logits with ``softmax`` is the usual choice before calibration).

    Args:
        scores: 1-D scores, one per frame/window.
        groups: 1-D group keys (ints or strings; must be sortable), same length.
        how: One of :data:`POOL_RULES`.
        k: Number of top scores for ``"topk"`` (>= 1); required by ``"topk"`` only.
        beta: Temperature for ``"softmax"`` (> 0); required by ``"softmax"`` only.

    ``k`` and ``beta`` have no default here: the pipeline's are those of
    :class:`veracity.config.PoolingConfig` (``calibrate.pooling``), and a rule that needs
    one and does not get it raises instead of pooling with a value nobody chose.

    Returns:
        ``(unique_groups, pooled)``: sorted unique keys and the pooled score of each.
        Empty input gives two empty arrays.

    Raises:
        TypeError: ``"topk"`` without ``k`` or ``"softmax"`` without ``beta``.
        ValueError: Unknown rule, bad ``k``/``beta``, NaN scores, or mismatched lengths.
    """
    if how not in POOL_RULES:
        raise ValueError(f"how must be one of {POOL_RULES}, got {how!r}")
    needs = {"topk": ("k", k), "softmax": ("beta", beta)}.get(how)
    if needs is not None and needs[1] is None:
        raise TypeError(f"pool(how={how!r}) needs {needs[0]} (the pipeline's: calibrate.pooling.<member>.{needs[0]})")
    if how == "topk" and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive int, got {k!r}")
    if how == "softmax" and not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    s = _scores(scores, "scores")
    g = _as_1d(groups, "groups")
    if g.shape != s.shape:
        raise ValueError(f"scores and groups differ in length: {s.size} != {g.size}")
    if s.size == 0:
        return g[:0], np.empty(0)

    uniq, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    n_groups = uniq.size
    if how == "mean":
        return uniq, np.bincount(inv, weights=s, minlength=n_groups) / counts

    # Sort by group, then by descending score within a group: group b occupies
    # positions starts[b] : starts[b] + counts[b], its maximum first.
    order = np.lexsort((-s, inv))
    s_sorted = s[order]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    gmax = s_sorted[starts]
    if how == "max":
        return uniq, gmax.copy()
    if how == "topk":
        rank = np.arange(s.size) - np.repeat(starts, counts)
        keep = rank < k
        top_sum = np.bincount(inv[order][keep], weights=s_sorted[keep], minlength=n_groups)
        return uniq, top_sum / np.minimum(counts, k)

    # softmax (log-mean-exp). A group whose max is +-inf pools to that max; shifting
    # by an infinite max would give inf - inf = nan.
    finite = np.isfinite(gmax)
    shift = np.where(finite, gmax, 0.0)
    z = np.expm1(beta * (s - shift[inv]))  # in [-1, 0] for finite groups
    mean_z = np.bincount(inv, weights=z, minlength=n_groups) / counts
    with np.errstate(invalid="ignore", divide="ignore"):  # non-finite groups are replaced
        pooled = shift + np.log1p(mean_z) / beta
    return uniq, np.where(finite, pooled, gmax)


# --------------------------------------------------------------------------- tables


def _real_only(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of a real-only group: everything that needs no positive."""
    n = int(scores.size)
    fpr = float(np.mean(scores >= threshold)) if n else NAN
    return {"fpr": fpr, "specificity": 1.0 - fpr, "n": n, "n_pos": 0, "n_neg": n}


def table(
    df: pd.DataFrame,
    score_col: str = "score",
    label_col: str = "label",
    by: str | Sequence[str] = ("split", "method"),
    threshold: float = 0.5,
    is_prob: bool = True,
    *,
    n_bins: int | None = None,
    method_col: str = "method",
    real_method: str = "real",
    all_name: str = "all",
) -> pd.DataFrame:
    """:func:`summarize` per group, with per-method rows that are actually measurable.

    Per-method semantics (when ``by`` contains ``method_col``): a fake method's rows
    alone hold only positives, so their AUC would be undefined. Instead, each fake
    method ``m`` is scored against **all real clips that share its other keys**
    (e.g. the same split): the group for ``(split=s, method=m)`` is
    ``rows(split=s, method=m) + rows(split=s, method=real_method)``. Its ``n_pos``
    counts the method's clips and ``n_neg`` the real clips; every metric (AUC, AP,
    EER, accuracy, ...) is computed on that union, so a method's AUC answers "how well
    are *these* fakes told apart from the real clips of this split".

    Besides, for every combination of the other keys the table has:

    * a ``method == all_name`` row: :func:`summarize` over all rows of that group;
    * a ``method == real_method`` row that reports only label-free metrics: ``n``
      (``n_neg = n``, ``n_pos = 0``), ``mean_score``, and ``fpr`` (the share of real
      clips predicted fake at ``threshold``) with ``specificity = 1 - fpr``; the
      other columns are NaN.

    ``mean_score`` is always the mean score of the group's own rows (a method's rows
    only, not the real rows borrowed for its AUC). Rows are ordered by the other keys,
    then ``all``, ``real``, and the fake methods alphabetically. Without
    ``method_col`` in ``by``, this is just :func:`summarize` per group (one overall
    row if ``by`` is empty).

    Args:
        df: One row per scored item, with score, label and grouping columns.
        score_col: Column of scores (probabilities of fake when ``is_prob``).
        label_col: Column of binary labels, 1 = fake.
        by: Grouping columns, e.g. ``("split", "method")`` or ``("split",)``.
        threshold: Decision threshold for the threshold metrics.
        is_prob: Whether scores are probabilities (adds ``brier`` and ``ece``).
        n_bins: Bins for ``ece``; required when ``is_prob`` (see :func:`summarize`).
        method_col: Name of the manipulation-method column.
        real_method: Value of ``method_col`` that marks real clips.
        all_name: Value of ``method_col`` used for the per-group total row.

    Returns:
        A DataFrame with the ``by`` columns, then ``n``, ``n_pos``, ``n_neg``,
        ``mean_score`` and the metric columns of :func:`summarize`.

    Raises:
        TypeError: ``is_prob`` without ``n_bins``.
        ValueError: Missing columns, real rows labelled fake, or any error of
            :func:`summarize` (NaN scores, probabilities outside ``[0, 1]``).
    """
    import pandas as pd  # only here: the metrics themselves stay numpy-only

    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in (score_col, label_col, *keys) if c not in df.columns]
    if missing:
        raise ValueError(f"table(): missing column(s) {missing}; have {list(df.columns)}")
    if is_prob and n_bins is None:  # before any group: an empty table must not hide it
        raise TypeError("table() needs n_bins for the ECE when is_prob (the pipeline's: metrics.ece_bins)")
    metric_cols = [*_RANK_KEYS, *_THRESHOLD_KEYS, *(_PROB_KEYS if is_prob else ())]
    columns = [*keys, *_COUNT_KEYS, "mean_score", *metric_cols]

    def summary(part: pd.DataFrame, own: pd.DataFrame) -> dict[str, float]:
        stats = summarize(
            part[label_col].to_numpy(), part[score_col].to_numpy(), threshold, is_prob, n_bins
        )
        own_scores = _scores(own[score_col].to_numpy(), score_col)
        stats["mean_score"] = float(own_scores.mean()) if own_scores.size else NAN
        return stats

    def groups(frame: pd.DataFrame, cols: list[str]):
        if not cols:
            yield (), frame
            return
        # dropna=False: a clip with a missing split/method must show up, not vanish.
        for key, part in frame.groupby(cols, sort=True, dropna=False):
            yield (key if isinstance(key, tuple) else (key,)), part

    rows: list[dict[str, Any]] = []
    if method_col not in keys:
        for key, part in groups(df, keys):
            rows.append({**dict(zip(keys, key, strict=True)), **summary(part, part)})
        return pd.DataFrame(rows, columns=columns)

    others = [c for c in keys if c != method_col]
    for key, part in groups(df, others):
        base = dict(zip(others, key, strict=True))
        is_real = (part[method_col] == real_method).to_numpy()
        real = part[is_real]
        if (real[label_col] != 0).any():
            raise ValueError(
                f"rows with {method_col}={real_method!r} must have {label_col}=0 "
                f"(group {base or 'all rows'})"
            )
        rows.append({**base, method_col: all_name, **summary(part, part)})
        if len(real):
            real_scores = _scores(real[score_col].to_numpy(), score_col)
            stats = _real_only(real_scores, threshold)
            stats["mean_score"] = float(real_scores.mean())
            rows.append({**base, method_col: real_method, **stats})
        fakes = part[~is_real]
        for method, own in groups(fakes, [method_col]):
            # No real clip in this group: the method is scored alone (AUC nan, as
            # it should be) and concat with an empty frame would warn about dtypes.
            scored = pd.concat([real, own]) if len(real) else own
            rows.append({**base, method_col: method[0], **summary(scored, own)})
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class QualityCheck:
    """One quality bar: a measured ``value`` against a ``bound`` (``kind`` ``>=`` or ``<=``).

    A value that is not finite (not measured, or NaN) fails: a bar nobody could measure
    is not met.
    """

    name: str
    value: float
    bound: float
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in (">=", "<="):
            raise ValueError(f"QualityCheck kind must be '>=' or '<=', got {self.kind!r}")

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return bool(self.value >= self.bound) if self.kind == ">=" else bool(self.value <= self.bound)
