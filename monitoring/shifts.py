"""Synthetic distribution shifts of a corpus: the media transforms bench/ood_shift.py and
drift monitoring (:mod:`monitoring.simulate`) apply to generated clips.

This module owns how each shift changes a clip (nothing is fitted: every transform is
fixed, and seeded where it draws noise):

* ``control``: the base clips decoded and re-encoded by the same path as ``lighting`` and
  ``face_style`` (``write_mp4`` at ``generate.crf``, audio packets copied) with no change
  to the pixels: what a second encode alone does, to read the shifts below against.
* ``heavy_compression``: the base clips through :func:`veracity.robustness.reencode_video`
  at CRF 45 (audio re-encoded to AAC).
* ``lighting``: another lighting model. Per pixel, RGB in [0, 1]: gamma 1.6 (darker
  midtones), times a side light that falls linearly from 1.35 at the right edge to 0.45 at
  the left, times a tungsten white balance (R x1.12, G x1.0, B x0.70), clipped. Audio
  packets copied.
* ``face_style``: a cartoon rendering. Two passes of a bilateral filter (d 7, sigma 60/7)
  flatten skin texture, each channel is posterised to 6 levels, and dark outlines from an
  adaptive threshold of the median-blurred luma (block 9, C 3) are drawn on top. Audio
  packets copied.
* ``voice``: another voice model. The generator's voice is additive glottal harmonics
  (f0 95-240 Hz) shaped by three Lorentzian formants plus breath noise. Here the base
  audio's spectral envelope is kept (order-18 LPC per 25 ms Hann frame, 10 ms hop) and
  re-excited with a monotone 320 Hz impulse train in voiced frames and white noise in the
  others (an all-pole LPC vocoder: flat pitch above the generator's range, no harmonic
  amplitude model, no jitter), overlap-added and brought back to the frame's RMS. Video
  packets copied.

Rendered size changes (larger or smaller faces) are not transforms: the generator renders
the same plan at another frame size (:func:`monitoring.simulate.stream_corpus`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from scipy import signal
from scipy.linalg import solve_toeplitz

HEAVY_CRF = 45
# The shifts make_shift writes from a base corpus.
TRANSFORMS = ("control", "heavy_compression", "lighting", "face_style", "voice")

# ------------------------------------------------------------------------------ media I/O


def read_frames(path: Path) -> tuple[list[np.ndarray], int]:
    """Every frame of ``path`` as RGB uint8, and its (integer) frame rate."""
    with av.open(str(path)) as inp:
        stream = inp.streams.video[0]
        fps = int(round(stream.average_rate or Fraction(25)))
        return [f.to_ndarray(format="rgb24") for f in inp.decode(stream)], fps


def remux(video_src: Path, audio_src: Path, dst: Path) -> Path:
    """``dst`` with the video packets of ``video_src`` and the audio packets of ``audio_src``.

    Stream copy, so the stream that a shift does not touch keeps its exact bytes.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    with av.open(str(video_src)) as vin, av.open(str(audio_src)) as ain, \
            av.open(str(tmp), "w", format="mp4") as out:
        pairs = [(vin, vin.streams.video[0])] + ([(ain, ain.streams.audio[0])] if ain.streams.audio else [])
        outs = [out.add_stream_from_template(s) for _, s in pairs]
        for (src, s), o in zip(pairs, outs, strict=True):
            for packet in src.demux(s):
                if packet.dts is None:  # the demuxer's end-of-stream flush packet
                    continue
                packet.stream = o
                out.mux(packet)
    tmp.replace(dst)
    return dst


def rewrite_video(src: Path, dst: Path, transform: Callable[[np.ndarray], np.ndarray], crf: int) -> Path:
    """``src`` with every frame passed through ``transform`` (H.264 at ``crf``), audio copied."""
    from veracity.media.encode import write_mp4

    frames, fps = read_frames(src)
    tmp = dst.with_name(dst.stem + ".video.mp4")
    write_mp4(tmp, (transform(f) for f in frames), fps, None, crf=crf)
    try:
        return remux(tmp, src, dst)
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_audio(src: Path, dst: Path, transform: Callable[[np.ndarray, int], np.ndarray],
                  sample_rate: int, audio_bitrate: int) -> Path:
    """``src`` with its audio passed through ``transform`` (AAC), video packets copied."""
    from veracity.media.decode import read_audio
    from veracity.media.encode import write_mp4

    audio = transform(read_audio(src, sample_rate), sample_rate)
    # write_mp4 needs frames to mux audio; only this file's audio stream is kept.
    frames, fps = read_frames(src)
    tmp = dst.with_name(dst.stem + ".audio.mp4")
    write_mp4(tmp, frames, fps, audio, sample_rate, crf=51, audio_bitrate=audio_bitrate, preset="ultrafast")
    try:
        return remux(src, tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the shifts


def identity(rgb: np.ndarray) -> np.ndarray:
    """The frame unchanged (the ``control`` shift)."""
    return rgb


def relight(rgb: np.ndarray) -> np.ndarray:
    """Gamma 1.6, a left-dark / right-bright side light (0.45 -> 1.35) and tungsten white balance."""
    x = (rgb.astype(np.float32) / 255.0) ** 1.6
    side = np.linspace(0.45, 1.35, rgb.shape[1], dtype=np.float32)[None, :, None]
    x = x * side * np.array([1.12, 1.0, 0.70], dtype=np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def cartoon(rgb: np.ndarray) -> np.ndarray:
    """Bilateral-smoothed, posterised (6 levels a channel) frame with dark adaptive-threshold outlines."""
    x = rgb
    for _ in range(2):
        x = cv2.bilateralFilter(x, 7, 60, 7)
    step = 256 // 6
    x = (x // step) * step + step // 2
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 3)
    return np.where(edges[..., None] == 0, 0, x).astype(np.uint8)


def lpc_vocoder(audio: np.ndarray, sr: int, f0: float = 320.0, order: int = 18) -> np.ndarray:
    """The audio's LPC envelope re-excited by a monotone ``f0`` pulse train (voiced) or noise.

    A frame is voiced when its normalised autocorrelation peaks above 0.3 at a lag of
    60-400 Hz. The noise is seeded, so the shift is the same bytes on every run.
    """
    x = np.asarray(audio, dtype=np.float64)
    n_win, hop = int(0.025 * sr), int(0.010 * sr)
    win = np.hanning(n_win)
    period = int(round(sr / f0))
    pulses = np.zeros(len(x) + n_win)
    pulses[::period] = np.sqrt(period)  # unit power, like the noise
    noise = np.random.default_rng(0).standard_normal(len(x) + n_win)
    out = np.zeros(len(x) + n_win)
    norm = np.zeros(len(x) + n_win)
    lo, hi = int(sr / 400), int(sr / 60)
    for start in range(0, len(x), hop):
        seg = x[start:start + n_win]
        if len(seg) < n_win:
            seg = np.pad(seg, (0, n_win - len(seg)))
        frame = seg * win
        ac = np.correlate(frame, frame, "full")[n_win - 1:]
        if ac[0] < 1e-10:
            norm[start:start + n_win] += win
            continue
        ac_reg = ac[: order + 1].copy()
        ac_reg[0] *= 1.0 + 1e-6  # white-noise correction keeps the solve well conditioned
        a = solve_toeplitz(ac_reg[:order], ac_reg[1:order + 1])
        voiced = ac[lo:hi].max() / ac[0] > 0.3
        exc = (pulses if voiced else noise)[start:start + n_win]
        y = signal.lfilter([1.0], np.concatenate([[1.0], -a]), exc)
        rms_in = np.sqrt(np.mean(frame**2))
        rms_out = np.sqrt(np.mean((y * win) ** 2)) + 1e-12
        out[start:start + n_win] += y * (rms_in / rms_out) * win
        norm[start:start + n_win] += win
    y = out[: len(x)] / np.maximum(norm[: len(x)], 1e-3)
    y *= (np.sqrt(np.mean(x**2)) + 1e-12) / (np.sqrt(np.mean(y**2)) + 1e-12)
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def make_shift(name: str, base: Path, work: Path, gen: Any) -> Path:
    """Write shift ``name`` of the corpus at ``base`` under ``work/name`` (clips and manifest)."""
    from veracity.robustness import reencode_video

    root = work / name
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(base)
    t = time.perf_counter()
    for rec in rows:
        src, dst = base / rec["path"], root / rec["path"]
        if name == "heavy_compression":
            reencode_video(src, dst, HEAVY_CRF)
        elif name == "voice":
            rewrite_audio(src, dst, lpc_vocoder, gen.sample_rate, gen.audio_bitrate)
        else:
            transform = {"control": identity, "lighting": relight, "face_style": cartoon}[name]
            rewrite_video(src, dst, transform, gen.crf)
    (root / "manifest.csv").write_text((base / "manifest.csv").read_text())
    print(f"{name}: {len(rows)} clips written ({time.perf_counter() - t:.0f} s)", flush=True)
    return root


def manifest_rows(root: Path) -> list[dict[str, Any]]:
    """The rows of ``root/manifest.csv``."""
    import pandas as pd

    return pd.read_csv(root / "manifest.csv").to_dict("records")
