"""Plan and write the synthetic corpus: MP4 files, ``manifest.csv`` and ``identities.json``.

The corpus is a pure function of :class:`~veracity.config.GenerateConfig`: every clip
gets its own seed derived from the corpus seed and its index, clips are rendered in any
order by any number of workers, and the encoder is single-threaded, so two runs give
identical bytes (``data.dvc`` records their hash).

The bytes must not depend on the machine either, so rendering runs with OpenCV's
optimised code paths off (:func:`cpu_independent_opencv`). With them on, OpenCV picks
SSE, AVX2 or AVX-512 kernels (and Intel IPP's) at run time, and its float32
``GaussianBlur``, ``warpAffine`` and bilinear ``resize`` round differently in the last bits
on each: enough to flip the uint8 rounding of some pixels, which the encoder then spreads
through the clip (with every optimisation disabled, 15 of 64 one-second clips changed).
The baseline kernels are the same on every x86-64 machine, and cost no measurable time
here (11.50 s vs 11.51 s for those 64 clips).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from veracity.config import ConfigError, GenerateConfig, write_resolved
from veracity.corpus import manifest
from veracity.corpus.synth.families import LABELS, ClipSpec, render
from veracity.corpus.synth.identity import Identity, sample_identity
from veracity.media.encode import write_mp4

VIDEO_DIR = "videos"
MANIFEST_NAME = "manifest.csv"
IDENTITIES_NAME = "identities.json"
# Families that borrow a face, a performance or a voice from another identity.
_NEEDS_PEER = {"faceswap", "reenact", "av"}


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` wrote."""

    root: Path
    manifest_path: Path
    n_clips: int
    counts: dict[str, int]


def plan_corpus(cfg: GenerateConfig) -> tuple[list[ClipSpec], dict[str, str], list[Identity]]:
    """Decide every clip (method, people, duration, seed) without rendering anything.

    Returns:
        The clip specs, a map identity -> split, and the identities.
    """
    root_rng = np.random.default_rng(cfg.seed)
    identities = [sample_identity(f"id{i:03d}", root_rng) for i in range(cfg.n_identities)]
    splits = manifest.assign_group_splits(
        [i.name for i in identities], cfg.split_ratios.model_dump(), seed=cfg.seed
    )
    by_split: dict[str, list[Identity]] = {}
    for ident in identities:
        by_split.setdefault(splits[ident.name], []).append(ident)
    needs_peer = set(cfg.methods) & _NEEDS_PEER if cfg.fakes_per_method > 0 else set()
    small = sorted(name for name, members in by_split.items() if len(members) < 2)
    if needs_peer and small:
        raise ConfigError(
            f"split(s) {small} hold fewer than 2 identities, but {sorted(needs_peer)} need a second "
            f"person from the same split; raise generate.n_identities (now {cfg.n_identities})"
        )

    if cfg.methods_per_identity is not None and cfg.methods_per_identity > len(cfg.methods):
        raise ConfigError(f"methods_per_identity={cfg.methods_per_identity} but only {len(cfg.methods)} methods")
    specs: list[ClipSpec] = []
    plan_rng = np.random.default_rng([cfg.seed, 1])
    fake_methods = _assign_methods(cfg, by_split, np.random.default_rng([cfg.seed, 2]))
    for ident in identities:
        peers = [p for p in by_split[splits[ident.name]] if p.name != ident.name]
        methods = ["real"] * cfg.real_per_identity + [
            m for m in fake_methods[ident.name] for _ in range(cfg.fakes_per_method)]
        # Clip numbers are shuffled so a file name never reveals its family.
        numbers = plan_rng.permutation(len(methods))
        for method, number in zip(methods, numbers, strict=True):
            # Donors, drivers and voices come from the same split so no one leaks across.
            other = peers[int(plan_rng.integers(len(peers)))] if peers and method != "real" else None
            # A lip-sync fake re-uses the person's own voice; a voice fake converts to another
            # person's voice 70% of the time and re-vocodes the speaker's own otherwise.
            if method == "lipsync" or (method == "voice" and plan_rng.random() >= 0.7):
                other = None
            specs.append(
                ClipSpec(
                    video_id=f"{ident.name}_{number:03d}",
                    method=method,
                    identity=ident,
                    other=other,
                    duration=round(float(plan_rng.uniform(cfg.min_duration_s, cfg.max_duration_s)), 2),
                    fps=cfg.fps,
                    width=cfg.width,
                    height=cfg.height,
                    sample_rate=cfg.sample_rate,
                    crf=int(cfg.crf + plan_rng.integers(-cfg.crf_jitter, cfg.crf_jitter + 1)),
                    grain=cfg.grain,
                    seed=int(plan_rng.integers(2**63)),
                )
            )
    return specs, splits, identities


def _assign_methods(cfg: GenerateConfig, by_split: dict[str, list[Identity]],
                    rng: np.random.Generator) -> dict[str, list[str]]:
    """Each identity's fake methods: all of them, or ``methods_per_identity`` distinct ones.

    Within a split, each identity in turn takes the methods used least so far (ties broken
    at random): counts per method differ by at most one, and the combinations vary from
    person to person. A fixed rotation would give only a few combinations (two, for 3 of
    6), and a detector could then learn which people tend to be faked instead of fakes.
    """
    n = cfg.methods_per_identity
    out: dict[str, list[str]] = {}
    for members in by_split.values():
        used = dict.fromkeys(cfg.methods, 0)
        for ident in members:
            if n is None:
                out[ident.name] = list(cfg.methods)
                continue
            order = rng.permutation(len(cfg.methods))
            ranked = sorted(order, key=lambda i: used[cfg.methods[i]])  # stable: ties stay shuffled
            chosen = sorted(ranked[:n])
            for i in chosen:
                used[cfg.methods[i]] += 1
            out[ident.name] = [cfg.methods[i] for i in chosen]
    return out


def _write_clip(args: tuple[ClipSpec, str, int]) -> str:
    spec, out_dir, audio_bitrate = args
    clip = render(spec)
    path = Path(out_dir) / VIDEO_DIR / f"{spec.video_id}.mp4"
    write_mp4(path, clip.frames, spec.fps, clip.audio, spec.sample_rate, spec.crf, audio_bitrate)
    return spec.video_id


def cpu_independent_opencv() -> None:
    """Run OpenCV's baseline kernels (no SSE4/AVX/AVX-512 dispatch, no IPP) in this process."""
    cv2.setUseOptimized(False)


def generate(
    cfg: GenerateConfig, out: Path, progress: Callable[[int, int], None] | None = None
) -> GenerateResult:
    """Write the synthetic corpus under ``out`` (replacing what was there).

    Args:
        cfg: corpus size, resolution, families and seed.
        out: corpus directory (``videos/``, ``manifest.csv``, ``identities.json``).
        progress: optional callback ``(done, total)`` after each clip.

    Returns:
        A :class:`GenerateResult` with clip counts per method.
    """
    out = Path(out)
    specs, splits, identities = plan_corpus(cfg)
    if (out / VIDEO_DIR).exists():
        shutil.rmtree(out / VIDEO_DIR)
    (out / VIDEO_DIR).mkdir(parents=True)
    jobs = [(s, str(out), cfg.audio_bitrate) for s in specs]
    done = 0
    if cfg.workers > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers, initializer=cpu_independent_opencv) as pool:
            for _ in pool.map(_write_clip, jobs, chunksize=4):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        was = cv2.useOptimized()
        cpu_independent_opencv()
        try:
            for job in jobs:
                _write_clip(job)
                done += 1
                if progress:
                    progress(done, len(jobs))
        finally:
            cv2.setUseOptimized(was)  # the rest of this process (extraction, tests) keeps its speed

    rows = []
    for s in specs:
        video_label, audio_label = LABELS[s.method]
        rows.append(
            {
                "video_id": s.video_id,
                "path": f"{VIDEO_DIR}/{s.video_id}.mp4",
                "label": int(video_label or audio_label),
                "split": splits[s.identity.name],
                "method": s.method,
                "identity": s.identity.name,
                "video_label": video_label,
                "audio_label": audio_label,
                "source_identity": s.other.name if s.other is not None else pd.NA,
                "duration_s": s.duration,
            }
        )
    df = manifest.from_records(rows)
    manifest_path = manifest.write(df, out / MANIFEST_NAME)
    (out / IDENTITIES_NAME).write_text(
        json.dumps({i.name: {"split": splits[i.name], **i.to_dict()} for i in identities}, indent=1, sort_keys=True)
    )
    write_resolved(cfg, out, exclude=GenerateConfig.EXECUTION_ONLY)
    counts = df["method"].value_counts().sort_index().to_dict()
    return GenerateResult(out, manifest_path, len(df), {str(k): int(v) for k, v in counts.items()})
