"""The reference profile: what the bundle was validated on, and how far an input is from it.

DESIGN §3 ("Reference profile"). This module owns three things, and nothing else reads or
writes them:

1. **Media facts** per clip and person (:func:`media_facts`, names in :data:`FACTS`): the
   extraction index's facts (duration, fps, resolution, audio level, speech ratio, face
   ratio) plus what only the record shows: face size in display pixels (median side of
   the track's crop boxes), brightness (mean luma of the face crops) and sharpness
   (median over crops of the variance of the 4-neighbour Laplacian of their luma), on up
   to :data:`FACT_SAMPLES` evenly spaced crops. Names are the request log's
   (:data:`veracity.requestlog.MEDIA_COLUMNS`) where one exists, so monitoring can set
   request-log rows beside :meth:`ReferenceProfile.reference_facts`.
2. **Member embeddings** (:func:`member_embeddings`, :func:`clip_embeddings`): each
   member's :attr:`~veracity.models.base.DetectorOutput.features` (the pooled features
   before its head), per window, and their mean over a clip's (a person's) windows.
3. :class:`ReferenceProfile`: the distribution of both on in-distribution data, the
   out-of-distribution (OOD) score of one person against it (:meth:`ReferenceProfile.score`),
   and its plain-data files (:meth:`~ReferenceProfile.save`, :meth:`~ReferenceProfile.load`).
   :func:`fit_profile` fits one for a bundle from its features directory.

Methods, and why:

- **Embeddings: Mahalanobis distance with Ledoit–Wolf shrinkage** (default; Lee et al.,
  NeurIPS 2018, "A simple unified framework for detecting out-of-distribution samples";
  Ledoit & Wolf, 2004). One Gaussian per member over the clip-mean embeddings of the fit
  splits. Each dimension is first divided by its standard deviation (floored at
  ``std_floor`` times the median one, so a unit that never fired in training cannot
  dominate), then :class:`sklearn.covariance.LedoitWolf` shrinks the correlation towards
  the identity by the analytically optimal amount: the bundle is fitted on a few hundred
  clips while members have 16–500 features, where the sample covariance is singular. What
  ships is a mean and one D×D precision matrix per member (raw feature space): small,
  deterministic, no reference set to carry. Limits: with fewer fit clips than dimensions
  the shrinkage is strong (``shrinkage`` in ``profile.json``; 0.3 for 40 clips in 64
  dimensions) and only shifts along the embedding's main directions are seen; fitting the
  covariance on windows instead (about five times the samples) did not help in simulation,
  the within-clip spread distorts the metric for clip means. **k-nearest neighbours** (Sun et al., ICML
  2022, "Out-of-distribution detection with deep nearest neighbors": Euclidean distance of
  the L2-normalised embedding to its k-th nearest fit embedding) is the alternative
  (``method="knn"``): it follows clusters (real vs. fake, methods) that one Gaussian
  smears together, at the price of shipping the (subsampled) reference set and of noisy
  k-th distances on a few hundred clips; the default stays Mahalanobis for that reason.
- **Media facts: a range check.** Per fact, robust statistics of the fit splits
  (quantiles 0.5/1/5/50/95/99/99.5 %, median, MAD) and a band ``[q0.5%, q99.5%]``
  widened by at least ``margin``: for facts that act by scale (:data:`LOG_FACTS`: sizes, rates,
  durations, sharpness) multiplicatively (``q_lo / (1 + margin)``, ``q_hi * (1 + margin)``),
  for the others additively by ``margin * max(q_hi - q_lo, floor)`` (the floor keeps a
  fact that never varied in training from flagging every other value). A density model
  over facts was not chosen: the synthetic corpus has facts that never vary (one
  resolution, one fps), where densities degenerate, and a range reads as a reason.
  Only the facts in ``gate_facts`` (:data:`GATED_FACTS`: what shapes the members' input,
  i.e. face size, brightness, sharpness, speech ratio) make an input out of profile; the
  others (duration, fps and resolution, resampled away or reaching the crops only through
  face size; audio level, loudness-normalised before any member hears it; face ratio) are
  checked and reported as notes, and kept for drift monitoring.
- **One score, one calibrated threshold.** A member's ratio is its distance over its
  threshold, a fact's ratio is its distance from the median over the distance of its
  band's edge on that side (log space for log facts); both are 1.0 at the threshold.
  ``ood_score`` is the largest ratio (members and gated facts) and ``out`` is
  ``ood_score > 1``. Thresholds are set on the held-out split, never the fit split (the
  members were trained on those clips and the statistics fitted on them, so their
  distances are too small), so that at most ``target_rate`` of held-out clips is out,
  counting every reason at once. Each member's distance is scaled by its own held-out
  (1 - rate) quantile, each gated fact's ratio (to the stated margin's edge) by its own
  held-out (1 - rate) quantile where that exceeds 1 (held-out identities may be lighter
  or quieter than the few fit ones: the margin is the least a band is widened by, held-out
  clips can widen it further, never narrow it); the largest scaled value per clip is
  taken and the global factor is its split-conformal quantile, the
  ``ceil((n + 1)(1 - rate))``-th smallest (Vovk et al.; Angelopoulos & Bates 2021), which
  bounds the expected share of new in-distribution clips flagged by ``rate``. Member
  thresholds and gated fact bands are scaled by that factor (``profile.json`` states the
  final band edges, ``flag_lo``/``flag_hi``). With fewer than ``1 / rate - 1`` held-out
  clips that order statistic does not exist and the factor is the largest held-out score
  (``calibration.resolvable`` is false).

Files (:meth:`ReferenceProfile.save`), in one directory, both byte-identical for the same
inputs:

- ``profile.json``: format and version, method and its settings, target rate, fit and
  threshold splits and clip counts, per fact its statistics, band and whether it gates,
  per member its modality, dimension, clip counts, thresholds and held-out flag rate,
  and the calibration summary. Sorted keys; floats as Python's shortest round-trip repr;
  non-finite numbers as null.
- ``profile.npz``: NumPy arrays only (``np.load(..., allow_pickle=False)`` reads it):
  ``<member>.mean`` (D,), ``<member>.precision`` (D, D) for Mahalanobis or
  ``<member>.reference`` (n, D) L2-normalised float32 for kNN, ``facts.fit`` and
  ``facts.threshold`` (n, len(FACTS)) float64 (the reference rows drift monitoring
  compares with), ``scores.threshold`` (n,) the held-out clips' ``ood_score``. Written as
  an uncompressed zip with fixed timestamps.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from veracity.decision import conformal_index
from veracity.features import ClipRecord
from veracity.lineage import plain

if TYPE_CHECKING:
    import pandas as pd

    from veracity.bundle import Bundle
    from veracity.data import ClipInfo, WindowDataset
    from veracity.models.base import Batch

__all__ = [
    "AUDIO_FACTS",
    "FACTS",
    "FACT_SAMPLES",
    "GATED_FACTS",
    "LOG_FACTS",
    "PROFILE_JSON",
    "PROFILE_NPZ",
    "QUANTILES",
    "FactCheck",
    "MemberDistance",
    "OODResult",
    "ProfileError",
    "ReferenceProfile",
    "clip_embeddings",
    "fit_profile",
    "media_facts",
    "member_embeddings",
]

log = logging.getLogger(__name__)

PROFILE_FORMAT = "veracity-profile"
PROFILE_VERSION = 1
PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"

# Every fact, in the column order of the npz tables. Request-log names where they exist.
FACTS: tuple[str, ...] = (
    "duration_s",  # seconds, from the container
    "fps",  # source frame rate
    "width",  # display pixels
    "height",
    "face_px",  # median side of the person's face crop boxes, display pixels
    "brightness",  # mean luma (0-255) of the person's face crops
    "sharpness",  # median variance of the Laplacian of the crops' luma (crop pixels)
    "rms_dbfs",  # audio level before loudness normalisation
    "speech_ratio",  # share of audio hops with voice activity
    "face_ratio",  # share of sampled frames with a face
)
# Facts that shape what the members see: only these make an input out of profile. Frame
# rate and audio level are resampled (to the contract's fps) and loudness-normalised away
# before any member sees them; resolution reaches the crops only through face size.
GATED_FACTS: tuple[str, ...] = ("face_px", "brightness", "sharpness", "speech_ratio")
# Facts about the audio: not checked for a file judged without its audio (veracity.analyzer).
AUDIO_FACTS: tuple[str, ...] = ("rms_dbfs", "speech_ratio")
# Facts that act by scale: their band is widened multiplicatively (and must be > 0).
LOG_FACTS: frozenset[str] = frozenset({"duration_s", "fps", "width", "height", "face_px", "sharpness"})
# Additive facts: the smallest spread their band is widened by (a fact that never varied).
_FLOORS: dict[str, float] = {"brightness": 20.0, "rms_dbfs": 6.0, "speech_ratio": 0.1, "face_ratio": 0.1}
# How each fact reads in a reason: (words, unit suffix, format).
_LABELS: dict[str, tuple[str, str, str]] = {
    "duration_s": ("duration", " s", "{:.1f}"),
    "fps": ("frame rate", " fps", "{:.1f}"),
    "width": ("width", " px", "{:.0f}"),
    "height": ("height", " px", "{:.0f}"),
    "face_px": ("face size", " px", "{:.0f}"),
    "brightness": ("brightness (mean luma)", "", "{:.0f}"),
    "sharpness": ("sharpness (Laplacian variance)", "", "{:.3g}"),
    "rms_dbfs": ("audio level", " dBFS", "{:.1f}"),
    "speech_ratio": ("speech ratio", "", "{:.2f}"),
    "face_ratio": ("face ratio", "", "{:.2f}"),
}
QUANTILES: tuple[float, ...] = (0.005, 0.01, 0.05, 0.5, 0.95, 0.99, 0.995)
FACT_SAMPLES = 16  # face crops per person read for brightness and sharpness
METHODS = ("mahalanobis", "knn")
_RATIO_CAP = 1e6  # an ood_score is finite (request log, JSON)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ProfileError(ValueError):
    """A profile that cannot be fitted, read or applied (the message says why)."""


# ============================================================================ media facts


def _num(value: Any) -> float:
    """A finite float, or NaN for None/NaN/empty/non-numeric."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def _luma(crops: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 RGB -> (n, S, S) float64 BT.601 luma."""
    c = crops.astype(np.float64)
    return 0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]


def _laplacian_var(luma: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian over each image's interior: (n, H, W) -> (n,)."""
    if luma.shape[1] < 3 or luma.shape[2] < 3:
        return np.full(luma.shape[0], np.nan)
    lap = (luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:]
           - 4.0 * luma[:, 1:-1, 1:-1])
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def media_facts(record: ClipRecord, index_row: Mapping[str, Any], track: int | None = None) -> dict[str, float]:
    """The media facts of one person of a clip, every name of :data:`FACTS` (NaN when unknown).

    Args:
        record: the clip's feature record.
        index_row: the clip's extraction index row (``extract_clip``'s return or a row of
            ``index.csv``) or the analyzer's media facts (``fps`` instead of ``src_fps``).
        track: the person's face track; None is the primary track (the main speaker).
            Face size is NaN for the centre-crop fallback (track -1, or None without a
            kept track): those crops are no face.

    Returns:
        ``{fact: float}`` in :data:`FACTS` order. Audio facts are NaN without audio.
    """
    row = index_row
    fps = row.get("fps", row.get("src_fps"))
    has_audio = _truthy(row.get("has_audio"))
    out = {
        "duration_s": _num(row.get("duration_s")),
        "fps": _num(fps),
        "width": _num(row.get("width")),
        "height": _num(row.get("height")),
        "face_px": math.nan,
        "brightness": math.nan,
        "sharpness": math.nan,
        "rms_dbfs": _num(row.get("rms_dbfs")) if has_audio else math.nan,
        "speech_ratio": _num(row.get("speech_ratio")) if has_audio else math.nan,
        "face_ratio": _num(row.get("face_ratio")),
    }
    tid = record.primary_track() if track is None else track
    rows = record.track_crops(tid)
    if len(rows):
        if tid is not None and tid >= 0:
            boxes = np.asarray(record.array("crop_box"), dtype=np.float64)[rows]
            if boxes.ndim == 2 and boxes.shape[1] == 4:
                side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
                out["face_px"] = float(np.median(side))
        pick = rows[np.unique(np.linspace(0, len(rows) - 1, min(FACT_SAMPLES, len(rows))).round().astype(int))]
        faces = record.array("faces")
        if faces.ndim == 4 and faces.shape[-1] == 3:
            luma = _luma(np.asarray(faces[pick]))
            out["brightness"] = float(luma.mean())
            out["sharpness"] = float(np.median(_laplacian_var(luma)))
    return {k: (float(v) if math.isfinite(v) else math.nan) for k, v in out.items()}


# ============================================================================ embeddings


def _iter_batches(data: WindowDataset | Iterable[Any], batch_size: int) -> Iterable[Batch]:
    from torch.utils.data import DataLoader

    from veracity.data import WindowDataset, collate

    if isinstance(data, WindowDataset):
        for batch, _ in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate):
            yield batch
        return
    for item in data:
        yield item[0] if isinstance(item, tuple) else item


def member_embeddings(bundle: Bundle, data: WindowDataset | Iterable[Any], *,
                      members: Sequence[str] | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Each member's pooled features (before its head) for every window.

    Args:
        bundle: the bundle (its PyTorch members run, also where an ONNX session scores:
            the exports return logits only).
        data: a :class:`~veracity.data.WindowDataset` (batched in order with
            :func:`~veracity.data.collate`) or an iterable of :class:`Batch` or
            ``(Batch, indices)`` as ``collate`` returns them.
        members: only these members (default every member).
        batch_size: windows per forward pass (datasets only).

    Returns:
        ``{member: (N_windows, D) float32}``, windows in the order given. A member whose
        output has no features is left out (logged).

    Raises:
        ProfileError: ``members`` names a member the bundle does not have.
    """
    import torch

    chosen = [m for m in bundle.members if members is None or m.name in set(members)]
    if members is not None and len(chosen) != len(set(members)):
        raise ProfileError(f"no member(s) {sorted(set(members) - set(bundle.names))} in the bundle; "
                           f"it has {bundle.names}")
    parts: dict[str, list[np.ndarray]] = {m.name: [] for m in chosen}
    missing: set[str] = set()
    with torch.inference_mode():
        for batch in _iter_batches(data, batch_size):
            b = batch.to(bundle.device)
            for m in chosen:
                if m.name in missing:
                    continue
                if m.model is None:
                    raise ProfileError(f"member {m.name!r} has no PyTorch model to take features from")
                feats = m.model(b).features
                if feats is None:
                    log.warning("member %s returns no features; it is left out of the profile", m.name)
                    missing.add(m.name)
                    continue
                parts[m.name].append(feats.float().reshape(feats.shape[0], -1).cpu().numpy())
    out = {}
    for name, arrs in parts.items():
        if name in missing:
            continue
        out[name] = np.concatenate(arrs).astype(np.float32) if arrs else np.zeros((0, 0), np.float32)
    return out


def clip_embeddings(bundle: Bundle, clips: Sequence[ClipInfo], *, members: Sequence[str] | None = None,
                    batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per clip (per person, where ``ClipInfo.track`` is set) the mean of its windows' embeddings.

    Returns:
        ``{member: (len(clips), D) float32}`` in the order of ``clips``; a clip without a
        window has a NaN row.
    """
    from veracity.data import WindowDataset

    ds = WindowDataset(list(clips), bundle.contract)
    per_window = member_embeddings(bundle, ds, members=members, batch_size=batch_size)
    pos = {id(c): i for i, c in enumerate(ds.clips)}
    owner = np.array([pos[id(ds.item_clip(i))] for i in range(len(ds))], dtype=np.int64)
    counts = np.bincount(owner, minlength=len(clips)).astype(np.float64)
    out = {}
    for name, emb in per_window.items():
        sums = np.zeros((len(clips), emb.shape[1]), np.float64)
        np.add.at(sums, owner, emb.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = (sums / counts[:, None]).astype(np.float32)
    return out


# ============================================================================ results


@dataclass
class MemberDistance:
    """One member's embedding distance from the profile."""

    member: str
    distance: float
    threshold: float
    ratio: float  # distance / threshold; above 1.0 is out of profile
    out: bool


@dataclass
class FactCheck:
    """One media fact against the profile's band."""

    fact: str
    value: float
    q_lo: float  # the profile's lower band quantile (e.g. 0.5 %)
    q_hi: float
    flag_lo: float  # below this the fact is out of profile (the band widened: see the module docstring)
    flag_hi: float
    ratio: float  # distance from the median over the distance of the widened edge; >1 is out
    out: bool
    gated: bool  # whether this fact can make the input out of profile


@dataclass
class OODResult:
    """How far one analysed person is from the reference profile.

    ``ood_score`` is the largest ratio of any member or gated fact (1.0 = at its
    threshold); ``out`` is ``ood_score > 1``; ``reasons`` says in words what was outside
    (gated facts and members), ``notes`` what else was (facts that do not gate).
    ``skipped`` names members and facts that could not be scored (no embedding given, NaN).
    """

    ood_score: float
    out: bool
    reasons: list[str]
    members: dict[str, MemberDistance] = field(default_factory=dict)
    facts: dict[str, FactCheck] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        """The reasons as one sentence (empty when in profile)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers as None)."""
        return plain(asdict(self))


def _fmt(fact: str, value: float) -> str:
    words, unit, spec = _LABELS.get(fact, (fact, "", "{:.3g}"))
    return spec.format(value) + unit


def _pct(q: float) -> str:
    return f"{q * 100:g}%"


# ============================================================================ the profile


@dataclass
class _FactStats:
    quantiles: dict[float, float]
    median: float
    mad: float
    n: int
    q_lo: float
    q_hi: float
    margin_lo: float  # the band widened by the stated margin
    margin_hi: float
    log: bool
    gated: bool
    widen: float = 1.0  # >= 1: how much further held-out clips required (see _calibrate)

    def _edges(self) -> tuple[float, float]:
        if self.widen == 1.0:
            return self.margin_lo, self.margin_hi
        if self.log:
            m = math.log(self.median)
            return (math.exp(m + self.widen * (math.log(self.margin_lo) - m)),
                    math.exp(m + self.widen * (math.log(self.margin_hi) - m)))
        return (self.median + self.widen * (self.margin_lo - self.median),
                self.median + self.widen * (self.margin_hi - self.median))

    @property
    def flag_lo(self) -> float:
        """Below this the fact is out of profile."""
        return self._edges()[0]

    @property
    def flag_hi(self) -> float:
        """Above this the fact is out of profile."""
        return self._edges()[1]


@dataclass
class _MemberStats:
    modality: str | None
    dim: int
    n_fit: int
    n_threshold: int
    threshold: float = math.nan  # distance above which this member is out of profile
    scale: float = math.nan  # its own held-out (1 - rate) quantile, before the global factor
    threshold_rate: float = math.nan  # share of held-out clips above ``threshold``
    shrinkage: float | None = None
    mean: np.ndarray | None = None
    precision: np.ndarray | None = None
    reference: np.ndarray | None = None


def _as_table(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any] | pd.DataFrame | np.ndarray) -> np.ndarray:
    """Fact rows (dicts, a column mapping, a DataFrame or an (n, F) array) -> (n, F) float64."""
    if isinstance(rows, np.ndarray):
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(FACTS):
            raise ProfileError(f"a fact table has shape (n, {len(FACTS)}), got {arr.shape}")
        return arr
    if hasattr(rows, "columns"):  # a DataFrame
        cols = {f: (rows[f].to_numpy(np.float64) if f in rows.columns else None) for f in FACTS}  # type: ignore[union-attr]
        n = len(rows)
        return np.stack([c if c is not None else np.full(n, np.nan) for c in cols.values()], axis=1) if n else np.zeros((0, len(FACTS)))
    if isinstance(rows, Mapping):
        n = len(next(iter(rows.values()))) if rows else 0
        return np.stack([np.asarray(rows.get(f, np.full(n, np.nan)), dtype=np.float64) for f in FACTS], axis=1) \
            if n else np.zeros((0, len(FACTS)))
    rows = list(rows)
    return np.array([[_num(r.get(f)) for f in FACTS] for r in rows], dtype=np.float64).reshape(len(rows), len(FACTS))


class ReferenceProfile:
    """The media facts and member embeddings of in-distribution data, and the OOD thresholds.

    Build one with :meth:`fit` (from arrays), :func:`fit_profile` (for a bundle, from its
    features directory) or :meth:`load`.
    """

    def __init__(self, *, method: str, target_rate: float, margin: float, band: tuple[float, float],
                 facts: dict[str, _FactStats], members: dict[str, _MemberStats], global_threshold: float,
                 calibration: dict[str, Any], fit_splits: Sequence[str], threshold_split: str,
                 n_fit: int, n_threshold: int, knn_k: int, std_floor: float,
                 fit_facts: np.ndarray, threshold_facts: np.ndarray, threshold_scores: np.ndarray,
                 extra: Mapping[str, Any] | None = None):
        self.method = method
        self.target_rate = float(target_rate)
        self.margin = float(margin)
        self.band = (float(band[0]), float(band[1]))
        self.facts = facts
        self.members = members
        self.global_threshold = float(global_threshold)
        self.calibration = dict(calibration)
        self.fit_splits = tuple(str(s) for s in fit_splits)
        self.threshold_split = str(threshold_split)
        self.n_fit = int(n_fit)
        self.n_threshold = int(n_threshold)
        self.knn_k = int(knn_k)
        self.std_floor = float(std_floor)
        self.fit_facts = np.asarray(fit_facts, dtype=np.float64)
        self.threshold_facts = np.asarray(threshold_facts, dtype=np.float64)
        self.threshold_scores = np.asarray(threshold_scores, dtype=np.float64)
        self.extra = dict(extra or {})

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, fit_facts: Any, fit_embeddings: Mapping[str, np.ndarray], threshold_facts: Any,
            threshold_embeddings: Mapping[str, np.ndarray], *, target_rate: float = 0.02,
            method: str = "mahalanobis", margin: float = 0.25, band: tuple[float, float] = (0.005, 0.995),
            gate_facts: Sequence[str] = GATED_FACTS, knn_k: int = 5, max_reference: int = 4096,
            std_floor: float = 0.1, modalities: Mapping[str, str] | None = None,
            fit_splits: Sequence[str] = ("train",), threshold_split: str = "val", seed: int = 0,
            extra: Mapping[str, Any] | None = None) -> ReferenceProfile:
        """Fit statistics on the fit clips and set the thresholds on the held-out clips.

        Args:
            fit_facts: the fit clips' facts: a list of :func:`media_facts` dicts, a
                DataFrame or mapping with :data:`FACTS` columns, or an (n, F) array.
            fit_embeddings: ``{member: (n_fit, D)}`` clip embeddings; a NaN row is a clip
                the member does not judge (e.g. an audio member on a clip without audio).
            threshold_facts: the held-out clips' facts (same forms).
            threshold_embeddings: ``{member: (n_threshold, D)}``, same members.
            target_rate: share of held-out (in-distribution) clips allowed out of profile.
            method: ``mahalanobis`` (Ledoit–Wolf shrinkage) or ``knn``.
            margin: how far the fact bands are widened (see the module docstring).
            band: the quantiles that bound each fact's band.
            gate_facts: facts that can make an input out of profile.
            knn_k: the neighbour whose distance counts (``knn``).
            max_reference: at most this many fit clips kept as the kNN reference set.
            std_floor: per-dimension standard deviations are floored at this share of
                their median before the covariance is fitted (``mahalanobis``).
            modalities: ``{member: modality}``, recorded in profile.json.
            fit_splits, threshold_split: the splits the clips come from (recorded).
            seed: the kNN reference subsample.
            extra: more JSON-ready entries for profile.json (e.g. the data contract).

        Raises:
            ProfileError: bad settings, no fit or held-out clips, members that differ
                between the two sets, or a member with no usable clip in either.
        """
        from sklearn.covariance import LedoitWolf

        if method not in METHODS:
            raise ProfileError(f"method must be one of {METHODS}, got {method!r}")
        if not 0.0 < target_rate < 0.5:
            raise ProfileError(f"target_rate must be in (0, 0.5), got {target_rate}")
        if not 0.0 <= band[0] < 0.5 < band[1] <= 1.0:
            raise ProfileError(f"band must be (lo, hi) quantiles with lo < 0.5 < hi, got {band}")
        if margin < 0:
            raise ProfileError(f"margin must be >= 0, got {margin}")
        unknown = sorted(set(gate_facts) - set(FACTS))
        if unknown:
            raise ProfileError(f"unknown fact(s) {unknown} in gate_facts; facts are {list(FACTS)}")
        if set(fit_embeddings) != set(threshold_embeddings):
            raise ProfileError(f"fit and held-out embeddings name different members: "
                               f"{sorted(fit_embeddings)} vs {sorted(threshold_embeddings)}")
        for name in fit_embeddings:
            if not _NAME.fullmatch(name):
                raise ProfileError(f"member name {name!r} is not a plain identifier")
        ff, tf = _as_table(fit_facts), _as_table(threshold_facts)
        if len(ff) == 0 or len(tf) == 0:
            raise ProfileError(f"a profile needs fit and held-out clips (got {len(ff)} and {len(tf)})")

        facts = {}
        for j, name in enumerate(FACTS):
            v = ff[:, j][np.isfinite(ff[:, j])]
            facts[name] = _fact_stats(name, v, band, margin, name in set(gate_facts)) if len(v) else None
        facts = {k: v for k, v in facts.items() if v is not None}

        members: dict[str, _MemberStats] = {}
        for name in sorted(fit_embeddings):
            x = np.asarray(fit_embeddings[name], dtype=np.float64)
            h = np.asarray(threshold_embeddings[name], dtype=np.float64)
            if x.ndim != 2 or h.ndim != 2 or x.shape[1] != h.shape[1]:
                raise ProfileError(f"member {name}: embeddings must be (n, D) with one D, got {x.shape} and {h.shape}")
            if len(x) != len(ff) or len(h) != len(tf):
                raise ProfileError(f"member {name}: {len(x)}/{len(h)} embedding rows for {len(ff)}/{len(tf)} clips")
            x = x[np.isfinite(x).all(axis=1)]
            n_h = int(np.isfinite(h).all(axis=1).sum())
            if len(x) < 2 or n_h < 1:
                raise ProfileError(f"member {name}: {len(x)} fit and {n_h} held-out clips with an embedding; "
                                   "a profile needs at least 2 and 1")
            st = _MemberStats(modality=(modalities or {}).get(name), dim=int(x.shape[1]), n_fit=len(x), n_threshold=n_h)
            if method == "mahalanobis":
                mean = x.mean(axis=0)
                sd = x.std(axis=0)
                sd = np.maximum(sd, std_floor * float(np.median(sd)) + 1e-12)
                lw = LedoitWolf(assume_centered=False).fit((x - mean) / sd)
                st.mean = mean
                st.precision = lw.precision_ / np.outer(sd, sd)
                st.precision = (st.precision + st.precision.T) / 2.0
                st.shrinkage = float(lw.shrinkage_)
            else:
                ref = _unit(x)
                if len(ref) > max_reference:
                    keep = np.sort(np.random.default_rng(seed).choice(len(ref), max_reference, replace=False))
                    ref = ref[keep]
                st.reference = ref.astype(np.float32)
            members[name] = st

        profile = cls(method=method, target_rate=target_rate, margin=margin, band=band, facts=facts,
                      members=members, global_threshold=math.nan, calibration={}, fit_splits=fit_splits,
                      threshold_split=threshold_split, n_fit=len(ff), n_threshold=len(tf), knn_k=knn_k,
                      std_floor=std_floor, fit_facts=ff, threshold_facts=tf,
                      threshold_scores=np.zeros(0), extra=extra)
        profile._calibrate(tf, {k: np.asarray(v, dtype=np.float64) for k, v in threshold_embeddings.items()})
        return profile

    def _calibrate(self, tf: np.ndarray, th: Mapping[str, np.ndarray]) -> None:
        """Per-member scales and the global factor on the held-out clips (module docstring)."""
        n = len(tf)
        rate = self.target_rate
        scaled = np.zeros(n)
        # Facts: the ratio to the stated margin's edge, scaled by its held-out (1 - rate)
        # quantile where that exceeds 1 (the margin is the least a band is widened by).
        fact_scale = {}
        for name, st in self.facts.items():
            st.widen = 1.0
            r = _fact_ratio(st, tf[:, FACTS.index(name)])
            ok = np.isfinite(r)
            q = float(np.sort(r[ok])[conformal_index(int(ok.sum()), rate)[0]]) if ok.any() else 1.0
            fact_scale[name] = max(1.0, min(q, _RATIO_CAP))
            if st.gated:
                scaled = np.fmax(scaled, np.minimum(r / fact_scale[name], _RATIO_CAP))
        dists = {}
        for name, st in self.members.items():
            d = self._distances(name, th[name])
            ok = np.isfinite(d)
            i, _ = conformal_index(int(ok.sum()), rate)
            st.scale = max(float(np.sort(d[ok])[i]), 1e-12)
            dists[name] = d
            scaled = np.fmax(scaled, d / st.scale)  # fmax: a NaN (member not judging) is ignored
        i, resolvable = conformal_index(n, rate)
        t = max(float(np.sort(scaled)[i]), 1e-12)
        self.global_threshold = t
        for name, st in self.facts.items():  # a band never narrower than the stated margin
            st.widen = max(1.0, t * fact_scale[name]) if st.gated else fact_scale[name]
        for name, st in self.members.items():
            st.threshold = t * st.scale
            d = dists[name]
            ok = np.isfinite(d)
            st.threshold_rate = float((d[ok] > st.threshold).mean()) if ok.any() else math.nan
        self.threshold_scores = self.ood_scores(tf, th)
        fact_out = np.zeros(n, bool)
        for name, st in self.facts.items():
            if st.gated:
                fact_out |= np.nan_to_num(_fact_ratio(st, tf[:, FACTS.index(name)]), nan=0.0) > 1.0
        self.calibration = {
            "n": n, "order_statistic": i + 1, "resolvable": bool(resolvable),
            "min_clips_to_resolve": math.ceil(1.0 / rate - 1.0),
            "global_factor": t,
            "threshold_rate": float((self.threshold_scores > 1.0).mean()),
            "threshold_fact_rate": float(fact_out.mean()),
        }
        log.info("reference profile: %d fit / %d held-out clips; held-out out-of-profile rate %.3f "
                 "(target %.3f)", self.n_fit, n, self.calibration["threshold_rate"], rate)

    # ------------------------------------------------------------------ scoring

    def _distances(self, member: str, x: np.ndarray) -> np.ndarray:
        """Distances of (n, D) embeddings (NaN rows stay NaN): Mahalanobis or k-th NN."""
        st = self.members[member]
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] != st.dim:
            raise ProfileError(f"member {member}: embedding has {x.shape[1]} features, the profile {st.dim}")
        ok = np.isfinite(x).all(axis=1)
        out = np.full(len(x), np.nan)
        if not ok.any():
            return out
        xv = x[ok]
        if self.method == "mahalanobis":
            assert st.mean is not None and st.precision is not None
            z = xv - st.mean
            q = np.einsum("ij,jk,ik->i", z, st.precision, z)
            out[ok] = np.sqrt(np.clip(q, 0.0, None))
        else:
            assert st.reference is not None
            ref = st.reference.astype(np.float64)
            d2 = np.clip(2.0 - 2.0 * _unit(xv) @ ref.T, 0.0, None)
            k = min(self.knn_k, ref.shape[0]) - 1
            out[ok] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
        return out

    def ood_scores(self, facts: Any, embeddings: Mapping[str, np.ndarray]) -> np.ndarray:
        """:attr:`OODResult.ood_score` of many persons at once (the benchmark's path).

        Args:
            facts: n fact rows (any form :meth:`fit` takes).
            embeddings: ``{member: (n, D)}``; members left out, or NaN rows, are not scored.
        """
        ft = _as_table(facts)
        score = np.zeros(len(ft))
        for name, st in self.facts.items():
            if st.gated:
                score = np.fmax(score, _fact_ratio(st, ft[:, FACTS.index(name)]))
        for name, x in embeddings.items():
            if name not in self.members:
                raise ProfileError(f"the profile has no member {name!r}; it has {sorted(self.members)}")
            d = self._distances(name, np.asarray(x))
            if len(d) != len(ft):
                raise ProfileError(f"member {name}: {len(d)} embeddings for {len(ft)} fact rows")
            score = np.fmax(score, d / self.members[name].threshold)
        return np.minimum(score, _RATIO_CAP)

    def score(self, facts: Mapping[str, Any], embeddings: Mapping[str, np.ndarray]) -> OODResult:
        """How far one person is from the profile.

        Args:
            facts: :func:`media_facts` (other keys are ignored; a missing or NaN fact is
                not checked).
            embeddings: ``{member: (D,)}`` the person's clip-mean embedding per member
                that judged it (an (N, D) array of windows is averaged first). Members
                the profile has but that are not given (e.g. audio members on a clip
                without audio) are listed in ``skipped``.

        Raises:
            ProfileError: an embedding for a member the profile lacks, or of the wrong size.
        """
        reasons: list[str] = []
        notes: list[str] = []
        skipped: list[str] = []
        ratios: list[float] = []
        fact_checks: dict[str, FactCheck] = {}
        for name in FACTS:
            st = self.facts.get(name)
            value = _num(facts.get(name))
            if st is None or math.isnan(value):
                skipped.append(name)
                continue
            r = float(min(_fact_ratio(st, np.array([value]))[0], _RATIO_CAP))
            out = r > 1.0
            fact_checks[name] = FactCheck(fact=name, value=value, q_lo=st.q_lo, q_hi=st.q_hi, flag_lo=st.flag_lo,
                                          flag_hi=st.flag_hi, ratio=r, out=out, gated=st.gated)
            if out:
                (reasons if st.gated else notes).append(self._fact_reason(name, value, st))
            if st.gated:
                ratios.append(r)
        member_checks: dict[str, MemberDistance] = {}
        member_reasons = []
        for name, x in sorted(embeddings.items()):
            if name not in self.members:
                raise ProfileError(f"the profile has no member {name!r}; it has {sorted(self.members)}")
            arr = np.asarray(x, dtype=np.float64)
            if arr.ndim == 2:
                arr = arr.mean(axis=0)
            d = float(self._distances(name, arr)[0])
            if math.isnan(d):
                skipped.append(name)
                continue
            st = self.members[name]
            r = float(min(d / st.threshold, _RATIO_CAP))
            member_checks[name] = MemberDistance(member=name, distance=d, threshold=st.threshold, ratio=r, out=r > 1.0)
            ratios.append(r)
            if r > 1.0:
                member_reasons.append((r, f"member {name} embedding distance {r:.1f}x its threshold"))
        skipped += sorted(set(self.members) - set(embeddings))
        reasons += [text for _, text in sorted(member_reasons, key=lambda t: -t[0])]
        score = max(ratios, default=0.0)
        return OODResult(ood_score=score, out=score > 1.0, reasons=reasons, members=member_checks,
                         facts=fact_checks, notes=notes, skipped=skipped)

    def _fact_reason(self, name: str, value: float, st: _FactStats) -> str:
        words = _LABELS.get(name, (name, "", ""))[0]
        if value > st.median:
            return (f"{words} {_fmt(name, value)} is above the profile's {_pct(self.band[1])} "
                    f"({_fmt(name, st.q_hi)}; out of profile above {_fmt(name, st.flag_hi)})")
        return (f"{words} {_fmt(name, value)} is below the profile's {_pct(self.band[0])} "
                f"({_fmt(name, st.q_lo)}; out of profile below {_fmt(name, st.flag_lo)})")

    def reference_facts(self, which: str = "fit") -> pd.DataFrame:
        """The reference rows of the facts (``fit`` or ``threshold`` clips) as a DataFrame
        with :data:`FACTS` columns: what drift monitoring compares the request log with."""
        import pandas as pd

        if which not in ("fit", "threshold"):
            raise ValueError(f"which must be 'fit' or 'threshold', got {which!r}")
        return pd.DataFrame(self.fit_facts if which == "fit" else self.threshold_facts, columns=list(FACTS))

    def summary(self) -> dict[str, Any]:
        """What the model card and reports say about the profile's scope (JSON-ready)."""
        spec = self._spec()
        return {k: spec[k] for k in ("method", "target_rate", "fit_splits", "threshold_split", "n_fit",
                                     "n_threshold", "calibration", "gate_facts")} | {
            "bands": {k: [v["flag_lo"], v["flag_hi"]] for k, v in spec["facts"].items()}}

    # ------------------------------------------------------------------ files

    def _spec(self) -> dict[str, Any]:
        facts = {}
        for name, st in self.facts.items():
            facts[name] = {"quantiles": {_qkey(q): v for q, v in st.quantiles.items()}, "median": st.median,
                           "mad": st.mad, "n": st.n, "q_lo": st.q_lo, "q_hi": st.q_hi, "margin_lo": st.margin_lo,
                           "margin_hi": st.margin_hi, "widen": st.widen, "flag_lo": st.flag_lo,
                           "flag_hi": st.flag_hi, "scale": "log" if st.log else "linear", "gated": st.gated}
        members = {}
        for name, st in self.members.items():
            members[name] = {"modality": st.modality, "dim": st.dim, "n_fit": st.n_fit, "n_threshold": st.n_threshold,
                             "threshold": st.threshold, "held_out_quantile": st.scale, "threshold_rate": st.threshold_rate,
                             "shrinkage": st.shrinkage}
        return plain({
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "method": self.method,
            "settings": {"margin": self.margin, "band": list(self.band), "knn_k": self.knn_k,
                         "std_floor": self.std_floor, "quantiles": list(QUANTILES)},
            "target_rate": self.target_rate, "fit_splits": list(self.fit_splits),
            "threshold_split": self.threshold_split, "n_fit": self.n_fit, "n_threshold": self.n_threshold,
            "fact_names": list(FACTS), "gate_facts": [f for f in FACTS if f in self.facts and self.facts[f].gated],
            "facts": facts, "members": members, "global_threshold": self.global_threshold,
            "calibration": self.calibration, "extra": self.extra,
        })

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"facts.fit": self.fit_facts, "facts.threshold": self.threshold_facts,
                  "scores.threshold": self.threshold_scores}
        for name, st in self.members.items():
            if st.mean is not None:
                arrays[f"{name}.mean"] = st.mean.astype(np.float64)
            if st.precision is not None:
                arrays[f"{name}.precision"] = st.precision.astype(np.float64)
            if st.reference is not None:
                arrays[f"{name}.reference"] = st.reference.astype(np.float32)
        return arrays

    def save(self, directory: Path | str) -> list[Path]:
        """Write ``profile.json`` and ``profile.npz`` into ``directory`` (created).

        Returns:
            The two paths (for the bundle's checksums).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        js = d / PROFILE_JSON
        js.write_text(json.dumps(self._spec(), indent=1, sort_keys=True, allow_nan=False) + "\n")
        npz = d / PROFILE_NPZ
        _write_npz(npz, self._arrays())
        return [js, npz]

    @classmethod
    def load(cls, directory: Path | str) -> ReferenceProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileError: a file is missing or malformed, or arrays do not match the JSON.
        """
        d = Path(directory)
        js, npz = d / PROFILE_JSON, d / PROFILE_NPZ
        for p in (js, npz):
            if not p.is_file():
                raise ProfileError(f"{d} holds no reference profile: {p.name} is missing")
        try:
            spec = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{js} is not valid JSON ({exc})") from None
        if spec.get("format") != PROFILE_FORMAT or spec.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{js}: not a {PROFILE_FORMAT} v{PROFILE_VERSION} file "
                               f"(format={spec.get('format')!r}, version={spec.get('version')!r})")
        if spec.get("fact_names") != list(FACTS):
            raise ProfileError(f"{js}: facts {spec.get('fact_names')} differ from this version's {list(FACTS)}")
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k]) for k in z.files}
            facts = {}
            for name, f in spec["facts"].items():
                facts[name] = _FactStats(quantiles={_qval(k): _f(v) for k, v in f["quantiles"].items()},
                                         median=_f(f["median"]), mad=_f(f["mad"]), n=int(f["n"]), q_lo=_f(f["q_lo"]),
                                         q_hi=_f(f["q_hi"]), margin_lo=_f(f["margin_lo"]), margin_hi=_f(f["margin_hi"]),
                                         log=f["scale"] == "log", gated=bool(f["gated"]), widen=_f(f["widen"]))
            members = {}
            method = spec["method"]
            for name, m in spec["members"].items():
                st = _MemberStats(modality=m["modality"], dim=int(m["dim"]), n_fit=int(m["n_fit"]),
                                  n_threshold=int(m["n_threshold"]), threshold=_f(m["threshold"]), scale=_f(m["held_out_quantile"]),
                                  threshold_rate=_f(m["threshold_rate"]), shrinkage=m.get("shrinkage"))
                if method == "mahalanobis":
                    st.mean, st.precision = arrays[f"{name}.mean"], arrays[f"{name}.precision"]
                    if st.mean.shape != (st.dim,) or st.precision.shape != (st.dim, st.dim):
                        raise ProfileError(f"{npz}: member {name}'s arrays do not have dimension {st.dim}")
                else:
                    st.reference = arrays[f"{name}.reference"]
                    if st.reference.ndim != 2 or st.reference.shape[1] != st.dim:
                        raise ProfileError(f"{npz}: member {name}'s reference set does not have dimension {st.dim}")
                members[name] = st
            s = spec["settings"]
            return cls(method=method, target_rate=spec["target_rate"], margin=s["margin"], band=tuple(s["band"]),
                       facts=facts, members=members, global_threshold=_f(spec["global_threshold"]),
                       calibration=spec["calibration"], fit_splits=spec["fit_splits"],
                       threshold_split=spec["threshold_split"], n_fit=spec["n_fit"], n_threshold=spec["n_threshold"],
                       knn_k=s["knn_k"], std_floor=s["std_floor"], fit_facts=arrays["facts.fit"],
                       threshold_facts=arrays["facts.threshold"], threshold_scores=arrays["scores.threshold"],
                       extra=spec.get("extra"))
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile, OSError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"reference profile {d} cannot be read: {type(exc).__name__}: {exc}") from None


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


def _qkey(q: float) -> str:
    return f"q{q * 100:g}"


def _qval(key: str) -> float:
    return float(key[1:]) / 100.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fact_stats(name: str, v: np.ndarray, band: tuple[float, float], margin: float, gated: bool) -> _FactStats:
    qs = np.quantile(v, QUANTILES)
    q_lo, q_hi = (float(x) for x in np.quantile(v, band))
    med = float(np.median(v))
    is_log = name in LOG_FACTS and bool((v > 0).all())
    if is_log:
        flag_lo, flag_hi = q_lo / (1.0 + margin), q_hi * (1.0 + margin)
    else:
        pad = margin * max(q_hi - q_lo, _FLOORS.get(name, 0.1 * abs(med)), 1e-9)
        flag_lo, flag_hi = q_lo - pad, q_hi + pad
    return _FactStats(quantiles={q: float(x) for q, x in zip(QUANTILES, qs, strict=True)}, median=med,
                      mad=float(np.median(np.abs(v - med))), n=len(v), q_lo=q_lo, q_hi=q_hi,
                      margin_lo=float(flag_lo), margin_hi=float(flag_hi), log=is_log, gated=gated)


def _fact_ratio(st: _FactStats, v: np.ndarray) -> np.ndarray:
    """Distance from the median over the distance of the band edge on that side (in log
    space for log facts): 1.0 at the flag edge (``flag_lo``/``flag_hi``), NaN for NaN, inf
    for a log fact <= 0."""
    v = np.asarray(v, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if st.log:
        bad = ok & (v <= 0)
        out[bad] = np.inf
        ok &= v > 0
        tv = np.log(np.where(ok, v, 1.0))
        med, lo, hi = math.log(st.median), math.log(st.margin_lo), math.log(st.margin_hi)
    else:
        tv, med, lo, hi = v, st.median, st.margin_lo, st.margin_hi
    up = max(hi - med, 1e-12) * st.widen
    down = max(med - lo, 1e-12) * st.widen
    with np.errstate(invalid="ignore"):
        r = np.where(tv >= med, (tv - med) / up, (med - tv) / down)
    out[ok] = r[ok]
    return out


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` (uncompressed zip of ``.npy``) with fixed timestamps: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# ============================================================================ for a bundle


def fit_profile(bundle: Bundle, features_dir: Path | str, *, fit_splits: Sequence[str] = ("train",),
                threshold_split: str | Sequence[str] = "val", target_rate: float = 0.02, method: str = "mahalanobis",
                margin: float = 0.25, gate_facts: Sequence[str] = GATED_FACTS, knn_k: int = 5,
                batch_size: int = 32, usable_statuses: Sequence[str] = ("ok",), seed: int = 0) -> ReferenceProfile:
    """Fit a bundle's reference profile on its in-distribution clips.

    Statistics come from ``fit_splits`` (the clips the members were trained on), the
    thresholds from ``threshold_split`` (held out from the statistics). Audio and
    audio-visual members are fitted on clips with audio only, video and audio-visual
    members on clips with a face track only (what they judge at analysis time).

    Args:
        bundle: the bundle whose members are embedded.
        features_dir: the features directory the bundle was trained from.
        fit_splits: splits the statistics are fitted on.
        threshold_split: the held-out split(s) the thresholds are set on (several are
            recorded joined by ``+``, e.g. ``val+test``).
        target_rate, method, margin, gate_facts, knn_k, seed: see :meth:`ReferenceProfile.fit`.
        batch_size: windows per forward pass.
        usable_statuses: extraction statuses of usable clips.

    Raises:
        ProfileError: the threshold split is also a fit split, or a split has no clip.
    """
    import pandas as pd

    from veracity.data import load_clips

    held_out = [threshold_split] if isinstance(threshold_split, str) else list(threshold_split)
    if set(held_out) & set(fit_splits) or not held_out:
        raise ProfileError(f"the threshold split(s) {held_out} must be held out from the fit splits {list(fit_splits)}")
    threshold_split = "+".join(held_out)
    features_dir = Path(features_dir)
    clips = load_clips(features_dir, [*fit_splits, *held_out], usable_statuses)
    index = pd.read_csv(features_dir / "index.csv")
    rows = {str(r["video_id"]): r for r in index.to_dict("records")}
    facts, face, audio = [], [], []
    for c in clips:
        rec = ClipRecord(c.record)
        facts.append(media_facts(rec, rows[c.video_id], c.track))
        face.append(rec.primary_track() is not None if c.track is None else c.track >= 0)
        audio.append(bool(c.has_audio))
    emb = clip_embeddings(bundle, clips, batch_size=batch_size)
    face_m, audio_m = np.array(face, bool), np.array(audio, bool)
    for m in bundle.members:
        if m.name not in emb:
            continue
        usable = np.ones(len(clips), bool)
        if m.modality in ("audio", "av"):
            usable &= audio_m
        if m.modality in ("video", "av"):
            usable &= face_m
        emb[m.name][~usable] = np.nan
    is_fit = np.array([c.split in set(fit_splits) for c in clips], bool)
    if not is_fit.any() or is_fit.all():
        raise ProfileError(f"{features_dir}: {int(is_fit.sum())} clips in {list(fit_splits)} and "
                           f"{int((~is_fit).sum())} in {threshold_split!r}; a profile needs both")
    table = _as_table(facts)
    return ReferenceProfile.fit(
        table[is_fit], {k: v[is_fit] for k, v in emb.items()}, table[~is_fit], {k: v[~is_fit] for k, v in emb.items()},
        target_rate=target_rate, method=method, margin=margin, gate_facts=gate_facts, knn_k=knn_k,
        modalities=bundle.modalities, fit_splits=fit_splits, threshold_split=threshold_split, seed=seed,
        extra={"contract": bundle.contract.to_dict()})
