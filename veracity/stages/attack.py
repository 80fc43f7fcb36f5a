"""The ``attack`` stage: how much AUC each member and the fused ensemble lose under
corruptions and gradient attacks on held-out clips (DESIGN §1, between calibrate and ensemble).

Every condition is scored the way the shipped bundle scores a video: window logits ->
pooled per member -> calibrated -> fused (:meth:`veracity.bundle.Bundle.score_table`), and
compared with the clean scores of the same clips:

- **H.264 re-encode** (``attack.crf``): the clip's source file is re-encoded
  (:func:`veracity.robustness.reencode_video`, video and audio) and extracted again with the
  extraction stage's own code and settings, so detection, tracking, crops, flow and audio all
  see the re-encoded file, as they would in production. This is the costly part; it runs
  in a pool of ``extract.workers`` processes.
- **Face-crop corruptions** (JPEG, down-and-up scaling, noise, blur, brightness): applied to
  the extracted crops by a :class:`~veracity.data.WindowDataset` transform
  (:class:`~veracity.robustness.CorruptedCrops`). Optical flow is recomputed from the corrupted crops with the
  extractor's own Farneback code, so the flow channels do not leak the clean motion.
- **Audio corruptions** (noise at an SNR, resampling, low-pass, gain): applied to the window
  waveform by :class:`~veracity.robustness.CorruptedAudio`.
- **Gradient attacks** (FGSM, PGD; L-inf) on the face crops and on the waveform, against
  each member that sees the field and against the fused ensemble, on a balanced subset of
  ``attack.attack_clips`` clips. Each window is attacked on its own; the flow channels keep
  their clean values (Farneback is not differentiable). Against the ensemble, gradients
  follow a smooth, unclamped stand-in of calibration and fusion (BPDA, see
  :func:`fused_logit_fn`): isotonic steps and probability clamps would otherwise hide members.

A member that does not see a corrupted field (a video-only member under an audio
corruption) keeps its clean window logits; its rows say ``affected = False``.

Outputs (``out``): ``robustness.csv`` (one row per condition, strength and target),
``summary.json`` (clean AUCs, the promotion gate's row, the worst condition, the largest
drop per kind), ``plots/auc_vs_strength.csv`` and ``config.resolved.yaml``. They hold no
wall times, and every random draw is keyed by clip and condition, so a rerun writes the same
bytes; timings go to the log. One caveat: libx264 as called by ``reencode_video`` was seen
to give a different bitstream for the same input now and then on very short clips (~1 s,
96 px; the encoder is fed the source's 1/12800 time base), never on the default corpus (0 of
88 clips over 3 runs); the re-encode rows inherit whatever the encoder does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from veracity import metrics
from veracity.bundle import Bundle
from veracity.calibration import target_mask
from veracity.config import AttackConfig, ExtractConfig, write_resolved
from veracity.contract import DataContract
from veracity.data import ClipInfo, WindowDataset, collate, load_clips
from veracity.decision import calibrate_torch, surrogate_fused_logit, surrogate_logodds
from veracity.devices import resolve_device
from veracity.models.base import Batch
from veracity.robustness import (
    SEED,
    CorruptedAudio,
    CorruptedCrops,
    attack_batch,
    reencode_video,
    stable_key,
)
from veracity.stages import StageError

log = logging.getLogger(__name__)

ROBUSTNESS_CSV = "robustness.csv"
SUMMARY_JSON = "summary.json"
PLOT_CSV = Path("plots") / "auc_vs_strength.csv"
ENSEMBLE = "ensemble"
COLUMNS = ["kind", "name", "strength", "target", "field", "auc", "clean_auc", "drop", "n_clips", "affected"]
# Windows per forward pass, and clips whose clean windows are held in memory at once (about
# 1 MB per window): every corruption of a chunk reuses its windows instead of re-reading them.
BATCH_SIZE = 32
CHUNK_CLIPS = 16

# attack.<key> in params.yaml -> the corruption it sweeps (names in robustness.csv).
CROP_KEYS = {"jpeg_quality": "jpeg", "downscale": "downscale", "noise_sigma": "noise", "blur_sigma": "blur",
             "brightness": "brightness"}
AUDIO_KEYS = {"snr_db": "snr", "resample_hz": "resample", "lowpass_hz": "lowpass", "gain_db": "gain"}
FIELD_MODALITIES = {"video": ("video", "av"), "audio": ("audio", "av")}


class AttackError(StageError):
    """The stage cannot run: missing inputs, no usable clips, inconsistent contracts."""


def sees(modality: str, field: str) -> bool:
    """Whether a member of ``modality`` ('video' | 'audio' | 'av') reads ``field``."""
    return modality in FIELD_MODALITIES[field]


# ----------------------------------------------------------------------- scoring

TransformFactory = Callable[[WindowDataset], Callable[[dict[str, Any], Any], dict[str, Any]] | None]


@dataclass(frozen=True)
class Condition:
    """One scored setting: what is changed, how strongly, and which members must be rerun."""

    kind: str  # "clean" | "corruption" | "attack"
    name: str
    strength: float
    field: str  # "video" | "audio" | "av" (the whole file)


def _member_logits(bundle: Bundle, batch: Batch, names: Sequence[str]) -> dict[str, np.ndarray]:
    if list(names) == bundle.names:
        return bundle.window_logits(batch)
    out = {}
    with torch.inference_mode():
        b = batch.to(bundle.device)
        for m in bundle.members:
            if m.name in names:
                assert m.model is not None
                out[m.name] = m.model(b).logits.float().cpu().numpy()
    return out


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def window_scores(bundle: Bundle, clips: Sequence[ClipInfo], contract: DataContract,
                  conditions: Mapping[Any, tuple[TransformFactory | None, Sequence[str]]],
                  batch_size: int = BATCH_SIZE, chunk_clips: int = CHUNK_CLIPS,
                  timings: dict[Any, float] | None = None, stride: int | None = None) -> dict[Any, pd.DataFrame]:
    """Window logits of some members under several transforms, reading each window once.

    Clips are taken ``chunk_clips`` at a time; the clean windows of a chunk are loaded once
    (evenly spaced evaluation windows, as training predicts them) and every condition's
    transform is applied to them in turn.

    Args:
        bundle: the members (in eval mode).
        clips: the clips to score.
        contract: window length and normalisation (the features' contract).
        conditions: key -> (factory building the transform for a dataset, or None for the
            clean windows; the members to run).
        batch_size: windows per forward pass.
        chunk_clips: clips held in memory at once.
        timings: if given, seconds spent per condition are added to it (for the log).
        stride: frames between windows (default: half a window, as evaluation).

    Returns:
        key -> DataFrame with ``member, video_id, start, logit``, one row per window and member.
    """
    parts: dict[Any, list[pd.DataFrame]] = {k: [] for k in conditions}
    for chunk in _chunks(list(clips), chunk_clips):
        ds = WindowDataset(chunk, contract, eval_stride=stride)
        samples = [ds[i] for i in range(len(ds))]
        ids = np.array([ds.item_clip(i).video_id for i in range(len(ds))], dtype=object)
        starts = np.array([ds.item_start(i) for i in range(len(ds))], dtype=np.int64)
        for key, (factory, names) in conditions.items():
            if not names:
                continue
            t0 = time.perf_counter()
            transform = factory(ds) if factory is not None else None
            logits: dict[str, list[np.ndarray]] = {n: [] for n in names}
            for lo in range(0, len(samples), batch_size):
                part = samples[lo : lo + batch_size]
                if transform is not None:
                    part = [transform(s, None) for s in part]
                batch, _ = collate(part)
                for n, v in _member_logits(bundle, batch, names).items():
                    logits[n].append(v)
            for n in names:
                parts[key].append(pd.DataFrame({"member": n, "video_id": ids, "start": starts,
                                                "logit": np.concatenate(logits[n]).astype(np.float64)}))
            if timings is not None:
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame(columns=["member", "video_id", "start", "logit"])
            for k, v in parts.items()}


def clip_columns(clips: Sequence[ClipInfo]) -> pd.DataFrame:
    """Per-video columns that :meth:`Bundle.score_table` carries along."""
    return pd.DataFrame({"video_id": [c.video_id for c in clips], "label": [c.label for c in clips],
                         "method": [c.method for c in clips], "split": [c.split for c in clips],
                         "video_label": [c.video_label for c in clips], "audio_label": [c.audio_label for c in clips]})


def video_table(bundle: Bundle, windows: pd.DataFrame, clips: Sequence[ClipInfo]) -> pd.DataFrame:
    """Window logits -> one row per video with ``p_<member>``, fused ``prob`` and ``verdict``."""
    w = windows[["member", "video_id", "logit"]].merge(clip_columns(clips), on="video_id", how="inner")
    return bundle.score_table(w)


def target_aucs(bundle: Bundle, table: pd.DataFrame, ids: Iterable[str] | None = None) -> dict[str, tuple[float, int]]:
    """AUC and clip count of every member (on its own target) and of the ensemble.

    A member is judged on the clips its probability speaks about: reals plus its target
    methods, with a known target. The ensemble is judged on the clip label, all clips.
    """
    t = table if ids is None else table[table["video_id"].isin(set(ids))]
    out = {}
    for m in bundle.members:
        keep = target_mask(t["method"].to_numpy(), m.target_methods) & t[m.target].notna().to_numpy()
        y = t[m.target].to_numpy(np.float64)[keep]
        out[m.name] = (metrics.roc_auc(y, t[f"p_{m.name}"].to_numpy()[keep]), int(keep.sum()))
    out[ENSEMBLE] = (metrics.roc_auc(t["label"].to_numpy(np.float64), t["prob"].to_numpy()), int(len(t)))
    return out


# ----------------------------------------------------------------------- attacks


def fused_logit_fn(bundle: Bundle, field: str, clean: Batch, bpda: bool = True) -> Callable[[Batch], torch.Tensor]:
    """Logit of :meth:`Bundle.fused_window_prob`, for attacks on ``field`` of ``clean``.

    Members that do not read ``field`` get the same logits whatever the perturbation, so
    theirs are computed once from ``clean`` (without a graph) instead of at every step; the
    value equals ``logit(bundle.fused_window_prob(batch))``.

    The exact fused probability is a poor thing to differentiate: isotonic calibrators are
    staircases (zero gradient on every step) and calibrated probabilities are clamped to
    [1e-4, 1 - 1e-4] (zero gradient for a confident member), so the members behind them
    vanish from the attack (gradient masking: on the default corpus the ensemble looked
    untouched by audio PGD while its audio member alone fell to AUC 0.05). With ``bpda``
    (Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security",
    ICML 2018) the value is unchanged but the gradient follows :func:`surrogate_logodds`
    and :func:`surrogate_fused_logit`.
    """
    with torch.no_grad():
        fixed = {m.name: m.model(clean).logits.float() for m in bundle.members
                 if not sees(m.modality, field) and m.model is not None}
    surrogate = {m.name: surrogate_logodds(m.calibrator) for m in bundle.members}

    def fn(b: Batch) -> torch.Tensor:
        cols, ells = [], []
        for m in bundle.members:
            assert m.model is not None
            z = fixed[m.name] if m.name in fixed else m.model(b).logits.float()
            cols.append(calibrate_torch(m.calibrator, z))
            ells.append(surrogate[m.name](z))
        value = torch.logit(bundle.fusion.prob_torch(torch.stack(cols, dim=1)).clamp(1e-6, 1 - 1e-6))
        if not bpda:
            return value
        grad_path = surrogate_fused_logit(bundle.fusion, torch.stack(ells, dim=1))
        return grad_path + (value - grad_path).detach()

    return fn


def attack_window_scores(bundle: Bundle, clips: Sequence[ClipInfo], contract: DataContract, target: str,
                         field: str, method: str, eps: float, steps: int, batch_size: int = BATCH_SIZE,
                         seed: int = SEED, stride: int | None = None) -> pd.DataFrame:
    """Window logits of the members that read ``field`` after attacking each window.

    Args:
        bundle: the members (in eval mode).
        clips: the clips whose windows are attacked.
        contract: the features' contract (normalisation of the crops).
        target: a member name (pushed away from its own target label, the clip label where
            that is unknown) or ``"ensemble"`` (the fused probability, away from the clip label).
        field: ``video`` (face crops, eps in [0, 1] pixel units) or ``audio`` (waveform).
        method: ``fgsm`` or ``pgd``.
        eps: L-inf budget.
        steps: PGD steps.
        batch_size: windows attacked together (each window still independently: the loss is
            a mean over windows, whose gradients do not mix).
        seed: base seed of PGD's random start.
        stride: frames between windows (default: half a window, as evaluation).

    Returns:
        ``member, video_id, start, logit`` rows for the attacked member, or for every member
        that reads ``field`` when the target is the ensemble.
    """
    members = {m.name: m for m in bundle.members}
    if target != ENSEMBLE and target not in members:
        raise ValueError(f"unknown attack target {target!r}; members: {bundle.names}")
    names = ([n for n, m in members.items() if sees(m.modality, field)] if target == ENSEMBLE else [target])
    ds = WindowDataset(clips, contract, eval_stride=stride)
    rows = []
    for bi, lo in enumerate(range(0, len(ds), batch_size)):
        idx = list(range(lo, min(lo + batch_size, len(ds))))
        batch, _ = collate([ds[i] for i in idx])
        batch = batch.to(bundle.device)
        info = [ds.item_clip(i) for i in idx]
        if target == ENSEMBLE:
            logits_fn = fused_logit_fn(bundle, field, batch)
        else:
            y = [getattr(c, members[target].target) for c in info]
            y = [c.label if not math.isfinite(v) else v for v, c in zip(y, info, strict=True)]
            batch = dataclasses.replace(batch, label=torch.tensor(y, dtype=torch.float32, device=bundle.device))
            model = members[target].model
            assert model is not None

            def logits_fn(b: Batch, model: torch.nn.Module = model) -> torch.Tensor:
                return model(b).logits.float()

        gen = torch.Generator(device=bundle.device)
        gen.manual_seed(int(stable_key(seed, target, field, method, eps, bi)))
        adv = attack_batch(logits_fn, batch, contract, field, method, eps, steps=steps, generator=gen)  # type: ignore[arg-type]
        out = _member_logits(bundle, adv, names)
        for n in names:
            rows.append(pd.DataFrame({"member": n, "video_id": [c.video_id for c in info],
                                      "start": [ds.item_start(i) for i in idx],
                                      "logit": out[n].astype(np.float64)}))
    return pd.concat(rows, ignore_index=True)


def attack_subset(clips: Sequence[ClipInfo], n: int) -> list[ClipInfo]:
    """The first ``n`` clips by video id, half real and half fake (the other class fills in
    where one runs short), returned in video id order."""
    ordered = sorted(clips, key=lambda c: c.video_id)
    real = [c for c in ordered if c.label == 0]
    fake = [c for c in ordered if c.label == 1]
    n_fake = min(len(fake), n // 2)
    n_real = min(len(real), n - n_fake)
    n_fake = min(len(fake), n - n_real)
    return sorted(real[:n_real] + fake[:n_fake], key=lambda c: c.video_id)


# ----------------------------------------------------------------------- re-encode


def _source(path: str, manifest_dir: Path, raw_root: Path) -> Path:
    """A manifest path: absolute, else relative to the manifest (as extraction resolves it),
    else relative to the raw corpus root."""
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (manifest_dir, raw_root):
        if (base / p).exists():
            return base / p
    return manifest_dir / p


def _reencode_and_extract(job: tuple) -> dict[str, Any]:
    from veracity.extract import extract_clip

    row, src, work, crf, cfg, contract, fp = job
    vid = str(row["video_id"])
    dst = Path(work) / "videos" / f"{vid}.mp4"
    try:
        reencode_video(src, dst, int(crf))
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the sweep
        return {"video_id": vid, "status": "corrupt", "message": f"re-encode at crf {crf} failed: {exc}"}
    try:
        return extract_clip({**row, "path": str(dst)}, Path(work), Path(work) / "features", cfg, contract, fp)
    finally:
        dst.unlink(missing_ok=True)  # the record holds everything scoring needs


def reencode_features(clips: Sequence[ClipInfo], manifest: Path, raw_root: Path, crfs: Sequence[int],
                      extract_cfg: ExtractConfig, contract: DataContract, work: Path) -> dict[int, Path]:
    """Re-encode each clip's source at every CRF and extract it again (process pool).

    Returns:
        crf -> a features directory (``index.csv`` + records) holding those clips.
    """
    from veracity.corpus import manifest as mf
    from veracity.extract import fingerprint, share_cores

    df = mf.read(manifest)
    wanted = {c.video_id for c in clips}
    rows = [r for r in df.to_dict("records") if str(r["video_id"]) in wanted]
    missing = wanted - {str(r["video_id"]) for r in rows}
    if missing:
        raise AttackError(f"{len(missing)} clips of the features are not in {manifest}, e.g. {sorted(missing)[:3]}")
    fp = fingerprint(extract_cfg, contract)
    jobs = []
    dirs = {}
    for crf in crfs:
        d = work / f"crf{int(crf)}"
        (d / "features").mkdir(parents=True, exist_ok=True)
        contract.save(d / "features")
        dirs[int(crf)] = d / "features"
        jobs += [(r, _source(str(r["path"]), manifest.parent, raw_root), d, int(crf), extract_cfg, contract, fp)
                 for r in rows]
    if extract_cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=extract_cfg.workers, initializer=share_cores,
                                 initargs=(extract_cfg.workers,)) as pool:
            results = list(pool.map(_reencode_and_extract, jobs, chunksize=1))
    else:
        results = [_reencode_and_extract(j) for j in jobs]
    by_crf: dict[int, list[dict[str, Any]]] = {int(c): [] for c in crfs}
    for job, res in zip(jobs, results, strict=True):
        row = job[0]
        by_crf[job[3]].append({**{k: row.get(k) for k in ("label", "split", "method", "identity", "video_label",
                                                            "audio_label")}, **res})
    for crf, res in by_crf.items():
        index = pd.DataFrame(res).drop(columns=["reused"], errors="ignore").sort_values("video_id")
        for col in ("record", "has_audio"):
            if col not in index:
                index[col] = None
        index.to_csv(dirs[crf] / "index.csv", index=False)
    return dirs


# ----------------------------------------------------------------------- the stage


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _rows_for(cond: Condition, bundle: Bundle, aucs: Mapping[str, tuple[float, int]],
              clean: Mapping[str, tuple[float, int]], affected: Mapping[str, bool]) -> list[dict[str, Any]]:
    rows = []
    for target in [*bundle.names, ENSEMBLE]:
        if target not in affected:
            continue
        auc, n = aucs[target]
        c_auc = clean[target][0]
        rows.append({"kind": cond.kind, "name": cond.name, "strength": cond.strength, "target": target,
                     "field": cond.field, "auc": _round(auc), "clean_auc": _round(c_auc),
                     "drop": _round(c_auc - auc) if math.isfinite(auc) and math.isfinite(c_auc) else None,
                     "n_clips": n, "affected": bool(affected[target])})
    return rows


def _strength(v: float) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() else f


def _check_inputs(models: Path, calibration: Path, features: Path, manifest: Path) -> None:
    for path, what in ((calibration, "calibration file (run `veracity calibrate` first)"),
                       (features / "index.csv", "features index (run `veracity extract` first)"),
                       (features / "contract.json", "features contract (run `veracity extract` first)"),
                       (manifest, "manifest (run `veracity corpus` first)"),
                       (models, "models directory (train the members first)")):
        if not path.exists():
            raise AttackError(f"{what}: {path} does not exist")


def attack(cfg: AttackConfig, extract_cfg: ExtractConfig, models: Path, calibration: Path, features: Path,
           manifest: Path, raw_root: Path, out: Path, *, device: str | torch.device = "auto") -> dict[str, Any]:
    """The ``attack`` stage: robustness of every member and of the fused ensemble.

    Args:
        cfg: the sweep (``attack`` section).
        extract_cfg: extraction settings for the re-encoded files (and the pool size).
        models: one folder per trained member (``model.json`` + weights).
        calibration: ``calibration.json`` of the calibrate stage (pooling, calibrators, fusion).
        features: the extracted features (``index.csv``, records, ``contract.json``).
        manifest: the manifest whose ``path`` column locates each clip's source file.
        raw_root: the raw corpus root, tried for relative manifest paths that are not
            relative to the manifest's own folder.
        out: directory for ``robustness.csv``, ``summary.json`` and ``plots/``.
        device: where the members run (``auto``: CUDA when available).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        AttackError: missing inputs, no usable clips, or a contract the members were not
            trained on.
        veracity.bundle.BundleError: the members or the calibration file do not fit together.
    """
    t_start = time.perf_counter()
    models, calibration, features, manifest, raw_root, out = map(Path, (models, calibration, features, manifest,
                                                                       raw_root, out))
    _check_inputs(models, calibration, features, manifest)
    device = resolve_device(device)
    contract = DataContract.load(features)
    bundle = Bundle.assemble(models, json.loads(calibration.read_text()), device=device)
    if dataclasses.replace(bundle.contract, backbones={}) != dataclasses.replace(contract, backbones={}):
        raise AttackError(f"the members were trained on another data contract than {features / 'contract.json'}")
    for m in bundle.members:
        assert m.model is not None
        m.model.eval().requires_grad_(False)
    bundle.share_parts()  # only scored here, never saved
    clips = load_clips(features, [cfg.split], extract_cfg.usable_statuses)
    if not clips:
        raise AttackError(f"no usable clips of split {cfg.split!r} in {features / 'index.csv'}")
    mods = {m.name: m.modality for m in bundle.members}
    log.info("attack: %d %s clips, members %s, device %s", len(clips), cfg.split, bundle.names, device)

    # Clean windows and the in-memory corruptions, one pass over the clips.
    conds: dict[Any, tuple[TransformFactory | None, Sequence[str]]] = {"clean": (None, bundle.names)}
    sweeps: list[tuple[Condition, str]] = []
    for field, keys, transform in (("video", CROP_KEYS, CorruptedCrops), ("audio", AUDIO_KEYS, CorruptedAudio)):
        affected = [n for n in bundle.names if sees(mods[n], field)]
        for key, name in keys.items():
            for s in getattr(cfg, key):
                c = Condition("corruption", name, _strength(s), field)
                conds[c] = (lambda ds, t=transform, n=name, s=s: t(n, s, ds), affected)
                sweeps.append((c, field))
    timings: dict[Any, float] = {}
    t0 = time.perf_counter()
    scored = window_scores(bundle, clips, contract, conds, timings=timings, stride=cfg.window_stride)
    t_mem = time.perf_counter() - t0
    clean_w = scored.pop("clean")
    clean_table = video_table(bundle, clean_w, clips)
    clean = target_aucs(bundle, clean_table)
    log.info("clean: %s (%.1f s)", {k: round(v[0], 4) for k, v in clean.items()}, timings.get("clean", 0.0))

    rows: list[dict[str, Any]] = []
    crf_rows: list[dict[str, Any]] = []
    failed: dict[int, int] = {}
    # H.264 re-encode + re-extraction: every member sees a new file.
    t0 = time.perf_counter()
    if cfg.crf:
        with tempfile.TemporaryDirectory(prefix="veracity-attack-") as tmp:
            dirs = reencode_features(clips, manifest, raw_root, list(cfg.crf), extract_cfg, contract, Path(tmp))
            t_extract = time.perf_counter() - t0
            log.info("re-encode + extract: %d clips x %d CRFs in %.1f s", len(clips), len(dirs), t_extract)
            for crf, fdir in dirs.items():
                t1 = time.perf_counter()
                ok = load_clips(fdir, [cfg.split], extract_cfg.usable_statuses)
                n_failed = len(clips) - len(ok)
                failed[crf] = n_failed
                if n_failed:
                    bad = pd.read_csv(fdir / "index.csv")
                    bad = bad[~bad["video_id"].isin({c.video_id for c in ok})]
                    log.warning("crf %d: %d clips not usable after re-encoding: %s", crf, n_failed,
                                "; ".join(f"{r.video_id}: {r.status}" for r in bad.head(5).itertuples()))
                cond = Condition("corruption", "crf", crf, "av")
                if ok:
                    w = window_scores(bundle, ok, contract, {"x": (None, bundle.names)},
                                      stride=cfg.window_stride)["x"]
                    ids = [c.video_id for c in ok]
                    aucs = target_aucs(bundle, video_table(bundle, w, ok))
                    crf_rows += _rows_for(cond, bundle, aucs, target_aucs(bundle, clean_table, ids),
                                          {n: True for n in [*bundle.names, ENSEMBLE]})
                shutil.rmtree(fdir.parent, ignore_errors=True)
                log.info("crf %d scored in %.1f s", crf, time.perf_counter() - t1)
    t_crf = time.perf_counter() - t0
    rows += crf_rows

    # Corruptions of crops and waveforms: unaffected members keep their clean windows.
    for cond, field in sweeps:
        w = scored[cond]
        ran = set(w["member"]) if len(w) else set()
        full = pd.concat([w, clean_w[~clean_w["member"].isin(ran)]], ignore_index=True)
        aucs = target_aucs(bundle, video_table(bundle, full, clips))
        affected = {n: sees(mods[n], field) for n in bundle.names}
        affected[ENSEMBLE] = any(affected.values())
        rows += _rows_for(cond, bundle, aucs, clean, affected)
    t_video = sum(v for k, v in timings.items() if isinstance(k, Condition) and k.field == "video")
    t_audio = sum(v for k, v in timings.items() if isinstance(k, Condition) and k.field == "audio")
    log.info("crop corruptions %.1f s, audio corruptions %.1f s (clean windows %.1f s; all in-memory %.1f s)",
             t_video, t_audio, timings.get("clean", 0.0), t_mem)

    # Gradient attacks on a balanced subset.
    t0 = time.perf_counter()
    subset = attack_subset(clips, cfg.attack_clips)
    sub_ids = [c.video_id for c in subset]
    clean_sub = target_aucs(bundle, clean_table, sub_ids)
    clean_sub_w = clean_w[clean_w["video_id"].isin(set(sub_ids))]
    plan = []
    for field, eps_list in (("video", cfg.fgsm_eps), ("audio", cfg.audio_eps)):
        plan += [(field, "fgsm", e) for e in eps_list]
    plan += [("video", "pgd", e) for e in cfg.pgd_eps]
    plan += [("audio", "pgd", e) for e in cfg.audio_eps]
    for field, method, eps in plan:
        cond = Condition("attack", f"{method}_{field}", float(eps), field)
        targets = [n for n in bundle.names if sees(mods[n], field)] + [ENSEMBLE]
        for target in targets:
            t1 = time.perf_counter()
            w = attack_window_scores(bundle, subset, contract, target, field, method, float(eps), cfg.pgd_steps,
                                     stride=cfg.window_stride)
            ran = set(w["member"])
            full = pd.concat([w, clean_sub_w[~clean_sub_w["member"].isin(ran)]], ignore_index=True)
            aucs = target_aucs(bundle, video_table(bundle, full, subset))
            rows += _rows_for(cond, bundle, aucs, clean_sub, {target: True})
            log.debug("%s %s eps=%g on %s: %.1f s", method, field, eps, target, time.perf_counter() - t1)
    t_attack = time.perf_counter() - t0
    log.info("gradient attacks on %d clips: %.1f s", len(subset), t_attack)

    table = pd.DataFrame(rows, columns=COLUMNS)
    summary = _summary(table, clean, cfg, failed, len(clips), len(subset))
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOT_CSV).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / ROBUSTNESS_CSV, index=False)
    table[["name", "strength", "target", "auc"]].to_csv(out / PLOT_CSV, index=False)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    write_resolved(cfg, out)
    log.info("attack stage: %.1f s in all (clean + crop/audio corruptions %.1f s, re-encode %.1f s, attacks %.1f s)",
             time.perf_counter() - t_start, t_mem, t_crf, t_attack)
    return summary


def _row_dict(row: pd.Series) -> dict[str, Any]:
    d = row.to_dict()
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            d[k] = None
        elif isinstance(v, np.generic):
            d[k] = v.item()
    return d


def _summary(table: pd.DataFrame, clean: Mapping[str, tuple[float, int]], cfg: AttackConfig,
             failed: Mapping[int, int], n_clips: int, n_attack: int) -> dict[str, Any]:
    ens = table[table["target"] == ENSEMBLE]
    gate_name = {**CROP_KEYS, **AUDIO_KEYS}.get(cfg.gate_corruption, cfg.gate_corruption)
    match = ens[(ens["name"] == gate_name) & np.isclose(ens["strength"].astype(float), float(cfg.gate_strength))]
    gate: dict[str, Any] = {"corruption": cfg.gate_corruption, "strength": _strength(cfg.gate_strength),
                            "clean_auc": None, "auc": None, "drop": None}
    if len(match):
        r = _row_dict(match.iloc[0])
        gate.update(clean_auc=r["clean_auc"], auc=r["auc"], drop=r["drop"])
    drops = ens.dropna(subset=["drop"])
    worst = None
    if len(drops):  # "corruption" names the condition for the model card, attacks included
        r = _row_dict(drops.loc[drops["drop"].idxmax()])
        worst = {"corruption": r["name"], **r}
    per_kind = {}
    for name in dict.fromkeys(ens["name"]):
        d = ens.loc[ens["name"] == name, "drop"].dropna()
        per_kind[name] = _round(d.max()) if len(d) else None
    return {"clean": {k: _round(v[0]) for k, v in clean.items()}, "gate": gate, "worst": worst,
            "per_kind": per_kind, "failed_extractions": int(sum(failed.values())),
            # Re-encoded clips that extraction could not use (e.g. no face found at a high CRF),
            # left out of that CRF's rows (their clean AUC is taken on the same clips).
            "failed_by_crf": {str(k): int(v) for k, v in failed.items()}, "n_clips": n_clips,
            "attack_clips": n_attack}
