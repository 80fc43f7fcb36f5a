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

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from veracity import metrics
from veracity.config import CalibrateConfig

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
    """A window-to-video pooling rule (see :func:`veracity.metrics.pool`)."""

    how: str = "mean"
    k: int = 4
    beta: float = 5.0

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
    def from_dict(cls, data: dict[str, Any]) -> Pooling:
        return cls(how=str(data["how"]), k=int(data.get("k", 4)), beta=float(data.get("beta", 5.0)))


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
        paths (:func:`veracity.ensemble.calibrate_torch`, the attacks) use it as it is.
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


def calibration_report(y_true: Any, before: Any, after: Any, n_bins: int = 10) -> dict[str, float]:
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


# ----------------------------------------------------------------------------- the stage

SCORE_COLUMNS = ["video_id", "split", "method", "label", "video_label", "audio_label"]


def read_window_logits(models: Path | str, name: str) -> pd.DataFrame:
    """One member's window logits on val and test (``predictions_window.csv``)."""
    path = Path(models) / name / "predictions_window.csv"
    if not path.is_file():
        raise FileNotFoundError(f"member {name!r} has no window predictions at {path}; train it first")
    return pd.read_csv(path)


def calibrate(models: Path | str, members: Mapping[str, Any], cfg: Any, out: Path | str,
              reports: Path | str) -> dict[str, Any]:
    """The ``calibrate`` stage: everything fitted on validation scores.

    Per member: pool windows to videos with the configured rule, fit the calibrator on
    validation clips of the member's own target (reals + its target methods), report ECE
    and Brier before and after on validation and test. Then fit the fusion rule on the
    members' calibrated validation probabilities and the REAL/UNCERTAIN/FAKE thresholds on
    the fused validation probabilities.

    Args:
        models: directory with one folder per trained member.
        members: ``train.members`` (target and target methods of each member).
        cfg: the ``calibrate`` section (:class:`veracity.config.CalibrateConfig`).
        out: directory for ``calibration.json`` (read by ``attack`` and ``ensemble``).
        reports: directory for ``metrics.json``, ``reliability.csv`` and ``scores.csv``.

    Returns:
        The metrics written to ``reports/metrics.json``.
    """
    from veracity.ensemble import FUSION_RULES, fit_fusion, fit_thresholds

    out, reports = Path(out), Path(reports)
    names = list(cfg.fusion.members) or sorted(members)
    unknown = [n for n in names if n not in members]
    if unknown:
        raise ValueError(f"calibrate.fusion.members names untrained members {unknown}; train.members has {sorted(members)}")
    spec: dict[str, Any] = {"members": {}}
    report: dict[str, Any] = {"members": {}}
    rel_rows: list[dict[str, Any]] = []
    table: pd.DataFrame | None = None
    for name in names:
        mcfg = members[name]
        pcfg = cfg.pooling.get(name)
        pooling = Pooling(**pcfg.model_dump()) if pcfg is not None else Pooling()
        wins = read_window_logits(models, name)
        v = member_video_logits_from(wins, pooling)
        target = mcfg.target
        tm = tuple(mcfg.target_methods) if mcfg.target_methods is not None else None
        keep = target_mask(v["method"], tm) & v[target].notna().to_numpy()
        val, test = (v["split"] == "val").to_numpy() & keep, (v["split"] == "test").to_numpy() & keep
        y = v[target].to_numpy(np.float64)
        cal, cv = fit_calibrator(v["z"].to_numpy()[val], y[val], cfg.method, cfg.folds,
                                 isotonic_min_clips=cfg.isotonic_min_clips)
        p = cal.prob(v["z"].to_numpy())
        raw = sigmoid(v["z"].to_numpy())
        # Which pooling rule would have ranked validation best (for choosing it in params).
        pool_auc = {}
        for how in metrics.POOL_RULES:
            alt = Pooling(how, pooling.k, pooling.beta)
            a = member_video_logits_from(wins, alt)
            akeep = target_mask(a["method"], tm) & a[target].notna().to_numpy() & (a["split"] == "val").to_numpy()
            pool_auc[how] = metrics.roc_auc(a[target][akeep], a["z"][akeep])
        report["members"][name] = {
            "target": target, "pooling": pooling.to_dict(), "method": cal.method,
            "temperature": cal.temperature if cal.method == "temperature" else None, "cv_log_loss": cv,
            "val_auc_by_pooling": pool_auc,
            "val": {**calibration_report(y[val], raw[val], p[val], cfg.n_bins), "auc": metrics.roc_auc(y[val], p[val])},
            "test": {**calibration_report(y[test], raw[test], p[test], cfg.n_bins),
                     "auc": metrics.roc_auc(y[test], v["z"].to_numpy()[test])},
        }
        for stage, probs in (("before", raw), ("after", p)):
            rel_rows += reliability_rows(name, "test", y[test], probs[test], cfg.n_bins, stage)
        spec["members"][name] = {"pooling": pooling.to_dict(), "calibrator": cal.to_dict(), "target": target,
                                 "target_methods": list(tm) if tm is not None else None}
        cols = v[SCORE_COLUMNS].copy()
        cols[f"p_{name}"] = p
        table = cols if table is None else table.merge(cols[["video_id", f"p_{name}"]], on="video_id", how="inner")
    assert table is not None
    table = table.sort_values("video_id").reset_index(drop=True)
    pcols = [f"p_{n}" for n in names]
    is_val, is_test = (table["split"] == "val").to_numpy(), (table["split"] == "test").to_numpy()
    y = table["label"].to_numpy(np.float64)
    fusion = fit_fusion(table.loc[is_val, pcols].to_numpy(), y[is_val], names, cfg.fusion.rule,
                        cfg.fusion.weights, cfg.fusion.stacking_l2, cfg.method, cfg.folds)
    table["prob"] = fusion.prob(table[pcols].to_numpy())
    th = fit_thresholds(table.loc[is_val, "prob"].to_numpy(), y[is_val], cfg.thresholds.target_fpr,
                        cfg.thresholds.target_uncertain)
    table["verdict"] = th.verdicts(table["prob"].to_numpy())
    rules = {}
    for rule in FUSION_RULES:
        f = fusion if rule == fusion.rule else fit_fusion(
            table.loc[is_val, pcols].to_numpy(), y[is_val], names, rule, cfg.fusion.weights,
            cfg.fusion.stacking_l2, cfg.method, cfg.folds)
        pr = f.prob(table[pcols].to_numpy())
        rules[rule] = {"val_auc": metrics.roc_auc(y[is_val], pr[is_val]), "test_auc": metrics.roc_auc(y[is_test], pr[is_test]),
                       "test_ece": metrics.ece(y[is_test], pr[is_test], cfg.n_bins)}
    fused_p = table["prob"].to_numpy()
    report["ensemble"] = {
        "rule": fusion.rule, "rules": rules,
        "val": {"auc": metrics.roc_auc(y[is_val], fused_p[is_val]), "ece": metrics.ece(y[is_val], fused_p[is_val], cfg.n_bins),
                "brier": metrics.brier(y[is_val], fused_p[is_val]), **th.rates(fused_p[is_val], y[is_val])},
        "test": {"auc": metrics.roc_auc(y[is_test], fused_p[is_test]),
                 "ece": metrics.ece(y[is_test], fused_p[is_test], cfg.n_bins),
                 **{f"ece_if_calibrated_{k}": v for k, v in metrics.ece_if_calibrated(fused_p[is_test], cfg.n_bins).items()},
                 "brier": metrics.brier(y[is_test], fused_p[is_test]), **th.rates(fused_p[is_test], y[is_test])},
        "thresholds": th.to_dict(),
    }
    rel_rows += reliability_rows("ensemble", "test", y[is_test], fused_p[is_test], cfg.n_bins, "after")
    spec.update(fusion=fusion.to_dict(), thresholds=th.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(spec, indent=1) + "\n")
    (reports / "metrics.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    pd.DataFrame(rel_rows).to_csv(reports / "reliability.csv", index=False, float_format="%.6g")
    table.to_csv(reports / "scores.csv", index=False, float_format="%.6g")
    return report


def member_video_logits_from(windows: pd.DataFrame, pooling: Pooling) -> pd.DataFrame:
    """:func:`member_video_logits` for an already loaded window table."""
    ids, z = pooling.apply(windows["logit"].to_numpy(np.float64), windows["video_id"].to_numpy())
    info = windows[SCORE_COLUMNS].drop_duplicates("video_id").set_index("video_id").loc[ids].reset_index()
    info["z"] = z
    return info
