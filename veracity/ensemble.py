"""Fusion rules, three-way decisions, and the bundle (DESIGN §3).

Member scores flow one way: window logits -> pooled video logit (per member) ->
calibrated probability (per member) -> fused probability -> REAL / UNCERTAIN / FAKE.
:class:`Bundle` holds every piece of that chain plus the member weights; it is what the
``ensemble`` stage writes, what MLflow registers and what :mod:`veracity.analyzer`
(the one inference path, CLI and service) loads.

Fusion rules:
    * ``weighted_mean``: sum_i w_i p_i / sum_i w_i.
    * ``stacking``: logistic regression on the members' calibrated log-odds, fitted on
      validation (Wolpert, "Stacked generalization", 1992).
    * ``noisy_or``: 1 - prod_i (1 - p_i): fake if any member's manipulation is present;
      natural for specialists that each watch for one kind of fake.

A bundle directory holds ``bundle.json`` and ``members/<name>.safetensors`` (and
``members/<name>.onnx`` where the member exports). ``bundle.json`` lists the sha256 of
every other file; :meth:`Bundle.load` refuses a bundle whose files do not match.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize

from veracity.calibration import Calibrator, Pooling, fit_calibrator, logit, sigmoid
from veracity.contract import DataContract
from veracity.models import create_detector, detector_info
from veracity.models.base import Batch

BUNDLE_FORMAT = "veracity-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
FUSION_RULES = ("weighted_mean", "stacking", "noisy_or")
VERDICTS = ("REAL", "UNCERTAIN", "FAKE", "ABSTAIN")


class BundleError(RuntimeError):
    """A bundle that cannot be used: missing, malformed, or not matching its checksums."""


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


def fit_stacking(probs: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[tuple[float, ...], float]:
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
               weights: Mapping[str, float] | None = None, l2: float = 1.0, method: str = "auto",
               folds: int = 5) -> Fusion:
    """Fit a fusion rule (and its final calibrator) on validation probabilities."""
    members = tuple(members)
    if rule == "stacking":
        coef, b = fit_stacking(probs, y, l2)
        return Fusion("stacking", members, coef=coef, intercept=b)
    w = tuple(float((weights or {}).get(m, 1.0)) for m in members)
    base = Fusion(rule, members, weights=w if rule == "weighted_mean" else ())
    cal, _ = fit_calibrator(logit(base.raw(probs)), y, method, folds)
    return Fusion(rule, members, weights=base.weights, calibrator=cal)


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Thresholds:
    """REAL below ``real_below``, FAKE at or above ``fake_at``, UNCERTAIN in between."""

    real_below: float
    fake_at: float
    target_fpr: float = 0.05
    target_uncertain: float = 0.10
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
                   target_fpr=float(d.get("target_fpr", 0.05)), target_uncertain=float(d.get("target_uncertain", 0.1)),
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


def fit_thresholds(p: np.ndarray, y: np.ndarray, target_fpr: float, target_uncertain: float) -> Thresholds:
    """Thresholds from validation: at most ``target_fpr`` of reals called FAKE (the lowest
    such threshold, to call as many fakes as possible), then the ``target_uncertain``
    share of all clips just below it marked UNCERTAIN.

    The achievable FPR moves in steps of 1 / (number of real clips); the fitted value is
    the largest step not above the target.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    reals = np.sort(p[y == 0])[::-1]
    if reals.size == 0 or (y == 1).sum() == 0:
        raise ValueError("thresholds need real and fake validation clips")
    k = int(math.floor(target_fpr * reals.size + 1e-9))
    fake_at = _cut(reals, k, 1.0)
    # Ties at the cut would let more reals through: move the cut above the tied value.
    while k > 0 and np.mean(reals >= fake_at) > target_fpr + 1e-12:
        k -= 1
        fake_at = _cut(reals, k, 1.0)
    below = np.sort(p[p < fake_at])[::-1]
    m = int(round(target_uncertain * p.size))
    real_below = fake_at if m <= 0 or below.size == 0 else _cut(below, min(m, below.size), fake_at)
    if m >= below.size and below.size:
        real_below = float(below[-1])
    th = Thresholds(real_below=min(real_below, fake_at), fake_at=fake_at, target_fpr=target_fpr,
                    target_uncertain=target_uncertain)
    return Thresholds(th.real_below, th.fake_at, target_fpr, target_uncertain, val=th.rates(p, y))


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


# ----------------------------------------------------------------------------- the bundle


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bundle_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != BUNDLE_JSON)


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Check a bundle directory against the checksums in its ``bundle.json``.

    Returns:
        The parsed ``bundle.json``.

    Raises:
        BundleError: missing directory or ``bundle.json``, wrong format, or a file that is
            missing, unlisted or whose sha256 differs (the message names the file).
    """
    root = Path(path)
    spec_path = root / BUNDLE_JSON
    if not spec_path.is_file():
        raise BundleError(f"{root} is not a bundle: {BUNDLE_JSON} is missing")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{spec_path} is not valid JSON ({exc})") from None
    if spec.get("format") != BUNDLE_FORMAT or spec.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{spec_path}: not a {BUNDLE_FORMAT} v{BUNDLE_VERSION} bundle "
                          f"(format={spec.get('format')!r}, version={spec.get('version')!r})")
    listed = spec.get("files") or {}
    present = set(_bundle_files(root))
    for rel in sorted(set(listed) - present):
        raise BundleError(f"bundle file {rel} is missing from {root}")
    for rel in sorted(present - set(listed)):
        raise BundleError(f"bundle file {rel} is not listed in {BUNDLE_JSON} (added after the bundle was made?)")
    for rel in sorted(listed):
        if sha256_file(root / rel) != listed[rel]:
            raise BundleError(f"bundle file {rel} does not match its sha256 in {BUNDLE_JSON}: "
                              "the file was changed or damaged; refusing to load the bundle")
    return spec


@dataclass
class BundleMember:
    """One member of a bundle: how it is rebuilt, pooled and calibrated."""

    name: str
    detector: str
    detector_config: dict[str, Any]
    modality: str
    target: str
    target_methods: tuple[str, ...] | None
    pooling: Pooling
    calibrator: Calibrator
    model: torch.nn.Module | None = None
    onnx_session: Any = None

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "detector": self.detector, "detector_config": self.detector_config,
                "modality": self.modality, "target": self.target,
                "target_methods": list(self.target_methods) if self.target_methods is not None else None,
                "pooling": self.pooling.to_dict(), "calibrator": self.calibrator.to_dict()}


@dataclass(frozen=True)
class Evidence:
    """When a video cannot be judged: too little face, too short, or no audio."""

    min_face_ratio: float = 0.5
    min_duration_s: float = 1.0
    require_audio: bool = True


@dataclass
class Scored:
    """One video scored by a bundle: per-member and fused probabilities and the call."""

    member_logits: dict[str, float]
    member_probs: dict[str, float]
    modality_probs: dict[str, float]
    probability: float
    verdict: str
    agreement: dict[str, float | None]


class Bundle:
    """Members + pooling + calibrators + fusion + thresholds: the shipped detector.

    Build one with :meth:`assemble` (from trained members and a calibration file) or
    :meth:`load` (from a saved, verified bundle directory).
    """

    def __init__(self, contract: DataContract, members: list[BundleMember], fusion: Fusion,
                 thresholds: Thresholds, evidence: Evidence, spec: dict[str, Any] | None = None,
                 root: Path | None = None, device: torch.device | str = "cpu"):
        names = [m.name for m in members]
        if list(fusion.members) != names:
            raise BundleError(f"fusion members {list(fusion.members)} differ from bundle members {names}")
        self.contract = contract
        self.members = members
        self.fusion = fusion
        self.thresholds = thresholds
        self.evidence = evidence
        self.spec = spec or {}
        self.root = root
        self.device = torch.device(device)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def modalities(self) -> dict[str, str]:
        return {m.name: m.modality for m in self.members}

    @property
    def needs_audio(self) -> bool:
        """Whether any member listens (audio or audio-visual)."""
        return any(m.modality in ("audio", "av") for m in self.members)

    # --------------------------------------------------------------- construction

    @classmethod
    def assemble(cls, models: Path | str, calibration: Mapping[str, Any], evidence: Evidence | None = None,
                 device: torch.device | str = "cpu") -> Bundle:
        """Trained members (``models/<name>``) + a calibration file's content, in memory."""
        from veracity.training import load_member

        models = Path(models)
        fusion = Fusion.from_dict(calibration["fusion"])
        members = []
        contract = None
        for name in fusion.members:
            meta_path = models / name / "model.json"
            if not meta_path.is_file():
                raise BundleError(f"member {name!r} has no trained model at {meta_path}")
            meta = json.loads(meta_path.read_text())
            c = DataContract.from_dict(meta["contract"])
            if contract is not None and c != contract:
                raise BundleError(f"member {name!r} was trained on another data contract than "
                                  f"{members[0].name!r}; a bundle has one contract")
            contract = c
            cal = calibration["members"][name]
            mcfg = meta.get("member_config", {})
            tm = mcfg.get("target_methods")
            members.append(BundleMember(
                name=name, detector=meta["detector"], detector_config=meta["detector_config"],
                modality=detector_info(meta["detector"])["modality"], target=mcfg.get("target", "label"),
                target_methods=tuple(tm) if tm is not None else None,
                pooling=Pooling.from_dict(cal["pooling"]), calibrator=Calibrator.from_dict(cal["calibrator"]),
                model=load_member(models / name, device)))
        assert contract is not None
        return cls(contract, members, fusion, Thresholds.from_dict(calibration["thresholds"]),
                   evidence or Evidence(), device=device)

    def save(self, out: Path | str, extra: Mapping[str, Any] | None = None, onnx: bool = False,
             onnx_tolerance: float = 1e-4, example: Batch | None = None) -> Path:
        """Write the bundle directory (weights as safetensors, optional ONNX, bundle.json).

        Args:
            out: the directory (replaced if it exists).
            extra: more top-level bundle.json entries (metrics, robustness, lineage).
            onnx: also export each member that ONNX can express, keeping it only if its
                logits match PyTorch within ``onnx_tolerance`` on ``example``.
            example: a batch for the ONNX export and parity check (required with onnx).
        """
        from safetensors.torch import save_file

        out = Path(out)
        if out.exists():
            shutil.rmtree(out)
        (out / "members").mkdir(parents=True)
        members = []
        for m in self.members:
            assert m.model is not None
            rel = f"members/{m.name}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in m.model.state_dict().items()}
            save_file(state, out / rel)
            spec = {**m.spec(), "weights": rel, "onnx": None, "onnx_max_abs_diff": None, "onnx_error": None}
            if onnx:
                if example is None:
                    raise ValueError("an example batch is needed for the ONNX export")
                from veracity.onnx_export import export_member

                rel_onnx = f"members/{m.name}.onnx"
                res = export_member(m.model, example, out / rel_onnx, onnx_tolerance)
                spec.update(onnx=rel_onnx if res.ok else None, onnx_max_abs_diff=res.max_abs_diff,
                            onnx_error=res.error)
                if not res.ok and (out / rel_onnx).exists():
                    (out / rel_onnx).unlink()
            members.append(spec)
        spec = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "contract": self.contract.to_dict(),
                "members": members, "fusion": self.fusion.to_dict(), "thresholds": self.thresholds.to_dict(),
                "evidence": vars(self.evidence).copy(), **dict(extra or {})}
        spec["files"] = {rel: sha256_file(out / rel) for rel in _bundle_files(out)}
        (out / BUNDLE_JSON).write_text(json.dumps(spec, indent=1, sort_keys=False, default=_json_default) + "\n")
        self.spec, self.root = spec, out
        return out

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu", runtime: str = "torch") -> Bundle:
        """Load a bundle after verifying every checksum.

        Args:
            path: the bundle directory.
            device: where the PyTorch members run.
            runtime: ``torch``, or ``onnx`` to run members that have an ONNX file with
                ONNX Runtime on CPU (the others stay in PyTorch).

        Raises:
            BundleError: a file does not match ``bundle.json`` (named), or the bundle
                cannot be rebuilt.
        """
        from safetensors.torch import load_file

        if runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        root = Path(path)
        spec = verify_bundle(root)
        try:
            contract = DataContract.from_dict(spec["contract"])
            members = []
            for m in spec["members"]:
                model = create_detector(m["detector"], contract, **m["detector_config"])
                model.load_state_dict(load_file(root / m["weights"]))
                tm = m.get("target_methods")
                bm = BundleMember(name=m["name"], detector=m["detector"], detector_config=m["detector_config"],
                                  modality=m["modality"], target=m["target"],
                                  target_methods=tuple(tm) if tm is not None else None,
                                  pooling=Pooling.from_dict(m["pooling"]),
                                  calibrator=Calibrator.from_dict(m["calibrator"]),
                                  model=model.to(device).eval())
                if runtime == "onnx" and m.get("onnx"):
                    from veracity.onnx_export import ort_session

                    bm.onnx_session = ort_session(root / m["onnx"])
                members.append(bm)
            ev = spec.get("evidence", {})
            return cls(contract, members, Fusion.from_dict(spec["fusion"]), Thresholds.from_dict(spec["thresholds"]),
                       Evidence(**ev), spec=spec, root=root, device=device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BundleError(f"bundle {root} cannot be rebuilt: {type(exc).__name__}: {exc}") from None

    # --------------------------------------------------------------- scoring

    def window_logits(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every member's window logits for one batch: ``{member: (B,) array}``."""
        out = {}
        with torch.inference_mode():
            gpu_batch = None
            for m in self.members:
                if m.onnx_session is not None:
                    from veracity.onnx_export import run_session

                    out[m.name] = run_session(m.onnx_session, batch)
                    continue
                if gpu_batch is None:
                    gpu_batch = batch.to(self.device)
                assert m.model is not None
                out[m.name] = m.model(gpu_batch).logits.float().cpu().numpy()
        return out

    def member_video(self, window_logits: Mapping[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
        """Pooled logit and calibrated probability per member, for one video's windows."""
        z = {m.name: m.pooling.one(window_logits[m.name]) for m in self.members}
        p = {m.name: float(m.calibrator.prob(z[m.name])) for m in self.members}
        return z, p

    def score(self, window_logits: Mapping[str, np.ndarray]) -> Scored:
        """One video: member windows -> pooled -> calibrated -> fused -> REAL/UNCERTAIN/FAKE."""
        z, p = self.member_video(window_logits)
        fused = float(self.fusion.prob(np.array([[p[n] for n in self.names]]))[0])
        return Scored(member_logits=z, member_probs=p, modality_probs=modality_scores(p, self.modalities),
                      probability=fused, verdict=self.thresholds.verdict(fused),
                      agreement=agreement(p, fused, self.modalities))

    def score_table(self, windows: pd.DataFrame) -> pd.DataFrame:
        """Vectorised :meth:`score` for many videos.

        Args:
            windows: one row per (member, window): ``member``, ``video_id``, ``logit``,
                plus any per-video columns (label, method, split) to carry along.

        Returns:
            One row per video: carried columns, ``z_<member>``, ``p_<member>``, ``prob``,
            ``verdict``.
        """
        per_video = [c for c in windows.columns if c not in ("member", "logit", "start", "prob", "frame")]
        base = windows[per_video].drop_duplicates("video_id").set_index("video_id").sort_index()
        for m in self.members:
            w = windows[windows["member"] == m.name]
            if w.empty:
                raise BundleError(f"no window scores for member {m.name!r}")
            ids, pooled = m.pooling.apply(w["logit"].to_numpy(np.float64), w["video_id"].to_numpy())
            base.loc[ids, f"z_{m.name}"] = pooled
            base[f"p_{m.name}"] = m.calibrator.prob(base[f"z_{m.name}"].to_numpy())
        missing = base[[f"z_{n}" for n in self.names]].isna().any(axis=1)
        if missing.any():
            raise BundleError(f"{int(missing.sum())} video(s) lack some member's scores, e.g. {missing.idxmax()}")
        base["prob"] = self.fusion.prob(base[[f"p_{n}" for n in self.names]].to_numpy())
        base["verdict"] = self.thresholds.verdicts(base["prob"].to_numpy())
        return base.reset_index()

    def fused_window_prob(self, batch: Batch) -> torch.Tensor:
        """Differentiable fused probability of each window scored as a one-window video
        (every pooling rule is the identity on one window): the target of gradient attacks
        on the whole ensemble. PyTorch members only."""
        cols = []
        for m in self.members:
            assert m.model is not None
            cols.append(calibrate_torch(m.calibrator, m.model(batch).logits.float()))
        return self.fusion.prob_torch(torch.stack(cols, dim=1))


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class QualityCheck:
    """One printed quality bar of the ensemble stage."""

    name: str
    value: float
    bound: float
    kind: str  # ">=", "<=", "within"

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.bound if self.kind == ">=" else self.value <= self.bound


def window_table(bundle: Bundle, clips: Sequence[Any], batch_size: int = 32) -> pd.DataFrame:
    """Every member's logit for every window of ``clips``, through the bundle's forward."""
    from torch.utils.data import DataLoader

    from veracity.data import WindowDataset, collate

    ds = WindowDataset(clips, bundle.contract)
    rows: list[pd.DataFrame] = []
    for batch, idx in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits = bundle.window_logits(batch)
        info = [ds.item_clip(int(i)) for i in idx]
        base = pd.DataFrame({"video_id": [c.video_id for c in info], "start": [ds.item_start(int(i)) for i in idx],
                             "split": [c.split for c in info], "method": [c.method for c in info],
                             "label": [c.label for c in info], "video_label": [c.video_label for c in info],
                             "audio_label": [c.audio_label for c in info]})
        for name, z in logits.items():
            rows.append(base.assign(member=name, logit=z.astype(np.float64)))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _method_aucs(table: pd.DataFrame, col: str) -> dict[str, dict[str, float]]:
    from veracity import metrics

    real = table[table["method"] == "real"]
    out = {}
    for method in sorted(set(table["method"]) - {"real"}):
        part = pd.concat([real, table[table["method"] == method]])
        out[method] = {"auc": metrics.roc_auc(part["label"], part[col]), "n_fake": int((table["method"] == method).sum())}
    return out


def build_bundle(models: Path | str, calibration: Path | str, features: Path | str, cfg: Any, extract_cfg: Any,
                 out: Path | str, reports: Path | str, robustness: Path | str | None = None,
                 calibrate_report: Path | str | None = None, root: Path | str = ".") -> dict[str, Any]:
    """The ``ensemble`` stage: assemble, evaluate on the test split, export, save, verify.

    The test-split scores come from the bundle's own forward pass (not the training
    predictions), so what is measured is what ships; they are also compared with the
    training run's window predictions as a consistency check.

    Returns:
        The metrics written to ``reports/metrics.json`` (with the quality checks).
    """
    from veracity import metrics
    from veracity.config import to_plain
    from veracity.data import collate, load_clips
    from veracity.tracking import data_hash

    models, out, reports = Path(models), Path(out), Path(reports)
    cal = json.loads(Path(calibration).read_text())
    bundle = Bundle.assemble(models, cal, Evidence(cfg.min_face_ratio, cfg.min_duration_s, cfg.require_audio))
    clips = load_clips(features, ["test"], extract_cfg.usable_statuses)
    if not clips:
        raise BundleError(f"no usable test clips under {features}")
    windows = window_table(bundle, clips)
    consistency = {}
    for name in bundle.names:
        ref = pd.read_csv(models / name / "predictions_window.csv")
        both = windows[windows["member"] == name].merge(ref[ref["split"] == "test"], on=["video_id", "start"],
                                                         suffixes=("", "_train"))
        consistency[name] = float(np.max(np.abs(both["logit"] - both["logit_train"]))) if len(both) else math.nan
    table = bundle.score_table(windows)
    y = table["label"].to_numpy(np.float64)
    p = table["prob"].to_numpy()
    th = bundle.thresholds
    member_auc = {n: metrics.roc_auc(y, table[f"p_{n}"]) for n in bundle.names}
    floor = metrics.ece_if_calibrated(p, 10)
    ens = {"auc": metrics.roc_auc(y, p), "ap": metrics.average_precision(y, p), "ece": metrics.ece(y, p, 10),
           "ece_if_calibrated_median": floor["median"], "ece_if_calibrated_p90": floor["p90"],
           "brier": metrics.brier(y, p), **th.rates(p, y)}
    cal_report = json.loads(Path(calibrate_report).read_text()) if calibrate_report else {}
    rob = json.loads(Path(robustness).read_text()) if robustness else {}
    gate = rob.get("gate", {})
    member_metrics = {n: {"test": {"auc": member_auc[n],
                                   **{k: v for k, v in cal_report.get("members", {}).get(n, {}).get("test", {}).items()
                                      if k != "auc"},
                                   "target_auc": cal_report.get("members", {}).get(n, {}).get("test", {}).get("auc")},
                          "consistency_max_abs_logit_diff": consistency[n]} for n in bundle.names}
    result = {"ensemble": {"test": ens, "val": {k[4:]: v for k, v in th.to_dict().items() if k.startswith("val_")},
                           "per_method": _method_aucs(table, "prob")},
              "members": member_metrics}
    best = max(bundle.names, key=lambda n: member_auc[n])
    checks = [
        QualityCheck(f"ensemble test AUC >= best member ({best}, {member_auc[best]:.4f})", ens["auc"], member_auc[best], ">="),
        QualityCheck("ensemble test AUC", ens["auc"], cfg.min_auc, ">="),
        QualityCheck("ensemble test ECE after calibration", ens["ece"], cfg.max_ece, "<="),
        QualityCheck(f"|validation FPR - target {th.target_fpr:g}|", abs(th.val.get("fpr", math.nan) - th.target_fpr),
                     cfg.fpr_tolerance, "<="),
        QualityCheck(f"ensemble AUC drop under {gate.get('corruption', '?')} {gate.get('strength', '?')}",
                     float(gate.get("drop", math.nan)), cfg.max_gate_drop, "<="),
    ]
    result["checks"] = [{"name": c.name, "value": c.value, "bound": c.bound, "kind": c.kind, "passed": c.passed}
                        for c in checks]
    lineage = {"data_dvc_md5": data_hash(root), "dvc_lock": _member_hashes(Path(root) / "dvc.lock", bundle.names)}
    splits = pd.read_csv(Path(features) / "index.csv")
    data = {"clips_by_split": {str(k): int(v) for k, v in splits["split"].value_counts().sort_index().items()}}
    first = _first_windows(clips, bundle.contract, 4)
    example, _ = collate([first[i] for i in range(4)])
    bundle.save(out, extra={"extract": to_plain(extract_cfg, exclude={"workers"}), "metrics": result,
                            "robustness": rob, "lineage": lineage, "data": data},
                onnx=cfg.onnx, onnx_tolerance=cfg.onnx_tolerance, example=example)
    reloaded = Bundle.load(out)  # checksums verified on the written files
    ref_logits = bundle.window_logits(example)
    got = reloaded.window_logits(example)
    result["reload_max_abs_logit_diff"] = max(float(np.max(np.abs(got[n] - ref_logits[n]))) for n in bundle.names)
    onnx_members = [m["name"] for m in reloaded.spec["members"] if m.get("onnx")]
    if onnx_members:
        via_onnx = Bundle.load(out, runtime="onnx").window_logits(example)
        result["onnx"] = {n: float(np.max(np.abs(via_onnx[n] - ref_logits[n]))) for n in onnx_members}
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    table.to_csv(reports / "scores.csv", index=False, float_format="%.6g")
    result["_checks"] = checks
    return result


def _first_windows(clips: Sequence[Any], contract: DataContract, n: int) -> Any:
    from veracity.data import WindowDataset

    ds = WindowDataset(list(clips)[: max(1, n)], contract)
    if len(ds) < n:
        raise BundleError(f"need {n} windows for the export example, the test split has {len(ds)}")
    return ds


def _member_hashes(lock: Path, names: Sequence[str]) -> dict[str, str]:
    """The md5 that dvc.lock records for each member's model directory."""
    import yaml

    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage, body in stages.items():
        for o in body.get("outs", []) or []:
            path = str(o.get("path", ""))
            if path.startswith("models/") and path.split("/", 1)[1] in names:
                found[stage] = o.get("md5")
    return dict(sorted(found.items()))
