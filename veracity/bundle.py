"""The bundle: the shipped detector as one verified directory (DESIGN §3).

Owns the bundle's on-disk format (save, load, verify every checksum), :class:`Bundle`
(members + pooling + calibrators + fusion + thresholds + evidence rules, and the forward
pass that scores windows through them), and what one scored video looks like
(:class:`Scored`). It is what the ``ensemble`` stage writes, what MLflow registers and
what :mod:`veracity.analyzer` (the one inference path, CLI and service) loads.

A bundle directory holds ``bundle.json`` and ``members/<name>.safetensors`` (and
``members/<name>.onnx`` where the member exports). ``bundle.json`` lists the sha256 of
every other file; :meth:`Bundle.load` refuses a bundle whose files do not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from veracity.calibration import Calibrator, Pooling
from veracity.contract import DataContract
from veracity.data import WindowDataset, collate
from veracity.decision import (
    Disagreement,
    Fallback,
    Fusion,
    Thresholds,
    agreement,
    calibrate_torch,
    modality_scores,
)
from veracity.lineage import json_default, sha256_file
from veracity.models import create_detector, detector_info
from veracity.models.base import Batch
from veracity.models.checkpoint import MODEL_META, load_member

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "veracity-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
# The modalities a file can be judged on alone (a file without the other one).
ALONE_MODALITIES = ("video", "audio")
PROFILE_DIR = "profile"


@dataclass(frozen=True)
class MemberOutput:
    """One member's outputs for a batch of windows (numpy, one row per window)."""

    logits: np.ndarray
    frame_scores: np.ndarray | None = None  # (B, T) per-frame scores of a member that looks at faces
    features: np.ndarray | None = None  # (B, F) the embedding before the head (the reference profile's input)

    def rows(self, start: int, stop: int) -> MemberOutput:
        """The outputs of windows ``start:stop``."""
        cut = (lambda a: None if a is None else a[start:stop])
        return MemberOutput(self.logits[start:stop], cut(self.frame_scores), cut(self.features))


@dataclass(frozen=True)
class MemberFailure:
    """A member that gave no output for a batch: ``time_limit`` or ``error``, and why."""

    reason: str
    message: str

    def rows(self, start: int, stop: int) -> MemberFailure:
        return self


def _rows(t: Any, flat: bool = False) -> np.ndarray | None:
    if not isinstance(t, torch.Tensor):
        return None
    a = t.detach().float().cpu().numpy()
    return a.reshape(a.shape[0], -1) if flat else a


class BundleError(RuntimeError):
    """A bundle that cannot be used: missing, malformed, or not matching its checksums."""


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


class SharedPart(torch.nn.Module):
    """One part (a branch, a sync head) that several members hold the same weights of,
    computed once per batch and handed to each of them.

    A warm-started member keeps the parts it started from frozen (the audio-visual fusion
    member holds the video specialist's video branch and the lip-sync member's sync head,
    bit for bit), so the same tensors went through the same weights twice per window. The
    answer is kept for the arguments it was computed on (the same tensor objects) until
    :meth:`forget`, which :meth:`Bundle.forward` calls after every batch.
    """

    def __init__(self, part: torch.nn.Module):
        super().__init__()
        self.part = part
        self._lock = threading.Lock()
        self._args: tuple[Any, ...] | None = None
        self._out: Any = None

    def forward(self, *args: Any) -> Any:  # noqa: D102 - the part's own forward
        if torch.is_grad_enabled():  # a gradient pass (Grad-CAM, attacks) gets a graph of its own
            return self.part(*args)
        with self._lock:
            same = self._args is not None and len(args) == len(self._args) and all(
                a is b for a, b in zip(args, self._args, strict=True))
            if not same:
                self._out, self._args = self.part(*args), args
            return self._out

    def forget(self) -> None:
        """Drop the kept answer (and the batch it holds on to)."""
        with self._lock:
            self._args, self._out = None, None


def _weights_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, types, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def share_parts(models: Sequence[torch.nn.Module]) -> list[SharedPart]:
    """Make the members' parts with identical weights one :class:`SharedPart`, in place.

    Only for inference (the models in eval mode): the shared answer is computed once per
    batch. A part is what a detector's ``parts()`` names; two are shared when class,
    configuration and every parameter and buffer are equal. Returns the shared parts.
    """
    # By class and configuration first: only parts that may be equal get their weights hashed.
    alike: dict[tuple[Any, ...], list[tuple[torch.nn.Module, str]]] = {}
    for model in models:
        if not hasattr(model, "parts"):
            continue
        for part in model.parts().values():
            attr = next((n for n, child in model.named_children() if child is part), None)
            if attr is not None:  # a part nested deeper stays unshared
                alike.setdefault((type(part), repr(part)), []).append((model, attr))
    groups: dict[str, list[tuple[torch.nn.Module, str]]] = {}
    for holders in alike.values():
        if len(holders) > 1:
            for model, attr in holders:
                groups.setdefault(_weights_digest(getattr(model, attr)), []).append((model, attr))
    shared = []
    for holders in groups.values():
        if len({id(model) for model, _ in holders}) < 2:
            continue
        one = SharedPart(getattr(*holders[0]))
        for model, attr in holders:
            setattr(model, attr, one)
        shared.append(one)
    return shared


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

    min_face_ratio: float
    min_duration_s: float
    require_audio: bool


@dataclass
class Scored:
    """One video scored by a bundle: per-member and fused probabilities and the call.

    ``judged`` names the modalities whose members judged (every member's, or one
    modality's alone: :meth:`Bundle.score`); the member dicts hold those members only.
    ``reason`` says why the call is ``UNCERTAIN`` when the thresholds did not make it so
    (``member_disagreement``); ``disagreement`` is the pattern's distance over the bound
    (1.0 at the bound; None where no rule applies).
    """

    member_logits: dict[str, float]
    member_probs: dict[str, float]
    modality_probs: dict[str, float]
    probability: float
    verdict: str
    agreement: dict[str, float | None]
    judged: tuple[str, ...] = ()
    reason: str | None = None
    disagreement: float | None = None


class Bundle:
    """Members + pooling + calibrators + fusion + thresholds: the shipped detector.

    Build one with :meth:`assemble` (from trained members and a calibration file) or
    :meth:`load` (from a saved, verified bundle directory).

    ``thresholds`` make the call on the fused probability; ``modality_thresholds`` (by
    modality, e.g. ``video``) make it on one modality alone, on the highest calibrated
    probability of its members (:func:`~veracity.decision.modality_scores`): what judges a
    batch of still frames (:mod:`veracity.frames`). A bundle made before ``calibrate``
    fitted them has none (an empty dict). ``fallbacks`` (by member set) make it when some
    members gave no answer (:meth:`score` with ``members``); none in older bundles.
    """

    def __init__(self, contract: DataContract, members: list[BundleMember], fusion: Fusion,
                 thresholds: Thresholds, evidence: Evidence | None, spec: dict[str, Any] | None = None,
                 root: Path | None = None, device: torch.device | str = "cpu",
                 modality_thresholds: Mapping[str, Thresholds] | None = None, profile: Any = None,
                 disagreement: Disagreement | None = None, fallbacks: Sequence[Fallback] = ()):
        names = [m.name for m in members]
        if list(fusion.members) != names:
            raise BundleError(f"fusion members {list(fusion.members)} differ from bundle members {names}")
        self.contract = contract
        self.members = members
        self.fusion = fusion
        self.thresholds = thresholds
        self.modality_thresholds: dict[str, Thresholds] = dict(modality_thresholds or {})
        # The reference profile (veracity.profile.ReferenceProfile): what the bundle was
        # trained and validated on; None for a bundle that predates it (no OOD check).
        self.profile = profile
        # When split members make the call UNCERTAIN (fitted by calibrate); None: never.
        self.disagreement = disagreement
        if disagreement is not None and list(disagreement.members) != names:
            raise BundleError(f"disagreement members {list(disagreement.members)} differ from bundle members {names}")
        self.fallbacks: dict[frozenset[str], Fallback] = {frozenset(f.members): f for f in fallbacks}
        strangers = sorted({n for f in fallbacks for n in f.members} - set(names))
        if strangers:
            raise BundleError(f"fallbacks name members {strangers} the bundle does not have ({names})")
        self.evidence = evidence
        self.spec = spec or {}
        self.root = root
        self.device = torch.device(device)
        # The dtype the PyTorch members' forward passes autocast to (None: fp32); set by
        # load's ``precision``. The calibrators and thresholds were fitted on fp32 logits.
        self.autocast: torch.dtype | None = None
        self._pool: Any = None  # threads for members under a time limit (forward's timeout_s)
        self._shared: list[SharedPart] = []  # parts computed once per forward (see share_parts)

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

    def judges_alone(self, modality: str) -> list[str]:
        """The members that judge a file on ``modality`` alone (empty: the bundle cannot).

        Only ``video`` or ``audio`` can be judged alone (an audio-visual member needs
        both), and only with validation-fitted thresholds of their own
        (``modality_thresholds``); the members are those of that modality.
        """
        if modality not in ALONE_MODALITIES or modality not in self.modality_thresholds:
            return []
        return [m.name for m in self.members if m.modality == modality]

    def thresholds_for(self, alone: str | None = None, members: Sequence[str] | None = None) -> Thresholds:
        """The thresholds a call is made with: the fused ones, one modality's alone, or those
        of the fallback for ``members`` when they are fewer than the bundle's."""
        if alone is not None:
            return self.modality_thresholds[alone]
        fb = self.fallback(members)
        return self.thresholds if fb is None else fb.thresholds

    def fallback(self, members: Sequence[str] | None) -> Fallback | None:
        """The fallback that judges with ``members`` only; None when they are all the members.

        Raises:
            BundleError: the bundle has no fallback for that set (see
                :func:`~veracity.decision.fallback_subsets`).
        """
        if members is None or set(members) == set(self.names):
            return None
        fb = self.fallbacks.get(frozenset(members))
        if fb is None:
            raise BundleError(f"this bundle has no fallback for members {sorted(members)}")
        return fb

    def can_judge_with(self, members: Sequence[str]) -> bool:
        """Whether :meth:`score` can make a call from ``members`` alone."""
        return set(members) == set(self.names) or frozenset(members) in self.fallbacks

    # --------------------------------------------------------------- construction

    @classmethod
    def assemble(cls, models: Path | str, calibration: Mapping[str, Any], evidence: Evidence | None = None,
                 device: torch.device | str = "cpu") -> Bundle:
        """Trained members (``models/<name>``) + a calibration file's content, in memory.

        Without ``evidence`` (the evidence rules of ``ensemble``) the bundle scores windows
        but cannot be saved: a shipped bundle always says when a video cannot be judged.
        """
        models = Path(models)
        fusion = Fusion.from_dict(calibration["fusion"])
        members = []
        contract = None
        for name in fusion.members:
            meta_path = models / name / MODEL_META
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
                   evidence, device=device, modality_thresholds=_modality_thresholds(calibration),
                   disagreement=_disagreement(calibration), fallbacks=_fallbacks(calibration))

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

        if self.evidence is None:
            raise BundleError("a bundle is saved with its evidence rules (Bundle.assemble(..., evidence=...))")
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
                **({"modality_thresholds": {k: v.to_dict() for k, v in self.modality_thresholds.items()}}
                   if self.modality_thresholds else {}),
                **({"disagreement": self.disagreement.to_dict()} if self.disagreement is not None else {}),
                **({"fallbacks": [f.to_dict() for f in self.fallbacks.values()]} if self.fallbacks else {}),
                "evidence": vars(self.evidence).copy(), **dict(extra or {})}
        if self.profile is not None:  # plain JSON + NPZ under profile/, checksummed like the weights
            self.profile.save(out / PROFILE_DIR)
            spec["profile"] = {"path": PROFILE_DIR, **self.profile.summary()}
        spec["files"] = {rel: sha256_file(out / rel) for rel in _bundle_files(out)}
        (out / BUNDLE_JSON).write_text(json.dumps(spec, indent=1, sort_keys=False, default=json_default) + "\n")
        self.spec, self.root = spec, out
        return out

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu", runtime: str = "torch",
             precision: str = "auto") -> Bundle:
        """Load a bundle after verifying every checksum.

        Args:
            path: the bundle directory.
            device: where the PyTorch members run.
            runtime: ``torch``, or ``onnx`` to run members that have an ONNX file with
                ONNX Runtime on CPU (the others stay in PyTorch).
            precision: ``auto``, ``fp32`` or ``bf16``: what the PyTorch members' forward
                passes autocast to (:func:`veracity.devices.resolve_precision`).

        Raises:
            BundleError: a file does not match ``bundle.json`` (named), or the bundle
                cannot be rebuilt.
            ValueError: an unknown runtime or precision, or bf16 on a GPU without it.
        """
        from safetensors.torch import load_file

        from veracity.devices import resolve_precision

        if runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        autocast = resolve_precision(precision, torch.device(device))
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
            bundle = cls(contract, members, Fusion.from_dict(spec["fusion"]), Thresholds.from_dict(spec["thresholds"]),
                         Evidence(**ev), spec=spec, root=root, device=device,
                         modality_thresholds=_modality_thresholds(spec), profile=_load_profile(root, spec),
                         disagreement=_disagreement(spec), fallbacks=_fallbacks(spec))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BundleError(f"bundle {root} cannot be rebuilt: {type(exc).__name__}: {exc}") from None
        bundle.autocast = autocast
        bundle.share_parts()
        return bundle

    def share_parts(self) -> None:
        """Compute the members' identical parts once per batch (:func:`share_parts`).

        For a bundle that only scores: its members' ``state_dict`` then names the shared
        parts' weights differently, so :meth:`save` is for a bundle that never shared.
        """
        self._shared += share_parts([m.model for m in self.members
                                     if m.model is not None and m.onnx_session is None])

    # --------------------------------------------------------------- scoring

    def window_logits(self, batch: Batch, members: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Members' window logits for one batch: ``{member: (B,) array}``.

        Args:
            batch: the windows.
            members: run only these members (by name; e.g. the video members for a batch
                without audio); None runs every member.

        Raises:
            BundleError: ``members`` names a member the bundle does not have.
        """
        return {k: v.logits for k, v in self.forward(batch, members).items() if isinstance(v, MemberOutput)}

    def forward(self, batch: Batch, members: Sequence[str] | None = None,
                timeout_s: float | None = None) -> dict[str, MemberOutput | MemberFailure]:
        """Members' outputs for one batch: logits, and where a member gives them its per-frame
        scores and embedding (ONNX members: logits only). Rows follow the batch's rows, so a
        batch made of several callers' windows splits back by row ranges.

        With ``timeout_s``, each member runs on a thread of its own (all at once on CUDA,
        one after the other on CPU, where they would only share the cores) and must answer
        within ``timeout_s`` of its start; a member that does not, or that raises, gets a
        :class:`MemberFailure` instead of outputs (it is left running; its answer is dropped).
        Without it, members run here and their errors propagate.

        Raises:
            BundleError: ``members`` names a member the bundle does not have.
        """
        if members is not None:
            unknown = sorted(set(members) - set(self.names))
            if unknown:
                raise BundleError(f"no member(s) {unknown} in this bundle; it has {self.names}")
        chosen = self.members if members is None else [m for m in self.members if m.name in set(members)]
        gpu_batch = batch.to(self.device) if any(m.onnx_session is None for m in chosen) else batch
        try:
            return self._forward(chosen, batch, gpu_batch, timeout_s)
        finally:
            for part in self._shared:  # what a shared part computed is this batch's only
                part.forget()

    def _forward(self, chosen: list[BundleMember], batch: Batch, gpu_batch: Batch,
                 timeout_s: float | None) -> dict[str, MemberOutput | MemberFailure]:
        if timeout_s is None:
            return {m.name: self._member_forward(m, batch, gpu_batch) for m in chosen}
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # Twice the members: a member left running past its limit does not starve the next call.
            self._pool = ThreadPoolExecutor(2 * len(self.members), thread_name_prefix="veracity-member")
        deadline = time.monotonic() + timeout_s
        out: dict[str, MemberOutput | MemberFailure] = {}
        parallel = self.device.type == "cuda"
        futures = {m.name: self._pool.submit(self._member_forward, m, batch, gpu_batch) for m in chosen} \
            if parallel else {}
        for m in chosen:
            fut = futures.get(m.name)
            if fut is None:  # one after the other: each member's limit runs from its own start
                fut = self._pool.submit(self._member_forward, m, batch, gpu_batch)
                deadline = time.monotonic() + timeout_s
            try:
                out[m.name] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                out[m.name] = MemberFailure("time_limit", f"no answer within {timeout_s:g} s")
            except Exception as exc:  # noqa: BLE001 - a failed member is named, the others go on
                log.warning("member %s failed", m.name, exc_info=True)
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                out[m.name] = MemberFailure("error", f"{type(exc).__name__}: {text}"[:300])
        return out

    def _member_forward(self, m: BundleMember, batch: Batch, gpu_batch: Batch) -> MemberOutput:
        with torch.inference_mode():
            if m.onnx_session is not None:
                from veracity.onnx_export import run_session

                return MemberOutput(run_session(m.onnx_session, batch))
            assert m.model is not None
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                o = m.model(gpu_batch)
            return MemberOutput(o.logits.float().cpu().numpy(), _rows(getattr(o, "frame_scores", None)),
                                _rows(getattr(o, "features", None), flat=True))

    def member_video(self, window_logits: Mapping[str, np.ndarray],
                     members: Sequence[str] | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Pooled logit and calibrated probability per member (``members``, default all), for one video's windows."""
        chosen = self.members if members is None else [m for m in self.members if m.name in set(members)]
        z = {m.name: m.pooling.one(window_logits[m.name]) for m in chosen}
        p = {m.name: float(m.calibrator.prob(z[m.name])) for m in chosen}
        return z, p

    def score(self, window_logits: Mapping[str, np.ndarray], alone: str | None = None,
              members: Sequence[str] | None = None) -> Scored:
        """One video: member windows -> pooled -> calibrated -> fused -> REAL/UNCERTAIN/FAKE.

        Args:
            window_logits: ``{member: window logits}`` (only the judging members' are read).
            alone: judge on this modality alone (e.g. ``video`` for a file without usable
                audio): its members' highest calibrated probability against its
                validation-fitted thresholds (:meth:`judges_alone`), no fusion and no
                disagreement rule. None: the members, fused.
            members: with ``alone`` None, the members that answered; fewer than the
                bundle's are fused by their fallback (:meth:`fallback`: its own fusion and
                thresholds, no disagreement rule). None: every member.

        Raises:
            BundleError: ``alone`` names a modality the bundle cannot judge alone, or
                ``members`` a set without a fallback.
        """
        if alone is not None:
            names = self.judges_alone(alone)
            if not names:
                raise BundleError(f"this bundle cannot judge {alone} alone: it has no {alone} members "
                                  "or no thresholds fitted for them")
            z, p = self.member_video(window_logits, names)
            mods = {n: self.modalities[n] for n in names}
            prob = max(p.values())
            return Scored(member_logits=z, member_probs=p, modality_probs=modality_scores(p, mods),
                          probability=prob, verdict=self.thresholds_for(alone).verdict(prob),
                          agreement=agreement(p, prob, mods), judged=(alone,))
        fb = self.fallback(members)
        if fb is not None:
            z, p = self.member_video(window_logits, fb.members)
            mods = {n: self.modalities[n] for n in fb.members}
            prob = float(fb.fusion.prob(np.array([[p[n] for n in fb.members]]))[0])
            return Scored(member_logits=z, member_probs=p, modality_probs=modality_scores(p, mods),
                          probability=prob, verdict=fb.thresholds.verdict(prob), agreement=agreement(p, prob, mods),
                          judged=tuple(sorted(set(mods.values()))))
        z, p = self.member_video(window_logits)
        row = np.array([[p[n] for n in self.names]])
        fused = float(self.fusion.prob(row)[0])
        verdict, reason, dis = self.thresholds.verdict(fused), None, None
        if self.disagreement is not None:
            dis = float(self.disagreement.distance(row)[0] / self.disagreement.bound)
            if verdict != "UNCERTAIN" and dis > 1.0 and bool(self.disagreement.split(row)[0]):
                verdict, reason = "UNCERTAIN", "member_disagreement"
        return Scored(member_logits=z, member_probs=p, modality_probs=modality_scores(p, self.modalities),
                      probability=fused, verdict=verdict, agreement=agreement(p, fused, self.modalities),
                      judged=tuple(sorted(set(self.modalities.values()))), reason=reason, disagreement=dis)

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
        probs = base[[f"p_{n}" for n in self.names]].to_numpy()
        base["prob"] = self.fusion.prob(probs)
        base["verdict"] = self.thresholds.verdicts(base["prob"].to_numpy())
        if self.disagreement is not None:
            base.loc[self.disagreement.flags(probs), "verdict"] = "UNCERTAIN"
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


def _load_profile(root: Path, spec: Mapping[str, Any]) -> Any:
    """The bundle's reference profile, or None when it was saved without one."""
    if not spec.get("profile"):
        return None
    from veracity.profile import ReferenceProfile

    return ReferenceProfile.load(root / str(spec["profile"].get("path", PROFILE_DIR)))


def _disagreement(spec: Mapping[str, Any]) -> Disagreement | None:
    """The disagreement rule of a calibration file or bundle.json (None when it has none)."""
    raw = spec.get("disagreement")
    return Disagreement.from_dict(raw) if raw else None


def _fallbacks(spec: Mapping[str, Any]) -> list[Fallback]:
    """The fallbacks of a calibration file or bundle.json (none when it predates them)."""
    return [Fallback.from_dict(f) for f in spec.get("fallbacks") or ()]


def _modality_thresholds(spec: Mapping[str, Any]) -> dict[str, Thresholds]:
    """``modality_thresholds`` of a calibration file or bundle.json (empty when it predates them)."""
    raw = spec.get("modality_thresholds") or {}
    return {str(k): Thresholds.from_dict(v) for k, v in raw.items()}


def window_table(bundle: Bundle, clips: Sequence[Any], batch_size: int = 32) -> pd.DataFrame:
    """Every member's logit for every window of ``clips``, through the bundle's forward."""
    from torch.utils.data import DataLoader

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




def first_windows(clips: Sequence[Any], contract: DataContract, n: int) -> WindowDataset:
    """A dataset of the first clips holding at least ``n`` windows (the export example)."""
    ds = WindowDataset(list(clips)[: max(1, n)], contract)
    if len(ds) < n:
        raise BundleError(f"need {n} windows for the export example, the test split has {len(ds)}")
    return ds

