"""File -> report: the one inference path of Veracity (CLI ``veracity analyze``, MLflow, service).

A file goes through exactly the code the training data went through, so nothing differs
between what was evaluated and what is served:

1. **Extraction**: :func:`veracity.extract.extract_clip` streams the file into a record in
   a temporary directory (frames at the contract's fps with their true timestamps, face
   tracks and crops, optical flow, 16 kHz audio, voice activity), with the extraction
   settings the bundle was trained with (``bundle.json["extract"]``).
2. **Evidence rules**: a file that does not exist, cannot be decoded, is too short or too
   long, or shows no face often enough gets ``ABSTAIN`` with that reason and no
   probability. A video without a face is never REAL. A file without usable audio (no
   stream, or silent) is judged on video alone: by the video members, against the
   video-only thresholds fitted on validation (:meth:`Bundle.score` with ``alone``); the
   report's ``judged`` says so. It abstains (``no_audio`` / ``silent``) only when the
   bundle cannot judge video alone or its evidence rules require audio.
3. **Windows** of each kept face track (:class:`veracity.data.WindowDataset`, evaluation
   stride) -> :meth:`Bundle.window_logits` in batches -> :meth:`Bundle.score` (pooling,
   calibration, fusion, thresholds; split members in a pattern validation never showed
   make the call ``UNCERTAIN``, reason ``member_disagreement``). Every kept person is
   scored on their own; the report's call is the most suspicious person's.
4. **Report**: verdict, calibrated probability, thresholds, per-member and per-modality
   scores, agreement, a timeline of segments (each window scored as a one-window video),
   the most suspicious frames with timestamps, per-person results, media facts, timings,
   the bundle's identity and, on request, explanations (:mod:`veracity.explain`).

Still frames (the meeting server's batches of one participant) take the same path from
step 2 on, through extraction's own video code: :meth:`Analyzer.check_frames`, with the
logic in :mod:`veracity.frames`.

Nothing here raises for a bad file: any failure inside :meth:`Analyzer.analyze` becomes
``ABSTAIN`` with reason ``error`` and a one-line message (the traceback goes to the log at
WARNING: it is a bug to fix, not a verdict on the file). Reasons are extraction's statuses
(:data:`veracity.status.ABSTAIN_REASONS`): a file that does not exist is ``missing``, as in
an extraction index. Only a bad bundle raises
(:class:`veracity.bundle.BundleError`, when the analyzer is built).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veracity.batching import WindowBatcher
from veracity.bundle import BUNDLE_JSON, Bundle, BundleError, MemberFailure, Scored
from veracity.config import AnalyzeConfig, ExtractConfig
from veracity.data import ClipInfo, WindowDataset, collate
from veracity.decision import modality_scores
from veracity.devices import precision_name, resolve_device
from veracity.extract import extract_clip, fingerprint, prefetch
from veracity.features import ClipRecord, record_dir
from veracity.frames import FrameBatchReport, score_frames
from veracity.lineage import plain, sha256_file
from veracity.status import ABSTAIN_REASONS, OK
from veracity.stream import WindowStream

__all__ = ["REASONS", "AnalysisStopped", "Analyzer", "BundleError", "Progress", "Report", "folder_inputs",
           "report_text"]

log = logging.getLogger(__name__)

REPORT_VERSION = 1
# Why a file may get ABSTAIN; the analyzer's public name for veracity.status.ABSTAIN_REASONS.
REASONS = ABSTAIN_REASONS
_CLIP_ID = "clip"


@dataclass
class Report:
    """What an analysis returns (DESIGN §3 "Report").

    Attributes:
        path: the file analysed.
        verdict: ``FAKE``, ``UNCERTAIN``, ``REAL`` or ``ABSTAIN``.
        probability: calibrated fused probability of fake (None for ABSTAIN).
        reason: why it abstained (one of :data:`REASONS`), or why it is UNCERTAIN when the
            thresholds alone did not make it so (:data:`veracity.status.UNCERTAIN_REASONS`);
            else None.
        message: one line for people.
        thresholds: ``{real_below, fake_at}`` used for the call (the video-only ones when
            judged on video alone, a fallback's when members gave no answer).
        members: per member: modality, pooled logit and calibrated probability, whether it
            judged (``judged``; a member that did not has no scores) and whether its score
            means anything (``reliable``: not out of profile).
        judged: the modalities whose members judged (``["audio", "av", "video"]``, or
            ``["video"]`` for a file without usable audio); empty when it abstained early.
        modalities: per modality, the highest calibrated member probability.
        agreement: model agreement, model spread and modality agreement.
        person: track id of the person the call is about (the most suspicious one).
        persons: every kept face track scored on its own (see :meth:`Analyzer.analyze`),
            with its timeline and ``window_scores`` (each window's fused and per-modality
            probability, for a chart).
        timeline: segments ``{start_s, end_s, probability, verdict, windows}`` in time order.
        top_frames: the most suspicious frames ``{time_s, frame, track, window_probability,
            frame_score, box}``.
        media: duration, fps, size, audio, frames sampled, face ratio.
        timings: seconds spent per step.
        bundle: identity of the bundle (sha256 of ``bundle.json``), members, runtime.
        explanations: Grad-CAM overlays, audio anomaly segments, modality agreement
            (only when asked for).
        status: the extraction status of the file.
        ood: the reference profile's verdict on the person the call is about.
        failed_members: members that gave no answer in time or failed (``{name: why}``);
            the call was made without them (by the others' fallback, or on video alone),
            or is ``ABSTAIN`` ``member_failed`` when the rest cannot judge.
        disagreement: the members' pattern distance over its bound (above 1 and split:
            ``member_disagreement``); None when judged alone or the bundle has no rule.
    """

    path: str
    verdict: str
    probability: float | None
    reason: str | None = None
    message: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    modalities: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float | None] = field(default_factory=dict)
    person: int | None = None
    persons: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    top_frames: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    explanations: dict[str, Any] | None = None
    status: str | None = None
    ood: dict[str, Any] | None = None
    judged: list[str] = field(default_factory=list)
    disagreement: float | None = None
    failed_members: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (numbers as plain floats/ints, NaN as None, paths as strings)."""
        return {"version": REPORT_VERSION, **plain(asdict(self))}


def folder_inputs(directory: Path | str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """What ``analyze DIR`` does with each entry directly inside ``directory``, sorted by name.

    Returns:
        ``(files, skipped)``: every file is analysed, whatever its extension (an audio
        file, an image or a damaged video gets its own precise ABSTAIN rather than being
        passed over without a word); ``skipped`` names each entry that is not analysed,
        with the reason (sub-folders are not searched).
    """
    files, skipped = [], []
    for p in sorted(Path(directory).iterdir()):
        if p.is_file():
            files.append(p)
        else:
            skipped.append((p, "a folder: not searched (analyse it on its own)" if p.is_dir()
                            else "not a regular file"))
    return files, skipped


def extract_config_of(spec: Mapping[str, Any]) -> ExtractConfig:
    """The extraction settings a bundle was trained with (``bundle.json["extract"]``).

    Keys this version does not know are dropped (a newer bundle still loads); a bundle
    without the entry gets the defaults, never the caller's ``params.yaml``.
    """
    raw = spec.get("extract")
    if not isinstance(raw, Mapping):
        return ExtractConfig()
    known = {k: v for k, v in raw.items() if k in ExtractConfig.model_fields}
    return ExtractConfig(**known)


@dataclass
class _Window:
    start: int  # first row of the track's crops
    length: int  # real (not padded) frames
    start_s: float
    end_s: float


@dataclass
class _Person:
    track: int
    scored: Scored
    windows: list[_Window]
    window_logits: dict[str, np.ndarray]
    window_probs: np.ndarray  # fused probability of each window scored alone
    member_window_probs: dict[str, np.ndarray]  # calibrated, each window alone
    dataset: WindowDataset
    rows: np.ndarray
    frame_scores: dict[str, np.ndarray]  # (n_windows, T) per-frame logits of members that see faces
    timeline: list[dict[str, Any]] = field(default_factory=list)
    top_frames: list[dict[str, Any]] = field(default_factory=list)
    ood: Any = None  # veracity.profile.OODResult, when the bundle has a reference profile
    alone: str | None = None  # the modality judged alone (None: every member)
    failed: dict[str, str] = field(default_factory=dict)  # members that gave no answer, and why

    @property
    def out_of_profile(self) -> bool:
        return self.ood is not None and bool(self.ood.out)


class AnalysisStopped(Exception):  # noqa: N818 - a request to stop, not a failure
    """Raised by a ``progress`` callback to end an analysis (e.g. a cancelled job)."""


Progress = Callable[[str, float], None]


def _no_progress(phase: str, fraction: float) -> None:
    return None


class _Abstain(Exception):  # noqa: N818 - control flow inside the analyzer, never escapes
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Analyzer:
    """Analyse video files with a bundle.

    Args:
        bundle: a loaded :class:`Bundle`, or the path of a bundle directory (loaded and
            verified here).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...; ignored for a
            loaded bundle.
        runtime: ``torch``, or ``onnx`` to run members that have an ONNX file with ONNX
            Runtime; ignored for a loaded bundle.
        cfg: batch size, number of suspicious frames, segment merging.
        batch_windows: with threads sharing this analyzer (a server), join their windows in
            forward passes of up to this many (:mod:`veracity.batching`); 0 runs each
            caller's batches on its own.
        batch_wait_s: longest a batch waits for other callers' windows.
        member_timeout_s: each member must answer a forward pass within this many seconds
            (members run in parallel on CUDA); one that does not, or fails, is left out of
            the call and named in the report (:attr:`Report.failed_members`). None: no
            limit, and a member's error fails the analysis (``ABSTAIN`` ``error``).

    Raises:
        BundleError: the bundle directory is missing, malformed, or a file does not match
            its checksum (the message names the file).
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", runtime: str = "torch",
                 cfg: AnalyzeConfig | None = None, batch_windows: int = 0, batch_wait_s: float = 0.01,
                 member_timeout_s: float | None = None):
        self.cfg = cfg or AnalyzeConfig()
        # Held around the members' forward passes and Grad-CAM (whose hooks must see one
        # caller's windows): extraction and reporting run in parallel.
        self._lock = threading.Lock()
        if isinstance(bundle, Bundle):
            self.bundle = bundle
        else:
            self.bundle = Bundle.load(bundle, resolve_device(device), runtime, self.cfg.precision)
        b = self.bundle
        self.member_timeout_s = member_timeout_s
        self.batcher = (WindowBatcher(functools.partial(b.forward, timeout_s=member_timeout_s), batch_windows,
                                      batch_wait_s, lock=self._lock) if batch_windows > 0 else None)
        self.contract = b.contract
        self.extract_cfg = extract_config_of(b.spec)
        self.fingerprint = fingerprint(self.extract_cfg, self.contract)
        spec_file = Path(b.root) / BUNDLE_JSON if b.root is not None else None
        self.identity = {
            "sha256": sha256_file(spec_file) if spec_file is not None and spec_file.is_file() else None,
            "path": str(b.root) if b.root is not None else None,
            "members": b.names,
            "fusion": b.fusion.rule,
            "runtime": {m.name: "onnx" if m.onnx_session is not None else "torch" for m in b.members},
            "device": str(b.device),
            "precision": precision_name(b.autocast),
        }

    # ------------------------------------------------------------------ public API

    def close(self) -> None:
        """Stop the shared batcher's thread (callers still running finish on their own)."""
        if self.batcher is not None:
            self.batcher.close()

    def analyze(self, path: Path | str, explain: bool = False, explain_dir: Path | None = None,
                progress: Progress | None = None) -> Report:
        """Analyse one file; never raises for a bad file (ABSTAIN with a reason instead).

        Args:
            path: the video file.
            explain: add Grad-CAM overlays, audio anomaly segments and modality agreement.
            explain_dir: where overlay PNGs go (with ``explain``); None writes none.
            progress: called with a phase name and the fraction done at each phase; it may
                raise :class:`AnalysisStopped` to end the analysis (a cancelled job).

        Returns:
            The :class:`Report`.

        Raises:
            AnalysisStopped: only when ``progress`` raised it.
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        media: dict[str, Any] = {}
        try:
            report = self._analyze(Path(path), explain, explain_dir, timings, media, progress or _no_progress)
        except AnalysisStopped:
            raise
        except _Abstain as ab:
            report = self._abstain(path, ab.reason, ab.message, media)
        except Exception as exc:  # noqa: BLE001 - a report, never a traceback, never REAL
            # WARNING with the traceback: the report carries one line, and a bug must be visible.
            log.warning("analysis of %s failed", path, exc_info=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report = self._abstain(path, "error", f"analysis failed: {type(exc).__name__}: {text}"[:500], media)
        timings["total_s"] = time.perf_counter() - t0
        report.timings = {k: round(v, 4) for k, v in timings.items()}
        return report

    def analyze_many(self, paths: Iterable[Path | str], explain: bool = False,
                     explain_dir: Path | None = None) -> list[Report]:
        """Analyse files in order; a bad file gets its ABSTAIN report and the rest go on.

        With ``explain_dir``, each file's overlays go to ``explain_dir/<file stem>``.
        """
        reports = []
        for p in paths:
            sub = Path(explain_dir) / _safe_name(Path(p).stem) if explain_dir is not None else None
            reports.append(self.analyze(p, explain=explain, explain_dir=sub))
        return reports

    def check_frames(self, images: Sequence[bytes | np.ndarray], *, member: str | None = None,
                     cropped: bool = False) -> FrameBatchReport:
        """Score a batch of still frames of one person with the video members (see :mod:`veracity.frames`).

        Never raises for a bad frame: a frame that does not decode is flagged with its
        reason and the rest are scored; a batch that cannot be judged gets ``ABSTAIN``.

        Args:
            images: JPEG/PNG bytes or RGB uint8 arrays, in time order (taken as consecutive
                samples at the bundle's fps).
            member: judge with this video member only (default: every video member, the
                highest probability counts).
            cropped: each image is a face crop already (no detection; the whole image is the face).

        Returns:
            The :class:`~veracity.frames.FrameBatchReport` (``to_dict()`` for JSON).

        Raises:
            FrameError: an empty batch, one over :data:`veracity.frames.MAX_BATCH_FRAMES`,
                or ``member`` unknown or not a video member (the service answers 4xx).
        """
        return score_frames(self.bundle, images, extract_cfg=self.extract_cfg, member=member, cropped=cropped,
                            batch_size=self.cfg.batch_size, lock=self._lock, identity=self.identity)

    # ------------------------------------------------------------------ internals

    def _abstain(self, path: Path | str, reason: str, message: str, media: dict[str, Any]) -> Report:
        return Report(path=str(path), verdict="ABSTAIN", probability=None, reason=reason, message=message,
                      thresholds=self._thresholds(), media=dict(media), bundle=dict(self.identity),
                      status=media.get("status"))

    def _forward(self, batch: Any, run: Sequence[str]) -> dict[str, Any]:
        """The members' outputs for one batch: through the shared batcher, or here under the lock."""
        if self.batcher is not None:
            return self.batcher.run(batch, run)
        with self._lock:
            return self.bundle.forward(batch, members=run, timeout_s=self.member_timeout_s)

    def _without(self, failed: Mapping[str, str], alone: str | None,
                 run: Sequence[str]) -> tuple[str | None, list[str]]:
        """(modality judged alone, members) once ``failed`` members gave no answer.

        The full fusion was fitted on every member, so it is not run without one. The
        others judge with the fallback fitted for exactly them (their own fusion and
        thresholds, :class:`~veracity.decision.Fallback`); failing that, when only members
        that listen failed, the video members judge alone (thresholds of their own);
        otherwise the file cannot be judged.
        """
        left = [m for m in run if m not in failed]
        if alone is None and len(left) > 1 and self.bundle.can_judge_with(left):
            return None, left
        video = set(self.bundle.judges_alone("video"))
        if alone in (None, "video") and video and not video & set(failed):
            return "video", [m for m in run if m in video]
        named = "; ".join(f"{k} ({v})" for k, v in failed.items())
        raise _Abstain("member_failed", f"members gave no answer: {named}; the others cannot judge without them")

    def _thresholds(self, alone: str | None = None, members: Sequence[str] | None = None) -> dict[str, float]:
        th = self.bundle.thresholds_for(alone, members)
        return {"real_below": float(th.real_below), "fake_at": float(th.fake_at)}

    def _analyze(self, path: Path, explain: bool, explain_dir: Path | None, timings: dict[str, float],
                 media: dict[str, Any], progress: Progress) -> Report:
        progress("extracting", 0.0)
        if not path.exists():
            raise _Abstain("missing", f"no such file: {path}")
        if not path.is_file():
            raise _Abstain("missing", f"not a regular file: {path}")
        # Removed on every exit path; a failed removal never turns a report into an error.
        with tempfile.TemporaryDirectory(prefix="veracity-analyze-", ignore_cleanup_errors=True) as tmp:
            out = Path(tmp)
            row = {"video_id": _CLIP_ID, "path": str(path.resolve())}
            # Windows are scored while the file is still being extracted (veracity.stream).
            stream = (WindowStream(self.contract, functools.partial(self._forward, run=self.bundle.names),
                                   self.cfg.batch_size) if self.cfg.overlap else None)
            try:
                t = time.perf_counter()
                idx = extract_clip(row, path.resolve().parent, out, self.extract_cfg, self.contract,
                                   self.fingerprint, observer=stream)
                if stream is not None:
                    stream.finish()
                    timings["forward_overlapped_s"] = stream.forward_s
                timings["extract_s"] = time.perf_counter() - t
                media.update(_media_facts(idx))
                rec = ClipRecord(record_dir(out, _CLIP_ID))
                alone = self._check_evidence(idx, rec, media)
                progress("scoring", 0.7)
                # The members' forward passes take the analyzer's lock (or go through the shared
                # batcher, which takes it): extraction above and the bookkeeping here run in parallel.
                persons = [self._score_person(rec, media, track, timings, alone, stream) for track in _kept_tracks(rec)]
            finally:
                if stream is not None:
                    stream.close()
            if not persons:  # _check_evidence guarantees one, but never call REAL without a face
                raise _Abstain("no_face", "no face track lasted long enough to be judged")
            # The call is about the most suspicious person the bundle can judge: one outside
            # its reference profile gets no verdict of its own (see below).
            judged = [p for p in persons if not p.out_of_profile] or persons
            best = max(judged, key=lambda p: (p.scored.probability, -p.track))
            t = time.perf_counter()
            for p in persons:
                p.timeline = self._timeline(p, media)
                p.top_frames = self._top_frames(p, rec)
            timings["report_s"] = time.perf_counter() - t
            explanations = None
            if explain:
                progress("explaining", 0.9)
                t = time.perf_counter()
                with self._lock:  # Grad-CAM's hooks must see this file's windows only
                    explanations = self._explain(best, rec, explain_dir, path)
                timings["explain_s"] = time.perf_counter() - t
        s = best.scored
        n = len(persons)
        alone = best.alone
        why = (f"{', '.join(best.failed)} gave no answer" if best.failed else
               _NO_AUDIO_WORDS.get(str(media.get("status")), "no usable audio"))
        judges = list(best.window_logits)
        alone_note = (f" (judged on {alone} alone: {why})" if alone else
                      f" (judged by {', '.join(judges)}: {why})" if best.failed else "")
        common = dict(path=str(path), thresholds=self._thresholds(alone, judges), modalities=dict(s.modality_probs),
                      agreement=dict(s.agreement), person=best.track, persons=[self._person_dict(p) for p in persons],
                      timeline=best.timeline, top_frames=[_public(f) for f in best.top_frames], media=dict(media),
                      bundle=dict(self.identity), explanations=explanations, status=media.get("status"),
                      judged=list(s.judged), disagreement=s.disagreement, failed_members=dict(best.failed))
        if best.out_of_profile:  # every person is out of profile: no verdict, the scores stay for the analyst
            return Report(verdict="ABSTAIN", probability=None, reason="out_of_distribution",
                          message=f"out of the bundle's reference profile: {best.ood.message}{alone_note}",
                          members=self._members(s, reliable=False), ood=best.ood.to_dict(), **common)
        who = f" (person {best.track}, the most suspicious of {n})" if n > 1 else ""
        message = f"{s.verdict.lower()}: calibrated probability of manipulation {s.probability:.3f}{who}{alone_note}"
        if s.reason == "member_disagreement":
            message = (f"uncertain: the members disagree in a way validation never showed "
                       f"({_member_words(s)}; the fusion alone would say {self.bundle.thresholds.verdict(s.probability)} "
                       f"at {s.probability:.3f}){who}")
        return Report(verdict=s.verdict, probability=float(s.probability), reason=s.reason, message=message,
                      members=self._members(s), ood=best.ood.to_dict() if best.ood is not None else None, **common)

    def _check_evidence(self, idx: Mapping[str, Any], rec: ClipRecord, media: dict[str, Any]) -> str | None:
        """Raise :class:`_Abstain` when the file cannot be judged (DESIGN §3: no face is never REAL).

        Returns:
            The modality to judge alone (``video`` for a file without usable audio, when
            the bundle listens and can judge video alone), else None (every member).
        """
        ev = self.bundle.evidence
        status, message = str(idx.get("status")), str(idx.get("message", ""))
        if status not in (OK, "no_audio", "silent"):
            raise _Abstain(status, message)
        no_audio = status in ("no_audio", "silent") or not media.get("has_audio")
        alone = "video" if no_audio and self.bundle.needs_audio else None
        if alone is not None and (ev.require_audio or not self.bundle.judges_alone(alone)):
            reason = status if status != OK else "no_audio"
            why = message if status != OK else "the file has no audio stream"
            raise _Abstain(reason, f"{why}; " + ("the bundle's evidence rules require audio" if ev.require_audio else
                                                 "the bundle's audio members cannot judge it and it has no "
                                                 "video-only thresholds"))
        face_ratio = float(idx.get("face_ratio") or 0.0)
        if face_ratio < ev.min_face_ratio:
            raise _Abstain("no_face", f"a face was found in {face_ratio:.0%} of sampled frames "
                                      f"(the bundle needs {ev.min_face_ratio:.0%})")
        if not _kept_tracks(rec):
            raise _Abstain("no_face", "no face track lasted long enough to be judged")
        duration = media.get("duration_s")
        if duration is None:
            duration = float(idx.get("n_frames") or 0) / self.contract.fps
        if duration < ev.min_duration_s:
            raise _Abstain("too_short", f"{duration:.2f} s is shorter than the bundle's minimum "
                                        f"{ev.min_duration_s:g} s")
        return alone

    def _score_person(self, rec: ClipRecord, media: Mapping[str, Any], track: int,
                      timings: dict[str, float], alone: str | None = None,
                      stream: WindowStream | None = None) -> _Person:
        b, c = self.bundle, self.contract
        # Judged on one modality alone, only its members run (a member that listens never
        # scores a file it cannot hear).
        run = b.judges_alone(alone) if alone is not None else b.names
        members = [m for m in b.members if m.name in run]
        clip = ClipInfo(video_id=_CLIP_ID, record=rec.path, label=0, video_label=math.nan, audio_label=math.nan,
                        method="unknown", split="analyze", has_audio=alone is None and bool(media.get("has_audio")),
                        track=track)
        ds = WindowDataset([clip], c)
        if len(ds) == 0:
            raise _Abstain("too_short", "no model window fits the file")
        logits: dict[str, list[np.ndarray]] = {m: [] for m in run}
        # Per-frame scores of the members that look at faces (the suspicious frames cost
        # nothing: the forward pass gives them), and each member's embedding (the features
        # before its head) for the reference profile.
        caught: dict[str, list[np.ndarray]] = {m.name: [] for m in members if m.modality in ("video", "av")}
        embedded: dict[str, list[np.ndarray]] = {m.name: [] for m in members if b.profile is not None}
        failed: dict[str, str] = {}
        bs = self.cfg.batch_size

        def take(out: Mapping[str, Any]) -> None:
            for m in run:
                if isinstance(out[m], MemberFailure):
                    failed.setdefault(m, f"{out[m].reason}: {out[m].message}")
                    continue
                logits[m].append(np.asarray(out[m].logits, dtype=np.float32).reshape(-1))
                if m in caught and out[m].frame_scores is not None:
                    caught[m].append(out[m].frame_scores)
                if m in embedded and out[m].features is not None:
                    embedded[m].append(out[m].features)

        # The first whole batches were scored during extraction when the stream's guess
        # held: every member, with the audio (the same windows, the same batches).
        streamed = stream.outputs(track, run) if stream is not None and alone is None and clip.has_audio else []
        for out in streamed:
            take(out)
        # The next batch is cut from the record on a background thread while the members
        # run on this one (the same bounded prefetch as extraction: memory stays flat).
        batches = (collate([ds[i] for i in range(s, min(s + bs, len(ds)))])[0]
                   for s in range(len(streamed) * bs, len(ds), bs))
        prep = fwd = 0.0
        with self.batcher.scoring() if self.batcher is not None else contextlib.nullcontext():
            t = time.perf_counter()
            for batch in prefetch(batches, depth=2):
                t1 = time.perf_counter()
                out = self._forward(batch, run)
                prep += t1 - t  # waiting for windows the prefetch had not cut yet
                t = time.perf_counter()
                fwd += t - t1
                take(out)
        if failed:
            alone, run = self._without(failed, alone, run)
            caught = {k: v for k, v in caught.items() if k in run}
            embedded = {k: v for k, v in embedded.items() if k in run}
        frame_scores = {name: np.concatenate(v) for name, v in caught.items() if v}
        frame_scores = {name: v for name, v in frame_scores.items() if v.shape[0] == len(ds)}
        timings["windows_s"] = timings.get("windows_s", 0.0) + prep
        timings["forward_s"] = timings.get("forward_s", 0.0) + fwd
        wl = {m: np.concatenate(logits[m]) for m in run}
        t = time.perf_counter()
        scored = b.score(wl, alone=alone, members=run)
        n = len(ds)
        per_window = [b.score({m: wl[m][i : i + 1] for m in run}, alone=alone, members=run) for i in range(n)]
        timings["score_s"] = timings.get("score_s", 0.0) + time.perf_counter() - t
        rows = rec.track_crops(track)
        times = np.asarray(rec.array("times"), dtype=np.float64)
        crop_frame = np.asarray(rec.array("crop_frame"))
        dt = 1.0 / c.fps
        windows = []
        for i in range(n):
            start, length = ds.item_start(i), ds.item_length(i)
            f0, f1 = int(crop_frame[rows[start]]), int(crop_frame[rows[start + length - 1]])
            windows.append(_Window(start, length, float(times[f0]), float(times[f1]) + dt))
        ood = None
        if b.profile is not None:
            from veracity.profile import AUDIO_FACTS, media_facts

            # Only what judged is checked: members that did not run are left out, and so are
            # the audio facts of a file judged without its audio (a silent track is no shift).
            facts = media_facts(rec, media, track)
            if alone is not None:
                facts.update({k: math.nan for k in AUDIO_FACTS})
            emb = {name: np.concatenate(v) for name, v in embedded.items() if v}
            ood = b.profile.score(facts, emb)
        return _Person(track=track, scored=scored, windows=windows, window_logits=wl,
                       window_probs=np.array([w.probability for w in per_window]),
                       member_window_probs={m: np.array([w.member_probs[m] for w in per_window]) for m in run},
                       dataset=ds, rows=rows, frame_scores=frame_scores, ood=ood, alone=alone, failed=failed)

    def _timeline(self, p: _Person, media: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Non-overlapping segments: each instant belongs to the window whose centre is nearest."""
        th = self.bundle.thresholds_for(p.alone, list(p.window_logits))
        w = p.windows
        centres = [(x.start_s + x.end_s) / 2 for x in w]
        duration = media.get("duration_s")
        limit = float(duration) if duration else max(x.end_s for x in w)
        segs: list[dict[str, Any]] = []
        for i, x in enumerate(w):
            s = x.start_s if i == 0 else max(segs[-1]["end_s"], (centres[i - 1] + centres[i]) / 2)
            e = x.end_s if i == len(w) - 1 else (centres[i] + centres[i + 1]) / 2
            s, e = min(max(s, 0.0), limit), min(max(e, 0.0), limit)
            if e <= s and segs:
                continue  # a window wholly inside its neighbours' halves adds no time of its own
            prob = float(p.window_probs[i])
            verdict = th.verdict(prob)
            if self.cfg.segment_merge and segs and segs[-1]["verdict"] == verdict and abs(segs[-1]["end_s"] - s) < 1e-9:
                segs[-1]["end_s"] = e
                segs[-1]["probability"] = max(segs[-1]["probability"], prob)
                segs[-1]["windows"] += 1
            else:
                segs.append({"start_s": s, "end_s": e, "probability": prob, "verdict": verdict, "windows": 1})
        return segs

    def _video_member(self, p: _Person) -> Any | None:
        """The member whose frames explain a call: the most suspicious video (else audio-visual) member."""
        from veracity.explain import find_frame_encoder

        for modality in ("video", "av"):
            cands = [m for m in self.bundle.members if m.modality == modality and m.model is not None
                     and m.name in p.scored.member_probs and find_frame_encoder(m.model) is not None]
            if cands:
                return max(cands, key=lambda m: p.scored.member_probs[m.name])
        return None

    def _top_frames(self, p: _Person, rec: ClipRecord) -> list[dict[str, Any]]:
        """The ``cfg.top_frames`` most suspicious frames, from the most suspicious windows.

        Inside a window the frame with the highest per-frame score of the video member wins
        (the window's middle frame when no member scores frames); a frame already chosen
        from an overlapping window is not listed twice.
        """
        k = self.cfg.top_frames
        order = sorted(range(len(p.windows)), key=lambda i: (-p.window_probs[i], i))
        cand = order[: max(2 * k, k + 2)]
        member = self._video_member(p)
        frame_scores: dict[int, np.ndarray] = {}
        if member is not None and member.name in p.frame_scores:
            frame_scores = {i: p.frame_scores[member.name][i] for i in cand}
        elif member is not None and cand:  # e.g. the member runs in ONNX Runtime: score the candidates again
            for s in range(0, len(cand), self.cfg.batch_size):
                part = cand[s : s + self.cfg.batch_size]
                batch, _ = collate([p.dataset[i] for i in part])
                with torch.inference_mode():
                    out = member.model(batch.to(self.bundle.device))
                if out.frame_scores is None:
                    break
                fs = out.frame_scores.float().cpu().numpy()
                frame_scores.update({i: fs[j] for j, i in enumerate(part)})
        times = np.asarray(rec.array("times"), dtype=np.float64)
        crop_frame = np.asarray(rec.array("crop_frame"))
        boxes = rec.array("crop_box")
        ranked: dict[int, list[int]] = {}
        for i in cand:
            w = p.windows[i]
            if i in frame_scores:
                ranked[i] = sorted(range(w.length), key=lambda t, s=frame_scores[i]: (-s[t], t))
            else:
                mid = w.length // 2
                ranked[i] = sorted(range(w.length), key=lambda t, m=mid: (abs(t - m), t))
        chosen: list[dict[str, Any]] = []
        seen: set[int] = set()
        # First the best frame of each window in window order; a short file with fewer
        # windows than wanted frames then gives its windows' next best frames.
        for per_window in (1, max((len(r) for r in ranked.values()), default=0)):
            for i in cand:
                w = p.windows[i]
                taken = sum(1 for f in chosen if f["window"] == i)
                for t in ranked[i]:
                    if len(chosen) >= k or taken >= per_window:
                        break
                    row = int(p.rows[w.start + t])
                    frame = int(crop_frame[row])
                    if frame in seen:
                        continue
                    seen.add(frame)
                    taken += 1
                    chosen.append({
                        "time_s": float(times[frame]), "frame": frame, "track": p.track, "window": i,
                        "window_frame": t, "window_probability": float(p.window_probs[i]),
                        "frame_score": float(frame_scores[i][t]) if i in frame_scores else None,
                        "member": member.name if member is not None and i in frame_scores else None,
                        "box": [float(v) for v in np.asarray(boxes[row])], "_row": row,
                    })
        return chosen

    def _explain(self, p: _Person, rec: ClipRecord, explain_dir: Path | None, path: Path) -> dict[str, Any]:
        from veracity.explain import audio_anomaly_segments, member_grad_cam, overlay

        b = self.bundle
        out: dict[str, Any] = {"overlays": [], "gradcam_member": None, "audio_segments": [],
                               "audio_members": [m.name for m in b.members if m.modality == "audio"],
                               "modality_probs": dict(p.scored.modality_probs),
                               "modality_agreement": p.scored.agreement.get("modality_agreement"),
                               "model_agreement": p.scored.agreement.get("model_agreement"),
                               "notes": []}
        member = self._video_member(p)
        if member is None:
            out["notes"].append("no member looks at faces: no Grad-CAM")
        elif p.top_frames:
            out["gradcam_member"] = member.name
            batch, _ = collate([p.dataset[f["window"]] for f in p.top_frames])
            heat = member_grad_cam(member.model, batch, [f["window_frame"] for f in p.top_frames])
            faces = rec.array("faces")
            for rank, (f, h) in enumerate(zip(p.top_frames, heat, strict=True)):
                entry = {"time_s": f["time_s"], "frame": f["frame"], "track": f["track"], "rank": rank,
                         "peak_yx": [float(v) / h.shape[0] for v in np.unravel_index(int(np.argmax(h)), h.shape)],
                         "mean_heat": float(h.mean()), "png": None}
                if explain_dir is not None:
                    name = f"{_safe_name(path.stem)}_p{f['track']}_{rank:02d}_t{f['time_s']:.2f}s.png"
                    entry["png"] = str(overlay(np.asarray(faces[f["_row"]]), h, Path(explain_dir) / name))
                out["overlays"].append(entry)
            if explain_dir is None:
                out["notes"].append("no explain_dir given: heatmaps computed, no PNG written")
        audio = [m.name for m in b.members if m.modality == "audio" and m.name in p.member_window_probs]
        if audio:
            worst = np.max(np.stack([p.member_window_probs[m] for m in audio]), axis=0)
            spans = [(w.start_s, w.end_s) for w in p.windows]
            out["audio_segments"] = audio_anomaly_segments(spans, worst, b.thresholds.fake_at)
        else:
            out["notes"].append("no audio member judged: no audio anomaly segments")
        return out

    def _members(self, s: Scored, reliable: bool = True) -> dict[str, dict[str, Any]]:
        # Out of profile, the scores are kept for the analyst but marked: they mean nothing
        # there. A member that did not judge (no audio to hear) is listed without scores.
        return {m.name: ({"modality": m.modality, "judged": True, "logit": float(s.member_logits[m.name]),
                          "probability": float(s.member_probs[m.name]), "reliable": reliable}
                         if m.name in s.member_probs else
                         {"modality": m.modality, "judged": False, "logit": None, "probability": None,
                          "reliable": False})
                for m in self.bundle.members}

    def _person_dict(self, p: _Person) -> dict[str, Any]:
        s = p.scored
        out = p.out_of_profile
        ood = p.ood.to_dict() if p.ood is not None else None
        return {"track": p.track, "verdict": "ABSTAIN" if out else s.verdict,
                "reason": "out_of_distribution" if out else s.reason, "judged": list(s.judged),
                "disagreement": s.disagreement,
                "probability": None if out else float(s.probability),
                "unreliable_probability": float(s.probability) if out else None,
                "ood_score": ood["ood_score"] if ood else None, "ood": ood,
                "members": self._members(s, reliable=not out), "modalities": dict(s.modality_probs),
                "agreement": dict(s.agreement),
                "windows": len(p.windows), "start_s": p.windows[0].start_s, "end_s": p.windows[-1].end_s,
                "timeline": p.timeline, "window_scores": self._window_scores(p),
                "top_frames": [_public(f) for f in p.top_frames]}

    def _window_scores(self, p: _Person) -> list[dict[str, Any]]:
        """Each window scored alone: its span, fused probability and per-modality probability
        (the highest of the modality's members): what a timeline chart draws."""
        mods = {m: self.bundle.modalities[m] for m in p.member_window_probs}
        return [{"start_s": w.start_s, "end_s": w.end_s, "probability": float(p.window_probs[i]),
                 "modalities": modality_scores({m: float(v[i]) for m, v in p.member_window_probs.items()}, mods)}
                for i, w in enumerate(p.windows)]


# How a report says why a file was judged without its audio, by extraction status.
_NO_AUDIO_WORDS = {"no_audio": "the file has no audio stream", "silent": "the audio track is silent"}


def _member_words(s: Scored) -> str:
    return ", ".join(f"{n} {p:.3f}" for n, p in s.member_probs.items())


def _public(frame: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if not k.startswith("_")}


def _kept_tracks(rec: ClipRecord) -> list[int]:
    """Kept face tracks, the primary (longest) first."""
    kept = [t for t in rec.meta.get("tracks", []) if t.get("kept")]
    kept.sort(key=lambda t: (-int(t["n_frames"]), int(t["track_id"])))
    return [int(t["track_id"]) for t in kept]


def _media_facts(idx: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("duration_s", "src_fps", "width", "height", "rotation", "has_audio", "audio_s", "n_frames",
            "face_ratio", "n_tracks", "speech_ratio", "rms_dbfs")
    out = {k: idx.get(k) for k in keys if idx.get(k) is not None}
    if "src_fps" in out:
        out["fps"] = out.pop("src_fps")
    out["has_audio"] = bool(idx.get("has_audio"))
    out["status"] = idx.get("status")
    if idx.get("warning"):
        out["warning"] = idx["warning"]
    return plain(out)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:100] or "file"


def report_text(report: Report) -> str:
    """A readable block for one report (the CLI's default output)."""
    r = report
    lines = [f"{r.path}"]
    if r.verdict == "ABSTAIN":
        lines.append(f"  verdict: ABSTAIN ({r.reason}): {r.message}")
        if r.reason == "out_of_distribution" and r.members:
            lines.append("  members (unreliable out of profile): " + "; ".join(
                f"{n} p={m['probability']:.3f}" for n, m in r.members.items() if m.get("probability") is not None))
    else:
        th = r.thresholds
        lines.append(f"  verdict: {r.verdict}  probability {r.probability:.3f}  "
                     f"(REAL < {th.get('real_below', float('nan')):.3f} <= UNCERTAIN < "
                     f"{th.get('fake_at', float('nan')):.3f} <= FAKE)")
        if r.reason:
            lines.append(f"  why {r.verdict}: {r.reason}: {r.message}")
        if r.judged and len(r.judged) == 1:
            lines.append(f"  judged on {r.judged[0]} alone (the members that need the other modality did not judge)")
        lines.append("  members: " + "; ".join(
            f"{n} ({m['modality']}) p={m['probability']:.3f} z={m['logit']:+.2f}" if m.get("judged", True)
            else f"{n} ({m['modality']}) did not judge" for n, m in r.members.items()))
        ag = r.agreement
        mods = ", ".join(f"{k} {v:.3f}" for k, v in r.modalities.items())
        agree = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in ag.items() if v is not None)
        lines.append(f"  modalities: {mods}" + (f"; {agree}" if agree else ""))
        if len(r.persons) > 1:
            lines.append("  persons: " + ", ".join(
                f"#{p['track']} {p['verdict']}" + (f" {p['probability']:.3f}" if p["probability"] is not None
                                                   else f" ({p.get('reason')})") for p in r.persons))
        lines.append("  timeline:")
        for s in r.timeline:
            lines.append(f"    {s['start_s']:7.2f} - {s['end_s']:7.2f} s  {s['verdict']:<9} {s['probability']:.3f}")
        if r.top_frames:
            lines.append("  most suspicious frames: " + ", ".join(
                f"{f['time_s']:.2f} s ({f['window_probability']:.3f})" for f in r.top_frames))
        if r.explanations:
            pngs = [o["png"] for o in r.explanations.get("overlays", []) if o.get("png")]
            segs = r.explanations.get("audio_segments", [])
            lines.append(f"  explanations: {len(pngs)} overlay(s)"
                         + (f" in {Path(pngs[0]).parent}" if pngs else "")
                         + "; audio anomalies: "
                         + (", ".join(f"{s['start_s']:.2f}-{s['end_s']:.2f} s" for s in segs) or "none"))
    if r.ood is not None and r.reason != "out_of_distribution":
        lines.append(f"  reference profile: inside (OOD score {r.ood['ood_score']:.2f}; 1.00 = threshold)")
    if r.media.get("duration_s") is not None:
        lines.append(f"  media: {r.media.get('duration_s', 0):.2f} s, {r.media.get('width')}x{r.media.get('height')}, "
                     f"audio {'yes' if r.media.get('has_audio') else 'no'}")
    if r.timings:
        lines.append("  timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in r.timings.items()))
    return "\n".join(lines)

