"""Decisions: how calibrated member probabilities become one call (maths only, DESIGN §3).

Owns the fusion rules, the REAL / UNCERTAIN / FAKE thresholds fitted on validation, model
and modality agreement, and the smooth surrogates of calibration and fusion that gradient
attacks differentiate through. It reads and writes no files; :mod:`veracity.bundle` stores
these objects and :mod:`veracity.analyzer` applies them.

Member scores flow one way: window logits -> pooled video logit (per member) ->
calibrated probability (per member) -> fused probability -> REAL / UNCERTAIN / FAKE.

Disagreement (:class:`Disagreement`): when the members split (one calls fake, another
real) in a pattern no validation clip showed, the call is ``UNCERTAIN``, whatever the
fusion says. The specialists are meant to disagree in known ways (the face member cannot
see a voice fake), so "members differ" alone is no signal; a pattern of member log-odds
farther from every validation pattern than validation patterns are from each other is.

Fallbacks (:class:`Fallback`): a member that times out or fails at serving time leaves
the call to the others. The full fusion was fitted on every member's column, so it cannot
simply drop one; ``calibrate`` fits a fusion and thresholds of their own for every smaller
set of members that can still judge (:func:`fallback_subsets`), on the same validation
clips with the same targets, and the bundle reports what each would score.

Fusion rules:
    * ``weighted_mean``: sum_i w_i p_i / sum_i w_i.
    * ``stacking``: logistic regression on the members' calibrated log-odds, fitted on
      validation (Wolpert, "Stacked generalization", 1992).
    * ``noisy_or``: 1 - prod_i (1 - p_i): fake if any member's manipulation is present;
      natural for specialists that each watch for one kind of fake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from veracity.calibration import Calibrator, fit_calibrator, logit, sigmoid

FUSION_RULES = ("weighted_mean", "stacking", "noisy_or")
VERDICTS = ("REAL", "UNCERTAIN", "FAKE", "ABSTAIN")

# ----------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class Fusion:
    """One fusion rule over members' calibrated probabilities (columns in ``members`` order).

    ``calibrator`` maps the fused log-odds to the final probability; it is the identity
    for stacking (itself fitted by log-loss) and fitted on validation for the other rules.
    """

    rule: str
    members: tuple[str, ...]
    weights: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    calibrator: Calibrator = field(default_factory=Calibrator)

    def __post_init__(self) -> None:
        if self.rule not in FUSION_RULES:
            raise ValueError(f"fusion rule must be one of {FUSION_RULES}, got {self.rule!r}")
        if not self.members:
            raise ValueError("fusion needs at least one member")
        if self.rule == "weighted_mean" and len(self.weights) != len(self.members):
            raise ValueError("weighted_mean needs one weight per member")
        if self.rule == "stacking" and len(self.coef) != len(self.members):
            raise ValueError("stacking needs one coefficient per member")

    def raw(self, probs: np.ndarray) -> np.ndarray:
        """The rule's fused probability before the final calibrator, for (n, m) inputs."""
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        if p.shape[1] != len(self.members):
            raise ValueError(f"expected {len(self.members)} member columns, got {p.shape[1]}")
        if self.rule == "weighted_mean":
            w = np.asarray(self.weights)
            return p @ w / w.sum()
        if self.rule == "noisy_or":
            return 1.0 - np.prod(1.0 - p, axis=1)
        return sigmoid(logit(p) @ np.asarray(self.coef) + self.intercept)

    def prob(self, probs: np.ndarray) -> np.ndarray:
        """Final fused probabilities of fake for (n, m) member probabilities."""
        return self.calibrator.prob(logit(self.raw(probs)))

    def prob_torch(self, probs: torch.Tensor) -> torch.Tensor:
        """Differentiable :meth:`prob` for (n, m) tensors (gradient attacks on the ensemble)."""
        p = probs.clamp(1e-4, 1 - 1e-4)
        if self.rule == "weighted_mean":
            w = torch.tensor(self.weights, dtype=p.dtype, device=p.device)
            raw = p @ w / w.sum()
        elif self.rule == "noisy_or":
            raw = 1.0 - torch.prod(1.0 - p, dim=1)
        else:
            c = torch.tensor(self.coef, dtype=p.dtype, device=p.device)
            raw = torch.sigmoid(torch.logit(p) @ c + self.intercept)
        return calibrate_torch(self.calibrator, torch.logit(raw.clamp(1e-4, 1 - 1e-4)))

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "members": list(self.members), "weights": list(self.weights),
                "coef": list(self.coef), "intercept": float(self.intercept), "calibrator": self.calibrator.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fusion:
        return cls(rule=d["rule"], members=tuple(d["members"]), weights=tuple(map(float, d.get("weights", ()))),
                   coef=tuple(map(float, d.get("coef", ()))), intercept=float(d.get("intercept", 0.0)),
                   calibrator=Calibrator.from_dict(d.get("calibrator", {"method": "identity"})))


def calibrate_torch(cal: Calibrator, z: torch.Tensor) -> torch.Tensor:
    """Differentiable :meth:`Calibrator.prob` (isotonic: the same piecewise-linear map)."""
    if cal.method != "isotonic":
        return torch.sigmoid(cal.log_odds(z)).clamp(1e-4, 1 - 1e-4)
    xs = torch.tensor(cal.x, dtype=z.dtype, device=z.device)
    ys = torch.tensor(cal.y, dtype=z.dtype, device=z.device)
    if xs.numel() == 1:
        return ys.expand_as(z).clamp(1e-4, 1 - 1e-4)
    zc = z.clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, zc.detach().contiguous()).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = (zc - x0) / (x1 - x0).clamp_min(1e-12)
    return (y0 + t * (y1 - y0)).clamp(1e-4, 1 - 1e-4)


def fit_stacking(probs: np.ndarray, y: np.ndarray, l2: float) -> tuple[tuple[float, ...], float]:
    """L2-penalised logistic regression on members' log-odds (intercept not penalised)."""
    x = logit(np.asarray(probs, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    n, m = x.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:m] + theta[m]
        nll = np.sum(np.logaddexp(0.0, z) - y * z)
        g = sigmoid(z) - y
        grad = np.r_[x.T @ g + l2 * theta[:m], g.sum()]
        return float(nll + 0.5 * l2 * theta[:m] @ theta[:m]), grad

    res = minimize(loss, np.zeros(m + 1), jac=True, method="L-BFGS-B")
    return tuple(float(v) for v in res.x[:m]), float(res.x[m])


def fit_fusion(probs: np.ndarray, y: np.ndarray, members: Sequence[str], rule: str,
               weights: Mapping[str, float] | None, l2: float, method: str, folds: int,
               isotonic_min_clips: int) -> Fusion:
    """Fit a fusion rule (and its final calibrator, chosen as the members' are) on validation probabilities."""
    members = tuple(members)
    if rule == "stacking":
        coef, b = fit_stacking(probs, y, l2)
        return Fusion("stacking", members, coef=coef, intercept=b)
    w = tuple(float((weights or {}).get(m, 1.0)) for m in members)
    base = Fusion(rule, members, weights=w if rule == "weighted_mean" else ())
    cal, _ = fit_calibrator(logit(base.raw(probs)), y, method, folds, isotonic_min_clips=isotonic_min_clips)
    return Fusion(rule, members, weights=base.weights, calibrator=cal)


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Thresholds:
    """REAL below ``real_below``, FAKE at or above ``fake_at``, UNCERTAIN in between."""

    real_below: float
    fake_at: float
    target_fpr: float
    target_uncertain: float
    val: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.real_below <= self.fake_at <= 1.0):
            raise ValueError(f"thresholds must satisfy 0 <= real_below <= fake_at <= 1, "
                             f"got {self.real_below} and {self.fake_at}")

    def verdict(self, p: float) -> str:
        """REAL, UNCERTAIN or FAKE for one fused probability."""
        return "FAKE" if p >= self.fake_at else ("REAL" if p < self.real_below else "UNCERTAIN")

    def verdicts(self, p: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`verdict`."""
        p = np.asarray(p, dtype=np.float64)
        return np.where(p >= self.fake_at, "FAKE", np.where(p < self.real_below, "REAL", "UNCERTAIN"))

    def rates(self, p: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """FPR (reals called FAKE), TPR (fakes called FAKE), uncertain rate, and errors."""
        v = self.verdicts(p)
        y = np.asarray(y)
        real, fake = y == 0, y == 1
        return {"fpr": float(np.mean(v[real] == "FAKE")) if real.any() else math.nan,
                "tpr": float(np.mean(v[fake] == "FAKE")) if fake.any() else math.nan,
                "fnr_real": float(np.mean(v[fake] == "REAL")) if fake.any() else math.nan,
                "uncertain_rate": float(np.mean(v == "UNCERTAIN")) if v.size else math.nan,
                "n": int(v.size), "n_real": int(real.sum()), "n_fake": int(fake.sum())}

    def to_dict(self) -> dict[str, Any]:
        return {"real_below": self.real_below, "fake_at": self.fake_at, "target_fpr": self.target_fpr,
                "target_uncertain": self.target_uncertain, **{f"val_{k}": v for k, v in self.val.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        val = {k[4:]: v for k, v in d.items() if k.startswith("val_")}
        return cls(real_below=float(d["real_below"]), fake_at=float(d["fake_at"]),
                   target_fpr=float(d["target_fpr"]), target_uncertain=float(d["target_uncertain"]),
                   val=val)


def _cut(sorted_desc: np.ndarray, k: int, ceiling: float) -> float:
    """A threshold with exactly the ``k`` highest values at or above it (midpoint cut)."""
    if k <= 0:
        hi = float(sorted_desc[0]) if sorted_desc.size else 0.0
        # Above every value, but not above anything that must stay above it.
        return min(ceiling, float(np.nextafter(hi, np.inf))) if sorted_desc.size else ceiling
    if k >= sorted_desc.size:
        return float(sorted_desc[-1])
    return float((sorted_desc[k - 1] + sorted_desc[k]) / 2)


def _fpr_cut(reals_asc: np.ndarray, target_fpr: float) -> float:
    """The FAKE threshold whose expected false-positive rate on new real clips is ``target_fpr``.

    For ``n`` reals from a continuous distribution F, ``E[F(X_(i))] = i / (n + 1)`` (the
    i-th smallest), so the quantile at position ``(1 - target) * (n + 1)``, interpolated
    between neighbours (Hyndman & Fan's type 6), leaves an expected ``target`` of new reals
    above it. The midpoint cut this replaced left ``(k + 0.5) / (n + 1)``: 0.061 for a 0.05
    target on 40 reals, a bias the benchmark showed.
    """
    n = reals_asc.size
    h = (1.0 - target_fpr) * (n + 1)
    i = int(math.floor(h + 1e-9))  # reals with index > i (1-based) lie above the cut
    if i >= n:
        return min(1.0, float(np.nextafter(reals_asc[-1], np.inf)))
    if i < 1:
        return float(reals_asc[0])
    lo, hi = float(reals_asc[i - 1]), float(reals_asc[i])
    cut = lo + (h - i) * (hi - lo)
    return cut if cut > lo else float(np.nextafter(lo, np.inf))


def fit_thresholds(p: np.ndarray, y: np.ndarray, target_fpr: float, target_uncertain: float,
                   reals: np.ndarray | None = None) -> Thresholds:
    """Thresholds from validation: FAKE at the cut whose expected false-positive rate on new
    real clips is ``target_fpr`` (:func:`_fpr_cut`), then the ``target_uncertain`` share of
    all clips just below it marked UNCERTAIN.

    The cut is set on ``reals`` when given (the probabilities of authentic clips of other
    people, many more than validation holds), else on validation's reals. Out of sample
    the FPR scatters around the target: with 40 reals the standard deviation is about
    0.034 for a 0.05 target, with 300 about 0.013 (more where a person's clips agree).
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    reals = np.sort(p[y == 0] if reals is None else np.asarray(reals, dtype=np.float64))
    if reals.size == 0 or (y == 1).sum() == 0:
        raise ValueError("thresholds need real and fake validation clips")
    fake_at = _fpr_cut(reals, target_fpr)
    above = reals.size - int(math.floor((1.0 - target_fpr) * (reals.size + 1) + 1e-9))
    # Ties at the cut would let more reals through: move the cut above the tied value.
    while np.sum(reals >= fake_at) > max(above, 0) and fake_at < 1.0:
        fake_at = min(1.0, float(np.nextafter(reals[reals >= fake_at][0], np.inf)))
    below = np.sort(p[p < fake_at])[::-1]
    m = int(round(target_uncertain * p.size))
    real_below = fake_at if m <= 0 or below.size == 0 else _cut(below, min(m, below.size), fake_at)
    if m >= below.size and below.size:
        real_below = float(below[-1])
    th = Thresholds(real_below=min(real_below, fake_at), fake_at=fake_at, target_fpr=target_fpr,
                    target_uncertain=target_uncertain)
    return Thresholds(th.real_below, th.fake_at, target_fpr, target_uncertain, val=th.rates(p, y))


# ----------------------------------------------------------------------------- fallbacks


@dataclass(frozen=True)
class Fallback:
    """The call of a subset of the members, when the others gave no answer: its own fusion
    and thresholds, fitted on validation like the full ones (no disagreement rule: that was
    fitted on every member's pattern)."""

    fusion: Fusion
    thresholds: Thresholds

    @property
    def members(self) -> tuple[str, ...]:
        return self.fusion.members

    def to_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion.to_dict(), "thresholds": self.thresholds.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fallback:
        return cls(Fusion.from_dict(d["fusion"]), Thresholds.from_dict(d["thresholds"]))


def fallback_subsets(modalities: Mapping[str, str]) -> list[tuple[str, ...]]:
    """The member sets that get a fallback: every proper subset of two or more members
    with one that sees the face (``video`` or ``av``), members in the given order.

    A single member left is the modality-alone rule's case (``modality_thresholds``), and a
    set that only listens is never asked: a face unseen is never judged (DESIGN §3).
    """
    from itertools import combinations

    names = list(modalities)
    return [subset for k in range(len(names) - 1, 1, -1) for subset in combinations(names, k)
            if any(modalities[n] != "audio" for n in subset)]


# ----------------------------------------------------------------------------- disagreement


@dataclass(frozen=True)
class Disagreement:
    """Members that split in a pattern validation never showed: ``UNCERTAIN``, not the stacker's call.

    A clip's pattern is its members' calibrated log-odds, clipped to ``[-clip, clip]`` (past
    that, "very sure" and "surer" are the same statement). Its distance is the Euclidean
    distance to the ``k``-th nearest validation pattern (Sun et al., ICML 2022, in score
    space). The bound is the split-conformal quantile of the validation clips' own
    leave-one-out distances at ``rate`` (the ``ceil((n + 1)(1 - rate))``-th smallest), so at
    most ``rate`` of new in-distribution clips exceed it. A clip is flagged when its
    distance exceeds the bound **and** the members split (at least one at or above 0.5,
    one below): an unusual pattern on which the members agree is left to the fusion.

    Attributes:
        members: the member order of ``reference`` (the fusion's).
        reference: validation patterns, one row per clip.
        k: neighbours.
        bound: the distance above which a split pattern is flagged.
        rate: the share of validation clips the bound was set for.
        clip: the log-odds clip.
    """

    members: tuple[str, ...]
    reference: tuple[tuple[float, ...], ...]
    k: int
    bound: float
    rate: float
    clip: float = 5.0

    def __post_init__(self) -> None:
        # Scored once per window on the served path: the reference is made an array once.
        object.__setattr__(self, "_ref", np.asarray(self.reference, dtype=np.float64))

    def distance(self, probs: np.ndarray) -> np.ndarray:
        """Distance of each row of (n, m) member probabilities to its k-th nearest validation pattern."""
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        if p.shape[1] != len(self.members):
            raise ValueError(f"expected {len(self.members)} member columns, got {p.shape[1]}")
        return _kth_distance(np.clip(logit(p), -self.clip, self.clip), self._ref, self.k)

    @staticmethod
    def split(probs: np.ndarray) -> np.ndarray:
        """True where at least one member is at or above 0.5 and another below."""
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        return (p >= 0.5).any(axis=1) & (p < 0.5).any(axis=1)

    def flags(self, probs: np.ndarray) -> np.ndarray:
        """True where the members split and the pattern is past the bound."""
        return self.split(probs) & (self.distance(probs) > self.bound)

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "k": self.k, "bound": self.bound, "rate": self.rate,
                "clip": self.clip, "reference": [list(r) for r in self.reference]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Disagreement:
        return cls(members=tuple(d["members"]), reference=tuple(tuple(map(float, r)) for r in d["reference"]),
                   k=int(d["k"]), bound=float(d["bound"]), rate=float(d["rate"]), clip=float(d.get("clip", 5.0)))


def fit_disagreement(probs: np.ndarray, members: Sequence[str], k: int, rate: float,
                     clip: float = 5.0) -> Disagreement:
    """The disagreement bound from validation member probabilities (n, m); see :class:`Disagreement`.

    Raises:
        ValueError: fewer than ``k + 1`` validation clips, or a rate outside (0, 0.5).
    """
    if not 0.0 < rate < 0.5:
        raise ValueError(f"the disagreement rate must be in (0, 0.5), got {rate}")
    x = np.clip(logit(np.atleast_2d(np.asarray(probs, dtype=np.float64))), -clip, clip)
    n = x.shape[0]
    if n < k + 1:
        raise ValueError(f"the disagreement bound needs at least {k + 1} validation clips, got {n}")
    loo = _kth_distance(x, x, k, leave_one_out=True)
    bound = float(np.sort(loo)[conformal_index(n, rate)[0]])
    return Disagreement(members=tuple(members), reference=tuple(tuple(float(v) for v in r) for r in x),
                        k=k, bound=bound, rate=rate, clip=clip)


def _kth_distance(x: np.ndarray, ref: np.ndarray, k: int, leave_one_out: bool = False) -> np.ndarray:
    """Euclidean distance of each row of ``x`` to its k-th nearest row of ``ref`` (with
    ``leave_one_out``, ``x`` is ``ref`` and a row is not its own neighbour)."""
    d = np.sqrt(((x[:, None, :] - ref[None, :, :]) ** 2).sum(axis=2))
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, min(k, ref.shape[0] - leave_one_out) - 1]


def conformal_index(n: int, rate: float) -> tuple[int, bool]:
    """0-based index of the split-conformal (1 - rate) order statistic of n scores (the
    ``ceil((n + 1)(1 - rate))``-th smallest), and whether it exists (else the largest is used).

    New scores exchangeable with the n exceed it with probability at most ``rate``
    (Vovk et al.; Angelopoulos & Bates 2021).
    """
    k = math.ceil((n + 1) * (1.0 - rate))
    return min(k, n) - 1, k <= n


# ----------------------------------------------------------------------------- agreement


def modality_scores(member_probs: Mapping[str, float], modalities: Mapping[str, str]) -> dict[str, float]:
    """Per modality, the highest calibrated probability among its members."""
    out: dict[str, float] = {}
    for name, p in member_probs.items():
        mod = modalities[name]
        out[mod] = max(out.get(mod, 0.0), float(p))
    return out


def agreement(member_probs: Mapping[str, float], fused: float, modalities: Mapping[str, str],
              cut: float = 0.5) -> dict[str, float | None]:
    """Model agreement (share of members on the fused call's side of ``cut``, and the
    spread of their probabilities) and modality agreement (1 - |video - audio|)."""
    probs = np.array(list(member_probs.values()), dtype=np.float64)
    side = fused >= cut
    mods = modality_scores(member_probs, modalities)
    both = "video" in mods and "audio" in mods
    return {"model_agreement": float(np.mean((probs >= cut) == side)) if probs.size else None,
            "model_spread": float(probs.max() - probs.min()) if probs.size else None,
            "modality_agreement": float(1.0 - abs(mods["video"] - mods["audio"])) if both else None}


# ----------------------------------------------------------------------------- gradient surrogates


def surrogate_logodds(cal: Calibrator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A smooth, unclamped stand-in for ``logit(cal.prob(z))``, for gradients only.

    Identity, temperature and Platt calibrators are their own log-odds
    (:meth:`Calibrator.log_odds`) without the clamp to [1e-4, 1 - 1e-4] (which zeroes the
    gradient of a confident member). An
    isotonic calibrator, a staircase with zero gradient on every step, is replaced by the
    line ``a z + b`` of the logistic curve closest (soft cross-entropy) to its breakpoints.
    """
    if cal.method != "isotonic":
        return cal.log_odds
    x, y = np.asarray(cal.x, np.float64), np.clip(np.asarray(cal.y, np.float64), 1e-4, 1 - 1e-4)
    a, b = 1.0, 0.0
    if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        def loss(theta: np.ndarray) -> float:
            u = theta[0] * x + theta[1]
            return float(np.mean(np.logaddexp(0.0, u) - y * u))

        a, b = (float(v) for v in minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead").x)
    a = max(a, 1e-3)  # increasing, like the map it stands in for
    return lambda z: a * z + b


def surrogate_fused_logit(fusion: Fusion, ells: torch.Tensor) -> torch.Tensor:
    """The fusion rule on members' log-odds ``ells`` (n, m), in log-odds and without clamps.

    The fusion's final calibrator is left out: it is monotone, so it does not change the
    sign of a window's gradient, which is all FGSM and PGD follow.
    """
    if fusion.rule == "stacking":
        c = torch.tensor(fusion.coef, dtype=ells.dtype, device=ells.device)
        return ells @ c + fusion.intercept
    if fusion.rule == "weighted_mean":
        logw = torch.log(torch.tensor(fusion.weights, dtype=ells.dtype, device=ells.device))
        log_p = torch.logsumexp(logw + F.logsigmoid(ells), dim=1)
        log_q = torch.logsumexp(logw + F.logsigmoid(-ells), dim=1)
        return log_p - log_q
    log_q = F.logsigmoid(-ells).sum(dim=1)  # noisy-or: 1 - p = prod(1 - p_i)
    return torch.log(-torch.expm1(log_q).clamp_max(-1e-30)) - log_q
