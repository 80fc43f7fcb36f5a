"""Corruptions and gradient attacks for the robustness evaluation stage (DESIGN §1, "attack").

A detector that only works on pristine inputs is of little use: uploaded videos are
re-encoded by every platform they pass through, faces are small and blurry, audio is
resampled and band-limited, and an adversary may perturb pixels or samples on purpose. This
module holds the primitives that the robustness stage sweeps by strength (measuring AUC at
each strength); it defines no sweep itself.

- :func:`reencode_video`: full-frame H.264 re-encode of a media file at a given CRF, the
  corruption every shared video goes through (applied before extraction, like the real thing).
- Face-crop corruptions (:data:`CROP_CORRUPTIONS`) on uint8 RGB crops: JPEG, down-and-up
  scaling, Gaussian noise, Gaussian blur, brightness shift.
- Audio corruptions (:data:`AUDIO_CORRUPTIONS`) on float waveforms: white noise at an SNR,
  a resampling round trip, a low-pass filter, gain with clipping.
- L-infinity gradient attacks on model inputs: FGSM (Goodfellow, Shlens and Szegedy,
  "Explaining and Harnessing Adversarial Examples", ICLR 2015) and PGD (Madry et al.,
  "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018), and
  :func:`attack_batch`, which applies either to one modality of a :class:`Batch`.
- :class:`CorruptedCrops` and :class:`CorruptedAudio`: window-dataset transforms that
  apply a crop or audio corruption to a clip's windows as the model sees them (the crop
  one recomputes optical flow from the corrupted crops with the extractor's own code).

Every random corruption draws from a ``numpy.random.Generator`` (or a ``torch.Generator``
for PGD's random start) passed in by the caller, so a sweep is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from av.video.frame import PictureType
from scipy.signal import butter, resample_poly, sosfiltfilt

from veracity.contract import DataContract
from veracity.data import ClipInfo, WindowDataset
from veracity.features import ClipRecord
from veracity.media.flow import flow_sequence
from veracity.models.base import Batch

Bound = float | torch.Tensor

# ------------------------------------------------------------------------- video re-encode


def reencode_video(src: Path | str, dst: Path | str, crf: int, preset: str = "veryfast") -> Path:
    """Re-encode a video file to H.264 (libx264, yuv420p) at a given CRF, streaming.

    Every frame is decoded and re-encoded one at a time (memory does not grow with length);
    frame timestamps and the frame rate are kept. Frames are written as displayed: a rotated
    source is turned upright, since the display matrix is not copied. An odd width or height
    loses its last column or row, because 4:2:0 chroma needs even sizes. The first audio
    stream, if any, is re-encoded to AAC at its own sample rate and channel layout.

    Args:
        src: input media file (anything FFmpeg can decode).
        dst: output MP4 path; its parent is created.
        crf: x264 constant rate factor, 0 (lossless) to 51 (worst).
        preset: x264 speed/quality preset.

    Returns:
        ``dst`` as a Path.

    Raises:
        ValueError: ``crf`` is out of range or ``src`` has no video stream.
    """
    if isinstance(crf, bool) or not isinstance(crf, int | np.integer) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end, so a failed encode never leaves a
    # truncated file that a later stage would take for a finished one.
    tmp = dst.with_name(dst.name + ".part")
    try:
        with av.open(str(src), "r", metadata_errors="replace") as inp:
            if not inp.streams.video:
                raise ValueError(f"{src}: no video stream")
            in_v = inp.streams.video[0]
            in_a = inp.streams.audio[0] if inp.streams.audio else None
            with av.open(str(tmp), "w", format="mp4") as out:
                _reencode_streams(inp, out, in_v, in_a, int(crf), preset)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _reencode_streams(inp, out, in_v, in_a, crf: int, preset: str) -> None:
    rate = in_v.average_rate or in_v.guessed_rate or in_v.base_rate or Fraction(25)
    # The encoder works in the source stream's time base, so decoded pts go through as-is.
    v_tb = in_v.time_base or Fraction(1, int(round(rate)))
    # Both output streams are created at the first video frame, whose display size sets the
    # encoder's; audio decoded before then waits in a short queue.
    out_v = None
    out_a = None
    last_pts = None
    next_pts = 0
    queued_audio: list = []  # audio packets decoded before the video stream exists
    streams = [in_v] if in_a is None else [in_v, in_a]
    for packet in inp.demux(*streams):
        for frame in packet.decode():
            if packet.stream is in_a:
                if out_v is None:
                    queued_audio.append(frame)
                else:
                    out.mux(out_a.encode(frame))
                continue
            frame = _upright_even(frame)
            if out_v is None:
                out_v = out.add_stream("libx264", rate=rate)
                out_v.width, out_v.height, out_v.pix_fmt = frame.width, frame.height, "yuv420p"
                out_v.codec_context.time_base = v_tb
                out_v.options = {"crf": str(crf), "preset": preset}
                if in_a is not None:
                    out_a = out.add_stream("aac", rate=in_a.codec_context.sample_rate)
                    out_a.layout = in_a.codec_context.layout.name
                    if in_a.codec_context.bit_rate:
                        # The source's rate, so the audio is not degraded more than it was.
                        out_a.bit_rate = in_a.codec_context.bit_rate
                for af in queued_audio:
                    out.mux(out_a.encode(af))
                queued_audio.clear()
            if frame.width != out_v.width or frame.height != out_v.height:
                # A mid-stream size change (rare, legal in H.264): scale to the first size
                # rather than fail, so a sweep over a corpus never stops on one odd file.
                frame = frame.reformat(width=out_v.width, height=out_v.height)
            pts = frame.pts if frame.pts is not None else next_pts
            if frame.time_base is not None and frame.time_base != v_tb:
                pts = int(round(pts * frame.time_base / v_tb))
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1  # x264 refuses non-increasing pts
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = pts, v_tb
            # A decoded frame keeps its source picture type, and libx264 would honour an
            # I/P/B type as a forced decision; the re-encode must choose its own GOP.
            frame.pict_type = PictureType.NONE
            last_pts, next_pts = pts, pts + 1
            out.mux(out_v.encode(frame))
    if out_v is None:
        raise ValueError("no video frames could be decoded")
    out.mux(out_v.encode(None))
    if out_a is not None:
        out.mux(out_a.encode(None))


def _upright_even(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as displayed (rotation applied), cropped to even width and height."""
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    if rotation == 0 and frame.width % 2 == 0 and frame.height % 2 == 0:
        return frame
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        # FFmpeg's angle is counter-clockwise, as is np.rot90's with k > 0.
        rgb = np.rot90(rgb, k=rotation // 90)
    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2])
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"frame too small to encode: {w}x{h}")
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


# ------------------------------------------------------------------- face-crop corruptions


def _as_batch(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """(N, H, W, 3) view of ``x`` and whether it was a single (H, W, 3) image."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images, got dtype {x.dtype}")
    if x.ndim == 3 and x.shape[-1] == 3:
        return x[None], True
    if x.ndim == 4 and x.shape[-1] == 3:
        return x, False
    raise ValueError(f"expected shape (N, H, W, 3) or (H, W, 3), got {x.shape}")


def _per_image(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    batch, single = _as_batch(x)
    out = np.empty_like(batch)
    for i, img in enumerate(batch):
        out[i] = fn(np.ascontiguousarray(img))
    return out[0] if single else out


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode each RGB image at ``quality`` (1-100; lower is worse).

    Quality 100 is still lossy (chroma subsampling and rounding), so there is no identity.
    """
    q = int(round(quality))
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}")

    def one(img: np.ndarray) -> np.ndarray:
        # OpenCV's codec takes BGR; feeding RGB would subsample the wrong chroma axes.
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("OpenCV failed to JPEG-encode an image")
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]

    return _per_image(x, one)


def downscale(x: np.ndarray, factor: float) -> np.ndarray:
    """Shrink each image by ``factor`` in (0, 1] (area filter), then scale back (bilinear).

    Mimics a face seen at lower resolution than the crop size; factor 1 is the identity.
    """
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor!r}")
    batch, _ = _as_batch(x)
    if factor == 1.0:
        return np.array(x, copy=True)
    h, w = batch.shape[1:3]
    small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))

    def one(img: np.ndarray) -> np.ndarray:
        down = cv2.resize(img, small, interpolation=cv2.INTER_AREA)
        return cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)

    return _per_image(x, one)


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise with standard deviation ``sigma`` (a fraction of 255)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma!r}")
    _as_batch(x)
    if sigma == 0:
        return np.array(x, copy=True)
    noisy = x.astype(np.float32) + rng.normal(0.0, sigma * 255.0, size=x.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each image with a Gaussian of ``sigma`` pixels; sigma 0 is the identity."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma!r}")
    _as_batch(x)
    if sigma == 0:
        return np.array(x, copy=True)
    # Kernel size (0, 0) lets OpenCV size the kernel from sigma (about +-3 sigma).
    return _per_image(
        x, lambda img: cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))
    )


def brightness(x: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` to pixel values on the [0, 1] scale, clipped; delta 0 is the identity."""
    _as_batch(x)
    if delta == 0:
        return np.array(x, copy=True)
    shifted = x.astype(np.float32) + np.float32(delta * 255.0)
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


CropCorruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

#: Face-crop corruptions with one signature ``fn(x, strength, rng)``. Strength means:
#: "jpeg" quality (1-100, lower is worse), "downscale" factor ((0, 1], lower is worse),
#: "noise" sigma (fraction of 255), "blur" sigma (pixels), "brightness" delta (0-1 scale).
CROP_CORRUPTIONS: dict[str, CropCorruption] = {
    "jpeg": lambda x, s, rng: jpeg(x, int(round(s))),
    "downscale": lambda x, s, rng: downscale(x, s),
    "noise": lambda x, s, rng: gaussian_noise(x, s, rng),
    "blur": lambda x, s, rng: gaussian_blur(x, s),
    "brightness": lambda x, s, rng: brightness(x, s),
}

# ----------------------------------------------------------------------- audio corruptions


def _as_wave(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 0:
        raise ValueError("expected a waveform with a time axis, got a scalar")
    return w


def add_noise(w: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the waveform's mean power.

    The last axis is time; a 2-D input gets each row's own noise level. A silent waveform
    (zero power) has no level to be relative to and is returned unchanged, as is any input
    at ``snr_db = inf``. The result is clipped to [-1, 1].
    """
    w = _as_wave(w)
    if math.isinf(snr_db) and snr_db > 0:
        return w.copy()
    power = np.mean(np.square(w, dtype=np.float64), axis=-1, keepdims=True)
    std = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise = rng.standard_normal(size=w.shape) * std
    return np.clip(w + noise, -1.0, 1.0).astype(np.float32)


def resample_roundtrip(w: np.ndarray, sr: int, mid_sr: int) -> np.ndarray:
    """Resample from ``sr`` to ``mid_sr`` and back (polyphase), keeping the length.

    A lower ``mid_sr`` removes everything above ``mid_sr / 2``, as a narrow-band channel
    (telephone, low-bitrate codec) would; ``mid_sr == sr`` is the identity.
    """
    w = _as_wave(w)
    sr, mid_sr = int(sr), int(round(mid_sr))
    if sr <= 0 or mid_sr <= 0:
        raise ValueError(f"sample rates must be positive, got sr={sr}, mid_sr={mid_sr}")
    if mid_sr == sr or w.shape[-1] == 0:
        return w.copy()
    g = math.gcd(sr, mid_sr)
    up, down = mid_sr // g, sr // g
    mid = resample_poly(w, up, down, axis=-1)
    back = resample_poly(mid, down, up, axis=-1)
    n = w.shape[-1]
    # Rounding of the two length changes can leave a sample too many or too few.
    if back.shape[-1] < n:
        back = np.pad(back, [(0, 0)] * (back.ndim - 1) + [(0, n - back.shape[-1])])
    return np.clip(back[..., :n], -1.0, 1.0).astype(np.float32)


def lowpass(w: np.ndarray, sr: int, cutoff_hz: float) -> np.ndarray:
    """Zero-phase low-pass (Butterworth, order 8, forward-backward) at ``cutoff_hz``.

    ``cutoff_hz >= sr / 2`` is the identity. Result clipped to [-1, 1] (a sharp filter
    rings, which could overshoot full scale).
    """
    w = _as_wave(w)
    if cutoff_hz <= 0:
        raise ValueError(f"cutoff must be > 0 Hz, got {cutoff_hz!r}")
    if cutoff_hz >= sr / 2 or w.shape[-1] < 2:
        return w.copy()
    sos = butter(8, cutoff_hz, btype="low", fs=sr, output="sos")
    # scipy's default edge padding (3 * (2 * sections + 1) samples) exceeds very short inputs.
    padlen = min(3 * (2 * len(sos) + 1), w.shape[-1] - 1)
    out = sosfiltfilt(sos, w.astype(np.float64), axis=-1, padlen=padlen)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def gain(w: np.ndarray, db: float) -> np.ndarray:
    """Scale by ``db`` decibels and clip to [-1, 1] (positive gain saturates loud parts)."""
    w = _as_wave(w)
    return np.clip(w * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32)


AudioCorruption = Callable[[np.ndarray, float, int, np.random.Generator], np.ndarray]

#: Audio corruptions with one signature ``fn(w, strength, sr, rng)``. Strength means:
#: "snr" SNR in dB (lower is worse), "resample" intermediate rate in Hz, "lowpass" cutoff
#: in Hz, "gain" gain in dB.
AUDIO_CORRUPTIONS: dict[str, AudioCorruption] = {
    "snr": lambda w, s, sr, rng: add_noise(w, s, rng),
    "resample": lambda w, s, sr, rng: resample_roundtrip(w, sr, int(round(s))),
    "lowpass": lambda w, s, sr, rng: lowpass(w, sr, s),
    "gain": lambda w, s, sr, rng: gain(w, s),
}

# ------------------------------------------------------------------------ gradient attacks


def _bound(b: Bound, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(b, dtype=like.dtype, device=like.device)


def _project(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, lo: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """Nearest point to ``x_adv`` in the L-inf ball around ``x`` intersected with [lo, hi]."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return torch.minimum(torch.maximum(x_adv, lo), hi)


def _input_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = loss_fn(x)
    if loss.ndim != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    # Gradient w.r.t. the input only: nothing is accumulated in the model's .grad fields,
    # so an attack can run between training steps or on a shared model without side effects.
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check_eps(eps: float) -> None:
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps must be >= 0, got {eps!r}")


def fgsm(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    lo: Bound = 0.0,
    hi: Bound = 1.0,
) -> torch.Tensor:
    """Fast Gradient Sign Method: one step of size ``eps`` along the sign of the gradient.

    Args:
        loss_fn: maps an input like ``x`` to the scalar loss to maximise.
        x: clean input.
        eps: L-inf budget (same units as ``x``); 0 returns ``x`` unchanged.
        lo: lower bound of valid inputs (float or tensor broadcastable to ``x``).
        hi: upper bound of valid inputs.

    Returns:
        Detached adversarial input, within ``eps`` of ``x`` and inside [lo, hi].
    """
    _check_eps(eps)
    x = x.detach()
    if eps == 0:
        return x.clone()
    lo_t, hi_t = _bound(lo, x), _bound(hi, x)
    with torch.enable_grad():
        grad = _input_grad(loss_fn, x)
    return _project(x + eps * grad.sign(), x, eps, lo_t, hi_t).detach()


def pgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    lo: Bound = 0.0,
    hi: Bound = 1.0,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected Gradient Descent (ascent on the loss) in an L-inf ball, as in Madry et al.

    Args:
        loss_fn: maps an input like ``x`` to the scalar loss to maximise.
        x: clean input.
        eps: L-inf budget (same units as ``x``); 0 returns ``x`` unchanged.
        steps: number of signed-gradient steps (>= 1).
        step_size: size of each step; default ``2.5 * eps / steps``, so the walk can cross
            the ball from any random start.
        lo: lower bound of valid inputs (float or tensor broadcastable to ``x``).
        hi: upper bound of valid inputs.
        random_start: start from a uniform random point in the ball rather than ``x``.
        generator: torch generator for the random start (on ``x``'s device), for
            reproducible attacks.

    Returns:
        Detached adversarial input (the last iterate), within ``eps`` of ``x`` and in [lo, hi].
    """
    _check_eps(eps)
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got steps={steps}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    lo_t, hi_t = _bound(lo, x), _bound(hi, x)
    x_adv = x.clone()
    if random_start:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_adv = _project(x + (2.0 * u - 1.0) * eps, x, eps, lo_t, hi_t)
    with torch.enable_grad():
        for _ in range(steps):
            grad = _input_grad(loss_fn, x_adv)
            x_adv = _project(x_adv + alpha * grad.sign(), x, eps, lo_t, hi_t)
    return x_adv.detach()


def attack_batch(
    logits_fn: Callable[[Batch], torch.Tensor],
    batch: Batch,
    contract: DataContract,
    field: Literal["video", "audio"],
    method: Literal["fgsm", "pgd"],
    eps: float,
    steps: int = 5,
    generator: torch.Generator | None = None,
) -> Batch:
    """Adversarially perturb one modality of a batch against a detector.

    The loss maximised is binary cross-entropy of the detector's logits against
    ``batch.label``, so fakes are pushed towards "real" and reals towards "fake". Video is
    attacked in [0, 1] pixel space (``eps`` in those units, e.g. ``4 / 255``): the crops are
    denormalised with the contract's mean/std, perturbed, and renormalised. Audio is
    attacked on the waveform in [-1, 1] (``eps`` in amplitude units). Samples whose
    ``video_present`` / ``audio_present`` flag is False are returned unchanged. Put the
    model in eval mode first, or batch-norm statistics will move during the attack.

    Args:
        logits_fn: maps a Batch to (B,) logits, e.g. ``lambda b: model(b).logits``.
        batch: the clean batch; must carry ``label`` and the attacked field.
        contract: data contract whose mean/std normalised ``batch.video``.
        field: "video" or "audio".
        method: "fgsm" or "pgd".
        eps: L-inf budget in the units above.
        steps: PGD steps (ignored by FGSM).
        generator: torch generator for PGD's random start.

    Returns:
        A new Batch with only ``field`` replaced (detached).
    """
    if field not in ("video", "audio"):
        raise ValueError(f"field must be 'video' or 'audio', got {field!r}")
    if method not in ("fgsm", "pgd"):
        raise ValueError(f"method must be 'fgsm' or 'pgd', got {method!r}")
    clean = getattr(batch, field)
    if clean is None:
        raise ValueError(f"batch has no {field} to attack")
    if batch.label is None or torch.isnan(batch.label).any():
        raise ValueError("attack_batch needs a known label for every sample")
    clean = clean.detach()
    if eps == 0:
        return dataclasses.replace(batch, **{field: clean.clone()})
    target = batch.label.detach().to(device=clean.device, dtype=torch.float32)

    if field == "video":
        shape = (1,) * (clean.ndim - 3) + (3, 1, 1)  # channel axis of (B, T, 3, H, W)
        mean = torch.tensor(contract.mean, dtype=clean.dtype, device=clean.device).view(shape)
        std = torch.tensor(contract.std, dtype=clean.dtype, device=clean.device).view(shape)

        def to_model(p: torch.Tensor) -> torch.Tensor:
            return (p - mean) / std

        # Clamped so that the clean point itself is a valid image, i.e. inside the box.
        start, lo, hi = (clean * std + mean).clamp(0.0, 1.0), 0.0, 1.0
    else:

        def to_model(p: torch.Tensor) -> torch.Tensor:
            return p

        start, lo, hi = clean.clamp(-1.0, 1.0), -1.0, 1.0

    def loss_fn(p: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(dataclasses.replace(batch, **{field: to_model(p)}))
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target.reshape(-1))

    if method == "fgsm":
        adv = fgsm(loss_fn, start, eps, lo=lo, hi=hi)
    else:
        adv = pgd(loss_fn, start, eps, steps, lo=lo, hi=hi, generator=generator)
    adv = to_model(adv)

    present = getattr(batch, f"{field}_present")
    if present is not None:
        keep = present.to(device=clean.device, dtype=torch.bool).view((-1,) + (1,) * (clean.ndim - 1))
        adv = torch.where(keep, adv, clean)
    return dataclasses.replace(batch, **{field: adv.detach()})


# ----------------------------------------------------------------------------- dataset transforms

SEED = 0  # base of every transform's random draws; all draws are keyed by clip and condition


def stable_key(*parts: object) -> int:
    """A stable 32-bit seed component from names and numbers (never Python's salted hash)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


class CorruptedCrops:
    """WindowDataset transform: corrupt a window's face crops and recompute its optical flow.

    The crops of the clip's whole track are corrupted once (noise drawn from a generator keyed
    by the clip and the condition, so a frame looks the same in every window that holds it
    and the result does not depend on the dataset's order) and the flow into each crop is
    recomputed from the corrupted crops exactly as extraction computed it (crop resized to
    the stored flow size with area filtering, Farneback from the previous crop of the same
    track, zero for the track's first crop). Windows are then cut like the dataset cuts them.
    The ``rng`` argument of the transform protocol is not used.

    Args:
        name: a key of :data:`veracity.robustness.CROP_CORRUPTIONS`.
        strength: its strength (see there).
        dataset: the dataset whose samples are transformed (for each window's clip and start).
        recompute_flow: recompute flow from the corrupted crops (else keep the extracted flow).
        seed: base seed of the noise.
    """

    def __init__(self, name: str, strength: float, dataset: WindowDataset, recompute_flow: bool = True,
                 seed: int = SEED):
        if name not in CROP_CORRUPTIONS:
            raise ValueError(f"unknown crop corruption {name!r}; known: {sorted(CROP_CORRUPTIONS)}")
        self.name, self.strength, self.dataset = name, float(strength), dataset
        self.recompute_flow, self.seed = recompute_flow, seed
        self._cached: tuple[str, np.ndarray, np.ndarray | None] | None = None

    def clip_crops(self, clip: ClipInfo) -> tuple[np.ndarray, np.ndarray | None]:
        """Corrupted uint8 crops (n, S, S, 3) of the clip's track and the flow into each (or None)."""
        if self._cached is not None and self._cached[0] == clip.video_id:
            return self._cached[1], self._cached[2]
        rec = ClipRecord(clip.record)
        rows = rec.track_crops(getattr(clip, "track", None))  # the track the dataset's windows follow
        faces = np.asarray(rec.array("faces")[rows])
        rng = np.random.default_rng([self.seed, stable_key(self.name, self.strength), stable_key(clip.video_id)])
        crops = CROP_CORRUPTIONS[self.name](faces, self.strength, rng) if len(faces) else faces
        flow = None
        stored = rec.array("flow")
        if self.recompute_flow and stored.ndim == 4 and len(crops):
            fsize = stored.shape[1]
            small = np.stack([cv2.resize(c, (fsize, fsize), interpolation=cv2.INTER_AREA) for c in crops])
            flow = np.zeros((len(crops), fsize, fsize, 2), np.float32)
            flow[1:] = flow_sequence(small)
        self._cached = (clip.video_id, crops, flow)
        return crops, flow

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        idx = int(sample["index"])
        ds = self.dataset
        start, n = ds.item_start(idx), ds.item_length(idx)
        crops, flow = self.clip_crops(ds.item_clip(idx))
        if n == 0 or len(crops) == 0:
            return sample
        c = ds.contract
        t = c.frames_per_window
        win = crops[start : start + n]
        if n < t:  # pad as the dataset does: repeat the last crop, zero motion
            win = np.concatenate([win, np.repeat(win[-1:], t - n, 0)])
        video = torch.from_numpy(win).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(c.mean).view(1, 3, 1, 1)
        std = torch.tensor(c.std).view(1, 3, 1, 1)
        out = {**sample, "video": (video - mean) / std}
        if flow is not None and sample.get("flow") is not None:
            f = np.zeros((t, *flow.shape[1:]), np.float32)
            f[:n] = flow[start : start + n]
            out["flow"] = torch.from_numpy(f).permute(0, 3, 1, 2)
        return out


class CorruptedAudio:
    """WindowDataset transform: corrupt a window's waveform (clips without audio unchanged).

    Random corruptions draw from a generator keyed by the clip, the window start and the
    condition (the protocol's ``rng`` is not used), so results do not depend on order.

    Args:
        name: a key of :data:`veracity.robustness.AUDIO_CORRUPTIONS`.
        strength: its strength (see there).
        dataset: the dataset whose samples are transformed.
        seed: base seed of the noise.
    """

    def __init__(self, name: str, strength: float, dataset: WindowDataset, seed: int = SEED):
        if name not in AUDIO_CORRUPTIONS:
            raise ValueError(f"unknown audio corruption {name!r}; known: {sorted(AUDIO_CORRUPTIONS)}")
        self.name, self.strength, self.dataset, self.seed = name, float(strength), dataset, seed

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        if not sample.get("audio_present") or sample.get("audio") is None:
            return sample
        idx = int(sample["index"])
        clip = self.dataset.item_clip(idx)
        g = np.random.default_rng([self.seed, stable_key(self.name, self.strength), stable_key(clip.video_id),
                                   self.dataset.item_start(idx)])
        wave = sample["audio"].numpy()
        out = AUDIO_CORRUPTIONS[self.name](wave, self.strength, self.dataset.contract.sample_rate, g)
        return {**sample, "audio": torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))}
