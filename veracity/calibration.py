"""From window scores to calibrated video probabilities, stored as plain JSON.

Each member's window logits are pooled to one video logit (:class:`Pooling`, rules of
:func:`veracity.metrics.pool`) and mapped to a probability by a calibrator fitted on the
validation split: temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017), Platt scaling (Platt 1999: a slope and a bias) or isotonic
regression (Zadrozny & Elkan, KDD 2002). Every one is fitted to Platt's smoothed targets,
(N+ + 1) / (N+ + 2) for fakes and 1 / (N- + 2) for reals, not to 0 and 1: members often
separate the ~100 validation clips perfectly, and then a maximum-likelihood fit on hard
labels sends the temperature to its bound (or isotonic to a 0/1 step). The calibrated
probabilities of every clip beyond the validation extremes then round to the same 1e-4
or 1 - 1e-4: a test clip that a member ranks correctly but less confidently than any
validation clip (a fake from an unseen identity) becomes a tie, and fusion cannot
recover what calibration erased. All are a handful of numbers
(a temperature; slope and bias; isotonic breakpoints), written as JSON and never pickled,
so a bundle handed to someone else carries no executable state.

``method="auto"`` picks, per member, the calibrator with the lowest cross-validated
log-loss on validation: isotonic is more flexible but overfits ~100 clips more easily,
and its flat ends give 0 or 1 to clips that are merely unusual (and ties between them,
which no later fusion can undo). Temperature scaling cannot move the decision point
away from logit 0; Platt scaling can, for members (lip-sync) whose logits are centred
elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from veracity import metrics
from veracity.config import CalibrateConfig, PoolingConfig

# Calibrated probabilities are kept this far from 0 and 1: an isotonic step can reach
# exactly 0 or 1 on validation, and a downstream logit (stacking) must stay finite.
PROB_EPS = 1e-4

Method = Literal["identity", "temperature", "platt", "isotonic"]


def logit(p: np.ndarray | float) -> np.ndarray:
    """Log-odds of probabilities clipped to ``[PROB_EPS, 1 - PROB_EPS]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically safe logistic function."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class Pooling:
    """A window-to-video pooling rule (see :func:`veracity.metrics.pool`).

    No field has a default: the defaults are :class:`veracity.config.PoolingConfig`'s
    (build one with :meth:`from_config`), and a bundle states all three.
    """

    how: str
    k: int
    beta: float

    def __post_init__(self) -> None:
        if self.how not in metrics.POOL_RULES:
            raise ValueError(f"pooling must be one of {metrics.POOL_RULES}, got {self.how!r}")

    def apply(self, scores: Any, groups: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pool scores per group: ``(unique_groups, pooled)``."""
        return metrics.pool(scores, groups, how=self.how, k=self.k, beta=self.beta)

    def one(self, scores: Any) -> float:
        """Pool the scores of a single video."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError("cannot pool an empty set of window scores")
        return float(self.apply(s, np.zeros(s.size, np.int64))[1][0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: PoolingConfig) -> Pooling:
        """The rule a ``calibrate.pooling`` entry describes (``PoolingConfig()``: the default)."""
        return cls(how=cfg.how, k=cfg.k, beta=cfg.beta)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pooling:
        """Inverse of :meth:`to_dict`. Every bundle written so far states ``how``, ``k`` and
        ``beta``; a spec that leaves ``k`` or ``beta`` out gets PoolingConfig's defaults."""
        return cls.from_config(PoolingConfig(**data))


@dataclass(frozen=True)
class Calibrator:
    """Maps a pooled logit to a calibrated probability.

    Attributes:
        method: ``identity`` (sigmoid), ``temperature`` (sigmoid(z / T)), ``platt``
            (sigmoid(a z + b)) or ``isotonic`` (piecewise-linear interpolation between
            fitted breakpoints, flat outside).
        temperature: T for ``temperature``.
        slope, bias: a and b for ``platt``.
        x, y: isotonic breakpoints (logits, probabilities), increasing in both.
    """

    method: Method = "identity"
    temperature: float = 1.0
    slope: float = 1.0
    bias: float = 0.0
    x: tuple[float, ...] = field(default_factory=tuple)
    y: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in ("identity", "temperature", "platt", "isotonic"):
            raise ValueError(f"unknown calibration method {self.method!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite positive number, got {self.temperature}")
        if not (self.slope > 0 and math.isfinite(self.slope) and math.isfinite(self.bias)):
            raise ValueError(f"Platt slope must be finite and positive and bias finite, got {self.slope}, {self.bias}")
        if self.method == "isotonic":
            if len(self.x) == 0 or len(self.x) != len(self.y):
                raise ValueError("isotonic calibrator needs equally many x and y breakpoints (at least one)")
            if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0):
                raise ValueError("isotonic breakpoints must be non-decreasing")

    def prob(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities of fake for pooled logits."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            p = np.interp(z, np.asarray(self.x), np.asarray(self.y))
        else:
            p = sigmoid(self.log_odds(z))
        return np.clip(p, PROB_EPS, 1 - PROB_EPS)

    def log_odds(self, z: Any) -> Any:
        """The calibrated log-odds of a parametric method (not isotonic), unclamped.

        Plain arithmetic, so it maps NumPy arrays and torch tensors alike: the differentiable
        paths (:func:`veracity.decision.calibrate_torch`, the attacks) use it as it is.
        """
        if self.method == "temperature":
            return z / self.temperature
        if self.method == "platt":
            return self.slope * z + self.bias
        if self.method == "identity":
            return z
        raise ValueError("isotonic calibration has no closed-form log-odds")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": float(self.temperature),
                "platt": {"slope": float(self.slope), "bias": float(self.bias)},
                "isotonic": {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        iso = data.get("isotonic") or {}
        platt = data.get("platt") or {}
        return cls(method=data["method"], temperature=float(data.get("temperature", 1.0)),
                   slope=float(platt.get("slope", 1.0)), bias=float(platt.get("bias", 0.0)),
                   x=tuple(float(v) for v in iso.get("x", ())), y=tuple(float(v) for v in iso.get("y", ())))


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    # Binary cross-entropy of sigmoid(z), written with logaddexp so large |z| stays finite.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def platt_targets(y_true: Any) -> np.ndarray:
    """Platt's (1999) smoothed targets: (N+ + 1) / (N+ + 2) for fakes, 1 / (N- + 2) for reals.

    The Bayesian estimate of a class frequency after N observations with a uniform prior:
    no calibrator fitted to them says 0 or 1, and on perfectly separated scores the
    fitted slope (or 1 / temperature) stays finite.
    """
    y = np.asarray(y_true, dtype=np.float64)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    return np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def fit_temperature(logits: Any, y_true: Any) -> Calibrator:
    """Temperature minimising cross-entropy against :func:`platt_targets` (log T in [-4, 4])."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    _check_fit_input(z, y)
    t = platt_targets(y)
    res = minimize_scalar(lambda lt: _nll(z / math.exp(lt), t), bounds=(-4.0, 4.0), method="bounded",
                          options={"xatol": 1e-6})
    return Calibrator("temperature", temperature=float(math.exp(res.x)))


def fit_platt(logits: Any, y_true: Any) -> Calibrator:
    """Slope and bias minimising cross-entropy against :func:`platt_targets`."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    _check_fit_input(z, y)
    t = platt_targets(y)

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * z + ab[1]
        g = sigmoid(s) - t
        return float(np.mean(np.logaddexp(0.0, s) - t * s)), np.array([np.mean(g * z), np.mean(g)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 1e3), (-1e3, 1e3)])
    return Calibrator("platt", slope=float(res.x[0]), bias=float(res.x[1]))


def fit_isotonic(logits: Any, y_true: Any) -> Calibrator:
    """Isotonic regression of :func:`platt_targets` on the logit, kept as its breakpoints."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    _check_fit_input(z, y)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, platt_targets(y))
    return Calibrator("isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))


def _check_fit_input(z: np.ndarray, y: np.ndarray) -> None:
    if z.shape != y.shape or z.ndim != 1:
        raise ValueError(f"logits and labels must be 1-D of equal length, got {z.shape} and {y.shape}")
    if z.size < 2 or len(np.unique(y)) < 2:
        raise ValueError(f"calibration needs both classes; got {z.size} samples with labels {sorted(set(y.tolist()))}")
    if not np.all(np.isfinite(z)):
        raise ValueError("calibration logits contain NaN or inf")


# Below this many validation clips, ``auto`` does not consider isotonic regression (the
# default of ``calibrate.isotonic_min_clips``, so the API and the stage agree).
ISOTONIC_MIN_CLIPS: int = CalibrateConfig.model_fields["isotonic_min_clips"].default

FITTERS = {"temperature": fit_temperature, "platt": fit_platt, "isotonic": fit_isotonic}


def cross_validated_nll(logits: Any, y_true: Any, method: str, folds: int = 5, seed: int = 0) -> float:
    """Log-loss of ``method`` fitted on k-1 folds and scored on the held-out fold.

    Log-loss, not Brier: a calibrator that says 0.9999 and is wrong on an unseen clip must
    lose, and Brier caps that mistake at 1. Folds are stratified by label, so every
    training part has both classes.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(y.size, np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fold_of[rng.permutation(idx)] = np.arange(idx.size) % folds
    pred = np.empty(y.size)
    for f in range(folds):
        test = fold_of == f
        if not test.any():
            continue
        pred[test] = FITTERS[method](z[~test], y[~test]).prob(z[test])
    return float(-np.mean(y * np.log(pred) + (1 - y) * np.log1p(-pred)))


def fit_calibrator(logits: Any, y_true: Any, method: str = "auto", folds: int = 5,
                   seed: int = 0, isotonic_min_clips: int = ISOTONIC_MIN_CLIPS) -> tuple[Calibrator, dict[str, float]]:
    """Fit the calibrator ``method`` (or choose one by cross-validated log-loss for ``auto``).

    ``auto`` considers isotonic regression only from ``isotonic_min_clips`` validation
    clips on: below that its steps are fitted to a handful of clips per bin, and
    cross-validation on the same identities cannot see how flat ends and ties fare on
    new ones (Niculescu-Mizil & Caruana, ICML 2005: Platt scaling is preferable to
    isotonic below about a thousand calibration examples).

    Returns:
        The calibrator and the cross-validated log-loss of each candidate (empty unless auto).
    """
    if method != "auto":
        return FITTERS[method](logits, y_true), {}
    y = np.asarray(y_true)
    # Too few of one class for k folds: stratified folds would leave a class out.
    k = int(min(folds, np.sum(y == 0), np.sum(y == 1)))
    if k < 2:
        return fit_temperature(logits, y_true), {}
    candidates = [m for m in FITTERS if m != "isotonic" or y.size >= isotonic_min_clips]
    cv = {m: cross_validated_nll(logits, y_true, m, k, seed) for m in candidates}
    best = min(cv, key=lambda m: (cv[m], m != "temperature"))  # ties go to the simpler model
    return FITTERS[best](logits, y_true), cv


def calibration_report(y_true: Any, before: Any, after: Any, n_bins: int) -> dict[str, float]:
    """ECE and Brier of uncalibrated (``before``) and calibrated (``after``) probabilities."""
    return {"ece_before": metrics.ece(y_true, before, n_bins), "ece_after": metrics.ece(y_true, after, n_bins),
            "brier_before": metrics.brier(y_true, before), "brier_after": metrics.brier(y_true, after),
            "n": int(np.asarray(y_true).size)}


def reliability_rows(name: str, split: str, y_true: Any, prob: Any, n_bins: int, stage: str) -> list[dict[str, Any]]:
    """Rows of a reliability-diagram table (one per non-empty bin)."""
    rel = metrics.reliability(y_true, prob, n_bins)
    rows = []
    for mp, fp, n in zip(rel["mean_pred"], rel["frac_pos"], rel["count"], strict=True):
        if n > 0:
            rows.append({"member": name, "split": split, "stage": stage, "mean_pred": float(mp),
                         "frac_pos": float(fp), "count": int(n)})
    return rows


def target_mask(methods: Sequence[str], target_methods: Sequence[str] | None) -> np.ndarray:
    """Which clips a member's probability speaks about: reals plus its target methods."""
    m = np.asarray(methods, dtype=object)
    if target_methods is None:
        return np.ones(m.size, bool)
    return (m == "real") | np.isin(m, list(target_methods))
